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
    (lambda c: c(np.zeros((2, 3), np.float32), (None, np.zeros((2, 4), np.float32))), TypeError,
     "hx must hold both h and c (or be None), got (NoneType, ndarray)"),
    (lambda c: c(np.zeros(3, np.float32), (np.zeros((1, 4), np.float32), np.zeros(4, np.float32))), ValueError,
     "Expected hx[0] to be 1D like the input, got 2D instead"),
    (lambda c: c(np.zeros((1, 3), np.float32), (np.zeros(4, np.float32), np.zeros((1, 4), np.float32))), ValueError,
     "Expected hx[0] to be 2D like the input, got 1D instead"),
    (lambda c: c.backward(np.zeros((2, 4), np.float32)), RuntimeError, "needs a call in training mode"),
])
def test_cell_errors(call, exc, message):
    cell = pyrnn.LSTMCell(3, 4)
    with pytest.raises(exc, match=re.escape(message)):
        call(cell)


@pytest.mark.parametrize("cls", ["GRUCell", "RNNCell"])
@pytest.mark.parametrize("frozen", [False, True])
def test_gru_and_rnn_cells_refuse_an_lstm_state_tuple(cls, frozen):
    """An LSTM's (h, c) given to a GRU or RNN cell names the mistake (it was NumPy's "inhomogeneous
    shape" error, or "Expected hx to be 2D ... got 3D"); nested lists or tuples of numbers still work as
    an array."""
    cell = getattr(pyrnn, cls)(3, 4, seed=0, dtype=np.float64)
    step = cell.freeze() if frozen else cell
    x, h = np.ones((2, 3)), np.full((2, 4), 0.5)
    for hx in ((h, None), (h, h), (h,)):
        with pytest.raises(TypeError, match=re.escape("hx must be an array h or None (only an LSTM cell takes a "
                                                      f"tuple (h, c)), got a tuple of {len(hx)}")):
            step(x, hx)
    np.testing.assert_array_equal(step(x, h.tolist()), step(x, h))
    np.testing.assert_array_equal(step(x, tuple(map(tuple, h.tolist()))), step(x, h))  # (rows of numbers)


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_backward_checks_gradient_shapes(cls):
    """dh1 (dc1) must have h's shape: a transposed or flattened gradient is an error, not a reshape."""
    cell = getattr(pyrnn, cls)(3, 4, seed=0)
    x = np.ones((2, 3), np.float32)
    for bad in (np.zeros((4, 2), np.float32), np.zeros(8, np.float32), np.zeros((3, 4), np.float32)):
        cell(x)
        with pytest.raises(ValueError, match=re.escape(f"{cls}.backward: dh1 must have shape (2, 4), got {bad.shape}")):
            cell.backward(bad)
    if cls == "LSTMCell":
        cell(x)
        with pytest.raises(ValueError, match=re.escape("dc1 must have shape (2, 4), got (8,)")):
            cell.backward(None, np.zeros(8, np.float32))
    cell(x[0])  # unbatched: gradients of shape (H,)
    dx, _ = cell.backward(np.ones(4, np.float32))
    assert dx.shape == (3,)


def test_cell_backward_does_not_see_later_edits_of_its_inputs():
    """A loop that refills one input buffer per step keeps each step's own x and state for backward."""
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((2, 2, 3)).astype(np.float32)
    dh = rng.standard_normal((2, 4)).astype(np.float32)
    grads = []
    for reuse in (False, True):
        cell = pyrnn.GRUCell(3, 4, seed=0)
        buf = np.empty((2, 3), np.float32)
        h = cell(xs[0].copy(), np.zeros((2, 4), np.float32))
        buf[...] = xs[1]
        cell(buf if reuse else xs[1].copy(), h)
        if reuse:  # the input and the state the step read, overwritten before backward
            buf[...] = 0
            h[...] = 0
        dx, dh0 = cell.backward(dh)
        grads.append((dx, dh0, cell.grads["weight_ih"].copy(), cell.grads["weight_hh"].copy()))
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_cell_constructor_errors():
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        pyrnn.GRUCell(3, 0)
    with pytest.raises(ValueError, match="Unknown nonlinearity"):
        pyrnn.RNNCell(3, 4, nonlinearity="gelu")


# ------------------------------------------------------------ frozen cells --

FROZEN_CASES = {**CELLS, "gru_reset_before": ("GRUCell", {"reset_after": False})}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("B, I, H", [(1, 5, 7), (3, 65, 128), (13, 40, 33), (0, 4, 6)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", list(FROZEN_CASES))
def test_frozen_cell_matches_the_cell(cell, dtype, B, I, H, bias, isa):
    """freeze(): the same step as the cell in eval mode (packed weights, every ISA level)."""
    cls, kw = FROZEN_CASES[cell]
    pc = getattr(pyrnn, cls)(I, H, bias=bias, **kw, dtype=dtype, seed=1).eval()
    fc = pc.freeze()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, I)).astype(dtype)
    hx = [rng.standard_normal((B, H)).astype(dtype) for _ in range(2)]
    states = [None, tuple(hx)] if cls == "LSTMCell" else [None, hx[0]]
    for st in states:
        want, got = pc(x, st), fc(x, st)
        for a, e in zip(np.atleast_1d(got) if cls == "LSTMCell" else [got], want if cls == "LSTMCell" else [want]):
            assert a.dtype == dtype and a.shape == e.shape
            if e.size:
                _close(a, e, dtype, cell)
    if B:  # unbatched
        st = tuple(h[0] for h in hx) if cls == "LSTMCell" else hx[0][0]
        want, got = pc(x[0], st), fc(x[0], st)
        for a, e in zip(got if cls == "LSTMCell" else [got], want if cls == "LSTMCell" else [want]):
            assert a.shape == (H,)
            _close(a, e, dtype, cell + " unbatched")


def test_frozen_cell_is_a_snapshot_never_a_mix():
    """A frozen cell keeps the weights it was frozen with; in-place updates of the
    cell reach the cell at once and a new freeze(), never the old frozen copy."""
    cell = pyrnn.LSTMCell(6, 9, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    frozen = cell.freeze()
    before = cell(x)
    np.testing.assert_array_equal(frozen(x)[0], frozen(x)[0])
    for _, p in cell.named_parameters():
        p *= 1.5  # in place: what an optimizer does
    after = cell(x)
    assert not np.allclose(after[0], before[0])
    _close(frozen(x)[0], before[0], np.float32, "old snapshot")
    _close(cell.freeze()(x)[0], after[0], np.float32, "new snapshot")
    cell.load_state_dict({k: np.zeros_like(v) for k, v in cell.state_dict().items()})
    np.testing.assert_array_equal(cell.freeze()(x)[0], np.zeros((2, 9), np.float32))
    _close(frozen(x)[0], before[0], np.float32, "old snapshot after load_state_dict")


def test_frozen_cell_threads_agree_bitwise():
    cell = pyrnn.GRUCell(128, 256, reset_after=False, seed=0).freeze()  # large enough to split over threads
    x = np.random.default_rng(0).standard_normal((4, 128)).astype(np.float32)
    h = np.random.default_rng(1).standard_normal((4, 256)).astype(np.float32)
    setting = pyrnn.thread_setting()
    try:
        outs = []
        for n in (1, 2, 3):
            pyrnn.set_num_threads(n)
            outs.append(cell(x, h))
    finally:
        pyrnn.set_num_threads(setting)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_frozen_cell_errors():
    frozen = pyrnn.LSTMCell(4, 3).freeze()
    assert "FrozenCell(LSTMCell(4, 3))" == repr(frozen) and frozen.nbytes > 0
    with pytest.raises(TypeError, match="must have the cell's dtype float32, got float64"):
        frozen(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="inconsistent size"):
        frozen(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="hx must be a tuple"):
        frozen(np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="batch size"):
        frozen(np.zeros((2, 4), np.float32), (np.zeros((3, 3), np.float32),) * 2)
    with pytest.raises(TypeError, match="needs a pyrnn RNNCell"):
        pyrnn.cells.FrozenCell(pyrnn.LSTM(4, 3))
    assert not hasattr(frozen, "backward")
    for _, w in frozen.named_parameters():  # read-only, as a frozen layer's: an edit would not be used
        with pytest.raises(ValueError, match="read-only"):
            w[...] = 0
    assert frozen.eval() is frozen and frozen.train(False) is frozen and not frozen.training
    with pytest.raises(RuntimeError, match="a frozen cell is for inference only"):
        frozen.train()


def test_frozen_cell_copies_and_pickles():
    import copy
    import pickle

    cell = pyrnn.GRUCell(5, 7, reset_after=False, seed=0)
    frozen = cell.freeze()
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    y = frozen(x)
    for clone in (copy.deepcopy(frozen), pickle.loads(pickle.dumps(frozen)), copy.copy(frozen)):
        np.testing.assert_array_equal(clone(x), y)
        assert not any(w.flags.writeable for _, w in clone.named_parameters())
