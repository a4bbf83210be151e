"""Hand-built PackedSequence inputs that break its invariants (found by a review, 2026-12-05): each
a named ValueError/TypeError from pyrnn.torch's layers, frozen and quantized modules before torch's
pad_packed_sequence sees it. A negative batch size made that function corrupt memory (the process
died in free()), and a short sorted_indices silently dropped sequences."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence  # noqa: E402

import pyrnn.torch as pt  # noqa: E402


def _modules():
    torch.manual_seed(0)
    lstm = pt.LSTM(4, 5)
    return {
        "LSTM": lstm,
        "GRU": pt.GRU(4, 5, batch_first=True),
        "RNN": pt.RNN(4, 5, bidirectional=True),
        "LayerNormLSTM": pt.LayerNormLSTM(4, 5),
        "frozen": pt.freeze(nn.LSTM(4, 5).eval()),
        "int8": pt.quantize_dynamic(nn.Sequential(nn.LSTM(4, 5))),
    }


def _bad():
    d = torch.randn(5, 4)
    i2 = torch.tensor([0, 1])
    return {
        "negative count": (PackedSequence(d, torch.tensor([3, -2])), ValueError, "positive and non-increasing"),
        "zero count": (PackedSequence(d[:3], torch.tensor([3, 0])), ValueError, "positive and non-increasing"),
        "increasing": (PackedSequence(d, torch.tensor([2, 3])), ValueError, "positive and non-increasing"),
        "sum": (PackedSequence(d, torch.tensor([2, 2])), ValueError, "sum to 4 but its data has 5 rows"),
        "empty": (PackedSequence(d[:0], torch.zeros(0, dtype=torch.int64)), ValueError, "larger than 0"),
        "1-D data": (PackedSequence(torch.randn(5), torch.tensor([3, 2])), ValueError, "must be 2-D"),
        "int32 sizes": (PackedSequence(d, torch.tensor([3, 2], dtype=torch.int32)), TypeError, "1-D int64 CPU"),
        "short sorted_indices": (PackedSequence(d, torch.tensor([3, 2]), i2, i2), ValueError,
                                 "1-D int64 tensor of the batch's 3 indices, got 1-D torch.int64 of 2"),
        "not a permutation": (PackedSequence(d, torch.tensor([3, 2]), torch.tensor([0, 0, 1]),
                                             torch.tensor([0, 1, 2])), ValueError, "permutation of 0..2"),
        "not the inverse": (PackedSequence(d, torch.tensor([3, 2]), torch.tensor([1, 2, 0]),
                                           torch.tensor([1, 2, 0])), ValueError, "unsorted_indices its inverse"),
    }


@pytest.mark.parametrize("case", list(_bad()))
@pytest.mark.parametrize("which", list(_modules()))
def test_malformed_packed_sequences_raise(which, case):
    module = _modules()[which]
    packed, error, message = _bad()[case]
    with pytest.raises(error, match=message):
        module(packed)


@pytest.mark.parametrize("how", ["unsorted", "sorted", "pack_sequence"])
@pytest.mark.parametrize("which", list(_modules()))
def test_well_formed_packed_sequences_are_accepted(which, how):
    module = _modules()[which]
    batch_first = getattr(module, "batch_first", False)
    torch.manual_seed(1)
    x = torch.randn(3, 6, 4) if batch_first else torch.randn(6, 3, 4)
    if how == "unsorted":
        packed = pack_padded_sequence(x, torch.tensor([4, 6, 2]), batch_first=batch_first, enforce_sorted=False)
    elif how == "sorted":  # (no indices)
        packed = pack_padded_sequence(x, torch.tensor([6, 4, 2]), batch_first=batch_first)
        assert packed.sorted_indices is None
    else:
        packed = pack_sequence([torch.randn(n, 4) for n in (4, 6, 2)], enforce_sorted=False)
    with torch.no_grad():
        y, _ = module(packed)
        # a hand-built PackedSequence equal to the one pack_padded_sequence made gives the same result
        again = PackedSequence(packed.data.clone(), packed.batch_sizes.clone(),
                               *(None if i is None else i.clone() for i in (packed.sorted_indices,
                                                                            packed.unsorted_indices)))
        y_again, _ = module(again)
    assert y.data.shape[0] == 12
    assert torch.equal(y_again.data, y.data)
    assert (y.unsorted_indices is None) == (packed.unsorted_indices is None)
    assert packed.unsorted_indices is None or torch.equal(y.unsorted_indices, packed.unsorted_indices)
