"""Tests of the NumPy oracle in pyrnn.reference.

* backward against central finite differences (random-direction VJP checks,
  all inputs at once and one input at a time) for every cell variant;
* length / reverse semantics against running each sequence on its own;
* float32 against float64;
* against torch.nn.RNN / LSTM / GRU (skipped when torch is not importable);
* GRU reset_after=False against a plain loop over its equations;
* input validation and empty batches.
"""

import math

import numpy as np
import pytest

from pyrnn import reference as ref

from pyrnn._cells import GATES
from pyrnn.testing import GRAD_NAMES, VARIANTS, check_directional_derivatives, make_params, random_cotangents
from pyrnn.testing import run_backward as _run_backward
from pyrnn.testing import run_forward as _run_forward

T, B, I, H = 4, 3, 5, 7


def run_forward(variant, p, **kw):
    return _run_forward(ref, variant, p, **kw)


def run_backward(variant, cache, cot):
    return _run_backward(ref, variant, cache, cot)



# ---------------------------------------------------------------------------
# finite differences
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]], ids=["full", "lengths"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_vjp_matches_finite_differences(variant, bias, lengths, reverse):
    rng = np.random.default_rng(20240611)
    cell = VARIANTS[variant][0]
    p = make_params(rng, cell, bias=bias)
    kw = {"lengths": lengths, "reverse": reverse}
    outs, cache = run_forward(variant, p, **kw)
    cot = random_cotangents(rng, outs)
    grads = run_backward(variant, cache, cot)

    for name in GRAD_NAMES[cell]:
        if name in p:
            assert grads[name].shape == p[name].shape, name
            assert grads[name].dtype == np.float64, name
        else:  # no bias
            assert grads[name] is None, name

    def loss(q):
        o, cache = run_forward(variant, q, training=False, **kw)
        assert cache is None
        return sum(np.sum(cot[k] * o[k]) for k in o)

    check_directional_derivatives(loss, grads, p, rng)


# ---------------------------------------------------------------------------
# lengths / reverse semantics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_lengths_match_running_each_sequence_alone(variant, reverse):
    """A padded batch behaves like each sequence run alone on its own length."""
    rng = np.random.default_rng(7)
    cell = VARIANTS[variant][0]
    lengths = np.array([4, 1, 3])
    p = make_params(rng, cell)
    outs, cache = run_forward(variant, p, lengths=lengths, reverse=reverse)
    cot = random_cotangents(rng, outs)
    grads = run_backward(variant, cache, cot)

    for b, L in enumerate(lengths):
        assert np.all(outs["y"][L:, b] == 0)
        assert np.all(grads["x"][L:, b] == 0)
        # sequence b alone, truncated to its length, without `lengths`
        pb = {k: (v[:L, b:b + 1] if k == "x" else v[b:b + 1] if k in ("h0", "c0") else v)
              for k, v in p.items()}
        outs_b, cache_b = run_forward(variant, pb, reverse=reverse)
        cot_b = {k: (v[:L, b:b + 1] if k == "y" else v[b:b + 1]) for k, v in cot.items()}
        grads_b = run_backward(variant, cache_b, cot_b)
        np.testing.assert_allclose(outs["y"][:L, b], outs_b["y"][:, 0], rtol=1e-12, atol=1e-14)
        for k in ("h_n", "c_n"):
            if k in outs:
                np.testing.assert_allclose(outs[k][b], outs_b[k][0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grads["x"][:L, b], grads_b["x"][:, 0], rtol=1e-12, atol=1e-14)
        for k in ("h0", "c0"):
            if k in grads:
                np.testing.assert_allclose(grads[k][b], grads_b[k][0], rtol=1e-12, atol=1e-14)

    # parameter gradients are the sums over the sequences
    for k in ("W_ih", "W_hh", "b_ih", "b_hh"):
        total = 0.0
        for b, L in enumerate(lengths):
            pb = {kk: (v[:L, b:b + 1] if kk == "x" else v[b:b + 1] if kk in ("h0", "c0") else v)
                  for kk, v in p.items()}
            _, cache_b = run_forward(variant, pb, reverse=reverse)
            cot_b = {kk: (v[:L, b:b + 1] if kk == "y" else v[b:b + 1]) for kk, v in cot.items()}
            total = total + run_backward(variant, cache_b, cot_b)[k]
        np.testing.assert_allclose(grads[k], total, rtol=1e-12, atol=1e-13)

    # dy at padded positions is ignored
    cot_noisy = dict(cot, y=cot["y"].copy())
    for b, L in enumerate(lengths):
        cot_noisy["y"][L:, b] = 100.0
    grads_noisy = run_backward(variant, cache, cot_noisy)
    for k, g in grads.items():
        np.testing.assert_array_equal(grads_noisy[k], g)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_reverse_equals_forward_on_flipped_input(variant):
    rng = np.random.default_rng(11)
    p = make_params(rng, VARIANTS[variant][0])
    outs, cache = run_forward(variant, p, reverse=True)
    flipped = dict(p, x=p["x"][::-1])
    outs_f, cache_f = run_forward(variant, flipped)
    np.testing.assert_allclose(outs["y"], outs_f["y"][::-1], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(outs["h_n"], outs_f["h_n"], rtol=1e-13, atol=1e-15)
    cot = random_cotangents(rng, outs)
    grads = run_backward(variant, cache, cot)
    grads_f = run_backward(variant, cache_f, dict(cot, y=cot["y"][::-1]))
    np.testing.assert_allclose(grads["x"], grads_f["x"][::-1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads["W_hh"], grads_f["W_hh"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_none_means_zeros(variant):
    rng = np.random.default_rng(3)
    p = make_params(rng, VARIANTS[variant][0])
    zeros = {k: np.zeros_like(v) if k in ("h0", "c0") else v for k, v in p.items()}
    nones = {k: None if k in ("h0", "c0") else v for k, v in p.items()}
    outs_z, cache_z = run_forward(variant, zeros)
    outs_n, cache_n = run_forward(variant, nones)
    for k in outs_z:
        np.testing.assert_array_equal(outs_n[k], outs_z[k])
    cot_zero = {k: np.zeros_like(v) for k, v in outs_z.items()}
    cot_none = dict.fromkeys(outs_z)
    grads_z = run_backward(variant, cache_z, cot_zero)
    grads_n = run_backward(variant, cache_n, cot_none)
    for k, g in grads_z.items():
        np.testing.assert_array_equal(grads_n[k], g)
        assert np.all(g == 0)


# ---------------------------------------------------------------------------
# float32
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float32_agrees_with_float64(variant):
    rng = np.random.default_rng(5)
    cell = VARIANTS[variant][0]
    p64 = make_params(rng, cell)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    kw = {"lengths": [4, 1, 3], "reverse": True}
    outs64, cache64 = run_forward(variant, p64, **kw)
    outs32, cache32 = run_forward(variant, p32, **kw)
    for k in outs64:
        assert outs32[k].dtype == np.float32, k
        np.testing.assert_allclose(outs32[k], outs64[k], rtol=0, atol=1e-5, err_msg=k)
    cot64 = random_cotangents(rng, outs64)
    cot32 = {k: v.astype(np.float32) for k, v in cot64.items()}
    grads64 = run_backward(variant, cache64, cot64)
    grads32 = run_backward(variant, cache32, cot32)
    for k in grads64:
        assert grads32[k].dtype == np.float32, k
        np.testing.assert_allclose(grads32[k], grads64[k], rtol=1e-4, atol=1e-4, err_msg=k)


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------

TORCH_LENGTH_CASES = {
    "full": (4, None),
    "unsorted": (4, [4, 1, 3]),
    "shorter_than_T": (4, [3, 1, 2]),
    "ties": (7, [7, 5, 5, 2, 1, 1]),
}


def torch_reference(variant, p, cot, lengths, reverse):
    """Outputs and gradients of torch.nn.RNN / LSTM / GRU loaded with ``p``.

    With reverse=True the module is bidirectional and the reverse half is used
    (the loss does not depend on the forward half).
    """
    torch = pytest.importorskip("torch")
    cell, opts = VARIANTS[variant]
    T, B, I = p["x"].shape
    H = p["W_hh"].shape[1]
    bias = "b_ih" in p
    modules = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
    extra = {"nonlinearity": opts["nonlinearity"]} if cell == "rnn" else {}
    torch.manual_seed(0)
    module = modules[cell](I, H, bias=bias, bidirectional=reverse, **extra).double()
    suffix = "_l0_reverse" if reverse else "_l0"
    names = {"W_ih": "weight_ih", "W_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}
    params = {}
    with torch.no_grad():
        for k, name in names.items():
            if k in p:
                params[k] = getattr(module, name + suffix)
                params[k].copy_(torch.from_numpy(p[k]))

    leaves = {k: torch.tensor(p[k], requires_grad=True) for k in ("x", "h0", "c0") if k in p}
    leaves.update(params)
    d = 1 if reverse else 0  # direction index in torch's outputs

    def full_state(s):  # [B, H] -> [num_directions, B, H]
        return torch.stack([torch.zeros_like(s), s]) if reverse else s[None]

    hx = full_state(leaves["h0"])
    if cell == "lstm":
        hx = (hx, full_state(leaves["c0"]))
    inp = leaves["x"]
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(
            inp, torch.as_tensor(lengths), enforce_sorted=False)
    out, state = module(inp, hx)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    h_n, c_n = state if cell == "lstm" else (state, None)
    outs = {"y": out[..., d * H:(d + 1) * H], "h_n": h_n[d]}
    if cell == "lstm":
        outs["c_n"] = c_n[d]
    loss = sum((torch.from_numpy(cot[k]) * v).sum() for k, v in outs.items())
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return ({k: v.detach().numpy() for k, v in outs.items()},
            {k: g.numpy() for k, g in zip(leaves, grads)})


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("case", list(TORCH_LENGTH_CASES))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("variant", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_matches_torch(variant, bias, case, reverse):
    pytest.importorskip("torch")
    rng = np.random.default_rng(99)
    T_, lengths = TORCH_LENGTH_CASES[case]
    B_ = 3 if lengths is None else len(lengths)
    p = make_params(rng, VARIANTS[variant][0], T=T_, B=B_, bias=bias)
    outs, cache = run_forward(variant, p, lengths=lengths, reverse=reverse)
    cot = random_cotangents(rng, outs)
    grads = run_backward(variant, cache, cot)
    t_outs, t_grads = torch_reference(variant, p, cot, lengths, reverse)
    for k, v in t_outs.items():
        np.testing.assert_allclose(outs[k], v, rtol=1e-10, atol=1e-12, err_msg=k)
    assert set(t_grads) == set(p)
    for k, g in t_grads.items():
        np.testing.assert_allclose(grads[k], g, rtol=1e-10, atol=1e-12, err_msg=k)


# ---------------------------------------------------------------------------
# GRU reset_after=False against a plain loop over its equations
# ---------------------------------------------------------------------------


def gru_reset_before_loop(x, h0, W_ih, W_hh, b_ih, b_hh, lengths, reverse):
    """Cho et al. (2014 v3) GRU, one sample and one unit at a time."""
    T, B, _ = x.shape
    H = W_hh.shape[1]
    x, W_ih, W_hh = x.tolist(), W_ih.tolist(), W_hh.tolist()
    b_ih = [0.0] * 3 * H if b_ih is None else b_ih.tolist()
    b_hh = [0.0] * 3 * H if b_hh is None else b_hh.tolist()

    def sigmoid(v):
        return 1.0 / (1.0 + math.exp(-v))

    def dot(row, v):
        return sum(w * e for w, e in zip(row, v))

    y = np.zeros((T, B, H))
    h_n = np.zeros((B, H))
    for b in range(B):
        L = T if lengths is None else lengths[b]
        h = h0[b].tolist()
        for t in (reversed(range(L)) if reverse else range(L)):
            xt = x[t][b]
            r = [sigmoid(dot(W_ih[j], xt) + b_ih[j] + dot(W_hh[j], h) + b_hh[j])
                 for j in range(H)]
            z = [sigmoid(dot(W_ih[H + j], xt) + b_ih[H + j] + dot(W_hh[H + j], h) + b_hh[H + j])
                 for j in range(H)]
            rh = [r[k] * h[k] for k in range(H)]
            n = [math.tanh(dot(W_ih[2 * H + j], xt) + b_ih[2 * H + j]
                           + dot(W_hh[2 * H + j], rh) + b_hh[2 * H + j])
                 for j in range(H)]
            h = [(1.0 - z[j]) * n[j] + z[j] * h[j] for j in range(H)]
            y[t, b] = h
        h_n[b] = h
    return y, h_n


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]], ids=["full", "lengths"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gru_reset_before_matches_plain_loop(bias, lengths, reverse):
    rng = np.random.default_rng(17)
    p = make_params(rng, "gru", bias=bias)
    y, h_n, _ = ref.gru_forward(p["x"], p["h0"], p["W_ih"], p["W_hh"], p.get("b_ih"),
                                p.get("b_hh"), reset_after=False, lengths=lengths,
                                reverse=reverse, training=False)
    y_s, h_n_s = gru_reset_before_loop(p["x"], p["h0"], p["W_ih"], p["W_hh"], p.get("b_ih"),
                               p.get("b_hh"), lengths, reverse)
    np.testing.assert_allclose(y, y_s, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_n, h_n_s, rtol=1e-12, atol=1e-14)
    # and it really differs from reset_after=True
    y_after, _, _ = ref.gru_forward(p["x"], p["h0"], p["W_ih"], p["W_hh"], p.get("b_ih"),
                                    p.get("b_hh"), lengths=lengths, reverse=reverse)
    assert not np.allclose(y, y_after)


# ---------------------------------------------------------------------------
# validation and edge cases
# ---------------------------------------------------------------------------


def _lstm_inputs(**changes):
    p = make_params(np.random.default_rng(0), "lstm")
    p.update(changes)
    return p


def _call_lstm(**changes):
    kw = {k: changes.pop(k) for k in ("lengths",) if k in changes}
    p = _lstm_inputs(**changes)
    return ref.lstm_forward(p["x"], p["h0"], p["c0"], p["W_ih"], p["W_hh"], p.get("b_ih"),
                            p.get("b_hh"), **kw)


_P = _lstm_inputs()
FORWARD_ERRORS = {
    "x_ndim": (dict(x=_P["x"][0]), ValueError, "x must be a 3-D array"),
    "T_zero": (dict(x=_P["x"][:0]), ValueError, "T >= 1"),
    "h0_shape": (dict(h0=_P["h0"][:, :-1]), ValueError, "h0 must have shape (B, H) = (3, 7)"),
    "c0_shape": (dict(c0=_P["c0"][:-1]), ValueError, "c0 must have shape (B, H) = (3, 7)"),
    "h0_ndim": (dict(h0=_P["h0"][None]), ValueError, "h0 must have shape"),
    "W_ih_shape": (dict(W_ih=_P["W_ih"][:, :-1]), ValueError,
                   "W_ih must have shape (4*H, I) = (28, 5), got (28, 4)"),
    "W_hh_shape": (dict(W_hh=_P["W_hh"][:21]), ValueError, "W_hh must have shape (4*H, H)"),
    "W_hh_ndim": (dict(W_hh=_P["W_hh"].ravel()), ValueError, "W_hh must have shape"),
    "b_ih_shape": (dict(b_ih=_P["b_ih"][:-1]), ValueError, "b_ih must have shape (4*H,) = (28,)"),
    "b_hh_shape": (dict(b_hh=_P["b_hh"][:-1]), ValueError, "b_hh must have shape"),
    "one_bias": (dict(b_hh=None), ValueError, "b_ih and b_hh must both be given"),
    "mixed_dtypes": (dict(W_ih=_P["W_ih"].astype(np.float32)), TypeError,
                     "same dtype, got x=float64, W_ih=float32"),
    "int_dtype": (dict(x=np.ones((T, B, I), dtype=np.int64)), TypeError,
                  "x must have dtype float32 or float64, got int64"),
    "float16": (dict(h0=_P["h0"].astype(np.float16)), TypeError, "h0 must have dtype"),
    "lengths_zero": (dict(lengths=[4, 0, 3]), ValueError, "lengths must lie in [1, T] = [1, 4]"),
    "lengths_too_long": (dict(lengths=[5, 1, 3]), ValueError, "got min 1 and max 5"),
    "lengths_size": (dict(lengths=[4, 1]), ValueError, "lengths must be a 1-D array of size B = 3"),
    "lengths_ndim": (dict(lengths=[[4, 1, 3]]), ValueError, "got shape (1, 3)"),
    "lengths_float": (dict(lengths=[4.0, 1.0, 3.0]), TypeError, "lengths must be an integer array"),
    "lengths_bool": (dict(lengths=[True, True, True]), TypeError, "integer array, got dtype bool"),
}


@pytest.mark.parametrize("case", list(FORWARD_ERRORS))
def test_forward_validation(case):
    changes, exc, fragment = FORWARD_ERRORS[case]
    with pytest.raises(exc) as info:
        _call_lstm(**changes)
    assert fragment in str(info.value)


def test_rnn_and_gru_validation():
    p = make_params(np.random.default_rng(0), "gru")
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"):
        ref.rnn_forward(p["x"], p["h0"], p["W_ih"][:H], p["W_hh"][:H], nonlinearity="sigmoid")
    with pytest.raises(ValueError, match=r"W_hh must have shape \(1\*H, H\) with H >= 1 for rnn"):
        ref.rnn_forward(p["x"], p["h0"], p["W_ih"], p["W_hh"])
    with pytest.raises(ValueError, match=r"W_hh must have shape \(3\*H, H\) with H >= 1 for gru"):
        ref.gru_forward(p["x"], p["h0"], p["W_ih"][:H], p["W_hh"][:H])


def test_backward_validation():
    p = make_params(np.random.default_rng(0), "rnn")
    y, h_n, cache = ref.rnn_forward(p["x"], p["h0"], p["W_ih"], p["W_hh"])
    _, _, none_cache = ref.rnn_forward(p["x"], p["h0"], p["W_ih"], p["W_hh"], training=False)
    assert none_cache is None
    with pytest.raises(ValueError, match="training=True"):
        ref.rnn_backward(none_cache, y)
    with pytest.raises(ValueError, match="gru_backward needs a cache from gru_forward, got one from 'rnn'"):
        ref.gru_backward(cache, y)
    with pytest.raises(ValueError, match=r"dy must have shape \(T, B, H\) = \(4, 3, 7\), got \(4, 3, 6\)"):
        ref.rnn_backward(cache, y[..., :-1])
    with pytest.raises(ValueError, match=r"dh_n must have shape \(B, H\)"):
        ref.rnn_backward(cache, y, h_n[:-1])
    with pytest.raises(TypeError, match="dh_n must have the forward dtype float64, got float32"):
        ref.rnn_backward(cache, y, h_n.astype(np.float32))
    p = make_params(np.random.default_rng(0), "lstm")
    *_, cache = ref.lstm_forward(p["x"], p["h0"], p["c0"], p["W_ih"], p["W_hh"])
    with pytest.raises(TypeError, match="dc_n must have dtype float32 or float64, got int64"):
        ref.lstm_backward(cache, dc_n=np.zeros((B, H), dtype=np.int64))


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_empty_batch(variant, with_lengths):
    cell = VARIANTS[variant][0]
    p = make_params(np.random.default_rng(0), cell, B=0, dtype=np.float32)
    kw = {"lengths": np.zeros(0, dtype=np.int64)} if with_lengths else {}
    outs, cache = run_forward(variant, p, reverse=with_lengths, **kw)
    assert outs["y"].shape == (T, 0, H) and outs["y"].dtype == np.float32
    assert outs["h_n"].shape == (0, H)
    if cell == "lstm":
        assert outs["c_n"].shape == (0, H)
    grads = run_backward(variant, cache, random_cotangents(np.random.default_rng(1), outs))
    for k, g in grads.items():
        assert g.shape == p[k].shape and g.dtype == np.float32, k
        assert not np.any(g), k
