"""Layer-normalised LSTM and GRU (issue #16): the NumPy reference.

* backward against central finite differences (random-direction VJP checks,
  all inputs at once and one input at a time), with lengths and reverse;
* lengths / reverse semantics against running each sequence on its own;
* the forward against an independent torch formulation (LSTMCell-style
  equations with torch.nn.functional.layer_norm per gate block), when torch
  is importable;
* input validation.
"""

import numpy as np
import pytest

from pyrnn import reference as ref
from pyrnn.testing import (LN_GRAD_NAMES, assert_bitwise_equal, check_layernorm_gradients, make_layernorm_params,
                           random_cotangents, run_layernorm_backward, run_layernorm_forward)

CELLS = ("lstm", "gru")


def ref_forward(cell, p, **kw):
    return run_layernorm_forward(ref, cell, p, **kw)


def ref_backward(cell, cache, cot):
    return run_layernorm_backward(ref, cell, cache, cot)


def _slice_sequence(p, b, L):
    """The inputs of sequence b alone, truncated to length L."""
    return {k: (v[:L, b:b + 1] if k == "x" else v[b:b + 1] if k in ("h0", "c0") else v) for k, v in p.items()}


# ---------------------------------------------------------------------------
# finite differences
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]], ids=["full", "lengths"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", CELLS)
def test_vjp_matches_finite_differences(cell, bias, lengths, reverse):
    rng = np.random.default_rng(20261202)
    p = make_layernorm_params(rng, cell, bias=bias)
    grads = check_layernorm_gradients(ref, cell, p, rng, lengths=lengths, reverse=reverse)
    for name in LN_GRAD_NAMES[cell]:
        if name in p:
            assert grads[name].shape == p[name].shape, name
            assert grads[name].dtype == np.float64, name
        else:  # no bias
            assert grads[name] is None, name


@pytest.mark.parametrize("cell", CELLS)
def test_single_entries_match_finite_differences(cell):
    """Spot checks of single parameter entries (one per gate block), so a
    gradient landing in the wrong block cannot cancel out in a sum."""
    rng = np.random.default_rng(5)
    H = 3
    p = make_layernorm_params(rng, cell, T=3, B=2, I=4, H=H)
    outs, cache = ref_forward(cell, p, lengths=[3, 2])
    cot = random_cotangents(rng, outs)
    grads = ref_backward(cell, cache, cot)

    def loss(q):
        o, _ = ref_forward(cell, q, lengths=[3, 2], training=False)
        return sum(np.sum(cot[k] * o[k]) for k in o)

    eps = 1e-6
    for name, v in p.items():
        for flat in range(0, v.size, max(1, H - 1)):
            idx = np.unravel_index(flat, v.shape)
            plus, minus = dict(p, **{name: v.copy()}), dict(p, **{name: v.copy()})
            plus[name][idx] += eps
            minus[name][idx] -= eps
            numeric = (loss(plus) - loss(minus)) / (2 * eps)
            assert grads[name][idx] == pytest.approx(numeric, rel=1e-6, abs=1e-9), (name, idx)


# ---------------------------------------------------------------------------
# lengths / reverse semantics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell", CELLS)
def test_lengths_match_running_each_sequence_alone(cell, reverse):
    rng = np.random.default_rng(7)
    lengths = np.array([4, 1, 3])
    p = make_layernorm_params(rng, cell)
    outs, cache = ref_forward(cell, p, lengths=lengths, reverse=reverse)
    cot = random_cotangents(rng, outs)
    grads = ref_backward(cell, cache, cot)
    totals = {}
    for b, L in enumerate(lengths):
        assert np.all(outs["y"][L:, b] == 0)
        assert np.all(grads["x"][L:, b] == 0)
        outs_b, cache_b = ref_forward(cell, _slice_sequence(p, b, L), reverse=reverse)
        cot_b = {k: (v[:L, b:b + 1] if k == "y" else v[b:b + 1]) for k, v in cot.items()}
        grads_b = ref_backward(cell, cache_b, cot_b)
        np.testing.assert_allclose(outs["y"][:L, b], outs_b["y"][:, 0], rtol=1e-12, atol=1e-14)
        for k in ("h_n", "c_n"):
            if k in outs:
                np.testing.assert_allclose(outs[k][b], outs_b[k][0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grads["x"][:L, b], grads_b["x"][:, 0], rtol=1e-12, atol=1e-14)
        for k in ("h0", "c0"):
            if k in grads:
                np.testing.assert_allclose(grads[k][b], grads_b[k][0], rtol=1e-12, atol=1e-14)
        for k, g in grads_b.items():
            if k not in ("x", "h0", "c0"):
                totals[k] = totals.get(k, 0) + g
    for k, total in totals.items():  # parameter gradients are the sums over the sequences
        np.testing.assert_allclose(grads[k], total, rtol=1e-11, atol=1e-13, err_msg=k)

    cot_noisy = dict(cot, y=cot["y"].copy())  # dy at padded positions is ignored
    for b, L in enumerate(lengths):
        cot_noisy["y"][L:, b] = 100.0
    for k, g in ref_backward(cell, cache, cot_noisy).items():
        np.testing.assert_array_equal(g, grads[k])


@pytest.mark.parametrize("cell", CELLS)
def test_reverse_equals_forward_on_flipped_input(cell):
    rng = np.random.default_rng(11)
    p = make_layernorm_params(rng, cell)
    outs, cache = ref_forward(cell, p, reverse=True)
    outs_f, cache_f = ref_forward(cell, dict(p, x=p["x"][::-1]))
    np.testing.assert_allclose(outs["y"], outs_f["y"][::-1], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(outs["h_n"], outs_f["h_n"], rtol=1e-13, atol=1e-15)
    cot = random_cotangents(rng, outs)
    grads = ref_backward(cell, cache, cot)
    grads_f = ref_backward(cell, cache_f, dict(cot, y=cot["y"][::-1]))
    np.testing.assert_allclose(grads["x"], grads_f["x"][::-1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads["W_hh"], grads_f["W_hh"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_agrees_with_float64(cell):
    rng = np.random.default_rng(5)
    p64 = make_layernorm_params(rng, cell)
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    kw = {"lengths": [4, 1, 3], "reverse": True}
    outs64, cache64 = ref_forward(cell, p64, **kw)
    outs32, cache32 = ref_forward(cell, p32, **kw)
    for k in outs64:
        assert outs32[k].dtype == np.float32, k
        np.testing.assert_allclose(outs32[k], outs64[k], rtol=0, atol=1e-5, err_msg=k)
    cot64 = random_cotangents(rng, outs64)
    grads64 = ref_backward(cell, cache64, cot64)
    grads32 = ref_backward(cell, cache32, {k: v.astype(np.float32) for k, v in cot64.items()})
    for k in grads64:
        assert grads32[k].dtype == np.float32, k
        np.testing.assert_allclose(grads32[k], grads64[k], rtol=1e-4, atol=1e-4, err_msg=k)


# ---------------------------------------------------------------------------
# against an independent torch formulation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_forward_matches_torch_layer_norm(cell):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(9)
    H = 5
    p = make_layernorm_params(rng, cell, H=H)
    outs, _ = ref_forward(cell, p, training=False)
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    G = 4 if cell == "lstm" else 3

    def ln(v, gamma, beta):  # each gate block through torch's own layer_norm
        blocks = [F.layer_norm(v[:, k * H:(k + 1) * H], (H,), gamma[k * H:(k + 1) * H],
                               beta[k * H:(k + 1) * H], eps=1e-5) for k in range(G)]
        return torch.cat(blocks, dim=1)

    h, c = t["h0"], t.get("c0")
    ys = []
    for x_t in t["x"]:
        gi = ln(x_t @ t["W_ih"].T, t["ln_ih"], t["b_ih"])
        gh = ln(h @ t["W_hh"].T, t["ln_hh"], t["b_hh"])
        if cell == "lstm":
            i, f, g, o = (gi + gh).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (H,), t["ln_c_weight"], t["ln_c_bias"], eps=1e-5))
        else:
            r = torch.sigmoid(gi[:, :H] + gh[:, :H])
            z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
            n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
            h = (1 - z) * n + z * h
        ys.append(h)
    np.testing.assert_allclose(outs["y"], torch.stack(ys).numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(outs["h_n"], h.numpy(), rtol=1e-12, atol=1e-13)
    if cell == "lstm":
        np.testing.assert_allclose(outs["c_n"], c.numpy(), rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def test_reference_rejects_bad_inputs():
    rng = np.random.default_rng(0)
    p = make_layernorm_params(rng, "lstm")
    with pytest.raises(ValueError, match=r"ln_ih must have shape \(4\*H,\)"):
        ref_forward("lstm", dict(p, ln_ih=p["ln_ih"][:-1]))
    with pytest.raises(ValueError, match=r"ln_c_weight must have shape \(H,\)"):
        ref_forward("lstm", dict(p, ln_c_weight=p["ln_ih"]))
    with pytest.raises(TypeError, match="ln_hh must have the dtype of x"):
        ref_forward("lstm", dict(p, ln_hh=p["ln_hh"].astype(np.float32)))
    with pytest.raises(TypeError, match="ln_c_weight must be an array"):
        ref_forward("lstm", dict(p, ln_c_weight=None))
    g = make_layernorm_params(rng, "gru")
    with pytest.raises(ValueError, match=r"W_hh must have shape \(3\*H, H\)"):
        ref_forward("gru", dict(g, W_hh=p["W_hh"]))
    _, cache = ref_forward("gru", g)
    with pytest.raises(ValueError, match="needs a cache from layernorm_lstm_forward, got one from 'layernorm_gru'"):
        ref.layernorm_lstm_backward(cache)
    _, plain = ref.gru_forward(g["x"], None, g["W_ih"], g["W_hh"])[1:]
    with pytest.raises(ValueError, match="needs a cache from layernorm_gru_forward, got one from 'gru'"):
        ref.layernorm_gru_backward(plain)
    with pytest.raises(ValueError, match=r"dh_n must have shape \(B, H\)"):
        ref.layernorm_gru_backward(cache, None, np.zeros((2, 2)))


# ===========================================================================
# the C++ kernels (pyrnn.functional.layernorm_*) against the reference
# ===========================================================================

from pyrnn import functional as F  # noqa: E402
from pyrnn.testing import assert_close  # noqa: E402

# (T, B, I, H, bias, lengths, reverse): odd H (not whole vectors at any ISA
# level), single units, batches that end mid-tile, lengths with ties.
KERNEL_CONFIGS = {
    "H1": (3, 2, 3, 1, True, None, False),
    "H7-rev": (4, 3, 5, 7, True, None, True),
    "H17-len": (5, 7, 6, 17, True, [5, 2, 5, 1, 3, 4, 2], False),
    "H33-len-rev": (6, 5, 9, 33, False, [6, 1, 4, 6, 2], True),
    "H33-B13": (3, 13, 4, 33, True, None, False),
}


def _kernel_params(cell, cfg, dtype, rng):
    T, B, I, H, bias, lengths, reverse = KERNEL_CONFIGS[cfg]
    p = make_layernorm_params(rng, cell, T=T, B=B, I=I, H=H, bias=bias, dtype=dtype)
    return p, {"lengths": None if lengths is None else np.array(lengths), "reverse": reverse}


# Layer norms over a few units (H=7) amplify float32 rounding in the gradients,
# the gains' most: over 60 seeds of the H7-rev LSTM case at the baseline level the
# largest gradient error was 1.16x the float32 tolerance with the exp-based tanh
# and 0.91x with the rational one, which moved this fixture's seed from 0.29x to
# 1.10x (dln_hh). Float32 gradients are held to twice the table's tolerance.
F32_GRAD_FACTOR = 2.0


def _check_kernel_parity(cell, p, kw, dtype, rng):
    outs, ws = run_layernorm_forward(F, cell, p, **kw)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}  # float32 kernels vs the float64 reference
    ref_outs, cache = ref_forward(cell, p64, **kw)
    for k in ref_outs:
        assert outs[k].dtype == dtype, k
        assert_close(outs[k], ref_outs[k], dtype, k)
    cot = random_cotangents(rng, outs)
    grads = run_layernorm_backward(F, cell, ws, cot)
    ref_grads = ref_backward(cell, cache, {k: v.astype(np.float64) for k, v in cot.items()})
    for k in LN_GRAD_NAMES[cell]:
        if ref_grads[k] is None:
            assert grads[k] is None, k
            continue
        assert grads[k].dtype == dtype, k
        assert_close(grads[k], ref_grads[k], dtype, "d" + k, factor=F32_GRAD_FACTOR if dtype == np.float32 else 1.0)


@pytest.mark.parametrize("cfg", list(KERNEL_CONFIGS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_kernels_match_reference(cell, dtype, cfg, isa, rng):
    p, kw = _kernel_params(cell, cfg, dtype, rng)
    _check_kernel_parity(cell, p, kw, dtype, rng)


@pytest.mark.parametrize("cell", CELLS)
def test_kernels_without_initial_states_or_cell_bias(cell, isa, rng):
    p, kw = _kernel_params(cell, "H17-len", np.float64, rng)
    p.pop("h0")
    p.pop("c0", None)
    p.pop("ln_c_bias", None)
    _check_kernel_parity(cell, p, kw, np.float64, rng)


@pytest.mark.parametrize("cell", CELLS)
def test_kernels_at_a_benchmark_like_size(cell, rng):
    """Several GEMM panels and row tiles per step (H = 70 over 4 gates)."""
    p = make_layernorm_params(rng, cell, T=6, B=20, I=24, H=70, dtype=np.float32)
    _check_kernel_parity(cell, p, {"lengths": np.array([6, 5] * 10)}, np.float32, rng)


@pytest.mark.parametrize("cell", CELLS)
def test_kernel_gradients_match_finite_differences(cell, rng):
    p, kw = _kernel_params(cell, "H7-rev", np.float64, rng)
    check_layernorm_gradients(F, cell, p, rng, **kw)


def kernel_forward_backward(cell, p, seed, **kw):
    """The kernels' outputs and gradients, for output cotangents drawn from ``seed``."""
    outs, ws = run_layernorm_forward(F, cell, p, **kw)
    cot = random_cotangents(np.random.default_rng(seed), outs)
    return outs, run_layernorm_backward(F, cell, ws, cot)


@pytest.mark.parametrize("masks", [False, True], ids=["plain", "masks"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", CELLS)
def test_thread_counts_are_bitwise_equal(cell, dtype, masks, isa, threads, rng):
    """Work is split over output elements only, so 1 and 2 threads agree bitwise (with masks too:
    recurrent dropout and zoneout, tests/test_layernorm_masks.py)."""
    from pyrnn.testing import make_masks
    p = make_layernorm_params(rng, cell, T=5, B=9, I=11, H=45, dtype=dtype)
    kw = {"lengths": np.array([5, 3, 5, 1, 2, 4, 5, 3, 2]), "reverse": True,
          **(make_masks(rng, cell, 5, 9, 45, binary=True, dtype=dtype) if masks else {})}
    threads(1)
    outs1, grads1 = kernel_forward_backward(cell, p, 0, **kw)
    threads(2)
    outs2, grads2 = kernel_forward_backward(cell, p, 0, **kw)
    assert_bitwise_equal(outs2, outs1)
    assert_bitwise_equal(grads2, grads1)


@pytest.mark.parametrize("cell", CELLS)
def test_inference_equals_training_forward(cell, rng):
    p, kw = _kernel_params(cell, "H33-len-rev", np.float32, rng)
    train, _ = run_layernorm_forward(F, cell, p, **kw)
    infer, ws = run_layernorm_forward(F, cell, p, training=False, **kw)
    assert ws is None
    for k in train:
        np.testing.assert_array_equal(train[k], infer[k], err_msg=k)


@pytest.mark.parametrize("cell", CELLS)
def test_kernel_empty_batch(cell, rng):
    p = make_layernorm_params(rng, cell, T=3, B=0, I=4, H=5)
    outs, ws = run_layernorm_forward(F, cell, p)
    assert outs["y"].shape == (3, 0, 5) and outs["h_n"].shape == (0, 5)
    grads = run_layernorm_backward(F, cell, ws, random_cotangents(rng, outs))
    for k, g in grads.items():
        assert g.shape == p[k].shape and not np.any(g), k


def test_workspace_reports_saved_bytes(rng):
    p = make_layernorm_params(rng, "lstm", T=4, B=3, I=5, H=7, dtype=np.float32)
    _, ws = run_layernorm_forward(F, "lstm", p)
    assert ws.nbytes >= 4 * 3 * (3 * 4 * 7 + 3 * 7) * 4  # xhat_ih, xhat_hh, gates; c, xhat_c, tanh_c
    assert ws.shape == (4, 3, 5, 7) and ws.dtype == np.float32


def test_functional_validation(rng):
    p = make_layernorm_params(rng, "lstm", T=3, B=2, I=4, H=5)
    with pytest.raises(ValueError, match=r"ln_hh must have shape \(4\*H,\) = \(20,\)"):
        run_layernorm_forward(F, "lstm", dict(p, ln_hh=np.ones(5)))
    with pytest.raises(TypeError, match="ln_c_bias must have the dtype of x"):
        run_layernorm_forward(F, "lstm", dict(p, ln_c_bias=p["ln_c_bias"].astype(np.float32)))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T\]"):
        run_layernorm_forward(F, "lstm", p, lengths=np.array([4, 1]))
    with pytest.raises(ValueError, match="both be given or both be None"):
        run_layernorm_forward(F, "lstm", dict(p, b_ih=None))
    _, ws = run_layernorm_forward(F, "lstm", p)
    with pytest.raises(ValueError, match="needs a workspace from layernorm_gru_forward, got one from "
                                         "layernorm_lstm_forward"):
        F.layernorm_gru_backward(ws)
    with pytest.raises(ValueError, match=r"dy must have shape \(T, B, H\)"):
        F.layernorm_lstm_backward(ws, np.zeros((3, 2, 4)))
    with pytest.raises(TypeError, match="dh_n must have the forward dtype float64"):
        F.layernorm_lstm_backward(ws, None, np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="needs the workspace of layernorm_lstm_forward"):
        F.layernorm_lstm_backward(None)
    _, _, plain = F.gru_forward(p["x"], None, np.zeros((15, 4)), np.zeros((15, 5)))
    with pytest.raises(TypeError, match="needs a pyrnn workspace from layernorm_gru_forward, got Workspace"):
        F.layernorm_gru_backward(plain)


def test_core_checks_arrays_itself(rng):
    """The extension protects memory when called directly (no Python validation)."""
    from pyrnn import _core
    p = make_layernorm_params(rng, "gru", T=3, B=2, I=4, H=5)
    args = [_core.CellKind.GRU, p["x"], None, None, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], p["ln_ih"],
            p["ln_hh"], None, None, None, False, True]
    _core.layernorm_forward(*args)
    bad = list(args)
    bad[8] = np.ones(14)
    with pytest.raises(ValueError, match="ln_ih: expected a C-contiguous array of shape"):
        _core.layernorm_forward(*bad)
    bad = list(args)
    bad[12] = np.array([3, 4], np.int64)
    with pytest.raises(ValueError, match="lengths must lie in"):
        _core.layernorm_forward(*bad)
    bad = list(args)
    bad[0] = _core.CellKind.RNN_TANH
    with pytest.raises(ValueError, match="the LSTM or the GRU"):
        _core.layernorm_forward(*bad)


# ===========================================================================
# the NumPy layers pyrnn.LayerNormLSTM / LayerNormGRU
# ===========================================================================

import pyrnn  # noqa: E402

LAYERS = {"lstm": pyrnn.LayerNormLSTM, "gru": pyrnn.LayerNormGRU}


def _randomise(layer, rng):
    """Gains and betas away from their 1 / 0 init, so every parameter matters."""
    for name, p in layer.named_parameters():
        if name.startswith("ln_weight"):
            p[...] = rng.uniform(0.5, 1.5, p.shape)
        elif name.startswith(("bias", "ln_bias")):
            p[...] = rng.uniform(-0.5, 0.5, p.shape)


def test_layer_parameter_names_shapes_and_init():
    lstm = pyrnn.LayerNormLSTM(5, 3, num_layers=2, bidirectional=True, seed=0)
    shapes = dict((k, v.shape) for k, v in lstm.named_parameters())
    assert shapes["weight_ih_l0"] == (12, 5) and shapes["weight_ih_l1_reverse"] == (12, 6)
    assert shapes["weight_hh_l1"] == (12, 3) and shapes["ln_weight_ih_l0_reverse"] == (12,)
    assert shapes["ln_weight_c_l1"] == (3,) and shapes["ln_bias_c_l0"] == (3,)
    assert len(shapes) == 2 * 2 * 8
    assert np.all(lstm.ln_weight_hh_l0 == 1) and np.all(lstm.bias_ih_l0 == 0) and np.all(lstm.ln_bias_c_l1 == 0)
    assert np.max(np.abs(lstm.weight_hh_l0)) <= 1 / np.sqrt(3) and np.std(lstm.weight_ih_l0) > 0
    gru = pyrnn.LayerNormGRU(4, 6, bias=False, dtype=np.float64)
    assert [k for k, _ in gru.named_parameters()] == ["weight_ih_l0", "weight_hh_l0", "ln_weight_ih_l0",
                                                      "ln_weight_hh_l0"]
    assert gru.weight_ih_l0.dtype == np.float64
    assert repr(pyrnn.LayerNormLSTM(5, 3, num_layers=2, bidirectional=True)) == \
        "LayerNormLSTM(5, 3, num_layers=2, bidirectional=True)"


def reference_stack(layer, cell, x, lengths, masks=lambda k, d: {}):
    """The 2-layer bidirectional ``layer``'s output computed by the reference, direction by direction,
    from its parameters (``masks(k, d)``: that layer and direction's mask arguments)."""
    layer_x = x
    for k in range(2):
        ys = []
        for d in range(2):
            p = {"x": layer_x, **{n: v for n, v in layer.direction_params(k, d).items() if v is not None}}
            ys.append(ref_forward(cell, p, lengths=lengths, reverse=d == 1, training=False, **masks(k, d))[0]["y"])
        layer_x = np.concatenate(ys, axis=2)
    return layer_x


@pytest.mark.parametrize("cell", CELLS)
def test_layer_matches_reference_composition(cell, rng):
    """A 2-layer bidirectional layer with lengths equals the reference run direction by direction."""
    layer = LAYERS[cell](4, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    _randomise(layer, rng)
    x = rng.standard_normal((6, 3, 4))
    lengths = np.array([6, 2, 4])
    out, _ = layer(x, lengths=lengths)
    np.testing.assert_allclose(out, reference_stack(layer, cell, x, lengths), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_layer_gradients_match_finite_differences(cell, batch_first, rng):
    layer = LAYERS[cell](3, 4, num_layers=2, bidirectional=True, batch_first=batch_first, dtype=np.float64, seed=2)
    _randomise(layer, rng)
    T, B = 5, 3
    x = rng.standard_normal((B, T, 3) if batch_first else (T, B, 3))
    lengths = np.array([5, 1, 3])
    shape = (4, B, 4)
    hx = (rng.standard_normal(shape), rng.standard_normal(shape)) if cell == "lstm" else rng.standard_normal(shape)
    out, states = layer(x, hx, lengths=lengths)
    dy = rng.standard_normal(out.shape)
    dstates = ((rng.standard_normal(shape), rng.standard_normal(shape)) if cell == "lstm"
               else rng.standard_normal(shape))
    dx, dhx = layer.backward(dy, *(dstates if cell == "lstm" else (dstates,)))
    grads = {k: v.copy() for k, v in layer.grads.items()}

    def loss():
        o, s = layer(x, hx, lengths=lengths)
        total = np.sum(o * dy)
        if cell == "lstm":
            return total + np.sum(s[0] * dstates[0]) + np.sum(s[1] * dstates[1])
        return total + np.sum(s * dstates)

    eps = 1e-6
    layer.eval()
    params = dict(layer.named_parameters())
    direction = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    dxd = rng.standard_normal(x.shape)
    analytic = sum(np.sum(grads[k] * direction[k]) for k in params) + np.sum(dx * dxd)
    x0 = x.copy()
    for sign in (1, -1):
        for k, p in params.items():
            p += sign * eps * direction[k]
        x = x0 + sign * eps * dxd
        if sign == 1:
            plus = loss()
            for k, p in params.items():
                p -= eps * direction[k]
        else:
            minus = loss()
            for k, p in params.items():
                p += eps * direction[k]
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=1e-6)
    # the initial states' gradients, one direction at once
    x = x0
    if cell == "lstm":
        hd = rng.standard_normal(shape)
        hx0 = hx
        hx = (hx0[0] + eps * hd, hx0[1])
        plus = loss()
        hx = (hx0[0] - eps * hd, hx0[1])
        minus = loss()
        assert np.sum(dhx[0] * hd) == pytest.approx((plus - minus) / (2 * eps), rel=1e-6)
    else:
        hd = rng.standard_normal(shape)
        hx0 = hx
        hx = hx0 + eps * hd
        plus = loss()
        hx = hx0 - eps * hd
        minus = loss()
        assert np.sum(dhx * hd) == pytest.approx((plus - minus) / (2 * eps), rel=1e-6)


def test_layer_dropout_state_dict_and_grads():
    lstm = pyrnn.LayerNormLSTM(3, 4, num_layers=2, dropout=0.5, seed=3)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    out_a, _ = lstm(x)
    out_b, _ = lstm(x)
    assert not np.array_equal(out_a, out_b)  # a fresh dropout mask per call in training mode
    lstm.backward(np.ones_like(out_b))
    assert all(np.any(g) for g in lstm.grads.values())
    lstm.zero_grad()
    assert not any(np.any(g) for g in lstm.grads.values())
    lstm.eval()
    ref_out, (h, c) = lstm(x)
    assert np.array_equal(ref_out, lstm(x)[0])  # no dropout in eval mode
    other = pyrnn.LayerNormLSTM(3, 4, num_layers=2, seed=4).eval()
    other.load_state_dict(lstm.state_dict())
    np.testing.assert_array_equal(other(x)[0], ref_out)
    with pytest.raises(ValueError, match="missing keys"):
        other.load_state_dict({k: v for k, v in lstm.state_dict().items() if "ln_bias_c" not in k})
    unbatched, _ = other(x[:, 0])
    np.testing.assert_allclose(unbatched, ref_out[:, 0], rtol=1e-6, atol=1e-7)


def test_layer_errors():
    gru = pyrnn.LayerNormGRU(3, 4)
    with pytest.raises(RuntimeError, match="LayerNormGRU.backward needs a forward call in training mode"):
        gru.backward()
    with pytest.raises(ValueError, match="input_size"):
        gru(np.zeros((2, 1, 5), np.float32))
    with pytest.raises(TypeError, match="^LayerNormGRU: input must have the layer's dtype"):
        gru(np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match="^LayerNormGRU: Expected input to be 2D or 3D, got 4D"):
        gru(np.zeros((2, 1, 1, 3), np.float32))
    out, _ = gru(np.zeros((2, 1, 3), np.float32))
    with pytest.raises(ValueError, match="dc_n is only used by the LSTM"):
        gru.backward(None, None, np.zeros((1, 1, 4), np.float32))
    with pytest.raises(ValueError, match="must be greater than zero"):
        pyrnn.LayerNormLSTM(3, 0)
    with pytest.raises(TypeError, match="^LayerNormLSTM: hx must be a tuple"):
        pyrnn.LayerNormLSTM(3, 4)(np.zeros((2, 1, 3), np.float32), np.zeros((1, 1, 4), np.float32))


# ===========================================================================
# pyrnn.torch.LayerNormLSTM / LayerNormGRU
# ===========================================================================


def _torch():
    return pytest.importorskip("torch")


def _torch_module(cell, **kw):
    import pyrnn.torch as pt
    return (pt.LayerNormLSTM if cell == "lstm" else pt.LayerNormGRU)(**kw)


def mask_options(cell):
    """Rates of recurrent dropout and zoneout for the tests with masks (tests/test_layernorm_masks.py)."""
    return {"recurrent_dropout": 0.3, "zoneout": 0.25, **({"zoneout_c": 0.4} if cell == "lstm" else {})}


def inject_masks(cell, layer, m, pt, rng, monkeypatch, L, D, T, B, H):
    """Gives the NumPy layer and the torch module the same recurrent-dropout and zoneout masks."""
    torch = _torch()
    from pyrnn.testing import make_masks
    zo = {(k, d): make_masks(rng, cell, T, B, H, h_mask=False, binary=True) for k in range(L) for d in range(D)}
    rec = [((rng.random((B, H)) >= 0.3) / 0.7) for _ in range(L * D)]
    np_rec, t_rec = iter(rec), iter(rec)
    layer._zoneout_masks = lambda k, d, T_, B_: (zo[k, d]["zoneout_h"], zo[k, d].get("zoneout_c"))
    layer._dropout_mask = lambda shape, p: next(np_rec)
    m._zoneout_masks = lambda k, d, T_, B_, dtype: (
        torch.from_numpy(zo[k, d]["zoneout_h"]), None if cell == "gru" else torch.from_numpy(zo[k, d]["zoneout_c"]))
    monkeypatch.setattr(pt, "_dropout_mask", lambda shape, p, dtype: torch.from_numpy(next(t_rec)))


@pytest.mark.parametrize("masks", [False, True], ids=["plain", "masks"])
@pytest.mark.parametrize("cell", CELLS)
def test_torch_module_matches_numpy_layer(cell, masks, rng, monkeypatch):
    """The torch module's outputs and gradients are the NumPy layer's (with masks: the same masks
    injected into both)."""
    torch = _torch()
    import pyrnn.torch as pt
    kw = dict(input_size=4, hidden_size=5, num_layers=2, bidirectional=True, batch_first=True,
              **(mask_options(cell) if masks else {}))
    m = _torch_module(cell, dtype=torch.float64, **kw)
    layer = LAYERS[cell](**kw, dtype=np.float64, seed=0)
    _randomise(layer, rng)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    assert [k for k, _ in m.named_parameters()] == [k for k, _ in layer.named_parameters()]
    if masks:
        inject_masks(cell, layer, m, pt, rng, monkeypatch, L=2, D=2, T=6, B=3, H=5)
    x = rng.standard_normal((3, 6, 4))
    lengths = np.array([6, 2, 5])
    out, states = layer(x, lengths=lengths)
    xt = torch.from_numpy(x).requires_grad_()
    out_t, states_t = m(xt, lengths=torch.from_numpy(lengths))
    np.testing.assert_allclose(out_t.detach().numpy(), out, rtol=1e-12, atol=1e-13)
    dy = rng.standard_normal(out.shape)
    dx, _ = layer.backward(dy)
    (out_t * torch.from_numpy(dy)).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-11, atol=1e-12)
    for name, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), layer.grads[name], rtol=1e-11, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("masks", [False, True], ids=["plain", "masks"])
@pytest.mark.parametrize("cell,proj", [("lstm", 0), ("gru", 0), ("lstm", 2)], ids=["lstm", "gru", "lstm-proj"])
def test_torch_gradcheck(cell, proj, masks, rng):
    torch = _torch()
    torch.manual_seed(0)
    m = _torch_module(cell, input_size=3, hidden_size=4, num_layers=2, bidirectional=True, dtype=torch.float64,
                      **({"proj_size": proj} if proj else {}), **(mask_options(cell) if masks else {}))
    with torch.no_grad():
        for name, p in m.named_parameters():  # gains and betas away from 1 / 0
            if not name.startswith("weight"):
                p.add_(torch.rand(p.shape, dtype=torch.float64) - 0.5)
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, proj or 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])
    names, params = zip(*m.named_parameters())

    def f(x, h0, c0, *ps):
        torch.manual_seed(7)  # (with masks: the same masks at every evaluation)
        out = torch.func.functional_call(m, dict(zip(names, ps)), (x, (h0, c0) if cell == "lstm" else h0),
                                         {"lengths": lengths})
        y, states = out
        return (y, *states) if cell == "lstm" else (y, states)

    # functional_call swaps parameters in; the kernels run eagerly on them
    inputs = (x, h0, c0) + tuple(p.detach().clone().requires_grad_() for p in params)
    # The whole Jacobian (~1200 inputs by ~170 outputs) for the LSTM with projection and masks, the
    # case with the most parts; for the other five a random projection of it (fast_mode: v^T J u per
    # input, which a wrong gradient entry changes almost surely), 15 s less each.
    assert torch.autograd.gradcheck(f, inputs, fast_mode=not (cell == "lstm" and proj and masks))


def test_torch_packed_sequence_unbatched_and_errors(rng):
    torch = _torch()
    from torch.nn.utils.rnn import pack_padded_sequence
    m = _torch_module("gru", input_size=3, hidden_size=4)
    x = torch.randn(5, 2, 3)
    lengths = torch.tensor([3, 5])
    ref_out, ref_h = m(x, lengths=lengths)
    out, h = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
    assert torch.equal(h, ref_h)
    from torch.nn.utils.rnn import pad_packed_sequence
    assert torch.equal(pad_packed_sequence(out)[0], ref_out[:5])
    single, _ = m(x[:, 1])
    torch.testing.assert_close(single, ref_out[:, 1])
    with torch.no_grad():  # inference kernels: same numbers
        assert torch.equal(m(x, lengths=lengths)[0], ref_out)
    with pytest.raises(ValueError, match="input_size"):
        m(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match="dtype"):
        m(torch.randn(5, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T\]"):
        m(x, lengths=torch.tensor([0, 5]))
    with pytest.raises(TypeError, match="hx must be a tuple"):
        _torch_module("lstm", input_size=3, hidden_size=4)(x, torch.zeros(1, 2, 4))
    lstm = _torch_module("lstm", input_size=3, hidden_size=4, bias=False)
    assert "ln_bias_c_l0" not in dict(lstm.named_parameters()) and "ln_weight_c_l0" in dict(lstm.named_parameters())
    assert repr(lstm) == "LayerNormLSTM(3, 4, bias=False)"
    y, _ = lstm(x.requires_grad_())
    g, = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        g.sum().backward()


def test_torch_module_refuses_bad_lengths_and_traces():
    """Float or bool lengths raise as in the NumPy layers (not truncated); torch.func, torch.export and
    torch.compile trace the module through the pyrnn::layernorm_layer operator
    (tests/test_layernorm_torch_ops.py has the details)."""
    torch = _torch()
    from torch.func import functional_call

    m = _torch_module("lstm", input_size=3, hidden_size=4)
    x = torch.randn(5, 2, 3)
    for bad in (torch.tensor([2.5, 2.0]), torch.tensor([True, True])):
        with pytest.raises(TypeError, match="lengths must be an integer array"):
            m(x, lengths=bad)
    grads = torch.func.grad(lambda p: functional_call(m, p, (x,))[0].sum())(dict(m.named_parameters()))
    m(x)[0].sum().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(grads[n], p.grad)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.export(m, (x,)).module()(x)[0], m(x)[0])
    torch.testing.assert_close(torch.compile(m, backend="eager", fullgraph=True)(x)[0], m(x)[0])
