"""pyrnn.torch: autograd drop-ins for torch.nn.LSTM/GRU/RNN and their cells.

Parity with torch.nn (outputs and every gradient, padded and packed input),
gradcheck in float64, a standard training loop, memory sharing, errors, and
how pyrnn's threads and PyTorch's coexist.
"""

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pyrnn  # noqa: E402
import pyrnn.torch as pt  # noqa: E402
from pyrnn import functional as F  # noqa: E402
from pyrnn import _core  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence  # noqa: E402

T, B, I, H = 6, 4, 3, 5
LENGTHS = torch.tensor([4, 6, 1, 4])  # unsorted, with a tie and a full-length sequence

MODES = {
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", {"proj_size": 2}),
    "gru": ("GRU", {}),
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}
CONFIGS = {
    "L1": {},
    "L2-bi-bf": {"num_layers": 2, "bidirectional": True, "batch_first": True},
    "L3-bi-nobias": {"num_layers": 3, "bidirectional": True, "bias": False},
    "L2-bf-nobias": {"num_layers": 2, "batch_first": True, "bias": False},
}
CELLS = {
    "lstm": ("LSTMCell", {}),
    "gru": ("GRUCell", {}),
    "rnn_tanh": ("RNNCell", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNNCell", {"nonlinearity": "relu"}),
}
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}


def _pair(cls, opts, dtype=torch.float64, **kw):
    """A torch.nn module and its pyrnn.torch twin with the same weights."""
    torch.manual_seed(0)
    tm = getattr(nn, cls)(I, H, **opts, **kw, dtype=dtype)
    pm = getattr(pt, cls)(I, H, **opts, **kw, dtype=dtype)
    pm.load_state_dict(tm.state_dict())
    return tm, pm


def _states(m, batch, dtype, unbatched=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    LD = m.num_layers * (2 if m.bidirectional else 1)
    lead = (LD,) if unbatched else (LD, batch)
    h0 = torch.randn(lead + (m.proj_size or m.hidden_size,), generator=g, dtype=dtype)
    if isinstance(m, nn.LSTM):
        return h0, torch.randn(lead + (m.hidden_size,), generator=g, dtype=dtype)
    return h0


def _leaf(t):
    if t is None:
        return None
    if isinstance(t, tuple):
        return tuple(_leaf(s) for s in t)
    return t.detach().clone().requires_grad_(True)


def _run(m, x, hx, lengths=None, batch_first=False, seed=2):
    """Forward and backward of a random linear function of all outputs; returns a dict."""
    x, hx = _leaf(x), _leaf(hx)
    m.zero_grad(set_to_none=True)
    inp = x if lengths is None else pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    out, st = m(inp, hx)
    y = out.data if isinstance(out, PackedSequence) else out
    sts = st if isinstance(st, tuple) else (st,)
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    for s in sts:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    loss.backward()
    res = {"y": y, "dx": x.grad}
    res.update({f"state{i}": s for i, s in enumerate(sts)})
    hxs = () if hx is None else (hx if isinstance(hx, tuple) else (hx,))
    res.update({f"dstate{i}": h.grad for i, h in enumerate(hxs)})
    res.update({"d" + n: p.grad for n, p in m.named_parameters()})
    if isinstance(out, PackedSequence):
        res.update(batch_sizes=out.batch_sizes, sorted_indices=out.sorted_indices,
                   unsorted_indices=out.unsorted_indices)
    return res


def _assert_same(a, e):
    assert a.keys() == e.keys()
    for k in e:
        if e[k] is None:
            assert a[k] is None, k
        elif e[k].is_floating_point():
            torch.testing.assert_close(a[k], e[k], **TOL[e[k].dtype], msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(a[k], e[k]), k


def _input(batch_first, dtype=torch.float64, seed=3, batch=B):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, T, I) if batch_first else (T, batch, I), generator=g, dtype=dtype)


# ------------------------------------------------------- parity with torch.nn --

@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("mode", list(MODES))
def test_matches_torch_nn(mode, config, packed, with_hx):
    cls, opts = MODES[mode]
    kw = CONFIGS[config]
    tm, pm = _pair(cls, opts, **kw)
    bf = kw.get("batch_first", False)
    x = _input(bf)
    hx = _states(tm, B, torch.float64) if with_hx else None
    lengths = LENGTHS if packed else None
    _assert_same(_run(pm, x, hx, lengths, bf), _run(tm, x, hx, lengths, bf))


@pytest.mark.parametrize("mode", list(MODES))
def test_matches_torch_nn_float32(mode):
    cls, opts = MODES[mode]
    tm, pm = _pair(cls, opts, dtype=torch.float32, num_layers=2, bidirectional=True)
    x = _input(False, torch.float32)
    hx = _states(tm, B, torch.float32)
    _assert_same(_run(pm, x, hx, LENGTHS), _run(tm, x, hx, LENGTHS))


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("mode", list(MODES))
def test_unbatched_matches_torch_nn(mode, with_hx):
    cls, opts = MODES[mode]
    tm, pm = _pair(cls, opts, num_layers=2, bidirectional=True)
    x = _input(False)[:, 0]
    hx = _states(tm, 1, torch.float64, unbatched=True) if with_hx else None
    res = _run(pm, x, hx)
    assert res["y"].shape == (T, 2 * (pm.proj_size or H))
    _assert_same(res, _run(tm, x, hx))


@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_output_is_packed_like_torch(enforce_sorted):
    tm, pm = _pair("GRU", {}, bidirectional=True)
    x = _input(False)
    lengths = LENGTHS.sort(descending=True).values if enforce_sorted else LENGTHS
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    out, h_n = pm(packed)
    with torch.no_grad():
        out_t, h_t = tm(packed)
    assert isinstance(out, PackedSequence)
    assert torch.equal(out.batch_sizes, out_t.batch_sizes)
    for a, e in [(out.sorted_indices, out_t.sorted_indices), (out.unsorted_indices, out_t.unsorted_indices)]:
        assert (a is None and e is None) or torch.equal(a, e)
    torch.testing.assert_close(out.data, out_t.data, **TOL[torch.float64])
    torch.testing.assert_close(h_n, h_t, **TOL[torch.float64])  # the caller's batch order


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_reset_after_matches_numpy_layer(reset_after):
    """reset_after=False has no torch.nn twin: check it against pyrnn.GRU (NumPy), gradients included."""
    torch.manual_seed(0)
    pm = pt.GRU(I, H, num_layers=2, bidirectional=True, reset_after=reset_after, dtype=torch.float64)
    nm = pyrnn.GRU(I, H, num_layers=2, bidirectional=True, reset_after=reset_after, dtype=np.float64)
    nm.load_state_dict(pm.state_dict())
    x, h0 = _input(False), _states(pm, B, torch.float64)
    res = _run(pm, x, h0, LENGTHS)
    y, h_n = nm(x.numpy(), h0.numpy(), lengths=LENGTHS.numpy())
    # the packed output holds the padded output's valid steps, in sorted order
    order = torch.sort(LENGTHS, descending=True, stable=True).indices
    y_packed = pack_padded_sequence(torch.from_numpy(y)[:, order], LENGTHS[order]).data
    torch.testing.assert_close(res["y"], y_packed, **TOL[torch.float64])
    torch.testing.assert_close(res["state0"], torch.from_numpy(h_n), **TOL[torch.float64])
    # the same cotangents, padded for the NumPy layer
    g = torch.Generator().manual_seed(2)
    dy_packed = torch.randn(res["y"].shape, generator=g, dtype=torch.float64)
    dh_n = torch.randn(h_n.shape, generator=g, dtype=torch.float64)
    dy = torch.zeros(y.shape, dtype=torch.float64)
    dy[:, order] = torch.nn.utils.rnn.pad_packed_sequence(PackedSequence(dy_packed, res["batch_sizes"]))[0]
    dx, dh0 = nm.backward(dy.numpy(), dh_n.numpy())
    torch.testing.assert_close(res["dx"], torch.from_numpy(dx), **TOL[torch.float64])
    torch.testing.assert_close(res["dstate0"], torch.from_numpy(dh0), **TOL[torch.float64])
    for name, _ in pm.named_parameters():
        torch.testing.assert_close(res["d" + name], torch.from_numpy(nm.grads[name]), **TOL[torch.float64])


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("mode", list(CELLS))
def test_cell_matches_torch_nn(mode, bias, with_hx, unbatched):
    cls, opts = CELLS[mode]
    torch.manual_seed(0)
    tc = getattr(nn, cls)(I, H, bias=bias, **opts, dtype=torch.float64)
    pc = getattr(pt, cls)(I, H, bias=bias, **opts, dtype=torch.float64)
    pc.load_state_dict(tc.state_dict())
    g = torch.Generator().manual_seed(4)
    lead = () if unbatched else (B,)
    x = torch.randn(lead + (I,), generator=g, dtype=torch.float64)
    hx = None
    if with_hx:
        hx = torch.randn(lead + (H,), generator=g, dtype=torch.float64)
        if mode == "lstm":
            hx = (hx, torch.randn(lead + (H,), generator=g, dtype=torch.float64))

    def run(cell):
        xs, hxs = _leaf(x), _leaf(hx)
        cell.zero_grad(set_to_none=True)
        out = cell(xs, hxs)
        outs = out if isinstance(out, tuple) else (out,)
        gg = torch.Generator().manual_seed(5)
        sum(((o * torch.randn(o.shape, generator=gg, dtype=o.dtype)).sum() for o in outs)).backward()
        res = {f"out{i}": o for i, o in enumerate(outs)}
        res["dx"] = xs.grad
        hxl = () if hxs is None else (hxs if isinstance(hxs, tuple) else (hxs,))
        res.update({f"dh{i}": h.grad for i, h in enumerate(hxl)})
        res.update({"d" + n: p.grad for n, p in cell.named_parameters()})
        return res

    _assert_same(run(pc), run(tc))
    with torch.no_grad():  # the one-step fast path (no autograd)
        fast = pc(x, hx)
        want = tc(x, hx)
    for a, e in zip(fast if isinstance(fast, tuple) else (fast,), want if isinstance(want, tuple) else (want,)):
        assert not a.requires_grad
        torch.testing.assert_close(a, e, **TOL[torch.float64])


def test_cell_sees_every_weight_update():
    """Without gradients every way of changing a weight (optimizer step, in-place op,
    load_state_dict, .data replaced, a new Parameter) is seen at the next call."""
    torch.manual_seed(0)
    tc = nn.LSTMCell(I, H)
    pc = pt.LSTMCell(I, H)
    pc.load_state_dict(tc.state_dict())
    x = torch.randn(B, I)

    def check():
        with torch.no_grad():
            for a, e in zip(pc(x), tc(x)):
                torch.testing.assert_close(a, e, **TOL[torch.float32])

    check()
    check()  # the second call reuses the packed weights
    opt_p, opt_t = torch.optim.SGD(pc.parameters(), lr=0.5), torch.optim.SGD(tc.parameters(), lr=0.5)
    for m, opt in ((pc, opt_p), (tc, opt_t)):
        m(x)[0].sum().backward()
        opt.step()
    check()
    with torch.no_grad():
        pc.weight_hh.mul_(-1.0)
        tc.weight_hh.mul_(-1.0)
    check()
    sd = {k: torch.randn_like(v) for k, v in tc.state_dict().items()}
    pc.load_state_dict(sd)
    tc.load_state_dict(sd)
    check()
    new = torch.randn_like(tc.weight_ih)
    pc.weight_ih.data = new.clone()
    tc.weight_ih.data = new.clone()
    check()
    pc.bias_hh = nn.Parameter(torch.zeros(4 * H))
    tc.bias_hh = nn.Parameter(torch.zeros(4 * H))
    check()
    pc.double()
    tc.double()
    x = x.double()
    with torch.no_grad():
        for a, e in zip(pc(x), tc(x)):
            assert a.dtype == torch.float64
            torch.testing.assert_close(a, e, **TOL[torch.float64])
    copy.deepcopy(pc)  # the cache does not travel with the module


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_layer_sees_every_weight_update(mode):
    """Without gradients, updates of any kind are seen at the next call, including those
    that bypass torch's version counter (a fused optimizer, .data in place, writes
    through a NumPy view): why pyrnn.torch does not cache packed weights by version."""
    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True, **({"proj_size": 3} if mode == "LSTM" else {}))
    tm, pm = getattr(nn, mode)(I, H, **kw), getattr(pt, mode)(I, H, **kw)
    pm.load_state_dict(tm.state_dict())
    x = torch.randn(5, B, I)

    def check():
        with torch.no_grad():
            a, e = pm(x)[0], tm(x)[0]
        torch.testing.assert_close(a, e, **TOL[torch.float32])

    check()
    check()
    for m in (pm, tm):
        opt = torch.optim.Adam(m.parameters(), lr=0.1)
        m(x)[0].sum().backward()
        opt.step()
    check()
    with torch.no_grad():
        for m in (pm, tm):
            getattr(m, "weight_hh_l1_reverse").mul_(-2.0)
    check()
    sd = {k: torch.randn_like(v) for k, v in tm.state_dict().items()}
    pm.load_state_dict(sd)
    tm.load_state_dict(sd)
    check()
    for m in (pm, tm):
        opt = torch.optim.Adam(m.parameters(), lr=0.1, fused=True)
        m(x)[0].sum().backward()
        opt.step()
    check()
    for m in (pm, tm):
        m.weight_ih_l0.data.mul_(0.5)
        m.weight_hh_l0.detach().numpy()[:] *= -1.0
    check()
    with torch.inference_mode():
        im = getattr(pt, mode)(I, H, **kw)
        im.load_state_dict(tm.state_dict())
        torch.testing.assert_close(im(x)[0], tm(x)[0], **TOL[torch.float32])


def test_gru_cell_reset_before_matches_numpy_cell():
    torch.manual_seed(0)
    pc = pt.GRUCell(I, H, reset_after=False, dtype=torch.float64)
    nc = pyrnn.GRUCell(I, H, reset_after=False, dtype=np.float64)
    nc.load_state_dict(pc.state_dict())
    g = torch.Generator().manual_seed(4)
    x, h = torch.randn(B, I, generator=g, dtype=torch.float64), torch.randn(B, H, generator=g, dtype=torch.float64)
    xs, hs = _leaf(x), _leaf(h)
    h1 = pc(xs, hs)
    dh1 = torch.randn(B, H, generator=g, dtype=torch.float64)
    (h1 * dh1).sum().backward()
    torch.testing.assert_close(h1, torch.from_numpy(nc(x.numpy(), h.numpy())), **TOL[torch.float64])
    dx, dh = nc.backward(dh1.numpy())
    torch.testing.assert_close(xs.grad, torch.from_numpy(dx), **TOL[torch.float64])
    torch.testing.assert_close(hs.grad, torch.from_numpy(dh), **TOL[torch.float64])
    for name, p in pc.named_parameters():
        torch.testing.assert_close(p.grad, torch.from_numpy(nc.grads[name]), **TOL[torch.float64])
    assert "reset_after=False" in repr(pc)


# -------------------------------------------------------------- gradcheck --

GRADCHECK_MODULES = {
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", {"proj_size": 1}),
    "gru": ("GRU", {}),
    "gru_reset_before": ("GRU", {"reset_after": False}),
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}


def _gradcheck(m, inputs, call, seed=None):
    """gradcheck of call(module, *inputs) with respect to the inputs and every parameter."""
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    n_in = len(inputs)

    def fn(*args):
        if seed is not None:
            torch.manual_seed(seed)  # the same dropout masks at every evaluation
        return torch.func.functional_call(m, dict(zip(names, args[n_in:])), call(*args[:n_in]))

    def flat(*args):
        out = fn(*args)
        leaves = []
        for o in (out if isinstance(out, tuple) else (out,)):
            if isinstance(o, PackedSequence):
                leaves.append(o.data)
            elif isinstance(o, tuple):
                leaves.extend(o)
            else:
                leaves.append(o)
        return tuple(leaves)

    assert torch.autograd.gradcheck(flat, tuple(inputs) + tuple(params))


@pytest.mark.parametrize("mode", list(GRADCHECK_MODULES))
def test_gradcheck_modules(mode):
    cls, opts = GRADCHECK_MODULES[mode]
    torch.manual_seed(0)
    m = getattr(pt, cls)(2, 2, num_layers=2, bidirectional=True, **opts, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 3])
    states = _states(m, 2, torch.float64)
    states = tuple(_leaf(s) for s in (states if isinstance(states, tuple) else (states,)))

    def call(x, *hx):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        return packed, (hx if len(hx) == 2 else hx[0])

    _gradcheck(m, (x,) + states, call)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_gradcheck_with_dropout_and_recurrent_dropout(mode):
    cls = MODES[mode][0]
    torch.manual_seed(0)
    m = getattr(pt, cls)(2, 3, num_layers=2, dropout=0.4, recurrent_dropout=0.3, dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    _gradcheck(m, (x,), lambda x: (x,), seed=11)


@pytest.mark.parametrize("mode", ["lstm", "gru", "gru_reset_before", "rnn_tanh", "rnn_relu"])
def test_gradcheck_cells(mode):
    cls, opts = {"gru_reset_before": ("GRUCell", {"reset_after": False})}.get(mode, CELLS.get(mode, (None, None)))
    torch.manual_seed(0)
    c = getattr(pt, cls)(2, 3, **opts, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    if mode == "lstm":
        cc = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
        _gradcheck(c, (x, h, cc), lambda x, h, cc: (x, (h, cc)))
    else:
        _gradcheck(c, (x, h), lambda x, h: (x, h))


# ---------------------------------------------------------- training loops --

class _Classifier(nn.Module):
    def __init__(self, rnn_cls):
        super().__init__()
        self.rnn = rnn_cls(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
        self.head = nn.Linear(2 * H, 2, dtype=torch.float64)

    def forward(self, x, lengths):
        _, (h_n, _) = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return self.head(torch.cat([h_n[-2], h_n[-1]], 1))


def test_training_loop_matches_torch_nn():
    """Adam, clip_grad_norm_ and loss.backward() unchanged: same parameters as torch.nn.LSTM after a few steps."""
    torch.manual_seed(0)
    ref = _Classifier(nn.LSTM)
    model = _Classifier(pt.LSTM)
    model.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(6)
    x = torch.randn(T, 8, I, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (8,), generator=g)
    target = torch.randint(0, 2, (8,), generator=g)
    for m in (ref, model):
        opt = torch.optim.Adam(m.parameters(), lr=0.05)
        for _ in range(4):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(x, lengths), target)
            loss.backward()
            nn.utils.clip_grad_norm_(m.parameters(), 0.5)
            opt.step()
    for (name, p), q in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")


def test_float32_training_reduces_loss():
    torch.manual_seed(0)
    model = _Classifier(pt.LSTM).float()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(T, 16, I, generator=g)
    lengths = torch.randint(1, T + 1, (16,), generator=g)
    target = (x[0, :, 0] > 0).long()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x, lengths), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ------------------------------------------------------ drop-in behaviour --

@pytest.mark.parametrize("mode", list(MODES))
def test_drop_in_init_state_dict_and_repr(mode):
    cls, opts = MODES[mode]
    torch.manual_seed(0)
    tm = getattr(nn, cls)(I, H, 2, **opts)
    torch.manual_seed(0)
    pm = getattr(pt, cls)(I, H, 2, **opts)  # positional num_layers, as torch.nn takes it
    assert isinstance(pm, getattr(nn, cls))
    sd_t, sd_p = tm.state_dict(), pm.state_dict()
    assert list(sd_t) == list(sd_p)
    for k in sd_t:
        assert torch.equal(sd_t[k], sd_p[k]), k  # same initialisation from the same seed
    with torch.no_grad():
        for p in pm.parameters():
            p.mul_(0.5)
    tm.load_state_dict(pm.state_dict())  # and back
    assert all(torch.equal(a, b) for a, b in zip(tm.parameters(), pm.parameters()))
    assert repr(pm).startswith(cls + "(")
    clone = pickle.loads(pickle.dumps(pm))
    assert type(clone) is type(pm) and all(torch.equal(a, b) for a, b in zip(clone.parameters(), pm.parameters()))


def test_extras_in_constructor_and_repr():
    m = pt.GRU(I, H, reset_after=False, recurrent_dropout=0.25)
    assert m.reset_after is False and m.recurrent_dropout == 0.25
    assert "reset_after=False" in repr(m) and "recurrent_dropout=0.25" in repr(m)
    assert "nonlinearity='relu'" in repr(pt.RNN(I, H, nonlinearity="relu"))
    with pytest.raises(ValueError, match="recurrent_dropout"):
        pt.LSTM(I, H, recurrent_dropout=1.5)
    with pytest.raises(ValueError, match="proj_size"):
        pt.GRU(I, H, proj_size=2)


def test_dropout_between_layers_draws_as_torch_nn():
    tm, pm = _pair("LSTM", {}, num_layers=3, dropout=0.5, bidirectional=True)
    x = _input(False)
    torch.manual_seed(7)
    a = tm(x)[0]
    torch.manual_seed(7)
    b = pm(x)[0]
    torch.testing.assert_close(b, a, **TOL[torch.float64])  # the same masks from torch's RNG
    assert torch.equal(pm.eval()(x)[0], pm(x)[0])  # eval: no dropout


@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_dropout_between_layers_on_packed_input_draws_as_torch_nn(enforce_sorted):
    """torch.nn drops units of the packed data between layers: the same draws, same RNG state after."""
    tm, pm = _pair("GRU", {}, num_layers=3, dropout=0.5, bidirectional=True)
    lengths = torch.tensor([T, 2, T - 1, 1]) if not enforce_sorted else torch.tensor([T, T - 1, 2, 1])
    xp = pack_padded_sequence(_input(False), lengths, enforce_sorted=enforce_sorted)
    out = []
    for m in (tm, pm):
        torch.manual_seed(7)
        out.append((pad_packed_sequence(m(xp)[0])[0], torch.rand(3)))
    torch.testing.assert_close(out[1][0], out[0][0], **TOL[torch.float64])
    assert torch.equal(out[1][1], out[0][1])


def test_recurrent_dropout_is_one_mask_per_sequence():
    """ReLU RNN, W_ih = 0, W_hh = I: h_t = h_{t-1} * mask, so the same units stay dropped at every step."""
    m = pt.RNN(2, 400, nonlinearity="relu", bias=False, recurrent_dropout=0.5, dtype=torch.float64)
    with torch.no_grad():
        m.weight_ih_l0.zero_()
        m.weight_hh_l0.copy_(torch.eye(400))
    x, h0 = torch.zeros(5, 3, 2, dtype=torch.float64), torch.ones(1, 3, 400, dtype=torch.float64)
    y, _ = m(x, h0)
    dropped = y[0] == 0
    assert 0.3 < dropped.double().mean() < 0.7
    for t in range(5):
        assert torch.equal(y[t] == 0, dropped)
        torch.testing.assert_close(y[t][~dropped], torch.full_like(y[t][~dropped], 2.0 ** (t + 1)))
    assert not torch.equal(m(x, h0)[0] == 0, y == 0)  # a fresh mask per call
    assert torch.equal(m.eval()(x, h0)[0], torch.ones(5, 3, 400, dtype=torch.float64))


def test_no_grad_and_inference_mode_match_autograd_path():
    tm, pm = _pair("LSTM", {"proj_size": 2}, num_layers=2, bidirectional=True)
    x = _input(False)
    y, (h, c) = pm(x)
    assert y.requires_grad
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            y2, (h2, c2) = pm(x)
        assert not y2.requires_grad
        for a, e in [(y2, y), (h2, h), (c2, c)]:
            assert torch.equal(a, e.detach())


def test_kernels_share_tensor_memory(monkeypatch):
    """Contiguous tensors reach the kernel as views; its outputs become tensors without copies, but
    for a training call's y, which the workspace keeps for backward (the caller gets a copy)."""
    seen = {}
    real = _core.sequence_forward

    def spy(kind, x, h0, c0, W_ih, W_hh, b_ih, b_hh, *rest, **kw):
        out = real(kind, x, h0, c0, W_ih, W_hh, b_ih, b_hh, *rest, **kw)
        seen.update(x=x.ctypes.data, h0=h0.ctypes.data, c0=c0.ctypes.data, W_ih=W_ih.ctypes.data,
                    W_hh=W_hh.ctypes.data, b_ih=b_ih.ctypes.data, y=out[0].ctypes.data, h_n=out[1].ctypes.data)
        return out

    monkeypatch.setattr(_core, "sequence_forward", spy)
    for dtype in (torch.float32, torch.float64):
        m = pt.LSTM(I, H, dtype=dtype)
        x = _input(False, dtype).requires_grad_(True)
        h0, c0 = _states(m, B, dtype)
        y, (h_n, _) = m(x, (h0, c0))
        assert seen == {"x": x.data_ptr(), "h0": h0.data_ptr(), "c0": c0.data_ptr(),
                        "W_ih": m.weight_ih_l0.data_ptr(), "W_hh": m.weight_hh_l0.data_ptr(),
                        "b_ih": m.bias_ih_l0.data_ptr(), "y": seen["y"], "h_n": seen["h_n"]}
        assert seen["y"] != y.data_ptr()
        y.sum().backward()  # the workspace still refers to those same buffers
        with torch.no_grad():
            y2, _ = m(x, (h0, c0))
        assert seen["y"] == y2.data_ptr()  # no workspace: no copy


def test_inplace_change_before_backward_raises():
    m = pt.LSTM(I, H, dtype=torch.float64)
    y, _ = m(_input(False))
    with torch.no_grad():
        m.weight_hh_l0.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("cls", ["GRU", "RNN"])
def test_inplace_ops_on_the_output_and_biases_as_torch_allows(cls):
    """torch.nn lets a GRU's or RNN's output and biases change in place before backward (a residual
    y += x, ReLU(inplace=True)); pyrnn.torch gives the gradients of the values at the forward."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(I, I, dtype=torch.float64)
    m = getattr(pt, cls)(I, I, dtype=torch.float64)
    m.load_state_dict(ref.state_dict())
    x = _input(False).requires_grad_(True)
    grads = []
    for mod in (ref, m):
        x.grad = None
        mod.zero_grad()
        y, _ = mod(x)
        y.add_(x).relu_()  # in place, on the output
        with torch.no_grad():
            mod.bias_hh_l0.add_(1.0)
        (y * y).sum().backward()
        with torch.no_grad():
            mod.bias_hh_l0.sub_(1.0)
        grads.append([x.grad.clone()] + [p.grad.clone() for p in mod.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------ errors --

def test_double_backward_raises_clearly():
    m = pt.GRU(I, H, num_layers=2, dtype=torch.float64)
    x = _input(False).requires_grad_(True)
    y, _ = m(x)
    (g,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    (g0,) = torch.autograd.grad((m(x)[0] ** 2).sum(), x)
    torch.testing.assert_close(g, g0)  # first-order gradients are right under create_graph=True
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        g.sum().backward()
    c = pt.LSTMCell(I, H, dtype=torch.float64)
    h, _ = c(x[0])
    (gp,) = torch.autograd.grad(h.sum(), c.weight_hh, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.grad(gp.sum(), c.weight_hh)


@pytest.mark.parametrize("make", [lambda: pt.GRU(I, H, dtype=torch.float64),
                                  lambda: pt.LayerNormLSTM(I, H, dtype=torch.float64)])
def test_second_derivatives_through_the_incoming_gradient_raise(make):
    """A second derivative that runs only through the gradient fed into backward (a gradient
    penalty's d/dw of a head weight, autograd.functional.jvp's double-backward trick) raised
    nothing and came back None or zero; it must raise as every other double backward."""
    m = make()
    x = _input(False).requires_grad_(True)
    w = torch.randn(H, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad((m(x)[0] * w).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.grad(gx.pow(2).sum(), w, allow_unused=True)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        torch.autograd.functional.jvp(lambda x: m(x)[0], x.detach(), torch.ones_like(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own use of torch.jit.script in is_grads_batched
def test_forward_mode_and_batched_gradients_raise():
    import torch.autograd.forward_ad as fwAD

    for m in (pt.GRU(I, H), pt.LSTMCell(I, H), pt.LayerNormGRU(I, H)):
        x = _input(False, torch.float32)[0 if isinstance(m, nn.LSTMCell) else slice(None)]
        for grad in (False, True):  # the inference path dropped the tangent
            m.requires_grad_(grad)
            with fwAD.dual_level(), torch.set_grad_enabled(grad), \
                    pytest.raises(NotImplementedError, match="forward.mode AD"):
                m(fwAD.make_dual(x, torch.ones_like(x)))
    m = pt.GRU(I, H)
    x = _input(False, torch.float32).requires_grad_(True)
    y = m(x)[0]
    with pytest.raises(RuntimeError, match="batched gradients"):
        torch.autograd.grad(y, x, torch.ones(2, *y.shape), is_grads_batched=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_jit_trace_records_the_operator():
    """Under torch.no_grad the eager path's NumPy results would be traced as constants."""
    m = pt.LSTM(I, H, num_layers=2).eval()
    ref = nn.LSTM(I, H, num_layers=2)
    ref.load_state_dict(m.state_dict())
    x, x2 = _input(False, torch.float32), _input(False, torch.float32) + 1
    with torch.no_grad():
        traced = torch.jit.trace(m, x)
        torch.testing.assert_close(traced(x2)[0], ref(x2)[0])
    traced = torch.jit.trace(m, x, check_trace=False)
    y = traced(x2)[0]
    torch.testing.assert_close(y, ref(x2)[0])
    y.sum().backward()
    assert m.weight_hh_l0.grad is not None


def test_non_cpu_tensors_raise():
    m = pt.LSTM(I, H, device="meta")
    with pytest.raises(RuntimeError, match="CPU only.*meta"):
        m(torch.empty(T, B, I, device="meta"))
    with pytest.raises(RuntimeError, match="CPU only.*meta"):
        pt.LSTM(I, H)(torch.empty(T, B, I, device="meta"))
    with pytest.raises(RuntimeError, match="CPU only.*meta"):
        pt.GRUCell(I, H)(torch.zeros(B, I), torch.empty(B, H, device="meta"))


def test_bad_dtypes_raise():
    with pytest.raises(TypeError, match="float32 and float64.*float16"):
        pt.LSTM(I, H, dtype=torch.float16)(torch.zeros(T, B, I, dtype=torch.float16))
    # (InputError: a ValueError, and the RuntimeError torch.nn raises)
    with pytest.raises(pt.InputError, match="does not match weight dtype"):
        pt.GRU(I, H)(torch.zeros(T, B, I, dtype=torch.float64))
    with pytest.raises(pt.InputError, match="does not match weight dtype"):
        pt.RNN(I, H)(torch.zeros(T, B, I), torch.zeros(1, B, H, dtype=torch.float64))
    with pytest.raises(pt.InputError, match="does not match weight dtype"):
        pt.RNNCell(I, H)(torch.zeros(B, I, dtype=torch.float64))
    with pytest.raises(pt.InputError, match=r"\.to\(torch.float32\) \(pyrnn's kernels compute in float32 or float64"):
        pt.GRU(I, H)(torch.zeros(T, B, I, dtype=torch.bfloat16))  # no advice to convert the model to bf16
    with pytest.raises(TypeError, match="torch.Tensor"):
        pt.LSTM(I, H)(np.zeros((T, B, I), np.float32))


def test_bad_shapes_raise():
    m = pt.LSTM(I, H, num_layers=2)
    x = torch.zeros(T, B, I)
    with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size \(2, 4, 5\), got \[1, 4, 5\]"):
        m(x, (torch.zeros(1, B, H), torch.zeros(2, B, H)))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[1\] size"):
        m(x, (torch.zeros(2, B, H), torch.zeros(2, B, H + 1)))
    with pytest.raises(RuntimeError, match="should also be 3-D"):
        m(x, (torch.zeros(2, H), torch.zeros(2, H)))
    with pytest.raises(TypeError, match="tuple"):
        m(x, torch.zeros(2, B, H))
    with pytest.raises(TypeError, match=r"hx must hold both h and c \(or be None\), got \(NoneType, Tensor\)"):
        pt.LSTMCell(I, H)(x[0], (None, torch.zeros(B, H)))  # torch.nn.LSTMCell raises too
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        m(torch.zeros(T, B, I + 1))
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D"):
        m(torch.zeros(T, B, I, 1))
    with pytest.raises(pt.InputError, match="larger than 0"):
        m(torch.zeros(0, B, I))
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        pt.GRU(I, H)(x, torch.zeros(1, B + 1, H))
    cell = pt.LSTMCell(I, H)
    with pytest.raises(RuntimeError, match="hx\\[0\\] has shape"):
        cell(torch.zeros(B, I), (torch.zeros(B + 1, H), torch.zeros(B, H)))
    with pytest.raises(ValueError, match="Expected input to be 1D or 2D"):
        cell(torch.zeros(1, B, I))
    with pytest.raises(RuntimeError, match="inconsistent input_size"):
        cell(torch.zeros(B, I + 1))
    with pytest.raises(RuntimeError, match="to be 2D like the input"):
        pt.RNNCell(I, H)(torch.zeros(1, I), torch.zeros(H))


@pytest.mark.parametrize("mode", ["GRU", "LSTMCell"])
def test_cpu_autocast_runs_in_the_weights_dtype(mode):
    """Under torch.autocast("cpu", bfloat16) a Linear's output is bfloat16: pyrnn runs it in float32
    (its kernels' precision), with gradients back through the cast."""
    lin = torch.nn.Linear(I, I)
    m = getattr(pt, mode)(I, H)
    x = torch.randn(T, B, I) if mode == "GRU" else torch.randn(B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = lin(x)
        assert z.dtype == torch.bfloat16
        out = m(z)
    y = out[0]
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, m(z.float())[0])
    y.sum().backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


# ----------------------------------------------------------------- threads --

def _train_step(m, x):
    m.zero_grad(set_to_none=True)
    y, (h, c) = m(x)
    (y.square().sum() + h.sum() + c.sum()).backward()
    return [y.detach()] + [p.grad.clone() for p in m.parameters()]


def test_pyrnn_and_torch_thread_settings_are_independent(threads):
    """pyrnn.set_num_threads sets pyrnn's kernels only, torch.set_num_threads torch's ops only; a
    training step changes neither, and results are bitwise identical for any pyrnn thread count."""
    before = torch.get_num_threads()
    m = pt.LSTM(I, 64, num_layers=2, bidirectional=True)
    x = torch.randn(T, 16, I)
    results = []
    try:
        for n_pyrnn, n_torch in [(1, 2), (2, 1), (2, 2)]:
            threads(n_pyrnn)
            torch.set_num_threads(n_torch)
            results.append(_train_step(m, x))
            assert pyrnn.get_num_threads() == n_pyrnn
            assert torch.get_num_threads() == n_torch
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_default_threads_do_not_oversubscribe():
    """Each library alone uses at most the cores this process may run on; pyrnn's kernels run on the
    calling thread while torch's pool waits, so together no more than that are busy."""
    from pyrnn import _core

    if "OMP_NUM_THREADS" in os.environ:
        assert pyrnn.get_num_threads() >= 1
    else:
        assert pyrnn.get_num_threads() <= _core.num_procs()
    assert torch.get_num_threads() <= max(_core.num_procs(), os.cpu_count() or 1)


def test_omp_num_threads_sets_both_libraries():
    """What torchrun does for several processes per machine: OMP_NUM_THREADS=1 sets torch's and pyrnn's
    thread counts (pyrnn reads it at import), and a training step runs."""
    code = ("import torch, pyrnn, pyrnn.torch as pt\n"
            "m = pt.LSTM(3, 8)\n"
            "y, _ = m(torch.randn(4, 2, 3)); y.sum().backward()\n"
            "print(torch.get_num_threads(), pyrnn.get_num_threads())\n")
    root = str(Path(pyrnn.__file__).resolve().parent.parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([root] + ([os.environ["PYTHONPATH"]] if "PYTHONPATH" in os.environ else []))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]
