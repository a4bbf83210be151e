"""pyrnn.torch under torch.compile, torch.export and torch.func (the pyrnn::rnn_layer operator).

torch.library.opcheck of both operators, fullgraph compilation of training
steps (gradients equal to eager, one C++ forward per layer and direction: the
backward reads the forward's residual), an export round trip, torch.func.grad
over functional_call, vmap (batch folding, per-sample gradients, ensembles) and
the double-backward error. Tiny shapes: each test takes a few seconds at most.
"""

import pytest

torch = pytest.importorskip("torch")

import pyrnn.torch as pt  # noqa: E402
from pyrnn import _core  # noqa: E402
from pyrnn import functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call, grad, stack_module_state, vmap  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

T, B, I, H = 5, 3, 4, 6
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
OP_CELLS = {  # cell, nonlinearity, reset_after, proj_size
    "lstm": ("lstm", "tanh", True, 0),
    "lstm_proj": ("lstm", "tanh", True, 2),
    "gru": ("gru", "tanh", True, 0),
    "gru_reset_before": ("gru", "tanh", False, 0),
    "rnn_tanh": ("rnn", "tanh", True, 0),
    "rnn_relu": ("rnn", "relu", True, 0),
}
MODULES = {
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", {"proj_size": 2}),
    "gru": ("GRU", {}),
    "gru_reset_before": ("GRU", {"reset_after": False}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _op_args(mode, variant, dtype, grad=True, need_residual=True):
    cell, nonlinearity, reset_after, proj = OP_CELLS[mode]
    g = torch.Generator().manual_seed(0)
    G, Ho = GATES[cell], proj or H

    def t(*shape, scale=0.5):
        return (torch.randn(shape, generator=g, dtype=dtype) * scale).requires_grad_(grad)

    x, W_ih, W_hh = t(T, B, I), t(G * H, I), t(G * H, Ho)
    h0 = None if variant == "bare" else t(B, Ho)
    c0 = t(B, H) if cell == "lstm" and variant != "bare" else None
    b_ih, b_hh = (None, None) if variant == "bare" else (t(G * H), t(G * H))
    W_hr = t(Ho, H) if proj else None
    lengths = torch.tensor([5, 2, 4]) if variant == "masked" else None
    h_mask = (torch.rand(B, Ho, generator=g, dtype=dtype) > 0.3).to(dtype) / 0.7 if variant == "masked" else None
    return (x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths, h_mask, cell, nonlinearity, reset_after, False,
            need_residual)


def _assert_all_close(actual, expected, dtype=torch.float64):
    actual, expected = torch.utils._pytree.tree_leaves(actual), torch.utils._pytree.tree_leaves(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **TOL[dtype])


# -------------------------------------------------------------- opcheck --

OPCHECKS = [(m, v, torch.float64, True) for m in OP_CELLS for v in ("states", "masked", "bare")] + [
    (m, "masked", torch.float32, True) for m in OP_CELLS] + [(m, "states", torch.float64, False) for m in OP_CELLS]


@pytest.mark.parametrize("mode,variant,dtype,need_residual", OPCHECKS,
                         ids=[f"{m}-{v}-{str(d)[6:]}{'' if r else '-no_residual'}" for m, v, d, r in OPCHECKS])
def test_opcheck_rnn_layer(mode, variant, dtype, need_residual):
    args = _op_args(mode, variant, dtype, need_residual=need_residual)
    torch.library.opcheck(torch.ops.pyrnn.rnn_layer.default, args)


@pytest.mark.parametrize("mode", ["lstm_proj", "gru_reset_before", "rnn_tanh"])
def test_opcheck_rnn_layer_backward(mode):
    args = _op_args(mode, "masked", torch.float64, grad=False)
    y, h_n, c_n, residual = torch.ops.pyrnn.rnn_layer(*args)
    g = torch.Generator().manual_seed(5)
    grads = (torch.randn(y.shape, generator=g, dtype=y.dtype), torch.randn(h_n.shape, generator=g, dtype=y.dtype),
             torch.randn(c_n.shape, generator=g, dtype=y.dtype) if args[10] == "lstm" else None)
    opts = args[10:14]
    torch.library.opcheck(torch.ops.pyrnn.rnn_layer_backward.default, args[:10] + (y, residual) + grads + opts)
    empty = torch.empty((0,), dtype=torch.uint8)  # need_residual=False: the backward reruns the forward
    torch.library.opcheck(torch.ops.pyrnn.rnn_layer_backward.default, args[:10] + (y, empty) + grads + opts)
    bare = _op_args(mode, "bare", torch.float64, grad=False)
    y, _, _, residual = torch.ops.pyrnn.rnn_layer(*bare)
    torch.library.opcheck(torch.ops.pyrnn.rnn_layer_backward.default,
                          bare[:10] + (y, residual, None, grads[1], None) + opts)


@pytest.mark.parametrize("mode", list(OP_CELLS))
def test_rnn_layer_matches_kernels_and_gradcheck(mode):
    args = _op_args(mode, "masked", torch.float64)
    tensors, rest = args[:8], args[8:]
    cell = args[10]
    y, h_n, c_n, residual = torch.ops.pyrnn.rnn_layer(*args)
    ey, eh, ec, _ = F.forward(cell, *(None if t is None else t.detach().numpy() for t in tensors[:7]),
                              nonlinearity=args[11], reset_after=args[12], W_hr=None if tensors[7] is None else
                              tensors[7].detach().numpy(), h_mask=args[9].numpy(), lengths=args[8].numpy(),
                              training=False)
    assert torch.equal(y, torch.from_numpy(ey)) and torch.equal(h_n, torch.from_numpy(eh))
    if cell == "lstm":
        assert torch.equal(c_n, torch.from_numpy(ec))
    else:
        assert c_n.shape == (0,)
    arrays = [None if t is None else t.detach().numpy() for t in tensors]
    assert residual.dtype == torch.uint8 and residual.shape == (F.residual_nbytes(
        cell, *arrays[:7], nonlinearity=args[11], reset_after=args[12], W_hr=arrays[7], h_mask=args[9].numpy(),
        lengths=args[8].numpy()),)
    assert torch.ops.pyrnn.rnn_layer(*args[:-1], False)[3].shape == (0,)
    given = [t for t in tensors if t is not None]

    def f(*ts):
        it = iter(ts)
        out = torch.ops.pyrnn.rnn_layer(*(None if t is None else next(it) for t in tensors), *rest)
        return out[:3] if cell == "lstm" else out[:2]

    assert torch.autograd.gradcheck(f, tuple(given))


@pytest.mark.parametrize("mode", ["gru", "lstm_proj"])
def test_outputs_are_fresh_tensors(mode):
    args = _op_args(mode, "states", torch.float64, grad=False)
    fwd = torch.ops.pyrnn.rnn_layer(*args)
    outs = fwd + torch.ops.pyrnn.rnn_layer_backward(*args[:10], fwd[0], fwd[3], None, fwd[1], None, *args[10:14])
    ptrs = [t.untyped_storage().data_ptr() for t in outs if t.numel()]
    inputs = {t.untyped_storage().data_ptr() for t in args[:10] if t is not None}
    assert len(set(ptrs)) == len(ptrs) and not inputs & set(ptrs)


def test_backward_reads_the_residual_and_checks_it():
    """The backward from the residual gives the eager gradients bitwise; a residual
    that does not match the call raises; an empty one (need_residual=False) reruns the forward."""
    args = _op_args("lstm", "masked", torch.float64, grad=False)
    y, h_n, c_n, residual = torch.ops.pyrnn.rnn_layer(*args)
    dy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
    opts = args[10:14]
    got = torch.ops.pyrnn.rnn_layer_backward(*args[:10], y, residual, dy, None, None, *opts)
    rerun = torch.ops.pyrnn.rnn_layer_backward(*args[:10], y, torch.empty(0, dtype=torch.uint8), dy, None, None,
                                               *opts)
    arrays = [None if t is None else t.numpy() for t in args[:8]]
    *_, ws = F.forward("lstm", *arrays[:7], W_hr=arrays[7], h_mask=args[9].numpy(), lengths=args[8].numpy())
    eager = F.backward(ws, dy.numpy())
    for name, a, b in zip(("x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh"), got, rerun):
        assert torch.equal(a, b) and torch.equal(a, torch.from_numpy(eager[name]))
    other = _op_args("lstm", "states", torch.float64, grad=False)  # no lengths or h_mask: another header
    with pytest.raises(ValueError, match="residual"):
        torch.ops.pyrnn.rnn_layer_backward(*other[:10], y, residual, dy, None, None, *opts)


# ---------------------------------------------------------- torch.compile --

class _Model(nn.Module):
    def __init__(self, cls, **kw):
        super().__init__()
        self.rnn = getattr(pt, cls)(I, H, dtype=torch.float64, **kw)
        width = (kw.get("proj_size") or H) * (2 if kw.get("bidirectional") else 1)
        self.head = nn.Linear(width, 2, dtype=torch.float64)

    def forward(self, x, hx=None):
        y, state = self.rnn(x, hx)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(y).square().mean() + h_n.square().mean()


def _train_step(model, fn, x, hx=None):
    model.zero_grad(set_to_none=True)
    loss = fn(x, hx)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode", list(MODULES))
def test_compile_fullgraph_training_step_matches_eager(mode):
    cls, opts = MODULES[mode]
    torch.manual_seed(0)
    model = _Model(cls, num_layers=2, bidirectional=True, **opts)
    x = torch.randn(T, B, I, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for _ in range(2):  # the second call runs the cached graph
        _assert_all_close(_train_step(model, compiled, x), _train_step(model, model, x))


def _count_kernel_calls(monkeypatch):
    """{"forward": n, "backward": n}: calls of the C++ sequence kernels (every path goes through these)."""
    counts = {"forward": 0, "backward": 0}
    for kind in counts:
        real = getattr(_core, f"sequence_{kind}")

        def spy(*a, _real=real, _kind=kind, **kw):
            counts[_kind] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(_core, f"sequence_{kind}", spy)
    return counts


@pytest.mark.parametrize("mode", ["lstm_proj", "gru"])
def test_traced_training_step_runs_each_forward_once(monkeypatch, mode):
    """Compiled and torch.func training steps run one C++ forward per layer and direction, as
    eager does (the backward reads the forward's residual instead of recomputing it), and give
    eager's gradients exactly."""
    cls, opts = MODULES[mode]
    torch.manual_seed(0)
    model = _Model(cls, num_layers=2, bidirectional=True, **opts)
    x = torch.randn(T, B, I, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    _train_step(model, compiled, x)  # compiles (the fake kernels run no C++)
    counts = _count_kernel_calls(monkeypatch)
    expected = _train_step(model, model, x)
    assert counts == {"forward": 4, "backward": 4}  # eager: 2 layers x 2 directions
    counts.update(forward=0, backward=0)
    got = _train_step(model, compiled, x)
    assert counts == {"forward": 4, "backward": 4}
    for a, e in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(expected)):
        assert torch.equal(a, e)

    params = {n: p.detach() for n, p in model.named_parameters()}
    counts.update(forward=0, backward=0)
    grads = grad(lambda p: functional_call(model, p, (x,)))(params)
    assert counts == {"forward": 4, "backward": 4}
    for n, g in grads.items():
        assert torch.equal(g, expected[1][n])

    counts.update(forward=0, backward=0)
    with torch.no_grad():  # inference: no residual, the inference kernels, nothing saved
        _assert_all_close(compiled(x), model(x))
    assert counts == {"forward": 2 * 4, "backward": 0}


def _record_want_dx(monkeypatch):
    """The want_dx argument of every C++ sequence backward call, in order."""
    seen = []
    real = _core.sequence_backward

    def spy(*a, **kw):
        out = real(*a, **kw)
        seen.append(out[0] is not None)
        return out

    monkeypatch.setattr(_core, "sequence_backward", spy)
    return seen


@pytest.mark.parametrize("mode", ["lstm_proj", "gru", "rnn_relu"])
def test_compiled_training_skips_dx_of_data_input(monkeypatch, mode):
    """Compiled (and torch.func) training: the first layer's backward computes no dx when x is data,
    the second layer's does (its input is the first layer's output), as eager; gradients bitwise eager's."""
    cls, opts = MODULES[mode]
    torch.manual_seed(0)
    model = _Model(cls, num_layers=2, bidirectional=True, **opts)
    x = torch.randn(T, B, I, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    _train_step(model, compiled, x)  # compiles
    seen = _record_want_dx(monkeypatch)
    expected = _train_step(model, model, x)
    assert sorted(seen) == [False, False, True, True]  # eager: layer 0 both directions without dx
    seen.clear()
    got = _train_step(model, compiled, x)
    assert sorted(seen) == [False, False, True, True]
    for a, e in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(expected)):
        assert torch.equal(a, e)
    params = {n: p.detach() for n, p in model.named_parameters()}
    seen.clear()
    grads = grad(lambda p: functional_call(model, p, (x,)))(params)
    assert sorted(seen) == [False, False, True, True]
    for n, g in grads.items():
        assert torch.equal(g, expected[1][n])
    # x requiring a gradient: every backward computes dx, and x.grad is eager's
    xs, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    seen.clear()
    _train_step(model, compiled, xs)
    assert seen == [True] * 4
    _train_step(model, model, xe)
    assert torch.equal(xs.grad, xe.grad)


@pytest.mark.parametrize("mode", ["lstm", "gru_reset_before"])
def test_rnn_layer_backward_want_dx_false(mode):
    """want_dx=False: x's gradient an empty [0] tensor, every other gradient bitwise the one computed beside
    dx (from the residual and from a rerun); opcheck with it."""
    args = _op_args(mode, "masked", torch.float64, grad=False)
    y, h_n, c_n, residual = torch.ops.pyrnn.rnn_layer(*args)
    dy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
    opts = args[10:14]
    full = torch.ops.pyrnn.rnn_layer_backward(*args[:10], y, residual, dy, None, None, *opts)
    for res in (residual, torch.empty(0, dtype=torch.uint8)):
        part = torch.ops.pyrnn.rnn_layer_backward(*args[:10], y, res, dy, None, None, *opts, None, None, False)
        assert part[0].shape == (0,) and full[0].shape == args[0].shape
        for a, b in zip(part[1:], full[1:]):
            assert torch.equal(a, b)
    torch.library.opcheck(torch.ops.pyrnn.rnn_layer_backward.default,
                          args[:10] + (y, residual, dy, None, None) + opts + (None, None, False))


def test_compile_fullgraph_with_states_batch_first_and_input_grad():
    torch.manual_seed(0)
    model = _Model("LSTM", num_layers=2, proj_size=3, batch_first=True)
    x = torch.randn(B, T, I, dtype=torch.float64)
    hx = (torch.randn(2, B, 3, dtype=torch.float64), torch.randn(2, B, H, dtype=torch.float64))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")

    def step(fn):
        xs, hs = x.clone().requires_grad_(), tuple(h.clone().requires_grad_() for h in hx)
        loss, grads = _train_step(model, fn, xs, hs)
        return loss, grads, xs.grad, [h.grad for h in hs]

    _assert_all_close(step(compiled), step(model))


@pytest.mark.slow  # compiling C++ with inductor: ~20 s on 2 cores
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor's imports
def test_compile_fullgraph_inductor():
    torch.manual_seed(0)
    model = _Model("LSTM", num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True)
    _assert_all_close(_train_step(model, compiled, x), _train_step(model, model, x))


def test_compile_fullgraph_no_grad_unbatched_and_cells():
    torch.manual_seed(0)
    gru = pt.GRU(I, H, num_layers=2, dtype=torch.float64).eval()
    x = torch.randn(T, I, dtype=torch.float64)
    with torch.no_grad():
        _assert_all_close(torch.compile(gru, fullgraph=True, backend="aot_eager")(x), gru(x))
    cell = pt.LSTMCell(I, H, dtype=torch.float64)
    state = (torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64))

    def loop(x, state):
        for t in range(x.shape[0]):
            state = cell(x[t], state)
        return state[0].sum() + state[1].sum()

    xb = torch.randn(T, B, I, dtype=torch.float64)
    compiled = torch.compile(loop, fullgraph=True, backend="aot_eager")
    _assert_all_close(_train_step(cell, compiled, xb, state), _train_step(cell, loop, xb, state))


def test_compile_dropout_and_recurrent_dropout_use_torch_rng():
    torch.manual_seed(0)
    m = pt.GRU(I, H, num_layers=2, dropout=0.5, recurrent_dropout=0.3, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)
    expected = m(x)
    torch.manual_seed(1)
    _assert_all_close(compiled(x), expected)  # aot_eager draws the same masks as eager


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")  # dynamo's
def test_compile_packed_sequence_graph_breaks_but_matches():
    """pack_padded_sequence / pad_packed_sequence are skipped by dynamo: graph breaks, same results."""
    torch.manual_seed(0)
    m = pt.LSTM(I, H, bidirectional=True, dtype=torch.float64)
    x, lengths = torch.randn(T, B, I, dtype=torch.float64), torch.tensor([5, 2, 4])

    def f(x):
        return m(pack_padded_sequence(x, lengths, enforce_sorted=False))[1][0]

    with pytest.raises(torch._dynamo.exc.Unsupported):
        torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    torch._dynamo.reset()
    _assert_all_close(torch.compile(f, backend="aot_eager")(x), f(x))


def test_compile_leaves_torch_nn_rnns_alone():
    """Only pyrnn's modules are let through dynamo's RNN check; torch.nn.LSTM still graph-breaks."""
    assert not torch._dynamo.config.allow_rnn
    m = nn.LSTM(I, H)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="RNN, GRU, or LSTM"):
        torch.compile(m, fullgraph=True, backend="eager")(torch.randn(T, B, I))
    assert not torch._dynamo.config.allow_rnn


# ----------------------------------------------------------- torch.export --

def check_export_round_trip(m, op):
    """Exports the batch_first module ``m`` with dynamic batch and time, for inference and with gradients
    possible; checks the outputs (at other sizes too) and, through the second program, the input gradient
    against eager. ``op``: the operator expected once per layer and direction. Returns the second
    program's nodes of ``op``."""
    x = torch.randn(B, T, I, dtype=torch.float64)
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("time")},)
    with torch.no_grad():  # for inference: no workspace kept
        ep = torch.export.export(m, (x,), dynamic_shapes=dims)
    nodes = [n for n in ep.graph.nodes if n.target == op]
    assert len(nodes) == 4 and not any(n.args[-1] for n in nodes)
    x2 = torch.randn(2, 7, I, dtype=torch.float64)  # other batch and time sizes
    with torch.no_grad():
        _assert_all_close(ep.module()(x), m(x))
        _assert_all_close(ep.module()(x2), m(x2))
    # With gradients possible the workspace is kept and the backward reads it.
    ep = torch.export.export(m, (x,), dynamic_shapes=dims)
    nodes = [n for n in ep.graph.nodes if n.target == op]
    assert len(nodes) == 4 and all(n.args[-1] for n in nodes)

    def input_grad(fn):  # training through the exported program: the backward reads the residuals
        xs = x2.clone().requires_grad_()
        fn(xs)[0].square().sum().backward()
        return xs.grad

    _assert_all_close(input_grad(ep.module()), input_grad(m))
    return nodes


@pytest.mark.parametrize("mode", ["lstm_proj", "gru", "rnn_relu"])
def test_export_round_trip(mode):
    cls, opts = MODULES[mode]
    torch.manual_seed(0)
    m = getattr(pt, cls)(I, H, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64, **opts)
    nodes = check_export_round_trip(m, torch.ops.pyrnn.rnn_layer.default)
    if mode != "rnn_relu":  # the RNN's workspace is y itself: its residual is a fixed-size header
        # the residual's size is symbolic in batch and time
        assert all(isinstance(n.meta["val"][3].shape[0], torch.SymInt) for n in nodes)


# ------------------------------------------------------------- torch.func --

@pytest.mark.parametrize("mode", ["lstm_proj", "gru", "rnn_relu"])
def test_func_grad_over_functional_call_matches_autograd(mode):
    cls, opts = MODULES[mode]
    torch.manual_seed(0)
    m = getattr(pt, cls)(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, **opts)
    x = torch.randn(T, B, I, dtype=torch.float64)
    params = {n: p.detach() for n, p in m.named_parameters()}

    def loss(params, x):
        return functional_call(m, params, (x,))[0].square().sum()

    got_params, got_x = grad(loss, argnums=(0, 1))(params, x)
    xs = x.clone().requires_grad_()
    m.zero_grad()
    m(xs)[0].square().sum().backward()
    _assert_all_close(got_params, {n: p.grad for n, p in m.named_parameters()})
    _assert_all_close(got_x, xs.grad)


def test_compile_over_torch_func_grad():
    """torch.compile of a torch.func.grad over functional_call (the kernels run outside the graph)."""
    torch.manual_seed(0)
    m = pt.GRU(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    params = {n: p.detach() for n, p in m.named_parameters()}

    def loss(params, x):
        return functional_call(m, params, (x,))[0].square().sum()

    got = torch.compile(grad(loss), backend="aot_eager")(params, x)
    _assert_all_close(got, grad(loss)(params, x))


def test_vmap_folds_the_vmapped_dim_into_the_batch(monkeypatch):
    torch.manual_seed(0)
    m = pt.LSTM(I, H, num_layers=2, dtype=torch.float64)
    xs = torch.randn(4, T, B, I, dtype=torch.float64)
    h0 = (torch.randn(2, B, H, dtype=torch.float64), torch.randn(2, B, H, dtype=torch.float64))
    calls = []
    real = F.forward
    monkeypatch.setattr(F, "forward", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    with torch.no_grad():  # no residual needed
        ys, (hs, cs) = vmap(lambda x: m(x, h0), in_dims=1, out_dims=(2, 0))(xs.movedim(0, 1))  # vmap a middle dim
    assert calls == [(T, 4 * B, I), (T, 4 * B, H)]  # one kernel call per layer, the vmapped dim folded in
    calls.clear()
    # A gradient may follow: one call per sample, each keeping its own residual for the backward.
    ys_grad = vmap(lambda x: m(x, h0)[0])(xs)
    assert calls == [(T, B, I)] * 4 + [(T, B, H)] * 4
    ys_grad.square().sum().backward()
    assert len(calls) == 8  # the backward reads the residuals: no forward again
    monkeypatch.undo()
    got = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    sum(m(xs[i], h0)[0].square().sum() for i in range(4)).backward()
    _assert_all_close(got, {n: p.grad for n, p in m.named_parameters()})
    for i in range(4):
        y, (h, c) = m(xs[i], h0)
        _assert_all_close((ys[:, :, i], hs[i], cs[i], ys_grad[i]), (y, h, c, y))


def test_vmap_per_sample_grads_and_ensembles():
    torch.manual_seed(0)
    m = pt.GRU(I, H, bidirectional=True, dtype=torch.float64)
    params = {n: p.detach() for n, p in m.named_parameters()}
    xs = torch.randn(3, T, B, I, dtype=torch.float64)

    def loss(params, x):
        return functional_call(m, params, (x,))[0].square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    for i in range(3):
        _assert_all_close({n: g[i] for n, g in per_sample.items()}, grad(loss)(params, xs[i]))
    models = [pt.RNN(I, H, dtype=torch.float64) for _ in range(3)]
    stacked, _ = stack_module_state(models)
    ys = vmap(lambda p, x: functional_call(models[0], p, (x,))[0], in_dims=(0, None))(stacked, xs[0])
    _assert_all_close(ys, torch.stack([mm(xs[0])[0] for mm in models]))


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_vmap_different_randomness_draws_a_recurrent_dropout_mask_per_sample(monkeypatch, mode):
    """recurrent_dropout's masks are drawn out of place, so vmap(randomness="different") batches the
    draw: sample i runs with mask i, exactly as an eager call given that mask."""
    torch.manual_seed(0)
    name, kw = MODULES[mode]
    m = getattr(pt, name)(I, H, recurrent_dropout=0.5, dtype=torch.float64, **kw).train()
    x = torch.randn(T, B, I, dtype=torch.float64)
    xs = x.expand(4, T, B, I)
    torch.manual_seed(1)
    with torch.no_grad():
        ys = vmap(lambda x: m(x)[0], randomness="different")(xs)
    torch.manual_seed(1)
    masks = torch.bernoulli(torch.full((4, B, H), 0.5, dtype=torch.float64)) / 0.5
    for i in range(4):
        monkeypatch.setattr(pt, "_dropout_mask", lambda *a, i=i: masks[i])
        with torch.no_grad():
            _assert_all_close(ys[i], m(x)[0])
    assert not torch.equal(ys[0], ys[1])
    monkeypatch.undo()
    with torch.no_grad():
        same = vmap(lambda x: m(x)[0], randomness="same")(xs)
    assert all(torch.equal(same[0], same[i]) for i in range(4))


# ---------------------------------------------------------------- errors --

def test_double_backward_raises_through_the_operator():
    args = _op_args("lstm", "states", torch.float64)
    y, _, _, _ = torch.ops.pyrnn.rnn_layer(*args)
    (gx,) = torch.autograd.grad(y.square().sum(), args[0], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        gx.sum().backward()
    m = pt.GRU(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        grad(lambda x: grad(lambda x: m(x)[0].square().sum())(x).sum())(x)


@pytest.mark.parametrize("make", [
    lambda: pt.GRU(4, 5),
    lambda: pt.LSTM(4, 5, num_layers=2, bidirectional=True, batch_first=True),
    lambda: pt.LSTM(4, 6, proj_size=3),
    lambda: pt.RNN(4, 5, nonlinearity="relu", bidirectional=True),
])
def test_with_lengths_exports_and_compiles_fullgraph(make):
    """pyrnn.torch.WithLengths over pyrnn's layers traces (a review, 2026-12-05: its check of the
    lengths' values, and packing, failed torch.export and fullgraph compiles): traced, the lengths go
    to the layers' operator, with the packed eager call's results bitwise and its gradients; the
    exported program checks the lengths' values when it runs."""
    torch.manual_seed(0)
    rnn = make()
    m = pt.WithLengths(rnn)
    x = torch.randn(3, 6, 4) if rnn.batch_first else torch.randn(6, 3, 4)
    lengths = torch.tensor([6, 2, 4])

    def flat(out):
        y, s = out
        return [y] + ([s] if isinstance(s, torch.Tensor) else list(s))

    with torch.no_grad():
        eager = flat(m.eval()(x, lengths))
        exported = torch.export.export(m, (x, lengths)).module()
        for got in (flat(exported(x, lengths)), flat(torch.compile(m, fullgraph=True, backend="aot_eager")(x, lengths))):
            assert all(torch.equal(a, b) for a, b in zip(got, eager))
        with pytest.raises(ValueError, match=r"lengths must lie in \[1, T\] = \[1, 6\]"):
            exported(x, torch.tensor([7, 2, 4]))
    m.train()  # (no dropout between layers here: the same computation)
    grads = []
    for f in (m, torch.compile(m, fullgraph=True, backend="aot_eager")):
        rnn.zero_grad()
        xx = x.clone().requires_grad_(True)
        sum(t.square().sum() for t in flat(f(xx, lengths))).backward()
        grads.append([xx.grad] + [p.grad.clone() for p in rnn.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_with_lengths_traced_keeps_the_layers_hooks():
    """A hook on the layer (its own or a global one) sees the traced call as the eager one: traced
    (here a tensor subclass input, nn.Parameter, which takes the operator's path), WithLengths then
    packs as in eager instead of calling the operator; unhooked, it calls the operator."""
    torch.manual_seed(0)
    rnn = pt.GRU(4, 5)
    m = pt.WithLengths(rnn)
    x, lengths = nn.Parameter(torch.randn(6, 3, 4)), torch.tensor([6, 2, 4])
    assert pt._traced(x)
    direct = rnn._forward_with_lengths(x, lengths, None)
    assert direct is not None
    calls = []
    handle = rnn.register_forward_pre_hook(lambda mod, args: calls.append(type(args[0]).__name__))
    try:
        assert rnn._forward_with_lengths(x, lengths, None) is None
        y, h = m(x, lengths)
    finally:
        handle.remove()
    assert calls == ["PackedSequence"]
    assert torch.equal(y, direct[0]) and torch.equal(h, direct[1])
    handle = nn.modules.module.register_module_forward_pre_hook(lambda mod, args: calls.append(type(mod).__name__))
    try:
        assert rnn._forward_with_lengths(x, lengths, None) is None
    finally:
        handle.remove()
    assert rnn._forward_with_lengths(x, lengths, None) is not None
