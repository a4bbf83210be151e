"""Defects found by the twelfth review round (layer-norm/zoneout, interop, extreme values, tooling),
each pinned by the behaviour users expect (torch.nn, the papers, the docs)."""

import importlib.util
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

import pyrnn
import pyrnn.functional as F
from pyrnn import bench, testing
from pyrnn import reference as R
from pyrnn.optim import clip_grad_norm, clip_grad_value

try:
    import torch
    from torch import nn

    import pyrnn.torch as pt
except ImportError:
    torch = nn = pt = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")
HAVE_ONNX = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxscript") is not None


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


# --------------------------------------------------------------- zoneout: the paper's equations


@pytest.mark.parametrize("layernorm", [False, True])
def test_lstm_zoneout_of_c_follows_krueger_et_al(layernorm):
    """h~_t = o * tanh(c~_t) (LN(c~_t) for the LayerNormLSTM) reads the un-zoned c~_t = f c_{t-1} + i g,
    while the state c_t = m c_{t-1} + (1 - m) c~_t: Krueger et al. 2016's LSTM equations (the kernels read
    the zoned c_t). Written out here for two steps with fixed masks, forward and a gradient check."""
    rng = np.random.default_rng(0)
    T_, B_, I_, H_ = 2, 3, 4, 5
    x = rng.standard_normal((T_, B_, I_))
    h0, c0 = rng.standard_normal((B_, H_)) * 0.5, rng.standard_normal((B_, H_))
    W_ih, W_hh = rng.uniform(-0.5, 0.5, (4 * H_, I_)), rng.uniform(-0.5, 0.5, (4 * H_, H_))
    b_ih, b_hh = rng.uniform(-0.5, 0.5, 4 * H_), rng.uniform(-0.5, 0.5, 4 * H_)
    m_c = (rng.random((T_, B_, H_)) < 0.5).astype(np.float64)
    m_h = np.zeros((T_, B_, H_))
    ln = {"ln_ih": 1 + 0.1 * rng.standard_normal(4 * H_), "ln_hh": 1 + 0.1 * rng.standard_normal(4 * H_),
          "ln_c_weight": 1 + 0.1 * rng.standard_normal(H_), "ln_c_bias": 0.1 * rng.standard_normal(H_)}

    def norm(v, gain=None, bias=None):
        out = (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)
        return out * (1 if gain is None else gain) + (0 if bias is None else bias)

    h, c, ys = h0, c0, []
    for t in range(T_):
        if layernorm:
            gi = np.concatenate([norm(p, ln["ln_ih"][k * H_:(k + 1) * H_]) for k, p in
                                 enumerate(np.split(x[t] @ W_ih.T, 4, axis=1))], axis=1) + b_ih
            gh = np.concatenate([norm(p, ln["ln_hh"][k * H_:(k + 1) * H_]) for k, p in
                                 enumerate(np.split(h @ W_hh.T, 4, axis=1))], axis=1) + b_hh
        else:
            gi, gh = x[t] @ W_ih.T + b_ih, h @ W_hh.T + b_hh
        i, f, g, o = np.split(gi + gh, 4, axis=1)
        c_tilde = _sig(f) * c + _sig(i) * np.tanh(g)
        h = _sig(o) * np.tanh(norm(c_tilde, ln["ln_c_weight"], ln["ln_c_bias"]) if layernorm else c_tilde)
        c = m_c[t] * c + (1 - m_c[t]) * c_tilde
        ys.append(h)
    if layernorm:
        y, h_n, c_n, _ = F.layernorm_lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln["ln_ih"], ln["ln_hh"],
                                                  ln["ln_c_weight"], ln["ln_c_bias"], zoneout_h=m_h, zoneout_c=m_c)
    else:
        y, h_n, c_n, _ = F.lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, zoneout_h=m_h, zoneout_c=m_c)
    np.testing.assert_allclose(y, np.stack(ys), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c_n, c, rtol=1e-12, atol=1e-12)
    # the backward against the reference (float64, same masks) and a directional derivative of the loss
    dy = rng.standard_normal(y.shape)
    if layernorm:
        _, _, _, ws = F.layernorm_lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln["ln_ih"], ln["ln_hh"],
                                               ln["ln_c_weight"], ln["ln_c_bias"], zoneout_h=m_h, zoneout_c=m_c)
        got = F.layernorm_lstm_backward(ws, dy)
        _, _, _, cache = R.layernorm_lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln["ln_ih"], ln["ln_hh"],
                                                  ln["ln_c_weight"], ln["ln_c_bias"], zoneout_h=m_h, zoneout_c=m_c)
        want = R.layernorm_lstm_backward(cache, dy)
    else:
        _, _, _, ws = F.lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, zoneout_h=m_h, zoneout_c=m_c)
        g = F.backward(ws, dy)
        got = (g["x"], g["h0"], g["c0"], g["W_ih"], g["W_hh"])
        _, _, _, cache = R.lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, zoneout_h=m_h, zoneout_c=m_c)
        want = R.lstm_backward(cache, dy)[:5]
    for a, b in zip(got, want):
        if b is not None:
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    v = rng.standard_normal(x.shape)
    eps = 1e-6

    def loss(xx):
        out = (F.layernorm_lstm_forward(xx, h0, c0, W_ih, W_hh, b_ih, b_hh, ln["ln_ih"], ln["ln_hh"],
                                        ln["ln_c_weight"], ln["ln_c_bias"], zoneout_h=m_h, zoneout_c=m_c,
                                        training=False) if layernorm else
               F.lstm_forward(xx, h0, c0, W_ih, W_hh, b_ih, b_hh, zoneout_h=m_h, zoneout_c=m_c, training=False))
        return float(np.sum(out[0] * dy))

    fd = (loss(x + eps * v) - loss(x - eps * v)) / (2 * eps)
    assert fd == pytest.approx(float(np.sum(got[0] * v)), rel=1e-6, abs=1e-8)


@needs_torch
def test_relu_rnn_backward_passes_nan_as_torch():
    """torch's relu backward is where(h <= 0, 0, grad): a NaN h passes the gradient (pyrnn's h > 0 ? dh : 0
    gave slope 0 there, hiding NaN gradients and changing finite ones)."""
    torch.manual_seed(0)
    ref = nn.RNN(3, 4, nonlinearity="relu").double()
    mine = pt.RNN(3, 4, nonlinearity="relu").double()
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    x[2, 0, 1] = float("nan")  # entry 0 is NaN from step 2 on
    outs = []
    for m in (ref, mine):
        xx = x.clone().requires_grad_(True)
        y, _ = m(xx)
        y.backward(torch.ones_like(y))
        outs.append((y.detach(), xx.grad, [p.grad.clone() for p in m.parameters()]))
    (y1, dx1, g1), (y2, dx2, g2) = outs
    torch.testing.assert_close(y2, y1, equal_nan=True)
    torch.testing.assert_close(dx2, dx1, equal_nan=True)  # entry 1 finite and equal, entry 0's NaNs where torch's
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, equal_nan=True)
    # the NumPy reference follows the same rule: its gradients equal the kernel's, NaNs in the same places
    w = [t.detach().numpy() for t in (mine.weight_ih_l0, mine.weight_hh_l0, mine.bias_ih_l0, mine.bias_hh_l0)]
    xn, dy = x.numpy(), np.ones((6, 2, 4))
    _, _, ws = F.rnn_forward(xn, None, *w, nonlinearity="relu")
    got = F.backward(ws, dy)
    _, _, cache = R.rnn_forward(xn, None, *w, nonlinearity="relu")
    want = R.rnn_backward(cache, dy)
    np.testing.assert_allclose(got["x"], want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["x"], dx1.numpy(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------- NumPy layers and optim


@pytest.mark.parametrize("cls", [pyrnn.LSTM, pyrnn.GRU, pyrnn.LayerNormLSTM, pyrnn.LayerNormGRU])
def test_layer_backward_unchanged_when_the_state_buffer_is_reused(cls):
    """Truncated BPTT writes h_n into the buffer it passed as h0 before backward: the gradients must not
    change (they were off by up to 5.2)."""
    layer = cls(3, 4, dtype=np.float64, seed=0)
    lstm = layer.mode == "LSTM"
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 2, 3))
    h, c = rng.standard_normal((1, 2, 4)), rng.standard_normal((1, 2, 4))
    dy = rng.standard_normal((5, 2, 4))

    def run(reuse):
        layer.zero_grad()
        hh, cc = h.copy(), c.copy()
        y, state = layer(x, (hh, cc) if lstm else hh)
        if reuse:
            hh[...] = state[0] if lstm else state
            cc[...] = state[1] if lstm else 0.0
        dx, dstate = layer.backward(dy)
        return dx, dstate, {k: v.copy() for k, v in layer.grads.items()}

    (dx1, ds1, g1), (dx2, ds2, g2) = run(False), run(True)
    np.testing.assert_array_equal(dx1, dx2)
    for a, b in zip(ds1 if isinstance(ds1, tuple) else (ds1,), ds2 if isinstance(ds2, tuple) else (ds2,)):
        np.testing.assert_array_equal(a, b)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k])


def test_zoneout_and_recurrent_dropout_attributes_are_checked_at_each_training_call():
    layer = pyrnn.LayerNormLSTM(3, 4, zoneout=0.2, seed=0)
    x = np.zeros((2, 1, 3), np.float32)
    for name, bad in (("zoneout", 1.7), ("zoneout", -0.5), ("zoneout_c", 2.0), ("recurrent_dropout", 1.5)):
        setattr(layer, name, bad)
        with pytest.raises(ValueError, match=name):
            layer(x)
        layer.eval()(x)  # eval mode draws no masks
        layer.train()
        setattr(layer, name, 0.2)
    layer(x)


def test_load_state_dict_returns_incompatible_keys_and_checks_its_argument():
    layer = pyrnn.GRU(3, 4, seed=0)
    result = layer.load_state_dict({"weight_ih_l0": layer.weight_ih_l0, "extra": np.zeros(1)}, strict=False)
    assert type(result).__name__ == "IncompatibleKeys"
    assert "weight_hh_l0" in result.missing_keys and result.unexpected_keys == ["extra"]
    missing, unexpected = result  # (still a pair)
    assert missing == result.missing_keys
    for bad in (None, 3, [("weight_ih_l0", 0)]):
        with pytest.raises(TypeError, match="expected a mapping of names to arrays"):
            layer.load_state_dict(bad)


def test_with_weights_names_missing_and_unexpected_weights():
    layer = pyrnn.LSTM(3, 4, seed=0).freeze()
    weights = dict(layer.named_parameters())
    with pytest.raises(ValueError, match=r"missing \['weight_ih_l0'\]"):
        layer.with_weights({k: v for k, v in weights.items() if k != "weight_ih_l0"})
    with pytest.raises(ValueError, match=r"unexpected \['bogus'\]"):
        layer.with_weights({**weights, "bogus": np.zeros(1)})
    cell = pyrnn.LSTMCell(3, 4, seed=0).freeze()
    with pytest.raises(ValueError, match=r"missing \['weight_hh'"):
        cell.with_weights({"weight_ih": dict(cell.named_parameters())["weight_ih"]})
    with pytest.raises(TypeError, match="mapping"):
        cell.with_weights([1, 2])


def test_load_keras_weights_refuses_a_non_integer_layer():
    """layer=0.5 built the key weight_ih_l0.5 and loaded nothing, silently."""
    from pyrnn.keras import to_keras

    layer = pyrnn.LSTM(3, 4, num_layers=2, seed=0)
    k, rk, b = to_keras("lstm", layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0)
    for bad, error in ((0.5, TypeError), (1.0, TypeError), (True, TypeError), ("0", TypeError), (2, ValueError)):
        with pytest.raises(error, match="layer"):
            layer.load_keras_weights(k, rk, b, layer=bad)
    with pytest.raises(TypeError, match="reset_after must be a bool"):
        to_keras("gru", np.zeros((6, 3)), np.zeros((6, 2)), reset_after="no")
    before = layer.weight_ih_l0.copy()
    layer.weight_ih_l0[...] = 0
    layer.load_keras_weights(k, rk, b, layer=np.int64(0))
    np.testing.assert_array_equal(layer.weight_ih_l0, before)


def test_clip_grad_norm_inf_norm_sees_a_nan_anywhere_and_takes_inf_thresholds():
    g = [np.array([1.0, 2.0]), np.array([np.nan, 1.0])]
    assert math.isnan(clip_grad_norm(g, 1.0, norm_type=math.inf))
    assert np.isnan(g[0]).all()  # as torch: every gradient times NaN
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm([np.array([1.0]), np.array([np.nan])], 1.0, norm_type=math.inf, error_if_nonfinite=True)
    g = [np.array([3.0, 4.0])]
    assert clip_grad_norm(g, math.inf) == pytest.approx(5.0)  # torch's idiom: measure only
    np.testing.assert_array_equal(g[0], [3.0, 4.0])
    clip_grad_value(g, math.inf)
    np.testing.assert_array_equal(g[0], [3.0, 4.0])
    for bad in (-math.inf, math.nan, -1.0):
        with pytest.raises(ValueError, match=r"Invalid max_norm: .* \(expected a number >= 0\)"):
            clip_grad_norm(g, bad)


def test_residual_that_overlaps_an_input_is_refused():
    rng = np.random.default_rng(0)
    T_, B_, I_, H_ = 3, 2, 4, 5
    W_ih, W_hh = rng.standard_normal((H_, I_)).astype(np.float32), rng.standard_normal((H_, H_)).astype(np.float32)
    x = rng.standard_normal((T_, B_, I_)).astype(np.float32)
    need = F.residual_nbytes("rnn", x, None, None, W_ih, W_hh)
    buf = np.zeros(need + x.nbytes, np.uint8)
    xv = buf[:x.nbytes].view(np.float32).reshape(x.shape)
    xv[...] = x
    with pytest.raises(ValueError, match="residual must not overlap"):
        F.forward("rnn", xv, None, None, W_ih, W_hh, residual=buf)
    y, *_ = F.forward("rnn", xv, None, None, W_ih, W_hh, residual=buf[x.nbytes:])
    np.testing.assert_array_equal(y, F.forward("rnn", x, None, None, W_ih, W_hh)[0])


def test_input_dtype_advice_names_a_dtype_a_layer_can_have():
    layer = pyrnn.LSTM(3, 4)
    for dtype in (np.float16, np.dtype(">f4")):
        with pytest.raises(TypeError, match=r"cast it: x.astype\(np.float32\)") as e:
            layer(np.zeros((2, 1, 3), dtype))
        assert "build the layer with" not in str(e.value)
    with pytest.raises(TypeError, match="or build the layer with dtype=float64"):
        layer(np.zeros((2, 1, 3)))


# --------------------------------------------------------------- pyrnn.testing, diagnostics, config


def test_testing_helpers_fail_when_they_should():
    with pytest.raises(AssertionError):
        testing.assert_close([np.inf, 1000.0], [np.inf, 1.0], np.float64)  # (an inf made atol inf)
    testing.assert_close([np.inf, 1.0], [np.inf, 1.0], np.float64)
    with pytest.raises(ValueError, match="dtype must be one of"):
        testing.assert_close([1.0], [1.0], np.float16)
    for a, b in ((np.array([-0.0]), np.array([0.0])), (np.float32([0.5]), np.float64([0.5])),
                 (np.array(1.0), np.ones(3))):
        with pytest.raises(AssertionError):
            testing.assert_bitwise_equal({"v": a}, {"v": b})
    testing.assert_bitwise_equal({"v": np.array([np.nan, 1.0]), "n": None}, {"v": np.array([np.nan, 1.0]), "n": None})


def test_step_norms_and_show_config_check_their_arguments():
    from pyrnn.diagnostics import step_norms

    with pytest.raises(ValueError, match=r"\[\.\.\., T, B, H\]"):
        step_norms(np.ones(3))
    with pytest.raises(TypeError, match="writable text stream"):
        pyrnn.show_config(file="x")


@pytest.mark.parametrize("seconds", [-1.0, 0.0, math.nan, math.inf, True, "0.1", 1e30, 3601])
def test_probes_refuse_bad_seconds(seconds):
    """inf (and 1e30, review 13) never returned; negative, NaN, bool and str were used as some time."""
    with pytest.raises(ValueError, match="seconds must be a positive number of at most"):
        pyrnn.fma_peak_gflops(1, seconds)
    with pytest.raises(ValueError, match="seconds must be a positive number of at most"):
        pyrnn.memory_bandwidth(1 << 16, 1, seconds)


@pytest.mark.parametrize("value, limit_mib, warns", [("0x10", 16, False), ("1_000", 1024, True), ("12", 12, False),
                                                     ("16\n", 1024, True)])  # (the C++ refuses a trailing newline)
def test_cache_variable_warning_agrees_with_the_cache(value, limit_mib, warns):
    code = ("import warnings, pyrnn; warnings.simplefilter('always')\n"
            "print(pyrnn.cache_info()['limit_bytes'] >> 20)")
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYRNN_CACHE_MB": value}, check=True)
    assert int(out.stdout.strip()) == limit_mib
    assert ("RuntimeWarning" in out.stderr) == warns


# --------------------------------------------------------------- the benchmark command line


def test_bench_check_column_is_per_mode(tmp_path, monkeypatch, capsys):
    """A wrong fwdbwd dx flagged the fwd rows of the case too (errors were keyed by case only)."""
    original = bench.RUNNERS["reference"]

    def wrong_dx(case, inputs, mode):
        run = original(case, inputs, mode)
        return run if mode == "fwd" else (lambda: (lambda y, dx: (y, None if dx is None else dx * 1.1))(*run()))

    monkeypatch.setitem(bench.RUNNERS, "reference", wrong_dx)
    path = tmp_path / "r.json"
    rc = bench.main(["--tiny", "--threads", "1", "--in-process", "--cells", "rnn", "--peers", "reference",
                     "--json", path])
    rows = json.loads(path.read_text())["rows"]
    assert rc == 1
    fwd = [r for r in rows if r["mode"] == "fwd"]
    fwdbwd = [r for r in rows if r["mode"] == "fwdbwd"]
    assert fwd and all(r["check"] == "ok" and "dx" not in r["check_errors"].get("reference", {}) for r in fwd)
    assert fwdbwd and all(r["check"].startswith("MISMATCH reference dx") for r in fwdbwd)


def test_bench_usage_errors_for_thread_counts_and_isa(monkeypatch, capsys):
    assert bench.main(["--tiny", "--threads", "5000"]) == 2
    assert "1..4096" in capsys.readouterr().err
    monkeypatch.setenv("PYRNN_ISA", "foo")
    assert bench.main(["--tiny", "--threads", "1", "--cells", "rnn"]) == 2
    assert "PYRNN_ISA" in capsys.readouterr().err


def test_bench_header_gives_the_repetitions_asked_for():
    from pyrnn.bench import cli
    from pyrnn.bench.cases import PROFILES

    profile = cli.with_reps(PROFILES["quick"], 8)  # (--quick --reps 8 said "at most 5 repetitions")
    assert profile.min_reps == profile.max_reps == 8 and "at most 8 repetitions" in profile.description
    assert cli.with_reps(PROFILES["quick"], 2).max_reps == 5


def test_bench_worker_is_killed_with_its_parent(tmp_path):
    """An exception in the parent while a pinned worker runs (Ctrl-C, SIGTERM) must not leave the worker
    timing on its own."""
    from pyrnn.bench import runner

    seen = []

    def progress(line):
        raise KeyboardInterrupt

    job = {"framework": "pyrnn", "threads": 1, "cores": None, "cases": [], "modes": ["fwd"], "profile": None,
           "seed": 0, "keep_outputs": False, "isolated": True, "precisions": []}
    real_popen = subprocess.Popen

    class Recording(real_popen):
        def __init__(self, *a, **kw):
            super().__init__([sys.executable, "-c", "import time\nprint('x', flush=True)\ntime.sleep(60)"],
                             **{k: v for k, v in kw.items() if k != "cwd"})
            seen.append(self)

    runner.subprocess.Popen, saved = Recording, runner.subprocess.Popen
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.spawn_worker(job, str(tmp_path), progress)
    finally:
        runner.subprocess.Popen = saved
    assert seen and seen[0].poll() is not None  # killed and reaped


# --------------------------------------------------------------- pyrnn.torch


@needs_torch
@pytest.mark.parametrize("cls", ["LayerNormLSTM", "LayerNormGRU", "LSTM", "GRU"])
def test_non_reentrant_checkpoint(cls):
    """torch.utils.checkpoint(use_reentrant=False) unpacks each saved tensor once; backward read
    ctx.saved_tensors twice (CheckpointError)."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    m = getattr(pt, cls)(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    grads = []
    for ckpt in (False, True):
        m.zero_grad()
        xx = x.detach().clone().requires_grad_(True)
        y = checkpoint(lambda t: m(t)[0], xx, use_reentrant=False) if ckpt else m(xx)[0]
        y.square().sum().backward()
        grads.append([xx.grad] + [p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@needs_torch
def test_torch_zoneout_attributes_checked_at_forward():
    for m in (pt.LSTM(3, 4, zoneout=0.1), pt.LayerNormGRU(3, 4, zoneout=0.1), pt.GRUCell(3, 4, zoneout=0.1)):
        m.zoneout = 1.7
        x = torch.zeros(2, 3) if isinstance(m, pt.GRUCell) else torch.zeros(2, 1, 3)
        with pytest.raises(ValueError, match="zoneout should be a number in range"):
            m(x)
        m.eval()(x)


@needs_torch
@pytest.mark.parametrize("attr", ["zoneout", "recurrent_dropout", "dropout"])
def test_rates_set_to_none_name_the_attribute(attr):
    """None assigned to a rate (e.g. on a schedule) is a TypeError naming it at the next training call
    (a review, 2026-12-05: it was a bare "'>' not supported"); the LSTM's zoneout_c=None stays valid."""
    made = [pt.LSTM(3, 4, num_layers=2), pt.LayerNormLSTM(3, 4), pt.GRUCell(3, 4), pyrnn.GRU(3, 4)]
    for m in made:
        if not hasattr(m, attr):
            continue
        setattr(m, attr, None)
        x = np.zeros((2, 1, 3), np.float32) if isinstance(m, pyrnn.GRU) else \
            (torch.zeros(2, 3) if isinstance(m, pt.GRUCell) else torch.zeros(2, 1, 3))
        with pytest.raises(TypeError, match=f"{attr} should be a number in range .*got NoneType None"):
            m(x)
        m.eval()(x)
    lstm = pt.LSTM(3, 4, zoneout=0.2)
    lstm.zoneout_c = None  # (as zoneout)
    lstm(torch.zeros(2, 1, 3))


@needs_torch
def test_bf16_state_dict_loads_into_numpy_layers_and_cells():
    ref = nn.LSTM(3, 4).to(torch.bfloat16)
    layer = pyrnn.LSTM(3, 4)
    layer.load_state_dict(ref.state_dict())
    np.testing.assert_array_equal(layer.weight_ih_l0, ref.weight_ih_l0.detach().float().numpy())
    cell = pyrnn.LSTMCell(3, 4)
    cell.load_state_dict(nn.LSTMCell(3, 4).to(torch.bfloat16).state_dict())
    from pyrnn.keras import to_keras

    p = nn.Parameter(torch.randn(16, 3))  # requires grad: converters take it as load_state_dict does
    to_keras("lstm", p, torch.randn(16, 4))


@needs_torch
def test_quantize_dynamic_refuses_a_bare_type_or_string_spec():
    for spec in (nn.LSTM, "rnn"):
        with pytest.raises(TypeError, match="qconfig_spec must be a set"):
            pt.quantize_dynamic(nn.Sequential(nn.LSTM(3, 4)), spec)


@needs_torch
def test_frozen_modules_refuse_tracing_and_compile_with_a_graph_break():
    """torch.jit.trace of a frozen module baked the traced call's output in as a constant; torch.compile
    failed inside Dynamo ("This is a bug")."""
    torch.manual_seed(0)
    frozen = pt.quantize_dynamic(nn.Sequential(nn.LSTM(3, 5)))[0]
    x1, x2 = torch.randn(4, 2, 3), torch.randn(4, 2, 3)
    with pytest.raises(RuntimeError, match="cannot be traced"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (torch.jit.trace's own)
        torch.jit.trace(lambda t: frozen(t)[0], x1, check_trace=False)
    compiled = torch.compile(lambda t: frozen(t)[0], backend="eager")
    torch.testing.assert_close(compiled(x2), frozen(x2)[0])
    cell = pt.freeze(nn.GRUCell(3, 5))
    with pytest.raises(RuntimeError, match="cannot be traced"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(cell, torch.randn(2, 3), check_trace=False)


@needs_torch
@pytest.mark.skipif(not HAVE_ONNX, reason="needs onnx and onnxscript")
@pytest.mark.parametrize("make", [lambda: pt.LayerNormLSTM(3, 4), lambda: pt.LayerNormGRU(3, 4),
                                  lambda: pt.freeze(nn.LSTM(3, 4))])
def test_onnx_export_refuses_layernorm_and_frozen_modules_clearly(make, tmp_path):
    m = make().eval()
    with pytest.raises(NotImplementedError, match="cannot export to ONNX"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the TorchScript exporter's deprecation)
        torch.onnx.export(m, (torch.randn(4, 2, 3),), str(tmp_path / "m.onnx"), dynamo=False)


@needs_torch
@pytest.mark.skipif(not HAVE_ONNX, reason="needs onnx and onnxscript")
def test_onnx_export_checks_the_inputs_as_forward_does(tmp_path):
    """Export skipped forward's checks: extra state rows were ignored, a wrong width failed only in ONNX
    Runtime."""
    cases = [
        (pt.GRU(3, 5), (torch.randn(4, 2, 3), torch.zeros(3, 2, 5)), r"Expected hx size \(1, 2, 5\)"),
        (pt.GRU(3, 5), (torch.randn(4, 2, 4),), "input_size. Expected 3, got 4"),
        (pt.LSTM(3, 5), (torch.randn(4, 2, 3), (torch.zeros(1, 7, 5), torch.zeros(1, 7, 5))), r"hx\[0\] size"),
        (pt.LSTM(3, 5), (torch.randn(4, 2, 3), torch.zeros(1, 2, 5)), "hx must be a tuple"),
        (pt.GRUCell(3, 5), (torch.randn(2, 3), torch.zeros(3, 5)), r"Expected hx size \(2, 5\)"),
    ]
    for m, args, match in cases:
        with pytest.raises((ValueError, TypeError), match=match), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m.eval(), args, str(tmp_path / "m.onnx"), dynamo=False)


def test_float32_sigmoid_saturates_to_zero():
    """Below -88.72 e^-x is beyond float and the float32 sigmoid is 0 (libm, torch); the clamped exp
    left ~4.5e-39 there, so a saturated gate times a huge input gave O(1) gradients where torch's are 0."""
    lstm = pyrnn.LSTM(1, 1).eval()
    sd = {k: np.zeros_like(v) for k, v in lstm.state_dict().items()}
    sd["bias_ih_l0"] = np.array([-200, -200, 200, 200], np.float32)  # i, f saturated shut; g, o open
    lstm.load_state_dict(sd)
    _, (_, c) = lstm(np.zeros((1, 1, 1), np.float32))
    assert c.item() == 0.0  # c_1 = sigmoid(-200) * tanh(200) + sigmoid(-200) * 0
    x = np.array([-1e3, -89.0, -88.0, -50.0, 0.0, 50.0, np.nan], np.float32)
    # a one-unit LSTM whose input gate's pre-activation is x (one batch entry per value) and whose g is 1:
    # c_1 = sigmoid(x)
    W_ih = np.array([[1.0], [0.0], [0.0], [0.0]], np.float32)
    b_ih = np.array([0.0, 0.0, 50.0, 0.0], np.float32)
    _, _, c_n, _ = F.lstm_forward(x.reshape(1, 7, 1), None, None, W_ih, np.zeros((4, 1), np.float32), b_ih,
                                  np.zeros(4, np.float32), training=False)
    c_n = c_n[:, 0]
    with np.errstate(over="ignore"):
        expected = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    assert c_n[0] == 0.0 and c_n[1] == 0.0  # below -88.72: exactly 0
    np.testing.assert_allclose(c_n[2:6], expected[2:6], rtol=1e-6, atol=1e-37)  # (-88: a denormal)
    assert np.isnan(c_n[6])


@needs_torch
def test_saturated_gates_give_torchs_zero_gradients_for_huge_inputs():
    torch.manual_seed(0)
    ref = nn.LSTM(4, 9)
    mine = pt.LSTM(4, 9)
    mine.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 4, generator=g) * 1e38
    dy = torch.randn(5, 3, 9, generator=g)
    grads = []
    for m in (ref, mine):
        m.zero_grad()
        (m(x)[0] * dy).sum().backward()
        grads.append(m.weight_ih_l0.grad)
    assert float(grads[0].abs().max()) == 0.0 and float(grads[1].abs().max()) == 0.0  # (4.59 before)


@needs_torch
@pytest.mark.parametrize("cls", ["LSTM", "GRU", "LayerNormLSTM"])
def test_saved_tensor_hooks_that_copy_give_the_saved_values(cls):
    """Under saved_tensors_hooks that copy (offloading, compression), editing the input or a weight in
    place after forward is legal and backward must use the saved values; the workspace read the live
    memory (a 0.99 relative error in dW_ih)."""
    torch.manual_seed(0)
    m = getattr(pt, cls)(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)

    def grads(edit):
        m.zero_grad()
        xx = x.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
            y = m(xx)[0]
        if edit:
            with torch.no_grad():
                xx.mul_(100)
                m.weight_hh_l0.mul_(3)
        y.square().sum().backward()
        if edit:
            with torch.no_grad():
                m.weight_hh_l0.div_(3)
        return [p.grad.clone() for p in m.parameters()]

    for a, b in zip(grads(False), grads(True)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@needs_torch
def test_frozen_modules_run_under_dispatch_modes_and_for_subclasses():
    from torch.utils.flop_counter import FlopCounterMode

    frozen = pt.freeze(nn.GRU(3, 4))
    x = torch.randn(5, 2, 3)
    want = frozen(x)[0]
    with FlopCounterMode(display=False):
        torch.testing.assert_close(frozen(x)[0], want)
    torch.testing.assert_close(frozen(nn.Parameter(x, requires_grad=False))[0], want)


def test_esn_score_may_return_a_framework_scalar():
    from pyrnn.reservoir import ESN

    rng = np.random.default_rng(0)
    u, y = rng.normal(size=(40, 1)), rng.normal(size=(40, 1))
    esn = ESN(1, 10, seed=0).fit(u, y, ridge=[1e-6, 1.0], score=lambda e: np.array(float(e.ridge)))
    assert esn.ridge == 1e-6
    if torch is not None:
        esn.fit(u, y, ridge=[1e-6, 1.0], score=lambda e: torch.tensor(1.0 / e.ridge))
        assert esn.ridge == 1.0



@needs_torch
def test_frozen_modules_refuse_make_fx_and_non_strict_export():
    """make_fx in real mode kept the frozen call's result as a constant; non-strict torch.export ran
    the graph break with fake tensors (a .numpy() error from inside torch)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    frozen = pt.freeze(nn.GRU(3, 4))
    x = torch.randn(5, 2, 3)
    with pytest.raises(RuntimeError, match="cannot be traced"):
        make_fx(lambda t: frozen(t)[0])(x)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = frozen

        def forward(self, t):
            return self.rnn(t)[0]

    with pytest.raises(RuntimeError, match="cannot be traced"):
        torch.export.export(M(), (x,), strict=False)


def test_esn_score_refuses_strings_and_object_arrays():
    from pyrnn.reservoir import _score_value

    for bad in (np.array("0.5"), np.array(0.5, dtype=object), np.timedelta64(1), "0.5", np.array(1 + 2j)):
        with pytest.raises(TypeError, match="score must return a real number"):
            _score_value(bad)
    assert _score_value(np.array(np.nan)) == math.inf
