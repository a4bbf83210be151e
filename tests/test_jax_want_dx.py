"""pyrnn.jax skips x's gradient where JAX does not differentiate x (data fed to a first layer), and
instantiates the cotangents of unused outputs itself (its custom_vjp rule has symbolic_zeros).

Every gradient of a call without dx is bitwise the one computed beside dx; both match a lax.scan
implementation (jitted: its op-by-op gradient took seconds); both backends (the XLA FFI custom call
and jax.pure_callback)."""

import re

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

import pyrnn.jax as rj  # noqa: E402
from pyrnn import functional as F  # noqa: E402

from test_jax import VARIANTS, _oracle, _params, _pyrnn  # noqa: E402

LENGTHS = np.array([3, 5, 1])
BACKENDS = ["ffi", "pure_callback"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    if request.param == "pure_callback":
        monkeypatch.setattr(rj, "_ffi_registered", lambda: False)
    elif rj.backend() != "ffi":
        pytest.skip("pyrnn was built without XLA's FFI headers")
    return request.param


def _two_layers(run, variant, p1, p2, x, lengths=None):
    """A stack of two layers of one variant (the second fed the first's y) and a loss using all outputs."""
    y1, h1, c1 = run(variant, p1, x, None, None, lengths, False)
    y2, h2, c2 = run(variant, p2, y1, None, None, lengths, True)
    loss = jnp.sum(jnp.sin(y2)) + jnp.sum(h1 * h2)
    return loss + (jnp.sum(c1 * c2) if c1 is not None else 0.0)


def _layer_params(variant, dtype, seed):
    p, x, _, _ = _params(variant, dtype, seed=seed)
    return p, x


def _second(variant, p1, dtype):
    """The second layer's parameters: its input size is the first's output size."""
    H_out = p1["W_hh"].shape[1]
    rng = np.random.default_rng(7)
    return {k: jnp.asarray(rng.uniform(-0.5, 0.5, (v.shape[0], H_out) if k == "W_ih" else v.shape), dtype)
            for k, v in p1.items()}


def _bwd_calls(fn, *args):
    """The `present` attributes of the lowered backward custom calls (FFI backend), as ints."""
    text = jax.jit(fn).lower(*args).as_text()
    calls = [line for line in text.splitlines() if "pyrnn_sequence_bwd" in line]
    return [int(re.search(r"present = (\d+)", c).group(1)) for c in calls]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_grad_of_weights_only_matches_grad_with_x(backend, variant, monkeypatch):
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    p1, x = _layer_params(variant, dtype, 0)
    p2 = _second(variant, p1, dtype)
    calls = []
    if backend == "pure_callback":
        real = F.backward

        def spy(*a, **kw):
            calls.append(kw.get("input_grad", True))
            return real(*a, **kw)

        monkeypatch.setattr(F, "backward", spy)

    def loss_w(p1, p2):
        return _two_layers(_pyrnn, variant, p1, p2, x, LENGTHS)

    def loss_wx(p1, p2, x):
        return _two_layers(_pyrnn, variant, p1, p2, x, LENGTHS)

    g_w = jax.jit(jax.grad(loss_w, argnums=(0, 1)))(p1, p2)
    if backend == "pure_callback":
        assert sorted(calls) == [False, True]  # the first layer without dx, the second with
        calls.clear()
    g_wx = jax.jit(jax.grad(loss_wx, argnums=(0, 1, 2)))(p1, p2, x)
    if backend == "pure_callback":
        assert calls == [True, True]
    else:
        assert sorted(p & 32 for p in _bwd_calls(jax.grad(loss_w, argnums=(0, 1)), p1, p2)) == [0, 32]
        assert [p & 32 for p in _bwd_calls(jax.grad(loss_wx, argnums=(0, 1, 2)), p1, p2, x)] == [0, 0]
    for a, b in zip(jax.tree_util.tree_leaves(g_w), jax.tree_util.tree_leaves(g_wx[:2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    want = jax.jit(jax.grad(lambda p1, p2: _two_layers(_oracle, variant, p1, p2, x, LENGTHS), argnums=(0, 1)))(p1, p2)
    tol = 1e-10 if dtype == jnp.float64 else 3e-5
    for a, e in zip(jax.tree_util.tree_leaves(g_w), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=tol, atol=tol)


@pytest.mark.parametrize("variant", ["lstm", "gru", "lstm_proj"])
@pytest.mark.parametrize("used", ["y", "h_n", "c_n"])
def test_unused_outputs_give_zero_cotangents(backend, variant, used):
    """A loss of one output: the others' cotangents come as symbolic zeros, which the rule
    instantiates; gradients (x's included) as the lax.scan implementation's."""
    if used == "c_n" and VARIANTS[variant][0] != "lstm":
        pytest.skip("no c_n")
    dtype = jnp.float32
    p, x, h0, c0 = _params(variant, dtype)
    if VARIANTS[variant][0] != "lstm":
        c0 = None
    k = ["y", "h_n", "c_n"].index(used)

    def loss(run, p, x, h0, c0):
        return jnp.sum(jnp.cos(run(variant, p, x, h0, c0, LENGTHS, False)[k]))

    got = jax.jit(jax.grad(lambda *a: loss(_pyrnn, *a), argnums=(0, 1, 2, 3)))(p, x, h0, c0)
    want = jax.jit(jax.grad(lambda *a: loss(_oracle, *a), argnums=(0, 1, 2, 3)))(p, x, h0, c0)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=3e-5, atol=3e-5)


def test_x_only_and_states_only(backend):
    """Differentiating x alone (weights constant), or h0 alone: the gradients of what is asked."""
    variant = "lstm"
    p, x, h0, c0 = _params(variant, jnp.float32)

    def loss(run, p, x, h0, c0):
        y, h_n, c_n = run(variant, p, x, h0, c0, None, False)
        return jnp.sum(y ** 2) + jnp.sum(h_n * c_n)

    for argnums in (1, 2, (2, 3), 0):
        got = jax.grad(lambda *a: loss(_pyrnn, *a), argnums=argnums)(p, x, h0, c0)
        want = jax.jit(jax.grad(lambda *a: loss(_oracle, *a), argnums=argnums))(p, x, h0, c0)
        for a, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=3e-5, atol=3e-5)


def test_per_example_gradients_without_dx(backend):
    """vmap(grad) over examples, x not differentiated: each example's weight gradient as computed alone."""
    variant = "gru"
    p, x, h0, _ = _params(variant, jnp.float32)
    xs = jnp.stack([x, 2 * x, -x])

    def loss(p, x):
        y, h_n, _ = _pyrnn(variant, p, x, h0, None, None, False)
        return jnp.sum(y ** 2) + jnp.sum(h_n)

    per = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(p, xs)
    for i in range(xs.shape[0]):
        alone = jax.grad(loss)(p, xs[i])
        for k in p:
            np.testing.assert_allclose(np.asarray(per[k][i]), np.asarray(alone[k]), rtol=1e-6, atol=1e-6)
