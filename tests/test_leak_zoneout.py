"""The kernels' leaky RNN (``leak=``) and zoneout masks (``zoneout_h``,
``zoneout_c``) against the NumPy reference, the reference against finite
differences, and their validation. (The layers' and pyrnn.torch's zoneout
option: test_zoneout.py; the reservoir built on the leaky cell: test_reservoir.py.)
"""

import numpy as np
import pytest

import pyrnn
from pyrnn import functional as F
from pyrnn import reference as R
from pyrnn.testing import GRAD_NAMES, VARIANTS, assert_close, make_params, random_cotangents, run_backward, run_forward

# (T, B, I, H, lengths, reverse): odd sizes leave SIMD tails.
CONFIGS = {
    "T5B3H7": (5, 3, 4, 7, None, False),
    "H17-rev-len": (6, 4, 5, 17, [6, 2, 1, 4], True),
    "H33-len": (4, 5, 3, 33, [4, 1, 3, 4, 2], False),
}


PLAIN = ("rnn_tanh", "rnn_relu")  # training takes only 0/1 masks (test_plain_rnn_trains_with_binary_masks_only)


def _masks(rng, variant, T, B, H, dtype, kind):
    """Zoneout masks: Bernoulli (zoneout proper) or fractional (any mixing weight works)."""
    draw = (lambda: (rng.random((T, B, H)) < 0.4).astype(dtype)) if kind == "bernoulli" else (
        lambda: rng.random((T, B, H)).astype(dtype))
    masks = {"zoneout_h": draw()}
    if VARIANTS[variant][0] == "lstm":
        masks["zoneout_c"] = draw()
    return masks


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_zoneout_matches_reference(isa, variant, cfg, dtype, rng):
    T, B, I, H, lengths, reverse = CONFIGS[cfg]
    p = make_params(rng, VARIANTS[variant][0], T=T, B=B, I=I, H=H, dtype=dtype)
    kw = {"lengths": None if lengths is None else np.array(lengths), "reverse": reverse,
          **_masks(rng, variant, T, B, H, dtype, "bernoulli" if dtype == np.float64 or variant in PLAIN else "fraction")}
    outs, ws = run_forward(F, variant, p, **kw)
    kw64 = {k: v.astype(np.float64) if k.startswith("zoneout") else v for k, v in kw.items()}
    ref_outs, cache = run_forward(R, variant, {k: v.astype(np.float64) for k, v in p.items()}, **kw64)
    for k in ref_outs:
        assert_close(outs[k], ref_outs[k], dtype, k)
    cot = random_cotangents(rng, outs)
    grads = run_backward(F, variant, ws, cot)
    ref_grads = run_backward(R, variant, cache, {k: v.astype(np.float64) for k, v in cot.items()})
    for k in GRAD_NAMES[VARIANTS[variant][0]]:
        assert_close(grads[k], ref_grads[k], dtype, "d" + k)


def _vjp_check(forward, backward, inputs, rng, eps=1e-6):
    """<J^T c, t> == <c, J t> by central differences along a random direction t (float64)."""
    outs = forward(inputs)
    cot = [rng.standard_normal(o.shape) for o in outs]
    grads = backward(cot)
    direction = {k: rng.standard_normal(v.shape) for k, v in inputs.items()}
    plus = forward({k: v + eps * direction[k] for k, v in inputs.items()})
    minus = forward({k: v - eps * direction[k] for k, v in inputs.items()})
    jt = sum(float(np.sum(c * (a - b))) for c, a, b in zip(cot, plus, minus)) / (2 * eps)
    jtc = sum(float(np.sum(grads[k] * direction[k])) for k in inputs)
    assert jtc == pytest.approx(jt, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("module", [R, F], ids=["reference", "kernels"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_zoneout_and_leak_gradients_by_finite_differences(module, variant, rng):
    """The reference's (and the kernels') backward of zoneout and leak from first principles."""
    T, B, I, H = 5, 3, 4, 6
    cell = VARIANTS[variant][0]
    p = make_params(rng, cell, T=T, B=B, I=I, H=H)
    masks = _masks(rng, variant, T, B, H, np.float64, "bernoulli" if variant in PLAIN else "fraction")
    kw = {"lengths": np.array([5, 2, 4]), "reverse": True, **masks}
    names = [k for k in p]

    def forward(inputs):
        outs, _ = run_forward(module, variant, inputs, **kw)
        return list(outs.values())

    def backward(cot):
        outs, cache = run_forward(module, variant, p, **kw)
        grads = run_backward(module, variant, cache, dict(zip(outs, cot)))
        return {k: grads[k] for k in names}

    _vjp_check(forward, backward, p, rng)


def test_lstm_projection_with_zoneout_by_finite_differences(rng):
    """The projected LSTM (no reference) with both masks: the kernels' own VJP check."""
    T, B, I, H, P = 5, 3, 4, 9, 5
    p = make_params(rng, "lstm", T=T, B=B, I=I, H=H)
    p["W_hh"] = rng.uniform(-0.5, 0.5, (4 * H, P))
    p["h0"] = rng.standard_normal((B, P))
    p["W_hr"] = rng.uniform(-0.5, 0.5, (P, H))
    zh, zc = rng.random((T, B, P)), rng.random((T, B, H))
    names = list(p)
    kw = {"lengths": [5, 1, 3], "zoneout_h": zh, "zoneout_c": zc}

    def run(inputs):
        return F.lstm_forward(inputs["x"], inputs["h0"], inputs["c0"], inputs["W_ih"], inputs["W_hh"],
                              inputs["b_ih"], inputs["b_hh"], W_hr=inputs["W_hr"], **kw)

    def backward(cot):
        *_, ws = run(p)
        g = F.lstm_backward(ws, *cot)
        return dict(zip(["x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh", "W_hr"], g))

    _vjp_check(lambda inputs: list(run(inputs)[:3]), lambda cot: {k: backward(cot)[k] for k in names}, p, rng)
    # zoneout of all units at every step keeps the initial states
    y, h_n, c_n, _ = F.lstm_forward(p["x"], p["h0"], p["c0"], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"],
                                    W_hr=p["W_hr"], zoneout_h=np.ones((T, B, P)), zoneout_c=np.ones((T, B, H)))
    np.testing.assert_array_equal(h_n, p["h0"])
    np.testing.assert_array_equal(c_n, p["c0"])


@pytest.mark.parametrize("variant", ["lstm", "gru", "rnn_tanh", "rnn_leaky"])
def test_zero_masks_change_nothing_and_ones_freeze_the_state(variant, rng):
    T, B, I, H = 4, 3, 5, 8
    cell = VARIANTS[variant][0]
    p = make_params(rng, cell, T=T, B=B, I=I, H=H)
    plain, ws0 = run_forward(F, variant, p)
    zero = {"zoneout_h": np.zeros((T, B, H)), **({"zoneout_c": np.zeros((T, B, H))} if cell == "lstm" else {})}
    zoned, ws1 = run_forward(F, variant, p, **zero)
    for k in plain:
        np.testing.assert_array_equal(zoned[k], plain[k])
    cot = random_cotangents(rng, plain)
    g0, g1 = run_backward(F, variant, ws0, cot), run_backward(F, variant, ws1, cot)
    for k in g0:
        np.testing.assert_array_equal(g1[k], g0[k])
    ones = {k: np.ones_like(v) for k, v in zero.items()}
    frozen, _ = run_forward(F, variant, p, **ones)
    np.testing.assert_array_equal(frozen["h_n"], p["h0"])
    np.testing.assert_array_equal(frozen["y"], np.broadcast_to(p["h0"], (T, B, H)))


@pytest.mark.parametrize("variant", ["lstm", "gru", "rnn_leaky"])
def test_zoneout_is_bitwise_equal_across_thread_counts(variant, rng, threads):
    T, B, I, H = 6, 9, 16, 70
    cell = VARIANTS[variant][0]
    p = make_params(rng, cell, T=T, B=B, I=I, H=H, dtype=np.float32)
    kw = {"lengths": np.array([6, 5, 5, 2, 1, 1, 6, 3, 4]),
          **_masks(rng, variant, T, B, H, np.float32, "bernoulli")}
    results = []
    for n in (1, 2, 3):
        threads(n)
        outs, ws = run_forward(F, variant, p, **kw)
        grads = run_backward(F, variant, ws, {k: np.ones_like(v) for k, v in outs.items()})
        results.append((outs, grads))
    for outs, grads in results[1:]:
        for k in outs:
            np.testing.assert_array_equal(outs[k], results[0][0][k])
        for k in grads:
            np.testing.assert_array_equal(grads[k], results[0][1][k])


@pytest.mark.parametrize("variant", ["lstm", "rnn_leaky"])
def test_residual_workspace_carries_leak_and_zoneout(variant, rng):
    T, B, I, H = 5, 4, 3, 9
    cell, opts = VARIANTS[variant]
    p = make_params(rng, cell, T=T, B=B, I=I, H=H)
    masks = _masks(rng, variant, T, B, H, np.float64, "bernoulli")
    args = (cell, p["x"], p["h0"], p.get("c0"), p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"])
    kw = {**opts, **masks}
    n = F.residual_nbytes(*args, **kw)
    assert n == F.residual_nbytes_for(cell, T, B, I, H, dtype=np.float64, **({"leak": 0.6} if "leak" in opts else {}))
    block = np.empty(n, np.uint8)
    y, h_n, c_n, ws = F.forward(*args, training=True, residual=block, **kw)
    y2, *_, ws_plain = F.forward(*args, training=True, **kw)
    np.testing.assert_array_equal(y, y2)
    again = F.workspace_from_residual(block, *args, y=y, **kw)
    dy = rng.standard_normal(y.shape)
    expected = F.backward(ws_plain, dy)
    for got in (F.backward(ws, dy), F.backward(again, dy)):
        for k, v in expected.items():
            if v is not None:
                np.testing.assert_array_equal(got[k], v)
    with pytest.raises(ValueError, match="another cell, dtype, shape, lengths or options"):
        F.workspace_from_residual(block, *args, y=y, **opts)  # without the masks
    if "leak" in opts:
        with pytest.raises(ValueError, match="another cell, dtype, shape, lengths or options"):
            F.workspace_from_residual(block, *args, y=y, **{**kw, "leak": 0.3})


def test_leaky_rnn_with_packed_weights_and_leak_one(rng):
    T, B, I, H = 7, 2, 3, 10
    p = make_params(rng, "rnn", T=T, B=B, I=I, H=H, dtype=np.float32)
    args = (p["x"], p["h0"], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"])
    y, h_n, _ = F.rnn_forward(*args, leak=0.25, training=False)
    packed = F.pack_weights("rnn", p["W_ih"], p["W_hh"], leak=0.25)
    y2, h2, _ = F.rnn_forward(*args, leak=0.25, training=False, packed=packed)
    np.testing.assert_allclose(y2, y, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="packed holds weights of a rnn_leaky cell, not rnn_tanh"):
        F.rnn_forward(*args, training=False, packed=packed)
    # leak 1 is the plain tanh update
    y1, *_ = F.rnn_forward(*args, leak=1.0, training=False)
    y0, *_ = F.rnn_forward(*args, training=False)
    np.testing.assert_allclose(y1, y0, rtol=1e-6, atol=1e-6)


def test_bad_leak_and_zoneout_inputs(rng):
    T, B, I, H = 3, 2, 4, 5
    p = make_params(rng, "lstm", T=T, B=B, I=I, H=H)
    r = make_params(rng, "rnn", T=T, B=B, I=I, H=H)
    rnn_args = (r["x"], r["h0"], r["W_ih"], r["W_hh"])
    with pytest.raises(ValueError, match=r"leak must lie in \(0, 1\], got 0"):
        F.rnn_forward(*rnn_args, leak=0)
    with pytest.raises(ValueError, match=r"leak must lie in \(0, 1\], got 1.5"):
        R.rnn_forward(*rnn_args, leak=1.5)
    with pytest.raises(TypeError, match="leak must be a real number in"):
        F.rnn_forward(*rnn_args, leak="0.5")
    with pytest.raises(ValueError, match="leak is for the tanh RNN"):
        F.rnn_forward(*rnn_args, nonlinearity="relu", leak=0.5)
    with pytest.raises(ValueError, match="leak is only used by the RNN"):
        F.forward("lstm", p["x"], p["h0"], p["c0"], p["W_ih"], p["W_hh"], leak=0.5)
    with pytest.raises(ValueError, match=r"zoneout_h must have shape \(T, B, H\) = \(3, 2, 5\), got \(2, 5\)"):
        F.rnn_forward(*rnn_args, zoneout_h=np.zeros((B, H)))
    with pytest.raises(ValueError, match="zoneout_c .* is only used by the LSTM, not gru"):
        g = make_params(rng, "gru", T=T, B=B, I=I, H=H)
        F.forward("gru", g["x"], g["h0"], None, g["W_ih"], g["W_hh"], zoneout_c=np.zeros((T, B, H)))
    with pytest.raises(TypeError, match="all inputs must have the same dtype"):
        F.lstm_forward(p["x"], p["h0"], p["c0"], p["W_ih"], p["W_hh"], zoneout_c=np.zeros((T, B, H), np.float32))
    with pytest.raises(TypeError, match="zoneout_h must have dtype float32 or float64, got int64"):
        F.rnn_forward(*rnn_args, zoneout_h=np.zeros((T, B, H), np.int64))
    for bad in (2.0, -0.5, np.nan):
        with pytest.raises(ValueError, match=r"zoneout_h must hold weights in \[0, 1\]"):
            F.rnn_forward(*rnn_args, leak=0.5, zoneout_h=np.full((T, B, H), bad))
    with pytest.raises(ValueError, match=r"zoneout_c must hold weights in \[0, 1\].*got values in \[0.0, 1.5\]"):
        R.lstm_forward(p["x"], p["h0"], p["c0"], p["W_ih"], p["W_hh"],
                       zoneout_c=np.concatenate([np.zeros((T - 1, B, H)), np.full((1, B, H), 1.5)]))
    with pytest.raises(ValueError, match=r"zoneout_c must have shape \(T, B, H\)"):
        R.lstm_forward(p["x"], p["h0"], p["c0"], p["W_ih"], p["W_hh"], zoneout_c=np.zeros((T, B, H + 1)))


def test_show_config_lists_the_leaky_cell():
    assert "rnn_leaky" in [name for _, name, _, _ in pyrnn._core.cells()]


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_plain_rnn_trains_with_binary_masks_only(nonlinearity, rng):
    """Its backward reads tanh' (relu') from h_t, which is h~_t only where the mask is 0."""
    T, B, I, H = 4, 2, 3, 5
    r = make_params(rng, "rnn", T=T, B=B, I=I, H=H)
    args = (r["x"], r["h0"], r["W_ih"], r["W_hh"], r["b_ih"], r["b_hh"])
    half = np.full((T, B, H), 0.5)
    with pytest.raises(ValueError, match="must hold only 0 and 1"):
        F.rnn_forward(*args, nonlinearity=nonlinearity, zoneout_h=half)
    y, *_ = F.rnn_forward(*args, nonlinearity=nonlinearity, zoneout_h=half, training=False)
    y_ref, *_ = R.rnn_forward(*args, nonlinearity=nonlinearity, zoneout_h=half, training=False)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    F.rnn_forward(*args, leak=1.0, zoneout_h=half)  # the leaky cell keeps tanh's input: any weights
