"""Recurrent dropout (h_mask) and zoneout (zoneout_h, zoneout_c) of the
layer-normalised LSTM and GRU, at every level:

* the NumPy reference against finite differences, and against independent
  formulations where one exists (a [1, H] h_mask is W_hh with scaled columns;
  all-keep zoneout holds the initial state; identity masks change nothing);
* the C++ kernels against the reference at every ISA level this CPU has,
  with lengths and reverse; 1 vs 2 threads bitwise; identity masks bitwise
  equal to no masks; finite differences of the kernels;
* the NumPy layers by finite differences (masks fixed by the layer's RNG) and
  against the reference run direction by direction on the masks they drew;
  eval mode is the identity;
* the torch modules by gradcheck and against the NumPy layers with injected
  masks;
* validation of mask shapes, rates and the GRU's refusal of zoneout_c.
"""

import numpy as np
import pytest

import pyrnn
from pyrnn import functional as F
from pyrnn import reference as ref
from pyrnn.testing import (LN_GRAD_NAMES, assert_bitwise_equal, assert_close, check_layernorm_gradients,
                           make_layernorm_params, make_masks, random_cotangents, run_layernorm_backward,
                           run_layernorm_forward)
# The helpers and torch comparisons shared with the maskless tests (tests/ is on sys.path under pytest).
from test_layernorm import (CELLS, LAYERS, _randomise, _torch, _torch_module, kernel_forward_backward,
                            reference_stack)
from test_layernorm import mask_options as _options



def _shape(p):
    T, B, _ = p["x"].shape
    return T, B, p["W_hh"].shape[1]


# ---------------------------------------------------------------------------
# the NumPy reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["h_mask", "zoneout", "both"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_reference_vjp_matches_finite_differences(cell, lengths, reverse, which):
    rng = np.random.default_rng(20261203)
    p = make_layernorm_params(rng, cell)
    masks = make_masks(rng, cell, *_shape(p), h_mask=which != "zoneout", zoneout=which != "h_mask")
    check_layernorm_gradients(ref, cell, p, rng, lengths=lengths, reverse=reverse, **masks)


@pytest.mark.parametrize("cell", CELLS)
def test_reference_h_mask_of_one_sequence_is_scaled_recurrent_columns(cell, rng):
    """With B = 1, W_hh (h * m) = (W_hh * m) h: the mask equals scaling W_hh's columns
    (for the GRU only where h enters W_hh: z * h keeps the unmasked h)."""
    p = make_layernorm_params(rng, cell, B=1)
    m = rng.uniform(0.0, 2.0, (1, p["W_hh"].shape[1]))
    outs, _ = run_layernorm_forward(ref, cell, p, h_mask=m, training=False)
    scaled, _ = run_layernorm_forward(ref, cell, dict(p, W_hh=p["W_hh"] * m), training=False)
    for k in outs:
        np.testing.assert_allclose(outs[k], scaled[k], rtol=1e-13, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell", CELLS)
def test_reference_identity_and_all_keep_masks(cell, reverse, rng):
    p = make_layernorm_params(rng, cell)
    T, B, H = _shape(p)
    kw = {"lengths": np.array([4, 2, 3]), "reverse": reverse, "training": False}
    plain, _ = run_layernorm_forward(ref, cell, p, **kw)
    ident = {"h_mask": np.ones((B, H)), "zoneout_h": np.zeros((T, B, H))}
    if cell == "lstm":
        ident["zoneout_c"] = np.zeros((T, B, H))
    same, _ = run_layernorm_forward(ref, cell, p, **ident, **kw)
    for k in plain:
        np.testing.assert_array_equal(same[k], plain[k], err_msg=k)
    # every unit keeps its previous value at every step: h (and c) never move
    keep = {"zoneout_h": np.ones((T, B, H))}
    if cell == "lstm":
        keep["zoneout_c"] = np.ones((T, B, H))
    held, _ = run_layernorm_forward(ref, cell, p, **keep, **kw)
    np.testing.assert_array_equal(held["h_n"], p["h0"])
    if cell == "lstm":
        np.testing.assert_array_equal(held["c_n"], p["c0"])
    for b, L in enumerate(kw["lengths"]):
        np.testing.assert_array_equal(held["y"][:L, b], np.broadcast_to(p["h0"][b], (L, H)))


def test_reference_zoneout_is_time_aligned_with_x(rng):
    """The mask of the step that consumes x[t] is zoneout_h[t], in either direction: the reverse
    direction on flipped inputs and flipped masks equals the forward one, flipped back."""
    for cell in CELLS:
        p = make_layernorm_params(rng, cell)
        masks = make_masks(rng, cell, *_shape(p))
        fwd, _ = run_layernorm_forward(ref, cell, p, training=False, **masks)
        flipped = {k: v[::-1].copy() for k, v in masks.items() if k != "h_mask"}
        rev, _ = run_layernorm_forward(ref, cell, dict(p, x=p["x"][::-1].copy()), reverse=True, training=False,
                                       h_mask=masks["h_mask"], **flipped)
        np.testing.assert_allclose(rev["y"][::-1], fwd["y"], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(rev["h_n"], fwd["h_n"], rtol=1e-13, atol=1e-14)


# ---------------------------------------------------------------------------
# the C++ kernels
# ---------------------------------------------------------------------------

# (T, B, I, H, bias, lengths, reverse): odd H (not whole vectors at any ISA
# level), single units, batches that end mid-tile, lengths with ties.
KERNEL_CONFIGS = {
    "H1": (3, 2, 3, 1, True, None, False),
    "H7-rev": (4, 3, 5, 7, True, None, True),
    "H17-len": (5, 7, 6, 17, True, [5, 2, 5, 1, 3, 4, 2], False),
    "H33-len-rev": (6, 5, 9, 33, False, [6, 1, 4, 6, 2], True),
}
MASK_KINDS = {"h_mask": {"zoneout": False}, "zoneout": {"h_mask": False}, "both": {}}


def _kernel_case(cell, cfg, dtype, rng, kind="both", binary=False):
    T, B, I, H, bias, lengths, reverse = KERNEL_CONFIGS[cfg]
    p = make_layernorm_params(rng, cell, T=T, B=B, I=I, H=H, bias=bias, dtype=dtype)
    masks = make_masks(rng, cell, T, B, H, binary=binary, dtype=dtype, **MASK_KINDS[kind])
    return p, {"lengths": None if lengths is None else np.array(lengths), "reverse": reverse, **masks}


def _check_kernel_parity(cell, p, kw, dtype, rng):
    outs, ws = run_layernorm_forward(F, cell, p, **kw)
    to64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == dtype else v) for k, v in kw.items()}
    ref_outs, cache = run_layernorm_forward(ref, cell, {k: v.astype(np.float64) for k, v in p.items()}, **to64)
    for k in ref_outs:
        assert outs[k].dtype == dtype, k
        assert_close(outs[k], ref_outs[k], dtype, k)
    cot = random_cotangents(rng, outs)
    grads = run_layernorm_backward(F, cell, ws, cot)
    ref_grads = run_layernorm_backward(ref, cell, cache, {k: v.astype(np.float64) for k, v in cot.items()})
    for k in LN_GRAD_NAMES[cell]:
        if ref_grads[k] is None:
            assert grads[k] is None, k
            continue
        assert_close(grads[k], ref_grads[k], dtype, "d" + k)


@pytest.mark.parametrize("kind", list(MASK_KINDS))
@pytest.mark.parametrize("cfg", list(KERNEL_CONFIGS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_kernels_match_reference(cell, dtype, cfg, kind, isa, rng):
    p, kw = _kernel_case(cell, cfg, dtype, rng, kind)
    _check_kernel_parity(cell, p, kw, dtype, rng)


@pytest.mark.parametrize("cell", CELLS)
def test_kernels_with_binary_masks_and_no_initial_states(cell, isa, rng):
    p, kw = _kernel_case(cell, "H17-len", np.float32, rng, binary=True)
    p.pop("h0")
    p.pop("c0", None)
    _check_kernel_parity(cell, p, kw, np.float32, rng)


@pytest.mark.parametrize("cell", CELLS)
def test_kernels_at_a_benchmark_like_size(cell, rng):
    p = make_layernorm_params(rng, cell, T=6, B=20, I=24, H=70, dtype=np.float32)
    masks = make_masks(rng, cell, 6, 20, 70, binary=True, dtype=np.float32)
    _check_kernel_parity(cell, p, {"lengths": np.array([6, 5] * 10), "reverse": True, **masks}, np.float32, rng)


@pytest.mark.parametrize("cell", CELLS)
def test_kernel_gradients_match_finite_differences(cell, rng):
    p, kw = _kernel_case(cell, "H7-rev", np.float64, rng)
    kw["lengths"] = np.array([4, 2, 3])
    check_layernorm_gradients(F, cell, p, rng, **kw)


@pytest.mark.parametrize("cell", CELLS)
def test_identity_masks_are_bitwise_no_masks(cell, isa, rng):
    """h * 1 and 0 * h_prev + 1 * h~ are exact: identity masks reproduce the maskless kernels bitwise."""
    p = make_layernorm_params(rng, cell, T=5, B=6, I=7, H=19, dtype=np.float32)
    kw = {"lengths": np.array([5, 1, 4, 5, 2, 3]), "reverse": True}
    ident = {"h_mask": np.ones((6, 19), np.float32), "zoneout_h": np.zeros((5, 6, 19), np.float32)}
    if cell == "lstm":
        ident["zoneout_c"] = np.zeros((5, 6, 19), np.float32)
    plain, with_identity = (kernel_forward_backward(cell, p, 1, **kw, **masks) for masks in ({}, ident))
    assert_bitwise_equal(with_identity[0], plain[0])
    assert_bitwise_equal(with_identity[1], plain[1])
    inference, _ = run_layernorm_forward(F, cell, p, training=False, **kw, **ident)
    assert_bitwise_equal(inference, plain[0])


def test_functional_and_core_validate_masks(rng):
    from pyrnn import _core
    p = make_layernorm_params(rng, "lstm", T=3, B=2, I=4, H=5)
    with pytest.raises(ValueError, match=r"h_mask must have shape \(B, H\)"):
        run_layernorm_forward(F, "lstm", p, h_mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"zoneout_h must have shape \(T, B, H\)"):
        run_layernorm_forward(F, "lstm", p, zoneout_h=np.zeros((2, 2, 5)))
    with pytest.raises(ValueError, match=r"zoneout_c must have shape \(T, B, H\)"):
        run_layernorm_forward(F, "lstm", p, zoneout_c=np.zeros((3, 2, 4)))
    with pytest.raises(ValueError, match=r"zoneout_h .*\[0, 1\]"):
        run_layernorm_forward(F, "lstm", p, zoneout_h=np.full((3, 2, 5), 1.5))
    with pytest.raises(ValueError, match=r"zoneout_c .*\[0, 1\]"):
        run_layernorm_forward(ref, "lstm", p, zoneout_c=np.full((3, 2, 5), -0.5))
    with pytest.raises(TypeError, match="all inputs must have the same dtype.*h_mask=float32"):
        run_layernorm_forward(F, "lstm", p, h_mask=np.ones((2, 5), np.float32))
    g = make_layernorm_params(rng, "gru", T=3, B=2, I=4, H=5)
    for module in (F, ref):
        with pytest.raises(TypeError, match="zoneout_c"):
            run_layernorm_forward(module, "gru", g, zoneout_c=np.zeros((3, 2, 5)))
    # the extension checks shapes itself
    args = [_core.CellKind.GRU, g["x"], None, None, g["W_ih"], g["W_hh"], g["b_ih"], g["b_hh"], g["ln_ih"],
            g["ln_hh"], None, None, None, False, True]
    with pytest.raises(ValueError, match="h_mask: expected a C-contiguous array of shape"):
        _core.layernorm_forward(*args, h_mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match="zoneout_h: expected a C-contiguous array of shape"):
        _core.layernorm_forward(*args, zoneout_h=np.zeros((3, 2, 4)))
    with pytest.raises(ValueError, match="zoneout_c: LSTM only"):
        _core.layernorm_forward(*args, zoneout_c=np.zeros((3, 2, 5)))


# ---------------------------------------------------------------------------
# the NumPy layers
# ---------------------------------------------------------------------------


def test_layer_arguments_repr_and_errors():
    lstm = pyrnn.LayerNormLSTM(3, 4, recurrent_dropout=0.2, zoneout=0.1)
    assert (lstm.recurrent_dropout, lstm.zoneout, lstm.zoneout_c) == (0.2, 0.1, 0.1)  # zoneout_c: None -> zoneout
    assert repr(lstm) == "LayerNormLSTM(3, 4, recurrent_dropout=0.2, zoneout=0.1)"
    assert repr(pyrnn.LayerNormLSTM(3, 4, zoneout_c=0.3)) == "LayerNormLSTM(3, 4, zoneout_c=0.3)"
    gru = pyrnn.LayerNormGRU(3, 4, zoneout=0.5)
    assert (gru.zoneout, gru.zoneout_c, gru.recurrent_dropout) == (0.5, 0.0, 0.0)
    assert repr(gru) == "LayerNormGRU(3, 4, zoneout=0.5)"
    for cls in (pyrnn.LayerNormLSTM, pyrnn.LayerNormGRU):
        with pytest.raises(ValueError, match="recurrent_dropout should be a number in range"):
            cls(3, 4, recurrent_dropout=1.5)
        with pytest.raises(ValueError, match=r"zoneout should be a number in range \[0, 1\]"):
            cls(3, 4, zoneout=-0.1)
        with pytest.raises(TypeError):
            cls(3, 4, 1, True, False, 0.0, False, 0.5)  # keyword-only
    with pytest.raises(ValueError, match=r"zoneout_c should be a number in range \[0, 1\]"):
        pyrnn.LayerNormLSTM(3, 4, zoneout_c=2)
    with pytest.raises(TypeError, match="zoneout_c"):
        pyrnn.LayerNormGRU(3, 4, zoneout_c=0.1)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_eval_is_identity_and_training_draws_per_call(cell, rng):
    layer = LAYERS[cell](3, 4, num_layers=2, bidirectional=True, seed=5, **_options(cell))
    _randomise(layer, rng)
    plain = LAYERS[cell](3, 4, num_layers=2, bidirectional=True, seed=6)
    plain.load_state_dict(layer.state_dict())
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    a, _ = layer(x)
    b, _ = layer(x)
    assert not np.array_equal(a, b)  # fresh masks per call
    layer.eval()
    plain.eval()
    np.testing.assert_array_equal(layer(x)[0], plain(x)[0])
    np.testing.assert_array_equal(layer(x)[0], plain.train()(x)[0])  # no masks: training == eval numbers


@pytest.mark.parametrize("cell", CELLS)
def test_layer_matches_reference_on_the_masks_it_drew(cell, rng):
    layer = LAYERS[cell](4, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=1, **_options(cell))
    _randomise(layer, rng)
    drawn = {}
    run = layer.run_direction

    def spy(k, d, x, h0=None, c0=None, **kw):
        drawn[k, d] = {n: kw[n] for n in ("h_mask", "zoneout_h", "zoneout_c")}
        return run(k, d, x, h0, c0, **kw)

    layer.run_direction = spy
    x = rng.standard_normal((6, 3, 4))
    lengths = np.array([6, 2, 4])
    out, _ = layer(x, lengths=lengths)

    def masks_drawn(k, d):
        masks = {n: v for n, v in drawn[k, d].items() if v is not None}
        assert set(masks) == ({"h_mask", "zoneout_h", "zoneout_c"} if cell == "lstm" else {"h_mask", "zoneout_h"})
        assert masks["h_mask"].shape == (3, 5) and masks["zoneout_h"].shape == (6, 3, 5)
        assert set(np.unique(masks["zoneout_h"])) <= {0.0, 1.0}
        return masks

    np.testing.assert_allclose(out, reference_stack(layer, cell, x, lengths, masks_drawn), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_gradients_match_finite_differences(cell, rng):
    layer = LAYERS[cell](3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=2, **_options(cell))
    _randomise(layer, rng)
    T, B = 5, 3
    x = rng.standard_normal((T, B, 3))
    lengths = np.array([5, 1, 3])
    shape = (4, B, 4)
    hx = (rng.standard_normal(shape), rng.standard_normal(shape)) if cell == "lstm" else rng.standard_normal(shape)

    def call(x, hx):
        layer._rng = np.random.default_rng(99)  # the same masks at every call
        return layer(x, hx, lengths=lengths)

    out, states = call(x, hx)
    dy = rng.standard_normal(out.shape)
    dst = ((rng.standard_normal(shape), rng.standard_normal(shape)) if cell == "lstm"
           else rng.standard_normal(shape))
    dx, dhx = layer.backward(dy, *(dst if cell == "lstm" else (dst,)))
    grads = {k: v.copy() for k, v in layer.grads.items()}

    def loss(x, hx):
        o, s = call(x, hx)
        if cell == "lstm":
            return np.sum(o * dy) + np.sum(s[0] * dst[0]) + np.sum(s[1] * dst[1])
        return np.sum(o * dy) + np.sum(s * dst)

    eps = 1e-6
    params = dict(layer.named_parameters())
    direction = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    dxd = rng.standard_normal(x.shape)
    hd = [rng.standard_normal(shape) for _ in range(2)]
    flat_hx = list(hx) if cell == "lstm" else [hx]
    flat_dhx = list(dhx) if cell == "lstm" else [dhx]
    analytic = (sum(np.sum(grads[k] * direction[k]) for k in params) + np.sum(dx * dxd)
                + sum(np.sum(g * h) for g, h in zip(flat_dhx, hd)))
    values = []
    for sign in (1, -1):
        for k, p in params.items():
            p += sign * eps * direction[k]
        moved = [h + sign * eps * d for h, d in zip(flat_hx, hd)]
        values.append(loss(x + sign * eps * dxd, tuple(moved) if cell == "lstm" else moved[0]))
        for k, p in params.items():
            p -= sign * eps * direction[k]
    assert analytic == pytest.approx((values[0] - values[1]) / (2 * eps), rel=1e-6)


# ---------------------------------------------------------------------------
# the torch modules
# ---------------------------------------------------------------------------


def test_torch_arguments_repr_and_errors():
    torch = _torch()
    import pyrnn.torch as pt
    m = pt.LayerNormLSTM(3, 4, recurrent_dropout=0.2, zoneout=0.1, zoneout_c=0.3)
    assert (m.recurrent_dropout, m.zoneout, m.zoneout_c) == (0.2, 0.1, 0.3)
    assert repr(m) == "LayerNormLSTM(3, 4, recurrent_dropout=0.2, zoneout=0.1, zoneout_c=0.3)"
    assert pt.LayerNormLSTM(3, 4, zoneout=0.1).zoneout_c == 0.1
    assert repr(pt.LayerNormGRU(3, 4, zoneout=0.5)) == "LayerNormGRU(3, 4, zoneout=0.5)"
    for cls in (pt.LayerNormLSTM, pt.LayerNormGRU):
        with pytest.raises(ValueError, match="recurrent_dropout should be a number in range"):
            cls(3, 4, recurrent_dropout=-1)
        with pytest.raises(ValueError, match=r"zoneout should be a number in range \[0, 1\]"):
            cls(3, 4, zoneout=1.01)
        with pytest.raises(TypeError):
            cls(3, 4, 1, True, False, 0.0, False, None, None, 0.5)  # keyword-only
    with pytest.raises(TypeError, match="^LayerNormGRU: zoneout_c is the LSTM's cell-state zoneout rate"):
        pt.LayerNormGRU(3, 4, zoneout_c=0.1)
    assert torch.is_tensor(pt.LayerNormGRU(3, 4).weight_hh_l0)


@pytest.mark.parametrize("cell", CELLS)
def test_torch_eval_is_identity(cell, rng):
    torch = _torch()
    m = _torch_module(cell, input_size=3, hidden_size=4, num_layers=2, **_options(cell))
    plain = _torch_module(cell, input_size=3, hidden_size=4, num_layers=2)
    plain.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3)
    a, _ = m(x)
    b, _ = m(x)
    assert not torch.equal(a, b)  # fresh masks per call
    m.eval()
    assert torch.equal(m(x)[0], plain(x)[0])
    with torch.no_grad():  # training mode without autograd still draws and applies the masks
        m.train()
        torch.manual_seed(3)
        c = m(x)[0]
        torch.manual_seed(3)
        assert torch.equal(m(x)[0], c) and not torch.equal(c, plain(x)[0])
