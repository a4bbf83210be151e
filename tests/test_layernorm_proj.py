"""The layer-normalised LSTM's output projection (proj_size, as torch.nn.LSTM's):
h_t = W_hr (o * tanh(LN(c_t))), P wide.

* the NumPy reference against finite differences (lengths, reverse, masks),
  against an independent torch formulation, and against running each
  sequence on its own;
* the C++ kernels against the reference at every ISA level this CPU has
  (H 7, 17, 33 with P 1, 5, 16; lengths, reverse, recurrent dropout and
  zoneout; float32 and float64), 1, 2 and 3 threads bitwise equal, inference
  equal to the training forward, finite differences of the kernels,
  validation of the shapes;
* pyrnn.LayerNormLSTM(proj_size=P): parameter names, order and shapes as
  pyrnn.LSTM's, states and outputs P wide, num_layers and bidirectional, the
  reference run direction by direction, finite differences, errors;
* pyrnn.torch.LayerNormLSTM(proj_size=P): parameter names as torch.nn.LSTM's,
  the NumPy layer's outputs and gradients (with masks), PackedSequence /
  lengths / unbatched. (gradcheck: tests/test_layernorm.py's
  test_torch_gradcheck; the operator's paths, torch.compile, torch.export and
  torch.func: tests/test_layernorm_torch_ops.py.)
"""

import numpy as np
import pytest

import pyrnn
from pyrnn import functional as F
from pyrnn import reference as ref
from pyrnn.testing import (LN_GRAD_NAMES, assert_bitwise_equal, assert_close, check_layernorm_gradients,
                           make_layernorm_params, make_masks, random_cotangents, run_layernorm_backward,
                           run_layernorm_forward)

GRAD_NAMES = LN_GRAD_NAMES["lstm"] + ("W_hr",)


def _params(rng, T=4, B=3, I=5, H=7, P=3, dtype=np.float64, bias=True):
    return make_layernorm_params(rng, "lstm", T=T, B=B, I=I, H=H, bias=bias, dtype=dtype, proj_size=P)


def _masks(rng, T, B, H, P, dtype=np.float64, binary=False, which="both"):
    return make_masks(rng, "lstm", T, B, H, h_mask=which != "zoneout", zoneout=which != "h_mask", binary=binary,
                      dtype=dtype, proj_size=P)


# ---------------------------------------------------------------------------
# the NumPy reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("masks", ["none", "h_mask", "zoneout", "both"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]], ids=["full", "lengths"])
def test_reference_vjp_matches_finite_differences(lengths, reverse, masks):
    rng = np.random.default_rng(20261204)
    p = _params(rng)
    kw = {} if masks == "none" else _masks(rng, 4, 3, 7, 3, which=masks)
    grads = check_layernorm_gradients(ref, "lstm", p, rng, lengths=lengths, reverse=reverse, **kw)
    assert set(grads) == set(GRAD_NAMES)
    for name in GRAD_NAMES:
        assert grads[name].shape == p[name].shape, name


def test_reference_without_bias_or_initial_states_matches_finite_differences():
    rng = np.random.default_rng(3)
    p = _params(rng, H=5, P=1, bias=False)
    p.pop("h0")
    p.pop("c0")
    grads = check_layernorm_gradients(ref, "lstm", p, rng, lengths=[4, 2, 3])
    assert grads["b_ih"] is None and grads["ln_c_bias"] is None and grads["W_hr"].shape == (1, 5)


def test_reference_forward_matches_torch_layer_norm():
    torch = pytest.importorskip("torch")
    Fn = torch.nn.functional
    rng = np.random.default_rng(9)
    H, P = 5, 2
    p = _params(rng, H=H, P=P)
    outs, _ = run_layernorm_forward(ref, "lstm", p, training=False)
    t = {k: torch.from_numpy(v) for k, v in p.items()}

    def ln(v, gamma, beta):  # each gate block through torch's own layer_norm
        return torch.cat([Fn.layer_norm(v[:, k * H:(k + 1) * H], (H,), gamma[k * H:(k + 1) * H],
                                        beta[k * H:(k + 1) * H], eps=1e-5) for k in range(4)], dim=1)

    h, c = t["h0"], t["c0"]
    ys = []
    for x_t in t["x"]:
        i, f, g, o = (ln(x_t @ t["W_ih"].T, t["ln_ih"], t["b_ih"]) + ln(h @ t["W_hh"].T, t["ln_hh"], t["b_hh"])
                      ).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        m = torch.sigmoid(o) * torch.tanh(Fn.layer_norm(c, (H,), t["ln_c_weight"], t["ln_c_bias"], eps=1e-5))
        h = m @ t["W_hr"].T
        ys.append(h)
    assert outs["y"].shape == (4, 3, P) and outs["h_n"].shape == (3, P) and outs["c_n"].shape == (3, H)
    np.testing.assert_allclose(outs["y"], torch.stack(ys).numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(outs["h_n"], h.numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(outs["c_n"], c.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_reference_lengths_match_running_each_sequence_alone(reverse, rng):
    lengths = np.array([4, 1, 3])
    p = _params(rng)
    outs, cache = run_layernorm_forward(ref, "lstm", p, lengths=lengths, reverse=reverse)
    cot = random_cotangents(rng, outs)
    grads = run_layernorm_backward(ref, "lstm", cache, cot)
    total = 0
    for b, L in enumerate(lengths):
        pb = {k: (v[:L, b:b + 1] if k == "x" else v[b:b + 1] if k in ("h0", "c0") else v) for k, v in p.items()}
        outs_b, cache_b = run_layernorm_forward(ref, "lstm", pb, reverse=reverse)
        np.testing.assert_allclose(outs["y"][:L, b], outs_b["y"][:, 0], rtol=1e-12, atol=1e-14)
        assert np.all(outs["y"][L:, b] == 0)
        np.testing.assert_allclose(outs["h_n"][b], outs_b["h_n"][0], rtol=1e-12, atol=1e-14)
        cot_b = {k: (v[:L, b:b + 1] if k == "y" else v[b:b + 1]) for k, v in cot.items()}
        total = total + run_layernorm_backward(ref, "lstm", cache_b, cot_b)["W_hr"]
    np.testing.assert_allclose(grads["W_hr"], total, rtol=1e-11, atol=1e-13)


def test_reference_validation(rng):
    p = _params(rng, H=5, P=2)
    with pytest.raises(ValueError, match=r"W_hh must have shape \(4\*H, P\)"):
        run_layernorm_forward(ref, "lstm", dict(p, W_hh=np.zeros((20, 5))))
    with pytest.raises(ValueError, match=r"h0 must have shape \(B, P\)"):
        run_layernorm_forward(ref, "lstm", dict(p, h0=np.zeros((3, 5))))
    with pytest.raises(ValueError, match=r"W_hr must have shape \(P, H\) with 1 <= P < H"):
        run_layernorm_forward(ref, "lstm", dict(p, W_hr=np.zeros((5, 5)), W_hh=np.zeros((20, 5)),
                                                h0=np.zeros((3, 5))))
    _, cache = run_layernorm_forward(ref, "lstm", p)
    with pytest.raises(ValueError, match=r"dy must have shape \(T, B, P\)"):
        ref.layernorm_lstm_backward(cache, np.zeros((4, 3, 5)))
    with pytest.raises(ValueError, match=r"dc_n must have shape \(B, H\)"):
        ref.layernorm_lstm_backward(cache, None, None, np.zeros((3, 2)))


# ---------------------------------------------------------------------------
# the C++ kernels against the reference
# ---------------------------------------------------------------------------

# (T, B, I, H, P, bias, lengths, reverse): H not whole vectors at any ISA level, P from a single
# unit to a whole AVX-512 vector; batches that end mid-tile; lengths with ties.
KERNEL_CONFIGS = {
    "H7-P1": (3, 2, 3, 7, 1, True, None, False),
    "H7-P5-rev": (4, 3, 5, 7, 5, True, None, True),
    "H17-P5-len": (5, 7, 6, 17, 5, True, [5, 2, 5, 1, 3, 4, 2], False),
    "H17-P16-len-rev": (5, 4, 6, 17, 16, False, [5, 2, 1, 4], True),
    "H33-P16-len-rev": (6, 5, 9, 33, 16, False, [6, 1, 4, 6, 2], True),
    "H33-P1-B13": (3, 13, 4, 33, 1, True, None, False),
}


def _kernel_params(cfg, dtype, rng):
    T, B, I, H, P, bias, lengths, reverse = KERNEL_CONFIGS[cfg]
    p = _params(rng, T=T, B=B, I=I, H=H, P=P, dtype=dtype, bias=bias)
    return p, {"lengths": None if lengths is None else np.array(lengths), "reverse": reverse}


def _check_kernel_parity(p, kw, dtype, rng):
    outs, ws = run_layernorm_forward(F, "lstm", p, **kw)
    assert ws.proj_size == p["W_hr"].shape[0]
    p64 = {k: v.astype(np.float64) for k, v in p.items()}  # float32 kernels vs the float64 reference
    kw64 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
            for k, v in kw.items()}
    ref_outs, cache = run_layernorm_forward(ref, "lstm", p64, **kw64)
    for k in ref_outs:
        assert outs[k].dtype == dtype and outs[k].shape == ref_outs[k].shape, k
        assert_close(outs[k], ref_outs[k], dtype, k)
    cot = random_cotangents(rng, outs)
    grads = run_layernorm_backward(F, "lstm", ws, cot)
    ref_grads = run_layernorm_backward(ref, "lstm", cache, {k: v.astype(np.float64) for k, v in cot.items()})
    assert set(grads) == set(GRAD_NAMES)
    for k in GRAD_NAMES:
        if ref_grads[k] is None:
            assert grads[k] is None, k
            continue
        assert grads[k].dtype == dtype, k
        assert_close(grads[k], ref_grads[k], dtype, "d" + k)


@pytest.mark.parametrize("masks", ["none", "masks"])
@pytest.mark.parametrize("cfg", list(KERNEL_CONFIGS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_kernels_match_reference(dtype, cfg, masks, isa, rng):
    p, kw = _kernel_params(cfg, dtype, rng)
    if masks == "masks":
        T, B, _ = p["x"].shape
        H, P = p["W_hr"].shape[1], p["W_hr"].shape[0]
        kw.update(_masks(rng, T, B, H, P, dtype=dtype))
    _check_kernel_parity(p, kw, dtype, rng)


@pytest.mark.parametrize("which", ["h_mask", "zoneout"])
def test_kernels_with_binary_masks_and_no_initial_states(which, isa, rng):
    p, kw = _kernel_params("H17-P5-len", np.float64, rng)
    p.pop("h0")
    p.pop("c0")
    p.pop("ln_c_bias")
    kw.update(_masks(rng, 5, 7, 17, 5, binary=True, which=which))
    _check_kernel_parity(p, kw, np.float64, rng)


def test_kernels_at_a_benchmark_like_size(rng):
    """Several GEMM panels and row tiles per step, for the projection too (H = 70, P = 40)."""
    p = _params(rng, T=6, B=20, I=24, H=70, P=40, dtype=np.float32)
    _check_kernel_parity(p, {"lengths": np.array([6, 5] * 10), **_masks(rng, 6, 20, 70, 40, np.float32, True)},
                         np.float32, rng)


@pytest.mark.parametrize("masks", [False, True], ids=["plain", "masks"])
def test_kernel_gradients_match_finite_differences(masks, rng):
    p, kw = _kernel_params("H7-P5-rev", np.float64, rng)
    if masks:
        kw.update(_masks(rng, 4, 3, 7, 5))
    check_layernorm_gradients(F, "lstm", p, rng, **kw)


@pytest.mark.parametrize("masks", [False, True], ids=["plain", "masks"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_thread_counts_are_bitwise_equal(dtype, masks, isa, threads, rng):
    """The projection's GEMMs split over output columns only: 1, 2 and 3 threads agree bitwise."""
    from test_layernorm import kernel_forward_backward
    p = _params(rng, T=5, B=9, I=11, H=45, P=21, dtype=dtype)
    kw = {"lengths": np.array([5, 3, 5, 1, 2, 4, 5, 3, 2]), "reverse": True,
          **(_masks(rng, 5, 9, 45, 21, dtype=dtype, binary=True) if masks else {})}
    threads(1)
    outs1, grads1 = kernel_forward_backward("lstm", p, 0, **kw)
    for n in (2, 3):
        threads(n)
        outs, grads = kernel_forward_backward("lstm", p, 0, **kw)
        assert_bitwise_equal(outs, outs1)
        assert_bitwise_equal(grads, grads1)


def test_inference_equals_training_forward(rng):
    p, kw = _kernel_params("H33-P16-len-rev", np.float32, rng)
    kw.update(_masks(rng, 6, 5, 33, 16, np.float32, True))
    train, _ = run_layernorm_forward(F, "lstm", p, **kw)
    infer, ws = run_layernorm_forward(F, "lstm", p, training=False, **kw)
    assert ws is None
    for k in train:
        np.testing.assert_array_equal(train[k], infer[k], err_msg=k)


def test_kernel_empty_batch(rng):
    p = _params(rng, T=3, B=0, I=4, H=5, P=2)
    outs, ws = run_layernorm_forward(F, "lstm", p)
    assert outs["y"].shape == (3, 0, 2) and outs["h_n"].shape == (0, 2) and outs["c_n"].shape == (0, 5)
    grads = run_layernorm_backward(F, "lstm", ws, random_cotangents(rng, outs))
    for k, g in grads.items():
        assert g.shape == p[k].shape and not np.any(g), k


def test_workspace_reports_projection(rng):
    p = _params(rng, dtype=np.float32)
    _, ws = run_layernorm_forward(F, "lstm", p)
    _, plain = run_layernorm_forward(F, "lstm", make_layernorm_params(rng, "lstm", dtype=np.float32))
    assert ws.proj_size == 3 and plain.proj_size == 0 and ws.shape == (4, 3, 5, 7)
    assert ws.nbytes > plain.nbytes  # m, saved for dW_hr


def test_functional_and_core_validation(rng):
    p = _params(rng, T=3, B=2, I=4, H=5, P=2)
    # a W_hr of the wrong width is named, with H from W_ih (hidden_size), not blamed on W_hh
    with pytest.raises(ValueError, match=r"W_hr must have shape \(P, H\) = \(2, 5\), got \(2, 6\)"):
        run_layernorm_forward(F, "lstm", dict(p, W_hr=np.zeros((2, 6))))
    with pytest.raises(ValueError, match=r"W_hh must have shape \(4\*H, P\) = \(20, 2\), got \(20, 5\)"):
        run_layernorm_forward(F, "lstm", dict(p, W_hh=np.zeros((20, 5))))
    with pytest.raises(ValueError, match=r"h0 must have shape \(B, P\) = \(2, 2\), got \(2, 5\)"):
        run_layernorm_forward(F, "lstm", dict(p, h0=np.zeros((2, 5))))
    with pytest.raises(ValueError, match=r"h_mask must have shape \(B, P\)"):
        run_layernorm_forward(F, "lstm", p, h_mask=np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"zoneout_h must have shape \(T, B, P\)"):
        run_layernorm_forward(F, "lstm", p, zoneout_h=np.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match=r"zoneout_c must have shape \(T, B, H\)"):
        run_layernorm_forward(F, "lstm", p, zoneout_c=np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match=r"ln_c_weight must have shape \(H,\) = \(5,\)"):
        run_layernorm_forward(F, "lstm", dict(p, ln_c_weight=np.ones(2)))
    with pytest.raises(ValueError, match=r"W_hr must have shape \(P, H\) with 1 <= P < H, got \(5, 5\)"):
        run_layernorm_forward(F, "lstm", dict(p, W_hr=np.zeros((5, 5))))
    with pytest.raises(TypeError, match="W_hr"):
        run_layernorm_forward(F, "lstm", dict(p, W_hr=p["W_hr"].astype(np.float32)))
    g = make_layernorm_params(rng, "gru", T=3, B=2, I=4, H=5)
    with pytest.raises(TypeError, match="W_hr"):  # the GRU has no projection
        F.layernorm_gru_forward(g["x"], None, g["W_ih"], g["W_hh"], g["b_ih"], g["b_hh"], g["ln_ih"], g["ln_hh"],
                                W_hr=p["W_hr"])
    _, ws = run_layernorm_forward(F, "lstm", p)
    with pytest.raises(ValueError, match=r"dy must have shape \(T, B, P\) = \(3, 2, 2\)"):
        F.layernorm_lstm_backward(ws, np.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match=r"dh_n must have shape \(B, P\) = \(2, 2\)"):
        F.layernorm_lstm_backward(ws, None, np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"dc_n must have shape \(B, H\) = \(2, 5\)"):
        F.layernorm_lstm_backward(ws, None, None, np.zeros((2, 2)))
    # the extension checks the arrays itself when called directly
    from pyrnn import _core
    args = [_core.CellKind.LSTM, p["x"], p["h0"], p["c0"], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], p["ln_ih"],
            p["ln_hh"], p["ln_c_weight"], p["ln_c_bias"], None, False, True]
    _core.layernorm_forward(*args, W_hr=p["W_hr"])
    with pytest.raises(ValueError, match="expected a C-contiguous array of shape"):
        _core.layernorm_forward(*args)  # W_hh [4H, P] without W_hr: H would be P
    with pytest.raises(ValueError, match="1 <= P < H"):
        _core.layernorm_forward(*args, W_hr=np.zeros((5, 5)))
    with pytest.raises(ValueError, match="h0: expected a C-contiguous array of shape"):
        _core.layernorm_forward(*(args[:2] + [np.zeros((2, 5))] + args[3:]), W_hr=p["W_hr"])
    gargs = [_core.CellKind.GRU, g["x"], None, None, g["W_ih"], g["W_hh"], g["b_ih"], g["b_hh"], g["ln_ih"],
             g["ln_hh"], None, None, None, False, True]
    with pytest.raises(ValueError, match="W_hr .*LSTM only"):
        _core.layernorm_forward(*gargs, W_hr=np.zeros((2, 5)))


# ===========================================================================
# pyrnn.LayerNormLSTM(proj_size=P)
# ===========================================================================


def _randomise(layer, rng):
    for name, p in layer.named_parameters():
        if name.startswith("ln_weight"):
            p[...] = rng.uniform(0.5, 1.5, p.shape)
        elif name.startswith(("bias", "ln_bias")):
            p[...] = rng.uniform(-0.5, 0.5, p.shape)


def test_layer_parameters_follow_pyrnn_lstm():
    layer = pyrnn.LayerNormLSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3, seed=0)
    plain = pyrnn.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3)
    shapes = {k: v.shape for k, v in layer.named_parameters()}
    plain_shapes = {k: v.shape for k, v in plain.named_parameters()}
    # pyrnn.LSTM's parameters, in its order, with the layer norms' after each direction's
    assert [k for k in shapes if k in plain_shapes] == list(plain_shapes)
    assert {k: shapes[k] for k in plain_shapes} == plain_shapes
    assert list(shapes)[:9] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0",
                                "ln_weight_ih_l0", "ln_weight_hh_l0", "ln_weight_c_l0", "ln_bias_c_l0"]
    assert shapes["weight_hh_l1_reverse"] == (28, 3) and shapes["weight_ih_l1"] == (28, 6)
    assert shapes["weight_hr_l1_reverse"] == (3, 7) and shapes["ln_weight_c_l1"] == (7,)
    assert list(layer.state_dict()) == list(shapes) and set(layer.grads) == set(shapes)
    assert np.max(np.abs(layer.weight_hr_l0)) <= 1 / np.sqrt(7) and np.std(layer.weight_hr_l0) > 0
    assert repr(layer) == "LayerNormLSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3)"
    nobias = pyrnn.LayerNormLSTM(4, 6, bias=False, proj_size=2)
    assert [k for k, _ in nobias.named_parameters()] == ["weight_ih_l0", "weight_hh_l0", "weight_hr_l0",
                                                         "ln_weight_ih_l0", "ln_weight_hh_l0", "ln_weight_c_l0"]
    # proj_size=0 is the unprojected layer, parameters drawn as before
    a = pyrnn.LayerNormLSTM(4, 6, proj_size=0, seed=5)
    b = pyrnn.LayerNormLSTM(4, 6, seed=5)
    assert all(np.array_equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_layer_states_outputs_and_reference_composition(rng):
    """A 2-layer bidirectional layer with lengths equals the reference run direction by direction
    (the second layer reads 2P features); states and gradients have torch.nn.LSTM's shapes."""
    layer = pyrnn.LayerNormLSTM(4, 6, num_layers=2, bidirectional=True, proj_size=2, dtype=np.float64, seed=1)
    _randomise(layer, rng)
    T, B = 6, 3
    x = rng.standard_normal((T, B, 4))
    lengths = np.array([6, 2, 4])
    h0, c0 = rng.standard_normal((4, B, 2)), rng.standard_normal((4, B, 6))
    out, (h_n, c_n) = layer(x, (h0, c0), lengths=lengths)
    assert out.shape == (T, B, 4) and h_n.shape == (4, B, 2) and c_n.shape == (4, B, 6)
    layer_x = x
    for k in range(2):
        ys = []
        for d in range(2):
            p = {"x": layer_x, "h0": h0[2 * k + d], "c0": c0[2 * k + d],
                 **{n: v for n, v in layer.direction_params(k, d).items() if v is not None}}
            o, _ = run_layernorm_forward(ref, "lstm", p, lengths=lengths, reverse=d == 1, training=False)
            np.testing.assert_allclose(h_n[2 * k + d], o["h_n"], rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(c_n[2 * k + d], o["c_n"], rtol=1e-12, atol=1e-13)
            ys.append(o["y"])
        layer_x = np.concatenate(ys, axis=2)
    np.testing.assert_allclose(out, layer_x, rtol=1e-12, atol=1e-13)
    dx, (dh0, dc0) = layer.backward(np.ones_like(out), np.ones_like(h_n), np.ones_like(c_n))
    assert dx.shape == x.shape and dh0.shape == h0.shape and dc0.shape == c0.shape
    assert layer.grads["weight_hr_l1_reverse"].shape == (2, 6) and np.any(layer.grads["weight_hr_l0"])
    unbatched, (hu, cu) = layer(x[:, 1], (h0[:, 1], c0[:, 1]))
    assert unbatched.shape == (T, 4) and hu.shape == (4, 2) and cu.shape == (4, 6)


@pytest.mark.parametrize("masks", [False, True], ids=["plain", "masks"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_layer_gradients_match_finite_differences(batch_first, masks, rng):
    opts = {"recurrent_dropout": 0.3, "zoneout": 0.25, "zoneout_c": 0.4} if masks else {}
    layer = pyrnn.LayerNormLSTM(3, 5, num_layers=2, bidirectional=True, batch_first=batch_first, proj_size=2,
                                dtype=np.float64, seed=2, **opts)
    _randomise(layer, rng)
    T, B = 5, 3
    x = rng.standard_normal((B, T, 3) if batch_first else (T, B, 3))
    lengths = np.array([5, 1, 3])
    hx = (rng.standard_normal((4, B, 2)), rng.standard_normal((4, B, 5)))

    def call(x, hx):
        layer._rng = np.random.default_rng(99)  # the same masks at every call
        return layer(x, hx, lengths=lengths)

    out, (h_n, c_n) = call(x, hx)
    dy, dh, dc = rng.standard_normal(out.shape), rng.standard_normal(h_n.shape), rng.standard_normal(c_n.shape)
    dx, dhx = layer.backward(dy, dh, dc)
    grads = {k: v.copy() for k, v in layer.grads.items()}

    def loss(x, hx):
        o, (h, c) = call(x, hx)
        return np.sum(o * dy) + np.sum(h * dh) + np.sum(c * dc)

    eps = 1e-6
    params = dict(layer.named_parameters())
    direction = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    dxd = rng.standard_normal(x.shape)
    hd = [rng.standard_normal(h.shape) for h in hx]
    analytic = (sum(np.sum(grads[k] * direction[k]) for k in params) + np.sum(dx * dxd)
                + sum(np.sum(g * h) for g, h in zip(dhx, hd)))
    values = []
    for sign in (1, -1):
        for k, p in params.items():
            p += sign * eps * direction[k]
        values.append(loss(x + sign * eps * dxd, tuple(h + sign * eps * d for h, d in zip(hx, hd))))
        for k, p in params.items():
            p -= sign * eps * direction[k]
    assert analytic == pytest.approx((values[0] - values[1]) / (2 * eps), rel=1e-6)


def test_layer_errors():
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        pyrnn.LayerNormLSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        pyrnn.LayerNormLSTM(3, 4, proj_size=5)
    with pytest.raises(ValueError, match="proj_size must be zero or a positive integer, got -1"):
        pyrnn.LayerNormLSTM(3, 4, proj_size=-1)
    with pytest.raises(ValueError, match="got proj_size=5 and hidden_size=4"):
        pyrnn.LayerNormLSTM(3, 4, proj_size=5)
    assert pyrnn.LayerNormLSTM(3, 4, proj_size=np.int64(2)).proj_size == 2
    for bad in (2.0, "2", True):
        with pytest.raises(TypeError, match="proj_size should be of type int"):
            pyrnn.LayerNormLSTM(3, 4, proj_size=bad)
    with pytest.raises(TypeError, match="proj_size"):
        pyrnn.LayerNormGRU(3, 4, proj_size=2)
    layer = pyrnn.LayerNormLSTM(3, 4, proj_size=2)
    x = np.zeros((2, 1, 3), np.float32)
    with pytest.raises(ValueError, match=r"Expected hidden\[0\] size \(1, 1, 2\), got \[1, 1, 4\]"):
        layer(x, (np.zeros((1, 1, 4), np.float32), np.zeros((1, 1, 4), np.float32)))
    with pytest.raises(ValueError, match=r"Expected hidden\[1\] size \(1, 1, 4\)"):
        layer(x, (np.zeros((1, 1, 2), np.float32), np.zeros((1, 1, 2), np.float32)))
    out, _ = layer(x)
    with pytest.raises(ValueError, match="dy"):
        layer.backward(np.zeros((2, 1, 4), np.float32))


# ===========================================================================
# pyrnn.torch.LayerNormLSTM(proj_size=P)
# ===========================================================================


def test_torch_module_parameters_follow_torch_lstm():
    torch = pytest.importorskip("torch")
    import pyrnn.torch as pt
    for kw in ({"num_layers": 2, "bidirectional": True}, {"bias": False}):
        m = pt.LayerNormLSTM(5, 7, proj_size=3, **kw)
        t = torch.nn.LSTM(5, 7, proj_size=3, **kw)
        shapes = {k: tuple(v.shape) for k, v in m.named_parameters()}
        expected = {k: tuple(v.shape) for k, v in t.named_parameters()}
        assert [k for k in shapes if k in expected] == list(expected)
        assert {k: shapes[k] for k in expected} == expected
    assert repr(pt.LayerNormLSTM(5, 7, proj_size=3)) == "LayerNormLSTM(5, 7, proj_size=3)"
    m = pt.LayerNormLSTM(5, 7, 1, True, False, 0.0, False, 3)  # positional, as torch.nn.LSTM's
    assert m.proj_size == 3 and m.weight_hr_l0.shape == (3, 7)
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        pt.LayerNormLSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="proj_size should be a positive integer or zero"):
        pt.LayerNormLSTM(3, 4, proj_size=-1)
    with pytest.raises(TypeError, match="proj_size should be of type int"):
        pt.LayerNormLSTM(3, 4, proj_size=1.0)
    # as torch.nn.GRU(proj_size=2): a ValueError saying why
    with pytest.raises(ValueError, match="proj_size argument is only supported for LayerNormLSTM, not LayerNormGRU"):
        pt.LayerNormGRU(3, 4, proj_size=2)
    assert pt.LayerNormGRU(3, 4, proj_size=0).proj_size == 0
    # a NumPy integer, as torch.nn.LSTM takes it
    m = pt.LayerNormLSTM(3, 4, proj_size=np.int64(2))
    assert m.proj_size == 2 and type(m.proj_size) is int and m.weight_hr_l0.shape == (2, 4)
    m = pt.LayerNormLSTM(3, 4, proj_size=2)
    x = torch.zeros(2, 1, 3)
    with pytest.raises(ValueError, match=r"expected hx\[0\] of size \(1, 1, 2\)"):
        m(x, (torch.zeros(1, 1, 4), torch.zeros(1, 1, 4)))
    with pytest.raises(ValueError, match=r"expected hx\[1\] of size \(1, 1, 4\)"):
        m(x, (torch.zeros(1, 1, 2), torch.zeros(1, 1, 2)))


@pytest.mark.parametrize("masks", [False, True], ids=["plain", "masks"])
def test_torch_module_matches_numpy_layer(masks, rng, monkeypatch):
    torch = pytest.importorskip("torch")
    import pyrnn.torch as pt
    opts = {"recurrent_dropout": 0.3, "zoneout": 0.25, "zoneout_c": 0.4} if masks else {}
    kw = dict(input_size=4, hidden_size=5, num_layers=2, bidirectional=True, batch_first=True, proj_size=3, **opts)
    m = pt.LayerNormLSTM(dtype=torch.float64, **kw)
    layer = pyrnn.LayerNormLSTM(**kw, dtype=np.float64, seed=0)
    _randomise(layer, rng)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    assert [k for k, _ in m.named_parameters()] == [k for k, _ in layer.named_parameters()]
    T, B = 6, 3
    if masks:  # the same masks in both: recurrent dropout [B, P], zoneout of h [T, B, P], of c [T, B, H]
        zo = {(k, d): make_masks(rng, "lstm", T, B, 5, h_mask=False, binary=True, proj_size=3)
              for k in range(2) for d in range(2)}
        rec = [((rng.random((B, 3)) >= 0.3) / 0.7) for _ in range(4)]
        np_rec, t_rec = iter(rec), iter(rec)
        layer._zoneout_masks = lambda k, d, T_, B_: (zo[k, d]["zoneout_h"], zo[k, d]["zoneout_c"])
        layer._dropout_mask = lambda shape, p: next(np_rec)
        m._zoneout_masks = lambda k, d, T_, B_, dtype: (torch.from_numpy(zo[k, d]["zoneout_h"]),
                                                        torch.from_numpy(zo[k, d]["zoneout_c"]))
        monkeypatch.setattr(pt, "_dropout_mask", lambda shape, p, dtype: torch.from_numpy(next(t_rec)))
    x = rng.standard_normal((B, T, 4))
    lengths = np.array([6, 2, 5])
    out, (h_n, c_n) = layer(x, lengths=lengths)
    xt = torch.from_numpy(x).requires_grad_()
    out_t, (h_t, c_t) = m(xt, lengths=torch.from_numpy(lengths))
    assert out_t.shape == (B, T, 6) and h_t.shape == (4, B, 3) and c_t.shape == (4, B, 5)
    for a, e in ((out_t, out), (h_t, h_n), (c_t, c_n)):
        np.testing.assert_allclose(a.detach().numpy(), e, rtol=1e-12, atol=1e-13)
    dy = rng.standard_normal(out.shape)
    dx, _ = layer.backward(dy)
    (out_t * torch.from_numpy(dy)).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-11, atol=1e-12)
    for name, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), layer.grads[name], rtol=1e-11, atol=1e-12, err_msg=name)


def test_torch_packed_sequence_lengths_and_unbatched():
    torch = pytest.importorskip("torch")
    import pyrnn.torch as pt
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(0)
    m = pt.LayerNormLSTM(3, 5, proj_size=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    lengths = torch.tensor([3, 5])
    ref_out, (ref_h, ref_c) = m(x, lengths=lengths)
    assert ref_out.shape == (5, 2, 4) and ref_h.shape == (2, 2, 2) and ref_c.shape == (2, 2, 5)
    out, (h, c) = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
    assert torch.equal(h, ref_h) and torch.equal(c, ref_c)
    assert torch.equal(pad_packed_sequence(out)[0], ref_out[:5])
    single, (hs, cs) = m(x[:, 1])
    assert single.shape == (5, 4) and hs.shape == (2, 2) and cs.shape == (2, 5)
    torch.testing.assert_close(single, ref_out[:, 1])
    with torch.no_grad():  # inference kernels: same numbers
        assert torch.equal(m(x, lengths=lengths)[0], ref_out)
    h0, c0 = torch.randn(2, 2, 2), torch.randn(2, 2, 5)
    y, _ = m(x, (h0, c0))
    y1, _ = m(x[:, :1], (h0[:, :1], c0[:, :1]))
    torch.testing.assert_close(y[:, :1], y1)
