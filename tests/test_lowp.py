"""Reduced-precision inference (int8, bf16): kernels against the NumPy
emulation in pyrnn.reference, layers, cells, errors, threads, and the
pyrnn.torch front (freeze, quantize_dynamic)."""
import copy
import pickle

import numpy as np
import pytest

import pyrnn
from pyrnn import functional as F
from pyrnn import reference as R

PRECISIONS = ["int8", "bf16"]
# (family, options)
VARIANTS = [("lstm", {}), ("gru", {}), ("gru", {"reset_after": False}), ("rnn", {}), ("rnn", {"nonlinearity": "relu"})]
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _weights(rng, cell, I, H, bias=True):
    G = GATES[cell]
    W_ih = (rng.standard_normal((G * H, I)) / np.sqrt(I)).astype(np.float32)
    W_hh = (rng.standard_normal((G * H, H)) / np.sqrt(H)).astype(np.float32)
    b = [(0.1 * rng.standard_normal(G * H)).astype(np.float32) for _ in range(2)] if bias else [None, None]
    return W_ih, W_hh, *b


def _reference(cell, x, h0, c0, W_ih, W_hh, b_ih, b_hh, precision, **kw):
    fn = getattr(R, f"{cell}_forward")
    states = (h0, c0) if cell == "lstm" else (h0,)
    out = fn(x, *states, W_ih, W_hh, b_ih, b_hh, training=False, precision=precision, **kw)
    return out[0], out[1]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cell,opts", VARIANTS)
@pytest.mark.parametrize("T,B,I,H", [(5, 1, 1, 1), (4, 3, 17, 7), (3, 9, 33, 40)])
def test_kernels_equal_the_emulation(cell, opts, T, B, I, H, precision, isa, rng):
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((B, H))).astype(np.float32)
    c0 = (0.5 * rng.standard_normal((B, H))).astype(np.float32) if cell == "lstm" else None
    w = _weights(rng, cell, I, H)
    packed = F.pack_weights(cell, w[0], w[1], precision=precision, **opts)
    assert packed.precision == precision
    y, h_n, c_n, ws = F.forward(cell, x, h0, c0, *w, packed=packed, training=False, **opts)
    assert ws is None
    ry, rh = _reference(cell, x, h0, c0, *w, precision, **opts)
    # The same arithmetic up to float32 rounding of the sums and the gates' math.
    np.testing.assert_allclose(y, ry, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(h_n, rh, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("cell,opts", [("lstm", {}), ("gru", {})])
def test_lengths_reverse_and_no_bias(cell, opts, precision, rng):
    T, B, I, H = 6, 5, 9, 13
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = np.array([6, 2, 3, 1, 6])
    w = _weights(rng, cell, I, H, bias=False)
    packed = F.pack_weights(cell, w[0], w[1], precision=precision, **opts)
    for reverse in (False, True):
        y, h_n, _, _ = F.forward(cell, x, None, None, *w, packed=packed, training=False, lengths=lengths,
                                 reverse=reverse, **opts)
        ry, rh = _reference(cell, x, None, None, *w, precision, lengths=lengths, reverse=reverse, **opts)
        np.testing.assert_allclose(y, ry, rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(h_n, rh, rtol=1e-5, atol=2e-6)
        assert not y[2:, 1].any()  # zero past each length, as in fp32


@pytest.mark.parametrize("precision,tol", [("int8", 0.1), ("bf16", 0.02)])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_close_to_float32(cell, precision, tol, rng):
    T, B, I, H = 20, 4, 32, 64
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w = _weights(rng, cell, I, H)
    y32 = F.forward(cell, x, None, None, *w, training=False)[0]
    y = F.forward(cell, x, None, None, *w, training=False, packed=F.pack_weights(cell, w[0], w[1],
                                                                                 precision=precision))[0]
    err = np.abs(y - y32)
    assert 0 < err.max() < tol  # rounded weights, so not equal; but close
    assert err.mean() < tol / 5


@pytest.mark.parametrize("precision", PRECISIONS)
def test_projection(precision, rng):
    lstm = pyrnn.LSTM(7, 24, proj_size=5, num_layers=2, seed=3)
    x = rng.standard_normal((6, 3, 7)).astype(np.float32)
    y32, (h32, c32) = lstm.eval()(x)
    y, (h, c) = lstm.freeze(precision)(x)
    assert y.shape == y32.shape and h.shape == h32.shape and c.shape == c32.shape
    np.testing.assert_allclose(y, y32, atol=0.03)
    assert not np.array_equal(y, y32)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_results_do_not_depend_on_threads(precision, threads, rng):
    T, B, I, H = 7, 6, 40, 72
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    for cell in ("lstm", "gru", "rnn"):
        w = _weights(rng, cell, I, H)
        packed = F.pack_weights(cell, w[0], w[1], precision=precision)
        outs = []
        for n in (1, 2, 3, 4):
            threads(n)
            outs.append(F.forward(cell, x, None, None, *w, packed=packed, training=False)[0])
        for o in outs[1:]:
            np.testing.assert_array_equal(o, outs[0])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_nan_and_inf_propagate_per_row(precision, rng):
    T, B, I, H = 3, 4, 8, 16
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    x[1, 2, 3] = np.nan
    x[0, 0, 1] = np.inf
    w = _weights(rng, "lstm", I, H)
    y = F.forward("lstm", x, None, None, *w, training=False,
                  packed=F.pack_weights("lstm", w[0], w[1], precision=precision))[0]
    assert np.isnan(y[1:, 2]).all() and np.isfinite(y[:1, 2]).all()
    assert np.isfinite(y[:, 1]).all() and np.isfinite(y[:, 3]).all()
    if precision == "int8":  # a row with inf has no int8 scale: NaN, never a silent number
        assert np.isnan(y[:, 0]).all()
    else:  # bf16 multiplies the fp32 activations: inf goes where fp32's goes
        y32 = F.forward("lstm", x, None, None, *w, training=False)[0]
        np.testing.assert_array_equal(np.isfinite(y), np.isfinite(y32))


def test_quantisation_helpers():
    a = np.array([[0.5, -1.0, 0.25], [0, 0, 0], [1, np.nan, 2], [3, np.inf, 1]], np.float32)
    q, s = R.quantize_rows_int8(a)
    np.testing.assert_array_equal(q[0], [64, -127, 32])  # 63.5 rounds to even
    assert s[0] == np.float32(1.0) / np.float32(127) and s[1] == 0 and not q[1].any()
    q7, s7 = R.quantize_rows_int8(a, levels=63)  # the activations' 7 bits
    np.testing.assert_array_equal(q7[0], [32, -63, 16])  # 31.5 rounds to even
    assert s7[0] == np.float32(1.0) / np.float32(63)
    assert np.isnan(s[2]) and np.isnan(s[3]) and not q[2:].any()
    b = R.round_bf16(np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, np.nan], np.float32))
    np.testing.assert_array_equal(b[:4], [1.0, 1.0, 1 + 2 ** -6, -2.5])  # ties to even
    assert np.isnan(b[4])


# ---------------------------------------------------------------- layers --

@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mode,kw", [("LSTM", {}), ("GRU", {}), ("RNN", {"nonlinearity": "relu"})])
def test_frozen_layers(mode, kw, precision, rng):
    layer = getattr(pyrnn, mode)(6, 11, num_layers=2, bidirectional=True, batch_first=True, seed=1, **kw)
    frozen = layer.freeze(precision=precision)
    assert frozen.precision == precision and layer.precision == "same"
    assert f"precision={precision!r}" in repr(frozen)
    x = rng.standard_normal((3, 5, 6)).astype(np.float32)
    out, _ = frozen(x)
    # Layer by layer and direction: the emulation of the same stack.
    ref = np.swapaxes(x, 0, 1)
    cell = mode.lower()
    for layer_i in range(2):
        ys = []
        for d in range(2):
            p = layer.direction_params(layer_i, d)
            ys.append(_reference(cell, ref, None, None, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], precision,
                                 reverse=d == 1, **kw)[0])
        ref = np.concatenate(ys, axis=2)
    np.testing.assert_allclose(out, np.swapaxes(ref, 0, 1), rtol=1e-5, atol=3e-6)
    # copies and pickles keep the precision
    for other in (copy.deepcopy(frozen), pickle.loads(pickle.dumps(frozen))):
        assert other.precision == precision
        np.testing.assert_array_equal(other(x)[0], out)
    with pytest.raises(RuntimeError, match="inference only"):
        frozen.train()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name,kw", [("LSTMCell", {}), ("GRUCell", {}), ("GRUCell", {"reset_after": False}),
                                     ("RNNCell", {})])
def test_frozen_cells(name, kw, precision, isa, rng):
    cell = getattr(pyrnn, name)(13, 17, seed=2, **kw)
    frozen = cell.freeze(precision)
    assert frozen.precision == precision and precision in repr(frozen)
    x = rng.standard_normal((3, 13)).astype(np.float32)
    h = (0.5 * rng.standard_normal((3, 17))).astype(np.float32)
    family = cell.cell.family
    W_ih, W_hh, b_ih, b_hh = cell._weights()
    if family == "lstm":
        c = (0.5 * rng.standard_normal((3, 17))).astype(np.float32)
        h1, c1 = frozen(x, (h, c))
        ref = R.lstm_forward(x[None], h, c, W_ih, W_hh, b_ih, b_hh, training=False, precision=precision)
        np.testing.assert_allclose(c1, ref[2], rtol=1e-5, atol=2e-6)
    else:
        h1 = frozen(x, h)
        opts = {"nonlinearity": cell.nonlinearity} if family == "rnn" else {"reset_after": cell.reset_after}
        ref = getattr(R, f"{family}_forward")(x[None], h, W_ih, W_hh, b_ih, b_hh, training=False,
                                              precision=precision, **opts)
    np.testing.assert_allclose(h1, ref[1], rtol=1e-5, atol=2e-6)
    assert pickle.loads(pickle.dumps(frozen)).precision == precision


def test_errors(rng):
    W_ih, W_hh, b_ih, b_hh = _weights(rng, "lstm", 3, 4)
    with pytest.raises(ValueError, match="precision must be"):
        F.pack_weights("lstm", W_ih, W_hh, precision="int4")
    with pytest.raises(ValueError, match="precision must be"):
        pyrnn.LSTM(3, 4).freeze(precision=8)
    with pytest.raises(TypeError, match="needs float32 weights, got float64"):
        pyrnn.LSTM(3, 4, dtype=np.float64).freeze("int8")
    with pytest.raises(TypeError, match="needs float32 weights"):
        pyrnn.GRUCell(3, 4, dtype=np.float64).freeze("bf16")
    with pytest.raises(TypeError, match="needs float32 weights"):
        F.pack_weights("lstm", W_ih.astype(np.float64), W_hh.astype(np.float64), precision="bf16")
    packed = F.pack_weights("lstm", W_ih, W_hh, precision="int8")
    x = np.zeros((2, 1, 3), np.float32)
    with pytest.raises(ValueError, match="for inference: pass training=False"):
        F.forward("lstm", x, None, None, W_ih, W_hh, b_ih, b_hh, packed=packed, training=True)
    with pytest.raises(ValueError, match="precision"):
        R.lstm_forward(x, None, None, W_ih, W_hh, precision="int8")  # training=True by default
    # "bfloat16" and "same" are accepted names
    assert F.pack_weights("lstm", W_ih, W_hh, precision="bfloat16").precision == "bf16"
    assert F.pack_weights("lstm", W_ih, W_hh, precision="same").precision == "same"


def test_reduced_weights_take_fewer_bytes(rng):
    W_ih, W_hh, _, _ = _weights(rng, "lstm", 64, 128)
    n = {p: F.pack_weights("lstm", W_ih, W_hh, precision=p).nbytes for p in ("same", "int8", "bf16")}
    assert n["int8"] < 0.3 * n["same"] and n["bf16"] < 0.55 * n["same"]
