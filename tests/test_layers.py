"""pyrnn.RNN / LSTM / GRU against torch.nn loaded from the same state_dict, and
the layer API itself (dropout, variational dropout, state dicts, errors)."""

import itertools
import re

import numpy as np
import pytest

import pyrnn
from pyrnn import reference as R
from pyrnn.testing import TOLERANCES

T, B, I, H = 7, 6, 5, 4
LENGTHS = np.array([7, 5, 5, 2, 1, 1])[[3, 0, 5, 2, 4, 1]]  # unsorted

MODES = {
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", {"proj_size": 3}),
    "gru": ("GRU", {}),
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}


def _pair(mode, dtype, **kw):
    torch = pytest.importorskip("torch")
    cls, opts = MODES[mode]
    torch.manual_seed(0)
    tm = getattr(torch.nn, cls)(I, H, **opts, **kw).to(torch.float64 if dtype == np.float64 else torch.float32)
    pm = getattr(pyrnn, cls)(I, H, **opts, **kw, dtype=dtype)
    pm.load_state_dict(tm.state_dict())
    return torch, tm, pm


def _states(rng, pm, batch, dtype):
    LD = pm.num_layers * pm.num_directions
    h0 = rng.standard_normal((LD, batch, pm.proj_size or H)).astype(dtype)
    if pm.mode != "LSTM":
        return h0
    return h0, rng.standard_normal((LD, batch, H)).astype(dtype)


def _assert(a, e, dtype, name):
    tol = TOLERANCES[np.dtype(dtype)]
    scale = max(1.0, float(np.max(np.abs(e)))) if np.size(e) else 1.0
    rtol, atol = (1e-10, 1e-10) if dtype == np.float64 else (1e-4, 1e-4)  # torch float32 sums differ
    np.testing.assert_allclose(a, e, rtol=max(rtol, tol["rtol"]), atol=max(atol, tol["atol"]) * scale, err_msg=name)


def _torch_run(torch, tm, x, hx, lengths, batch_first, dy, dh_n):
    xt = torch.tensor(x, requires_grad=True)
    is_lstm = isinstance(hx, tuple)
    hxt = tuple(torch.tensor(h, requires_grad=True) for h in hx) if is_lstm else torch.tensor(hx, requires_grad=True)
    if lengths is None:
        y, st = tm(xt, hxt)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=batch_first,
                                                         enforce_sorted=False)
        out, st = tm(packed, hxt)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=x.shape[1 if batch_first else 0])
    loss = (y * torch.tensor(dy)).sum()
    sts = st if is_lstm else (st,)
    for s, d in zip(sts, dh_n):
        loss = loss + (s * torch.tensor(d)).sum()
    loss.backward()
    grads = {"x": xt.grad.numpy()}
    if is_lstm:
        grads["h0"], grads["c0"] = hxt[0].grad.numpy(), hxt[1].grad.numpy()
    else:
        grads["h0"] = hxt.grad.numpy()
    grads.update({n: p.grad.numpy() for n, p in tm.named_parameters()})
    return y.detach().numpy(), [s.detach().numpy() for s in sts], grads


CONFIGS = list(itertools.product([True, False], [False, True], [False, True], [1, 2, 3]))


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["padded", "lengths"])
@pytest.mark.parametrize("bias, batch_first, bidirectional, num_layers", CONFIGS,
                         ids=[f"{'bias' if b else 'nobias'}-{'bf' if f else 'tf'}-{'bi' if d else 'uni'}-L{n}"
                              for b, f, d, n in CONFIGS])
@pytest.mark.parametrize("mode", list(MODES))
def test_matches_torch_float64(mode, bias, batch_first, bidirectional, num_layers, lengths):
    _check_against_torch(mode, np.float64, lengths, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                         num_layers=num_layers)


@pytest.mark.parametrize("mode", list(MODES))
def test_matches_torch_float32(mode):
    _check_against_torch(mode, np.float32, LENGTHS, num_layers=2, bidirectional=True)


def _check_against_torch(mode, dtype, lengths, **kw):
    torch, tm, pm = _pair(mode, dtype, **kw)
    rng = np.random.default_rng(0)
    bf = kw.get("batch_first", False)
    x = rng.standard_normal((B, T, I) if bf else (T, B, I)).astype(dtype)
    hx = _states(rng, pm, B, dtype)
    y, st = pm(x, hx, lengths=lengths)
    sts = st if pm.mode == "LSTM" else (st,)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh_n = [rng.standard_normal(s.shape).astype(dtype) for s in sts]
    yt, stt, gt = _torch_run(torch, tm, x, hx, lengths, bf, dy, dh_n)
    _assert(y, yt, dtype, "output")
    for a, e, name in zip(sts, stt, ["h_n", "c_n"]):
        _assert(a, e, dtype, name)
    dx, dst = pm.backward(dy, *dh_n)
    _assert(dx, gt["x"], dtype, "dx")
    if pm.mode == "LSTM":
        _assert(dst[0], gt["h0"], dtype, "dh0")
        _assert(dst[1], gt["c0"], dtype, "dc0")
    else:
        _assert(dst, gt["h0"], dtype, "dh0")
    for name, _ in pm.named_parameters():
        _assert(pm.grads[name], gt[name], dtype, "d" + name)


@pytest.mark.parametrize("mode", list(MODES))
def test_unbatched_input_matches_torch(mode):
    torch, tm, pm = _pair(mode, np.float64, num_layers=2, bidirectional=True)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((T, I))
    hx = _states(rng, pm, 1, np.float64)
    hx = tuple(h[:, 0] for h in hx) if isinstance(hx, tuple) else hx[:, 0]
    y, st = pm(x, hx)
    assert y.shape == (T, 2 * (pm.proj_size or H))
    with torch.no_grad():
        hxt = tuple(torch.tensor(h) for h in hx) if isinstance(hx, tuple) else torch.tensor(hx)
        yt, stt = tm(torch.tensor(x), hxt)
    _assert(y, yt.numpy(), np.float64, "output")
    if pm.mode == "LSTM":
        _assert(st[0], stt[0].numpy(), np.float64, "h_n")
        _assert(st[1], stt[1].numpy(), np.float64, "c_n")
    else:
        _assert(st, stt.numpy(), np.float64, "h_n")
    dx, _ = pm.backward(np.ones_like(y))
    assert dx.shape == x.shape


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_stack_matches_reference_composition(reset_after):
    """2-layer bidirectional GRU (both variants) = reference calls chained by hand."""
    pm = pyrnn.GRU(I, H, num_layers=2, bidirectional=True, reset_after=reset_after, dtype=np.float64, seed=4)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((4, B, H))
    y, h_n = pm(x, h0, lengths=LENGTHS)
    inp, hs = x, []
    for layer in range(2):
        outs = []
        for d, sfx in enumerate([f"_l{layer}", f"_l{layer}_reverse"]):
            p = dict(pm.named_parameters())
            yd, hd, _ = R.gru_forward(inp, h0[2 * layer + d], p["weight_ih" + sfx], p["weight_hh" + sfx],
                                      p["bias_ih" + sfx], p["bias_hh" + sfx], reset_after=reset_after,
                                      lengths=LENGTHS, reverse=d == 1, training=False)
            outs.append(yd)
            hs.append(hd)
        inp = np.concatenate(outs, axis=2)
    _assert(y, inp, np.float64, "output")
    _assert(h_n, np.stack(hs), np.float64, "h_n")


# ------------------------------------------------------------------ dropout --

@pytest.mark.parametrize("p, train", [(0.0, True), (0.5, False), (1.0, True), (0.5, True)])
def test_dropout_between_layers_as_pytorch(p, train):
    """PyTorch's check: ReLU RNN 10 -> 1000, 2 layers, all weights 1."""
    rnn = pyrnn.RNN(10, 1000, 2, bias=False, dropout=p, nonlinearity="relu", seed=0)
    for w in rnn.parameters():
        w[...] = 1
    rnn.train(train)
    x = np.ones((1, 1, 10), np.float32)
    out, h_n = rnn(x, np.zeros((2, 1, 1000), np.float32))
    assert np.all(h_n[0] == 10)  # layer 0 untouched by dropout
    val = out[0, 0, 0]
    if p == 0 or not train:
        assert val == 10000
    elif p == 1:
        assert val == 0
    else:
        assert 0 < val < 20000 and val % 20 == 0  # kept units count 10 / (1 - p) = 20 each
    np.testing.assert_array_equal(h_n[1], out[0])


def test_dropout_never_after_last_layer():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):  # (as torch.nn)
        rnn = pyrnn.RNN(3, 50, 1, dropout=0.9, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    a, _ = rnn(x)
    b, _ = rnn.eval()(x)
    np.testing.assert_array_equal(a, b)


def test_recurrent_dropout_is_one_mask_per_sequence():
    """RNN relu with W_ih = 0 and W_hh = I: h_t = h_{t-1} * mask, so the dropped
    units are the same at every step (a fresh mask per step would drop more)."""
    Hd = 400
    rnn = pyrnn.RNN(2, Hd, nonlinearity="relu", bias=False, recurrent_dropout=0.5, dtype=np.float64, seed=1)
    rnn.weight_ih_l0[...] = 0
    rnn.weight_hh_l0[...] = np.eye(Hd)
    x = np.zeros((6, 3, 2))
    h0 = np.ones((1, 3, Hd))
    y, _ = rnn(x, h0)
    zero = y == 0
    assert np.all(zero == zero[0])  # same units at every step
    assert 0.4 < zero[0].mean() < 0.6
    assert not np.array_equal(zero[0, 0], zero[0, 1])  # but a mask per sequence
    np.testing.assert_allclose(y[~zero], np.broadcast_to(2.0 ** np.arange(1, 7)[:, None, None], y.shape)[~zero])
    y_eval, _ = rnn.eval()(x, h0)
    assert np.all(y_eval == 1)  # no dropout in eval
    rnn.train()
    y2, _ = rnn(x, h0)
    assert not np.array_equal(y2 == 0, zero)  # drawn again per call


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn_tanh"])
def test_recurrent_dropout_gradients(mode):
    """Gradients with a recurrent-dropout mask match finite differences through the same mask."""
    cls, opts = MODES[mode]
    layer = getattr(pyrnn, cls)(3, 5, **opts, recurrent_dropout=0.4, dtype=np.float64, seed=2)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 3))
    state = np.random.default_rng(9).bit_generator.state
    layer._rng.bit_generator.state = state
    y, _ = layer(x)
    dy = rng.standard_normal(y.shape)
    dx, _ = layer.backward(dy)
    d = rng.standard_normal(x.shape)

    def loss(xx):
        layer._rng.bit_generator.state = state  # the same mask
        out, _ = layer(xx)
        layer._saved = None
        return float(np.sum(out * dy))

    eps = 1e-6
    numeric = (loss(x + eps * d) - loss(x - eps * d)) / (2 * eps)
    assert np.sum(dx * d) == pytest.approx(numeric, rel=1e-6)


# -------------------------------------------------------------- parameters --

def test_parameter_names_shapes_and_init_match_torch():
    torch = pytest.importorskip("torch")
    for cls, kw in [("LSTM", {"proj_size": 2}), ("GRU", {}), ("RNN", {})]:
        tm = getattr(torch.nn, cls)(I, H, num_layers=2, bidirectional=True, **kw)
        pm = getattr(pyrnn, cls)(I, H, num_layers=2, bidirectional=True, **kw, seed=0)
        assert [(n, tuple(p.shape)) for n, p in tm.named_parameters()] == \
               [(n, p.shape) for n, p in pm.named_parameters()]
        for _, p in pm.named_parameters():
            assert p.dtype == np.float32 and np.all(np.abs(p) <= 1 / np.sqrt(H))


def test_in_place_updates_take_effect():
    torch, tm, pm = _pair("lstm", np.float64)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    with torch.no_grad():
        for (name, p), (_, q) in zip(pm.named_parameters(), tm.named_parameters()):
            p *= 0.5
            q *= 0.5
        yt, _ = tm(torch.tensor(x))
    y, _ = pm(x)
    _assert(y, yt.numpy(), np.float64, "after in-place update")


def test_assigning_a_parameter_copies_into_it():
    """lstm.weight_hh_l0 = new (an SGD step written out of place) updates the live parameter that the
    kernels, state_dict and optimizers share, as load_state_dict would; a wrong shape raises."""
    m = pyrnn.LSTM(I, H, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    live = m.weight_ih_l0
    y0, _ = m(x)
    m.weight_ih_l0 = live * 0.5
    assert m.weight_ih_l0 is live and "weight_ih_l0" not in vars(m)
    np.testing.assert_array_equal(m.state_dict()["weight_ih_l0"], live)
    m.weight_ih_l0 = np.zeros_like(live)
    y1, _ = m(x)
    assert not np.array_equal(y0, y1)
    ref = pyrnn.LSTM(I, H, seed=0).eval()
    ref.load_state_dict({"weight_ih_l0": np.zeros_like(live)}, strict=False)
    np.testing.assert_array_equal(y1, ref(x)[0])
    with pytest.raises(ValueError, match="size mismatch for weight_ih_l0"):
        m.weight_ih_l0 = np.zeros((2, 2), np.float32)
    with pytest.raises(TypeError, match="floating-point"):
        m.weight_ih_l0 = np.zeros(live.shape, complex)


@pytest.mark.parametrize("make", [lambda: pyrnn.LSTM(I, H, num_layers=2, seed=0),
                                  lambda: pyrnn.LayerNormGRU(I, H, seed=0), lambda: pyrnn.LSTMCell(I, H, seed=0),
                                  lambda: pyrnn.optim.Linear(I, H, seed=0)], ids=["lstm", "ln-gru", "cell", "linear"])
def test_an_eval_call_leaves_a_pending_backward_alone(make, rng):
    """backward goes through the last training-mode call, as documented: a validation pass in eval
    mode in between does not drop it (the layers and Linear raised; the cells kept it)."""
    m = make()
    x = rng.standard_normal((T, B, I) if isinstance(m, pyrnn.LSTM) or "LayerNorm" in type(m).__name__
                            else (B, I)).astype(np.float32)
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    y = first(m(x))
    dy = np.ones_like(y)
    ref = m.backward(dy)
    want = {k: g.copy() for k, g in m.grads.items()}
    m.zero_grad()
    m.train()
    first(m(x))
    m.eval()
    first(m(2 * x))  # a validation pass
    m.train()
    got = m.backward(dy)
    for k, g in m.grads.items():
        np.testing.assert_array_equal(g, want[k], err_msg=k)
    np.testing.assert_array_equal(first(got), first(ref))


@pytest.mark.parametrize("make", [lambda: pyrnn.LSTM(I, H, num_layers=2, seed=0),
                                  lambda: pyrnn.GRU(I, H, bidirectional=True, seed=0),
                                  lambda: pyrnn.LayerNormLSTM(I, H, seed=0)], ids=["lstm", "gru-bi", "ln-lstm"])
def test_copies_freeze_and_pickles_after_a_training_call(make):
    """A training-mode call keeps a C++ workspace for backward; copies, pickles and freeze() leave it
    behind (a copy has no pending backward) instead of failing on it."""
    import copy
    import pickle

    m = make()
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    y, _ = m(x)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        with pytest.raises(RuntimeError, match="forward call in training mode"):
            clone.backward(np.ones_like(y))
        np.testing.assert_array_equal(clone.eval()(x)[0], m.eval()(x)[0])
        m.train()
    m(x)
    if hasattr(m, "freeze"):
        np.testing.assert_array_equal(m.freeze()(x)[0], m.eval()(x)[0])
    m.train()(x)
    m.backward(np.ones_like(y))  # the original's workspace still works


@pytest.mark.parametrize("bidirectional", [False, True])
def test_editing_the_output_or_the_input_before_backward_changes_nothing(bidirectional):
    """backward reads x and the h_t of the output: the layer keeps its own copies, so a caller may
    reuse the buffers (y -= target; x[...] = next batch) before backward."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H * (2 if bidirectional else 1))).astype(np.float32)
    grads = []
    for edit in (False, True):
        m = pyrnn.LSTM(I, H, num_layers=2, bidirectional=bidirectional, seed=0)
        xx = x.copy()
        y, _ = m(xx)
        if edit:
            y -= 1.0
            xx[...] = 0
        dx, _ = m.backward(dy)
        grads.append([dx] + [m.grads[k].copy() for k in m.grads])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_dtype_none_is_float32():
    assert pyrnn.LSTM(I, H, dtype=None).dtype == np.float32
    assert pyrnn.GRUCell(I, H, dtype=None).dtype == np.float32


def test_state_dict_round_trip_and_checks():
    torch = pytest.importorskip("torch")
    pm = pyrnn.GRU(I, H, num_layers=2, seed=0)
    sd = pm.state_dict()
    tm = torch.nn.GRU(I, H, num_layers=2)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})  # pyrnn -> torch
    other = pyrnn.GRU(I, H, num_layers=2, seed=1)
    other.load_state_dict(tm.state_dict())  # torch tensors -> pyrnn
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, sd[k])
    with pytest.raises(ValueError, match="size mismatch for weight_ih_l0"):
        other.load_state_dict({**sd, "weight_ih_l0": np.zeros((12, 3))})
    with pytest.raises(ValueError, match=r"missing keys \['bias_hh_l1'\]"):
        other.load_state_dict({k: v for k, v in sd.items() if k != "bias_hh_l1"})
    with pytest.raises(ValueError, match="unexpected keys"):
        other.load_state_dict({**sd, "weight_hr_l0": np.zeros(3)})
    with pytest.raises(TypeError, match="floating-point"):
        other.load_state_dict({**sd, "bias_ih_l0": np.zeros(12, np.int64)})
    missing, unexpected = other.load_state_dict({"bias_ih_l0": sd["bias_ih_l0"]}, strict=False)
    assert "weight_ih_l0" in missing and unexpected == []


def test_grads_accumulate_and_zero_grad():
    pm = pyrnn.LSTM(I, H, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    pm(x)
    pm.backward(np.ones((T, B, H)))
    first = {k: v.copy() for k, v in pm.grads.items()}
    pm(x)
    pm.backward(np.ones((T, B, H)))
    for k, v in pm.grads.items():
        np.testing.assert_allclose(v, 2 * first[k])
    pm.zero_grad()
    assert all(not np.any(v) for v in pm.grads.values())
    with pytest.raises(RuntimeError, match="forward call in training mode"):
        pm.backward(np.ones((T, B, H)))  # already consumed
    pm.eval()
    pm(x)
    with pytest.raises(RuntimeError, match="forward call in training mode"):
        pm.backward(np.ones((T, B, H)))


# ------------------------------------------------------------------ errors --

@pytest.mark.parametrize("make, message", [
    (lambda: pyrnn.LSTM(5, 0), "hidden_size must be greater than zero"),
    (lambda: pyrnn.LSTM(0, 4), "input_size must be greater than zero"),
    (lambda: pyrnn.LSTM(5, 4, num_layers=0), "num_layers must be greater than zero"),
    (lambda: pyrnn.GRU(5, 4, dropout=1.5), "dropout should be a number in range [0, 1]"),
    (lambda: pyrnn.GRU(5, 4, recurrent_dropout=-0.1), "recurrent_dropout should be a number in range [0, 1]"),
    (lambda: pyrnn.GRU(5, 4, dropout=1.5), "element being zeroed, got 1.5"),
    (lambda: pyrnn.GRU(5, 4, dropout="0.1"), "element being zeroed, got str '0.1'"),
    (lambda: pyrnn.LSTM(5, 4, proj_size=4), "proj_size has to be smaller than hidden_size"),
    (lambda: pyrnn.layers._RNNBase("GRU", 5, 4, proj_size=2), "proj_size argument is only supported for LSTM, not RNN or GRU"),
    (lambda: pyrnn.RNN(5, 4, nonlinearity="sigmoid"), "Unknown nonlinearity 'sigmoid'. Select from 'tanh' or 'relu'."),
    (lambda: pyrnn.LSTM(5, 4, dtype=np.int32), "dtype must be float32 or float64"),
    (lambda: pyrnn.LSTM(5, 4.0), "hidden_size should be of type int"),
])
def test_constructor_errors(make, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        make()


@pytest.mark.parametrize("call, exc, message", [
    (lambda m: m(np.zeros((T, B, 3), np.float32)), ValueError, "input.size(-1) must be equal to input_size. Expected 5, got 3"),
    (lambda m: m(np.zeros((T, B, I, 1), np.float32)), ValueError, "Expected input to be 2D or 3D, got 4D input"),
    (lambda m: m(np.zeros((0, B, I), np.float32)), ValueError, "sequence length to be larger than 0"),
    (lambda m: m(np.zeros((T, B, I))), TypeError, "input must have the layer's dtype float32, got float64"),
    (lambda m: m(np.zeros((T, B, I), np.float32), (np.zeros((2, B, H), np.float32), np.zeros((4, B, H), np.float32))),
     ValueError, "Expected hidden[0] size (4, 6, 4), got [2, 6, 4]"),
    (lambda m: m(np.zeros((T, B, I), np.float32), (np.zeros((4, B, H), np.float32), np.zeros((4, 1, H), np.float32))),
     ValueError, "Expected hidden[1] size (4, 6, 4), got [4, 1, 4]"),
    (lambda m: m(np.zeros((T, B, I), np.float32), np.zeros((4, B, H), np.float32)), TypeError, "hx must be a tuple"),
    (lambda m: m(np.zeros((T, B, I), np.float32), (None, np.zeros((4, B, H), np.float32))), TypeError,
     "hidden[0] must be an array of shape (4, 6, 4), got None"),
    (lambda m: m(np.zeros((T, B, I), np.float32), lengths=[8, 1, 1, 1, 1, 1]), ValueError, "lengths must lie in [1, T]"),
    (lambda m: m(np.zeros((T, B, I), np.float32), lengths=[1, 1]), ValueError, "size B = 6"),
    (lambda m: m(np.zeros((T, B, I), np.float32), lengths=[0, 1, 1, 1, 1, 1]), ValueError, "lengths must lie in [1, T]"),
])
def test_call_errors(call, exc, message):
    m = pyrnn.LSTM(I, H, num_layers=2, bidirectional=True)
    with pytest.raises(exc, match=re.escape(message)):
        call(m)


def test_backward_errors():
    m = pyrnn.GRU(I, H)
    y, h = m(np.zeros((T, B, I), np.float32))
    with pytest.raises(ValueError, match=r"dy must have shape \(7, 6, 4\)"):
        m.backward(np.zeros((T, B, 3), np.float32))
    with pytest.raises(TypeError, match="dh_n must have the layer's dtype"):
        m.backward(None, np.zeros((1, B, H)))
    with pytest.raises(ValueError, match="dc_n is only used by the LSTM"):
        m.backward(None, None, np.zeros((1, B, H), np.float32))


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_batch_size_zero_returns_empty(cls):
    m = getattr(pyrnn, cls)(I, H, num_layers=2, bidirectional=True)
    y, st = m(np.zeros((T, 0, I), np.float32))
    assert y.shape == (T, 0, 2 * H)
    h = st[0] if cls == "LSTM" else st
    assert h.shape == (4, 0, H)
    dx, _ = m.backward(np.zeros((T, 0, 2 * H), np.float32))
    assert dx.shape == (T, 0, I)


# ----------------------------------------------------------- frozen layers --

@pytest.mark.parametrize("mode, kw", [("LSTM", {}), ("LSTM", {"proj_size": 3}), ("GRU", {}),
                                      ("GRU", {"reset_after": False}), ("RNN", {"nonlinearity": "relu"})])
def test_frozen_layer_equals_the_layer(mode, kw):
    """freeze(): recurrent weights packed once; the same results, bitwise, in every layout."""
    for dtype in (np.float32, np.float64):
        layer = getattr(pyrnn, mode)(5, 7, num_layers=2, bidirectional=True, **kw, dtype=dtype, seed=3).eval()
        frozen = layer.freeze()
        assert frozen.frozen and not layer.frozen and repr(frozen).endswith(".freeze()")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((6, 4, 5)).astype(dtype)
        for args in [(x,), (x, None, np.array([6, 2, 5, 1])), (x[:, 0],)]:
            want, got = layer(*args), frozen(*args)
            np.testing.assert_array_equal(got[0], want[0])
            for a, e in zip(np.atleast_1d(got[1]) if mode != "LSTM" else got[1],
                            np.atleast_1d(want[1]) if mode != "LSTM" else want[1]):
                np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("dtype, I", [(np.float32, 2049), (np.float64, 1025), (np.float32, 3000)])
def test_frozen_layer_equals_the_layer_with_long_inputs(dtype, I, isa):
    """Inputs longer than 8 KiB, where gemm() sums x W_ih^T in blocks of I: the frozen layer's input
    projection takes the same blocks (a one-pass sum differed in the last bits, ~6e-7 in float32)."""
    layer = pyrnn.GRU(I, 8, dtype=dtype, seed=1).eval()
    x = np.random.default_rng(2).standard_normal((3, 2, I)).astype(dtype)
    want, got = layer(x), layer.freeze()(x)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_frozen_layer_cannot_go_stale():
    layer = pyrnn.GRU(4, 6, seed=0)
    frozen = layer.freeze()
    x = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    y0 = frozen(x)[0]
    for _, p in frozen.named_parameters():
        with pytest.raises(ValueError, match="read-only"):
            p += 1.0
    with pytest.raises(RuntimeError, match="a frozen layer's parameters are read-only"):
        frozen.load_state_dict(layer.state_dict())
    with pytest.raises(RuntimeError, match="frozen layer is for inference only"):
        frozen.train()
    for _, p in layer.named_parameters():  # the original stays trainable and independent
        p *= 0.5
    np.testing.assert_array_equal(frozen(x)[0], y0)
    assert not np.allclose(layer.eval()(x)[0], y0)
    import copy
    import pickle
    for clone in (copy.deepcopy(frozen), pickle.loads(pickle.dumps(frozen))):
        assert clone.frozen
        np.testing.assert_array_equal(clone(x)[0], y0)
        with pytest.raises(ValueError, match="read-only"):
            clone.weight_hh_l0[...] = 0


def test_pack_weights_checks_what_it_is_given():
    from pyrnn import functional as F

    rng = np.random.default_rng(0)
    W_ih, W_hh = rng.standard_normal((12, 3)).astype(np.float32), rng.standard_normal((12, 4)).astype(np.float32)
    x = rng.standard_normal((2, 1, 3)).astype(np.float32)
    packed = F.pack_weights("gru", W_ih, W_hh)
    y = F.forward("gru", x, None, None, W_ih, W_hh, packed=packed)[0]
    np.testing.assert_array_equal(y, F.forward("gru", x, None, None, W_ih, W_hh)[0])
    with pytest.raises(ValueError, match="packed holds weights of a gru cell, not gru_reset_before"):
        F.forward("gru", x, None, None, W_ih, W_hh, reset_after=False, packed=packed)
    with pytest.raises(TypeError, match="packed must be the result of pyrnn.functional.pack_weights"):
        F.forward("gru", x, None, None, W_ih, W_hh, packed="yes")
    other = F.pack_weights("gru", np.zeros((15, 3), np.float32), np.zeros((15, 5), np.float32))
    with pytest.raises(ValueError, match="packed: weights packed for another cell, dtype or shape"):
        F.forward("gru", x, None, None, W_ih, W_hh, packed=other)
    with pytest.raises(ValueError, match=r"W_hh must have shape \(3\*H, H\)"):
        F.pack_weights("gru", W_ih, W_hh[:, :3])
    with pytest.raises(ValueError, match="cell must be"):
        F.pack_weights("elman", W_ih, W_hh)
    with pytest.raises(TypeError, match="W_ih must have dtype float32 or float64, got int64"):
        F.pack_weights("gru", W_ih.astype(np.int64), W_hh)
    with pytest.raises(TypeError, match="all weights must have one dtype, got W_ih=float32, W_hh=float64"):
        F.pack_weights("gru", W_ih, W_hh.astype(np.float64))


def test_layers_pickled_before_freeze_existed_still_load():
    import pickle

    layer = pyrnn.LSTM(3, 4, seed=0).eval()
    state = layer.__getstate__()
    del state["_packed"]  # what a pickle of an earlier version holds
    old = pyrnn.LSTM.__new__(pyrnn.LSTM)
    old.__setstate__(state)
    x = np.ones((2, 1, 3), np.float32)
    np.testing.assert_array_equal(old(x)[0], layer(x)[0])
    assert not old.frozen and pickle.loads(pickle.dumps(old)).frozen is False
