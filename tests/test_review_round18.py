"""The eighteenth session: the unfrozen cell step's dot products (sums taken a vector of outputs at a
time) and pyrnn.torch cells' lean Python around each call, each pinned by what a user expects."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pyrnn

CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("GRUCell", {"reset_after": False}), ("RNNCell", {}),
         ("RNNCell", {"nonlinearity": "relu"})]


def _outs(out):
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("name, kw", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("I, H", [(5, 7), (33, 64), (65, 24), (16, 130)])
def test_unfrozen_step_rows_do_not_depend_on_the_batch(name, kw, dtype, I, H):
    # Below the packed step (B < 16) every output is one dot product summed in one order, whether its
    # batch row went with another (pairs) or alone (the rows left over, a generation loop's B=1):
    # a row's bits are the same at every batch size.
    rng = np.random.default_rng(1)
    c = getattr(pyrnn, name)(I, H, dtype=dtype, seed=2, **kw)
    B = 11
    x = rng.standard_normal((B, I)).astype(dtype)
    st = tuple(rng.standard_normal((B, H)).astype(dtype) for _ in range(2 if name == "LSTMCell" else 1))
    full = _outs(c(x, st if name == "LSTMCell" else st[0]))
    for b0, b1 in [(0, 1), (3, 4), (0, 3), (2, 7), (10, 11)]:
        part = _outs(c(x[b0:b1], tuple(s[b0:b1] for s in st) if name == "LSTMCell" else st[0][b0:b1]))
        for p, f in zip(part, full):
            np.testing.assert_array_equal(p, f[b0:b1])


@pytest.mark.parametrize("name, kw", CELLS)
@pytest.mark.parametrize("B", [1, 2, 3, 5])
def test_unfrozen_step_matches_float64_reference(name, kw, B):
    # the float32 step against the same cell in float64 (every output's sum checked, not only its bits)
    rng = np.random.default_rng(3)
    I, H = 37, 50
    c64 = getattr(pyrnn, name)(I, H, dtype=np.float64, seed=4, **kw)
    c32 = getattr(pyrnn, name)(I, H, dtype=np.float32, seed=4, **kw)
    c32.load_state_dict({k: v.astype(np.float32) for k, v in c64.state_dict().items()})
    x = rng.standard_normal((B, I))
    st = tuple(rng.standard_normal((B, H)) for _ in range(2 if name == "LSTMCell" else 1))
    arg = (lambda s: s) if name == "LSTMCell" else (lambda s: s[0])
    want = _outs(c64(x, arg(st)))
    got = _outs(c32(x.astype(np.float32), arg(tuple(s.astype(np.float32) for s in st))))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------- process lifecycle --

def _run_script(code, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "PYRNN_ISA"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("mode", ["inference", "training", "cell"])
def test_program_ends_cleanly_while_a_daemon_thread_runs_kernels(mode):
    """At interpreter shutdown CPython ends a daemon thread that asks for the GIL back (pthread_exit);
    its unwind through the GIL guard's destructor called std::terminate: the process aborted (rc 134)
    in 16 of 20 runs of the inference case."""
    code = """
        import threading, time, numpy as np, pyrnn
        from pyrnn import functional as F
        mode = %r
        x = np.zeros((64, 64, 128), np.float32)
        lstm = pyrnn.LSTM(128, 256).eval()
        cell, xc = pyrnn.LSTMCell(512, 512), np.zeros((8, 512), np.float32)
        W_ih, W_hh = lstm.state_dict()["weight_ih_l0"], lstm.state_dict()["weight_hh_l0"]
        def loop():
            while True:
                if mode == "inference":
                    lstm(x)
                elif mode == "training":
                    y, h, c, ws = F.lstm_forward(x, None, None, W_ih, W_hh, training=True)
                    F.backward(ws, y, None, None)
                else:
                    cell(xc)
        for _ in range(2):
            threading.Thread(target=loop, daemon=True).start()
        time.sleep(0.3)
        print("ok")
    """ % mode
    for _ in range(2):
        r = _run_script(code)
        assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # (fork with threads running)
def test_forked_children_do_not_hang_while_jax_calls_run():
    """pyrnn.jax's custom calls take a lock without the GIL; a fork while another thread held it gave a
    child that waited forever at its first pyrnn call (16 of 10,000 forks). This runs 400 forks (the
    old code hung in ~half of such runs; a hang is a timeout here)."""
    pytest.importorskip("jax")
    code = """
        import os, sys, threading, time, warnings
        warnings.simplefilter("ignore")
        import numpy as np, jax, jax.numpy as jnp
        import pyrnn, pyrnn.jax as rj
        I = H = 4
        rng = np.random.default_rng(0)
        W_ih = jnp.asarray(rng.standard_normal((4 * H, I)).astype(np.float32))
        W_hh = jnp.asarray(rng.standard_normal((4 * H, H)).astype(np.float32))
        x = jnp.asarray(rng.standard_normal((1, 1, I)).astype(np.float32))
        f = jax.jit(lambda x: rj.lstm(x, None, None, W_ih, W_hh)[0])
        f(x).block_until_ready()
        lstm, nx = pyrnn.LSTM(I, H).eval(), np.asarray(x)
        stop = False
        def spin():
            while not stop:
                f(x).block_until_ready()
        threads = [threading.Thread(target=spin) for _ in range(3)]
        for t in threads: t.start()
        hung = 0
        for i in range(400):
            pid = os.fork()
            if pid == 0:
                lstm(nx)
                os._exit(0)
            t0 = time.time()
            while not os.waitpid(pid, os.WNOHANG)[0]:
                if time.time() - t0 > 10:
                    hung += 1; os.kill(pid, 9); os.waitpid(pid, 0); break
                time.sleep(0.001)
        stop = True
        for t in threads: t.join()
        print("hung", hung)
    """
    r = _run_script(code, timeout=600)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.strip() == "hung 0"


# ------------------------------------------------------------------- pyrnn.torch cells' Python --

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402

import pyrnn.torch as pt  # noqa: E402

TORCH_CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {"nonlinearity": "tanh"}),
               ("RNNCell", {"nonlinearity": "relu"})]


def _pair(name, kw, bias=True, I=5, H=7):
    torch.manual_seed(0)
    ref = getattr(nn, name)(I, H, bias=bias, **kw)
    ours = getattr(pt, name)(I, H, bias=bias, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _state(name, B=3, H=7):
    g = torch.Generator().manual_seed(5)
    if name == "LSTMCell":
        return (torch.randn(B, H, generator=g), torch.randn(B, H, generator=g))
    return torch.randn(B, H, generator=g)


def _loss(out):
    return sum((o * torch.linspace(-1, 2, o.numel()).view_as(o)).sum() for o in _outs(out))


@pytest.mark.parametrize("name, kw", TORCH_CELLS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("grad", [False, True])
def test_cells_match_torch_with_and_without_bias(name, kw, bias, grad):
    ref, ours = _pair(name, kw, bias)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    with torch.set_grad_enabled(grad):
        a, b = ref(x, _state(name)), ours(x, _state(name))
    for p, q in zip(_outs(a), _outs(b)):
        torch.testing.assert_close(q, p)
    if grad:
        _loss(a).backward()
        _loss(b).backward()
        for (n, p), q in zip(ref.named_parameters(), ours.parameters()):
            torch.testing.assert_close(q.grad, p.grad, msg=n)


@pytest.mark.parametrize("name, kw", TORCH_CELLS)
def test_parametrized_weight_is_used_and_trained(name, kw):
    # torch.nn.utils.parametrize replaces the class by a subclass whose weight_hh is a property
    class Half(nn.Module):
        def forward(self, w):
            return 0.5 * w

    ref, ours = _pair(name, kw)
    for m in (ref, ours):
        parametrize.register_parametrization(m, "weight_hh", Half())
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            a, b = ref(x, _state(name)), ours(x, _state(name))
        for p, q in zip(_outs(a), _outs(b)):
            torch.testing.assert_close(q, p)
    _loss(ref(x, _state(name))).backward()
    _loss(ours(x, _state(name))).backward()
    torch.testing.assert_close(ours.parametrizations.weight_hh.original.grad,
                               ref.parametrizations.weight_hh.original.grad)


def test_weight_norm_weight_is_used():
    # the old weight_norm API keeps weight_hh as a plain attribute recomputed by a forward pre-hook
    ref, ours = _pair("GRUCell", {})
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ref = torch.nn.utils.weight_norm(ref, "weight_hh")
        ours = torch.nn.utils.weight_norm(ours, "weight_hh")
    with torch.no_grad():
        ours.weight_hh_g.mul_(1.5)
        ref.weight_hh_g.mul_(1.5)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(x, _state("GRUCell")), ref(x, _state("GRUCell")))


@pytest.mark.parametrize("grad", [False, True])
def test_lazily_negated_and_conjugated_inputs(grad):
    # a tensor with its negative bit set (torch._neg_view) reads as its values
    ref, ours = _pair("RNNCell", {})
    x = torch._neg_view(torch.randn(3, 5, generator=torch.Generator().manual_seed(4)))
    h = torch._neg_view(_state("RNNCell"))
    assert x.is_neg()
    with torch.set_grad_enabled(grad):
        torch.testing.assert_close(ours(x, h), ref(x.resolve_neg(), h.resolve_neg()))


def test_parameters_of_two_dtypes_refused_on_a_cell():
    _, ours = _pair("LSTMCell", {})
    ours.register_parameter("extra", nn.Parameter(torch.zeros(2, dtype=torch.float64)))
    with pytest.raises(TypeError, match="one dtype.*extra"):
        ours(torch.randn(3, 5))


def test_parameters_of_a_submodule_checked_too():
    # a cell with a submodule: every parameter named_parameters() lists is checked, as before
    _, ours = _pair("GRUCell", {})
    ours.extra = nn.Linear(2, 2).double()
    with pytest.raises(TypeError, match="one dtype"):
        ours(torch.randn(3, 5))


def test_weights_moved_off_the_cpu_named():
    _, ours = _pair("LSTMCell", {})
    ours.weight_hh = nn.Parameter(ours.weight_hh.detach().to("meta"))
    with pytest.raises(ValueError, match="CPU only.*weight_hh.*meta"):
        ours(torch.randn(3, 5))


def test_replaced_parameter_is_read_at_each_call():
    ref, ours = _pair("LSTMCell", {})
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(6))
    ours(x)  # (a first call)
    new = torch.randn_like(ref.weight_ih)
    ref.weight_ih = nn.Parameter(new.clone())
    ours.weight_ih = nn.Parameter(new.clone())
    with torch.no_grad():
        for p, q in zip(ref(x), ours(x)):
            torch.testing.assert_close(q, p)
        ours.weight_hh.mul_(0.5)  # in place
        ref.weight_hh.mul_(0.5)
        for p, q in zip(ref(x), ours(x)):
            torch.testing.assert_close(q, p)


def test_lstm_cell_ignores_a_nonlinearity_attribute_as_torch_does():
    ref, ours = _pair("LSTMCell", {})
    ref.nonlinearity = ours.nonlinearity = "relu"
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(7))
    for p, q in zip(ref(x), ours(x)):
        torch.testing.assert_close(q, p)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_cell_zoneout_changed_after_construction_checked(value):
    _, ours = _pair("GRUCell", {})
    ours.zoneout = value
    with pytest.raises(ValueError, match="zoneout"):
        ours(torch.randn(3, 5))
    ours.eval()  # the identity at eval: not read
    ours(torch.randn(3, 5))


# ------------------------------------------------------------------- edge sizes and pyrnn.jax --

def test_int8_refuses_rows_whose_sums_could_overflow():
    """int8 products summed in 32-bit integers: from 268402 columns a sum could wrap around (a flipped
    sign: -0.262 where the reference gives 0.262, no error)."""
    from pyrnn import functional as F, reference as R
    from pyrnn._validation import INT8_MAX_SUM
    assert INT8_MAX_SUM == 268401
    W_hh = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match="W_ih has 268402 columns.*bf16"):
        F.pack_weights("rnn", np.full((1, INT8_MAX_SUM + 1), 1e-6, np.float32), W_hh, precision="int8")
    with pytest.raises(ValueError, match="weight_ih has 268402 columns"):
        pyrnn.RNNCell(INT8_MAX_SUM + 1, 1).freeze(precision="int8")
    F.pack_weights("rnn", np.full((1, INT8_MAX_SUM + 1), 1e-6, np.float32), W_hh, precision="bf16")  # (bf16: fp32 sums)
    # at the bound: the kernels' sum is exact (equal to the reference's int8 arithmetic)
    x = np.ones((1, 1, INT8_MAX_SUM), np.float32)
    W_ih = np.full((1, INT8_MAX_SUM), 1e-6, np.float32)
    packed = F.pack_weights("rnn", W_ih, W_hh, precision="int8")
    y = F.forward("rnn", x, None, None, W_ih, W_hh, training=False, packed=packed)[0]
    want = R.rnn_forward(x, None, W_ih, W_hh, training=False, precision="int8")[0]
    np.testing.assert_allclose(y, want, rtol=1e-6)
    assert y.item() > 0.26


def test_int8_bound_in_quantize_dynamic():
    torch = pytest.importorskip("torch")
    import pyrnn.torch as pt
    with pytest.raises(ValueError, match="268402 columns"):
        pt.quantize_dynamic(pt.RNN(268402, 2))
    del torch


@pytest.mark.parametrize("family", ["gru", "lstm"])
def test_reference_layernorm_backward_of_an_empty_batch(family):
    from pyrnn import reference as R
    T, B, I, H = 2, 0, 2, 3
    G = 3 if family == "gru" else 4
    x = np.zeros((T, B, I), np.float32)
    W_ih, W_hh = np.ones((G * H, I), np.float32), np.ones((G * H, H), np.float32)
    b, g = np.zeros(G * H, np.float32), np.ones(G * H, np.float32)
    if family == "gru":
        cache = R.layernorm_gru_forward(x, None, W_ih, W_hh, b, b, g, g, training=True)[-1]
        out = R.layernorm_gru_backward(cache, np.zeros((T, B, H), np.float32))
    else:
        cache = R.layernorm_lstm_forward(x, None, None, W_ih, W_hh, b, b, g, g, np.ones(H, np.float32),
                                         np.zeros(H, np.float32), training=True)[-1]
        out = R.layernorm_lstm_backward(cache, np.zeros((T, B, H), np.float32))
    assert out[0].shape == (T, B, I) and out[2 if family == "gru" else 3].shape == (G * H, I)
    assert not out[2 if family == "gru" else 3].any()


def test_residual_sized_at_a_lower_isa_level_runs_there(monkeypatch):
    """A block sized where the graph was traced (jax.export, torch.export) at a lower level: the forward
    runs at the highest level it fits (it was refused: "residual too small"), and backward reads it."""
    from pyrnn import functional as F
    from pyrnn import _core
    if len(_core.isa_supported()) < 2:
        pytest.skip("one ISA level here")
    rng = np.random.default_rng(0)
    T, B, I, H = 3, 2, 4, 17  # (H=17: lanes pad it differently at each level)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    W_ih = rng.standard_normal((4 * H, I)).astype(np.float32)
    W_hh = rng.standard_normal((4 * H, H)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    args = (x, None, None, W_ih, W_hh)
    monkeypatch.setenv("PYRNN_ISA", "baseline")
    small = F.residual_nbytes("lstm", *args)
    y0, _, _, ws0 = F.forward("lstm", *args, training=True)
    g0 = F.backward(ws0, dy, None, None)
    monkeypatch.delenv("PYRNN_ISA")
    assert F.residual_nbytes("lstm", *args) > small
    block = np.zeros(small, np.uint8)
    y, _, _, ws = F.forward("lstm", *args, training=True, residual=block)
    g = F.backward(ws, dy, None, None)
    np.testing.assert_array_equal(y, y0)  # (it ran at baseline)
    for k in ("x", "W_ih", "W_hh"):
        np.testing.assert_array_equal(g[k], g0[k])
    with pytest.raises(ValueError, match="residual: too small"):
        F.forward("lstm", *args, training=True, residual=np.zeros(small - 64, np.uint8))


def test_cell_option_of_another_type_refused_at_every_call():
    torch = pytest.importorskip("torch")
    import pyrnn.torch as pt
    ok, bad = pt.GRUCell(3, 4), pt.GRUCell(3, 4)
    ok(torch.randn(2, 3))  # (a call with reset_after=True first)
    bad.reset_after = 1.0
    for _ in range(2):
        with pytest.raises(TypeError, match="reset_after must be True or False"):
            bad(torch.randn(2, 3))


jax = pytest.importorskip("jax")


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_jax_vmap_over_zero_elements_with_batched_weights(family):
    import jax.numpy as jnp
    import pyrnn.jax as rj
    V, T, B, I, H = 0, 4, 3, 2, 5
    G = 4 if family == "lstm" else 3
    fn = getattr(rj, family)
    call = (lambda x, a, b: fn(x, None, None, a, b)) if family == "lstm" else (lambda x, a, b: fn(x, None, a, b))
    for f in (jax.vmap(call), jax.jit(jax.vmap(call))):
        out = f(jnp.zeros((V, T, B, I)), jnp.zeros((V, G * H, I)), jnp.zeros((V, G * H, H)))
        assert [o.shape for o in out] == [(0, T, B, H)] + [(0, B, H)] * (len(out) - 1)


def test_jax_gradient_under_explicit_sharding():
    """jax.make_mesh's Explicit axes (JAX 0.10): a custom_vjp's gradient must carry its primal's sharding
    (it raised JAX's type error naming neither pyrnn nor the cause), and outputs are sharded as x is."""
    if not hasattr(jax, "set_mesh") or not hasattr(jax.sharding, "reshard"):
        pytest.skip("this JAX has no explicit sharding")
    code = """
        import os; os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        import jax, jax.numpy as jnp, numpy as np, pyrnn.jax as rj
        from jax.sharding import PartitionSpec as P
        T, B, I, H = 4, 4, 3, 5
        x = jnp.asarray(np.random.default_rng(0).standard_normal((T, B, I)), jnp.float32)
        W_ih, W_hh = jnp.full((4 * H, I), .1), jnp.full((4 * H, H), .1)
        loss = lambda W, x: jnp.sum(rj.lstm(x, None, None, W, W_hh)[0] ** 2)
        want = jax.grad(loss, argnums=(0, 1))(W_ih, x)
        with jax.set_mesh(jax.make_mesh((2,), ("d",))):
            xs = jax.device_put(x, P(None, "d"))
            y = jax.jit(lambda x: rj.lstm(x, None, None, W_ih, W_hh)[0])(xs)
            assert str(jax.typeof(y)) == "float32[4,4@d,5]", jax.typeof(y)
            got = jax.jit(jax.grad(loss, argnums=(0, 1)))(W_ih, xs)
            assert str(jax.typeof(got[1])) == "float32[4,4@d,3]", jax.typeof(got[1])
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)
        print("ok")
    """
    r = _run_script(code, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.returncode, r.stderr[-3000:])
