"""pyrnn.RNNCell / LSTMCell / GRUCell against torch.nn cells and the sequence kernels."""

import re

import numpy as np
import pytest

import pyrnn
from pyrnn.testing import TOLERANCES

CELLS = {"lstm": ("LSTMCell", {}), "gru": ("GRUCell", {}), "rnn_tanh": ("RNNCell", {}),
         "rnn_relu": ("RNNCell", {"nonlinearity": "relu"})}


def _close(a, e, dtype, name):
    tol = TOLERANCES[np.dtype(dtype)] if dtype == np.float64 else {"rtol": 1e-5, "atol": 1e-5}
    np.testing.assert_allclose(a, e, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, float(np.abs(e).max())),
                               err_msg=name)


@pytest.mark.parametrize("H", [1, 7, 33, 100])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_step_and_backward_match_torch(cell, dtype, H, isa):
    torch = pytest.importorskip("torch")
    cls, kw = CELLS[cell]
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    tc = getattr(torch.nn, cls)(5, H, **kw).to(tdt)
    pc = getattr(pyrnn, cls)(5, H, **kw, dtype=dtype)
    pc.load_state_dict(tc.state_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5)).astype(dtype)
    h = rng.standard_normal((3, H)).astype(dtype)
    c = rng.standard_normal((3, H)).astype(dtype)
    dh1 = rng.standard_normal((3, H)).astype(dtype)
    dc1 = rng.standard_normal((3, H)).astype(dtype)
    xt, ht, ct = (torch.tensor(a, requires_grad=True) for a in (x, h, c))
    if cls == "LSTMCell":
        h1t, c1t = tc(xt, (ht, ct))
        h1, c1 = pc(x, (h, c))
        _close(c1, c1t.detach().numpy(), dtype, "c1")
        ((h1t * torch.tensor(dh1)).sum() + (c1t * torch.tensor(dc1)).sum()).backward()
        dx, (dh, dc) = pc.backward(dh1, dc1)
        _close(dc, ct.grad.numpy(), dtype, "dc")
    else:
        h1t = tc(xt, ht)
        h1 = pc(x, h)
        (h1t * torch.tensor(dh1)).sum().backward()
        dx, dh = pc.backward(dh1)
    _close(h1, h1t.detach().numpy(), dtype, "h1")
    _close(dx, xt.grad.numpy(), dtype, "dx")
    _close(dh, ht.grad.numpy(), dtype, "dh")
    for name, p in tc.named_parameters():
        _close(pc.grads[name], p.grad.numpy(), dtype, "d" + name)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_cell_equals_one_step_of_the_layer(reset_after):
    cell = pyrnn.GRUCell(4, 6, reset_after=reset_after, dtype=np.float64, seed=0)
    layer = pyrnn.GRU(4, 6, reset_after=reset_after, dtype=np.float64)
    layer.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    rng = np.random.default_rng(1)
    x, h = rng.standard_normal((2, 4)), rng.standard_normal((2, 6))
    y, _ = layer(x[None], h[None])
    np.testing.assert_allclose(cell(x, h), y[0], rtol=1e-13, atol=1e-13)


def test_unbatched_and_default_state():
    cell = pyrnn.LSTMCell(3, 4, seed=0)
    x = np.ones(3, np.float32)
    h1, c1 = cell(x)
    assert h1.shape == (4,) and c1.shape == (4,)
    dx, (dh, dc) = cell.backward(np.ones(4, np.float32))
    assert dx.shape == (3,) and dh.shape == (4,) and dc.shape == (4,)
    hb, cb = cell(x[None], (np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32)))
    np.testing.assert_array_equal(h1, hb[0])


def test_generation_loop_refeeds_output():
    """A cell driven one step at a time equals the layer on the whole sequence."""
    cell = pyrnn.LSTMCell(4, 4, dtype=np.float64, seed=2).eval()
    layer = pyrnn.LSTM(4, 4, dtype=np.float64).eval()
    layer.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    x = np.random.default_rng(3).standard_normal((5, 1, 4))
    state, outs = None, []
    for t in range(5):
        h, c = cell(x[t], state)
        state = (h, c)
        outs.append(h)
    y, _ = layer(x)
    np.testing.assert_allclose(np.stack(outs), y, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("call, exc, message", [
    (lambda c: c(np.zeros((2, 3, 1), np.float32)), ValueError, "Expected input to be 1D or 2D, got 3D instead"),
    (lambda c: c(np.zeros((2, 5), np.float32)), ValueError, "input has inconsistent size"),
    (lambda c: c(np.zeros((2, 3))), TypeError, "must have the cell's dtype float32, got float64"),
    (lambda c: c(np.zeros((2, 3), np.float32), (np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32))),
     ValueError, "Input batch size 2 doesn't match hx[0] batch size 3"),
    (lambda c: c(np.zeros((2, 3), np.float32), (np.zeros((2, 5), np.float32), np.zeros((2, 4), np.float32))),
     ValueError, "hx[0] has inconsistent size"),
    (lambda c: c(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32)), TypeError, "hx must be a tuple"),
    (lambda c: c.backward(np.zeros((2, 4), np.float32)), RuntimeError, "needs a call in training mode"),
])
def test_cell_errors(call, exc, message):
    cell = pyrnn.LSTMCell(3, 4)
    with pytest.raises(exc, match=re.escape(message)):
        call(cell)


def test_cell_constructor_errors():
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        pyrnn.GRUCell(3, 0)
    with pytest.raises(ValueError, match="Unknown nonlinearity"):
        pyrnn.RNNCell(3, 4, nonlinearity="gelu")
