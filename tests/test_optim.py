"""pyrnn.optim (optimizers, clipping, readout, losses) and pyrnn.diagnostics (dL/dh_t through time)."""

import math

import numpy as np
import pytest

import pyrnn
from pyrnn import optim
from pyrnn.diagnostics import hidden_grad_norms, hidden_state_grads, step_norms

try:
    import torch
except ImportError:  # the torch comparisons skip
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")


def _problem(rng, shapes=((3, 4), (5,)), dtype=np.float64):
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [np.zeros_like(p) for p in params]
    return params, grads


def _run_numpy(opt_factory, params, grads, grad_seq):
    opt = opt_factory(list(zip(params, grads)))
    for gs in grad_seq:
        for g, new in zip(grads, gs):
            g[...] = new
        opt.step()
    return params


def _run_torch(opt_factory, params, grad_seq):
    tp = [torch.tensor(p, requires_grad=True) for p in params]
    opt = opt_factory(tp)
    for gs in grad_seq:
        for p, g in zip(tp, gs):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in tp]


OPTIMIZER_CASES = [
    ("sgd", dict(lr=0.1), dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
     dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.8, dampening=0.3), dict(lr=0.05, momentum=0.8, dampening=0.3)),
    ("rmsprop", dict(lr=0.01), dict(lr=0.01)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, momentum=0.5, weight_decay=0.1),
     dict(lr=0.01, alpha=0.9, momentum=0.5, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01, centered=True, eps=1e-6), dict(lr=0.01, centered=True, eps=1e-6)),
    ("adam", dict(lr=0.01), dict(lr=0.01)),
    ("adam", dict(lr=0.003, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
     dict(lr=0.003, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("adamw", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True), dict(lr=0.01, weight_decay=0.1)),
]


@needs_torch
@pytest.mark.parametrize("kind, ours, theirs", OPTIMIZER_CASES)
def test_optimizers_match_torch_optim(kind, ours, theirs, rng):
    params, grads = _problem(rng)
    grad_seq = [[rng.standard_normal(p.shape) for p in params] for _ in range(6)]
    mine = {"sgd": optim.SGD, "rmsprop": optim.RMSprop, "adam": optim.Adam, "adamw": optim.Adam}[kind]
    ref = {"sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop, "adam": torch.optim.Adam,
           "adamw": torch.optim.AdamW}[kind]
    expected = _run_torch(lambda ps: ref(ps, **theirs), [p.copy() for p in params], grad_seq)
    got = _run_numpy(lambda ps: mine(ps, **ours), params, grads, grad_seq)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)


def test_sgd_momentum_by_hand():
    p, g = np.array([1.0, -2.0]), np.zeros(2)
    opt = optim.SGD([(p, g)], lr=0.1, momentum=0.9)
    g[...] = [1.0, 2.0]
    opt.step()  # buf = g
    np.testing.assert_allclose(p, [1.0 - 0.1, -2.0 - 0.2])
    g[...] = [0.5, 0.0]
    opt.step()  # buf = 0.9 * [1, 2] + [0.5, 0]
    np.testing.assert_allclose(p, [0.9 - 0.1 * 1.4, -2.2 - 0.1 * 1.8])


def test_rmsprop_by_hand():
    p, g = np.array([1.0, 1.0]), np.array([0.2, -3.0])
    optim.RMSprop([(p, g)], lr=0.01, alpha=0.9, eps=1e-8).step()
    v = 0.1 * g**2
    np.testing.assert_allclose(p, 1.0 - 0.01 * g / (np.sqrt(v) + 1e-8))


def test_adam_by_hand():
    p, g = np.array([0.5, -0.5, 2.0]), np.zeros(3)
    opt = optim.Adam([(p, g)], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    g1, g2 = np.array([1.0, -4.0, 0.0]), np.array([-2.0, 1.0, 3.0])
    g[...] = g1
    opt.step()  # bias-corrected m/sqrt(v) = sign(g) at the first step
    np.testing.assert_allclose(p, [0.5 - 0.1, -0.5 + 0.1, 2.0], atol=1e-7)
    g[...] = g2
    opt.step()
    m = 0.9 * 0.1 * g1 + 0.1 * g2
    v = 0.99 * 0.01 * g1**2 + 0.01 * g2**2
    step = 0.1 * (m / (1 - 0.9**2)) / (np.sqrt(v / (1 - 0.99**2)) + 1e-8)
    np.testing.assert_allclose(p, np.array([0.4, -0.4, 2.0]) - step, rtol=1e-6)


def test_optimizer_takes_modules_and_updates_in_place(rng):
    lstm = pyrnn.LSTM(3, 5, seed=0)
    fc = optim.Linear(5, 2, seed=1)
    before = {k: v.copy() for k, v in lstm.named_parameters()}
    ids = {k: id(v) for k, v in lstm.named_parameters()}
    opt = optim.SGD([lstm, fc], lr=0.5)
    assert len(opt.params) == len(list(lstm.parameters())) + 2
    for g in lstm.grads.values():
        g[...] = 1.0
    opt.step()
    for k, v in lstm.named_parameters():
        assert id(v) == ids[k]
        np.testing.assert_allclose(v, before[k] - 0.5, rtol=1e-6)
    opt.zero_grad()
    assert all(not g.any() for g in lstm.grads.values())
    assert not fc.grads["weight"].any()


def test_optimizer_state_dict_resumes_exactly(rng):
    grad_seq = [[rng.standard_normal((4, 3)), rng.standard_normal(3)] for _ in range(7)]
    for factory in (lambda ps: optim.Adam(ps, lr=0.01), lambda ps: optim.RMSprop(ps, momentum=0.5, centered=True),
                    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9)):
        p0 = [np.ones((4, 3)), np.zeros(3)]
        straight = _run_numpy(factory, [p.copy() for p in p0], [np.zeros_like(p) for p in p0], grad_seq)
        params, grads = [p.copy() for p in p0], [np.zeros_like(p) for p in p0]
        opt = factory(list(zip(params, grads)))
        for gs in grad_seq[:4]:
            for g, new in zip(grads, gs):
                g[...] = new
            opt.step()
        saved = opt.state_dict()
        params2 = [p.copy() for p in params]
        grads2 = [np.zeros_like(p) for p in params]
        opt2 = factory(list(zip(params2, grads2)))
        opt2.load_state_dict(saved)
        for gs in grad_seq[4:]:
            for g, new in zip(grads2, gs):
                g[...] = new
            opt2.step()
        for a, b in zip(params2, straight):
            np.testing.assert_array_equal(a, b)


def test_optimizer_errors():
    p = np.zeros(3)
    with pytest.raises(ValueError, match="learning rate"):
        optim.Adam([(p, np.zeros(3))], lr=-1.0)
    with pytest.raises(ValueError, match="gradient of shape"):
        optim.SGD([(p, np.zeros(4))], lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError):
        optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([(p, np.zeros(3))], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="is for SGD"):
        optim.Adam([(p, np.zeros(3))]).load_state_dict(optim.SGD([(p, np.zeros(3))], lr=0.1).state_dict())


def test_float32_parameters_stay_float32():
    p, g = np.ones(4, np.float32), np.full(4, 0.5, np.float32)
    for opt in (optim.Adam([(p, g)]), optim.RMSprop([(p, g)]), optim.SGD([(p, g)], lr=0.1, momentum=0.9)):
        opt.step()
        assert p.dtype == np.float32 and all(v.dtype == np.float32 for st in opt.state for v in st.values())


# ------------------------------------------------------------------ clipping


def test_clip_grad_norm_returns_the_norm_before_clipping_and_rescales(rng):
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    original = [g.copy() for g in grads]
    total = math.sqrt(sum(float((g**2).sum()) for g in original))
    got = optim.clip_grad_norm(grads, max_norm=0.5)
    assert got == pytest.approx(total, rel=1e-12)
    new_total = math.sqrt(sum(float((g**2).sum()) for g in grads))
    assert new_total == pytest.approx(0.5, rel=1e-5)
    for g, o in zip(grads, original):  # same direction
        np.testing.assert_allclose(g, o * (0.5 / (total + 1e-6)), rtol=1e-12)
    # below the threshold: untouched, and the norm still returned
    again = [g.copy() for g in grads]
    assert optim.clip_grad_norm(grads, max_norm=10.0) == pytest.approx(new_total, rel=1e-12)
    for g, a in zip(grads, again):
        np.testing.assert_array_equal(g, a)


def test_clip_grad_norm_over_modules_and_inf_norm():
    lstm = pyrnn.LSTM(2, 3, seed=0)
    fc = optim.Linear(3, 1, seed=0)
    for g in lstm.grads.values():
        g[...] = 2.0
    fc.grads["weight"][...] = -7.0
    n = sum(g.size for g in lstm.grads.values())
    expected = math.sqrt(4.0 * n + 49.0 * 3)
    assert optim.clip_grad_norm([lstm, fc], 1.0) == pytest.approx(expected, rel=1e-6)
    assert fc.grads["weight"][0, 0] == pytest.approx(-7.0 / expected, rel=1e-5)
    fc.grads["weight"][...] = -7.0
    assert optim.clip_grad_norm(fc, 3.5, norm_type=float("inf")) == 7.0
    assert fc.grads["weight"][0, 0] == pytest.approx(-3.5, rel=1e-6)


@needs_torch
def test_clip_grad_norm_matches_torch(rng):
    grads = [rng.standard_normal((6, 2)) * 3, rng.standard_normal(7)]
    for norm_type in (2.0, 1.0, float("inf")):
        gs = [g.copy() for g in grads]
        ps = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
        for p, g in zip(ps, grads):
            p.grad = torch.tensor(g)
        expected = float(torch.nn.utils.clip_grad_norm_(ps, 1.5, norm_type=norm_type))
        assert optim.clip_grad_norm(gs, 1.5, norm_type=norm_type) == pytest.approx(expected, rel=1e-10)
        for g, p in zip(gs, ps):
            np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-10)


def test_clip_grad_norm_nonfinite():
    g = np.array([1.0, np.inf])
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm([g], 1.0, error_if_nonfinite=True)


def test_clip_functions_refuse_a_bare_pair():
    """clip_grad_norm((p, g)) would clip the parameter as if it were a gradient: a list is asked for."""
    p, g = np.full(3, 10.0), np.ones(3)
    for clip in (lambda a: optim.clip_grad_norm(a, 1.0), lambda a: optim.clip_grad_value(a, 0.5)):
        with pytest.raises(TypeError, match="tuple of two arrays"):
            clip((p, g))
        assert np.all(p == 10.0)
    optim.clip_grad_norm([(p, g)], 1.0)
    assert np.all(p == 10.0) and np.linalg.norm(g) == pytest.approx(1.0, rel=1e-5)
    optim.clip_grad_value([p.copy(), g], 0.5)


def test_parameters_and_frozen_copies_are_refused():
    """torch's habit clip_grad_norm_(model.parameters(), ...) would clip the weights (pyrnn's
    parameters are the arrays; their gradients are in model.grads); frozen copies have no gradients."""
    lstm = pyrnn.LSTM(2, 3, seed=0)
    before = {k: v.copy() for k, v in lstm.named_parameters()}
    for call in (lambda: optim.clip_grad_norm(lstm.parameters(), 0.1), lambda: optim.clip_grad_value(
            lstm.parameters(), 0.1), lambda: optim.SGD(lstm.parameters(), lr=0.1)):
        with pytest.raises(TypeError, match=r"got module.parameters\(\), the weight arrays themselves"):
            call()
    assert all(np.array_equal(v, before[k]) for k, v in lstm.named_parameters())
    assert len(list(lstm.parameters())) == 4  # still an iterator over the live arrays
    for frozen in (lstm.freeze(), pyrnn.GRUCell(2, 3).freeze()):
        for call in (lambda: optim.Adam(frozen), lambda: optim.SGD([frozen], lr=0.1),
                     lambda: optim.clip_grad_norm(frozen, 1.0)):
            with pytest.raises(TypeError, match=r"is a frozen copy \(freeze\(\)\), for inference"):
                call()


def test_clip_grad_value():
    lstm = pyrnn.GRU(2, 3, seed=0)
    for g in lstm.grads.values():
        g[...] = np.linspace(-3, 3, g.size).reshape(g.shape)
    optim.clip_grad_value(lstm, 0.5)
    for g in lstm.grads.values():
        assert g.max() == 0.5 and g.min() == -0.5
    g = np.array([0.1, -0.2, 9.0])
    optim.clip_grad_value([g], 0.15)
    np.testing.assert_array_equal(g, [0.1, -0.15, 0.15])


# --------------------------------------------------------- readout and losses


def test_linear_forward_backward_finite_differences(rng):
    fc = optim.Linear(4, 3, dtype=np.float64, seed=2)
    x = rng.standard_normal((2, 5, 4))
    w = rng.standard_normal((2, 5, 3))
    y = fc(x)
    np.testing.assert_allclose(y, x @ fc.weight.T + fc.bias)
    dx = fc.backward(w)
    eps = 1e-6
    for name, p in fc.named_parameters():
        num = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            up = (fc(x) * w).sum()
            p[i] = old - eps
            down = (fc(x) * w).sum()
            p[i] = old
            num[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(fc.grads[name], num, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dx, w @ fc.weight)


def test_linear_state_dict_and_errors():
    fc = optim.Linear(3, 2, bias=False, seed=0)
    assert fc.bias is None and list(fc.state_dict()) == ["weight"]
    fc.load_state_dict({"weight": np.ones((2, 3))})
    np.testing.assert_array_equal(fc.weight, 1)
    with pytest.raises(ValueError, match="size mismatch"):
        fc.load_state_dict({"weight": np.ones((3, 3))})
    with pytest.raises(TypeError):
        fc(np.ones((1, 3)))  # float64 input into a float32 layer
    fc.eval()
    fc(np.ones((1, 3), np.float32))  # eval mode keeps nothing for backward
    with pytest.raises(RuntimeError, match="training mode"):
        fc.backward(np.ones((1, 2), np.float32))
    fc.train()
    x = np.ones((4, 3), np.float32)
    fc(x)
    with pytest.raises(ValueError, match=r"dy must have the output's shape \(4, 2\), got \(2, 4\)"):
        fc.backward(np.ones((2, 4), np.float32))  # transposed: not reshaped into place
    x[...] = 5  # the caller's buffer, reused: backward keeps the call's own x
    fc.backward(np.ones((4, 2), np.float32))
    np.testing.assert_array_equal(fc.grads["weight"], np.full((2, 3), 4.0))
    with pytest.raises(RuntimeError, match="already called"):
        fc.backward(np.ones((4, 2), np.float32))


@needs_torch
def test_linear_matches_torch_init_layout():
    fc = optim.Linear(6, 4, seed=0)
    tl = torch.nn.Linear(6, 4)
    tl.load_state_dict({k: torch.from_numpy(v) for k, v in fc.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    np.testing.assert_allclose(fc(x), tl(torch.from_numpy(x)).detach().numpy(), rtol=1e-6, atol=1e-6)
    assert np.abs(fc.weight).max() <= 1 / math.sqrt(6)


def test_softmax_cross_entropy_value_and_gradient(rng):
    logits = rng.standard_normal((4, 3, 5))
    targets = rng.integers(0, 5, (4, 3))
    mask = (rng.random((4, 3)) > 0.3).astype(float)
    loss, d = optim.softmax_cross_entropy(logits, targets, mask)
    logp = optim.log_softmax(logits)
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    assert loss == pytest.approx((nll * mask).sum() / mask.sum(), rel=1e-12)
    eps = 1e-6
    num = np.zeros_like(logits)
    for i in np.ndindex(logits.shape):
        old = logits[i]
        logits[i] = old + eps
        up = optim.softmax_cross_entropy(logits, targets, mask)[0]
        logits[i] = old - eps
        down = optim.softmax_cross_entropy(logits, targets, mask)[0]
        logits[i] = old
        num[i] = (up - down) / (2 * eps)
    np.testing.assert_allclose(d, num, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(optim.softmax(logits).sum(-1), 1.0)


@needs_torch
def test_softmax_cross_entropy_matches_torch(rng):
    logits = rng.standard_normal((7, 11)).astype(np.float32) * 5
    targets = rng.integers(0, 11, 7)
    loss, d = optim.softmax_cross_entropy(logits, targets)
    t = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t, torch.from_numpy(targets))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    np.testing.assert_allclose(d, t.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert d.dtype == np.float32


def test_softmax_cross_entropy_errors():
    with pytest.raises(ValueError, match="targets must be in"):
        optim.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError):
        optim.softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))


def test_mse_loss():
    loss, d = optim.mse_loss(np.array([1.0, 2.0, 4.0]), np.array([1.0, 0.0, 1.0]))
    assert loss == pytest.approx(13.0 / 3)
    np.testing.assert_allclose(d, [0.0, 4.0 / 3, 2.0])
    with pytest.raises(ValueError, match=r"pred \(4, 1\) and target \(4,\) must have the same shape"):
        optim.mse_loss(np.zeros((4, 1)), np.zeros(4))  # broadcasting would average 16 pairs


def test_a_training_loop_learns(rng):
    """A few hundred Adam steps fit a tiny LSTM regression (sum of the inputs)."""
    lstm = pyrnn.LSTM(1, 16, seed=0)
    fc = optim.Linear(16, 1, seed=0)
    opt = optim.Adam([lstm, fc], lr=1e-2)
    x_test = rng.random((10, 128, 1)).astype(np.float32)
    y_test = x_test.sum(0)

    def test_loss():
        lstm.eval()
        fc.eval()
        out = optim.mse_loss(fc(lstm(x_test)[1][0][-1]), y_test)[0]
        lstm.train()
        fc.train()
        return out

    before = test_loss()
    for _ in range(300):
        x = rng.random((10, 32, 1)).astype(np.float32)
        loss, dp = optim.mse_loss(fc(lstm(x)[1][0][-1]), x.sum(0))
        opt.zero_grad()
        lstm.backward(dh_n=fc.backward(dp)[None])
        optim.clip_grad_norm([lstm, fc], 1.0)
        opt.step()
    assert test_loss() < 0.05 * before


# ---------------------------------------------------------------- diagnostics


def test_rnn_dh_matches_hand_computed_jacobian_products(rng):
    """For a tanh RNN, dL/dh_{t-1} = W_hh^T ((1 - h_t^2) * dL/dh_t) + dy_{t-1}: check every step."""
    T, B, I, H = 9, 3, 2, 4
    rnn = pyrnn.RNN(I, H, dtype=np.float64, seed=3)
    rnn.weight_hh_l0[...] *= 3.0  # far from the identity: a real product of Jacobians
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((1, B, H))
    dy = rng.standard_normal((T, B, H))
    dh_n = rng.standard_normal((1, B, H))
    dh = hidden_state_grads(rnn, x, h0, dy=dy, dh_n=dh_n)
    assert dh.shape == (1, T, B, H)
    h = rnn.eval()(x, h0)[0]
    W = rnn.weight_hh_l0
    expected = np.zeros((T, B, H))
    expected[-1] = dy[-1] + dh_n[0]
    for t in range(T - 1, 0, -1):
        expected[t - 1] = ((1 - h[t] ** 2) * expected[t]) @ W + dy[t - 1]
    np.testing.assert_allclose(dh[0], expected, rtol=1e-10, atol=1e-12)


def test_linear_rnn_last_step_loss_is_a_matrix_power():
    """A relu RNN with non-negative states is linear: dL/dh_1 = (W_hh^T)^(T-1) dL/dh_T."""
    T, H = 12, 3
    rnn = pyrnn.RNN(1, H, nonlinearity="relu", bias=False, dtype=np.float64, seed=0)
    rnn.weight_ih_l0[...] = 1.0
    W = np.array([[0.5, 0.2, 0.0], [0.1, 0.6, 0.3], [0.0, 0.4, 0.7]])
    rnn.weight_hh_l0[...] = W
    x = np.ones((T, 1))  # unbatched; all states positive
    g = np.array([[1.0, -2.0, 0.5]])
    dh = hidden_state_grads(rnn, x, dh_n=g)
    assert dh.shape == (1, T, H)
    for t in range(T):
        np.testing.assert_allclose(dh[0, t], np.linalg.matrix_power(W.T, T - 1 - t) @ g[0], rtol=1e-12)


def _torch_unrolled_dh(layer, x, h0, c0, dy, dh_n, dc_n):
    """dL/dh_t via torch autograd (retain_grad) through per-step torch cells: [L*D, T, B, H]."""
    mode = layer.mode
    L, D, H = layer.num_layers, layer.num_directions, layer.hidden_size
    cell_cls = {"LSTM": torch.nn.LSTMCell, "GRU": torch.nn.GRUCell, "RNN": torch.nn.RNNCell}[mode]
    T = x.shape[0]
    inp = torch.tensor(x)
    loss = 0.0
    hs_all = []
    for ell in range(L):
        outs = []
        for d in range(D):
            sfx = f"_l{ell}" + ("_reverse" if d else "")
            k = ell * D + d
            cell = cell_cls(inp.shape[-1], H).double()
            cell.load_state_dict({n: torch.tensor(getattr(layer, n + sfx))
                                  for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
            h = torch.tensor(h0[k])
            c = torch.tensor(c0[k]) if mode == "LSTM" else None
            hs = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                if mode == "LSTM":
                    h, c = cell(inp[t], (h, c))
                else:
                    h = cell(inp[t], h)
                h.retain_grad()
                hs[t] = h
            if dh_n is not None:
                loss = loss + (h * torch.tensor(dh_n[k])).sum()
            if dc_n is not None and mode == "LSTM":
                loss = loss + (c * torch.tensor(dc_n[k])).sum()
            outs.append(torch.stack(hs))
            hs_all.append(hs)
        inp = torch.cat(outs, dim=-1)
    loss = loss + (inp * torch.tensor(dy)).sum()
    loss.backward()
    return np.stack([np.stack([h.grad.numpy() for h in hs]) for hs in hs_all])


@needs_torch
@pytest.mark.parametrize("mode, layers, bidirectional", [("LSTM", 2, False), ("GRU", 1, True), ("RNN", 2, True),
                                                          ("LSTM", 1, True)])
def test_dh_matches_torch_autograd_retain_grad(mode, layers, bidirectional, rng):
    T, B, I, H = 6, 2, 3, 4
    cls = {"LSTM": pyrnn.LSTM, "GRU": pyrnn.GRU, "RNN": pyrnn.RNN}[mode]
    layer = cls(I, H, num_layers=layers, bidirectional=bidirectional, dtype=np.float64, seed=5)
    D = layer.num_directions
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((layers * D, B, H))
    c0 = rng.standard_normal((layers * D, B, H))
    dy = rng.standard_normal((T, B, D * H))
    dh_n = rng.standard_normal((layers * D, B, H))
    dc_n = rng.standard_normal((layers * D, B, H)) if mode == "LSTM" else None
    hx = (h0, c0) if mode == "LSTM" else h0
    got = hidden_state_grads(layer, x, hx, dy=dy, dh_n=dh_n, dc_n=dc_n)
    expected = _torch_unrolled_dh(layer, x, h0, c0, dy, dh_n, dc_n)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-11)


def test_diagnostic_leaves_the_layer_alone_and_ignores_dropout(rng):
    lstm = pyrnn.LSTM(2, 3, num_layers=2, dropout=0.5, recurrent_dropout=0.5, seed=0)
    x = rng.standard_normal((5, 2, 2)).astype(np.float32)
    dh_n = np.ones((2, 2, 3), np.float32)
    a = hidden_state_grads(lstm, x, dh_n=dh_n)
    b = hidden_state_grads(lstm, x, dh_n=dh_n)
    np.testing.assert_array_equal(a, b)  # no random masks
    assert all(not g.any() for g in lstm.grads.values())
    assert lstm.training


def test_diagnostic_batch_first_lengths_and_norms(rng):
    gru = pyrnn.GRU(2, 3, batch_first=True, dtype=np.float64, seed=1)
    x = rng.standard_normal((4, 7, 2))  # (B, T, I)
    dy = rng.standard_normal((4, 7, 3))
    lengths = np.array([7, 3, 5, 1])
    dh = hidden_state_grads(gru, x, dy=dy, lengths=lengths)
    assert dh.shape == (1, 7, 4, 3)  # time-major
    for b, n in enumerate(lengths):
        assert not dh[0, n:, b].any()
        np.testing.assert_allclose(dh[0, n - 1, b], dy[b, n - 1])  # the last valid step: only its own dy
    # the same as time-major input
    tm = pyrnn.GRU(2, 3, dtype=np.float64, seed=1)
    np.testing.assert_allclose(hidden_state_grads(tm, x.transpose(1, 0, 2), dy=dy.transpose(1, 0, 2),
                                                  lengths=lengths), dh)
    norms = hidden_grad_norms(gru, x, dy=dy, lengths=lengths)
    assert norms.shape == (1, 7)
    np.testing.assert_allclose(norms, step_norms(dh))
    np.testing.assert_allclose(step_norms(dh, "none")[0, 2], np.linalg.norm(dh[0, 2], axis=-1))
    np.testing.assert_allclose(step_norms(dh, "norm")[0], np.sqrt((dh[0] ** 2).sum(axis=(1, 2))))


def test_diagnostic_errors(rng):
    rnn = pyrnn.RNN(2, 3)
    x = rng.standard_normal((4, 1, 2)).astype(np.float32)
    with pytest.raises(TypeError, match="dtype"):
        hidden_state_grads(rnn, x.astype(np.float64))
    with pytest.raises(ValueError, match="shape"):
        hidden_state_grads(rnn, x, dh_n=np.ones((1, 1, 4), np.float32))
    with pytest.raises(ValueError, match="only used by the LSTM"):
        hidden_state_grads(rnn, x, dc_n=np.ones((1, 1, 3), np.float32))
    with pytest.raises(TypeError, match="RNN, LSTM or GRU"):
        hidden_state_grads(pyrnn.RNNCell(2, 3), x)
    with pytest.raises(TypeError, match="RNN, LSTM or GRU layer, got LayerNormGRU"):
        hidden_state_grads(pyrnn.LayerNormGRU(2, 3), x)
    with pytest.raises(TypeError, match="frozen with precision='int8'"):
        hidden_state_grads(rnn.freeze("int8"), x)
    np.testing.assert_array_equal(hidden_state_grads(rnn.freeze(), x, dh_n=np.ones((1, 1, 3), np.float32)),
                                  hidden_state_grads(rnn, x, dh_n=np.ones((1, 1, 3), np.float32)))
    with pytest.raises(ValueError, match="step_norms|reduce"):
        step_norms(np.ones((2, 1, 3)), "max")


def test_clipping_refuses_weights_where_gradients_belong():
    # review 13: named_parameters() entries and list(module.parameters()) were clipped as gradients
    lstm = pyrnn.LSTM(3, 5, dtype=np.float64, seed=0)
    fc = pyrnn.Linear(5, 2, dtype=np.float64, seed=1)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    y, _ = lstm(x)
    lstm.backward(np.ones_like(y))
    w0 = lstm.state_dict()
    g0 = {k: v.copy() for k, v in lstm.grads.items()}
    for call in (lambda p: optim.clip_grad_norm(p, 0.1), lambda p: optim.clip_grad_value(p, 0.01)):
        with pytest.raises(TypeError, match="named_parameters"):
            call(lstm.named_parameters())
        with pytest.raises(TypeError, match="parameter array"):
            call(list(lstm.parameters()) + list(fc.parameters()))
        with pytest.raises(TypeError, match="parameter array"):
            call([lstm.weight_hh_l0])
        with pytest.raises(TypeError, match="not a gradient"):
            call([(lstm.weight_hh_l0, lstm.weight_hh_l0)])
    for k in w0:
        np.testing.assert_array_equal(lstm.state_dict()[k], w0[k])
        np.testing.assert_array_equal(lstm.grads[k], g0[k])
    with pytest.raises(TypeError, match="named_parameters"):
        optim.Adam(list(lstm.named_parameters()), lr=0.1)
    # the gradient arrays themselves, pairs and modules still work
    norm = optim.clip_grad_norm([lstm.grads[k] for k in lstm.grads] + [fc], 1e9)
    assert norm == pytest.approx(np.sqrt(sum((g ** 2).sum() for g in g0.values())))
    optim.clip_grad_value([(lstm.weight_hh_l0, lstm.grads["weight_hh_l0"])], 1e9)
    # a copy of a weight is an ordinary array (not a parameter)
    optim.clip_grad_norm([lstm.weight_hh_l0.copy()], 1e9)


def test_optimizer_refuses_duplicates():
    fc = pyrnn.Linear(4, 2, dtype=np.float64, seed=1)
    with pytest.raises(ValueError, match="twice"):
        optim.SGD([fc, fc], lr=0.1)
    # a tied weight with two gradients is one parameter (gradients summed), not a duplicate
    g1, g2 = np.zeros_like(fc.weight), np.zeros_like(fc.weight)
    optim.SGD([(fc.weight, g1), (fc.weight, g2)], lr=0.1)
