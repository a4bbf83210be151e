"""Fuzzing the public API with arbitrary arrays: odd dtypes (float16,
big-endian, integer, complex, bool, object), shapes with zeros, negative,
non-contiguous and broadcast strides, read-only arrays, NaN and inf, lengths
of any integer type or invalid values, states of wrong shapes.

Every call either returns what the clean, contiguous call (and so
pyrnn.reference) returns, or raises ValueError or TypeError whose message
says what was given ("got ..."); never a crash, a hang or a silent wrong
result."""

import re

import numpy as np
import pytest

import pyrnn
from pyrnn import functional as F
from pyrnn import reference as R
from pyrnn.testing import VARIANTS, assert_close, run_backward, run_forward

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

SETTINGS = hypothesis.settings(max_examples=150, deadline=None, derandomize=True, database=None,
                               suppress_health_check=list(hypothesis.HealthCheck))

MUTATIONS = ["plain", "non-contiguous", "negative-strides", "broadcast", "read-only", "float16", "big-endian",
             "int32", "complex64", "bool", "object", "nan", "inf", "list", "wrong-shape", "extra-dim", "scalar"]
# Mutations after which the values (as the API's dtype) are those of the clean array.
SAME_VALUES = {"plain", "non-contiguous", "negative-strides", "read-only", "big-endian", "list"}


def mutate(a, how, rng):
    """(array-like given to the API, the clean array it stands for, or None if it must be rejected)."""
    a = np.asarray(a)
    if how == "plain":
        return a, a
    if how == "non-contiguous":
        big = np.zeros(a.shape + (2,), a.dtype)
        big[..., 0] = a
        return big[..., 0], a
    if how == "negative-strides":
        return np.flip(np.flip(a).copy()), a
    if how == "broadcast":
        if a.ndim == 0 or a.shape[0] == 0:
            return a, a
        b = np.broadcast_to(a[:1], a.shape)
        return b, np.ascontiguousarray(b)
    if how == "read-only":
        b = a.copy()
        b.setflags(write=False)
        return b, a
    if how == "float16":
        return a.astype(np.float16), None
    if how == "big-endian":
        return a.astype(a.dtype.newbyteorder(">")), a  # accepted as the same values, or a TypeError
    if how in ("int32", "complex64", "bool"):
        return a.astype(how), None
    if how == "object":
        return a.astype(object), None
    if how in ("nan", "inf") and a.dtype.kind in "iub":
        b = a.astype(np.float64)
        if b.size:
            b.flat[0] = np.nan if how == "nan" else -np.inf
        return b, None
    if how in ("nan", "inf"):
        b = a.copy()
        if b.size:
            b.flat[rng.integers(b.size)] = np.nan if how == "nan" else -np.inf
        return b, b
    if how == "list":
        return a.tolist(), a
    if how == "wrong-shape":
        return np.zeros(a.shape[:-1] + (a.shape[-1] + 1,) if a.ndim else (2,), a.dtype), None
    if how == "extra-dim":
        return a[None, None], None
    if how == "scalar":
        return a.dtype.type(1.5), None
    raise AssertionError(how)


def call(fn):
    """('ok', result) or ('error', exception); any other exception fails the test."""
    try:
        return "ok", fn()
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert re.search(r"got|given|expected|Expected|does not match", msg), f"unhelpful message: {type(e).__name__}: {msg}"
        return "error", e


def flat(outputs):
    """A layer's or cell's (output, state or (h, c)) results as one list of arrays."""
    return [a for t in outputs for a in (t if isinstance(t, tuple) else (t,))]


def same(a, b):
    return a is None and b is None or np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


@pytest.fixture(autouse=True)
def _one_thread(threads):
    threads(2)


# ---------------------------------------------------------------- functional --

@SETTINGS
@hypothesis.given(variant=st.sampled_from(list(VARIANTS)), T=st.integers(0, 4), B=st.integers(0, 4),
                  I=st.integers(0, 5), H=st.integers(1, 9), dtype=st.sampled_from([np.float32, np.float64]),
                  target=st.sampled_from(["x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh"]),
                  how=st.sampled_from(MUTATIONS), lengths_kind=st.sampled_from(
                      ["none", "int8", "uint64", "int64", "bool", "float", "zero", "too-long", "negative", "2-D",
                       "list"]),
                  seed=st.integers(0, 2**16))
def test_functional_forward_backward(variant, T, B, I, H, dtype, target, how, lengths_kind, seed):
    rng = np.random.default_rng(seed)
    cell, _ = VARIANTS[variant]
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    clean = {"x": rng.standard_normal((T, B, I)), "h0": rng.standard_normal((B, H)),
             "W_ih": rng.uniform(-.5, .5, (G * H, I)), "W_hh": rng.uniform(-.5, .5, (G * H, H)),
             "b_ih": rng.uniform(-.5, .5, G * H), "b_hh": rng.uniform(-.5, .5, G * H)}
    if cell == "lstm":
        clean["c0"] = rng.standard_normal((B, H))
    clean = {k: v.astype(dtype) for k, v in clean.items()}
    given = dict(clean)
    if target in clean:
        given[target], clean[target] = mutate(clean[target], how, rng)
    valid_lengths = rng.integers(1, T + 1, size=B) if T else np.zeros(B, np.int64)
    lengths, clean_lengths = {
        "none": (None, None), "int8": (valid_lengths.astype(np.int8), valid_lengths),
        "uint64": (valid_lengths.astype(np.uint64), valid_lengths), "int64": (valid_lengths, valid_lengths),
        "list": (valid_lengths.tolist(), valid_lengths),
        "bool": (np.ones(B, bool), False), "float": (valid_lengths.astype(float), False),
        "zero": (np.zeros(B, np.int64), False), "too-long": (np.full(B, T + 1), False),
        "negative": (-valid_lengths, False), "2-D": (valid_lengths[None], False)}[lengths_kind]
    if B == 0 and lengths_kind in ("bool", "float", "zero", "too-long", "negative"):
        clean_lengths = valid_lengths  # empty: nothing invalid in it
    status, got = call(lambda: run_forward(F, variant, given, lengths=lengths))
    must_fail = (target in clean and clean[target] is None) or clean_lengths is False or T == 0 or I == 0
    if must_fail:
        assert status == "error", f"{target} {how} lengths {lengths_kind}: accepted"
        return
    if status == "error":
        # only what the clean arrays would not have allowed may be refused: big-endian arrays, and
        # lists (float64 values; a list with a zero-length axis loses that axis's shape)
        assert how in ("big-endian", "list") and target in clean, got
        return
    outs, ws = got
    p64 = {k: np.asarray(v, np.float64) for k, v in clean.items()}
    ref, cache = run_forward(R, variant, p64, lengths=clean_lengths)
    for k in ref:
        assert outs[k].dtype == dtype and outs[k].shape == ref[k].shape
        assert np.array_equal(np.isnan(outs[k]), np.isnan(ref[k])), k
        finite = np.isfinite(ref[k])
        assert_close(outs[k][finite], ref[k][finite], dtype, k)
    if how in ("nan", "inf"):
        return  # NaN gradients of a NaN forward: compared above
    cot = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in outs.items()}
    grads = run_backward(F, variant, ws, cot)
    ref_grads = run_backward(R, variant, cache, {k: v.astype(np.float64) for k, v in cot.items()})
    for k, v in ref_grads.items():
        if v is not None and grads[k] is not None:
            assert_close(grads[k], v, dtype, "d" + k)


@SETTINGS
@hypothesis.given(variant=st.sampled_from(list(VARIANTS)), which=st.sampled_from(["dy", "dh_n", "dc_n"]),
                  how=st.sampled_from(MUTATIONS + ["float64"]), seed=st.integers(0, 2**16))
def test_functional_backward_gradients(variant, which, how, seed):
    rng = np.random.default_rng(seed)
    cell, opts = VARIANTS[variant]
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    T, B, I, H = 3, 2, 4, 5
    p = {"x": rng.standard_normal((T, B, I)), "W_ih": rng.uniform(-.5, .5, (G * H, I)),
         "W_hh": rng.uniform(-.5, .5, (G * H, H))}
    p = {k: v.astype(np.float32) for k, v in p.items()}
    outs, ws = run_forward(F, variant, p)
    clean = {"dy": rng.standard_normal((T, B, H)).astype(np.float32),
             "dh_n": rng.standard_normal((B, H)).astype(np.float32),
             "dc_n": rng.standard_normal((B, H)).astype(np.float32) if cell == "lstm" else None}
    given = dict(clean)
    if clean[which] is not None:
        if how == "float64":
            given[which], clean[which] = clean[which].astype(np.float64), None
        else:
            given[which], clean[which] = mutate(clean[which], how, rng)
    elif how != "plain":
        given[which] = np.zeros((B, H), np.float32)  # dc_n given to a cell without c
        clean[which] = None
    args = (ws, given["dy"], given["dh_n"]) + ((given["dc_n"],) if cell == "lstm" else ())
    bw = {"rnn": F.rnn_backward, "lstm": F.lstm_backward, "gru": F.gru_backward}[cell]
    if cell != "lstm" and which == "dc_n":
        status, got = call(lambda: F.backward(ws, given["dy"], given["dh_n"], given["dc_n"]))
        assert status == ("ok" if how == "plain" else "error")
        return
    status, got = call(lambda: bw(*args))
    if clean[which] is None:
        assert status == "error", f"{which} {how}: accepted"
        return
    if status == "error":
        assert how in ("big-endian", "list"), got
        return
    _, ws2 = run_forward(F, variant, p)
    expected = bw(ws2, clean["dy"], clean["dh_n"], *((clean["dc_n"],) if cell == "lstm" else ()))
    assert all(same(a, b) for a, b in zip(got, expected))


# -------------------------------------------------------------------- layers --

LAYERS = {"LSTM": lambda **k: pyrnn.LSTM(4, 6, **k), "GRU": lambda **k: pyrnn.GRU(4, 6, **k),
          "RNN": lambda **k: pyrnn.RNN(4, 6, **k), "LSTM-proj": lambda **k: pyrnn.LSTM(4, 6, proj_size=3, **k)}


@SETTINGS
@hypothesis.given(kind=st.sampled_from(list(LAYERS)), layers=st.integers(1, 2), bidirectional=st.booleans(),
                  batch_first=st.booleans(), unbatched=st.booleans(), T=st.integers(0, 4), B=st.integers(0, 3),
                  target=st.sampled_from(["x", "h0", "c0", "lengths", "dy"]), how=st.sampled_from(MUTATIONS),
                  seed=st.integers(0, 2**16))
def test_layers(kind, layers, bidirectional, batch_first, unbatched, T, B, target, how, seed):
    rng = np.random.default_rng(seed)
    layer = LAYERS[kind](num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, seed=1)
    D, Ho = 2 if bidirectional else 1, layer.proj_size or layer.hidden_size
    shape_x = (T, 4) if unbatched else ((B, T, 4) if batch_first else (T, B, 4))
    state = lambda size: rng.standard_normal((layers * D, size) if unbatched else (layers * D, B, size))  # noqa
    clean = {"x": rng.standard_normal(shape_x).astype(np.float32), "h0": state(Ho).astype(np.float32),
             "c0": state(6).astype(np.float32) if kind.startswith("LSTM") else None,
             "lengths": None if unbatched else (rng.integers(1, T + 1, size=B) if T else None)}
    given = dict(clean)
    if clean.get(target) is not None:
        given[target], clean[target] = mutate(clean[target], how, rng)
    hx = lambda d: d["h0"] if d["c0"] is None and not kind.startswith("LSTM") else (d["h0"], d["c0"])  # noqa

    def run(d):
        layer.train()
        out = layer(d["x"], hx(d), d["lengths"])
        y = out[0]
        dy = np.random.default_rng(seed).standard_normal(np.shape(y)).astype(np.float32)
        if target == "dy":
            dy, _ = mutate(dy, how, np.random.default_rng(0))
        return out, layer.backward(dy)

    status, got = call(lambda: run(given))
    if target == "dy":
        if T == 0:
            assert status == "error"
        elif status == "ok":
            assert how in SAME_VALUES | {"broadcast", "nan", "inf"}, f"dy {how}: accepted"
        else:
            assert how not in {"plain", "non-contiguous", "negative-strides", "read-only", "broadcast", "nan",
                               "inf"}, got
        return
    if target == "lengths" and B == 0 and T > 0 and how not in ("wrong-shape", "extra-dim", "scalar"):
        return  # an empty lengths array of any dtype is accepted for an empty batch
    if (target in clean and clean[target] is None and given[target] is not None) or T == 0:
        assert status == "error", f"{target} {how}: accepted"
        return
    if status == "error":
        assert how == "big-endian" or (how == "list" and target != "lengths"), got  # lists are float64
        return
    expected = run(clean)
    got_flat, exp_flat = flat(got[0]) + flat(got[1]), flat(expected[0]) + flat(expected[1])
    assert all(same(a, b) for a, b in zip(got_flat, exp_flat))


# --------------------------------------------------------------------- cells --

CELL_CLASSES = {"LSTMCell": pyrnn.LSTMCell, "GRUCell": pyrnn.GRUCell, "RNNCell": pyrnn.RNNCell}


@SETTINGS
@hypothesis.given(kind=st.sampled_from(list(CELL_CLASSES)), B=st.integers(0, 3), unbatched=st.booleans(),
                  target=st.sampled_from(["x", "h", "c"]), how=st.sampled_from(MUTATIONS), seed=st.integers(0, 2**16))
def test_cells(kind, B, unbatched, target, how, seed):
    rng = np.random.default_rng(seed)
    cell = CELL_CLASSES[kind](4, 6, seed=2)
    lead = () if unbatched else (B,)
    clean = {"x": rng.standard_normal(lead + (4,)).astype(np.float32),
             "h": rng.standard_normal(lead + (6,)).astype(np.float32),
             "c": rng.standard_normal(lead + (6,)).astype(np.float32) if kind == "LSTMCell" else None}
    given = dict(clean)
    if clean[target] is not None:
        given[target], clean[target] = mutate(clean[target], how, rng)

    def run(d):
        cell.train()
        hx = (d["h"], d["c"]) if kind == "LSTMCell" else d["h"]
        out = cell(d["x"], hx)
        h1 = out[0] if kind == "LSTMCell" else out
        return out, cell.backward(np.ones(np.shape(h1), np.float32))

    status, got = call(lambda: run(given))
    if clean[target] is None and given[target] is not None:
        assert status == "error", f"{target} {how}: accepted"
        return
    if status == "error":
        assert how in ("big-endian", "list"), got
        return
    expected = run(clean)
    assert all(same(a, b) for a, b in zip(flat(got), flat(expected)))


# --------------------------------------------------------------- pyrnn.torch --

TORCH_MUTATIONS = ["plain", "transposed-view", "expanded", "float16", "bfloat16", "int64", "complex64", "bool",
                   "nan", "inf", "requires-grad", "wrong-shape", "extra-dim", "list", "float64"]


def torch_mutate(torch, t, how):
    """(value given, the clean tensor it stands for or None when it must be rejected)."""
    if how == "plain":
        return t, t
    if how == "transposed-view":
        if t.dim() < 2:
            return t, t
        v = t.transpose(0, -1).contiguous().transpose(0, -1)
        return v, t
    if how == "expanded":
        if t.dim() == 0 or t.shape[0] == 0:
            return t, t
        e = t[:1].expand(t.shape)
        return e, e.contiguous()
    if how in ("float16", "bfloat16", "int64", "complex64", "bool", "float64"):
        return t.to(getattr(torch, how)), None
    if how in ("nan", "inf"):
        b = t.clone()
        if b.numel():
            b.view(-1)[0] = float("nan") if how == "nan" else float("-inf")
        return b, b
    if how == "requires-grad":
        return t.clone().requires_grad_(True), t
    if how == "wrong-shape":
        return torch.zeros(t.shape[:-1] + (t.shape[-1] + 1,), dtype=t.dtype), None
    if how == "extra-dim":
        return t[None, None], None
    if how == "list":
        return t.tolist(), None
    raise AssertionError(how)


@SETTINGS
@hypothesis.given(kind=st.sampled_from(["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]),
                  target=st.sampled_from(["x", "h0", "c0"]), how=st.sampled_from(TORCH_MUTATIONS),
                  B=st.integers(0, 3), unbatched=st.booleans(), seed=st.integers(0, 2**16))
def test_torch_modules(kind, target, how, B, unbatched, seed):
    """pyrnn.torch modules give torch.nn's results (forward and input gradients) or raise
    ValueError/TypeError (InputError is both a ValueError and torch.nn's RuntimeError)."""
    torch = pytest.importorskip("torch")
    import pyrnn.torch as pt

    torch.manual_seed(seed)
    cell = kind.endswith("Cell")
    ours = getattr(pt, kind)(4, 6)
    ref = getattr(torch.nn, kind)(4, 6)
    ref.load_state_dict(ours.state_dict())
    lstm = kind.startswith("LSTM")
    shape_x = ((4,) if unbatched else (B, 4)) if cell else ((3, 4) if unbatched else (3, B, 4))
    shape_h = ((6,) if unbatched else (B, 6)) if cell else ((1, 6) if unbatched else (1, B, 6))
    clean = {"x": torch.randn(shape_x), "h0": torch.randn(shape_h), "c0": torch.randn(shape_h) if lstm else None}
    given = dict(clean)
    if clean[target] is None:
        target, how = "x", "plain"  # no c0 but for the LSTM
    given[target], clean[target] = torch_mutate(torch, clean[target], how)

    def run(module, d):
        x = d["x"].detach().clone().requires_grad_(True) if isinstance(d["x"], torch.Tensor) and \
            d["x"].is_floating_point() else d["x"]
        hx = (d["h0"], d["c0"]) if lstm else d["h0"]
        out = module(x, hx)
        y = out[0] if (lstm and cell) or not cell else out
        y.sum().backward()
        return y.detach(), (x.grad if isinstance(x, torch.Tensor) and x.requires_grad else None)

    try:
        got = run(ours, given)
    except (ValueError, TypeError) as e:
        assert re.search(r"got|given|expected|Expected|does not match", str(e)), f"unhelpful message: {e}"
        assert clean[target] is None or B == 0 and how == "expanded", f"{target} {how}: {e}"
        return
    assert clean[target] is not None, f"{target} {how}: accepted"
    expected = run(ref, clean)
    assert torch.allclose(got[0], expected[0], atol=1e-5, equal_nan=True)
    if got[1] is not None and how not in ("nan", "inf"):
        assert torch.allclose(got[1], expected[1], atol=1e-5)
