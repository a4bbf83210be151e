"""pyrnn.jax against a pure-JAX lax.scan implementation: outputs and gradients,
under jit, grad and vmap, with lengths, reverse, projections and both GRU variants."""

import functools

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

import pyrnn.jax as rj  # noqa: E402
from pyrnn import testing  # noqa: E402
from pyrnn._cells import GATES  # noqa: E402

T, B, I, H, P = 5, 3, 4, 6, 2
LENGTHS = np.array([3, 5, 1])
# pyrnn.jax has no leaky RNN (the reservoir, pyrnn.reservoir, is NumPy's)
VARIANTS = {**{k: v for k, v in testing.VARIANTS.items() if k != "rnn_leaky"}, "lstm_proj": ("lstm", {})}


# ------------------------------------------------------ the lax.scan oracle --

def _step(cell, opts, p, x, h, c):
    """One step of PyTorch's equations; returns (h', c')."""
    gi = x @ p["W_ih"].T + (p["b_ih"] if "b_ih" in p else 0)
    if cell == "lstm":
        g = gi + h @ p["W_hh"].T + (p["b_hh"] if "b_hh" in p else 0)
        i, f, gg, o = jnp.split(g, 4, axis=-1)
        c1 = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
        h1 = jax.nn.sigmoid(o) * jnp.tanh(c1)
        return (h1 @ p["W_hr"].T if "W_hr" in p else h1), c1
    if cell == "rnn":
        a = gi + h @ p["W_hh"].T + (p["b_hh"] if "b_hh" in p else 0)
        return (jnp.tanh(a) if opts["nonlinearity"] == "tanh" else jax.nn.relu(a)), c
    Hh = h.shape[-1]
    b_hh = p["b_hh"] if "b_hh" in p else jnp.zeros(3 * Hh, x.dtype)
    i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
    W_r, W_z, W_n = jnp.split(p["W_hh"], 3, axis=0)
    b_r, b_z, b_n = jnp.split(b_hh, 3)
    r = jax.nn.sigmoid(i_r + h @ W_r.T + b_r)
    z = jax.nn.sigmoid(i_z + h @ W_z.T + b_z)
    if opts["reset_after"]:
        n = jnp.tanh(i_n + r * (h @ W_n.T + b_n))
    else:
        n = jnp.tanh(i_n + (r * h) @ W_n.T + b_n)
    return (1 - z) * n + z * h, c


def reference(cell, opts, p, x, h0, c0, lengths, reverse):
    """Packed-sequence semantics with masks: a step past a sequence's length keeps its state and outputs 0."""
    Tn, Bn = x.shape[:2]
    lengths = jnp.full(Bn, Tn) if lengths is None else jnp.asarray(lengths)

    def body(carry, inp):
        h, c = carry
        t, xt = inp
        h1, c1 = _step(cell, opts, p, xt, h, c)
        valid = (t < lengths)[:, None]
        c_next = jnp.where(valid, c1, c) if cell == "lstm" else c
        return (jnp.where(valid, h1, h), c_next), jnp.where(valid, h1, 0)

    (h_n, c_n), y = jax.lax.scan(body, (h0, c0), (jnp.arange(Tn), x), reverse=reverse)
    return y, h_n, c_n


# ------------------------------------------------------------------ helpers --

def _params(variant, dtype, bias=True, seed=0):
    cell, _ = VARIANTS[variant]
    G = GATES[cell]
    rng = np.random.default_rng(seed)
    H_out = P if variant == "lstm_proj" else H
    p = {"W_ih": rng.uniform(-0.5, 0.5, (G * H, I)), "W_hh": rng.uniform(-0.5, 0.5, (G * H, H_out))}
    if bias:
        p["b_ih"], p["b_hh"] = rng.uniform(-0.5, 0.5, G * H), rng.uniform(-0.5, 0.5, G * H)
    if variant == "lstm_proj":
        p["W_hr"] = rng.uniform(-0.5, 0.5, (P, H))
    x = rng.standard_normal((T, B, I))
    h0 = 0.5 * rng.standard_normal((B, H_out))
    c0 = 0.5 * rng.standard_normal((B, H))
    cast = functools.partial(jnp.asarray, dtype=dtype)
    return {k: cast(v) for k, v in p.items()}, cast(x), cast(h0), cast(c0)


def _pyrnn(variant, p, x, h0, c0, lengths, reverse):
    """pyrnn.jax's outputs as (y, h_n, c_n-or-None)."""
    cell, opts = VARIANTS[variant]
    weights = (p["W_ih"], p["W_hh"], p.get("b_ih"), p.get("b_hh"))
    if cell == "lstm":
        return rj.lstm(x, h0, c0, *weights, lengths=lengths, reverse=reverse, W_hr=p.get("W_hr"))
    fn = rj.gru if cell == "gru" else rj.rnn
    y, h_n = fn(x, h0, *weights, lengths=lengths, reverse=reverse, **opts)
    return y, h_n, None


def _oracle(variant, p, x, h0, c0, lengths, reverse):
    cell, opts = VARIANTS[variant]
    H_out = p["W_hr"].shape[0] if "W_hr" in p else p["W_hh"].shape[1]
    h0 = jnp.zeros((x.shape[1], H_out), x.dtype) if h0 is None else h0
    c = (jnp.zeros((x.shape[1], H), x.dtype) if c0 is None else c0) if cell == "lstm" else jnp.zeros((), x.dtype)
    y, h_n, c_n = reference(cell, opts, p, x, h0, c, lengths, reverse)
    return y, h_n, (c_n if cell == "lstm" else None)


def _cotangents(outs, seed=5):
    rng = np.random.default_rng(seed)
    return tuple(None if o is None else jnp.asarray(rng.standard_normal(o.shape), o.dtype) for o in outs)


def _outputs_and_grads(run, variant, lengths, reverse, cot, args):
    """Outputs and the VJP of cot with respect to (params, x, h0, c0), in one jitted call."""
    def both(*args):
        outs, vjp = jax.vjp(lambda *a: run(variant, *a, lengths, reverse), *args)
        return outs, vjp(cot)
    return jax.jit(both)(*args)


def _close(a, e, dtype, name):
    tol = 1e-10 if dtype == jnp.float64 else 2e-5
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=tol, atol=tol, err_msg=name)


def _check_variant(variant, dtype, lengths, reverse, with_h0=True, bias=True):
    p, x, h0, c0 = _params(variant, dtype, bias)
    if not with_h0 or VARIANTS[variant][0] != "lstm":
        c0 = None
    if not with_h0:
        h0 = None
    args = (p, x, h0, c0)
    cot = _cotangents(jax.eval_shape(lambda *a: _oracle(variant, *a, lengths, reverse), *args))
    outs, grads = _outputs_and_grads(_pyrnn, variant, lengths, reverse, cot, args)
    want, want_grads = _outputs_and_grads(_oracle, variant, lengths, reverse, cot, args)
    for a, e, name in zip(outs, want, ["y", "h_n", "c_n"]):
        assert (a is None) == (e is None)
        if a is not None:
            assert a.dtype == dtype and a.shape == e.shape
            _close(a, e, dtype, name)
    flat_g = jax.tree_util.tree_leaves_with_path(grads)
    flat_e = jax.tree_util.tree_leaves_with_path(want_grads)
    assert [k for k, _ in flat_g] == [k for k, _ in flat_e]
    assert len(flat_g) == len(p) + 1 + (h0 is not None) + (c0 is not None)
    for (path, g), (_, e) in zip(flat_g, flat_e):
        _close(g, e, dtype, "d" + jax.tree_util.keystr(path))


# -------------------------------------------------------------------- tests --

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_lax_scan_float32(variant):
    _check_variant(variant, jnp.float32, LENGTHS, True)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_lax_scan_float64(variant):
    """Full-length sequences, no initial states and no biases, in float64."""
    with jax.enable_x64(True):
        _check_variant(variant, jnp.float64, None, False, with_h0=False, bias=False)


@pytest.mark.parametrize("variant, lengths, reverse", [("lstm", LENGTHS, False), ("gru", None, True)],
                         ids=["lstm-lengths-forward", "gru-full-reverse"])
def test_matches_lax_scan_other_directions(variant, lengths, reverse):
    _check_variant(variant, jnp.float32, lengths, reverse)


def _functional_lstm(p, x, h0, c0, lengths, dy, dh_n):
    """pyrnn.functional's (NumPy) outputs and gradients for the same call."""
    from pyrnn import functional as F

    arrays = [np.asarray(a) for a in (x, h0, c0, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"])]
    y, h_n, c_n, ws = F.lstm_forward(*arrays, lengths=lengths)
    dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh = F.lstm_backward(ws, dy, dh_n)
    return y, h_n, {"W_ih": dW_ih, "W_hh": dW_hh, "b_ih": db_ih, "b_hh": db_hh}, dx


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int8, jnp.int16, jnp.uint32])
def test_lengths_of_any_integer_dtype(dtype):
    """Integer lengths of any width reach the kernels as int32 (the custom call reads int32 or int64)."""
    p, x, h0, c0 = _params("lstm", jnp.float32)
    args = (x, h0, c0, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"])
    want = rj.lstm(*args, lengths=jnp.asarray(LENGTHS, jnp.int32))
    for fn in (rj.lstm, jax.jit(rj.lstm)):
        got = fn(*args, lengths=jnp.asarray(LENGTHS, dtype))
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_traced_lengths_under_jit():
    """lengths as a traced argument: one trace serves any lengths."""
    p, x, h0, c0 = _params("lstm", jnp.float32)
    traces = []

    @jax.jit
    @jax.value_and_grad
    def f(p, x, lengths):
        traces.append(1)
        y, h_n, _ = rj.lstm(x, h0, c0, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], lengths=lengths)
        return 0.5 * jnp.sum(y ** 2) + jnp.sum(h_n)

    for lengths in (LENGTHS, np.array([5, 2, 2])):
        loss, grads = f(p, x, jnp.asarray(lengths, jnp.int32))
        y, h_n, _, _ = _functional_lstm(p, x, h0, c0, lengths, None, None)
        _, _, want, _ = _functional_lstm(p, x, h0, c0, lengths, y, np.ones_like(h_n))  # d(loss)/dy = y
        _close(loss, 0.5 * np.sum(y.astype(np.float64) ** 2) + np.sum(h_n), jnp.float32, "loss")
        for k in p:
            _close(grads[k], want[k], jnp.float32, k)
    assert len(traces) == 1


def test_vmap_over_a_leading_axis():
    p, x, h0, c0 = _params("lstm", jnp.float32)
    xs = jnp.stack([x, 2 * x])

    def loss(W_ih, xs):
        ys = jax.vmap(lambda x: rj.lstm(x, h0, c0, W_ih, p["W_hh"], p["b_ih"], p["b_hh"])[0])(xs)
        return 0.5 * jnp.sum(ys ** 2), ys

    (_, ys), (g, gx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p["W_ih"], xs)
    g_want = 0
    for k in range(2):
        y, _, grads, dx = _functional_lstm(p, xs[k], h0, c0, None, np.asarray(ys[k]), None)
        _close(ys[k], y, jnp.float32, f"y[{k}]")
        _close(gx[k], dx, jnp.float32, f"dx[{k}]")
        g_want = g_want + grads["W_ih"]
    _close(g, g_want, jnp.float32, "dW_ih")


def test_matches_pyrnn_functional_bitwise():
    """The JAX functions run the same kernels as pyrnn.functional: identical numbers."""
    from pyrnn import functional as F

    p, x, h0, c0 = _params("lstm", jnp.float32)
    y, h_n, c_n = jax.jit(lambda: rj.lstm(x, h0, c0, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], lengths=LENGTHS))()
    args = [np.asarray(a) for a in (x, h0, c0, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"])]
    want = F.lstm_forward(*args, lengths=LENGTHS, training=False)
    for a, e in zip((y, h_n, c_n), want[:3]):
        np.testing.assert_array_equal(np.asarray(a), e)


def test_errors():
    p, x, h0, c0 = _params("lstm", jnp.float32)
    with jax.enable_x64(True):
        with pytest.raises(TypeError, match="same dtype"):
            rj.lstm(x, h0, c0, p["W_ih"].astype(jnp.float64), p["W_hh"])
    with pytest.raises(TypeError, match="float32 or float64"):
        rj.lstm(x, h0, c0, p["W_ih"].astype(jnp.float16), p["W_hh"])
    with pytest.raises(TypeError, match="float32 or float64"):
        rj.rnn(x.astype(jnp.int32), None, jnp.zeros((H, I)), jnp.zeros((H, H)))
    with pytest.raises(ValueError, match="W_hh must have shape"):
        rj.gru(x, None, jnp.zeros((3 * H, I)), jnp.zeros((3 * H, H + 1)))
    with pytest.raises(ValueError, match="lengths must lie in"):
        rj.lstm(x, h0, c0, p["W_ih"], p["W_hh"], lengths=np.array([0, 5, 1]))
    with pytest.raises(TypeError, match="integer"):
        rj.lstm(x, h0, c0, p["W_ih"], p["W_hh"], lengths=np.array([1.0, 5.0, 1.0]))
    with pytest.raises(ValueError, match="nonlinearity"):
        rj.rnn(x, None, jnp.zeros((H, I)), jnp.zeros((H, H)), nonlinearity="sigmoid")


# ------------------------------------------------ XLA FFI and the fallback --

def _grad_hlo():
    p, x, h0, c0 = _params("lstm", jnp.float32)

    def loss(p, x):
        y, h_n, c_n = rj.lstm(x, h0, c0, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], lengths=LENGTHS)
        return jnp.sum(y ** 2) + jnp.sum(c_n)

    return jax.jit(jax.grad(loss)).lower(p, x).as_text()


def test_ffi_backend_where_built():
    """Built with XLA's FFI headers (CI passes PYRNN_XLA_FFI_INCLUDE), the kernels are XLA custom calls:
    one forward keeping its workspace as a residual buffer, one backward consuming it, no host callback."""
    import os

    from pyrnn import _core

    if os.environ.get("PYRNN_XLA_FFI_INCLUDE"):
        assert _core.xla_ffi_targets is not None, "built with PYRNN_XLA_FFI_INCLUDE but without the FFI handlers"
    if _core.xla_ffi_targets is None:
        assert rj.backend() == "pure_callback"
        pytest.skip("this build has no XLA FFI handlers (pyrnn.show_config() says why)")
    assert rj.backend() == "ffi"
    hlo = _grad_hlo()
    assert hlo.count("pyrnn_sequence_fwd") == 1 and hlo.count("pyrnn_sequence_bwd") == 1
    assert "callback" not in hlo


@pytest.mark.parametrize("variant", ["lstm_proj", "gru_reset_before"])
def test_pure_callback_fallback(variant, monkeypatch):
    """Without the FFI handlers pyrnn.jax goes through jax.pure_callback, with the same results and the
    workspace still handed from forward to backward as a residual array (no rerun)."""
    monkeypatch.setattr(rj, "_ffi_registered", lambda: False)
    assert rj.backend() == "pure_callback"
    assert "callback" in _grad_hlo()
    _check_variant(variant, jnp.float32, LENGTHS, True)


@pytest.mark.parametrize("T, B", [(1, 1), (3, 0)])
def test_grad_at_edge_shapes(T, B):
    """One step, and an empty batch (zero gradients), through the custom calls and back."""
    from pyrnn import functional as F

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((T, B, I)), jnp.float32)
    W = [jnp.asarray(rng.standard_normal(s) * 0.3, jnp.float32) for s in ((3 * H, I), (3 * H, H), (3 * H,), (3 * H,))]

    def loss(W, x):
        y, h_n = rj.gru(x, None, *W, reset_after=False)
        return jnp.sum(y ** 2) + jnp.sum(h_n)

    value, grads = jax.jit(jax.value_and_grad(loss))(W, x)
    y, h_n, _, ws = F.forward("gru", np.asarray(x), None, None, *(np.asarray(w) for w in W), reset_after=False)
    want = F.backward(ws, 2 * y, np.ones_like(h_n))
    for g, name in zip(grads, ("W_ih", "W_hh", "b_ih", "b_hh")):
        np.testing.assert_array_equal(np.asarray(g), want[name])
    assert float(value) == pytest.approx(float(np.sum(y.astype(np.float64) ** 2) + np.sum(h_n)), rel=1e-5)


def test_vmap_folds_into_the_batch_without_grad():
    """A per-example model mapped over a batch: one kernel call (no loop) for every element, equal to
    one call per element up to rounding; with a batched weight, one call per element (bitwise)."""
    rng = np.random.default_rng(4)
    V = 4
    xs = jnp.asarray(rng.standard_normal((V, T, B, I)), jnp.float32)
    h0s = jnp.asarray(rng.standard_normal((V, B, H)), jnp.float32)
    p, _, _, c0 = _params("lstm", jnp.float32)
    lengths = jnp.asarray(np.stack([LENGTHS] * V), jnp.int32)

    def f(x, h0, lengths):
        return rj.lstm(x, h0, c0, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], lengths=lengths)

    mapped = jax.jit(jax.vmap(f))
    hlo = mapped.lower(xs, h0s, lengths).as_text()
    if rj.backend() == "ffi":
        assert hlo.count("pyrnn_sequence_fwd") == 1 and "while" not in hlo
    outs = mapped(xs, h0s, lengths)
    for v in range(V):
        for a, e in zip(outs, f(xs[v], h0s[v], lengths[v])):
            np.testing.assert_allclose(np.asarray(a[v]), np.asarray(e), rtol=1e-6, atol=1e-6)
    W_ihs = jnp.stack([p["W_ih"] * (1 + 0.1 * v) for v in range(V)])
    ys = jax.vmap(lambda w, x: rj.lstm(x, None, None, w, p["W_hh"])[0])(W_ihs, xs)
    for v in range(V):
        np.testing.assert_array_equal(np.asarray(ys[v]), np.asarray(rj.lstm(xs[v], None, None, W_ihs[v], p["W_hh"])[0]))


def test_vmap_over_empty_axes():
    """vmap of an inference call with B=0 per element, or over a mapped axis of size 0 (the folded
    reshape could not infer a dimension from zero elements)."""
    p, _, _, _ = _params("gru", jnp.float32)
    f = jax.vmap(lambda x: rj.gru(x, None, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"]))
    for V, Bn in ((2, 0), (0, 2)):
        y, h_n = f(jnp.zeros((V, T, Bn, I), jnp.float32))
        assert y.shape == (V, T, Bn, H) and h_n.shape == (V, Bn, H)


def test_lengths_are_checked_before_narrowing():
    """Concrete lengths past the int32 range are refused, not wrapped into range (2**32 + 3 as int32
    is 3), whatever the lengths' dtype and JAX's x64 setting."""
    p, x, h0, c0 = _params("lstm", jnp.float32)
    for lengths in (np.array([2**32 + 3, 2, 1], np.int64), np.array([2**32 + 3, 2, 1], np.uint64)):
        with pytest.raises(ValueError, match="lengths must lie in"):
            rj.lstm(x, h0, c0, p["W_ih"], p["W_hh"], lengths=lengths)


_SHARD_MAP = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np
import pyrnn.jax as rj
from pyrnn import functional as F
if sys.argv[1] == "pure_callback":
    rj._ffi_registered = lambda: False
from jax.sharding import Mesh, PartitionSpec as Ps
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((5, 4, 3)), jnp.float32)
W_ih, W_hh = (jnp.asarray(rng.standard_normal(s) * 0.3, jnp.float32) for s in ((18, 3), (18, 6)))
loss = lambda W, x: jnp.sum(rj.gru(x, None, W, W_hh)[0] ** 2)
mesh = Mesh(np.array(jax.devices()), ("b",))
y, _, _, ws = F.forward("gru", np.asarray(x), None, None, np.asarray(W_ih), np.asarray(W_hh))
want = F.backward(ws, 2 * y)
for check_vma in (True, False):
    def local(W, x):
        gW, gx = jax.grad(loss, argnums=(0, 1))(W, x)
        return (gW if check_vma else jax.lax.psum(gW, "b")), gx  # typed: a weight's gradient is summed already
    gW, gx = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(Ps(), Ps(None, "b")), out_specs=(Ps(), Ps(None, "b")),
                                   check_vma=check_vma))(W_ih, x)
    np.testing.assert_allclose(np.asarray(gW), want["W_ih"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gx), want["x"], rtol=1e-5, atol=1e-5)
    ys = jax.jit(jax.shard_map(lambda W, x: rj.gru(x, None, W, W_hh)[0], mesh=mesh, in_specs=(Ps(), Ps(None, "b")),
                               out_specs=Ps(None, "b"), check_vma=check_vma))(W_ih, x)
    np.testing.assert_allclose(np.asarray(ys), y, rtol=1e-5, atol=1e-6)
print("ok")
"""


@pytest.mark.skipif(not hasattr(jax, "shard_map") or not hasattr(jax.lax, "pcast"), reason="JAX 0.10's shard_map")
@pytest.mark.parametrize("backend", ["ffi", "pure_callback"])
def test_shard_map_results_and_gradients(backend):
    """Under shard_map with check_vma on (the default) the results are typed as varying over the mesh
    axes like the input (they were typed replicated, and gradients failed), and a weight's gradient
    comes out summed over them, as for JAX's own ops; with check_vma off, as before."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _SHARD_MAP, backend], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_exported_function_runs_in_a_fresh_process(tmp_path):
    """jax.export with pyrnn's custom calls allowed; deserialised in a process that only imported
    pyrnn.jax (the targets are registered at import, not at the first call)."""
    import subprocess
    import sys

    if rj.backend() != "ffi" or not hasattr(jax, "export"):
        pytest.skip("needs the XLA FFI build and jax.export")
    p, x, h0, _ = _params("gru", jnp.float32)
    f = jax.jit(lambda x: rj.gru(x, h0, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"])[0])
    checks = [jax.export.DisabledSafetyCheck.custom_call(n) for n in ("pyrnn_sequence_fwd", "pyrnn_sequence_bwd")]
    exported = jax.export.export(f, disabled_checks=checks)(x)
    (tmp_path / "f.bin").write_bytes(exported.serialize())
    np.save(tmp_path / "x.npy", np.asarray(x))
    np.save(tmp_path / "want.npy", np.asarray(f(x)))
    code = ("import sys, numpy as np, jax, pyrnn.jax\n"
            "f = jax.export.deserialize(bytearray(open(sys.argv[1] + '/f.bin', 'rb').read()))\n"
            "got = np.asarray(f.call(np.load(sys.argv[1] + '/x.npy')))\n"
            "assert np.array_equal(got, np.load(sys.argv[1] + '/want.npy'))\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
