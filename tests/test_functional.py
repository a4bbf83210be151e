"""The C++ kernels (pyrnn.functional) against the NumPy reference.

Parity for every cell variant, float32 and float64, at every ISA level this
CPU supports, over sizes that leave SIMD tails; float64 finite-difference
checks of the kernels themselves (bitwise equality across thread counts:
test_threads.py);
saturation and NaN handling of the vectorised nonlinearities; validation.
"""

import numpy as np
import pytest

from pyrnn import _core
import pyrnn
from pyrnn import functional as F
from pyrnn import reference as R
from pyrnn.testing import (
    GRAD_NAMES,
    VARIANTS,
    assert_close,
    make_params,
    random_cotangents,
    run_backward,
    run_forward,
)

# (T, B, I, H, bias, lengths, reverse): odd sizes leave tails for every vector
# width; lengths are unsorted and include 1 and T.
CONFIGS = {
    "T4B3I5H7": (4, 3, 5, 7, True, None, False),
    "T1B1H1": (1, 1, 3, 1, True, None, False),
    "H17-nobias-rev-len": (5, 2, 17, 17, False, [5, 2], True),
    "H33-len": (3, 5, 8, 33, True, [3, 1, 2, 3, 1], False),
    "H100-B9-len": (6, 9, 20, 100, True, [6, 5, 5, 2, 1, 1, 6, 3, 4], False),
    "H65-B13-rev-nobias": (2, 13, 33, 65, False, None, True),
    "I100-H7-B1-len-rev": (7, 1, 100, 7, True, [4], True),
}


def _params(variant, cfg, dtype, rng, drop_states=False):
    T, B, I, H, bias, lengths, reverse = cfg
    p = make_params(rng, VARIANTS[variant][0], T=T, B=B, I=I, H=H, bias=bias, dtype=dtype)
    if drop_states:
        p.pop("h0")
        p.pop("c0", None)
    kw = {"lengths": None if lengths is None else np.array(lengths), "reverse": reverse}
    return p, kw


def _check_parity(variant, p, kw, dtype, rng):
    outs, ws = run_forward(F, variant, p, **kw)
    # float32 kernels are compared with the float64 reference on the same values
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    ref_outs, cache = run_forward(R, variant, p64, **kw)
    for k in ref_outs:
        assert outs[k].dtype == dtype
        assert_close(outs[k], ref_outs[k], dtype, k)
    cot = random_cotangents(rng, outs)
    grads = run_backward(F, variant, ws, cot)
    ref_grads = run_backward(R, variant, cache, {k: v.astype(np.float64) for k, v in cot.items()})
    for k in GRAD_NAMES[VARIANTS[variant][0]]:
        if ref_grads[k] is None:
            assert grads[k] is None, k
            continue
        if k in ("h0", "c0") and k not in p:
            ref_grads[k] = ref_grads[k]  # gradient wrt the implicit zero state
        assert grads[k].dtype == dtype, k
        assert_close(grads[k], ref_grads[k], dtype, "d" + k)


@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_with_reference(variant, dtype, cfg, isa, rng):
    p, kw = _params(variant, CONFIGS[cfg], dtype, rng)
    _check_parity(variant, p, kw, dtype, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_without_initial_states(variant, dtype, isa, rng):
    p, kw = _params(variant, CONFIGS["H33-len"], dtype, rng, drop_states=True)
    _check_parity(variant, p, kw, dtype, rng)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_partial_cotangents(variant, rng):
    """dy, dh_n, dc_n may each be absent (zeros)."""
    p, kw = _params(variant, CONFIGS["T4B3I5H7"], np.float64, rng)
    outs, ws = run_forward(F, variant, p, **kw)
    ref_outs, cache = run_forward(R, variant, p, **kw)
    cot = random_cotangents(rng, outs)
    for missing in cot:
        partial = {k: v for k, v in cot.items() if k != missing}
        grads = run_backward(F, variant, ws, partial)
        ref_grads = run_backward(R, variant, cache, partial)
        for k, g in grads.items():
            if g is not None:
                assert_close(g, ref_grads[k], np.float64, f"d{k} without {missing}")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kernel_gradients_match_finite_differences(variant, rng):
    p, kw = _params(variant, (4, 3, 5, 6, True, [4, 2, 3], False), np.float64, rng)
    outs, ws = run_forward(F, variant, p, **kw)
    cot = random_cotangents(rng, outs)
    grads = run_backward(F, variant, ws, cot)
    names = GRAD_NAMES[VARIANTS[variant][0]]
    direction = {k: rng.standard_normal(p[k].shape) for k in names}

    def loss(eps):
        q = {k: v + eps * direction[k] if k in direction else v for k, v in p.items()}
        o, _ = run_forward(F, variant, q, training=False, **kw)
        return sum(float(np.sum(cot[k] * o[k])) for k in o)

    eps = 1e-6
    numeric = (loss(eps) - loss(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(grads[k] * direction[k])) for k in names)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_inference_equals_training_forward(variant, rng):
    p, kw = _params(variant, CONFIGS["H100-B9-len"], np.float32, rng)
    train, ws = run_forward(F, variant, p, **kw)
    infer, none = run_forward(F, variant, p, training=False, **kw)
    assert none is None and ws is not None
    for k in train:
        assert np.array_equal(train[k], infer[k]), k


def test_workspace_reports_saved_bytes(rng):
    p, kw = _params("lstm", CONFIGS["H100-B9-len"], np.float32, rng)
    _, ws = run_forward(F, "lstm", p, **kw)
    rows = sum(CONFIGS["H100-B9-len"][5])
    # 4 gates and c per valid (t, b), each padded to whole vectors
    assert 5 * rows * 100 * 4 <= ws.nbytes <= 5 * rows * 128 * 4
    assert ws.shape == (6, 9, 20, 100) and ws.dtype == np.float32


def test_workspace_bytes_do_not_depend_on_cached_blocks(rng):
    """nbytes counts the saved activations, not the (possibly larger) cached blocks they sit in."""
    big = make_params(rng, "lstm", T=50, B=16, I=32, H=128, dtype=np.float32)
    small = make_params(rng, "lstm", T=40, B=16, I=32, H=128, dtype=np.float32)
    pyrnn.empty_cache()
    nbytes_fresh = run_forward(F, "lstm", small)[1].nbytes
    ws_big = run_forward(F, "lstm", big)[1]
    del ws_big  # its blocks (25% larger) go to the cache, and the next call reuses them
    nbytes_reused = run_forward(F, "lstm", small)[1].nbytes
    assert nbytes_fresh == nbytes_reused
    rows, Hp = 40 * 16, 128
    assert 5 * rows * Hp * 4 <= nbytes_fresh <= 5 * rows * (Hp + 16) * 4  # 4 gates and c, rows padded


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_nonlinearities_saturate_and_propagate_nan(variant, isa, rng):
    p, kw = _params(variant, (3, 4, 5, 19, True, None, False), np.float32, rng)
    p["x"] = (p["x"] * 1e4).astype(np.float32)
    outs, _ = run_forward(F, variant, p, training=False, **kw)
    assert np.all(np.isfinite(outs["y"]))
    if variant != "rnn_relu":  # GRU mixes in h0, which may exceed 1
        bound = max(1.0, float(np.abs(p["h0"]).max())) if variant.startswith("gru") else 1.0
        assert np.all(np.abs(outs["y"]) <= bound * (1 + 1e-6))
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    ref_outs, _ = run_forward(R, variant, p64, training=False, **kw)
    assert_close(outs["y"], ref_outs["y"], np.float32, "y at large inputs")
    p["x"][0, 1, 2] = np.nan
    outs, _ = run_forward(F, variant, p, training=False, **kw)
    assert np.all(np.isnan(outs["y"][:, 1]))  # carried through the recurrence
    assert np.all(np.isfinite(np.delete(outs["y"], 1, axis=1)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "rnn_relu"])
def test_infinite_input_keeps_gradients_finite(variant, dtype, isa, rng):
    """One inf in x saturates the gates; as in torch.nn, only the column of dW_ih that multiplies it
    turns NaN (0 * inf), and every other gradient stays finite. (H=19 leaves padded lanes at every
    ISA level, where the input projection computes inf * 0 = NaN.)"""
    p, kw = _params(variant, (4, 3, 5, 19, True, None, False), dtype, rng)
    p["x"][1, 1, 2] = np.inf
    outs, ws = run_forward(F, variant, p, **kw)
    assert np.all(np.isfinite(outs["y"]))
    grads = run_backward(F, variant, ws, random_cotangents(rng, outs))
    for name, g in grads.items():
        if name == "W_ih":
            assert np.all(np.isfinite(np.delete(g, 2, axis=1))), name
        else:
            assert np.all(np.isfinite(g)), name


def test_float32_tanh_accuracy(isa):
    """RNN with W_ih = identity and W_hh = 0 computes tanh(x) elementwise (inf is left out:
    inf * 0 in the projection is NaN, as in any GEMM). The float tanh is a rational
    approximation within 6.4 ulp (csrc/gemm/simd.h): 3.8e-7 relative at most."""
    x = np.concatenate([np.linspace(-20, 20, 4001), np.geomspace(1e-7, 1.0, 500), -np.geomspace(1e-7, 1.0, 500),
                        [0.0, 0.624, 0.625, 0.626, 44.0, 1e30, -1e30]]).astype(np.float32)
    H = 25
    x = np.pad(x, (0, -len(x) % H)).reshape(-1, 1, H)
    W_ih = np.eye(H, dtype=np.float32)
    W_hh = np.zeros((H, H), np.float32)
    y, _, _ = F.rnn_forward(x, None, W_ih, W_hh, training=False)
    expected = np.tanh(x.astype(np.float64))
    np.testing.assert_allclose(y, expected, rtol=5e-7, atol=1e-30)
    assert np.all(np.abs(y) <= 1)


def test_float32_sigmoid_accuracy(isa):
    """A GRU step with W_hh = 0, W_in = 0, no biases and h0 = 1 gives h' = z = sigmoid(W_iz x): with
    W_iz = identity, sigmoid(x) elementwise. The float sigmoid is 1/(1 + e^-x) with a Cephes-style exp
    (csrc/gemm/simd.h): within about 2 ulp, in [0, 1]. (A rational form within 2e-7 absolute was
    measured faster and not kept: gates near 1 accumulate that error over long sequences.)"""
    x = np.concatenate([np.linspace(-40, 40, 8001), np.geomspace(1e-7, 1.0, 500), -np.geomspace(1e-7, 1.0, 500),
                        [0.0, 17.9, 18.0, 18.1, 1e30, -1e30]]).astype(np.float32)
    H = 25
    x = np.pad(x, (0, -len(x) % H)).reshape(1, -1, H)
    B = x.shape[1]
    W_ih = np.zeros((3 * H, H), np.float32)
    W_ih[H:2 * H] = np.eye(H)
    y, _, _ = F.gru_forward(x, np.ones((B, H), np.float32), W_ih, np.zeros((3 * H, H), np.float32),
                            training=False)
    with np.errstate(over="ignore"):
        expected = 1 / (1 + np.exp(-x.astype(np.float64)))
    assert np.all(np.isfinite(y))  # AVX-512 gave NaN at x = 1e30 (exp's reduction of -1e30)
    # AVX-512 divides by the reciprocal estimate and one Newton step: 1.28e-7 at x = 7.53, 2.1 ulp of
    # 0.9995 (AVX2 divides: 8.5e-8).
    assert np.abs(y - expected).max() <= 1.5e-7
    normal = expected > 1e-30  # (exp saturates near 1e-38 below)
    assert (np.abs(y - expected)[normal] / expected[normal]).max() <= 2.5e-7
    assert np.all((y >= 0) & (y <= 1))


def test_non_contiguous_inputs_are_copied(rng):
    p, kw = _params("lstm", CONFIGS["H17-nobias-rev-len"], np.float64, rng)
    q = {k: np.asfortranarray(v) for k, v in p.items()}
    q["x"] = np.ascontiguousarray(p["x"].transpose(1, 0, 2)).transpose(1, 0, 2)  # strided view
    assert not q["x"].flags.c_contiguous
    a, _ = run_forward(F, "lstm", p, **kw)
    b, _ = run_forward(F, "lstm", q, **kw)
    for k in a:
        assert np.array_equal(a[k], b[k])


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("with_lengths", [False, True])
def test_empty_batch(variant, with_lengths, rng):
    p = make_params(rng, VARIANTS[variant][0], T=3, B=0, I=4, H=5)
    kw = {"lengths": np.zeros(0, np.int64)} if with_lengths else {}
    outs, ws = run_forward(F, variant, p, **kw)
    assert outs["y"].shape == (3, 0, 5) and outs["h_n"].shape == (0, 5)
    grads = run_backward(F, variant, ws, random_cotangents(rng, outs))
    for k, g in grads.items():
        assert g.shape == p[k].shape and not np.any(g), k


# ------------------------------------------------------------ validation --

def _lstm(**changes):
    rng = np.random.default_rng(0)
    p = make_params(rng, "lstm", T=3, B=2, I=4, H=5)
    p.update(changes)
    return F.lstm_forward(p["x"], p["h0"], p["c0"], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"],
                          lengths=p.get("lengths"))


@pytest.mark.parametrize("changes, exc, fragment", [
    ({"x": np.zeros((3, 2, 3))}, ValueError, "W_ih must have shape"),
    ({"x": np.zeros((3, 4))}, ValueError, "x must be a 3-D array"),
    ({"x": np.zeros((0, 2, 4))}, ValueError, "at least one time step"),
    ({"x": np.zeros((3, 2, 4), np.int64)}, TypeError, "float32 or float64"),
    ({"x": np.zeros((3, 2, 4), np.float32)}, TypeError, "same dtype"),
    ({"h0": np.zeros((2, 4))}, ValueError, "h0 must have shape"),
    ({"c0": np.zeros((3, 5))}, ValueError, "c0 must have shape"),
    ({"W_hh": np.zeros((20, 4))}, ValueError, "W_hh must have shape"),
    ({"b_ih": np.zeros(19)}, ValueError, "b_ih must have shape"),
    ({"b_ih": None}, ValueError, "both be given"),
    ({"lengths": np.array([4, 1])}, ValueError, "lengths must lie in [1, T]"),
    ({"lengths": np.array([0, 1])}, ValueError, "lengths must lie in [1, T]"),
    ({"lengths": np.array([1, 2, 3])}, ValueError, "size B = 2"),
    ({"lengths": np.array([1.0, 2.0])}, TypeError, "integer"),
])
def test_forward_validation(changes, exc, fragment):
    with pytest.raises(exc, match=pytest.importorskip("re").escape(fragment)):
        _lstm(**changes)


def test_backward_validation(rng):
    p = make_params(rng, "gru", T=3, B=2, I=4, H=5)
    y, h_n, ws = F.gru_forward(p["x"], p["h0"], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"])
    with pytest.raises(ValueError, match="training=True"):
        F.gru_backward(None, y)
    with pytest.raises(TypeError, match="pyrnn workspace"):
        F.gru_backward({"cell": "gru"}, y)
    with pytest.raises(ValueError, match="from gru_forward"):
        F.lstm_backward(ws, y)
    with pytest.raises(ValueError, match=r"dy must have shape \(T, B, H\)"):
        F.gru_backward(ws, y[:2])
    with pytest.raises(TypeError, match="forward dtype"):
        F.gru_backward(ws, y.astype(np.float32))
    with pytest.raises(ValueError, match=r"dh_n must have shape"):
        F.gru_backward(ws, y, np.zeros((3, 5)))


def test_core_checks_arrays_itself(rng):
    """Calling the extension directly with bad arrays raises instead of crashing."""
    p = make_params(rng, "lstm", T=3, B=2, I=4, H=5)
    args = dict(cell=_core.CellKind.LSTM, x=p["x"], h0=None, c0=None, W_ih=p["W_ih"], W_hh=p["W_hh"],
                b_ih=None, b_hh=None, lengths=None, reverse=False, training=False)
    _core.sequence_forward(**args)
    bad = [
        ({"W_ih": p["W_ih"].astype(np.float32)}, TypeError),
        ({"W_hh": p["W_hh"][:, :4]}, ValueError),
        ({"lengths": np.array([3, 4], np.int64)}, ValueError),
        ({"lengths": np.array([3, 1], np.int32)}, TypeError),
        ({"x": np.asfortranarray(p["x"])}, ValueError),
        ({"cell": _core.CellKind.GRU}, ValueError),
        ({"b_ih": p["b_ih"]}, ValueError),
        ({"h0": "zeros"}, TypeError),
    ]
    for change, exc in bad:
        with pytest.raises(exc):
            _core.sequence_forward(**{**args, **change})


def test_invalid_isa_request_raises(monkeypatch, rng):
    p = make_params(rng, "rnn", T=2, B=1, I=3, H=4)
    monkeypatch.setenv("PYRNN_ISA", "sse9")
    with pytest.raises(ValueError, match="PYRNN_ISA must be one of"):
        F.rnn_forward(p["x"], p["h0"], p["W_ih"], p["W_hh"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_recurrent_mask_matches_scaled_weights(variant, isa, rng):
    """h_mask multiplies h_{t-1} in the recurrent products only. For one sequence
    that equals W_hh scaled by the mask along its columns, which the reference
    can run; gradients follow by the chain rule (dW_hh = sum_b dW'_b * m_b)."""
    cell, opts = VARIANTS[variant]
    p, kw = _params(variant, (5, 3, 4, 9, True, [5, 2, 4], True), np.float64, rng)
    mask = (rng.random((3, 9)) > 0.4) / 0.6
    outs, ws = run_forward(F, variant, p, h_mask=mask, **kw)
    cot = random_cotangents(rng, outs)
    grads = run_backward(F, variant, ws, cot)
    dW_hh = np.zeros_like(p["W_hh"])
    for b in range(3):
        q = {k: (v[:, b:b + 1] if k == "x" else v[b:b + 1] if k in ("h0", "c0") else v) for k, v in p.items()}
        q["W_hh"] = p["W_hh"] * mask[b]
        kb = {"lengths": kw["lengths"][b:b + 1], "reverse": kw["reverse"]}
        ref_outs, cache = run_forward(R, variant, q, **kb)
        for k in ref_outs:
            sl = outs[k][:, b:b + 1] if k == "y" else outs[k][b:b + 1]
            assert_close(sl, ref_outs[k], np.float64, k)
        cb = {k: (v[:, b:b + 1] if k == "y" else v[b:b + 1]) for k, v in cot.items()}
        rg = run_backward(R, variant, cache, cb)
        assert_close(grads["x"][:, b:b + 1], rg["x"], np.float64, "dx")
        assert_close(grads["h0"][b:b + 1], rg["h0"], np.float64, "dh0")
        dW_hh += rg["W_hh"] * mask[b]
    assert_close(grads["W_hh"], dW_hh, np.float64, "dW_hh")


def test_projection_shapes_and_errors(rng):
    p = make_params(rng, "lstm", T=3, B=2, I=4, H=6)
    W_hr = rng.standard_normal((3, 6))
    W_hh = rng.standard_normal((24, 3))
    y, h_n, c_n, ws = F.lstm_forward(p["x"], None, None, p["W_ih"], W_hh, W_hr=W_hr)
    assert y.shape == (3, 2, 3) and h_n.shape == (2, 3) and c_n.shape == (2, 6)
    grads = F.lstm_backward(ws, np.ones_like(y))
    assert len(grads) == 8 and grads[-1].shape == (3, 6) and grads[4].shape == (24, 3)
    with pytest.raises(ValueError, match=r"W_hh must have shape \(4\*H, P\)"):
        F.lstm_forward(p["x"], None, None, p["W_ih"], p["W_hh"], W_hr=W_hr)
    with pytest.raises(ValueError, match="1 <= P < H"):
        F.lstm_forward(p["x"], None, None, p["W_ih"], rng.standard_normal((24, 6)), W_hr=np.zeros((6, 6)))
    with pytest.raises(ValueError, match=r"h0 must have shape \(B, P\)"):
        F.lstm_forward(p["x"], p["h0"], None, p["W_ih"], W_hh, W_hr=W_hr)
    with pytest.raises(ValueError, match=r"h_mask must have shape \(B, P\)"):
        F.lstm_forward(p["x"], None, None, p["W_ih"], W_hh, W_hr=W_hr, h_mask=np.ones((2, 6)))


def test_gil_is_released_while_a_kernel_runs(threads, rng):
    """Python code keeps running in another thread during a long kernel call."""
    import threading
    import time

    threads(1)
    p = make_params(rng, "lstm", T=200, B=32, I=256, H=256, dtype=np.float32)
    done = threading.Event()
    ticks = []

    def kernel():
        for _ in range(3):
            F.lstm_forward(p["x"], None, None, p["W_ih"], p["W_hh"], training=False)
        done.set()

    worker = threading.Thread(target=kernel)
    start = time.perf_counter()
    worker.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0)
    worker.join()
    elapsed = time.perf_counter() - start
    assert elapsed > 0.05  # the kernel call took a while...
    gaps = np.diff([start] + ticks)
    assert len(ticks) > 100 and gaps.max() < elapsed / 2  # ...and this thread kept running meanwhile


def test_concurrent_calls_from_python_threads(threads, rng):
    """Calls from several Python threads at once (the GIL is released, the
    buffer cache is shared) give each caller its own, correct results."""
    from concurrent.futures import ThreadPoolExecutor

    threads(2)
    params = [make_params(rng, "lstm", T=40, B=16, I=48, H=64, dtype=np.float32) for _ in range(4)]
    dys = [rng.standard_normal((40, 16, 64)).astype(np.float32) for _ in range(4)]

    def step(k):
        p = params[k]
        y, h_n, c_n, ws = F.lstm_forward(p["x"], p["h0"], p["c0"], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"])
        return y, F.lstm_backward(ws, dys[k])

    expected = [step(k) for k in range(4)]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(step, [0, 1, 2, 3] * 2))
            for k, (y, grads) in enumerate(got):
                ey, egrads = expected[k % 4]
                np.testing.assert_array_equal(y, ey)
                for g, e in zip(grads, egrads):
                    np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_random_shapes_match_reference(variant):
    """Property test over shapes, lengths, bias and direction (float64, all outputs and gradients)."""
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies

    @hyp.settings(max_examples=25, deadline=None, derandomize=True)
    @hyp.given(T=st.integers(1, 6), B=st.integers(1, 5), I=st.integers(1, 9), H=st.integers(1, 21),
               bias=st.booleans(), reverse=st.booleans(), with_lengths=st.booleans(), seed=st.integers(0, 2**16))
    def check(T, B, I, H, bias, reverse, with_lengths, seed):
        rng = np.random.default_rng(seed)
        lengths = list(rng.integers(1, T + 1, size=B)) if with_lengths else None
        p, kw = _params(variant, (T, B, I, H, bias, lengths, reverse), np.float64, rng)
        _check_parity(variant, p, kw, np.float64, rng)

    check()


def test_unpickled_arrays_are_accepted():
    """An unpickled float32 array's dtype is equal to, not identical with, numpy's
    float32: the kernels accept it (found by pickling a frozen layer)."""
    import pickle

    p = {k: pickle.loads(pickle.dumps(v)) for k, v in make_params(np.random.default_rng(0), "lstm",
                                                                   dtype=np.float32).items()}
    assert p["x"].dtype is not np.dtype(np.float32)
    y, h_n, c_n, ws = F.lstm_forward(p["x"], p["h0"], p["c0"], p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"])
    F.lstm_backward(ws, pickle.loads(pickle.dumps(np.ones_like(y))))
    h1, c1 = pyrnn._core.cell_step(pyrnn._core.CellKind.LSTM, p["x"][0], p["h0"], p["c0"], p["W_ih"], p["W_hh"],
                                   p["b_ih"], p["b_hh"])
    np.testing.assert_allclose(h1, y[0], rtol=1e-5, atol=1e-6)
