"""The benchmark command line (python -m pyrnn.bench), run on tiny shapes (--tiny)."""

import importlib.util
import json
import sys

import numpy as np
import pytest

import pyrnn
from pyrnn import bench
from pyrnn.bench import cli, runner

HAVE_TORCH = importlib.util.find_spec("torch") is not None
TINY = ["--tiny", "--threads", "1"]
ROW_KEYS = {
    "case", "variant", "cell", "B", "T", "I", "H", "layers", "bidirectional", "lengths", "impl", "mode",
    "threads", "gflop", "status", "check", "check_errors", "pyrnn_ms", "pyrnn_gflops", "pct_peak", "pyrnn_reps",
    "torch_ms", "torch_gflops", "torch_ratio", "torch_note",
    "reference_ms", "reference_gflops", "reference_ratio", "reference_note",
}


def run_json(tmp_path, *args):
    path = tmp_path / "r.json"
    rc = bench.main([*TINY, *args, "--json", path])
    return rc, json.loads(path.read_text())


def timed_rows(report):
    return [r for r in report["rows"] if r["status"] == "ok"]


def test_gru_fwd_json_and_markdown(tmp_path, capsys):
    md = tmp_path / "r.md"
    rc, report = run_json(tmp_path, "--quick", "--cells", "gru", "--modes", "fwd", "--markdown", md)
    assert rc == 0
    out, err = capsys.readouterr()
    assert "[1/3] gru B=3 T=4 H=8 fwd 1 thread ..." in err
    assert "pyrnn ms" in out and "% peak" in out

    assert report["threads"] == [1] and set(report["peak_gflops"]) == {"1"}
    assert report["peak_gflops"]["1"] > 0
    assert report["pyrnn"]["isa_selected"] == pyrnn.isa()
    assert {"date", "command", "machine", "torch", "rows"} <= set(report)
    rows = report["rows"]
    assert len(rows) == 3  # the three GRU shapes of the suite
    for r in rows:
        assert set(r) == ROW_KEYS
        assert (r["cell"], r["mode"], r["threads"], r["status"], r["check"]) == ("gru", "fwd", 1, "ok", "ok")
        assert r["pyrnn_ms"] > 0 and r["pyrnn_gflops"] > 0 and r["pct_peak"] > 0 and r["pyrnn_reps"] >= 3
        assert r["reference_ms"] is None  # no --reference
        if HAVE_TORCH:
            assert r["torch_ms"] > 0 and r["torch_ratio"] > 0
            assert report["torch"]
        else:
            assert r["torch_ms"] is None and report["torch"] is None

    text = md.read_text()
    assert "| case | mode | thr | pyrnn ms | GFLOP/s | % peak | torch ms | torch/pyrnn | check |" in text
    assert "|:---|:---|---:|" in text
    assert "python -m pyrnn.bench --tiny --threads 1 --quick --cells gru" in text
    assert "ISA " + pyrnn.isa() in text


def test_all_cells_modes_threads_with_reference(tmp_path):
    rc, report = run_json(tmp_path, "--threads", "1,2", "--reference")
    assert rc == 0
    rows = timed_rows(report)
    assert {r["cell"] for r in rows} == {"lstm", "gru", "rnn"}
    assert {(r["mode"], r["threads"]) for r in rows} == {("fwd", 1), ("fwdbwd", 1), ("fwd", 2), ("fwdbwd", 2)}
    for r in rows:
        assert r["check"] == "ok" and r["reference_ms"] > 0 and r["reference_ratio"] > 0
        assert r["check_errors"]["reference"]["y"] < 1e-3
        if r["mode"] == "fwdbwd":
            assert r["check_errors"]["reference"]["dx"] < 1e-3
    char = [r for r in rows if r["case"].startswith("char-lstm")]
    assert char and all(r["layers"] == 2 and r["impl"] == "functional" for r in char)


def test_layer_case_runs_with_pyrnn_layers(tmp_path):
    rc, report = run_json(tmp_path, "--cells", "lstm", "--reference")
    assert rc == 0
    (r_fwd, r_bwd) = [r for r in report["rows"] if r["bidirectional"]]
    for r in (r_fwd, r_bwd):
        assert r["status"] == "ok" and r["check"] == "ok" and r["pyrnn_ms"] > 0 and r["impl"] == "layer"
        case = bench.scale_case(next(c for c in bench.SUITE if c.bidirectional), bench.PROFILES["tiny"])
        assert r["gflop"] == pytest.approx(bench.case_gflop(case, np.array(r["lengths"]), r["mode"]))


def test_broken_layer_is_an_error_not_a_crash(tmp_path, monkeypatch):
    class BrokenLSTM:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("boom")

    monkeypatch.setitem(runner.LAYERS, "lstm", BrokenLSTM)
    rc, report = run_json(tmp_path, "--cells", "lstm", "--modes", "fwd")
    assert rc == 1
    (bidir,) = [r for r in report["rows"] if r["bidirectional"]]
    assert bidir["status"] == "error: RuntimeError: boom"
    assert all(r["status"] == "ok" for r in report["rows"] if not r["bidirectional"])


def test_without_torch(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    rc, report = run_json(tmp_path, "--cells", "rnn")
    assert rc == 0
    assert report["torch"] is None
    rows = timed_rows(report)
    assert rows and all(r["torch_ms"] is None and r["torch_ratio"] is None for r in rows)
    out = capsys.readouterr().out
    assert "PyTorch not importable" in out and "torch ms" in out


def test_mismatch_is_flagged(tmp_path, monkeypatch, capsys):
    def wrong_reference(case, inputs, mode):
        run = bench.reference_runner(case, inputs, mode)
        return lambda: (run()[0] + 0.1, None)

    monkeypatch.setitem(bench.RUNNERS, "reference", wrong_reference)
    rc, report = run_json(tmp_path, "--cells", "rnn", "--modes", "fwd", "--reference")
    assert rc == 1
    assert all(r["check"].startswith("MISMATCH reference y") for r in report["rows"])
    assert "MISMATCH reference y" in capsys.readouterr().out


def test_threads_restored(tmp_path):
    before = pyrnn.thread_setting()
    rc, _ = run_json(tmp_path, "--cells", "rnn", "--modes", "fwd")
    assert rc == 0 and pyrnn.thread_setting() == before


def test_busy_machine_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_average", lambda: 99.0)
    rc, report = run_json(tmp_path, "--cells", "rnn", "--modes", "fwd")
    assert rc == 0 and report["machine"]["load_average_at_end"] == 99.0
    assert "WARNING: the machine was busy" in capsys.readouterr().out


def test_plot_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "r.png"
    assert bench.main([*TINY, "--plot", png]) == 2
    assert 'pip install "pyrnn[plot]"' in capsys.readouterr().err
    assert not png.exists()


def test_plot_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "r.png"
    assert bench.main([*TINY, "--cells", "gru", "--plot", png]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_suite(tmp_path, capsys):
    md = tmp_path / "s.md"
    rc, report = run_json(tmp_path, "--suite", "scaling", "--threads", "1,2", "--markdown", md)
    assert rc == 0
    out = capsys.readouterr().out
    assert report["suite"].startswith("scaling suite")
    rows = timed_rows(report)
    assert {(r["cell"], r["B"] <= 3) for r in rows} == {("lstm", True), ("gru", True)}  # B=128 capped by --tiny
    assert sorted({r["threads"] for r in rows}) == [1, 2]
    assert "Speed-up over the fewest threads" in out
    text = md.read_text()
    assert "| case | mode | thr | pyrnn ms | pyrnn speed-up |" in text
    # speed-up of each 1-thread row is 1.00x; the 2-thread row's is the ratio of the two times
    base = {(r["case"], r["mode"]): r["pyrnn_ms"] for r in rows if r["threads"] == 1}
    for r in rows:
        if r["threads"] == 2:
            expected = f"{base[(r['case'], r['mode'])] / r['pyrnn_ms']:.2f}x"
            assert f"| {r['case']} | {r['mode']} | 2 | {r['pyrnn_ms']:.3f} | {expected} |" in text


def test_reps_option(tmp_path):
    rc, report = run_json(tmp_path, "--cells", "rnn", "--modes", "fwd", "--reps", "7")
    assert rc == 0
    assert all(r["pyrnn_reps"] >= 7 for r in timed_rows(report))


def test_a_failing_peer_keeps_pyrnn_timed():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("out of memory")

    out = bench.time_calls({"pyrnn": lambda: None, "torch": flaky}, bench.PROFILES["tiny"])
    assert out["pyrnn"][1] == bench.PROFILES["tiny"].max_reps
    assert isinstance(out["torch"], RuntimeError)


def test_scaling_default_threads():
    assert bench.scaling_threads(1) == [1]
    assert bench.scaling_threads(2) == [1, 2]
    assert bench.scaling_threads(16) == [1, 2, 4, 8, 16]
    assert bench.scaling_threads(12) == [1, 2, 4, 8, 12]


def test_scaling_plot_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "s.png"
    assert bench.main([*TINY, "--suite", "scaling", "--modes", "fwd", "--plot", png]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--suite", "huge"], "invalid choice: 'huge'"),
    (["--reps", "0"], "must be >= 1, got 0"),
    (["--reps", "x"], "'x' is not an integer"),
    (["--threads", "0"], "thread counts must be >= 1"),
    (["--threads", "two"], "'two' is not an integer"),
    (["--cells", "foo"], "'foo' is not one of lstm, gru, rnn"),
    (["--modes", "bwd"], "'bwd' is not one of fwd, fwdbwd"),
    (["--bogus"], "unrecognized arguments"),
])
def test_invalid_options(args, message, capsys):
    assert bench.main(args) == 2
    assert message in capsys.readouterr().err


def test_flop_count():
    lstm = bench.Case("lstm", B=64, T=50, H=512)
    assert bench.case_gflop(lstm, None, "fwd") == pytest.approx(2 * 64 * 50 * 4 * 512 * 1024 / 1e9)
    assert bench.case_gflop(lstm, None, "fwdbwd") == pytest.approx(3 * bench.case_gflop(lstm, None, "fwd"))
    # lengths count valid steps only; layer 2 of a bidirectional stack sees 2H inputs
    bi = bench.Case("gru", B=2, T=10, H=8, I=5, layers=2, bidirectional=True, lengths=(3, 10))
    n = 3 + 10
    expected = 2 * 2 * n * 3 * 8 * (5 + 8) + 2 * 2 * n * 3 * 8 * (16 + 8)
    assert bench.case_gflop(bi, np.array([3, 10]), "fwd") == pytest.approx(expected / 1e9)


def test_quick_profile_caps_T_and_scales_lengths():
    quick = bench.PROFILES["quick"]
    cases = bench.select_cases(quick, ["lstm"])
    assert all(c.T <= 20 and c.cell == "lstm" for c in cases)
    (bi,) = [c for c in cases if c.bidirectional]
    assert (bi.B, bi.T, bi.H, bi.lengths) == (32, 20, 256, (10, 20))
    assert bi.label == "lstm 2L bi B=32 T=20 H=256 len[10,20]*"


def test_training_memory_measures_both_peers():
    peers = ["pyrnn"] + (["torch"] if importlib.util.find_spec("torch") else [])
    mem = bench.training_memory(peers, shape=(4, 5, 16))
    for peer in peers:
        assert mem[peer] is not None and mem[peer] >= 0
    assert mem["saved_activations_mib"] > 0 and "B=4 T=5" in mem["shape"]
