"""Regression tests for what the thirteenth session's reviews found."""

from collections import namedtuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import pyrnn.torch as pt  # noqa: E402


@pytest.mark.parametrize("cls", ["GRU", "LSTM", "RNN", "LayerNormLSTM", "LayerNormGRU"])
@pytest.mark.parametrize("data_dtype", [torch.float32, torch.bfloat16])
def test_packed_sequence_under_autocast(cls, data_dtype):
    # a PackedSequence (a NamedTuple) was rebuilt as a plain tuple: AssertionError inside torch
    torch.manual_seed(0)
    m = getattr(pt, cls)(3, 4)
    x = torch.randn(5, 2, 3)
    packed = pack_padded_sequence(x.to(data_dtype), torch.tensor([5, 3]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = m(packed)
    assert y.data.dtype == torch.float32
    y_ref, _ = m(pack_padded_sequence(x.to(data_dtype).float(), torch.tensor([5, 3])))
    torch.testing.assert_close(y.data, y_ref.data, rtol=0, atol=0)
    if cls in ("GRU", "LSTM", "RNN"):
        ref = getattr(nn, cls)(3, 4)
        ref.load_state_dict(m.state_dict())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_nn, _ = ref(packed)
        # (torch.nn runs the cell in bfloat16 under autocast: its rounding)
        torch.testing.assert_close(y.data, y_nn.data.float(), rtol=0, atol=5e-2)


def test_namedtuple_state_under_autocast():
    State = namedtuple("State", "h c")
    torch.manual_seed(0)
    m = pt.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    hx = State(torch.randn(1, 2, 4, dtype=torch.bfloat16), torch.randn(1, 2, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, c) = m(x.bfloat16(), hx)
    y_ref, _ = m(x.bfloat16().float(), (hx.h.float(), hx.c))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)


def test_func_grad_with_a_weight_of_another_rank():
    # under torch.func.grad the operator sized its residual from a 3-D W_hh: "T, I and H must be at least 1"
    from torch.func import functional_call, grad
    m = pt.LSTM(3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    params = {k: v.detach() for k, v in m.named_parameters()}
    params["weight_hh_l0"] = params["weight_hh_l0"][None]
    with pytest.raises(ValueError, match="W_hh must be 2-D, got 3-D"):
        grad(lambda p: functional_call(m, p, (x,))[0].sum())(params)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # (inside torch.func.jvp)
@pytest.mark.parametrize("make", [lambda: pt.LSTM(3, 4), lambda: pt.GRUCell(3, 4), lambda: pt.LayerNormGRU(3, 4)])
def test_forward_mode_ad_names_pyrnn(make):
    # with gradients on, torch's generic "You must implement the jvp function" came out
    import torch.autograd.forward_ad as fwAD
    from torch.func import functional_call, jvp
    m = make()
    x = torch.randn(5, 2, 3) if not isinstance(m, pt.GRUCell) else torch.randn(2, 3)
    with pytest.raises(NotImplementedError, match="pyrnn: forward-mode AD"):
        jvp(lambda x: functional_call(m, dict(m.named_parameters()), (x,))[0], (x,), (torch.ones_like(x),))
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="pyrnn: forward-mode AD"):
        m(fwAD.make_dual(x, torch.ones_like(x)))


@pytest.mark.parametrize("make", [lambda v: pt.LSTM(3, 4, bidirectional=v), lambda v: pt.GRU(3, 4, bias=v),
                                  lambda v: pt.GRU(3, 4, reset_after=v),
                                  lambda v: pt.LayerNormLSTM(3, 4, batch_first=v)])
def test_torch_boolean_options(make):
    # pyrnn.torch.LSTM(bidirectional='False') ran bidirectional
    for bad in ("False", None):
        with pytest.raises(TypeError, match="must be True or False|should be of type bool"):  # (pyrnn's or torch's)
            make(bad)
    make(False)


def test_torch_sizes():
    with pytest.raises(MemoryError, match="would need"):
        pt.LSTM(3, 4, num_layers=2**40)  # (torch.nn loops allocating)
    with pytest.raises(MemoryError, match="would need"):
        pt.LayerNormGRU(3, 4, num_layers=2**40)
    m = pt.LayerNormLSTM(np.int64(3), np.int64(4), num_layers=np.int64(2))  # (refused before; torch takes them)
    assert (m.input_size, m.hidden_size, m.num_layers) == (3, 4, 2)
    assert m(torch.randn(5, 2, 3))[0].shape == (5, 2, 4)
    y, _ = pt.RNN(3, 4, 2, "relu", False)(torch.randn(5, 2, 3))  # (torch.nn.RNN's positional nonlinearity)
    assert y.shape == (5, 2, 4)


def test_torch_quantize_dtype_and_meta_lengths():
    with pytest.raises(ValueError, match="dtype must be"):
        pt.quantize_dynamic(nn.Sequential(pt.LSTM(3, 4)), dtype=[torch.qint8])
    with pytest.raises(TypeError, match="meta"):
        pt.LayerNormGRU(3, 4)(torch.randn(5, 2, 3), lengths=torch.tensor([5, 3], device="meta"))


def test_big_models_that_fit_still_construct():
    # the first version of the size check charged pyrnn.torch modules as bidirectional float32 with
    # gradients (6-11x): an LSTM(8192, 8192, num_layers=2) of 4 GiB was refused on a 24 GiB machine
    m = pt.LSTM(8192, 8192, num_layers=2, device="meta")
    assert m.weight_hh_l1.shape == (4 * 8192, 8192)
    pt.LayerNormLSTM(4096, 4096, num_layers=2, device="meta")
