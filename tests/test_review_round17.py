"""The seventeenth session: pyrnn.torch cells' training step (a lean path into the kernels) and what
that session's reviews found, each pinned by the behaviour a user of torch would expect."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import pyrnn.torch as pt  # noqa: E402

I, H, B = 5, 7, 3

CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {"nonlinearity": "tanh"}),
         ("RNNCell", {"nonlinearity": "relu"})]


def _pair(name, kw, dtype, bias=True):
    torch.manual_seed(0)
    ref = getattr(nn, name)(I, H, bias=bias, dtype=dtype, **kw)
    ours = getattr(pt, name)(I, H, bias=bias, dtype=dtype, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _run(cell, x, state, lstm, use_c=True):
    out = cell(x, state)
    if lstm:
        h, c = out
        return (h * torch.arange(1.0, H + 1, dtype=h.dtype)).sum() + (c.square().sum() if use_c else 0)
    return (out * torch.arange(1.0, H + 1, dtype=out.dtype)).sum()


@pytest.mark.parametrize("name, kw", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("given", ["state", "none", "unbatched"])
def test_cell_training_step_matches_torch_nn(name, kw, dtype, bias, given):
    ref, ours = _pair(name, kw, dtype, bias)
    lstm = name == "LSTMCell"
    results = []
    for cell in (ref, ours):
        g = torch.Generator().manual_seed(1)
        shape = (I,) if given == "unbatched" else (B, I)
        x = torch.randn(*shape, generator=g, dtype=dtype, requires_grad=True)
        hshape = shape[:-1] + (H,)
        h = torch.randn(*hshape, generator=g, dtype=dtype, requires_grad=True)
        c = torch.randn(*hshape, generator=g, dtype=dtype, requires_grad=True)
        state = None if given == "none" else ((h, c) if lstm else h)
        _run(cell, x, state, lstm).backward()
        grads = [x.grad] + ([] if given == "none" else [h.grad] + ([c.grad] if lstm else []))
        results.append(grads + [p.grad for p in cell.parameters()])
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, **tol)


def test_cell_training_step_gradients_only_where_asked():
    ref, ours = _pair("LSTMCell", {}, torch.float64)
    for p in ours.parameters():
        p.requires_grad_(False)
    h = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    c = torch.zeros(B, H, dtype=torch.float64)
    x = torch.randn(B, I, dtype=torch.float64)
    h1, c1 = ours(x, (h, c))
    h1.sum().backward()  # c1 unused: its gradient arrives as None
    assert all(p.grad is None for p in ours.parameters())
    h_ref = h.detach().clone().requires_grad_(True)
    ref(x, (h_ref, c))[0].sum().backward()
    torch.testing.assert_close(h.grad, h_ref.grad)


def test_cell_training_step_outputs_are_free_to_edit_in_place():
    _, ours = _pair("GRUCell", {}, torch.float64)
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    h = ours(x)
    expected = torch.autograd.grad(ours(x).square().sum(), x)[0]
    h2 = h * 1.0  # (h itself feeds h.square() below: edit a copy of it, as autograd requires)
    h2.add_(1.0)
    (got,) = torch.autograd.grad(h.square().sum() + 0 * h2.sum(), x)
    torch.testing.assert_close(got, expected)


def test_cell_training_step_refuses_an_input_edited_before_backward():
    _, ours = _pair("LSTMCell", {}, torch.float32)
    x = torch.randn(B, I, requires_grad=True)
    xx = x * 2
    h, c = ours(xx)
    with torch.no_grad():
        xx.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (h.sum() + c.sum()).backward()


def test_cell_training_step_under_saved_tensor_hooks_that_copy():
    """Under hooks that copy the saved tensors, an input edited after forward is legal and backward
    uses the saved values (the step runs its forward again on them)."""
    _, ours = _pair("LSTMCell", {}, torch.float64)
    x = torch.randn(B, I, dtype=torch.float64)

    def grads(edit):
        ours.zero_grad()
        xx = x.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
            h, c = ours(xx)
        if edit:
            with torch.no_grad():
                xx.mul_(100)
                ours.weight_hh.mul_(3)
        (h.square().sum() + c.sum()).backward()
        if edit:
            with torch.no_grad():
                ours.weight_hh.div_(3)
        return [xx.grad.clone()] + [p.grad.clone() for p in ours.parameters()]

    for a, b in zip(grads(False), grads(True)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, kw", CELLS[:3])
def test_cell_training_step_double_backward_raises(name, kw):
    _, ours = _pair(name, kw, torch.float64)
    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    out = ours(x)
    h = out[0] if isinstance(out, tuple) else out
    (gx,) = torch.autograd.grad(h.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        gx.sum().backward()


@pytest.mark.parametrize("which, shape", [("weight_hh", (4 * H, H + 1)), ("weight_ih", (4 * H - 1, I)),
                                          ("bias_ih", (4 * H + 2,))])
def test_cell_training_step_with_a_misshapen_weight_raises_valueerror(which, shape):
    _, ours = _pair("LSTMCell", {}, torch.float32)
    setattr(ours, which, nn.Parameter(torch.zeros(shape)))
    with pytest.raises(ValueError):
        ours(torch.randn(B, I))
    with torch.no_grad(), pytest.raises(ValueError):
        ours(torch.randn(B, I))


def test_cell_training_step_with_noncontiguous_weights_and_inputs():
    ref, ours = _pair("LSTMCell", {}, torch.float64)
    with torch.no_grad():  # the same values, stored transposed
        for m in (ours,):
            m.weight_hh = nn.Parameter(m.weight_hh.detach().t().contiguous().t())
    x = torch.randn(B, 2 * I, dtype=torch.float64)[:, ::2].requires_grad_(True)
    h = torch.randn(H, B, dtype=torch.float64).t()
    c = torch.randn(H, B, dtype=torch.float64).t()
    got = torch.autograd.grad(_run(ours, x, (h, c), True), [x, ours.weight_hh])
    want = torch.autograd.grad(_run(ref, x, (h, c), True), [x, ref.weight_hh])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert np.isfinite(got[0].numpy()).all()


# ------------------------------------------- review: bad inputs of the less used APIs (helper)

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import pyrnn  # noqa: E402
from pyrnn import functional as F  # noqa: E402
from pyrnn import reservoir  # noqa: E402


def test_environment_updates_in_another_thread_do_not_crash_kernel_calls():
    """The kernels read PYRNN_ISA with getenv while the GIL was released; os.environ updates in another
    thread move the environment array: a segfault within a second (rc -11)."""
    code = textwrap.dedent("""
        import os, threading, time, numpy as np, pyrnn
        m = pyrnn.LSTM(4, 8).eval(); x = np.zeros((1, 1, 4), np.float32)
        c = pyrnn.LSTMCell(4, 8); xc = np.zeros((1, 4), np.float32)
        stop = False
        def worker():
            while not stop:
                m(x); c(xc)
        t = threading.Thread(target=worker); t.start()
        t0, i = time.time(), 0
        while time.time() - t0 < 3:
            os.environ[f"PYRNN_TEST_ENV_{i}"] = "1"; i += 1
            if i % 2000 == 0:
                for k in [k for k in os.environ if k.startswith("PYRNN_TEST_ENV_")]:
                    del os.environ[k]
        stop = True; t.join()
        print("ok", i)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYRNN_ISA"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.startswith("ok")


def test_pyrnn_isa_is_still_read_per_call(monkeypatch):
    x = np.zeros((2, 1, 3), np.float32)
    m = pyrnn.GRU(3, 4).eval()
    monkeypatch.setenv("PYRNN_ISA", "no-such-level")
    with pytest.raises(ValueError, match="PYRNN_ISA"):
        m(x)
    monkeypatch.setenv("PYRNN_ISA", "baseline")
    m(x)


@pytest.mark.parametrize("precision", [None, "int8", "bf16"])
def test_frozen_torch_module_refuses_backward_instead_of_dropping_the_gradient(precision):
    """A frozen module's output left the input's gradient out without a word: loss = f(x)[0].sum() +
    (x**2).sum() gave x.grad = 2x."""
    torch.manual_seed(0)
    for m, x in ((pt.LSTM(I, H).eval(), torch.randn(4, B, I)), (pt.GRUCell(I, H).eval(), torch.randn(B, I))):
        f = m.freeze(precision)
        x.requires_grad_(True)
        out = f(x)
        y = out[0] if isinstance(out, tuple) else out
        assert y.requires_grad
        with pytest.raises(RuntimeError, match="frozen.*no backward"):
            (y.sum() + x.square().sum()).backward()
        with torch.no_grad():
            ref = f(x)
        torch.testing.assert_close(y.detach(), ref[0] if isinstance(ref, tuple) else ref)
        assert not f(x.detach())[0].requires_grad  # nothing to guard
    h = torch.zeros(B, H, requires_grad=True)
    f = pt.LSTMCell(I, H).freeze()
    h1, c1 = f(torch.randn(B, I), (h, torch.zeros(B, H)))
    with pytest.raises(RuntimeError, match="no backward"):
        c1.sum().backward()


def test_frozen_torch_packed_sequence_output_is_guarded_too():
    f = pt.GRU(I, H).freeze()
    x = torch.randn(5, 2, I, requires_grad=True)
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3]))
    y, h = f(packed)
    assert isinstance(y, nn.utils.rnn.PackedSequence) and y.data.requires_grad and h.requires_grad
    with pytest.raises(RuntimeError, match="no backward"):
        y.data.sum().backward()


def test_masked_arrays_are_refused_wherever_their_mask_would_be_dropped():
    ma = np.ma.masked_array
    layer = pyrnn.LSTM(3, 4)
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(TypeError, match="lengths is a masked array"):
        layer(x, lengths=ma([5, 3], mask=[0, 1]))
    with pytest.raises(TypeError, match="lengths is a masked array"):
        F.lstm_forward(x, None, None, layer.weight_ih_l0, layer.weight_hh_l0, lengths=ma([5, 3], mask=[0, 1]))
    w = ma(np.zeros((16, 4), np.float32), mask=np.ones((16, 4)))
    with pytest.raises(TypeError, match="weight_hh_l0 is a masked array"):
        layer.load_state_dict({**layer.state_dict(), "weight_hh_l0": w})
    with pytest.raises(TypeError, match="masked array"):
        layer.weight_hh_l0 = w
    with pytest.raises(TypeError, match="masked array"):
        layer.grads["weight_hh_l0"] = w
    frozen = layer.freeze()
    with pytest.raises(TypeError, match="masked array"):
        frozen.with_weights({**dict(layer.named_parameters()), "weight_hh_l0": w})
    cell = pyrnn.LSTMCell(3, 4).freeze()
    with pytest.raises(TypeError, match="masked array"):
        cell.with_weights({"weight_ih": ma(np.zeros((16, 3), np.float32)), "weight_hh": np.zeros((16, 4), np.float32),
                           "bias_ih": np.zeros(16, np.float32), "bias_hh": np.zeros(16, np.float32)})
    esn = reservoir.ESN(1, 20, seed=0)
    with pytest.raises(TypeError, match="masked array"):
        esn.states(ma(np.zeros((10, 1))))


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_reduced_precision_refuses_weights_it_cannot_represent(precision):
    layer = pyrnn.LSTM(3, 4)
    layer.weight_hh_l0[1, 2] = np.inf
    with pytest.raises(ValueError, match="W_hh holds NaN or infinite"):
        layer.freeze(precision)
    layer.freeze()  # float32 keeps them, as torch.nn does
    cell = pyrnn.GRUCell(3, 4)
    cell.weight_ih[0, 0] = np.nan
    with pytest.raises(ValueError, match="weight_ih holds NaN"):
        cell.freeze(precision)
    if precision == "bf16":
        layer = pyrnn.GRU(3, 4)
        layer.weight_ih_l0[0, 0] = 3.4e38  # finite in float32, inf in bfloat16
        with pytest.raises(ValueError, match="beyond bfloat16's range"):
            layer.freeze("bf16")
        layer.freeze("int8")


def test_frozen_layer_with_training_set_directly_raises_like_train():
    f = pyrnn.LSTM(3, 4, num_layers=2).freeze()
    with pytest.raises(RuntimeError, match="inference only"):
        f.train()
    f.training = True
    with pytest.raises(RuntimeError, match="frozen layer is for inference only"):
        f(np.zeros((2, 1, 3), np.float32))


@pytest.mark.parametrize("make, attr, value", [
    (lambda: pyrnn.LSTM(3, 8, proj_size=4), "hidden_size", 9),
    (lambda: pyrnn.LSTM(3, 8, proj_size=4), "proj_size", 3),
    (lambda: pyrnn.GRU(3, 8), "input_size", 4),
    (lambda: pyrnn.GRU(3, 8), "num_layers", 2),
    (lambda: pyrnn.RNN(3, 8), "bidirectional", True),
    (lambda: pyrnn.RNN(3, 8), "bias", False),
    (lambda: pyrnn.LayerNormLSTM(3, 8), "hidden_size", 4),
    (lambda: pyrnn.LSTMCell(3, 8), "hidden_size", 4),
    (lambda: pyrnn.GRUCell(3, 8), "input_size", 2)])
def test_sizes_fixed_at_construction_refuse_another_value(make, attr, value):
    """The forward ran with the old size, then backward refused the gradient of its own output."""
    m = make()
    with pytest.raises(ValueError, match=f"{attr} is fixed at construction"):
        setattr(m, attr, value)
    setattr(m, attr, getattr(m, attr))  # the same value is fine
    m.batch_first = True if hasattr(m, "batch_first") else None  # (a layout, not a size: free to change)


# ------------------------------------------- review: pyrnn.torch configurations (helper)

def _held_nodes(t):
    """The autograd nodes under t that hold a pyrnn workspace."""
    out, seen, todo = [], set(), [t.grad_fn]
    while todo:
        n = todo.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        if hasattr(n, "held"):
            out.append(n)
        todo.extend(f for f, _ in n.next_functions)
    return out


@pytest.mark.parametrize("make, x", [
    (lambda: pt.LSTM(I, H, num_layers=2, bidirectional=True), torch.randn(6, B, I)),
    (lambda: pt.GRU(I, H), torch.randn(6, B, I)),
    (lambda: pt.LayerNormLSTM(I, H, num_layers=2), torch.randn(6, B, I)),
    (lambda: pt.LSTMCell(I, H), torch.randn(B, I)),
    (lambda: pt.RNNCell(I, H, nonlinearity="relu"), torch.randn(B, I))])
def test_workspace_is_freed_by_backward_while_outputs_live(make, x):
    """The C++ workspace (the activations) stayed until the graph node died, so outputs kept after
    backward (logits gathered for epoch metrics) kept every layer's: 1725 MiB against torch.nn's 89
    in the reviewer's 20 steps."""
    m = make()
    out = m(x)
    y = out[0] if isinstance(out, tuple) else out
    nodes = _held_nodes(y)
    assert nodes and all(n.held.ws is not None for n in nodes)
    y.square().sum().backward(retain_graph=True)  # a retained graph keeps them for the next backward
    first = [p.grad.clone() for p in m.parameters()]
    assert all(n.held.ws is not None for n in nodes)
    y.square().sum().backward()
    for p, g in zip(m.parameters(), first):
        torch.testing.assert_close(p.grad, 2 * g)
    assert all(n.held.ws is None for n in nodes)  # freed with the saved tensors, y still alive
    with pytest.raises(RuntimeError, match="second time|freed"):
        y.sum().backward()


def test_workspace_under_saved_tensor_hooks_stays_for_backward():
    m = pt.LSTM(I, H, dtype=torch.float64)
    x = torch.randn(5, B, I, dtype=torch.float64)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
        y, _ = m(x)
    y.sum().backward()
    ref = nn.LSTM(I, H, dtype=torch.float64)
    ref.load_state_dict(m.state_dict())
    ref(x)[0].sum().backward()
    for a, b in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_skip_init_builds_the_cells(name):
    c = nn.utils.skip_init(getattr(pt, name), I, H)
    assert isinstance(c, getattr(pt, name)) and c.weight_hh.shape[1] == H
    c = nn.utils.skip_init(pt.LSTMCell, I, H, bias=False, dtype=torch.float64, zoneout=0.2)
    assert c.bias_ih is None and c.weight_ih.dtype == torch.float64 and c.zoneout == 0.2 and c.zoneout_c == 0.2


def test_jax_calls_read_pyrnn_isa_when_traced(monkeypatch):
    jax = pytest.importorskip("jax")
    import pyrnn.jax as pj
    jnp = jax.numpy
    x = jnp.zeros((3, 2, 4), jnp.float32)
    W_ih, W_hh = jnp.zeros((9, 4), jnp.float32), jnp.zeros((9, 3), jnp.float32)
    monkeypatch.setenv("PYRNN_ISA", "no-such-level")
    with pytest.raises(ValueError, match="PYRNN_ISA"):
        pj.gru(x, None, W_ih, W_hh)
    monkeypatch.setenv("PYRNN_ISA", "baseline")
    y, h = jax.jit(lambda x: pj.gru(x, None, W_ih, W_hh))(x)
    assert y.shape == (3, 2, 3) and not np.asarray(y).any()


# ------------------------------------------- the second reader's findings

def test_hooks_registered_on_saved_tensors_after_forward_rerun_the_forward():
    """grad_fn._raw_saved_tensors[i].register_hooks with a pack hook that copies dropped the token that
    holds the workspace: backward must run the forward again, not fail."""
    for make, x in ((lambda: pt.LSTMCell(I, H, dtype=torch.float64), torch.randn(B, I, dtype=torch.float64)),
                    (lambda: pt.GRU(I, H, dtype=torch.float64), torch.randn(4, B, I, dtype=torch.float64)),
                    (lambda: pt.LayerNormLSTM(I, H, dtype=torch.float64), torch.randn(4, B, I, dtype=torch.float64))):
        m = make()
        grads = []
        for hooked in (False, True):
            m.zero_grad()
            out = m(x)
            y = out[0] if isinstance(out, tuple) else out
            if hooked:
                for node in _held_nodes(y):
                    for s in node._raw_saved_tensors:
                        try:
                            s.register_hooks(lambda t: t.clone(), lambda t: t)
                        except RuntimeError:  # (None slots)
                            pass
                import gc
                gc.collect()
            y.square().sum().backward()
            grads.append([p.grad.clone() for p in m.parameters()])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_training_calls_allocate_nothing_on_the_default_device():
    m = pt.LSTMCell(I, H)
    x = torch.randn(B, I)
    with torch.device("meta"):  # (the default device of new tensors; the module and inputs stay on the CPU)
        h, c = m(x)
    (h.sum() + c.sum()).backward()
    assert m.weight_hh.grad is not None and m.weight_hh.grad.device.type == "cpu"


def test_in_place_ops_on_frozen_outputs_stay_allowed():
    f = pt.GRU(I, H).freeze()
    x = torch.randn(4, B, I, requires_grad=True)
    y, h = f(x)
    y.add_(1.0)
    y[0] = 0
    nn.ReLU(inplace=True)(h)  # (no error here: the output is not a view made inside a Function)
    assert y.requires_grad and not y._is_view()
    with pytest.raises(RuntimeError, match="no backward"):
        y.sum().backward()


def test_a_cells_misshapen_weight_is_named_in_every_mode():
    for grad in (True, False):
        c = pt.LSTMCell(I, H)
        c.weight_hh = nn.Parameter(torch.zeros(4 * H, H + 1))
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match="weight_hh has shape"):
            c(torch.randn(B, I))


def test_a_fixed_size_set_to_an_equal_value_keeps_its_type():
    m = pyrnn.LSTM(3, 4)
    m.hidden_size = 4.0
    m.num_layers = np.int64(1)
    assert type(m.hidden_size) is int and type(m.num_layers) is int and repr(m).startswith("LSTM(3, 4")


def test_bf16_refuses_only_weights_that_would_round_to_infinity():
    layer = pyrnn.GRU(3, 4)
    layer.weight_hh_l0[0, 0] = 3.39e38  # above bf16's largest finite value, rounds down to it
    layer.freeze("bf16")
    layer.weight_hh_l0[0, 0] = 3.3962e38  # rounds to inf
    with pytest.raises(ValueError, match="beyond bfloat16"):
        layer.freeze("bf16")
