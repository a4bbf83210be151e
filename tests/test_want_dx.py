"""A backward whose input needs no gradient skips dx (sequence_backward(want_dx=False)): every other
gradient is bitwise the one computed beside dx, in the kernels and through pyrnn.torch's modules and
cells (data fed to a first layer or a cell in a training loop)."""

import numpy as np
import pytest

from pyrnn import _core
from pyrnn.functional import cell_spec

CELLS = [("lstm", {}), ("lstm", {"proj": 3}), ("gru", {}), ("gru", {"reset_after": False}), ("rnn", {}),
         ("rnn", {"nonlinearity": "relu"})]


def _forward(cell, opts, dtype, lengths, reverse, T=5, B=3, I=4, H=6, seed=0):
    rng = np.random.default_rng(seed)
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    P = opts.get("proj", 0)
    Ho = P or H

    def r(*shape):
        return (0.5 * rng.standard_normal(shape)).astype(dtype)
    kind = cell_spec(cell, nonlinearity=opts.get("nonlinearity", "tanh"),
                     reset_after=opts.get("reset_after", True)).kind
    out = _core.sequence_forward(kind, r(T, B, I), r(B, Ho), r(B, H) if cell == "lstm" else None, r(G * H, I),
                                 r(G * H, Ho), r(G * H), r(G * H), lengths, reverse, True, r(P, H) if P else None,
                                 None, None)
    return out, r(T, B, Ho), r(B, Ho), (r(B, H) if cell == "lstm" else None)


@pytest.mark.parametrize("cell,opts", CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lengths,reverse", [(None, False), (None, True), (np.array([5, 2, 4]), False),
                                             (np.array([3, 5, 1]), True)])
def test_core_without_dx_is_bitwise_the_rest(cell, opts, dtype, lengths, reverse):
    (_, _, _, ws), dy, dh_n, dc_n = _forward(cell, opts, dtype, lengths, reverse)
    full = _core.sequence_backward(ws, dy, dh_n, dc_n, True)
    part = _core.sequence_backward(ws, dy, dh_n, dc_n, True, None, False)
    assert full[0] is not None and part[0] is None
    for a, b in zip(full[1:], part[1:]):
        assert (a is None and b is None) or np.array_equal(a, b)
    # with a backward packing too (a step chain's)
    packed = _core.pack_backward(ws)
    for a, b in zip(full[1:], _core.sequence_backward(ws, dy, dh_n, dc_n, True, packed, False)[1:]):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_core_want_dx_keyword():
    (_, _, _, ws), dy, dh_n, dc_n = _forward("gru", {}, np.float32, None, False)
    assert _core.sequence_backward(ws, dy, dh_n, None, want_dx=False)[0] is None
    assert _core.sequence_backward(ws, dy, dh_n, None)[0].shape == (5, 3, 4)


try:
    import torch
    import pyrnn.torch as pt
except ImportError:  # (the core and NumPy tests above and below run without PyTorch)
    torch = pt = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


def _grads(module, x, hx, x_grad):
    module.zero_grad()
    x = x.clone().requires_grad_(x_grad)
    hx = None if hx is None else tuple(h.clone().requires_grad_() for h in hx)
    y, _ = module(x, None if hx is None else (hx if len(hx) > 1 else hx[0]))
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    return ({n: p.grad.clone() for n, p in module.named_parameters()}, x.grad,
            None if hx is None else [h.grad for h in hx])


@needs_torch
@pytest.mark.parametrize("name,kwargs", [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}),
                                         ("GRU", {"reset_after": False}), ("RNN", {"nonlinearity": "relu"})])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_module_input_without_grad(name, kwargs, layers, bidirectional):
    torch.manual_seed(0)
    m = getattr(pt, name)(5, 7, num_layers=layers, bidirectional=bidirectional, **kwargs).double()
    D = 2 if bidirectional else 1
    Ho = kwargs.get("proj_size", 7)
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    hx = (torch.randn(layers * D, 3, Ho, dtype=torch.float64),)
    if name == "LSTM":
        hx += (torch.randn(layers * D, 3, 7, dtype=torch.float64),)
    with_dx, dx, dh = _grads(m, x, hx, True)
    without, none, dh2 = _grads(m, x, hx, False)
    assert dx is not None and none is None
    for n in with_dx:
        assert torch.equal(with_dx[n], without[n]), n
    for a, b in zip(dh, dh2):
        assert torch.equal(a, b)
    # and against torch.nn
    ref = getattr(torch.nn, name)(5, 7, num_layers=layers, bidirectional=bidirectional,
                                  **{k: v for k, v in kwargs.items() if k != "reset_after"}).double()
    if kwargs.get("reset_after") is False:
        return
    ref.load_state_dict(m.state_dict())
    want, _, _ = _grads(ref, x, hx, False)
    for n in want:
        torch.testing.assert_close(without[n], want[n])


@needs_torch
def test_packed_sequence_input_without_grad():
    torch.manual_seed(1)
    m = pt.LSTM(4, 6)
    ref = torch.nn.LSTM(4, 6)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 3, 4)
    lengths = torch.tensor([5, 2, 4])
    for mod in (m, ref):
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        y, _ = mod(packed)
        y.data.square().sum().backward()
    for (n, p), q in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


@needs_torch
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_loop_input_without_grad(name):
    """A cell in a training loop fed data (no gradient): the weights' gradients are bitwise those of
    the same loop with an input that needs one, and match torch.nn's."""
    torch.manual_seed(2)
    cell = getattr(pt, name)(5, 8)
    ref = getattr(torch.nn, name)(5, 8)
    ref.load_state_dict(cell.state_dict())
    xs = torch.randn(7, 4, 5)

    def run(module, x_grad):
        module.zero_grad()
        x = xs.clone().requires_grad_(x_grad)
        h = c = torch.zeros(4, 8)
        for t in range(7):
            if name == "LSTMCell":
                h, c = module(x[t], (h, c))
            else:
                h = module(x[t], h)
        (h * torch.arange(8.0)).sum().backward()
        return {n: p.grad.clone() for n, p in module.named_parameters()}, x.grad

    with_dx, dx = run(cell, True)
    without, none = run(cell, False)
    assert dx is not None and none is None
    for n in with_dx:
        assert torch.equal(with_dx[n], without[n]), n
    want, _ = run(ref, False)
    for n in want:
        torch.testing.assert_close(without[n], want[n])


# ---- the NumPy API: functional backward(input_grad=False), layers' backward(input_grad=False) ----

import pyrnn  # noqa: E402
import pyrnn.functional as F  # noqa: E402


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_functional_input_grad_false(cell):
    (_, _, _, ws), dy, dh_n, dc_n = _forward(cell, {}, np.float64, np.array([5, 3, 4]), False)
    fn = getattr(F, f"{cell}_backward")
    args = (dy, dh_n, dc_n) if cell == "lstm" else (dy, dh_n)
    full, part = fn(ws, *args, return_dh_seq=True), fn(ws, *args, return_dh_seq=True, input_grad=False)
    assert full[0] is not None and part[0] is None
    for a, b in zip(full[1:], part[1:]):
        assert (a is None and b is None) or np.array_equal(a, b)
    g = F.backward(ws, *args, input_grad=False)
    assert g["x"] is None and np.array_equal(g["W_ih"], full[3 if cell == "lstm" else 2])
    with pytest.raises(TypeError, match="input_grad"):
        fn(ws, *args, input_grad="no")


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LayerNormLSTM", "LayerNormGRU"])
@pytest.mark.parametrize("layout", ["time_major", "batch_first", "unbatched"])
def test_layer_backward_input_grad_false(name, layout):
    """layer.backward(..., input_grad=False): dx None, every parameter gradient and dh0 the same
    (2 layers, bidirectional: only the first layer skips its dx)."""
    def run(input_grad):
        layer = getattr(pyrnn, name)(4, 6, num_layers=2, bidirectional=True, batch_first=layout == "batch_first",
                                     dtype=np.float64, seed=3)
        x = np.random.default_rng(4).standard_normal((5, 4) if layout == "unbatched" else (5, 3, 4))
        y, _ = layer(x)
        dy = np.cos(np.arange(y.size)).reshape(y.shape)
        dx, dstate = layer.backward(dy, input_grad=input_grad)
        return dx, dstate, {k: v.copy() for k, v in layer.grads.items()}, x.shape
    dx, dstate, grads, shape = run(True)
    none, dstate2, grads2, _ = run(False)
    assert dx.shape == shape and none is None
    for k in grads:
        assert np.array_equal(grads[k], grads2[k]), k
    for a, b in zip(np.atleast_1d(dstate) if not isinstance(dstate, tuple) else dstate,
                    np.atleast_1d(dstate2) if not isinstance(dstate2, tuple) else dstate2):
        assert np.array_equal(a, b)


def test_layer_backward_input_grad_checked():
    layer = pyrnn.GRU(3, 4)
    y, _ = layer(np.zeros((2, 1, 3), np.float32))
    with pytest.raises(TypeError, match="input_grad"):
        layer.backward(np.ones_like(y), input_grad=None)
