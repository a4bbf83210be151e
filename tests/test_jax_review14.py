"""pyrnn.jax under a JAX user's less common uses: second derivatives and symbolic shapes are refused
in words, and unsigned 64-bit lengths traced under jit are not wrapped into range."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402

import pyrnn.jax as rj  # noqa: E402

T, B, I, H = 3, 2, 4, 5


def _gru():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((T, B, I)), jnp.float32)
    W = tuple(jnp.asarray(rng.uniform(-0.5, 0.5, s), jnp.float32) for s in ((3 * H, I), (3 * H, H), (3 * H,), (3 * H,)))
    return x, W


@pytest.mark.parametrize("backend", ["ffi", "pure_callback"])
def test_second_derivatives_are_refused_in_words(backend, monkeypatch):
    """hessian, grad of grad and jvp of grad failed inside JAX ("The FFI call to `pyrnn_sequence_fwd`
    cannot be differentiated. You can use `jax.custom_jvp` ...", or pure_callback's "do not support
    JVP"); they now name pyrnn and what it supports. First derivatives, and an outer derivative that
    does not reach the kernels, are unchanged."""
    if backend == "ffi" and rj.backend() != "ffi":
        pytest.skip("this build has no XLA FFI handlers")
    if backend == "pure_callback":
        monkeypatch.setattr(rj, "_ffi_registered", lambda: False)
    x, W = _gru()

    def f(x):
        return jnp.sum(rj.gru(x, None, *W)[0] ** 2)

    refused = "first derivatives in reverse mode only"
    for second in (jax.hessian(f), jax.grad(lambda x: jnp.sum(jax.grad(f)(x))),
                   lambda x: jax.jvp(jax.grad(f), (x,), (x,)), jax.jacrev(jax.jacrev(f))):
        with pytest.raises(NotImplementedError, match=refused):
            second(x)
    g = jax.jit(jax.grad(f))(x)
    assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))
    outer = jax.grad(lambda c: c * jnp.sum(jax.grad(f)(x)))(jnp.float32(2.0))  # zero tangents reach pyrnn
    np.testing.assert_allclose(np.asarray(outer), np.sum(np.asarray(g)), rtol=1e-6)


@pytest.mark.skipif(not hasattr(jax, "export"), reason="needs jax.export")
def test_symbolic_shapes_are_refused_in_words():
    """jax.export's shape polymorphism failed with "'_DimExpr' object cannot be interpreted as an
    integer"; the workspace is sized at trace time, so a symbolic dimension is refused by name."""
    _, W = _gru()
    checks = [jax.export.DisabledSafetyCheck.custom_call(n) for n in ("pyrnn_sequence_fwd", "pyrnn_sequence_bwd")]
    for spec in ("3, b, 4", "t, 2, 4"):
        arg = jax.ShapeDtypeStruct(jax.export.symbolic_shape(spec), jnp.float32)
        with pytest.raises(ValueError, match=r"x must have a static shape .* got shape \("):
            jax.export.export(jax.jit(lambda x: rj.gru(x, None, *W)[0]), disabled_checks=checks)(arg)


def test_traced_uint64_lengths_are_not_wrapped():
    """Traced uint64 lengths (jax_enable_x64) were narrowed to int32, so 2**32 + 1 ran as a length of 1;
    they now reach the kernel as int64 and are refused at run time, while valid ones give the int32 results."""
    if rj.backend() != "ffi":
        pytest.skip("the run-time error is the custom call's")
    x, W = _gru()
    with jax.enable_x64(True):
        f = jax.jit(lambda lengths: rj.gru(x, None, *W, lengths=lengths))
        want = f(jnp.asarray([3, 1], jnp.int32))
        for a, b in zip(f(jnp.asarray([3, 1], jnp.uint64)), want):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        with pytest.raises(Exception, match=r"lengths must lie in \[1, T\]"):
            jax.block_until_ready(f(jnp.asarray([2**32 + 1, 1], jnp.uint64)))
