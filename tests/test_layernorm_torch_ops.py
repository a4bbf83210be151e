"""pyrnn.torch.LayerNormLSTM / LayerNormGRU under torch.compile, torch.export and torch.func
(the pyrnn::layernorm_layer operator).

torch.library.opcheck of both operators, the residual hand-off (the backward reads the
forward's workspace; a copied or empty residual reruns the forward; nothing is kept once
the residual dies), fullgraph compilation of training steps (outputs and gradients equal
to eager), recurrent dropout and zoneout masks under compile, an export round trip,
torch.func.grad over functional_call and vmap. Tiny shapes.
"""

import gc
import sys

import pytest

torch = pytest.importorskip("torch")

import pyrnn.torch as pt  # noqa: E402
from pyrnn import _core, _torch_ops  # noqa: E402
from torch.func import functional_call, grad, vmap  # noqa: E402

T, B, I, H = 5, 3, 4, 6
G = {"lstm": 4, "gru": 3}
MODULES = {"lstm": pt.LayerNormLSTM, "gru": pt.LayerNormGRU}
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 1e-5, "atol": 1e-6}}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    gc.collect()  # a previous test's reference cycles: the workspace counts below start from none
    yield
    torch._dynamo.reset()


N = 16  # layernorm_layer's tensor arguments (the 12 differentiable ones, lengths, the 3 masks)


def _op_args(cell, variant, dtype=torch.float64, reverse=False, training=True, grad=True, proj=0):
    """layernorm_layer's arguments. variant: "states" (h0, c0, betas), "masked" (also lengths,
    h_mask and zoneout masks) or "bare" (no states, no betas). proj (LSTM): the projection's
    width P (W_hr [P, H]; h0, h_mask, zoneout_h and W_hh's columns P wide), 0: none."""
    g = torch.Generator().manual_seed(0)
    GH = G[cell] * H

    def t(*shape, scale=0.5, shift=0.0):
        return (torch.randn(shape, generator=g, dtype=dtype) * scale + shift).requires_grad_(grad)

    lstm = cell == "lstm"
    bare = variant == "bare"
    masked = variant == "masked"
    Ho = proj or H
    x, W_ih, W_hh = t(T, B, I), t(GH, I), t(GH, Ho)
    h0 = None if bare else t(B, Ho)
    c0 = t(B, H) if lstm and not bare else None
    b_ih, b_hh = (None, None) if bare else (t(GH, scale=0.1), t(GH, scale=0.1))
    ln_ih, ln_hh = t(GH, scale=0.1, shift=1.0), t(GH, scale=0.1, shift=1.0)
    ln_cw = t(H, scale=0.1, shift=1.0) if lstm else None
    ln_cb = t(H, scale=0.1) if lstm and not bare else None
    W_hr = t(proj, H) if proj else None
    lengths = torch.tensor([5, 2, 4]) if masked else None

    def bern(*shape, p):
        return (torch.rand(shape, generator=g, dtype=dtype) < p).to(dtype)

    h_mask = bern(B, Ho, p=0.7) / 0.7 if masked else None
    zh = bern(T, B, Ho, p=0.3) if masked else None
    zc = bern(T, B, H, p=0.2) if masked and lstm else None
    return (x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_cw, ln_cb, W_hr, lengths, h_mask, zh, zc, cell,
            reverse, training)


def _assert_all_close(actual, expected, dtype=torch.float64):
    actual, expected = torch.utils._pytree.tree_leaves(actual), torch.utils._pytree.tree_leaves(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **TOL[dtype])


def _count_kernel_calls(monkeypatch):
    """{"forward": n, "backward": n}: calls of the C++ layer-norm kernels."""
    counts = {"forward": 0, "backward": 0}
    for kind in counts:
        real = getattr(_core, f"layernorm_{kind}")

        def spy(*a, _real=real, _kind=kind, **kw):
            counts[_kind] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(_core, f"layernorm_{kind}", spy)
    return counts


# -------------------------------------------------------------- opcheck --

OPCHECKS = ([(c, v, torch.float64, r, True) for c in G for v in ("states", "masked", "bare") for r in (False, True)]
            + [(c, "masked", torch.float32, False, True) for c in G]
            + [(c, "masked", torch.float64, True, False) for c in G])


@pytest.mark.parametrize("cell,variant,dtype,reverse,training", OPCHECKS,
                         ids=[f"{c}-{v}-{str(d)[6:]}{'-reverse' if r else ''}{'' if tr else '-inference'}"
                              for c, v, d, r, tr in OPCHECKS])
def test_opcheck_layernorm_layer(cell, variant, dtype, reverse, training):
    args = _op_args(cell, variant, dtype, reverse, training)
    torch.library.opcheck(torch.ops.pyrnn.layernorm_layer.default, args)


@pytest.mark.parametrize("cell", list(G))
@pytest.mark.parametrize("variant", ["masked", "bare"])
def test_opcheck_layernorm_layer_backward(cell, variant):
    args = _op_args(cell, variant, reverse=True, grad=False)
    y, h_n, c_n, residual = torch.ops.pyrnn.layernorm_layer(*args)
    g = torch.Generator().manual_seed(5)
    grads = (torch.randn(y.shape, generator=g, dtype=y.dtype), torch.randn(h_n.shape, generator=g, dtype=y.dtype),
             torch.randn(c_n.shape, generator=g, dtype=y.dtype) if cell == "lstm" else None)
    opts = args[N:N + 2]
    op = torch.ops.pyrnn.layernorm_layer_backward.default
    torch.library.opcheck(op, args[:N] + (y, residual) + grads + opts)
    empty = torch.empty((0,), dtype=torch.uint8)  # training=False: the backward reruns the forward
    torch.library.opcheck(op, args[:N] + (y, empty) + grads + opts)
    torch.library.opcheck(op, args[:N] + (y, residual, None, grads[1], None) + opts)


@pytest.mark.parametrize("cell", list(G))
def test_layernorm_layer_matches_the_eager_module_path(cell):
    """The operator's outputs and gradients are bitwise those of the kernels' eager autograd.Function."""
    args = _op_args(cell, "masked", reverse=True)
    y, h_n, c_n, residual = torch.ops.pyrnn.layernorm_layer(*args)
    assert residual.shape == (1,) and residual.dtype == torch.uint8 and residual.item() == 0
    tensors = args[:12]
    masks = tuple(None if m is None else m.numpy() for m in args[13:16])
    outs = pt._LayerNormRecurrence.apply(cell, args[12].numpy(), True, masks, *tensors)
    assert torch.equal(y, outs[0]) and torch.equal(h_n, outs[1])
    if cell == "lstm":
        assert torch.equal(c_n, outs[2])
    diff = [t for t in tensors if t is not None]
    loss = lambda o: o[0].square().sum() + o[1].sum() + (o[2].sum() if cell == "lstm" else 0)  # noqa: E731
    got = torch.autograd.grad(loss((y, h_n, c_n)), diff)
    want = torch.autograd.grad(loss(outs), diff)
    for a, e in zip(got, want):
        assert torch.equal(a, e)


@pytest.mark.parametrize("cell", list(G))
def test_backward_reads_the_forward_workspace_and_falls_back_to_a_rerun(monkeypatch, cell):
    args = _op_args(cell, "masked", grad=False)
    counts = _count_kernel_calls(monkeypatch)
    y, h_n, c_n, residual = torch.ops.pyrnn.layernorm_layer(*args)
    assert counts == {"forward": 1, "backward": 0}
    dy = torch.randn_like(y)
    call = lambda r: torch.ops.pyrnn.layernorm_layer_backward(*args[:N], y, r, dy, None, None, cell, False)  # noqa
    got = call(residual)
    assert counts == {"forward": 1, "backward": 1}  # the forward's workspace: no forward again
    for other in (residual.clone(), torch.empty((0,), dtype=torch.uint8)):  # a copy is not found: rerun
        for a, e in zip(call(other), got):
            assert torch.equal(a, e)
    assert counts == {"forward": 3, "backward": 3}
    # A residual of another call's shape is refused, not misread.
    small = _op_args(cell, "states", grad=False)
    small = (small[0][:, :2],) + tuple(None if t is None else t[:2] for t in small[1:3]) + small[3:]
    _, _, _, r_small = torch.ops.pyrnn.layernorm_layer(*small)
    with pytest.raises(ValueError, match="workspace of another call"):
        call(r_small)


@pytest.mark.parametrize("cell", list(G))
def test_the_workspace_reads_only_its_own_memory(cell):
    """The forward gives the kernel private copies and returns a copy of y, so overwriting the
    caller's inputs and outputs after the forward (as a compiler reusing buffers might) does not
    change the gradients the backward computes from the residual."""
    args = _op_args(cell, "masked", grad=False)
    originals = tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in args)
    y, h_n, c_n, residual = torch.ops.pyrnn.layernorm_layer(*args)
    dy = torch.randn_like(y)
    expected = torch.ops.pyrnn.layernorm_layer_backward(*originals[:N], y.clone(), torch.empty(0, dtype=torch.uint8),
                                                        dy, None, None, cell, False)  # a fresh forward's gradients
    y_saved = y.clone()
    for t in args[:N] + (y,):
        if t is not None:
            t.fill_(7 if t.dtype == torch.int64 else 0.25)  # lengths 7: out of range, were they read
    got = torch.ops.pyrnn.layernorm_layer_backward(*originals[:N], y_saved, residual, dy, None, None, cell, False)
    for a, e in zip(got, expected):
        assert torch.equal(a, e)


def test_workspaces_live_exactly_as_long_as_their_residual():
    """The side table holds weak references only: once a residual (and any view of it) dies, its
    workspace is freed, whether or not a backward ran; no gc pass is needed."""
    args = _op_args("lstm", "states", grad=False)
    before = len(_torch_ops._LN_WORKSPACES)
    outs = torch.ops.pyrnn.layernorm_layer(*args)
    view = outs[3][:]
    assert len(_torch_ops._LN_WORKSPACES) == before + 1
    del outs
    assert len(_torch_ops._LN_WORKSPACES) == before + 1  # the view keeps the storage
    del view
    assert len(_torch_ops._LN_WORKSPACES) == before
    m = pt.LayerNormLSTM(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = torch.randn(T, B, I, dtype=torch.float64)
    y, _ = compiled(x)
    assert len(_torch_ops._LN_WORKSPACES) == before + 4  # saved by autograd for the backward
    del y, _
    assert len(_torch_ops._LN_WORKSPACES) == before  # the graph is gone, and with it the workspaces


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_repeated_compiled_steps_do_not_grow_memory():
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    torch.manual_seed(0)
    m = pt.LayerNormLSTM(32, 64, num_layers=2, dtype=torch.float64, zoneout=0.1)  # ~2 MB of workspace a step
    x = torch.randn(40, 16, 32, dtype=torch.float64)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")

    def step():
        m.zero_grad()
        compiled(x)[0].square().sum().backward()
        with torch.no_grad():  # and an inference call
            compiled(x)
        compiled(x)  # a forward whose graph is dropped without a backward

    for _ in range(3):
        step()
    gc.collect()
    start = rss()
    for _ in range(40):
        step()
        assert len(_torch_ops._LN_WORKSPACES) == 0
    gc.collect()
    assert rss() - start < 40 * 2**20  # a leak of each step's workspaces would be > 200 MB


# ------------------------------------------------------------ torch.compile --

class _Model(torch.nn.Module):
    def __init__(self, cell, **kw):
        super().__init__()
        self.rnn = MODULES[cell](I, H, dtype=torch.float64, **kw)
        width = kw.get("proj_size") or H
        self.head = torch.nn.Linear(width * (2 if kw.get("bidirectional") else 1), 2, dtype=torch.float64)

    def forward(self, x, hx=None, lengths=None):
        y, state = self.rnn(x, hx, lengths)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(y).square().mean() + h_n.square().mean()


def _train_step(model, fn, *args):
    model.zero_grad(set_to_none=True)
    loss = fn(*args)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_equal(actual, expected):
    actual, expected = torch.utils._pytree.tree_leaves(actual), torch.utils._pytree.tree_leaves(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)


@pytest.mark.parametrize("cell", list(G))
def test_compile_fullgraph_training_step_matches_eager(monkeypatch, cell):
    """aot_eager, fullgraph: a 2-layer bidirectional model with dropout between layers, initial states
    and lengths gives eager's loss and gradients bitwise, with one C++ forward per layer and direction."""
    torch.manual_seed(0)
    model = _Model(cell, num_layers=2, bidirectional=True, dropout=0.3)
    x = torch.randn(T, B, I, dtype=torch.float64)
    h = torch.randn(4, B, H, dtype=torch.float64)
    hx = (h, torch.randn(4, B, H, dtype=torch.float64)) if cell == "lstm" else h
    lengths = torch.tensor([5, 3, 4])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)
    _train_step(model, compiled, x, hx, lengths)  # compiles
    counts = _count_kernel_calls(monkeypatch)
    for _ in range(2):  # the second call runs the cached graph
        torch.manual_seed(2)
        expected = _train_step(model, model, x, hx, lengths)
        torch.manual_seed(2)
        counts.update(forward=0, backward=0)
        got = _train_step(model, compiled, x, hx, lengths)
        assert counts == {"forward": 4, "backward": 4}  # the backward read the forward's workspaces
        _assert_equal(got, expected)
    assert len(_torch_ops._LN_WORKSPACES) == 0


@pytest.mark.parametrize("cell", list(G))
def test_compile_recurrent_dropout_and_zoneout_masks_match_eager(cell):
    """Training mode: recurrent dropout and zoneout masks drawn with torch's RNG inside the compiled
    graph; with the same seed, aot_eager draws eager's masks, so outputs and gradients are equal."""
    torch.manual_seed(0)
    kw = {"zoneout_c": 0.4} if cell == "lstm" else {}
    model = _Model(cell, num_layers=2, bidirectional=True, recurrent_dropout=0.3, zoneout=0.2, **kw).train()
    x = torch.randn(T, B, I, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for seed in (1, 2):
        torch.manual_seed(seed)
        expected = _train_step(model, model, x)
        torch.manual_seed(seed)
        _assert_equal(_train_step(model, compiled, x), expected)
    torch.manual_seed(3)
    a = _train_step(model, compiled, x)
    torch.manual_seed(4)
    assert not torch.equal(_train_step(model, compiled, x)[0], a[0])  # the masks are drawn per call
    model.eval()  # no masks in eval mode
    with torch.no_grad():
        _assert_equal(compiled(x), model(x))


def test_compile_fullgraph_batch_first_unbatched_no_grad_and_input_grad():
    torch.manual_seed(0)
    m = pt.LayerNormLSTM(I, H, num_layers=2, batch_first=True, dtype=torch.float64)
    x = torch.randn(B, T, I, dtype=torch.float64)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")

    def input_grad(fn):
        xs = x.clone().requires_grad_()
        y, (h, c) = fn(xs)
        (y.square().sum() + c.sum()).backward()
        return y.detach(), xs.grad

    _assert_all_close(input_grad(compiled), input_grad(m))
    gru = pt.LayerNormGRU(I, H, dtype=torch.float64)
    with torch.no_grad():
        xu = torch.randn(T, I, dtype=torch.float64)
        _assert_all_close(torch.compile(gru, fullgraph=True, backend="aot_eager")(xu), gru(xu))


@pytest.mark.slow  # compiling C++ with inductor
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inductor's imports
def test_compile_fullgraph_inductor(monkeypatch):
    torch.manual_seed(0)
    model = _Model("lstm", num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True)
    expected = _train_step(model, model, x)
    _assert_all_close(_train_step(model, compiled, x), expected)
    counts = _count_kernel_calls(monkeypatch)
    _assert_all_close(_train_step(model, compiled, x), expected)
    assert counts == {"forward": 4, "backward": 4}  # inductor hands the residuals over too
    assert len(_torch_ops._LN_WORKSPACES) == 0


def test_compile_traced_lengths_are_checked():
    m = pt.LayerNormGRU(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with pytest.raises(TypeError, match="lengths must be an integer array"):
        grad(lambda x: m(x, lengths=torch.tensor([2.5, 2.0, 1.0]))[0].sum())(x)
    with pytest.raises(ValueError, match="lengths"):  # out of range: the kernel's check
        grad(lambda x: m(x, lengths=torch.tensor([6, 2, 1]))[0].sum())(x)


# ------------------------------------------------------------- torch.export --

@pytest.mark.parametrize("cell", list(G))
def test_export_round_trip(cell):
    from test_torch_compile import check_export_round_trip
    torch.manual_seed(0)
    m = MODULES[cell](I, H, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64).eval()
    check_export_round_trip(m, torch.ops.pyrnn.layernorm_layer.default)


# -------------------------------------------------------------- torch.func --

def _check_func_grad(monkeypatch, m):
    """torch.func.grad over functional_call equals autograd bitwise, one kernel forward and backward per
    layer and direction (2 layers, bidirectional). Returns (params, loss) for further transforms."""
    x = torch.randn(T, B, I, dtype=torch.float64)
    params = {n: p.detach() for n, p in m.named_parameters()}

    def loss(params, x):
        return functional_call(m, params, (x,))[0].square().sum()

    xs = x.clone().requires_grad_()
    m.zero_grad()
    m(xs)[0].square().sum().backward()
    counts = _count_kernel_calls(monkeypatch)
    got_params, got_x = grad(loss, argnums=(0, 1))(params, x)
    assert counts == {"forward": 4, "backward": 4}
    _assert_equal(got_params, {n: p.grad for n, p in m.named_parameters()})
    _assert_equal(got_x, xs.grad)
    monkeypatch.undo()
    return params, loss


@pytest.mark.parametrize("cell", list(G))
def test_func_grad_over_functional_call_matches_autograd(monkeypatch, cell):
    torch.manual_seed(0)
    _check_func_grad(monkeypatch, MODULES[cell](I, H, num_layers=2, bidirectional=True, dtype=torch.float64))


def test_compile_over_torch_func_grad():
    """torch.compile of a torch.func.grad over functional_call (the kernels run outside the graph)."""
    torch.manual_seed(0)
    m = pt.LayerNormLSTM(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    params = {n: p.detach() for n, p in m.named_parameters()}

    def loss(params, x):
        return functional_call(m, params, (x,))[0].square().sum()

    compiled = torch.compile(grad(loss), backend="aot_eager")
    _assert_all_close(compiled(params, x), grad(loss)(params, x))
    before = len(_torch_ops._LN_WORKSPACES)
    for _ in range(3):  # nothing accumulates (a cycle may hold the last call's until a gc pass)
        compiled(params, x)
    assert len(_torch_ops._LN_WORKSPACES) <= max(before, 1)
    gc.collect()
    assert len(_torch_ops._LN_WORKSPACES) == 0


def test_vmap_folds_the_batch_without_grad_and_loops_with_it(monkeypatch):
    torch.manual_seed(0)
    m = pt.LayerNormLSTM(I, H, num_layers=2, dtype=torch.float64)
    xs = torch.randn(4, T, B, I, dtype=torch.float64)
    before = len(_torch_ops._LN_WORKSPACES)
    counts = _count_kernel_calls(monkeypatch)
    with torch.no_grad():  # no workspace needed: the vmapped dim folds into the batch, one call a layer
        ys, (hs, cs) = vmap(m)(xs)
    assert counts == {"forward": 2, "backward": 0}
    for i in range(4):
        _assert_all_close((ys[i], hs[i], cs[i]), (lambda o: (o[0], *o[1]))(m(xs[i])))
    # A gradient may follow: one call per sample, each keeping its own workspace for the backward.
    counts.update(forward=0)
    ys_grad = vmap(lambda x: m(x)[0])(xs)
    assert counts == {"forward": 8, "backward": 0}
    ys_grad.square().sum().backward()
    assert counts == {"forward": 8, "backward": 8}  # the backward read the workspaces: no forward again
    monkeypatch.undo()
    got = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    sum(m(xs[i])[0].square().sum() for i in range(4)).backward()
    _assert_all_close(got, {n: p.grad for n, p in m.named_parameters()})
    assert len(_torch_ops._LN_WORKSPACES) == before  # the restacked residuals freed their workspaces


@pytest.mark.parametrize("cell", list(G))
def test_vmap_per_sample_grads(monkeypatch, cell):
    torch.manual_seed(0)
    m = MODULES[cell](I, H, bidirectional=True, dtype=torch.float64)
    params = {n: p.detach() for n, p in m.named_parameters()}
    xs = torch.randn(3, T, B, I, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])

    def loss(params, x):
        return functional_call(m, params, (x, None, lengths))[0].square().sum()

    counts = _count_kernel_calls(monkeypatch)
    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    assert counts == {"forward": 6, "backward": 6}  # each sample's backward read its own workspace
    for i in range(3):
        _assert_all_close({n: g[i] for n, g in per_sample.items()}, grad(loss)(params, xs[i]))


def test_double_backward_raises_through_the_operator():
    args = _op_args("lstm", "states")
    y, _, _, _ = torch.ops.pyrnn.layernorm_layer(*args)
    (gx,) = torch.autograd.grad(y.square().sum(), args[0], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        gx.sum().backward()
    m = pt.LayerNormGRU(I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        grad(lambda x: grad(lambda x: m(x)[0].square().sum())(x).sum())(x)


# ------------------------------------------------- LSTM projection (proj_size) --
#
# The operators with W_hr (the schema's optional W_hr tensor; fake kernels give the P-wide y and
# h_n): opcheck, bitwise parity with the eager autograd.Function, compile, export and torch.func.

P = 2
PROJ_OPCHECKS = [(v, d, r, tr) for v in ("states", "masked", "bare") for d, r, tr in
                 ((torch.float64, False, True), (torch.float64, True, True), (torch.float32, False, True),
                  (torch.float64, True, False))]


@pytest.mark.parametrize("variant,dtype,reverse,training", PROJ_OPCHECKS,
                         ids=[f"{v}-{str(d)[6:]}{'-reverse' if r else ''}{'' if tr else '-inference'}"
                              for v, d, r, tr in PROJ_OPCHECKS])
def test_opcheck_layernorm_layer_with_projection(variant, dtype, reverse, training):
    args = _op_args("lstm", variant, dtype, reverse, training, proj=P)
    torch.library.opcheck(torch.ops.pyrnn.layernorm_layer.default, args)
    y, h_n, c_n, _ = torch.ops.pyrnn.layernorm_layer(*args)
    assert y.shape == (T, B, P) and h_n.shape == (B, P) and c_n.shape == (B, H)


@pytest.mark.parametrize("variant", ["masked", "bare"])
def test_opcheck_layernorm_layer_backward_with_projection(variant):
    args = _op_args("lstm", variant, reverse=True, grad=False, proj=P)
    y, h_n, c_n, residual = torch.ops.pyrnn.layernorm_layer(*args)
    g = torch.Generator().manual_seed(5)
    grads = tuple(torch.randn(t.shape, generator=g, dtype=y.dtype) for t in (y, h_n, c_n))
    opts = args[N:N + 2]
    op = torch.ops.pyrnn.layernorm_layer_backward.default
    torch.library.opcheck(op, args[:N] + (y, residual) + grads + opts)
    torch.library.opcheck(op, args[:N] + (y, torch.empty((0,), dtype=torch.uint8)) + grads + opts)
    out = op(*args[:N], y, residual, *grads, *opts)
    assert len(out) == 12 and out[11].shape == (P, H)  # dW_hr


def test_layernorm_layer_with_projection_matches_the_eager_module_path():
    args = _op_args("lstm", "masked", reverse=True, proj=P)
    y, h_n, c_n, residual = torch.ops.pyrnn.layernorm_layer(*args)
    tensors = args[:12]
    masks = tuple(None if m is None else m.numpy() for m in args[13:16])
    outs = pt._LayerNormRecurrence.apply("lstm", args[12].numpy(), True, masks, *tensors)
    assert torch.equal(y, outs[0]) and torch.equal(h_n, outs[1]) and torch.equal(c_n, outs[2])
    diff = [t for t in tensors if t is not None]
    loss = lambda o: o[0].square().sum() + o[1].sum() + o[2].sum()  # noqa: E731
    got = torch.autograd.grad(loss((y, h_n, c_n)), diff)
    want = torch.autograd.grad(loss(outs), diff)
    for a, e in zip(got, want):
        assert torch.equal(a, e)


def test_backward_refuses_a_workspace_of_another_projection():
    args = _op_args("lstm", "states", grad=False, proj=P)
    y, _, _, residual = torch.ops.pyrnn.layernorm_layer(*args)
    other = _op_args("lstm", "states", grad=False, proj=P + 1)
    with pytest.raises(ValueError, match="workspace of another call"):
        torch.ops.pyrnn.layernorm_layer_backward(*other[:N], torch.zeros(T, B, P + 1, dtype=y.dtype), residual,
                                                 None, None, None, "lstm", False)


def test_compile_fullgraph_training_step_with_projection_matches_eager(monkeypatch):
    torch.manual_seed(0)
    model = _Model("lstm", num_layers=2, bidirectional=True, dropout=0.3, proj_size=P, recurrent_dropout=0.2,
                   zoneout=0.2, zoneout_c=0.3)
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = (torch.randn(4, B, P, dtype=torch.float64), torch.randn(4, B, H, dtype=torch.float64))
    lengths = torch.tensor([5, 3, 4])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)
    _train_step(model, compiled, x, hx, lengths)  # compiles
    counts = _count_kernel_calls(monkeypatch)
    for seed in (2, 3):
        torch.manual_seed(seed)
        expected = _train_step(model, model, x, hx, lengths)
        torch.manual_seed(seed)
        counts.update(forward=0, backward=0)
        got = _train_step(model, compiled, x, hx, lengths)
        assert counts == {"forward": 4, "backward": 4}
        _assert_equal(got, expected)
        assert got[1]["rnn.weight_hr_l1_reverse"].shape == (P, H)
    assert len(_torch_ops._LN_WORKSPACES) == 0


def test_export_round_trip_with_projection():
    from test_torch_compile import check_export_round_trip
    torch.manual_seed(0)
    m = pt.LayerNormLSTM(I, H, num_layers=2, bidirectional=True, batch_first=True, proj_size=P,
                         dtype=torch.float64).eval()
    check_export_round_trip(m, torch.ops.pyrnn.layernorm_layer.default)


def test_func_grad_and_vmap_with_projection(monkeypatch):
    torch.manual_seed(0)
    m = pt.LayerNormLSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, dtype=torch.float64)
    params, loss = _check_func_grad(monkeypatch, m)
    xb = torch.randn(3, T, B, I, dtype=torch.float64)
    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, xb)
    for i in range(3):
        _assert_all_close({n: g[i] for n, g in per_sample.items()}, grad(loss)(params, xb[i]))
    with torch.no_grad():  # the folded batch (no workspace)
        ys, (hs, cs) = vmap(m)(xb)
    assert ys.shape == (3, T, B, 2 * P) and hs.shape == (3, 4, B, P) and cs.shape == (3, 4, B, H)
    for i in range(3):
        _assert_all_close((ys[i], hs[i], cs[i]), (lambda o: (o[0], *o[1]))(m(xb[i])))
