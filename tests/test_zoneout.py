"""Zoneout (Krueger et al. 2016) in the NumPy layers and in pyrnn.torch.

At each training step each unit keeps its previous value with probability
``zoneout`` (the LSTM's c with ``zoneout_c``): h_t = m h_{t-1} + (1 - m) h~_t.
The masks the layers draw are recorded (each layer draws them through its
``_zoneout_masks`` method) and the outputs and every gradient are checked
against pyrnn.reference run with the same masks (an autograd oracle in torch
ops for the LSTM projection, which the reference lacks); p=0 and p=1, eval
mode, mask statistics, gradcheck, torch.compile / torch.func and the
operator's opcheck, ONNX export and bad arguments.
"""

import io
import warnings

import numpy as np
import pytest

import pyrnn
from pyrnn import _stack
from pyrnn import reference as R

try:
    import torch
    from torch import nn

    import pyrnn.torch as pt
except ImportError:  # the NumPy tests run without torch
    torch = nn = pt = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")

T, B, I, H = 5, 3, 4, 6
LENGTHS = np.array([5, 2, 4])
MODES = {  # class, its options (zoneout=0.3 unless given)
    "lstm": ("LSTM", {}),
    "lstm_zc": ("LSTM", {"zoneout_c": 0.6}),
    "lstm_c_only": ("LSTM", {"zoneout": 0.0, "zoneout_c": 0.5}),
    "gru": ("GRU", {}),
    "gru_reset_before": ("GRU", {"reset_after": False}),
    "rnn_tanh": ("RNN", {}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}
RTOL = ATOL = 1e-10  # float64, relative to the largest magnitude (as tests/test_layers.py)


def _close(actual, expected, name=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL * scale, err_msg=name)


def _np_layer(mode, num_layers=2, bidirectional=True, seed=0, **kw):
    cls, opts = MODES[mode]
    opts = {"zoneout": 0.3, **opts, **kw}
    return getattr(pyrnn, cls)(I, H, num_layers=num_layers, bidirectional=bidirectional, dtype=np.float64,
                               seed=seed, **opts)


def _record(layer):
    """{(layer, direction): masks} of the layer's next training calls (its own draws, recorded)."""
    seen = {}
    draw = layer._zoneout_masks

    def spy(ell, d, *args):
        seen[ell, d] = draw(ell, d, *args)
        return seen[ell, d]

    layer._zoneout_masks = spy
    return seen


def _inputs(layer, rng, batch=B):
    LD = layer.num_layers * (2 if layer.bidirectional else 1)
    Ho = layer.proj_size or layer.hidden_size
    x = rng.standard_normal((T, batch, I))
    h0 = 0.5 * rng.standard_normal((LD, batch, Ho))
    c0 = 0.5 * rng.standard_normal((LD, batch, H))
    return x, h0, c0


def _as_np(m):
    return None if m is None else (m.detach().numpy() if hasattr(m, "detach") else np.asarray(m))


def _reference_stack(family, options, params, x, h0, c0, lengths, masks, cot, L, D):
    """The stack through pyrnn.reference, one layer and direction at a time with the given zoneout
    masks ({(layer, d): (m_h, m_c)}): outputs and the gradients of sum(y*dy) + sum(h_n*dh_n) (+ c)."""
    caches = {}

    def run(ell, d, layer_x):
        k = ell * D + d
        p = params(ell, d)
        m_h, m_c = (_as_np(m) for m in masks.get((ell, d), (None, None)))
        common = dict(lengths=lengths, reverse=d == 1, training=True)
        if family == "lstm":
            y, h_n, c_n, cache = R.lstm_forward(layer_x, h0[k], c0[k], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"],
                                                **common, zoneout_h=m_h, zoneout_c=m_c)
        else:
            fwd = R.lstm_forward if family == "lstm" else (R.gru_forward if family == "gru" else R.rnn_forward)
            y, h_n, cache = fwd(layer_x, h0[k], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], **options, **common,
                                zoneout_h=m_h)
            c_n = None
        caches[k] = cache
        return y, h_n, c_n

    y, results = _stack.forward(run, x, L, D)
    grads = {}
    dh0, dc0 = [None] * (L * D), [None] * (L * D)

    def run_back(ell, d, dy_d):
        k = ell * D + d
        if family == "lstm":
            dx, dh0[k], dc0[k], *dW = R.lstm_backward(caches[k], dy_d, cot["h_n"][k], cot["c_n"][k])
        else:
            back = R.gru_backward if family == "gru" else R.rnn_backward
            dx, dh0[k], *dW = back(caches[k], dy_d, cot["h_n"][k])
        sfx = _stack.param_suffix(ell, d)
        for name, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), dW):
            grads[name + sfx] = g
        return dx

    grads["x"] = _stack.backward(run_back, cot["y"], L, D, h0.shape[-1])
    grads["h0"] = np.stack(dh0)
    if family == "lstm":
        grads["c0"] = np.stack(dc0)
    outs = {"y": y, "h_n": np.stack([r[1] for r in results])}
    if family == "lstm":
        outs["c_n"] = np.stack([r[2] for r in results])
    return outs, grads


def _layer_options(layer):
    family = layer.cell.family
    if family == "gru":
        return family, {"reset_after": layer.reset_after}
    if family == "rnn":
        return family, {"nonlinearity": layer.nonlinearity}
    return family, {}


def _cotangents(rng, outs):
    return {k: rng.standard_normal(v.shape) for k, v in outs.items()}


# ------------------------------------------------ NumPy layers: fixed masks --

@pytest.mark.parametrize("mode", list(MODES))
def test_numpy_layer_matches_reference_with_its_masks(mode):
    """2 layers, bidirectional, lengths, initial states: the layer's outputs and every gradient equal
    the reference's with the masks the layer drew."""
    layer = _np_layer(mode)
    seen = _record(layer)
    rng = np.random.default_rng(1)
    x, h0, c0 = _inputs(layer, rng)
    lstm = layer.mode == "LSTM"
    y, state = layer(x, (h0, c0) if lstm else h0, lengths=LENGTHS)
    outs = {"y": y, "h_n": state[0], "c_n": state[1]} if lstm else {"y": y, "h_n": state}
    cot = _cotangents(rng, outs)
    dx, dstate = layer.backward(cot["y"], cot["h_n"], cot.get("c_n"))

    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for m_h, m_c in seen.values():
        assert (m_h is None) == (layer.zoneout == 0) and (m_c is None) == (layer.zoneout_c == 0)
        assert m_h is None or (m_h.shape == (T, B, H) and m_h.dtype == np.float64)
        assert m_c is None or (m_c.shape == (T, B, H) and m_c.dtype == np.float64)
    family, options = _layer_options(layer)
    params = lambda ell, d: layer.direction_params(ell, d)  # noqa: E731
    want, want_grads = _reference_stack(family, options, params, x, h0, c0, LENGTHS, seen, cot, 2, 2)
    for k in outs:
        _close(outs[k], want[k], k)
    _close(dx, want_grads["x"], "dx")
    _close(dstate[0] if lstm else dstate, want_grads["h0"], "dh0")
    if lstm:
        _close(dstate[1], want_grads["c0"], "dc0")
    for name, g in layer.grads.items():
        _close(g, want_grads[name], name)


def test_numpy_layer_masks_are_aligned_with_the_input_in_both_directions():
    """A mask that zones out every step but one: the reverse direction, which reads x[T-1] first, must
    apply mask[t] at the step that reads x[t]. With W_hh = 0 an RNN's fresh value depends on x[t] only."""
    layer = pyrnn.RNN(I, H, bidirectional=True, zoneout=0.5, dtype=np.float64, seed=0)
    for sfx in ("_l0", "_l0_reverse"):
        layer._params["weight_hh" + sfx][...] = 0
    keep = np.ones((T, B, H))
    keep[2] = 0  # only the step that reads x[2] updates
    layer._zoneout_masks = lambda ell, d, T_, B_: (keep, None)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    y, h_n = layer(x)
    fresh, _ = layer.eval()(x)  # no zoneout: every step's own value
    for d in range(2):
        cols = slice(d * H, (d + 1) * H)
        _close(h_n[d], fresh[2, :, cols])
        before = slice(0, 2) if d == 0 else slice(3, T)  # steps before x[2] is read, in each direction
        assert np.all(y[before, :, cols] == 0)


@pytest.mark.parametrize("proj_size, batch_first", [(2, True), (0, False)])
def test_numpy_lstm_with_projection_batch_first_and_recurrent_dropout(proj_size, batch_first):
    """Zoneout with proj_size, batch_first, recurrent_dropout and lengths together, 2 layers
    bidirectional, against an autograd oracle in torch ops with the same masks (the reference has
    no projection nor recurrent dropout)."""
    if torch is None:
        pytest.skip("the oracle needs torch")
    layer = pyrnn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=proj_size, batch_first=batch_first,
                       recurrent_dropout=0.3, zoneout=0.3, zoneout_c=0.4, dtype=np.float64, seed=3)
    seen = _record(layer)
    rec_masks = []
    draw = layer._dropout_mask
    layer._dropout_mask = lambda shape, p: rec_masks.append(draw(shape, p)) or rec_masks[-1]
    rng = np.random.default_rng(2)
    x, h0, c0 = _inputs(layer, rng)
    xb = x.transpose(1, 0, 2) if batch_first else x
    y, (h_n, c_n) = layer(xb, (h0, c0), lengths=LENGTHS)
    cot = _cotangents(rng, {"y": y, "h_n": h_n, "c_n": c_n})
    dx, (dh0, dc0) = layer.backward(cot["y"], cot["h_n"], cot["c_n"])

    assert len(rec_masks) == 4
    masks = {k: (m_h, m_c, rec_masks[k[0] * 2 + k[1]]) for k, (m_h, m_c) in seen.items()}
    params = {n: torch.tensor(p, requires_grad=True) for n, p in layer.named_parameters()}
    xt, h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    yt, h_nt, c_nt = _oracle_stack("lstm", params, xt, h0t, c0t, torch.tensor(LENGTHS), masks, 2, 2)
    if batch_first:
        yt = yt.transpose(0, 1)
    loss = sum((o * torch.tensor(cot[k])).sum() for k, o in (("y", yt), ("h_n", h_nt), ("c_n", c_nt)))
    loss.backward()
    dxt = xt.grad.transpose(0, 1) if batch_first else xt.grad
    for got, want, name in ((y, yt, "y"), (h_n, h_nt, "h_n"), (c_n, c_nt, "c_n"), (dx, dxt, "dx"),
                            (dh0, h0t.grad, "dh0"), (dc0, c0t.grad, "dc0")):
        _close(got, want.detach().numpy(), name)
    for name, p in params.items():
        _close(layer.grads[name], p.grad.numpy(), name)


def _oracle_direction(cell, p, x, h0, c0, lengths, reverse, h_mask, m_h, m_c, nonlinearity="tanh"):
    """One layer and direction in torch ops (autograd): PyTorch's LSTM / GRU / RNN equations, the LSTM
    projection, recurrent dropout on the recurrent products and zoneout; steps past an entry's length
    leave its state and give zero output."""
    T_, B_ = x.shape[:2]
    h = h0
    c = c0
    ys = [None] * T_
    for t in (range(T_ - 1, -1, -1) if reverse else range(T_)):
        valid = (t < lengths)[:, None]
        hr = h if h_mask is None else h * h_mask
        gi = x[t] @ p["W_ih"].T + p["b_ih"]
        gh = hr @ p["W_hh"].T + p["b_hh"]
        if cell == "lstm":
            i, f, g, o = (gi + gh).chunk(4, 1)
            c_tilde = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            c_new = c_tilde if m_c is None else m_c[t] * c + (1 - m_c[t]) * c_tilde
            h_new = torch.sigmoid(o) * torch.tanh(c_tilde)  # Krueger et al. 2016: h~ reads the un-zoned c~
            if p.get("W_hr") is not None:
                h_new = h_new @ p["W_hr"].T
            c = torch.where(valid, c_new, c)
        elif cell == "gru":
            r, z = torch.sigmoid(gi[:, :2 * H] + gh[:, :2 * H]).chunk(2, 1)
            n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
            h_new = (1 - z) * n + z * h
        else:
            h_new = torch.tanh(gi + gh) if nonlinearity == "tanh" else torch.relu(gi + gh)
        if m_h is not None:
            h_new = m_h[t] * h + (1 - m_h[t]) * h_new
        ys[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
        h = torch.where(valid, h_new, h)
    return torch.stack(ys), h, c


def _oracle_stack(cell, params, x, h0, c0, lengths, masks, L, D, nonlinearity="tanh"):
    """The stack through _oracle_direction; masks {(layer, d): (m_h, m_c, h_mask)} (NumPy or tensors)."""
    def t(a):
        return None if a is None else torch.as_tensor(a)

    def run(ell, d, layer_x):
        k = ell * D + d
        sfx = _stack.param_suffix(ell, d)
        p = {short: params.get(name + sfx) for short, name in
             (("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh"),
              ("W_hr", "weight_hr"))}
        m_h, m_c, h_mask = (t(m) for m in masks[ell, d])
        return _oracle_direction(cell, p, layer_x, h0[k], None if c0 is None else c0[k], lengths, d == 1, h_mask,
                                 m_h, m_c, nonlinearity)

    y, results = _stack.forward(run, x, L, D, concat=lambda ys: torch.cat(ys, 2))
    c_n = torch.stack([r[2] for r in results]) if cell == "lstm" else None
    return y, torch.stack([r[1] for r in results]), c_n


# ------------------------------------------------------ NumPy layers: p=0, p=1, eval --

@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_numpy_zero_rate_and_zero_masks_equal_no_zoneout(mode):
    rng = np.random.default_rng(4)
    plain = _np_layer(mode, zoneout=0.0, **({"zoneout_c": 0.0} if mode == "lstm" else {}))
    zoned = _np_layer(mode, zoneout=0.0, **({"zoneout_c": 0.0} if mode == "lstm" else {}))
    assert zoned._zoneout_masks(0, 0, T, B) == (None, None)
    injected = _np_layer(mode, zoneout=0.5)
    injected._zoneout_masks = lambda ell, d, T_, B_: (np.zeros((T_, B_, H)),
                                                     np.zeros((T_, B_, H)) if mode == "lstm" else None)
    x, h0, c0 = _inputs(plain, rng)
    hx = (h0, c0) if mode == "lstm" else h0
    results = []
    for layer in (plain, zoned, injected):
        y, state = layer(x, hx, lengths=LENGTHS)
        dx, dstate = layer.backward(np.ones_like(y))
        results.append([y, state, dx, dstate, dict(layer.grads)])
    for other in results[1:]:
        for a, b in zip(_leaves(results[0]), _leaves(other)):
            np.testing.assert_array_equal(a, b)


def _leaves(tree):
    if isinstance(tree, dict):
        return [v for k in sorted(tree) for v in _leaves(tree[k])]
    if isinstance(tree, (tuple, list)):
        return [v for t in tree for v in _leaves(t)]
    return [tree]


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_relu"])
def test_numpy_rate_one_keeps_the_initial_state(mode):
    """zoneout=1 (and zoneout_c=1): every unit keeps h0 (and c0) at every step; nothing reaches the
    weights or the input, and dh0 collects the output gradients of the valid steps."""
    layer = _np_layer(mode, num_layers=1, zoneout=1.0)
    rng = np.random.default_rng(5)
    x, h0, c0 = _inputs(layer, rng)
    lstm = mode == "lstm"
    y, state = layer(x, (h0, c0) if lstm else h0, lengths=LENGTHS)
    valid = (np.arange(T)[:, None] < LENGTHS)[:, :, None]
    expected = np.concatenate([np.where(valid, h0[0], 0), np.where(valid, h0[1], 0)], axis=2)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(state[0] if lstm else state, h0)
    if lstm:
        np.testing.assert_array_equal(state[1], c0)
    dy = rng.standard_normal(y.shape)
    dx, dstate = layer.backward(dy)
    np.testing.assert_array_equal(dx, 0)
    for g in layer.grads.values():
        np.testing.assert_array_equal(g, 0)
    dh0 = dstate[0] if lstm else dstate
    for d in range(2):
        _close(dh0[d], np.sum(np.where(valid, dy[:, :, d * H:(d + 1) * H], 0), axis=0))


def test_numpy_lstm_cell_rate_one_keeps_c0():
    layer = pyrnn.LSTM(I, H, zoneout=0.0, zoneout_c=1.0, dtype=np.float64, seed=0)
    x, h0, c0 = _inputs(layer, np.random.default_rng(6))
    y, (h_n, c_n) = layer(x, (h0, c0))
    np.testing.assert_array_equal(c_n, c0)
    assert not np.allclose(y[0], y[-1])  # h = o * tanh(f c0 + i g) still moves with the gates


@pytest.mark.parametrize("mode", ["lstm_zc", "gru", "rnn_tanh"])
def test_numpy_eval_is_the_identity(mode):
    zoned = _np_layer(mode, zoneout=0.7)
    plain_mode = MODES[mode][0]
    plain = getattr(pyrnn, plain_mode)(I, H, num_layers=2, bidirectional=True, dtype=np.float64)
    plain.load_state_dict(zoned.state_dict())
    assert set(zoned.state_dict()) == set(plain.state_dict())
    x, h0, c0 = _inputs(zoned, np.random.default_rng(7))
    hx = (h0, c0) if plain_mode == "LSTM" else h0
    draws = _record(zoned)
    for a, b in zip(_leaves(zoned.eval()(x, hx, lengths=LENGTHS)), _leaves(plain.eval()(x, hx, lengths=LENGTHS))):
        np.testing.assert_array_equal(a, b)
    frozen = zoned.freeze()
    for a, b in zip(_leaves(frozen(x, hx)), _leaves(plain(x, hx))):
        np.testing.assert_array_equal(a, b)
    assert draws == {}
    zoned.train()
    assert not np.array_equal(zoned(x, hx)[0], plain(x, hx)[0])  # training mode does zone out


def test_numpy_masks_statistics_and_fresh_draws():
    layer = pyrnn.LSTM(I, 50, num_layers=2, bidirectional=True, proj_size=20, zoneout=0.3, zoneout_c=0.1,
                       seed=8)
    seen = _record(layer)
    x = np.zeros((40, 16, I), np.float32)
    layer(x)
    first = {k: v for k, v in seen.items()}
    for m_h, m_c in first.values():
        assert m_h.shape == (40, 16, 20) and m_c.shape == (40, 16, 50) and m_h.dtype == np.float32
        assert set(np.unique(m_h)) == {0, 1} and set(np.unique(m_c)) == {0, 1}
        assert abs(m_h.mean() - 0.3) < 0.03 and abs(m_c.mean() - 0.1) < 0.02
        assert not np.array_equal(m_h[0], m_h[1])  # a mask per step
    assert not np.array_equal(first[0, 0][0], first[0, 1][0])  # per direction
    layer(x)
    assert not np.array_equal(first[0, 0][0], seen[0, 0][0])  # drawn again per call
    layer._saved = None
    seeded = [pyrnn.GRU(I, H, zoneout=0.5, seed=9) for _ in range(2)]
    masks = [_record(m) for m in seeded]
    for m in seeded:
        m(x[:, :2])
    np.testing.assert_array_equal(masks[0][0, 0][0], masks[1][0, 0][0])  # the layer's seed fixes them


def test_numpy_repr_and_unbatched():
    assert repr(pyrnn.LSTM(3, 4, zoneout=0.1)) == "LSTM(3, 4, zoneout=0.1)"
    assert repr(pyrnn.LSTM(3, 4, zoneout=0.1, zoneout_c=0.2)) == "LSTM(3, 4, zoneout=0.1, zoneout_c=0.2)"
    assert repr(pyrnn.LSTM(3, 4, zoneout_c=0.2)) == "LSTM(3, 4, zoneout_c=0.2)"
    assert repr(pyrnn.GRU(3, 4, zoneout=0.25)) == "GRU(3, 4, zoneout=0.25)"
    assert repr(pyrnn.RNN(3, 4)) == "RNN(3, 4)"
    layer = pyrnn.GRU(I, H, zoneout=0.4, dtype=np.float64, seed=0)
    seen = _record(layer)
    x = np.random.default_rng(0).standard_normal((T, I))
    y, h_n = layer(x)  # unbatched: masks [T, 1, H]
    assert seen[0, 0][0].shape == (T, 1, H) and y.shape == (T, H)
    dx, _ = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape


@pytest.mark.parametrize("make, error, match", [
    (lambda: pyrnn.LSTM(I, H, zoneout=1.5), ValueError, r"zoneout should be a number in range \[0, 1\]"),
    (lambda: pyrnn.GRU(I, H, zoneout=-0.1), ValueError, "zoneout should be a number"),
    (lambda: pyrnn.RNN(I, H, zoneout="0.1"), TypeError, "zoneout should be a number"),
    (lambda: pyrnn.RNN(I, H, zoneout=True), TypeError, "zoneout should be a number"),
    (lambda: pyrnn.LSTM(I, H, zoneout_c=2), ValueError, "zoneout_c should be a number"),
    (lambda: pyrnn.LSTM(I, H, zoneout_c=float("nan")), ValueError, "zoneout_c should be a number"),
    (lambda: pyrnn.GRU(I, H, zoneout_c=0.1), TypeError, "zoneout_c"),
    (lambda: pyrnn.RNN(I, H, zoneout_c=0.1), TypeError, "zoneout_c"),
    (lambda: pyrnn.layers._RNNBase("GRU", I, H, zoneout_c=0.1), TypeError, "only for the LSTM|LSTM's cell-state"),
])
def test_numpy_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


# ------------------------------------------------------------- pyrnn.torch --

def _torch_module(mode, dtype=None, **kw):
    cls, opts = MODES[mode]
    opts = {"zoneout": 0.3, **opts, **kw}
    torch.manual_seed(0)
    return getattr(pt, cls)(I, H, dtype=dtype or torch.float64, **opts)


def _torch_params(m):
    return lambda ell, d: {short: None if getattr(m, name + _stack.param_suffix(ell, d), None) is None
                           else getattr(m, name + _stack.param_suffix(ell, d)).detach().numpy()
                           for short, name in (("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"),
                                               ("b_hh", "bias_hh"))}


def _torch_step(m, x, hx, lengths, cot, fn=None):
    """Forward and backward of sum(y*dy) + sum(h_n*dh_n) (+ c); returns outputs and gradients (NumPy)."""
    fn = fn or m
    m.zero_grad(set_to_none=True)
    xt = torch.tensor(x, requires_grad=True)
    lstm = isinstance(m, nn.LSTM)
    hxt = tuple(torch.tensor(h, requires_grad=True) for h in hx) if lstm else torch.tensor(hx, requires_grad=True)
    if lengths is None:
        y, state = fn(xt, hxt)
    else:
        packed = nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
        y, state = fn(packed, hxt)
        y, _ = nn.utils.rnn.pad_packed_sequence(y, total_length=x.shape[0])
    outs = {"y": y, "h_n": state[0], "c_n": state[1]} if lstm else {"y": y, "h_n": state}
    loss = sum((o * torch.as_tensor(cot[k])).sum() for k, o in outs.items()) if cot is not None else None
    if loss is not None:
        loss.backward()
    grads = {"x": xt.grad, "h0": hxt[0].grad if lstm else hxt.grad, **({"c0": hxt[1].grad} if lstm else {})}
    grads.update({n: p.grad for n, p in m.named_parameters()})
    return ({k: v.detach().numpy() for k, v in outs.items()},
            {k: None if v is None else v.numpy() for k, v in grads.items()})


@needs_torch
@pytest.mark.parametrize("mode", list(MODES))
def test_torch_module_matches_reference_with_its_masks(mode):
    """Eager: the module's outputs and every gradient (input, states, parameters) equal the reference's
    with the masks the module drew (2 layers, bidirectional, a PackedSequence of unsorted lengths)."""
    m = _torch_module(mode, num_layers=2, bidirectional=True)
    seen = _record(m)
    rng = np.random.default_rng(11)
    x, h0, c0 = _inputs(m, rng)
    lstm = isinstance(m, nn.LSTM)
    hx = (h0, c0) if lstm else h0
    probe = {"y": np.zeros((T, B, 2 * H)), "h_n": h0, **({"c_n": c0} if lstm else {})}
    cot = _cotangents(rng, probe)
    outs, grads = _torch_step(m, x, hx, LENGTHS, cot)
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for m_h, m_c in seen.values():
        assert m_h is None or (m_h.shape == (T, B, H) and m_h.dtype == torch.float64)
        assert (m_c is None) == (m.zoneout_c == 0)
    family = m._cell
    options = {"reset_after": m.reset_after} if family == "gru" else (
        {"nonlinearity": m.nonlinearity} if family == "rnn" else {})
    want, want_grads = _reference_stack(family, options, _torch_params(m), x, h0, c0, LENGTHS, seen, cot, 2, 2)
    for k in outs:
        _close(outs[k], want[k], k)
    for k, g in grads.items():
        _close(g, want_grads[k], k)


@needs_torch
def test_torch_lstm_projection_batch_first_recurrent_dropout_matches_oracle(monkeypatch):
    torch.manual_seed(0)
    m = pt.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2, batch_first=True, recurrent_dropout=0.3,
                zoneout=0.3, zoneout_c=0.5, dtype=torch.float64)
    seen = _record(m)
    rec = []
    real = pt._dropout_mask

    def spy(*args):
        rec.append(real(*args))
        return rec[-1]

    rng = np.random.default_rng(12)
    x, h0, c0 = _inputs(m, rng)
    xt = torch.tensor(x.transpose(1, 0, 2), requires_grad=True)
    h0t, c0t = torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)
    monkeypatch.setattr(pt, "_dropout_mask", spy)
    y, (h_n, c_n) = m(xt, (h0t, c0t))
    cot = _cotangents(rng, {"y": y.detach().numpy(), "h_n": h0, "c_n": c0})
    loss = sum((o * torch.tensor(cot[k])).sum() for k, o in (("y", y), ("h_n", h_n), ("c_n", c_n)))
    loss.backward()
    params = {n: p.detach().clone().requires_grad_() for n, p in m.named_parameters()}
    xo, h0o, c0o = (t.detach().clone().requires_grad_() for t in (xt, h0t, c0t))
    masks = {k: (m_h, m_c, rec[k[0] * 2 + k[1]]) for k, (m_h, m_c) in seen.items()}
    yo, h_no, c_no = _oracle_stack("lstm", params, xo.transpose(0, 1), h0o, c0o, torch.full((B,), T), masks, 2, 2)
    yo = yo.transpose(0, 1)
    loss_o = sum((o * torch.tensor(cot[k])).sum() for k, o in (("y", yo), ("h_n", h_no), ("c_n", c_no)))
    loss_o.backward()
    for got, want in ((y, yo), (h_n, h_no), (c_n, c_no), (xt.grad, xo.grad), (h0t.grad, h0o.grad),
                      (c0t.grad, c0o.grad)):
        _close(got.detach().numpy(), want.detach().numpy())
    for n, p in m.named_parameters():
        _close(p.grad.numpy(), params[n].grad.numpy(), n)


@needs_torch
@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_torch_zero_masks_equal_no_zoneout_and_rate_one_keeps_h0(mode):
    plain = _torch_module(mode, zoneout=0.0, **({"zoneout_c": 0.0} if mode == "lstm" else {}))
    zeros = _torch_module(mode, zoneout=0.5)
    zeros._zoneout_masks = lambda ell, d, T_, B_, dtype: (torch.zeros(T_, B_, H, dtype=dtype),
                                                          torch.zeros(T_, B_, H, dtype=dtype) if mode == "lstm"
                                                          else None)
    rng = np.random.default_rng(13)
    x, h0, c0 = _inputs(plain, rng)
    hx = (h0, c0) if mode == "lstm" else h0
    cot = _cotangents(rng, {"y": np.zeros((T, B, H)), "h_n": h0, **({"c_n": c0} if mode == "lstm" else {})})
    a, b = _torch_step(plain, x, hx, None, cot), _torch_step(zeros, x, hx, None, cot)
    for u, v in zip(_leaves(a), _leaves(b)):
        np.testing.assert_array_equal(u, v)

    keep = _torch_module(mode, zoneout=1.0)
    outs, grads = _torch_step(keep, x, hx, LENGTHS, cot)
    valid = (np.arange(T)[:, None] < LENGTHS)[:, :, None]
    np.testing.assert_array_equal(outs["y"], np.where(valid, h0[0], 0))
    np.testing.assert_array_equal(outs["h_n"], h0)
    if mode == "lstm":
        np.testing.assert_array_equal(outs["c_n"], c0)
    np.testing.assert_array_equal(grads["x"], 0)
    for n, _ in keep.named_parameters():
        np.testing.assert_array_equal(grads[n], 0)


@needs_torch
@pytest.mark.parametrize("mode", ["lstm_zc", "gru", "rnn_relu"])
def test_torch_eval_equals_torch_nn(mode):
    zoned = _torch_module(mode, num_layers=2, bidirectional=True, zoneout=0.6)
    cls, opts = MODES[mode]
    ref = getattr(nn, cls)(I, H, num_layers=2, bidirectional=True, dtype=torch.float64,
                           **{k: v for k, v in opts.items() if k != "zoneout_c"})
    ref.load_state_dict(zoned.state_dict())  # masks are no parameters nor buffers
    assert set(zoned.state_dict()) == set(ref.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    draws = _record(zoned)
    zoned.eval()
    for a, b in zip(_leaves(zoned(x)), _leaves(ref(x))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert draws == {}
    zoned.train()
    with torch.no_grad():  # training mode, no gradient: the masks still apply (inference kernel)
        torch.manual_seed(3)
        y_nograd = zoned(x)[0]
    torch.manual_seed(3)
    y_grad = zoned(x)[0]
    torch.testing.assert_close(y_nograd, y_grad.detach(), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(y_grad, ref(x)[0])


@needs_torch
def test_torch_masks_use_torch_rng_and_statistics():
    m = pt.LSTM(I, 50, num_layers=2, bidirectional=True, proj_size=20, zoneout=0.3, zoneout_c=0.1)
    seen = _record(m)
    x = torch.zeros(40, 16, I)
    torch.manual_seed(5)
    y1 = m(x)[0]
    first = dict(seen)
    for m_h, m_c in first.values():
        assert m_h.shape == (40, 16, 20) and m_c.shape == (40, 16, 50) and m_h.dtype == torch.float32
        assert set(m_h.unique().tolist()) == {0.0, 1.0}
        assert abs(m_h.mean().item() - 0.3) < 0.03 and abs(m_c.mean().item() - 0.1) < 0.02
        assert not torch.equal(m_h[0], m_h[1])
    torch.manual_seed(5)
    y2 = m(x)[0]
    for k in first:
        assert torch.equal(first[k][0], seen[k][0]) and torch.equal(first[k][1], seen[k][1])
    assert torch.equal(y1, y2)
    m(x)
    assert not torch.equal(first[0, 0][0], seen[0, 0][0])


@needs_torch
@pytest.mark.parametrize("mode", ["lstm_zc", "gru", "rnn_tanh"])
def test_torch_gradcheck_with_fixed_masks(mode):
    torch.manual_seed(0)
    cls, opts = MODES[mode]
    m = getattr(pt, cls)(2, 3, num_layers=2, bidirectional=True, dtype=torch.float64, **{"zoneout": 0.4, **opts})
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    lstm = isinstance(m, nn.LSTM)
    states = (h0, c0) if lstm else (h0,)

    def fn(x, *rest):
        torch.manual_seed(7)  # the same masks at every evaluation
        hx, ps = rest[:len(states)], rest[len(states):]
        y, state = torch.func.functional_call(m, dict(zip(names, ps)), (x, hx if lstm else hx[0]))
        return (y, *state) if lstm else (y, state)

    assert torch.autograd.gradcheck(fn, (x, *states, *params))


@needs_torch
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_torch_cells(mode):
    """Cells: a mask per call (per step), the same as a one-step sequence module with that mask;
    eval mode is torch.nn's cell."""
    cls = {"lstm": "LSTMCell", "gru": "GRUCell"}[mode]
    kw = {"zoneout": 0.5, **({"zoneout_c": 0.3} if mode == "lstm" else {})}
    torch.manual_seed(0)
    cell = getattr(pt, cls)(I, H, dtype=torch.float64, **kw)
    assert "zoneout=0.5" in repr(cell) and (mode != "lstm" or "zoneout_c=0.3" in repr(cell))
    seen = []
    draw = cell._zoneout_masks
    cell._zoneout_masks = lambda *a: seen.append(draw(*a)) or seen[-1]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, I, generator=g, dtype=torch.float64, requires_grad=True)
    h = torch.randn(B, H, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(B, H, generator=g, dtype=torch.float64, requires_grad=True)
    out = cell(x, (h, c)) if mode == "lstm" else (cell(x, h),)
    m_h, m_c = seen[0]
    assert m_h.shape == (1, B, H) and (m_c is None) == (mode != "lstm")
    layer = getattr(pt, cls[:-4])(I, H, dtype=torch.float64, **kw)
    layer.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    layer._zoneout_masks = lambda ell, d, T_, B_, dtype: seen[0]
    hx = (h[None], c[None]) if mode == "lstm" else h[None]
    _, state = layer(x[None], hx)
    want = state if mode == "lstm" else (state,)
    for a, b in zip(out, want):
        torch.testing.assert_close(a, b[0], rtol=1e-12, atol=1e-12)
    sum(o.sum() for o in out).backward()
    assert x.grad is not None and h.grad is not None and cell.weight_hh.grad is not None
    assert torch.autograd.gradcheck(lambda x, h: _seeded_cell(cell, x, h, c, mode), (x, h))
    ref = getattr(nn, cls)(I, H, dtype=torch.float64)
    ref.load_state_dict(cell.state_dict())
    cell.eval()
    del cell._zoneout_masks
    with torch.no_grad():
        for a, b in zip(_leaves(cell(x, (h, c)) if mode == "lstm" else cell(x, h)),
                        _leaves(ref(x, (h, c)) if mode == "lstm" else ref(x, h))):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _seeded_cell(cell, x, h, c, mode):
    torch.manual_seed(3)
    return cell(x, (h, c)) if mode == "lstm" else cell(x, h)


@needs_torch
def test_torch_repr_state_dict_and_bad_arguments():
    m = pt.LSTM(I, H, num_layers=2, zoneout=0.1, zoneout_c=0.2)
    assert "zoneout=0.1" in repr(m) and "zoneout_c=0.2" in repr(m)
    assert "zoneout_c" not in repr(pt.LSTM(I, H, zoneout=0.1)) and "zoneout" not in repr(pt.GRU(I, H))
    assert "zoneout=0.3" in repr(pt.GRU(I, H, zoneout=0.3)) and "zoneout=0.3" in repr(pt.RNN(I, H, zoneout=0.3))
    assert m.zoneout == 0.1 and m.zoneout_c == 0.2 and pt.LSTM(I, H, zoneout=0.4).zoneout_c == 0.4
    assert set(m.state_dict()) == set(nn.LSTM(I, H, num_layers=2).state_dict())
    for make, error, match in [
        (lambda: pt.LSTM(I, H, zoneout=1.5), ValueError, r"zoneout should be a number in range \[0, 1\]"),
        (lambda: pt.GRU(I, H, zoneout=-1), ValueError, "zoneout should be a number"),
        (lambda: pt.LSTM(I, H, zoneout_c="a"), TypeError, "zoneout_c should be a number"),
        (lambda: pt.GRU(I, H, zoneout_c=0.1), TypeError, "GRU: zoneout_c is the LSTM's cell-state zoneout rate"),
        (lambda: pt.RNN(I, H, zoneout_c=0.1), TypeError, "RNN: zoneout_c"),
        (lambda: pt.GRUCell(I, H, zoneout_c=0.1), TypeError, "zoneout_c"),
        (lambda: pt.RNNCell(I, H, zoneout=2.0), ValueError, "zoneout should be a number"),
        (lambda: pt.LSTMCell(I, H, zoneout_c=-0.5), ValueError, "zoneout_c should be a number"),
    ]:
        with pytest.raises(error, match=match):
            make()


# ------------------------------------------------- torch.compile, torch.func, opcheck --

@pytest.fixture
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class _Model(nn.Module if nn is not None else object):
    def __init__(self, cls, **kw):
        super().__init__()
        self.rnn = getattr(pt, cls)(I, H, dtype=torch.float64, **kw)
        width = (kw.get("proj_size") or H) * (2 if kw.get("bidirectional") else 1)
        self.head = nn.Linear(width, 2, dtype=torch.float64)

    def forward(self, x, hx=None):
        y, state = self.rnn(x, hx)
        h_n = state[0] if isinstance(state, tuple) else state
        return self.head(y).square().mean() + h_n.square().mean()


def _train_step(model, fn, x, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    xs = x.clone().requires_grad_()
    loss = fn(xs)
    loss.backward()
    return [loss.detach(), xs.grad] + [p.grad.clone() for _, p in model.named_parameters()]


COMPILED = {
    "lstm": ("LSTM", {"zoneout": 0.3, "zoneout_c": 0.5}),
    "lstm_proj": ("LSTM", {"proj_size": 2, "zoneout": 0.3, "recurrent_dropout": 0.2}),
    "gru": ("GRU", {"zoneout": 0.3, "dropout": 0.2}),
    "rnn": ("RNN", {"zoneout": 0.3, "nonlinearity": "relu"}),
}


@needs_torch
@pytest.mark.usefixtures("_fresh_dynamo")
@pytest.mark.parametrize("mode", list(COMPILED))
def test_compile_fullgraph_training_matches_eager(mode):
    """torch.compile(fullgraph=True): the masks are drawn with torch ops in the graph (the same draws
    as eager under the same seed with aot_eager), and the operator carries them to the backward."""
    cls, kw = COMPILED[mode]
    torch.manual_seed(0)
    model = _Model(cls, num_layers=2, bidirectional=True, **kw)
    x = torch.randn(T, B, I, dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for seed in (1, 2):  # the second call runs the cached graph
        got, want = _train_step(model, compiled, x, seed), _train_step(model, model, x, seed)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    model.eval()  # eval: no masks (a recompile), the same as eager
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-10, atol=1e-10)


@needs_torch
@pytest.mark.usefixtures("_fresh_dynamo")
def test_compile_cell_loop_with_zoneout():
    torch.manual_seed(0)
    cell = pt.LSTMCell(I, H, zoneout=0.4, zoneout_c=0.2, dtype=torch.float64)

    def loop(x):
        state = None
        for t in range(x.shape[0]):
            state = cell(x[t], state)
        return state[0].sum() + state[1].square().sum()

    x = torch.randn(T, B, I, dtype=torch.float64)
    compiled = torch.compile(loop, fullgraph=True, backend="aot_eager")
    for a, b in zip(_train_step(cell, compiled, x, 4), _train_step(cell, loop, x, 4)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@needs_torch
@pytest.mark.parametrize("mode", ["lstm_zc", "gru"])
def test_torch_func_grad_and_vmap_with_zoneout(mode):
    """torch.func.grad over functional_call (the operator path) equals eager autograd under the same
    seed; vmap over a batch of inputs without gradients folds the masks into the batch."""
    torch.manual_seed(0)
    model = _Model(MODES[mode][0], num_layers=2, bidirectional=True, zoneout=0.4,
                   **{k: v for k, v in MODES[mode][1].items() if k != "zoneout"})
    x = torch.randn(T, B, I, dtype=torch.float64)
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p):
        torch.manual_seed(6)
        return torch.func.functional_call(model, p, (x,))

    got = torch.func.grad(loss)(params)
    want = _train_step(model, model, x, 6)[2:]
    for (n, g), w in zip(got.items(), want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)

    rnn = model.rnn
    masks = {}
    torch.manual_seed(8)
    xs = torch.randn(3, T, B, I, dtype=torch.float64)
    for ell in range(2):
        for d in range(2):
            masks[ell, d] = tuple(None if z is None else (torch.rand(3, T, B, H, dtype=torch.float64) < 0.4).double()
                                  for z in rnn._zoneout_masks(ell, d, T, B, torch.float64))
    per_sample = []
    for i in range(3):
        rnn._zoneout_masks = lambda ell, d, *a, i=i: tuple(None if z is None else z[i] for z in masks[ell, d])
        with torch.no_grad():
            per_sample.append(rnn(xs[i])[0])
    # vmapped masks: one per sample, through the operator's vmap rule (folded into the batch)
    keys = [(ell, d, j) for ell in range(2) for d in range(2) for j in range(2) if masks[ell, d][j] is not None]

    def one(xi, mi):
        given = dict(zip(keys, mi))
        rnn._zoneout_masks = lambda ell, d, *a: (given.get((ell, d, 0)), given.get((ell, d, 1)))
        return rnn(xi)[0]

    with torch.no_grad():
        got = torch.func.vmap(one)(xs, [masks[ell, d][j] for ell, d, j in keys])
    del rnn._zoneout_masks
    torch.testing.assert_close(got, torch.stack(per_sample), rtol=1e-10, atol=1e-10)


def _op_args(cell, dtype=torch.float64 if torch else None, proj=0, grad=True, need_residual=True, zc=True):
    g = torch.Generator().manual_seed(0)
    G, Ho = {"lstm": 4, "gru": 3, "rnn": 1}[cell], proj or H

    def t(*shape, scale=0.5):
        return (torch.randn(shape, generator=g, dtype=dtype) * scale).requires_grad_(grad)

    def mask(*shape):
        return (torch.rand(shape, generator=g, dtype=dtype) < 0.4).to(dtype)

    x, W_ih, W_hh = t(T, B, I), t(G * H, I), t(G * H, Ho)
    h0, b_ih, b_hh = t(B, Ho), t(G * H), t(G * H)
    c0 = t(B, H) if cell == "lstm" else None
    W_hr = t(Ho, H) if proj else None
    lengths = torch.tensor([5, 2, 4])
    h_mask = mask(B, Ho) / 0.6
    zh = mask(T, B, Ho)
    zcm = mask(T, B, H) if cell == "lstm" and zc else None
    return (x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths, h_mask, cell, "tanh", True, False, need_residual,
            zh, zcm)


OPCHECKS = [("lstm", 0, True), ("lstm", 2, True), ("lstm", 0, False), ("gru", 0, True), ("rnn", 0, True)]


@needs_torch
@pytest.mark.parametrize("cell, proj, need_residual", OPCHECKS)
def test_opcheck_rnn_layer_with_zoneout(cell, proj, need_residual):
    args = _op_args(cell, proj=proj, need_residual=need_residual)
    torch.library.opcheck(torch.ops.pyrnn.rnn_layer.default, args)
    if cell == "lstm":
        torch.library.opcheck(torch.ops.pyrnn.rnn_layer.default, args[:-1] + (None,))  # zoneout_h only
        torch.library.opcheck(torch.ops.pyrnn.rnn_layer.default, args[:-2] + (None, args[-1]))  # zoneout_c only


@needs_torch
@pytest.mark.parametrize("cell, proj", [("lstm", 2), ("gru", 0), ("rnn", 0)])
def test_op_with_zoneout_matches_kernels_backward_and_gradcheck(cell, proj):
    from pyrnn import functional as F

    args = _op_args(cell, proj=proj)
    tensors, zh, zc = args[:10], args[15], args[16]
    y, h_n, c_n, residual = torch.ops.pyrnn.rnn_layer(*args)
    arrays = [None if t is None else t.detach().numpy() for t in tensors]
    ey, eh, ec, ws = F.forward(cell, *arrays[:7], W_hr=arrays[7], lengths=arrays[8], h_mask=arrays[9],
                               zoneout_h=zh.numpy(), zoneout_c=None if zc is None else zc.numpy())
    assert torch.equal(y, torch.from_numpy(ey)) and torch.equal(h_n, torch.from_numpy(eh))
    plain = torch.ops.pyrnn.rnn_layer(*args[:15])  # without the masks: another result
    assert not torch.equal(plain[0], y)
    assert residual.shape == plain[3].shape  # the residual's size does not depend on zoneout

    g = torch.Generator().manual_seed(5)
    dy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    opts = args[10:14]
    eager = F.backward(ws, dy.numpy())
    got = torch.ops.pyrnn.rnn_layer_backward(*tensors, y, residual, dy, None, None, *opts, zh, zc)
    rerun = torch.ops.pyrnn.rnn_layer_backward(*tensors, y, torch.empty(0, dtype=torch.uint8), dy, None, None,
                                               *opts, zh, zc)
    for name, a, b in zip(("x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh", "W_hr"), got, rerun):
        if eager[name] is not None:
            assert torch.equal(a, b) and torch.equal(a, torch.from_numpy(eager[name])), name
    with pytest.raises(ValueError, match="residual"):  # the residual records that zoneout masks were given
        torch.ops.pyrnn.rnn_layer_backward(*tensors, y, residual, dy, None, None, *opts)
    detached = tuple(None if t is None else t.detach() for t in tensors)
    torch.library.opcheck(torch.ops.pyrnn.rnn_layer_backward.default,
                          detached + (y.detach(), residual, dy, None, None) + opts + (zh, zc))

    given = [t for t in tensors if t is not None]

    def f(*ts):
        it = iter(ts)
        out = torch.ops.pyrnn.rnn_layer(*(None if t is None else next(it) for t in tensors), *args[10:])
        return out[:3] if cell == "lstm" else out[:2]

    assert torch.autograd.gradcheck(f, tuple(given))


# ------------------------------------------------------------------- ONNX --

@needs_torch
def test_onnx_export_in_eval_mode_and_error_in_training_mode():
    pytest.importorskip("onnx")
    for model in (pt.LSTM(3, 4, zoneout=0.3, zoneout_c=0.1), pt.GRU(3, 4, zoneout=0.2)):
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (torch.randn(4, 2, 3),), buf, dynamo=False)
        assert buf.getvalue()
        model.train()
        with pytest.raises(NotImplementedError, match="zoneout.*eval"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(4, 2, 3),), io.BytesIO(), dynamo=False,
                              training=torch.onnx.TrainingMode.TRAINING)
    cell = pt.GRUCell(3, 4, zoneout=0.2)
    with pytest.raises(NotImplementedError, match="zoneout"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(cell, (torch.randn(2, 3),), io.BytesIO(), dynamo=False,
                          training=torch.onnx.TrainingMode.TRAINING)


@needs_torch
def test_vmap_per_sample_grads_with_vmapped_masks():
    """vmap(grad(...)) through the operator with a mask per sample: each sample's forward keeps its own
    residual and masks (the vmap rules loop), giving the per-sample gradients of separate calls."""
    from pyrnn._torch_ops import RnnLayerFunction

    args = list(_op_args("lstm", grad=False))
    x, W_ih, zh = args[0], args[3], args[15]
    xs, zhs = torch.stack([x, 0.5 * x, 2 * x]), torch.stack([zh, 1 - zh, zh])

    def loss(W, xi, zhi, apply=RnnLayerFunction.apply):
        a = list(args)
        a[0], a[3], a[14], a[15] = xi, W, True, zhi
        return apply(*a)[0].square().sum()

    got = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(W_ih, xs, zhs)
    for i in range(3):
        W = W_ih.clone().requires_grad_()
        loss(W, xs[i], zhs[i], apply=torch.ops.pyrnn.rnn_layer).backward()
        torch.testing.assert_close(got[i], W.grad, rtol=1e-10, atol=1e-12)


@needs_torch
def test_vmap_with_different_randomness_draws_masks_per_sample():
    """The masks are drawn out of place, so vmap(randomness="different") batches them."""
    torch.manual_seed(0)
    g = pt.GRU(3, 4, zoneout=0.5)
    x = torch.randn(1, 5, 2, 3).expand(2, 5, 2, 3)  # the same sequence twice
    y = torch.func.vmap(lambda xi: g(xi)[0], randomness="different")(x)
    assert y.shape == (2, 5, 2, 4)
    assert not torch.equal(y[0], y[1])  # different masks per sample
