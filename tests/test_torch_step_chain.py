"""A cell's training steps in one graph pack their weights once (pyrnn.torch._StepChain): the same
bits as packing in every step, forward and backward, and never a stale packing after the weights
change between steps."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import pyrnn.torch as pt  # noqa: E402

CELLS = [
    ("LSTMCell", {}),
    ("GRUCell", {}),
    ("GRUCell", {"reset_after": False}),
    ("RNNCell", {}),
    ("RNNCell", {"nonlinearity": "relu"}),
]


def _unchained(monkeypatch):
    """Every step packs for itself, as before chains (the reference)."""
    monkeypatch.setattr(pt._StepChain, "join", classmethod(lambda cls, *a: None))


def _state(name, B, H, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, H, generator=g, dtype=dtype)
    return (h, torch.randn(B, H, generator=g, dtype=dtype)) if name == "LSTMCell" else h


def _loop(cell, xs, hx):
    """Steps the cell over xs from hx; returns the outputs of every step (h, or h and c)."""
    outs = []
    for x in xs:
        hx = cell(x, hx)
        outs.extend(hx if isinstance(hx, tuple) else (hx,))
    return outs


def _pair(name, I, H, **kw):
    """A pyrnn.torch cell and the torch.nn cell with its weights."""
    torch.manual_seed(0)
    ours = getattr(pt, name)(I, H, **kw)
    ref = getattr(torch.nn, name)(I, H)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _assert_all_close(got, want, rtol=1e-4, atol=1e-5):
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def _run(name, kw, B, I, H, T, dtype, chained, monkeypatch):
    torch.manual_seed(0)
    cell = getattr(pt, name)(I, H, dtype=dtype, **kw)
    xs = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    hx = _state(name, B, H, dtype, 1)
    hx = tuple(h.requires_grad_() for h in hx) if isinstance(hx, tuple) else hx.requires_grad_()
    with monkeypatch.context() as m:
        if not chained:
            _unchained(m)
        outs = _loop(cell, xs, hx)
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=dtype).view_as(o)).sum() for o in outs)
        loss.backward()
    leaves = [xs, *(hx if isinstance(hx, tuple) else (hx,)), *cell.parameters()]
    return [o.detach() for o in outs], [t.grad for t in leaves], outs[-1]


@pytest.mark.parametrize("name,kw", CELLS)
@pytest.mark.parametrize("B,I,H", [(1, 5, 7), (3, 16, 33), (37, 20, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chained_steps_equal_unchained_bitwise(name, kw, B, I, H, dtype, monkeypatch):
    T = 5
    outs, grads, last = _run(name, kw, B, I, H, T, dtype, True, monkeypatch)
    ref_outs, ref_grads, _ = _run(name, kw, B, I, H, T, dtype, False, monkeypatch)
    for a, b in zip(outs, ref_outs):
        assert torch.equal(a, b)
    for a, b in zip(grads, ref_grads):
        assert torch.equal(a, b)
    chain = last.grad_fn.chain
    assert chain.steps == T
    # the forward packing released when backward began, the backward one when the pass ended
    assert chain.forward is None and chain.backward is None


@pytest.mark.parametrize("name,kw", [("LSTMCell", {}), ("GRUCell", {})])
def test_chained_steps_match_torch_nn(name, kw):
    ours, ref = _pair(name, 12, 24, **kw)
    xs = torch.randn(8, 6, 12)
    results = []
    for cell in (ours, ref):
        x = xs.clone().requires_grad_()
        outs = _loop(cell, x, None)
        sum(o.square().sum() for o in outs).backward()
        results.append((outs, x.grad, [p.grad for p in cell.parameters()]))
    (o1, dx1, g1), (o2, dx2, g2) = results
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx1, dx2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _two_steps_with_update(cls, update):
    """Two steps with `update(cell)` between them (no backward): the second step's h."""
    torch.manual_seed(0)
    cell = cls(6, 10)
    x = torch.randn(4, 6)
    h = cell(x)
    h = cell(x, h)  # the chain's second step: packs now
    update(cell)
    h = cell(x, h)
    return cell, h


@pytest.mark.parametrize("how", ["in_place", "data", "new_parameter", "data_copy_then_bump"])
def test_weights_changed_between_steps_are_not_stale(how):
    """A chain is joined only with the same weight tensors at the same version and address: a weight
    changed in place, replaced through .data, or replaced by a new Parameter is read anew."""

    def update(cell):
        with torch.no_grad():
            if how == "in_place":
                cell.weight_hh.mul_(0.5)
            elif how == "data":
                cell.weight_hh.data = cell.weight_hh.data * 0.5
            elif how == "new_parameter":
                cell.weight_hh = torch.nn.Parameter(cell.weight_hh * 0.5)
            else:
                cell.weight_ih.data.mul_(0.5)  # (no version bump through .data) ...
                cell.weight_ih.add_(0.0)  # ... then one that bumps it

    ours_cell, ours = _two_steps_with_update(pt.RNNCell, update)
    ref_cell, ref = _two_steps_with_update(torch.nn.RNNCell, update)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_backward_after_in_place_update_between_steps_raises():
    """autograd's check of the saved weights still refuses such a backward, as torch.nn's does."""
    cell = pt.LSTMCell(4, 5)
    x = torch.randn(2, 4)
    hx = cell(x)
    hx = cell(x, hx)
    with torch.no_grad():
        cell.weight_hh.add_(1.0)
    hx = cell(x, hx)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        hx[0].sum().backward()


def test_retain_graph_then_more_steps():
    """Steps after a backward with retain_graph pack again; a second backward through all of them
    gives torch.nn's gradients."""
    ours, ref = _pair("GRUCell", 5, 9)
    xs = torch.randn(6, 3, 5)
    grads = []
    for cell in (ours, ref):
        h = None
        for x in xs[:3]:
            h = cell(x, h)
        h.sum().backward(retain_graph=True)
        for x in xs[3:]:
            h = cell(x, h)
        h.square().sum().backward()
        grads.append([p.grad.clone() for p in cell.parameters()])
    _assert_all_close(*grads)


def test_stacked_cells_each_chain_their_own_weights():
    """Two cells in one loop (layer 2 reads layer 1's h): each step joins its own cell's chain."""
    (c1, r1), (c2, r2) = _pair("LSTMCell", 4, 8), _pair("LSTMCell", 8, 8)
    xs = torch.randn(7, 3, 4)
    grads = []
    for a, b in ((c1, c2), (r1, r2)):
        s1 = s2 = None
        for x in xs:
            s1 = a(x, s1)
            s2 = b(s1[0], s2)
        if a is c1:
            chains = (s1[0].grad_fn.chain, s2[0].grad_fn.chain)
            assert chains[0] is not chains[1] and [c.steps for c in chains] == [7, 7]
        s2[0].sum().backward()
        grads.append([p.grad.clone() for p in (*a.parameters(), *b.parameters())])
    _assert_all_close(*grads)


def test_chain_steps_and_packing_lifetime():
    cell = pt.LSTMCell(3, 4)
    x = torch.randn(2, 3)
    hx = cell(x)
    chain = hx[0].grad_fn.chain
    assert chain.steps == 1 and chain.forward is None  # one step packs nothing ahead
    hx = cell(x, hx)
    assert hx[1].grad_fn.chain is chain and chain.steps == 2 and chain.forward is not None
    hx = cell(x, (hx[0].detach(), hx[1].detach()))  # detached: a new chain
    assert hx[0].grad_fn.chain is not chain and hx[0].grad_fn.chain.steps == 1


def test_saved_tensor_hooks_do_not_chain():
    cell = pt.GRUCell(3, 4)
    x = torch.randn(2, 3)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
        h = cell(x)
        h = cell(x, h)
    assert h.grad_fn.chain is None
    h.sum().backward()
    assert np.isfinite(cell.weight_hh.grad.numpy()).all()


def test_core_backward_packing_of_another_shape_or_dtype():
    """sequence_backward(packed=) uses a packing only for the shape it was made for (another is
    ignored: the call packs its own) and refuses one of another dtype."""
    from pyrnn import _core
    from pyrnn.functional import cell_spec

    kind = cell_spec("lstm").kind
    rng = np.random.default_rng(0)

    def call(H, dtype=np.float32):
        x = rng.standard_normal((1, 3, 4)).astype(dtype)
        W_ih = rng.standard_normal((4 * H, 4)).astype(dtype)
        W_hh = rng.standard_normal((4 * H, H)).astype(dtype)
        return _core.sequence_forward(kind, x, None, None, W_ih, W_hh, None, None, None, False, True)

    _, h_a, _, ws_a = call(8)
    _, h_b, _, ws_b = call(16)
    dh = np.ones_like(h_b)
    other = _core.pack_backward(ws_a)
    assert other.nbytes > 0
    got = _core.sequence_backward(ws_b, None, dh, None, False, other)
    want = _core.sequence_backward(ws_b, None, dh, None, False)
    for a, b in zip(got, want):
        assert (a is None and b is None) or np.array_equal(a, b)
    same = _core.pack_backward(ws_b)
    for a, b in zip(_core.sequence_backward(ws_b, None, dh, None, False, same), want):
        assert (a is None and b is None) or np.array_equal(a, b)
    _, h_d, _, ws_d = call(16, np.float64)
    with pytest.raises(ValueError, match="another dtype"):
        _core.sequence_backward(ws_d, None, np.ones_like(h_d), None, False, same)


@pytest.mark.parametrize("update", ["fused_adam", "data"])
def test_update_unseen_by_version_counter_between_backward_passes(update):
    """Two backward passes through one graph (a midpoint loss with retain_graph, then the last
    step's) with an update between them that moves no version counter (a fused optimizer, .data):
    the second pass reads the weights again, as torch.nn's does."""
    ours, ref = _pair("LSTMCell", 8, 16)
    xs = torch.randn(6, 4, 8)
    grads = []
    for cell in (ours, ref):
        opt = torch.optim.Adam(cell.parameters(), lr=0.1, fused=True) if update == "fused_adam" else None
        hx, outs = None, []
        for x in xs:
            hx = cell(x, hx)
            outs.append(hx[0])
        outs[2].sum().backward(retain_graph=True)
        if opt is not None:
            opt.step()
        else:
            for p in cell.parameters():
                p.data.add_(p.grad, alpha=-0.5)
        cell.zero_grad()
        outs[-1].sum().backward()
        grads.append([p.grad.clone() for p in cell.parameters()])
    _assert_all_close(*grads)


def test_backward_packing_released_when_the_pass_ends():
    """A loss that reaches only some steps (a readout taken before the last step) leaves steps
    whose backward never runs: the packing still goes when the pass ends."""
    torch.manual_seed(0)
    cell = pt.GRUCell(6, 12)
    fc = torch.nn.Linear(12, 1)
    h, loss = torch.zeros(3, 12), 0
    for x in torch.randn(5, 3, 6):
        loss = loss + fc(h).sum()
        h = cell(x, h)
    chain = h.grad_fn.chain
    assert chain.steps == 5 and chain.forward is not None
    loss.backward()
    assert chain.forward is None and chain.backward is None


def test_forward_packings_held_by_at_most_a_few_chains():
    """Graphs kept without a backward (outputs gathered under grad mode) hold at most _HELD forward
    packings between them; a chain whose packing went packs again if it goes on, with the same bits."""
    torch.manual_seed(0)
    cell = pt.RNNCell(5, 7)
    x = torch.randn(2, 5)
    kept = []
    for _ in range(pt._StepChain._HELD + 4):
        h = cell(x)
        h = cell(x, h)
        kept.append(h)
    chains = [h.grad_fn.chain for h in kept]
    assert sum(c.forward is not None for c in chains) == pt._StepChain._HELD
    assert chains[0].forward is None and chains[-1].forward is not None
    h3 = cell(x, kept[0])  # packs again
    assert chains[0].forward is not None and h3.grad_fn.chain is chains[0]
    with torch.no_grad():
        want = torch.tanh(x @ cell.weight_ih.T + cell.bias_ih + kept[0] @ cell.weight_hh.T + cell.bias_hh)
    torch.testing.assert_close(h3.detach(), want, rtol=1e-5, atol=1e-6)


MODULES = [
    ("GRU", {}),
    ("LSTM", {}),
    ("RNN", {"num_layers": 2, "bidirectional": True}),
    ("LSTM", {"num_layers": 2, "batch_first": True}),
]


def _decode(module, xs, unbatched=False):
    """A decoder's loop: the module called one step at a time, its h_n passed back as hx."""
    hx, outs = None, []
    for x in xs:
        step = x[None] if unbatched else (x[:, None] if module.batch_first else x[None])
        y, hx = module(step, hx)
        outs.append(y)
    return outs, hx


@pytest.mark.parametrize("name,kw", MODULES)
@pytest.mark.parametrize("unbatched", [False, True])
def test_module_called_step_by_step_chains(name, kw, unbatched, monkeypatch):
    """A module called one step at a time with its h_n passed back (torch's seq2seq tutorial's
    decoder) packs once per graph: the same bits as packing per call, torch.nn's gradients."""
    results = []
    for chained in (True, False):
        torch.manual_seed(0)
        module = getattr(pt, name)(6, 10, **kw)
        xs = torch.randn(5, 6) if unbatched else torch.randn(5, 3, 6)
        xs.requires_grad_()
        with monkeypatch.context() as m:
            if not chained:
                _unchained(m)
            outs, hx = _decode(module, xs, unbatched)
            h_n = hx[0] if name == "LSTM" else hx
            if chained:
                chains = pt._chains_given(h_n)
                assert chains is not None and all(c.steps == 5 for c in chains)
                assert len({id(c) for c in chains}) == len(chains)  # one per layer and direction
            sum(o.square().sum() for o in outs).backward()
        results.append((outs, xs.grad, [p.grad for p in module.parameters()]))
    (o1, dx1, g1), (o2, dx2, g2) = results
    for a, b in zip([*o1, dx1, *g1], [*o2, dx2, *g2]):
        assert torch.equal(a, b)
    ref = getattr(torch.nn, name)(6, 10, **kw)
    torch.manual_seed(0)
    ours = getattr(pt, name)(6, 10, **kw)
    ref.load_state_dict(ours.state_dict())
    x = xs.detach().clone().requires_grad_()
    outs, _ = _decode(ref, x, unbatched)
    sum(o.square().sum() for o in outs).backward()
    _assert_all_close([dx1, *g1], [x.grad, *(p.grad for p in ref.parameters())])


def test_module_chain_state_pickles_and_detach_starts_anew():
    """The h_n a step returns pickles and copies as a plain tensor; a detached hx starts a new chain."""
    import copy
    import io

    gru = pt.GRU(4, 6)
    x = torch.randn(1, 2, 4)
    _, h = gru(x)
    _, h = gru(x, h)
    chain = pt._chains_given(h)[0]
    assert chain.steps == 2
    buf = io.BytesIO()
    torch.save(h, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf), h.detach())
    torch.testing.assert_close(copy.deepcopy(h.detach()), h.detach())
    _, h2 = gru(x, h.detach())
    assert pt._chains_given(h2)[0] is not chain
    with torch.no_grad():
        _, h3 = gru(x, h)
    assert pt._chains_given(h3) is None
    key = id(h2)
    del h2
    assert key not in pt._MODULE_CHAINS


@pytest.mark.parametrize("update", ["fused_adam", "data"])
def test_interleaved_decoders_see_an_update_between_their_steps(update):
    """Two decoders on one module, stepped in turn; A's loss goes backward, the weights change in a
    way no version counter sees (a fused optimizer, .data), and B goes on: B's next steps read the
    new weights, as torch.nn's do (any backward call and any optimizer's step drop the forward
    packings of every chain)."""
    got = []
    for mod in (pt, torch.nn):
        torch.manual_seed(0)
        gru = mod.GRU(5, 7, dtype=torch.float64)
        opt = torch.optim.Adam(gru.parameters(), lr=0.1, fused=True)
        torch.manual_seed(1)
        xa, xb = torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(4, 3, 5, dtype=torch.float64)
        ha = hb = None
        ya, yb = [], []
        for t in range(2):
            y, ha = gru(xa[t:t + 1], ha)
            ya.append(y)
            y, hb = gru(xb[t:t + 1], hb)
            yb.append(y)
        sum(y.sum() for y in ya).backward()
        if update == "fused_adam":
            opt.step()
        else:
            for p in gru.parameters():
                p.data.add_(p.grad, alpha=-0.1)
        for t in range(2, 4):
            y, hb = gru(xb[t:t + 1], hb)
            yb.append(y)
        got.append(torch.cat([y.detach() for y in yb]))
    torch.testing.assert_close(got[0], got[1], rtol=1e-12, atol=1e-12)


def test_optimizer_step_drops_forward_packings():
    cell = pt.LSTMCell(3, 4)
    opt = torch.optim.SGD(cell.parameters(), lr=0.1)
    x = torch.randn(2, 3)
    hx = cell(x, cell(x))
    chain = hx[0].grad_fn.chain
    assert chain.forward is not None
    for p in cell.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert chain.forward is None


def test_a_deep_bidirectional_decoder_keeps_every_chain_packed():
    """A 5-layer bidirectional module (10 chains) stepped in a loop packs once per chain."""
    gru = pt.GRU(4, 6, num_layers=5, bidirectional=True)
    calls = []
    real = pt._StepChain._pack_forward

    def counting(self):
        calls.append(self)
        real(self)
    x, h = torch.randn(1, 2, 4), None
    try:
        pt._StepChain._pack_forward = counting
        for _ in range(6):
            _, h = gru(x, h)
    finally:
        pt._StepChain._pack_forward = real
    assert len(calls) == 10 and len({id(c) for c in calls}) == 10


def test_steps_trained_from_several_python_threads():
    """Cells trained step by step from several Python threads at once (a review, 2026-12-05): the
    process-wide list of chains holding a forward packing is changed under a lock (it raised
    "deque mutated during iteration" in most threads), and each thread's gradients equal a serial
    run's bitwise."""
    import sys
    import threading

    import copy

    torch.manual_seed(0)  # (models made here: torch's default generator is one for all threads)
    models = [([pt.GRUCell(4, 4) if j % 2 else pt.LSTMCell(4, 4) for j in range(12)], torch.randn(3, 2, 4))
              for _ in range(4)]
    copies = copy.deepcopy(models)

    def train(k, models=models):
        cells, x = models[k]
        for _ in range(8):
            outs = []
            for c in cells:
                h = None
                for t in range(3):
                    h = c(x[t], h)
                outs.append(h[0] if isinstance(h, tuple) else h)
            torch.stack(outs).sum().backward()
        return [p.grad.clone() for c in cells for p in c.parameters()]

    serial = [train(k, copies) for k in range(4)]
    results, errors = {}, []

    def worker(k):
        try:
            results[k] = train(k)
        except Exception as e:  # (reported below)
            errors.append(f"thread {k}: {type(e).__name__}: {e}")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # (switches threads often: the race showed in most runs)
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    for k in range(4):
        assert all(torch.equal(a, b) for a, b in zip(results[k], serial[k]))
