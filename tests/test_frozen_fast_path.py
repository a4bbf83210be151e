"""A frozen layer's direct call (pyrnn.layers._RNNBase._frozen_forward): plain time-major arrays of the
layer's dtype go to the kernels with the checks its packed, read-only weights make redundant skipped.
Every result must equal the general path's bitwise, and every input the direct call does not take must
reach the general path (and its errors)."""

import copy
import pickle

import numpy as np
import pytest

import pyrnn
from pyrnn.layers import _StackedLayer

CONFIGS = [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}), ("GRU", {"reset_after": False}),
           ("RNN", {}), ("RNN", {"nonlinearity": "relu"})]


def general(layer, *args):
    return _StackedLayer.forward(layer, *args)


def assert_same(got, want):
    np.testing.assert_array_equal(got[0], want[0])
    g, w = (got[1], want[1]) if isinstance(want[1], tuple) else ((got[1],), (want[1],))
    assert len(g) == len(w)
    for a, e in zip(g, w):
        assert type(a) is np.ndarray and a.shape == e.shape and a.dtype == e.dtype
        np.testing.assert_array_equal(a, e)


def states(mode, n, B, H, P, dtype, rng):
    h = rng.standard_normal((n, B, P or H)).astype(dtype)
    return (h, rng.standard_normal((n, B, H)).astype(dtype)) if mode == "LSTM" else h


@pytest.mark.parametrize("mode, kw", CONFIGS)
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, False), (1, True), (3, True)])
def test_direct_call_equals_the_general_path(mode, kw, num_layers, bidirectional):
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        layer = getattr(pyrnn, mode)(5, 7, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype, seed=2,
                                     **kw)
        frozen = layer.freeze()
        assert frozen._fast_calls[1] and not layer.__dict__.get("_fast_calls")
        n = num_layers * (2 if bidirectional else 1)
        for T, B in [(1, 1), (6, 4), (3, 9)]:
            x = rng.standard_normal((T, B, 5)).astype(dtype)
            hx = states(mode, n, B, 7, kw.get("proj_size", 0), dtype, rng)
            for args in [(x,), (x, hx)]:
                want = general(frozen, *args)
                assert_same(frozen(*args), want)
                assert_same(layer.eval()(*args), want)  # (the layer itself: the frozen copy's results)


@pytest.mark.parametrize("precision", ["int8", "bf16"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_direct_call_in_reduced_precision(mode, precision):
    rng = np.random.default_rng(3)
    frozen = getattr(pyrnn, mode)(16, 32, num_layers=2, bidirectional=True, seed=4).freeze(precision)
    x = rng.standard_normal((5, 3, 16)).astype(np.float32)
    hx = states(mode, 4, 3, 32, 0, np.float32, rng)
    for args in [(x,), (x, hx)]:
        assert_same(frozen(*args), general(frozen, *args))


def test_inputs_the_direct_call_does_not_take_go_the_general_way():
    """Buffers, lists of states, views, batch_first, unbatched input, lengths, lists of states: the general
    path's conversions and results; wrong shapes and types: its errors, word for word."""
    rng = np.random.default_rng(5)
    layer = pyrnn.LSTM(4, 6, num_layers=2, seed=0)
    frozen = layer.freeze()
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    h, c = (rng.standard_normal((2, 3, 6)).astype(np.float32) for _ in range(2))
    want = general(frozen, x, (h, c))
    assert_same(frozen(memoryview(x), (h, c)), want)
    assert_same(frozen(x, [h, c]), want)
    assert_same(frozen(np.asfortranarray(x), (np.asfortranarray(h), c)), want)
    assert_same(frozen(x, (h.astype(np.float32).view(np.ndarray), c)), want)
    wide = np.zeros((5, 3, 8), np.float32)
    wide[..., :4] = x
    assert_same(frozen(wide[..., :4], (h, c)), want)  # a non-contiguous view
    assert_same(frozen(x[:, 0]), general(frozen, x[:, 0]))  # unbatched
    lengths = np.array([5, 2, 4])
    assert_same(frozen(x, None, lengths), general(frozen, x, None, lengths))
    bf = pyrnn.LSTM(4, 6, num_layers=2, batch_first=True, seed=0).freeze()
    assert_same(bf(x.transpose(1, 0, 2)), general(bf, x.transpose(1, 0, 2)))
    assert bf(x.transpose(1, 0, 2))[0].shape == (3, 5, 6)

    for bad_args in [(x.astype(np.float64),), (x[..., :3].copy(),), (x[:0],), (x, (h[:1], c)), (x, (h, c[:, :2])),
                     (x, h), (x, (h, c, c)), (x, (h.astype(np.float64), c)), (x[None],)]:
        with pytest.raises((TypeError, ValueError)) as want_err:
            general(frozen, *bad_args)
        with pytest.raises(type(want_err.value)) as got_err:
            frozen(*bad_args)
        assert str(got_err.value) == str(want_err.value)
    masked = np.ma.masked_array(x, mask=np.zeros_like(x, bool))
    with pytest.raises((TypeError, ValueError)):
        frozen(masked)


def test_empty_batch_and_training_flag_take_the_general_path():
    frozen = pyrnn.GRU(3, 4, num_layers=2, bidirectional=True, seed=0).freeze()
    y, h = frozen(np.zeros((2, 0, 3), np.float32))
    assert y.shape == (2, 0, 8) and h.shape == (4, 0, 4)
    frozen.training = True  # (train() refuses; the attribute bypasses it)
    with pytest.raises(RuntimeError, match="frozen layer is for inference only"):
        frozen(np.zeros((2, 1, 3), np.float32))


def test_options_changed_after_freezing_and_subclasses_take_the_general_path():
    """nonlinearity / reset_after set on a frozen copy: the general path's error (the packed weights are
    for the other cell), never the old cell's results; a subclass's run_direction still runs."""
    x = np.ones((2, 1, 3), np.float32)
    f = pyrnn.RNN(3, 5, seed=1).freeze()
    f.nonlinearity = "relu"
    with pytest.raises(ValueError, match="packed holds weights of a rnn_tanh cell, not rnn_relu"):
        f(x)
    g = pyrnn.GRU(3, 5, seed=1).freeze()
    g.reset_after = False
    with pytest.raises(ValueError, match="packed holds weights of a gru cell, not gru_reset_before"):
        g(x)
    g.reset_after = True
    assert_same(g(x), general(g, x))

    calls = []

    class Logged(pyrnn.LSTM):
        def run_direction(self, layer, direction, x, *args, **kwargs):
            calls.append((layer, direction))
            return super().run_direction(layer, direction, x, *args, **kwargs)

    m = Logged(3, 4, num_layers=2, seed=0).freeze()
    m(x)
    assert calls == [(0, 0), (1, 0)]


def test_outputs_are_fresh_arrays():
    """h_n of a one-direction layer is a view of the kernel's fresh array: writing into it (or y) must not
    reach a later call, the weights or the caller's states."""
    frozen = pyrnn.RNN(3, 4, seed=0).freeze()
    x = np.random.default_rng(0).standard_normal((2, 1, 3)).astype(np.float32)
    h0 = np.ones((1, 1, 4), np.float32)
    y, h = frozen(x, h0)
    y0, hn0 = y.copy(), h.copy()
    y[...] = 7
    h[...] = 7
    assert (h0 == 1).all()
    y2, h2 = frozen(x, h0)
    np.testing.assert_array_equal(y2, y0)
    np.testing.assert_array_equal(h2, hn0)


def test_copies_and_new_weights_get_their_own_direct_calls():
    rng = np.random.default_rng(7)
    layer = pyrnn.GRU(3, 5, num_layers=2, seed=1)
    frozen = layer.freeze()
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    y0 = frozen(x)[0]
    for clone in (copy.deepcopy(frozen), pickle.loads(pickle.dumps(frozen)), copy.copy(frozen)):
        assert clone._fast_calls[1]
        np.testing.assert_array_equal(clone(x)[0], y0)
    other = {k: v * 0.5 for k, v in layer.state_dict().items()}
    swapped = frozen.with_weights(other)
    layer.load_state_dict(other)
    np.testing.assert_array_equal(swapped(x)[0], layer.eval()(x)[0])
    np.testing.assert_array_equal(frozen(x)[0], y0)  # the original keeps its weights
    assert not np.array_equal(swapped(x)[0], y0)
    # a layer unpickled without freeze() has no direct call; frozen again it has
    plain = pickle.loads(pickle.dumps(layer))
    assert not plain.__dict__.get("_fast_calls")
    np.testing.assert_array_equal(plain.freeze()(x)[0], swapped(x)[0])


# ---------------------------------------------------------------------------------------------------------
# Calls of one or two steps over a few rows read W_ih and W_hh unpacked (csrc: direct_products, direct_tile):
# the same products in the same order as the packed kernels, so the same bits as a frozen copy's calls
# (which use the packed weights), as training mode's and as more threads'.

def _outputs(r, lstm):
    return [r[0], *(r[1] if lstm else (r[1],))]


@pytest.mark.parametrize("mode, kw", CONFIGS)
def test_unpacked_products_equal_packed_ones(mode, kw, isa, threads):
    rng = np.random.default_rng(11)
    lstm = mode == "LSTM"
    # K residues mod 4 and mod 16 (the transposed blocks' tails), I > 2048 (the projection's K blocks),
    # H not a multiple of the lanes (padding columns)
    for dtype in (np.float32, np.float64):
        for I, H in [(1, 1), (7, 9), (68, 16), (33, 65), (100, 300), (2100, 20)]:
            if kw.get("proj_size", 0) >= H:
                continue
            layer = getattr(pyrnn, mode)(I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=5, **kw)
            frozen = layer.freeze()
            P = kw.get("proj_size") or H
            for T, B in [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (1, 5), (2, 3)]:
                x = rng.standard_normal((T, B, I)).astype(dtype)
                h0 = rng.standard_normal((4, B, P)).astype(dtype)
                hx = (h0, rng.standard_normal((4, B, H)).astype(dtype)) if lstm else h0
                threads(1)
                want = _outputs(frozen(x, hx), lstm)
                got = [_outputs(layer.eval()(x, hx), lstm), _outputs(layer.train()(x, hx), lstm)]
                threads(2)
                got.append(_outputs(layer.eval()(x, hx), lstm))
                for g in got:
                    for a, e in zip(g, want):
                        np.testing.assert_array_equal(a, e, err_msg=f"{mode} {kw} I={I} H={H} T={T} B={B} {dtype}")


def test_unpacked_products_with_lengths_masks_and_gradients():
    """Lengths, recurrent dropout and backward after a one-step call: as a frozen copy (forward) and as the
    NumPy reference (gradients)."""
    from pyrnn import reference as R

    rng = np.random.default_rng(12)
    layer = pyrnn.GRU(9, 11, seed=6)
    frozen = layer.freeze()
    x = rng.standard_normal((2, 2, 9)).astype(np.float32)
    lengths = np.array([2, 1])
    np.testing.assert_array_equal(layer.eval()(x, None, lengths)[0], frozen(x, None, lengths)[0])
    x64 = x[:1].astype(np.float64)
    p = {k: v.astype(np.float64) for k, v in layer.state_dict().items()}
    W = {"W_ih": p["weight_ih_l0"], "W_hh": p["weight_hh_l0"], "b_ih": p["bias_ih_l0"], "b_hh": p["bias_hh_l0"]}
    layer64 = pyrnn.GRU(9, 11, dtype=np.float64, seed=6)
    layer64.load_state_dict(p)
    dy = rng.standard_normal((1, 2, 11))
    y, _ = layer64.train()(x64)
    dx, _ = layer64.backward(dy)
    y_ref, _, cache = R.gru_forward(x64, np.zeros((2, 11)), **W)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    g = R.gru_backward(cache, dy)
    np.testing.assert_allclose(dx, g[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer64.grads["weight_ih_l0"], g[2], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer64.grads["weight_hh_l0"], g[3], rtol=1e-10, atol=1e-12)
