"""What the sixteenth session's reviews (optimizers and losses, the functional API and its residual
blocks, the NumPy reference) found, each pinned by the behaviour a user of torch would expect."""

import pickle
from pathlib import Path

import numpy as np
import pytest

import pyrnn
from pyrnn import functional as F
from pyrnn import keras as pk
from pyrnn import optim
from pyrnn import reference as R

# ------------------------------------------------- tied weights: one parameter, gradients summed


def _tied_run(cls, kw, tied, steps=4):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3, 3))
    g1, g2 = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    if tied:
        opt = cls([(W, g1), (W, g2)], **kw)
    else:
        total = g1 + g2
        opt = cls([(W, total)], **kw)
    for _ in range(steps):
        opt.step()
    return W


@pytest.mark.parametrize("cls, kw", [(optim.Adam, dict(lr=0.1)), (optim.RMSprop, dict(lr=0.01, centered=True)),
                                     (optim.SGD, dict(lr=0.1, weight_decay=0.5)),
                                     (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
                                     (optim.Adam, dict(lr=0.1, weight_decay=0.1, decoupled_weight_decay=True))])
def test_tied_weight_pairs_update_once_with_summed_gradient(cls, kw):
    # autograd sums a shared weight's gradients and torch.optim updates it once; each pair used to
    # get its own state and update (Adam moved the weight twice as far, weight decay applied twice)
    np.testing.assert_allclose(_tied_run(cls, kw, True), _tied_run(cls, kw, False), rtol=1e-12, atol=1e-14)


def test_tied_weight_is_one_state_and_zero_grad_zeroes_both():
    W = np.ones((2, 2))
    g1, g2 = np.ones((2, 2)), np.full((2, 2), 2.0)
    opt = optim.Adam([(W, g1), (W, g2)], lr=0.1)
    assert len(opt.params) == 1 and len(opt.state) == 1
    opt.zero_grad()
    assert not g1.any() and not g2.any()


def test_tied_weight_clipping_sees_the_summed_gradient():
    W = np.zeros(3)
    g1, g2 = np.array([3.0, 0.0, 0.0]), np.array([-3.0, 4.0, 0.0])
    norm = optim.clip_grad_norm([(W, g1), (W, g2)], 1.0)
    assert norm == pytest.approx(4.0)  # ||g1 + g2||, as torch sees p.grad; not sqrt(9 + 25)
    np.testing.assert_allclose(g1 + g2, [0.0, 1.0, 0.0], atol=1e-6)
    g1, g2 = np.array([3.0, -1.0]), np.array([-2.5, -1.0])
    W = np.zeros(2)
    optim.clip_grad_value([(W, g1), (W, g2)], 1.0)
    np.testing.assert_allclose(g1 + g2, [0.5, -1.0])  # the sum clipped (each alone: [1.0, -2.0])


def test_overlapping_distinct_parameters_refused():
    base = np.zeros(10)
    with pytest.raises(ValueError, match="overlap"):
        optim.SGD([(base[:6], np.zeros(6)), (base[4:], np.zeros(6))], lr=0.1)


def test_module_listed_twice_refused_by_clipping_too():
    lstm = pyrnn.LSTM(2, 3, seed=0)
    for k in lstm.grads:
        lstm.grads[k] = np.ones_like(lstm.grads[k])
    with pytest.raises(ValueError, match="twice"):
        optim.clip_grad_norm([lstm, lstm], 1.0)
    g = np.ones(3)
    with pytest.raises(ValueError, match="twice"):
        optim.clip_grad_norm([g, g], 1.0)
    assert optim.clip_grad_norm([lstm], np.inf) == pytest.approx(np.sqrt(sum(g.size for g in lstm.grads.values())))


def test_read_only_gradients_refused():
    g = np.zeros(3)
    g.flags.writeable = False
    with pytest.raises(ValueError, match="gradients must be writeable"):
        optim.SGD([(np.zeros(3), g)], lr=0.1)
    with pytest.raises(ValueError, match="gradients must be writeable"):
        optim.clip_grad_norm([g], 1.0)
    with pytest.raises(ValueError, match="gradients must be writeable"):
        optim.clip_grad_value([g], 1.0)


def test_rmsprop_alpha_bound_message():
    optim.RMSprop([(np.zeros(2), np.zeros(2))], alpha=1.0)
    with pytest.raises(ValueError, match="<= 1"):
        optim.RMSprop([(np.zeros(2), np.zeros(2))], alpha=1.5)


def test_optimizer_pickled_before_grouping_loads():
    p, g = np.ones(2), np.ones(2)
    opt = optim.SGD([(p, g)], lr=0.5)
    state = dict(opt.__dict__)
    state["_pairs"] = [(p, g)]
    del state["_groups"]
    old = optim.SGD.__new__(optim.SGD)
    old.__setstate__(state)
    old.step()
    np.testing.assert_allclose(p, [0.5, 0.5])
    assert pickle.loads(pickle.dumps(old)).params[0].shape == (2,)


# --------------------------------------------------------------------------------- losses


def test_cross_entropy_float16_many_positions():
    # the float16 sum of 70000 weights was inf: loss 0.0, gradient zero, silently
    n = 70000
    logits = np.zeros((n, 3), np.float16)
    targets = np.zeros(n, np.int64)
    loss, d = optim.softmax_cross_entropy(logits, targets)
    assert loss == pytest.approx(np.log(3), rel=1e-3)
    assert d.dtype == np.float16 and d.any()
    loss_m, _ = optim.softmax_cross_entropy(logits, targets, mask=np.ones(n, bool))
    assert loss_m == pytest.approx(np.log(3), rel=1e-3)


def test_cross_entropy_padding_targets_under_zero_mask():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 3))
    loss, d = optim.softmax_cross_entropy(logits, [0, 1, -100, -100], mask=[1, 1, 0, 0])
    ref, dref = optim.softmax_cross_entropy(logits[:2], [0, 1])
    assert loss == pytest.approx(ref)
    np.testing.assert_allclose(d[:2], dref / 1.0)
    assert not d[2:].any()
    with pytest.raises(ValueError, match="-100"):
        optim.softmax_cross_entropy(logits, [0, 1, -100, 2])
    with pytest.raises(ValueError, match="got 7"):
        optim.softmax_cross_entropy(logits, [0, 1, 7, 2], mask=[1, 1, 1, 0])


# ---------------------------------------------------------------------- keras, diagnostics


def test_from_keras_never_views_the_callers_arrays():
    rng = np.random.default_rng(0)
    kernel = np.asfortranarray(rng.standard_normal((5, 16)))
    recurrent = np.asfortranarray(rng.standard_normal((4, 16)))
    w = pk.from_keras("lstm", kernel, recurrent)
    assert not np.shares_memory(w["W_ih"], kernel) and not np.shares_memory(w["W_hh"], recurrent)
    W_f = np.asfortranarray(w["W_ih"])
    k, _, _ = pk.to_keras("lstm", W_f, w["W_hh"])
    np.testing.assert_array_equal(k, kernel)
    assert not np.shares_memory(k, W_f)


def test_step_norms_mean_of_empty_batch_refused():
    with pytest.raises(ValueError, match="B = 0"):
        pyrnn.diagnostics.step_norms(np.zeros((4, 0, 5)), "mean")
    assert pyrnn.diagnostics.step_norms(np.zeros((4, 0, 5)), "norm").shape == (4,)


def test_torch_grucell_reset_after_checked():
    pt = pytest.importorskip("pyrnn.torch")
    for bad in ("no", "False", 0.5, None):
        with pytest.raises(TypeError, match="reset_after"):
            pt.GRUCell(3, 4, reset_after=bad)
    assert pt.GRUCell(3, 4, reset_after=False).reset_after is False


# ----------------------------------------------------------------- residual blocks


def _lstm_args(rng, T=5, B=3, I=4, H=6):
    x = rng.standard_normal((T, B, I))
    W_ih = rng.standard_normal((4 * H, I)) * 0.3
    W_hh = rng.standard_normal((4 * H, H)) * 0.3
    b = rng.standard_normal(4 * H) * 0.1
    return x, W_ih, W_hh, b, rng.standard_normal((B, H)), rng.standard_normal((B, H))


@pytest.mark.parametrize("given, rebuilt", [("hc", ""), ("", "hc"), ("hc", "h"), ("hcb", "hc"), ("h", "hb")])
def test_residual_refuses_other_states_or_biases(given, rebuilt):
    # a workspace rebuilt without the h0 (c0, biases) its forward had ran backward from another forward
    rng = np.random.default_rng(0)
    x, W_ih, W_hh, b, h0, c0 = _lstm_args(rng)

    def args(flags):
        return (x, h0 if "h" in flags else None, c0 if "c" in flags else None, W_ih, W_hh,
                b if "b" in flags else None, b if "b" in flags else None)

    block = np.empty(F.residual_nbytes("lstm", *args(given)), np.uint8)
    y, _, _, ws = F.forward("lstm", *args(given), residual=block)
    with pytest.raises(ValueError, match="h0, c0 and the biases"):
        F.workspace_from_residual(block, "lstm", *args(rebuilt), y=y)
    again = F.workspace_from_residual(block, "lstm", *args(given), y=y)
    dy = rng.standard_normal(y.shape)
    for k, v in F.backward(ws, dy).items():
        if v is not None:
            np.testing.assert_array_equal(F.backward(again, dy)[k], v)


def test_residual_nbytes_does_not_copy_stand_ins():
    # broadcast stand-ins of a 4 TB x: sized from shapes, never copied
    T, B, I, H = 10**6, 1024, 1024, 256
    x = np.broadcast_to(np.zeros((), np.float32), (T, B, I))
    W_ih = np.broadcast_to(np.zeros((), np.float32), (4 * H, I))
    W_hh = np.broadcast_to(np.zeros((), np.float32), (4 * H, H))
    b = np.broadcast_to(np.zeros((), np.float32), (4 * H,))
    h0 = np.broadcast_to(np.zeros((), np.float32), (B, H))
    n = F.residual_nbytes("lstm", x, h0, None, W_ih, W_hh, b, b)
    assert n == F.residual_nbytes_for("lstm", T, B, I, H, h0=True, c0=False)


@pytest.mark.parametrize("opts", [{}, {"lengths": True}, {"h_mask": True}, {"proj": True}, {"none": True}])
def test_residual_nbytes_matches_the_forward_block(opts, rng):
    x, W_ih, W_hh, b, h0, c0 = _lstm_args(rng, H=8)
    kw = {}
    if opts.get("lengths"):
        kw["lengths"] = np.array([5, 2, 4])
    if opts.get("h_mask"):
        kw["h_mask"] = np.ones((3, 8))
    W_hr = None
    if opts.get("proj"):
        W_hr = rng.standard_normal((3, 8))
        W_hh = rng.standard_normal((32, 3))
        h0 = h0[:, :3]
        kw.pop("h_mask", None)
    states = (None, None) if opts.get("none") else (h0, c0)
    bias = (None, None) if opts.get("none") else (b, b)
    n = F.residual_nbytes("lstm", x, *states, W_ih, W_hh, *bias, W_hr=W_hr, **kw)
    block = np.empty(n, np.uint8)
    F.forward("lstm", x, *states, W_ih, W_hh, *bias, W_hr=W_hr, residual=block, **kw)
    with pytest.raises(ValueError):
        F.forward("lstm", x, *states, W_ih, W_hh, *bias, W_hr=W_hr, residual=block[:n - 1], **kw)


def test_pack_weights_messages_name_W_ih():
    for shape in [(24, 0), (24,)]:
        with pytest.raises(ValueError, match=r"W_ih must have shape \(4\*H, I\) with I >= 1"):
            F.pack_weights("lstm", np.zeros(shape, np.float32), np.zeros((24, 6), np.float32))


# ------------------------------------------------------------------------- reference


def test_reference_refuses_layernorm_caches():
    rng = np.random.default_rng(0)
    x, W_ih, W_hh, b, _, _ = _lstm_args(rng)
    ones4, ones1 = np.ones(4 * 6), np.ones(6)
    *_, cache = R.layernorm_lstm_forward(x, None, None, W_ih, W_hh, b, b, ones4, ones4, ones1)
    with pytest.raises(ValueError, match="layernorm_lstm"):
        R.lstm_backward(cache, np.ones((5, 3, 6)))
    W3, U3, b3 = W_ih[:18], W_hh[:18], np.zeros(18)
    *_, gcache = R.layernorm_gru_forward(x, None, W3, U3, b3, b3, np.ones(18), np.ones(18))
    with pytest.raises(ValueError, match="layernorm_gru"):
        R.gru_backward(gcache, np.ones((5, 3, 6)))


@pytest.mark.parametrize("option, value", [("reverse", "False"), ("training", "no"), ("reset_after", None)])
def test_reference_boolean_options_checked(option, value):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 3))
    W_ih, W_hh = rng.standard_normal((15, 3)), rng.standard_normal((15, 5))
    with pytest.raises(TypeError, match=option):
        R.gru_forward(x, None, W_ih, W_hh, **{option: value})
    if option != "reset_after":
        with pytest.raises(TypeError, match=option):
            R.lstm_forward(x, None, None, rng.standard_normal((20, 3)), rng.standard_normal((20, 5)),
                           **{option: value})


# ------------------------------------------------------------- pyrnn.torch (quantize, meta)


def _qmodel():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.GRU(4, 6))
    return torch, torch.nn.Sequential(enc, torch.nn.LSTM(6, 6))


def _kinds(model):
    return [type(m).__name__ for m in (model[0][0], model[1])]


def test_quantize_dynamic_dict_spec_as_torch():
    torch, m = _qmodel()
    pt = pytest.importorskip("pyrnn.torch")
    from torch.ao.quantization import default_dynamic_qconfig, float16_dynamic_qconfig
    # None: leave in float (both used to be converted to int8)
    assert _kinds(pt.quantize_dynamic(m, {torch.nn.GRU: None})) == ["GRU", "LSTM"]
    assert _kinds(pt.quantize_dynamic(m, {"0.0": None})) == ["GRU", "LSTM"]
    q = pt.quantize_dynamic(m, {torch.nn.LSTM: default_dynamic_qconfig, torch.nn.GRU: default_dynamic_qconfig,
                                "1": None})  # a name's entry overrides its type's
    assert _kinds(q) == ["FrozenRNN", "LSTM"] and q[0][0].precision == "int8"
    # a container's name or type covers the modules under it, as torch propagates qconfigs
    assert _kinds(pt.quantize_dynamic(m, {"0"})) == ["FrozenRNN", "LSTM"]
    assert _kinds(pt.quantize_dynamic(m, {torch.nn.Sequential: default_dynamic_qconfig})) == ["FrozenRNN",
                                                                                               "FrozenRNN"]
    with pytest.raises(ValueError, match="float16"):
        pt.quantize_dynamic(m, {torch.nn.LSTM: float16_dynamic_qconfig})
    with pytest.raises(TypeError, match="qconfig"):
        pt.quantize_dynamic(m, {torch.nn.LSTM: "int8"})


def test_torch_layers_on_meta_device_build_any_size():
    torch = pytest.importorskip("torch")
    pt = pytest.importorskip("pyrnn.torch")
    for make in (lambda: pt.LSTM(20000, 20000, num_layers=4, device="meta"),
                 lambda: pt.LayerNormLSTM(20000, 20000, 4, device="meta")):
        m = make()
        assert next(m.parameters()).device.type == "meta"
    with torch.device("meta"):
        assert sum(p.numel() for p in pt.GRU(20000, 20000, num_layers=4).parameters()) == 9600480000
    with pytest.raises(MemoryError, match="its parameters would need"):
        pt.LSTM(20000, 20000, num_layers=4)


# ------------------------------------------------- benchmark outputs, threads, pyrnn.testing


@pytest.mark.parametrize("args, says", [
    (["--json", "{d}/same.json", "--markdown", "{d}/same.json"], "the same file as --json"),
    (["--json", ""], "an empty path"),
    (["--json", "{d}/" + "a" * 300 + ".json"], "cannot be written"),
    (["--markdown", "/proc/pyrnn-review.md"], "cannot be written"),
])
def test_bench_output_paths_checked_before_measuring(tmp_path, monkeypatch, capsys, args, says):
    from pyrnn import bench
    from pyrnn.bench import cli
    monkeypatch.setattr(cli, "measure_peaks", lambda *a, **k: pytest.fail("bad usage must not measure"))
    assert bench.main(["--tiny", "--threads", "1", *[a.format(d=tmp_path) for a in args]]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "same.json").exists()


def test_bench_write_failure_keeps_the_other_outputs(tmp_path, capsys):
    import argparse

    from pyrnn.bench import cli
    args = argparse.Namespace(json=str(tmp_path / "r.json"), markdown=str(tmp_path / "r.md"), plot=None)

    def fail(path):
        raise OSError(28, "No space left on device")

    ok = cli._write_outputs(args, {"--json": fail, "--markdown": lambda p: Path(p).write_text("x")})
    assert not ok and (tmp_path / "r.md").read_text() == "x"
    assert "error: --json" in capsys.readouterr().err


def test_bench_worker_peer_import_error_is_unavailable(tmp_path, monkeypatch):
    # a peer whose import raises something else than ImportError (jax with a mismatched jaxlib)
    from pyrnn.bench import worker
    (tmp_path / "brokenpeer").mkdir()
    (tmp_path / "brokenpeer" / "__init__.py").write_text("raise RuntimeError('jaxlib version mismatch')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(worker.REQUIRES, "jax", ("brokenpeer",))
    job = {"framework": "jax", "threads": 1, "cores": None, "isolated": False, "cases": [], "modes": [],
           "seed": 0, "keep_outputs": False}
    said = []
    result = worker.run_job(job, said.append)
    assert "RuntimeError" in result["unavailable"] and "failed to import" in said[0]


def test_thread_count_is_pyrnns_own_and_capped(tmp_path):
    # omp_set_num_threads (threadpoolctl, torch.set_num_threads on a shared libgomp) leaves pyrnn's
    # count alone, as documented; a huge set_num_threads is capped (libgomp ended the process)
    pytest.importorskip("threadpoolctl")
    import os
    import subprocess
    import sys
    code = ("import threadpoolctl, pyrnn\n"
            "out = [pyrnn.get_num_threads()]\n"
            "with threadpoolctl.threadpool_limits(1, user_api='openmp'):\n"
            "    out.append(pyrnn.get_num_threads())\n"
            "pyrnn.set_num_threads(10**6)\n"
            "out.append(pyrnn.get_num_threads())\n"
            "print(out)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cap = max(64, 4 * len(os.sched_getaffinity(0)))
    assert out.stdout.strip() == str([2, 2, cap])


def test_directional_derivatives_name_the_wrong_gradient():
    from pyrnn import testing
    rng = np.random.default_rng(0)
    p = {"a": rng.standard_normal(3), "b": rng.standard_normal(2)}

    def loss(q):
        return float(np.sum(q["a"] ** 2) + np.sum(np.sin(q["b"])))

    grads = {"a": 2 * p["a"], "b": 1.5 * np.cos(p["b"])}  # b's gradient wrong
    with pytest.raises(AssertionError, match=r"the derivatives of \['b'\] disagree"):
        testing.check_directional_derivatives(loss, grads, p, np.random.default_rng(1))
    testing.check_directional_derivatives(loss, {"a": 2 * p["a"], "b": np.cos(p["b"])}, p, np.random.default_rng(1))


# ------------------------------------------------------------- second reader's findings


def test_quantize_dynamic_dict_entries_for_other_modules_are_torchs():
    torch = pytest.importorskip("torch")
    pt = pytest.importorskip("pyrnn.torch")
    from torch.ao.quantization import default_dynamic_qconfig, float16_dynamic_qconfig
    m = torch.nn.Sequential(torch.nn.LSTM(3, 4), torch.nn.Linear(4, 2))
    # (a spec shared with torch's own quantize_dynamic: its float16 Linear entry is not pyrnn's)
    q = pt.quantize_dynamic(m, {torch.nn.LSTM: default_dynamic_qconfig, torch.nn.Linear: float16_dynamic_qconfig})
    assert type(q[0]).__name__ == "FrozenRNN" and type(q[1]) is torch.nn.Linear


def test_quantize_dynamic_shared_module_is_one_copy():
    torch = pytest.importorskip("torch")
    pt = pytest.importorskip("pyrnn.torch")

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = self.b = torch.nn.LSTM(3, 4)

    for spec in ({"a"}, {"b"}):
        q = pt.quantize_dynamic(Two(), spec)
        assert q.a is q.b and type(q.a).__name__ == "FrozenRNN"
    lstm = torch.nn.LSTM(3, 4)
    same = pt.quantize_dynamic(lstm, {"x"})  # nothing selected: a copy, as torch's
    assert same is not lstm and type(same) is torch.nn.LSTM


def test_bench_output_check_follows_symbolic_links(tmp_path):
    from pyrnn.bench import cli
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "target.json")  # dangling: the target does not exist yet
    assert cli._unwritable(str(link)) is None
    assert link.is_symlink() and not (tmp_path / "target.json").exists()


def test_clipping_refuses_a_module_and_one_of_its_gradients():
    fc = pyrnn.Linear(3, 2, seed=0)
    with pytest.raises(ValueError, match="twice"):
        optim.clip_grad_norm([fc, fc.grads["weight"]], 1.0)
    W, g = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="twice"):
        optim.clip_grad_norm([(W, g), g], 1.0)


def test_many_parameters_overlap_sweep():
    base = np.zeros(3000)
    pairs = [(base[3 * i:3 * i + 3], np.zeros(3)) for i in range(1000)]  # adjacent, not overlapping
    optim.SGD(pairs, lr=0.1)
    with pytest.raises(ValueError, match="overlap"):
        optim.SGD(pairs + [(base[1:5], np.zeros(4))], lr=0.1)
    strided = [(base[0::2], np.zeros(1500)), (base[1::2], np.zeros(1500))]  # interleaved, disjoint
    optim.SGD(strided, lr=0.1)


@pytest.mark.parametrize("B", [15, 16, 33])
@pytest.mark.parametrize("cell, kw", [("LSTMCell", {}), ("GRUCell", {"reset_after": False}), ("GRUCell", {}),
                                      ("RNNCell", {"nonlinearity": "relu"})])
def test_unfrozen_cell_step_at_every_batch_size(cell, kw, B):
    # from 16 rows an unfrozen step packs its weights for the call (the packed step)
    rng = np.random.default_rng(0)
    I, H = 40, 24
    c = getattr(pyrnn, cell)(I, H, dtype=np.float64, seed=1, **kw).eval()
    x = rng.standard_normal((B, I))
    h = rng.standard_normal((B, H))
    st = (h, rng.standard_normal((B, H))) if cell == "LSTMCell" else h
    got = c(x, st)
    want = c.freeze()(x, st)
    for a, e in zip(got if cell == "LSTMCell" else [got], want if cell == "LSTMCell" else [want]):
        if B >= 16:
            np.testing.assert_array_equal(a, e)  # the frozen cell's step
        else:
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
    one = [c(x[i:i + 1], tuple(s[i:i + 1] for s in st) if cell == "LSTMCell" else st[i:i + 1]) for i in range(B)]
    for i in range(B):
        a = one[i][0] if cell == "LSTMCell" else one[i]
        e = got[0][i:i + 1] if cell == "LSTMCell" else got[i:i + 1]
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
