"""The examples' fast modes, asserting that learning really happens (and what the theory says).

Each example is imported from its file and its ``main(argv)`` called in this
process (the installed pyrnn, whatever the working directory). Training runs
use one pyrnn thread: these sizes gain little from a second thread, and a
per-step barrier on a busy 2-core machine costs far more than it gains.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyrnn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = ["vanishing_gradients", "adding_problem", "char_rnn", "seq2seq", "reservoir"]


def load(name):
    # as `python examples/x.py` does, the examples' folder goes first on sys.path (for examples/_common.py)
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"pyrnn_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _has_pyrnn_torch():
    try:
        import pyrnn.torch  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------- all examples


@pytest.mark.parametrize("name", NAMES)
def test_help_and_defaults(name, capsys):
    module = load(name)
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--fast", "--seed", "--threads", "--plot", "--no-plot"):
        assert flag in out
    args = module.parse_args([])
    assert args.plot == EXAMPLES / f"{name}.png"  # the committed figure, next to the script


@pytest.mark.parametrize("name, argv, message", [
    ("adding_problem", ["--hidden", "0"], "--hidden: expected a positive integer, got 0"),
    ("adding_problem", ["--batch", "0"], "--batch: expected a positive integer, got 0"),
    ("adding_problem", ["--steps", "-5"], "--steps: expected a positive integer, got -5"),
    ("adding_problem", ["--lr", "-1"], "--lr: expected a positive number, got -1"),
    ("adding_problem", ["--threads", "-2"], "--threads: expected a positive integer, got -2"),
    ("adding_problem", ["--seed", "-1"], "--seed: expected an integer >= 0, got -1"),
    ("adding_problem", ["--plot", "/no/such/folder/x.png"], "the folder of /no/such/folder/x.png does not exist"),
    ("char_rnn", ["--text", "/no/such/file"], "--text: no such file: /no/such/file"),
    ("char_rnn", ["--resume", "/no/such/file"], "--resume: no such file: /no/such/file"),
    ("char_rnn", ["--checkpoint", "/no/such/folder/c.npz"], "the folder of /no/such/folder/c.npz does not exist"),
    ("char_rnn", ["--dropout", "1.5"], "--dropout: expected a probability in [0, 1), got 1.5"),
    ("char_rnn", ["--seq-len", "0"], "--seq-len: expected a positive integer, got 0"),
    ("char_rnn", ["--sample", "-5"], "--sample: expected an integer >= 0, got -5"),
    ("seq2seq", ["--test-size", "0"], "--test-size: expected a positive integer, got 0"),
    ("seq2seq", ["--layers", "x"], "--layers: expected a positive integer, got 'x'"),
    ("vanishing_gradients", ["--batch", "0"], "--batch: expected a positive integer, got 0"),
    ("reservoir", ["--leak", "0"], "--leak: expected a number in (0, 1], got 0"),
    ("reservoir", ["--spectral-radius", "-1"], "--spectral-radius: expected a positive number, got -1"),
])
def test_bad_arguments_are_usage_errors(name, argv, message, capsys):
    """Bad sizes, rates and paths stop before any work with argparse's usage error (exit 2), not a
    traceback midway or a silent run."""
    with pytest.raises(SystemExit) as e:
        load(name).parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_examples_run_as_scripts_from_anywhere(tmp_path):
    """`python examples/x.py` from another directory: sys.path[0] is examples/, pyrnn comes from the install."""
    env = dict(os.environ)
    # the directory holding the pyrnn these tests import (site-packages, or the source tree in development)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(pyrnn.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, str(EXAMPLES / "vanishing_gradients.py"), "--fast", "--no-plot",
                        "--length", "50", "--threads", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "RNN tanh, radius 0.9" in r.stdout and "LSTM, chrono init" in r.stdout


# ------------------------------------------------------ gradients through time


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vanishing_gradients_ratios_follow_the_theory(seed, capsys):
    vg = load("vanishing_gradients")
    threads = pyrnn.thread_setting()
    res = vg.main(["--fast", "--no-plot", "--seed", str(seed), "--threads", "1"])
    assert pyrnn.thread_setting() == threads  # main restores it
    r, per_step = res["ratios"], res["per_step"]
    rnn = [r[f"RNN tanh, radius {x:g}"] for x in (0.9, 1.0, 1.1, 1.5)]
    # tanh RNN: the larger the spectral radius, the more gradient reaches h_1
    assert rnn == sorted(rnn) and len(set(rnn)) == 4
    assert rnn[0] < 1e-8  # radius 0.9: vanished (the linear bound 0.9^199 ~ 8e-10)
    assert rnn[3] > 10.0  # radius 1.5: exploded
    # gates at the default init (sigmoid(~0) ~ 0.5) forget fast: ~0.6 per step
    for cell in ("LSTM", "GRU"):
        assert r[f"{cell}, default init"] < rnn[0]
        assert per_step[f"{cell}, default init"] < 0.75
    # gates opened by chrono initialisation carry the gradient: far more than the RNN at radius 0.9 and 1
    for cell in ("LSTM", "GRU"):
        assert r[f"{cell}, chrono init"] > 1e4 * rnn[0]
        assert per_step[f"{cell}, chrono init"] > per_step["RNN tanh, radius 1"]
        assert per_step[f"{cell}, chrono init"] > 0.97
    out = capsys.readouterr().out
    assert "|dL/dh_1|/|dL/dh_T|" in out


def test_vanishing_gradients_figure(tmp_path):
    pytest.importorskip("matplotlib")
    vg = load("vanishing_gradients")
    path = tmp_path / "vg.png"
    vg.main(["--fast", "--length", "60", "--plot", str(path), "--threads", "1"])
    assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chrono_init_opens_the_gates():
    vg = load("vanishing_gradients")
    rng = np.random.default_rng(0)
    lstm, gru = pyrnn.LSTM(1, 8, seed=0), pyrnn.GRU(1, 8, seed=0)
    vg.chrono_init(lstm, 100, rng)
    vg.chrono_init(gru, 100, rng)
    b_f = lstm.bias_ih_l0[8:16] + lstm.bias_hh_l0[8:16]
    assert (b_f >= 0).all() and (b_f <= np.log(99) + 1e-6).all()
    np.testing.assert_allclose(lstm.bias_ih_l0[:8] + lstm.bias_hh_l0[:8], -b_f, rtol=1e-6)
    assert (gru.bias_ih_l0[8:16] + gru.bias_hh_l0[8:16] >= 0).all()


# ---------------------------------------------------------- the adding problem


def test_adding_batch_is_the_adding_problem():
    ap = load("adding_problem")
    x, y = ap.adding_batch(np.random.default_rng(0), 500, 20)
    assert x.shape == (20, 500, 2) and y.shape == (500, 1)
    markers = x[:, :, 1]
    assert (markers.sum(0) == 2).all()
    assert (markers[:10].sum(0) == 1).all() and (markers[10:].sum(0) == 1).all()
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * markers).sum(0), rtol=1e-6)
    assert abs(np.mean((y - 1.0) ** 2) - ap.BASELINE_MSE) < 0.03


@pytest.mark.slow
def test_adding_problem_fast_mode_learns():
    ap = load("adding_problem")
    res = ap.main(["--fast", "--no-plot", "--threads", "1"])
    mse, base = res["results"], res["baseline"]
    assert mse["lstm", 50] < base / 4  # the criterion; typically ~1% of the baseline
    for model in ("gru", "gru_reset_before"):
        assert mse[model, 50] < base / 4
    assert mse["rnn", 50] > 5 * max(mse["lstm", 50], mse["gru", 50])


@pytest.mark.slow
def test_adding_problem_is_deterministic_given_a_seed():
    ap = load("adding_problem")
    argv = ["--lengths", "20", "--models", "gru", "--steps", "30", "--test-size", "200", "--no-plot",
            "--seed", "3", "--threads", "1"]
    a, b = ap.main(argv), ap.main(argv)
    assert a["results"] == b["results"]
    assert a["results"] != ap.main(argv[:-4] + ["--seed", "4", "--threads", "1"])["results"]


# ------------------------------------------------------------------- char-rnn


@pytest.fixture
def small_text(tmp_path):
    """A small text with structure to learn (a repeated, varied pattern)."""
    rng = np.random.default_rng(0)
    words = ["def ", "return ", "self", ".", "(", ")", ":", "\n    ", "x", "y", " = ", "1", "0", "+"]
    text = "".join(words[i] for i in rng.integers(0, len(words), 6000))
    path = tmp_path / "small.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.slow
def test_char_rnn_fast_mode_learns_the_stdlib(capsys):
    cr = load("char_rnn")
    res = cr.main(["--fast", "--no-plot", "--no-progress", "--threads", "1", "--sample", "200"])
    # bits per character well below a model that only knows the character frequencies
    assert res["val_bpc"] < res["unigram_bpc"] - 1.0
    assert res["train_bpc"] < res["unigram_bpc"] - 1.0
    assert res["history"][-1][2] < res["history"][0][2]
    sample = res["sample"]
    assert sample.startswith("def ") and len(sample) == len("def ") + 200
    assert set(sample) <= set(res["vocab"])
    out = capsys.readouterr().out
    assert "bits per character" in out and "unigram" in out
    # the recurrent layers frozen in int8 and bf16: validation bits/char within 1% of float32 (fast mode,
    # seeds 0-1: int8 +0.05%, bf16 ~0; a broken low-precision kernel is far off), and really another computation
    bits = res["precision_bits"]
    assert set(bits) == {"fp32", "int8", "bf16"} and bits["fp32"] == res["val_bpc"]
    for prec in ("int8", "bf16"):
        assert np.isfinite(bits[prec]) and bits[prec] != bits["fp32"], prec
        assert abs(bits[prec] - bits["fp32"]) / bits["fp32"] < 0.01, (prec, bits)
    assert "by weight precision" in out


def test_char_rnn_vocab_and_unigram_baseline():
    cr = load("char_rnn")
    vocab = cr.build_vocab("aaaabbbc\u00e9", min_count=2)
    assert vocab == "".join(sorted("ab" + cr.UNK))
    ids = cr.encode("abcx", vocab)
    assert [vocab[i] for i in ids] == ["a", "b", cr.UNK, cr.UNK]
    h, cross = cr.unigram_bits(np.array([0, 0, 1, 1]), np.array([0, 1]), 3)
    assert h == pytest.approx(1.0)
    assert cross > 1.0  # smoothing for the unseen third symbol


def test_char_rnn_checkpoint_resume_is_exact(small_text, tmp_path):
    """k steps, checkpoint, resume for k more == 2k steps straight (dropout RNG, Adam moments, carried state)."""
    cr = load("char_rnn")
    common = ["--text", str(small_text), "--hidden", "16", "--layers", "2", "--seq-len", "16", "--batch", "4",
              "--dropout", "0.2", "--recurrent-dropout", "0.1", "--sample", "0", "--no-plot", "--no-progress",
              "--threads", "1", "--seed", "5"]
    straight = tmp_path / "straight.npz"
    half = tmp_path / "half.npz"
    a = cr.main(common + ["--steps", "24", "--eval-every", "6", "--checkpoint", str(straight)])
    cr.main(common + ["--steps", "12", "--eval-every", "6", "--checkpoint", str(half)])
    b = cr.main(common + ["--steps", "24", "--eval-every", "6", "--resume", str(half), "--checkpoint", str(half)])
    assert a["history"] == b["history"]
    with np.load(straight) as za, np.load(half) as zb:
        assert sorted(za.files) == sorted(zb.files)
        for k in za.files:
            if k != "meta":
                np.testing.assert_array_equal(za[k], zb[k], err_msg=k)
    # sampling only, from the checkpoint: the model loads with the checkpoint's settings
    c = cr.main(["--text", str(small_text), "--resume", str(half), "--steps", "0", "--sample", "50", "--prime",
                 "def", "--no-plot", "--no-progress", "--seed", "1"])
    assert c["step"] == 24 and len(c["sample"]) == 53
    # float32 measured again on this run's validation text, int8 and bf16 beside it
    assert set(c["precision_bits"]) == {"fp32", "int8", "bf16"}
    assert c["precision_bits"]["fp32"] == pytest.approx(a["val_bpc"], rel=1e-6)


def test_char_rnn_resume_refuses_another_text(small_text, tmp_path):
    cr = load("char_rnn")
    ck = tmp_path / "c.npz"
    cr.main(["--text", str(small_text), "--hidden", "8", "--steps", "2", "--seq-len", "8", "--batch", "2",
             "--sample", "0", "--no-plot", "--no-progress", "--checkpoint", str(ck)])
    other = tmp_path / "other.txt"
    other.write_text("something else entirely " * 100, encoding="utf-8")
    with pytest.raises(SystemExit, match="another text"):
        cr.main(["--text", str(other), "--resume", str(ck), "--steps", "4", "--no-plot", "--no-progress"])


@pytest.mark.skipif(not _has_pyrnn_torch(), reason="needs torch and pyrnn.torch")
def test_char_rnn_torch_backend_matches_numpy_and_shares_checkpoints(small_text, tmp_path):
    """Without dropout both backends start from the same weights and follow the same trajectory."""
    cr = load("char_rnn")
    base = ["--text", str(small_text), "--hidden", "16", "--layers", "2", "--seq-len", "16", "--batch", "4",
            "--dropout", "0", "--cell", "gru", "--no-plot", "--no-progress", "--threads", "1"]
    ck = tmp_path / "torch.npz"
    t = cr.main(base + ["--steps", "10", "--eval-every", "5", "--sample", "20", "--backend", "torch",
                        "--checkpoint", str(ck)])
    n = cr.main(base + ["--steps", "10", "--eval-every", "5", "--sample", "20", "--backend", "numpy"])
    assert len(t["history"]) == len(n["history"]) == 2
    for (s1, tr1, va1), (s2, tr2, va2) in zip(t["history"], n["history"]):
        assert s1 == s2 and tr1 == pytest.approx(tr2, abs=2e-3) and va1 == pytest.approx(va2, abs=2e-3)
    for prec in ("int8", "bf16"):  # evaluated through the NumPy layers frozen from either backend's weights
        assert t["precision_bits"][prec] == pytest.approx(n["precision_bits"][prec], abs=2e-3)
    resumed = cr.main(base + ["--steps", "12", "--backend", "numpy", "--resume", str(ck), "--sample", "0"])
    assert resumed["step"] == 12 and np.isfinite(resumed["val_bpc"])


# -------------------------------------------------------------------- seq2seq


def test_seq2seq_batches():
    s2s = load("seq2seq")
    strings = [np.array([1, 2, 3]), np.array([9, 0])]
    x_enc, x_dec, targets, mask, lengths = s2s.encode_batch(strings, "reverse", 4)
    assert x_enc.shape == (4, 2, 10) and x_dec.shape == (5, 2, 11)
    np.testing.assert_array_equal(lengths, [3, 2])
    np.testing.assert_array_equal(targets[:4, 0], [3, 2, 1, s2s.EOS])
    np.testing.assert_array_equal(targets[:3, 1], [0, 9, s2s.EOS])
    np.testing.assert_array_equal(mask.sum(0), [4, 3])
    assert x_dec[0, :, s2s.GO].all() and x_dec[1, 0, 3] == 1  # teacher forcing: GO, then the target
    _, _, targets, _, _ = s2s.encode_batch(strings, "sort", 4)
    np.testing.assert_array_equal(targets[:4, 0], [1, 2, 3, s2s.EOS])


@pytest.mark.slow
def test_seq2seq_fast_mode_learns_to_reverse():
    s2s = load("seq2seq")
    res = s2s.main(["--fast", "--no-plot", "--threads", "1"])
    assert res["chance"] < 1e-3
    assert res["accuracy"] > 0.7  # exact match on whole held-out strings (typically ~98%)
    # encoder and decoder cells frozen in int8 and bf16: at most 3 points below float32 (fast mode, seeds 0-2:
    # -0.4 to +0.1 points, i.e. a few of the 1000 held-out strings; a broken low-precision kernel loses far more)
    accs = res["precision_accuracy"]
    assert set(accs) == {"fp32", "int8", "bf16"} and accs["fp32"] == res["accuracy"]
    for prec in ("int8", "bf16"):
        assert accs[prec] >= accs["fp32"] - 0.03, (prec, accs)


def test_seq2seq_gru_two_layers_runs():
    s2s = load("seq2seq")
    res = s2s.main(["--cell", "gru", "--layers", "2", "--hidden", "16", "--steps", "3", "--test-size", "20",
                    "--max-len", "4", "--no-plot", "--threads", "1", "--task", "sort"])
    assert 0.0 <= res["accuracy"] <= 1.0 and len(res["history"]) == 3
    assert set(res["precision_accuracy"]) == {"fp32", "int8", "bf16"}  # frozen GRU cells, two layers


def test_precisions_option():
    cr, s2s = load("char_rnn"), load("seq2seq")
    assert cr.parse_args([]).precisions == s2s.parse_args([]).precisions == ["int8", "bf16"]
    assert cr.parse_args(["--precisions", ""]).precisions == s2s.parse_args(["--precisions", ""]).precisions == []
    assert cr.parse_args(["--precisions", "BF16"]).precisions == ["bf16"]
    for module in (cr, s2s):
        with pytest.raises(SystemExit):
            module.parse_args(["--precisions", "int4"])
