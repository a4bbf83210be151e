"""The lean parts of pyrnn.torch's per-call path: the workspace token of a training call, a cell's
step taking its input as [B, I], and weights read afresh at every call however they were updated."""

import gc
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import pyrnn.torch as pt  # noqa: E402


def _pair(name, I=5, H=6, seed=0):
    torch.manual_seed(seed)
    ours = getattr(pt, name)(I, H)
    ref = getattr(torch.nn, name)(I, H)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _step(cell, x, h):
    out = cell(x, (h, h) if isinstance(cell, (pt.LSTMCell, torch.nn.LSTMCell)) else h)
    return out[0] if isinstance(out, tuple) else out


def _train_step(cell, x, h):
    """h after two steps and the weights' gradients."""
    cell.zero_grad()
    h2 = _step(cell, x, _step(cell, x, h))
    h2.square().sum().backward()
    return h2.detach(), [p.grad.clone() for p in cell.parameters()]


UPDATES = {
    "in place": lambda p: p.data.mul_(0.5),
    "data = new memory": lambda p: setattr(p, "data", p.data * 0.5),
    "data = transposed view": lambda p: setattr(p, "data", p.data.t().contiguous().t() * 1.5 if p.dim() == 2 else p.data + 1),
    "set_": lambda p: p.data.set_((p.data + 1).clone()),
    "no_grad copy_": lambda p: p.data.copy_(torch.randn_like(p)),
}


@pytest.mark.parametrize("update", sorted(UPDATES))
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_weight_views_never_stale(name, update):
    """Every kind of weight update between training calls is seen, as torch.nn sees it."""
    ours, ref = _pair(name)
    x, h = torch.randn(3, 5), torch.randn(3, 6)
    for cell in (ours, ref):
        _train_step(cell, x, h)
    for cell in (ours, ref):
        with torch.no_grad():
            torch.manual_seed(7)
            for p in cell.parameters():
                UPDATES[update](p)
    (h_ours, g_ours), (h_ref, g_ref) = _train_step(ours, x, h), _train_step(ref, x, h)
    torch.testing.assert_close(h_ours, h_ref)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b)


def test_weight_view_of_a_transposed_alias_is_remade():
    """Same address, shape and dtype but other strides (a square weight's transpose assigned to
    .data): read with its new strides."""
    ours, ref = _pair("RNNCell", I=6, H=6)
    x, h = torch.randn(2, 6), torch.randn(2, 6)
    _train_step(ours, x, h)
    for cell in (ours, ref):
        cell.weight_hh.data = cell.weight_hh.data.t()
        cell.weight_ih.data = cell.weight_ih.data.t()
    (h_ours, g_ours), (h_ref, g_ref) = _train_step(ours, x, h), _train_step(ref, x, h)
    torch.testing.assert_close(h_ours, h_ref)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b)


def test_training_after_import_under_inference_mode():
    """pyrnn.torch imported first inside torch.inference_mode() (a torch.load there unpickles a pyrnn
    module): training calls afterwards work (the workspace token is no inference tensor)."""
    code = ("import torch\n"
            "with torch.inference_mode():\n"
            "    import pyrnn.torch as pt\n"
            "for m, x in ((pt.GRUCell(4, 4), torch.randn(2, 4)), (pt.LSTM(4, 4), torch.randn(3, 2, 4))):\n"
            "    out = m(x)\n"
            "    (out[0] if isinstance(out, tuple) else out).sum().backward()\n"
            "    assert all(p.grad is not None for p in m.parameters())\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.fixture
def swap_on_conversion():
    set_swap = torch.__future__.set_swap_module_params_on_conversion
    before = torch.__future__.get_swap_module_params_on_conversion()
    set_swap(True)
    yield
    set_swap(before)


@pytest.mark.parametrize("name", ["LSTM", "GRUCell"])
def test_swap_module_params_on_conversion_after_calls(name, swap_on_conversion):
    """With torch.__future__.set_swap_module_params_on_conversion(True), .double() swaps the parameters
    (torch.utils.swap_tensors refuses a tensor with a weak reference): nothing of pyrnn's holds one."""
    m = getattr(pt, name)(4, 4)
    x = torch.randn(3, 2, 4) if name == "LSTM" else torch.randn(2, 4)
    for _ in range(2):
        out = m(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
    m.double()
    out = m(x.double())
    assert (out[0] if isinstance(out, tuple) else out).dtype == torch.float64


def test_workspace_tokens_have_their_own_version_counters():
    """An in-place op on one graph's saved token (reached through grad_fn.saved_tensors) does not
    fail another graph's backward."""
    cell = pt.GRUCell(4, 4)
    a = cell(torch.randn(2, 4))
    b = cell(torch.randn(2, 4))
    a.grad_fn.saved_tensors[-1].zero_()
    b.sum().backward()
    assert cell.weight_hh.grad is not None


def test_dtype_change_between_calls():
    ours, ref = _pair("GRUCell")
    x, h = torch.randn(3, 5), torch.randn(3, 6)
    _train_step(ours, x, h)
    ours.double(), ref.double()
    (h_ours, g_ours), (h_ref, g_ref) = _train_step(ours, x.double(), h.double()), _train_step(ref, x.double(),
                                                                                               h.double())
    assert h_ours.dtype == torch.float64
    torch.testing.assert_close(h_ours, h_ref)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("batched", [True, False])
def test_step_input_gradient_shape(name, batched):
    """A cell's training step takes x as [B, I] (or [I]): its gradient has x's shape, as torch.nn's."""
    ours, ref = _pair(name)
    x = torch.randn(*((3,) if batched else ()), 5)
    grads = []
    for cell in (ours, ref):
        xx = x.clone().requires_grad_()
        _step(cell, xx, torch.zeros(*((3,) if batched else ()), 6)).sum().backward()
        grads.append(xx.grad)
    assert grads[0].shape == x.shape
    torch.testing.assert_close(grads[0], grads[1])


def test_workspace_released_with_the_saved_tensors():
    """The token saved beside a training call's tensors releases its workspace when autograd frees
    them (after backward), though the graph's output is kept."""
    cell = pt.GRUCell(4, 8)
    h = cell(torch.randn(2, 4))
    node = h.grad_fn
    held = node.held
    assert held.ws is not None
    h.sum().backward()
    gc.collect()
    assert held.ws is None
    assert h.grad_fn is node  # (the output and its node live on)


def test_input_gradient_with_retain_graph_twice():
    """A step's backward run twice (retain_graph) keeps its workspace for the second."""
    ours, ref = _pair("LSTMCell")
    outs = []
    for cell in (ours, ref):
        x = torch.randn(3, 5, generator=torch.Generator().manual_seed(3)).requires_grad_()
        h, c = cell(x)
        (h.sum() + c.sum()).backward(retain_graph=True)
        (h.sum() * 2).backward()
        outs.append(x.grad)
    torch.testing.assert_close(outs[0], outs[1])
    assert np.isfinite(outs[0].numpy()).all()
