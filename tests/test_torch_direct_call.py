"""pyrnn.torch's sequence modules call the kernels directly where they checked the call themselves
(no lengths, masks or zoneout): the same bits as pyrnn.functional's checked path, forward and
backward, and a clear error for a weight of the wrong shape."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import pyrnn.functional as F  # noqa: E402
import pyrnn.torch as pt  # noqa: E402

CASES = [
    ("LSTM", {}),
    ("LSTM", {"proj_size": 3}),
    ("GRU", {}),
    ("GRU", {"reset_after": False}),
    ("RNN", {}),
    ("RNN", {"nonlinearity": "relu"}),
]


def _reference(module, x, hx):
    """y, h_n (, c_n) and the gradients of sum(y * dy) + sum(h_n * dh), layer by layer through
    pyrnn.functional's checked path."""
    cell = module._cell
    opts = {"nonlinearity": "relu" if module.mode == "RNN_RELU" else "tanh",
            "reset_after": getattr(module, "reset_after", True)}
    D = 2 if module.bidirectional else 1
    params = {n: p.detach().numpy() for n, p in module.named_parameters()}
    h0 = c0 = None
    if hx is not None:
        h0, c0 = (hx if cell == "lstm" else (hx, None))
        h0 = h0.numpy()
        c0 = None if c0 is None else c0.numpy()
    inp, hs, cs = x.numpy(), [], []
    for layer in range(module.num_layers):
        ys = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            k = layer * D + d
            y, h_n, c_n, _ = F.forward(cell, inp, None if h0 is None else h0[k], None if c0 is None else c0[k],
                                       params["weight_ih" + sfx], params["weight_hh" + sfx],
                                       params.get("bias_ih" + sfx), params.get("bias_hh" + sfx),
                                       W_hr=params.get("weight_hr" + sfx), reverse=bool(d), training=False,
                                       **opts)
            ys.append(y)
            hs.append(h_n)
            cs.append(c_n)
        inp = np.concatenate(ys, axis=2) if D == 2 else ys[0]
    return inp, np.stack(hs), (np.stack(cs) if cell == "lstm" else None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,kw", CASES)
@pytest.mark.parametrize("layers,bidir,T,B", [(1, False, 1, 1), (2, True, 5, 3), (1, True, 7, 2)])
def test_module_call_equals_the_functional_path_bitwise(name, kw, layers, bidir, T, B, dtype):
    torch.manual_seed(0)
    m = getattr(pt, name)(4, 6, num_layers=layers, bidirectional=bidir, dtype=dtype, **kw)
    D = 2 if bidir else 1
    Ho = kw.get("proj_size") or 6
    x = torch.randn(T, B, 4, dtype=dtype)
    for with_hx in (False, True):
        hx = None
        if with_hx:
            h = torch.randn(layers * D, B, Ho, dtype=dtype)
            hx = (h, torch.randn(layers * D, B, 6, dtype=dtype)) if name == "LSTM" else h
        y_ref, h_ref, c_ref = _reference(m, x, hx)
        with torch.no_grad():
            y, st = m(x, hx)
        h_n, c_n = st if name == "LSTM" else (st, None)
        np.testing.assert_array_equal(y.numpy(), y_ref)
        np.testing.assert_array_equal(h_n.numpy(), h_ref)
        if name == "LSTM":
            np.testing.assert_array_equal(c_n.numpy(), c_ref)
        # the training forward (through the autograd.Function) gives the same bits
        y2, st2 = m(x.clone().requires_grad_(), hx)
        np.testing.assert_array_equal(y2.detach().numpy(), y_ref)


@pytest.mark.parametrize("name,kw", CASES)
def test_module_gradients_equal_the_functional_backward(name, kw):
    torch.manual_seed(1)
    m = getattr(pt, name)(3, 5, dtype=torch.float64, **kw)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    y, st = m(x)
    h_n = st[0] if name == "LSTM" else st
    dy, dh = torch.randn_like(y), torch.randn_like(h_n)
    torch.autograd.backward([y, h_n], [dy, dh])
    opts = {"nonlinearity": "relu" if m.mode == "RNN_RELU" else "tanh", "reset_after": getattr(m, "reset_after", True)}
    p = {n: q.detach().numpy() for n, q in m.named_parameters()}
    _, _, _, ws = F.forward(m._cell, x.detach().numpy(), None, None, p["weight_ih_l0"], p["weight_hh_l0"],
                            p["bias_ih_l0"], p["bias_hh_l0"], W_hr=p.get("weight_hr_l0"), training=True, **opts)
    g = F.backward(ws, dy.numpy(), dh[0].numpy(), None)
    np.testing.assert_array_equal(x.grad.numpy(), g["x"])
    for name_, key in (("weight_ih_l0", "W_ih"), ("weight_hh_l0", "W_hh"), ("bias_ih_l0", "b_ih"),
                       ("bias_hh_l0", "b_hh"), ("weight_hr_l0", "W_hr")):
        if name_ in p:
            np.testing.assert_array_equal(dict(m.named_parameters())[name_].grad.numpy(), g[key])


@pytest.mark.parametrize("grad", [False, True])
def test_a_weight_of_the_wrong_shape_is_named(grad):
    m = pt.LSTM(4, 6, num_layers=2)
    m.weight_hh_l1 = torch.nn.Parameter(torch.randn(24, 7))
    x = torch.randn(3, 2, 4, requires_grad=grad)
    with pytest.raises(ValueError, match=r"LSTM: weight_hh_l1 has shape \[24, 7\], expected \[24, 6\]"):
        with torch.set_grad_enabled(grad):
            m(x)
    m = pt.GRU(4, 6, bidirectional=True)
    m.weight_ih_l0_reverse = torch.nn.Parameter(torch.randn(18, 5))
    with pytest.raises(ValueError, match=r"GRU: weight_ih_l0_reverse has shape \[18, 5\], expected \[18, 4\]"):
        m(torch.randn(3, 2, 4))
    m = pt.RNN(4, 6)
    m.bias_hh_l0 = None
    with pytest.raises(ValueError, match="bias_ih_l0 and bias_hh_l0 must both be set or both be None"):
        m(torch.randn(3, 2, 4))


def test_a_weight_of_another_dtype_is_a_type_error():
    m = pt.RNN(4, 6)
    # (a weight held as a plain attribute, as AWD-LSTM's WeightDrop holds its dropped weight)
    del m.weight_hh_l0
    m.weight_hh_l0 = torch.randn(6, 6, dtype=torch.float64)
    with pytest.raises(TypeError, match="W_hh"):
        m(torch.randn(3, 2, 4))


def test_a_weight_held_as_a_plain_tensor_is_used():
    torch.manual_seed(2)
    m = pt.GRU(4, 6)
    w = torch.randn(18, 6)
    del m.weight_hh_l0
    m.weight_hh_l0 = w
    x = torch.randn(3, 2, 4)
    y, _ = m(x)
    ref = torch.nn.GRU(4, 6)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(w if n == "weight_hh_l0" else getattr(m, n))
        y_ref, _ = ref(x)
    np.testing.assert_allclose(y.detach().numpy(), y_ref.numpy(), rtol=1e-5, atol=1e-6)


def test_a_cell_weight_of_the_wrong_shape_is_named():
    c = pt.GRUCell(4, 6)
    c.weight_hh = torch.nn.Parameter(torch.randn(18, 5))
    with pytest.raises(ValueError, match=r"GRUCell: weight_hh has shape \[18, 5\], expected \[18, 6\]"):
        c(torch.randn(2, 4))


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("I,H", [(0, 5), (3, 0), (0, 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cells_of_size_zero_step_with_gradients_as_torch_nn(name, I, H, dtype):
    # torch.nn's cells take input_size or hidden_size 0; a training step used to raise the sequence
    # kernels' "T, I and H must be at least 1"
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(I, H).to(dtype)
    mine = getattr(pt, name)(I, H).to(dtype)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(2, I, dtype=dtype)
    h = torch.randn(2, H, dtype=dtype)
    for hx in (None, (h, 2 * h) if name == "LSTMCell" else h):
        outs = []
        for m in (ref, mine):
            m.zero_grad()
            out = m(x, hx)
            out = out if isinstance(out, tuple) else (out,)
            sum(t.square().sum() for t in out).backward()
            outs.append((out, [p.grad.clone() for p in m.parameters()]))
        (a, ga), (b, gb) = outs
        for p, q in zip(a + tuple(ga), b + tuple(gb)):
            assert p.shape == q.shape and p.dtype == q.dtype
            torch.testing.assert_close(p, q)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_cell_of_input_size_zero_steps_as_the_one_step_kernel(reset_after):
    # (torch.nn has no reset_after=False: the kernel, which takes I = 0, is the reference)
    torch.manual_seed(1)
    cell = pt.GRUCell(0, 4, reset_after=reset_after)
    x, h = torch.zeros(3, 0), torch.randn(3, 4)
    arrays = [a.detach().numpy() for a in (x, h)] + [None] + [p.detach().numpy() for p in cell.parameters()]
    kind = pt._kind("gru", {"nonlinearity": "tanh", "reset_after": reset_after})
    expected = torch.from_numpy(pt._core.cell_step(kind, *arrays)[0])
    got = cell(x, h.requires_grad_())
    torch.testing.assert_close(got, expected)
    got.sum().backward()
    assert h.grad is not None and cell.weight_hh.grad.abs().sum() > 0


def test_lstm_cell_of_input_size_zero_applies_zoneout_masks():
    torch.manual_seed(2)
    cell = pt.LSTMCell(0, 4, zoneout=0.5, zoneout_c=0.5)
    m_h = torch.tensor([[1.0, 0, 1, 0]] * 2)
    m_c = torch.tensor([[0.0, 1, 1, 0]] * 2)
    cell._zoneout_masks = lambda B, dtype: (m_h[None], m_c[None])
    x, h, c = torch.zeros(2, 0), torch.randn(2, 4), torch.randn(2, 4)
    h1, c1 = cell(x, (h, c))
    cell.eval()
    with torch.no_grad():
        h_new, c_new = cell(x, (h, c))
    torch.testing.assert_close(h1, m_h * h + (1 - m_h) * h_new)
    torch.testing.assert_close(c1, m_c * c + (1 - m_c) * c_new)
