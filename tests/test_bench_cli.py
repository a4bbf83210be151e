"""The benchmark command line (python -m pyrnn.bench), run on tiny shapes (--tiny)."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

import pyrnn
from pyrnn import bench
from pyrnn.bench import cli, runner
from pyrnn.bench import report as bench_report

HAVE_TORCH = importlib.util.find_spec("torch") is not None
TINY = ["--tiny", "--threads", "1"]
# Every framework in this process: for the tests of the report and of failures injected by monkeypatching
# (a worker process would not see the patch), and to spare a worker's start-up (importing torch) per run.
INPROC = [*TINY, "--in-process"]
ROW_KEYS = {
    "case", "variant", "cell", "B", "T", "I", "H", "layers", "bidirectional", "lengths", "impl", "mode",
    "threads", "gflop", "status", "check", "check_errors", "pyrnn_ms", "pyrnn_gflops", "pct_peak", "pyrnn_reps",
    *(f"{p}_{k}" for p in ("torch", "ort", "jax", "torch_int8", "reference")
      for k in ("ms", "gflops", "ratio", "note")),
    "best_peer", "best_peer_ms", "best_peer_ratio", "whh_gbs", "bound_level", "bound_gbs",
}
# The modules each new peer needs (the test of a peer is skipped without them).
PEER_MODULES = {"ort": ("onnxruntime", "onnx", "torch"), "jax": ("jax",), "torch-int8": ("torch",)}


def importable(peer):
    return all(importlib.util.find_spec(m) is not None for m in PEER_MODULES[peer])


def run_json(tmp_path, *args, base=INPROC):
    path = tmp_path / "r.json"
    rc = bench.main([*base, *args, "--json", path])
    return rc, json.loads(path.read_text())


def timed_rows(report):
    return [r for r in report["rows"] if r["status"] == "ok"]


def test_gru_fwd_json_and_markdown(tmp_path, capsys):
    md = tmp_path / "r.md"
    rc, report = run_json(tmp_path, "--quick", "--cells", "gru", "--modes", "fwd", "--markdown", md, base=TINY)
    assert rc == 0
    out, err = capsys.readouterr()
    assert "[1/6] pyrnn: gru B=3 T=4 H=8 fwd 1 thread ..." in err  # 3 cases for pyrnn, then 3 for torch
    assert "[4/6] torch: gru B=3 T=4 H=8 fwd 1 thread ..." in err or not HAVE_TORCH
    assert "pyrnn ms" in out and "% peak" in out
    assert "int8" not in out and "bf16" not in out and "reduced-precision" not in out  # no --precision

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
        if r["B"] <= 8:  # small batch, inference: the recurrent weights' read bandwidth and its bound
            assert r["whh_gbs"] > 0 and r["bound_level"] in ("L2", "L3", "DRAM") and r["bound_gbs"] > 0
        if HAVE_TORCH:
            assert r["torch_ms"] > 0 and r["torch_ratio"] > 0
            assert report["torch"]
        else:
            assert r["torch_ms"] is None and report["torch"] is None

    text = md.read_text()
    assert ("| case | mode | thr | pyrnn ms | GFLOP/s | % peak | W_hh GB/s (bound) | torch ms | torch/pyrnn | check |"
            in text)
    assert "|:---|:---|---:|" in text
    assert "python -m pyrnn.bench --tiny --threads 1 --quick --cells gru" in text
    assert "ISA " + pyrnn.isa() in text


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="pinned workers: sched_setaffinity is Linux-only")
def test_all_cells_modes_threads_with_reference_in_pinned_workers(tmp_path):
    rc, report = run_json(tmp_path, "--threads", "1,2", "--reference", base=TINY)
    assert rc == 0
    assert report["isolated"] and report["peers"] == ["torch", "reference"]
    # one process per framework and thread count, pinned to the first N cores for N threads (every thread of
    # it, framework pools included); the NumPy reference runs in this process
    cores = sorted(os.sched_getaffinity(0))
    workers = {(w["framework"], w["threads"]): w for w in report["workers"]}
    assert set(workers) == {(fw, t) for fw in ("pyrnn", "torch", "reference") for t in (1, 2)}
    for (fw, t), w in workers.items():
        if fw == "reference":
            assert w["pid"] == os.getpid() and not w["isolated"]
            continue
        if fw == "torch" and not HAVE_TORCH:
            continue
        assert w["isolated"] and w["pid"] != os.getpid()
        assert w["cores"] == cores[:t] and w["affinity"] == cores[:t]
        assert set(w["thread_affinity"]) <= set(cores[:t])
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


def hide_module(tmp_path, monkeypatch, name):
    """Makes ``import name`` fail here and in the worker processes (a package that raises ImportError,
    first on their PYTHONPATH)."""
    fake = tmp_path / "hidden" / name
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(fake.parent), os.environ.get("PYTHONPATH")])))
    monkeypatch.setitem(sys.modules, name, None)  # and in this process


def test_without_torch(tmp_path, monkeypatch, capsys):
    hide_module(tmp_path, monkeypatch, "torch")
    rc, report = run_json(tmp_path, "--cells", "rnn", "--modes", "fwd", base=TINY)
    assert rc == 0
    assert report["torch"] is None and report["unavailable"] == {"torch": "torch not importable"}
    rows = timed_rows(report)
    assert rows and all(r["torch_ms"] is None and r["torch_ratio"] is None for r in rows)
    out = capsys.readouterr().out
    assert "PyTorch not importable (torch): its columns show '-'" in out and "torch ms" in out


def test_peer_not_installed_shows_dash(tmp_path, monkeypatch, capsys):
    hide_module(tmp_path, monkeypatch, "onnxruntime")
    rc, report = run_json(tmp_path, "--cells", "rnn", "--modes", "fwd", "--peers", "ort", base=TINY)
    assert rc == 0
    assert report["peers"] == ["ort"] and report["unavailable"] == {"ort": "onnxruntime not importable"}
    rows = timed_rows(report)
    assert rows and all(r["pyrnn_ms"] > 0 and r["ort_ms"] is None and r["ort_note"] == "onnxruntime not importable"
                        and r["check"] == "ok" for r in rows)
    out = capsys.readouterr().out
    assert "ONNX Runtime not importable (onnxruntime): its columns show '-'" in out
    assert "ort ms" in out and "ort/pyrnn" in out and "best peer/pyrnn" not in out


# The new peers' run: a few cases (JAX compiles each case and mode, ~1 s apiece): one of each cell, both GRU
# variants, and a stacked bidirectional LSTM with variable lengths.
PEER_SUITE = (
    bench.Case("lstm", B=3, T=4, H=8),
    bench.Case("lstm", B=3, T=6, H=8, layers=2, bidirectional=True, lengths=(2, 6), impl="layer"),
    bench.Case("gru", B=2, T=4, H=8, I=5),
    bench.Case("gru_reset_before", B=2, T=4, H=8),
    bench.Case("rnn_tanh", B=2, T=4, H=8),
)


@pytest.fixture(scope="module")
def new_peers_run(tmp_path_factory):
    """One run of every importable new peer (a worker each), both modes, on PEER_SUITE."""
    peers = [p for p in PEER_MODULES if importable(p)]
    if not peers:
        pytest.skip("none of onnxruntime, jax, torch importable")
    tmp = tmp_path_factory.mktemp("peers")
    md = tmp / "r.md"
    with pytest.MonkeyPatch.context() as mp:  # the cases travel to the workers in their jobs
        mp.setitem(bench.cases.SUITES, "standard", PEER_SUITE)
        rc = bench.main([*TINY, "--peers", ",".join(peers), "--json", tmp / "r.json", "--markdown", md])
    return rc, json.loads((tmp / "r.json").read_text()), md.read_text()


@pytest.mark.parametrize("peer", list(PEER_MODULES))
def test_new_peer_runs_and_checks(peer, new_peers_run):
    if not importable(peer):
        pytest.skip(f"{peer} needs {', '.join(PEER_MODULES[peer])}")
    rc, report, md = new_peers_run
    assert rc == 0
    key = peer.replace("-", "_")
    (worker,) = [w for w in report["workers"] if w["framework"] == peer]
    assert worker["version"] and worker["pid"] != os.getpid() and worker["affinity"] == worker["cores"]
    rows = timed_rows(report)
    assert {r["cell"] for r in rows} == {"lstm", "gru", "rnn"} and any(r["lengths"] for r in rows)
    assert len(rows) == 2 * len(PEER_SUITE)
    for r in rows:
        assert r["check"] == "ok"
        runs = r["mode"] == "fwd" or peer == "jax"  # ort and torch-int8: inference only
        if peer != "jax" and r["variant"] == "gru_reset_before":
            runs = False  # no torch.nn layer to export or quantize
        if peer == "torch-int8" and r["cell"] == "rnn":
            runs = False  # quantize_dynamic has no int8 RNN
        if not runs:
            assert r[f"{key}_ms"] is None and r[f"{key}_note"]
            continue
        assert r[f"{key}_ms"] > 0 and r[f"{key}_ratio"] > 0 and r[f"{key}_note"] is None
        errors = r["check_errors"][peer]
        assert errors["y"] < (0.1 if peer == "torch-int8" else 1e-3)
        if peer == "jax" and r["mode"] == "fwdbwd":
            assert errors["dx"] < 1e-3
    assert f"| {peer} ms | {peer}/pyrnn |" in md
    if peer == "ort":
        assert "ONNX Runtime not run (inference only): all fwdbwd rows." in md
        assert "ONNX Runtime not run (no PyTorch gru_reset_before): gru_reset_before B=2 T=4 H=8 (fwd)." in md
    if peer == "jax":
        assert "XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=N" in md
    if peer == "torch-int8":
        assert "INT8 weights" in md and "torch-int8, being int8: < 0.1" in md


def test_best_peer_column_from_run(new_peers_run):
    _, report, md = new_peers_run
    fp32 = [p for p in report["peers"] if p in ("ort", "jax")]
    for r in timed_rows(report):
        times = {p: r[f"{p}_ms"] for p in fp32 if r[f"{p}_ms"] is not None}
        if not times:
            assert r["best_peer"] is None and r["best_peer_ratio"] is None
            continue
        best = min(times, key=times.get)
        assert r["best_peer"] == best and r["best_peer_ratio"] == pytest.approx(times[best] / r["pyrnn_ms"])
    assert ("best peer/pyrnn" in md) == (len(fp32) > 1)


def test_best_peer_column():
    row = {"pyrnn_ms": 2.0, "torch_ms": 3.0, "ort_ms": 1.5, "jax_ms": None, "torch_int8_ms": 0.5,
           "reference_ms": 0.1}
    peers = ["torch", "ort", "jax", "torch-int8", "reference"]
    runner.set_best_peer(row, peers)  # int8 and the reference are faster, but not fp32 peers
    assert (row["best_peer"], row["best_peer_ms"], row["best_peer_ratio"]) == ("ort", 1.5, 0.75)
    runner.set_best_peer(row, ["torch", "torch-int8"])  # ort not asked for
    assert (row["best_peer"], row["best_peer_ratio"]) == ("torch", 1.5)
    runner.set_best_peer(row, ["jax", "torch-int8"])
    assert row["best_peer"] is None and row["best_peer_ratio"] is None
    assert bench_report.best_cell(row) == "-"
    runner.set_best_peer(row, peers)
    assert bench_report.best_cell(row) == "0.75x ort"
    headers = [h for h, _ in bench_report.table_columns(peers)]
    assert headers[-2:] == ["best peer/pyrnn", "check"]
    assert "best peer/pyrnn" not in [h for h, _ in bench_report.table_columns(["torch", "torch-int8", "reference"])]


def test_mismatch_is_flagged(tmp_path, monkeypatch, capsys):
    def wrong_reference(case, inputs, mode):
        run = bench.reference_runner(case, inputs, mode)
        return lambda: (run()[0] + 0.1, None)

    monkeypatch.setitem(bench.RUNNERS, "reference", wrong_reference)
    rc, report = run_json(tmp_path, "--cells", "rnn", "--modes", "fwd", "--peers", "reference")
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
    assert bench.main([*INPROC, "--cells", "gru", "--plot", png]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_from_recorded_json(tmp_path, monkeypatch):
    """--from-json redraws a recorded run's plot without measuring; with several fp32 peers the plot is
    the best peer's time over pyrnn's (write_best_peer_plot), as for bench/results-peers.png."""
    pytest.importorskip("matplotlib")
    rc, recorded = run_json(tmp_path, "--cells", "gru", "--modes", "fwd")
    assert rc == 0
    for r in recorded["rows"]:  # as a run with --peers torch,jax would have recorded it
        r.update(best_peer="jax", best_peer_ratio=1.25)
    recorded["peers"] = ["torch", "jax"]
    path = tmp_path / "peers.json"
    path.write_text(json.dumps(recorded))
    drawn = []
    monkeypatch.setattr(bench_report, "write_best_peer_plot",
                        lambda *a, f=bench_report.write_best_peer_plot: (drawn.append(a[1]), f(*a)))
    monkeypatch.setattr(cli, "run_suite", lambda *a, **k: pytest.fail("--from-json must not measure"))
    png = tmp_path / "p.png"
    assert bench.main(["--from-json", path, "--plot", png]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn and [r["case"] for r in drawn[0]] == [r["case"] for r in recorded["rows"]]


@pytest.mark.parametrize("args, says", [
    ([], "give --plot"),
    (["--plot", "x.png", "--markdown", "x.md"], "no --markdown"),
])
def test_from_json_usage_errors(tmp_path, capsys, args, says):
    assert bench.main(["--from-json", tmp_path / "r.json", *args]) == 2
    assert says in capsys.readouterr().err


def test_from_json_not_a_recorded_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")  # (without it, --plot says so first)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert bench.main(["--from-json", bad, "--plot", tmp_path / "p.png"]) == 2
    assert "not a run written by --json" in capsys.readouterr().err
    assert bench.main(["--from-json", tmp_path / "missing.json", "--plot", tmp_path / "p.png"]) == 2


def test_from_json_with_missing_fields(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [], "peak_gflops": {"1": 100}}))
    assert bench.main(["--from-json", bad, "--plot", tmp_path / "p.png"]) == 2
    assert "not a run written by --json" in capsys.readouterr().err


@pytest.mark.parametrize("opt, name, says", [
    ("--json", "missing/r.json", "does not exist"),
    ("--markdown", "missing/r.md", "does not exist"),
    ("--plot", "missing/r.png", "does not exist"),
    ("--plot", "r.xyz", "not 'xyz'"),
    ("--json", ".", "is a folder"),
])
def test_bad_output_paths_fail_before_measuring(tmp_path, monkeypatch, capsys, opt, name, says):
    """A full suite takes minutes: its output paths are checked first (exit 2, bad usage)."""
    if opt == "--plot":
        pytest.importorskip("matplotlib")
    monkeypatch.setattr(cli, "measure_peaks", lambda *a, **k: pytest.fail("bad usage must not measure"))
    assert bench.main([*TINY, opt, tmp_path / name]) == 2
    assert says in capsys.readouterr().err


def test_cells_outside_the_suite_are_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(cli, "measure_peaks", lambda *a, **k: pytest.fail("bad usage must not measure"))
    assert bench.main(["--suite", "scaling", "--cells", "rnn"]) == 2
    assert "no case of --cells rnn" in capsys.readouterr().err


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
    assert bench.main([*INPROC, "--suite", "scaling", "--modes", "fwd", "--plot", png]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--suite", "huge"], "invalid choice: 'huge'"),
    (["--reps", "0"], "must be >= 1, got 0"),
    (["--reps", "x"], "'x' is not an integer"),
    (["--threads", "0"], "thread counts must be in 1..4096"),
    (["--threads", "two"], "'two' is not an integer"),
    (["--cells", "foo"], "'foo' is not one of lstm, gru, rnn"),
    (["--modes", "bwd"], "'bwd' is not one of fwd, fwdbwd"),
    (["--peers", "tf"], "'tf' is not one of torch, ort, jax, torch-int8, reference"),
    (["--precision", "fp16"], "'fp16' is not one of fp32, int8, bf16"),
    (["--precision", ","], "argument --precision: expected a comma-separated list"),
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


def test_small_batch_rows_report_the_weights_bandwidth():
    from pyrnn.bench import runner

    row = {"mode": "fwd", "B": 4, "pyrnn_ms": 10.0, "threads": 2, "cell": "lstm", "H": 1024, "T": 25,
           "lengths": None, "layers": 1, "bidirectional": False}
    big = dict(row, B=64)
    bw = {2: {"L2": {"gbs": 100.0}, "L3": {"gbs": 50.0}, "DRAM": {"gbs": 20.0}}}
    runner.add_bandwidth([row, big], bw, {"L2": 2**20, "L3": 32 * 2**20})
    # W_hh: 4*1024*1024*4 bytes = 16 MiB, 8 MiB a thread: L3; read 25 times in 10 ms
    assert row["bound_level"] == "L3" and row["bound_gbs"] == 50.0
    assert row["whh_gbs"] == pytest.approx(16 * 2**20 * 25 / 0.010 / 1e9)
    assert big["whh_gbs"] is None and big["bound_level"] is None


# --precision: pyrnn's int8 and bf16 inference. A few tiny cases: LSTM (float32 and float64), a stacked
# bidirectional LSTM layer with variable lengths, a GRU and an RNN (no torch-int8 peer).
PRECISION_SUITE = (
    bench.Case("lstm", B=3, T=4, H=8),
    bench.Case("lstm", B=3, T=4, H=8, dtype="float64"),
    bench.Case("lstm", B=3, T=6, H=8, layers=2, bidirectional=True, lengths=(2, 6), impl="layer"),
    bench.Case("gru", B=2, T=4, H=8, I=5),
    bench.Case("rnn_tanh", B=2, T=4, H=8),
)
PRECISION_PEERS = ["torch", "torch-int8"] if HAVE_TORCH else ["reference"]


def precision_keys(p):
    keys = {f"pyrnn_{p}_{k}" for k in ("ms", "gflops", "reps", "note")}
    keys |= {f"{p}_vs_pyrnn_fp32", f"{p}_vs_best_fp32", f"{p}_max_err", f"{p}_mean_err"}
    return keys | ({"int8_vs_torch_int8"} if p == "int8" else set())


@pytest.fixture(scope="module")
def precision_run(tmp_path_factory):
    """One run with --precision int8,bf16 in pinned workers (the precisions are timed in pyrnn's), both modes."""
    tmp = tmp_path_factory.mktemp("precision")
    md = tmp / "r.md"
    with pytest.MonkeyPatch.context() as mp:  # the cases travel to the workers in their jobs
        mp.setitem(bench.cases.SUITES, "standard", PRECISION_SUITE)
        rc = bench.main([*TINY, "--precision", "int8,bf16", "--peers", ",".join(PRECISION_PEERS),
                         "--json", tmp / "r.json", "--markdown", md])
    return rc, json.loads((tmp / "r.json").read_text()), md.read_text()


def test_precision_option_parses():
    parse = cli.build_parser().parse_args
    assert parse([]).precision == ["fp32"]
    assert parse(["--precision", "int8"]).precision == ["int8"]
    assert parse(["--precision", "fp32, bf16,int8,bf16"]).precision == ["fp32", "bf16", "int8"]


def test_precision_json_fields(precision_run):
    rc, report, _ = precision_run
    assert rc == 0
    assert report["precisions"] == ["fp32", "int8", "bf16"]
    (worker,) = [w for w in report["workers"] if w["framework"] == "pyrnn"]
    assert worker["isolated"] and worker["pid"] != os.getpid()  # timed in pyrnn's worker
    rows = timed_rows(report)
    assert len(rows) == 2 * len(PRECISION_SUITE)
    keys = precision_keys("int8") | precision_keys("bf16")
    for r in rows:
        assert set(r) == ROW_KEYS | keys
        assert r["check"] == "ok" and r["pyrnn_ms"] > 0
        if r["mode"] == "fwdbwd" or r["case"].endswith("float64"):  # inference only; float32 only
            assert all(r[k] is None for k in keys - {"pyrnn_int8_note", "pyrnn_bf16_note"})
            note = "float32 only" if r["mode"] == "fwd" else None
            assert r["pyrnn_int8_note"] == r["pyrnn_bf16_note"] == note
            continue
        for p in ("int8", "bf16"):
            assert r[f"pyrnn_{p}_note"] is None and r[f"pyrnn_{p}_reps"] >= 3
            for k in ("ms", "gflops"):
                assert np.isfinite(r[f"pyrnn_{p}_{k}"]) and r[f"pyrnn_{p}_{k}"] > 0
            assert r[f"{p}_vs_pyrnn_fp32"] == pytest.approx(r["pyrnn_ms"] / r[f"pyrnn_{p}_ms"])
            if HAVE_TORCH:
                assert r[f"{p}_vs_best_fp32"] == pytest.approx(r["best_peer_ms"] / r[f"pyrnn_{p}_ms"])
            # rounding errors: above 0, small (tanh/sigmoid outputs in [-1, 1])
            assert 0 < r[f"{p}_mean_err"] <= r[f"{p}_max_err"] < (0.1 if p == "int8" else 0.02)
        assert r["bf16_max_err"] < r["int8_max_err"]  # 8 bits of mantissa vs 7 bits + a per-row scale
        if HAVE_TORCH and r["cell"] in ("lstm", "gru"):
            assert r["int8_vs_torch_int8"] == pytest.approx(r["torch_int8_ms"] / r["pyrnn_int8_ms"])
        else:
            assert r["int8_vs_torch_int8"] is None  # quantize_dynamic has no int8 RNN


def test_precision_summary_from_run(precision_run):
    _, report, md = precision_run
    summary = report["precision_summary"]
    assert set(summary) == {"int8", "bf16"}
    fwd32 = [r for r in timed_rows(report) if r["mode"] == "fwd" and not r["case"].endswith("float64")]
    for p, s in summary.items():
        best = s["vs_best_fp32"]
        if HAVE_TORCH:
            assert best["all"]["rows"] == best["small_batch"]["rows"] == len(fwd32)  # --tiny: B <= 3
            expected = np.exp(np.mean(np.log([r[f"{p}_vs_best_fp32"] for r in fwd32])))
            assert best["all"]["geomean"] == pytest.approx(expected)
        assert [t["ratio"] for t in s["targets"]] == (["vs_best_fp32", "vs_torch_int8"] if p == "int8"
                                                      else ["vs_best_fp32"])
    if HAVE_TORCH:
        lstm = summary["int8"]["vs_torch_int8"]["lstm"]
        assert lstm["rows"] == sum(r["cell"] == "lstm" for r in fwd32) and np.isfinite(lstm["geomean"])
        assert summary["int8"]["vs_torch_int8"]["all"]["rows"] == sum(r["cell"] != "rnn" for r in fwd32)
    assert "pyrnn's reduced-precision inference, geometric means over the fwd rows" in md
    assert "- int8: best fp32 peer/int8 " in md and "- bf16: best fp32 peer/bf16 " in md
    assert "targets: best fp32 peer/int8 >= 2x at B <= 8: " in md


def test_precision_table_columns(precision_run):
    _, report, md = precision_run
    head = ("| int8 ms | pyrnn/int8 | best fp32/int8 | torch-int8/int8 | int8 max err | int8 mean err | "
            "bf16 ms | pyrnn/bf16 | best fp32/bf16 | bf16 max err | bf16 mean err | check |") if HAVE_TORCH else (
            "| int8 ms | pyrnn/int8 | int8 max err | int8 mean err | bf16 ms | pyrnn/bf16 | bf16 max err | "
            "bf16 mean err | check |")
    assert head in md
    n = head.count("|") - 2  # the precision columns
    lines = {tuple(line.split(" | ")[:2]): line for line in md.splitlines() if line.startswith("| lstm")}
    f64 = lines[("| lstm B=3 T=4 H=8 float64", "fwd")]
    assert f64.endswith(" | " + " | ".join(["-"] * n) + " | ok |")  # float64: no reduced precision
    assert lines[("| lstm B=3 T=4 H=8", "fwdbwd")].endswith(" | " + " | ".join(["-"] * n) + " | ok |")
    r = next(r for r in timed_rows(report) if r["case"] == "lstm B=3 T=4 H=8" and r["mode"] == "fwd")
    assert f" | {r['pyrnn_int8_ms']:.3f} | {r['int8_vs_pyrnn_fp32']:.2f}x | " in lines[("| lstm B=3 T=4 H=8", "fwd")]
    assert f" | {r['int8_max_err']:.1e} | {r['int8_mean_err']:.1e} | " in lines[("| lstm B=3 T=4 H=8", "fwd")]
    assert "fp32, pyrnn int8 inference, pyrnn bf16 inference; threads 1" in md
    assert "int8 = W_ih and W_hh as int8 with a scale per row" in md and "bf16 = W_ih and W_hh as bfloat16" in md
    assert "pyrnn int8 not run (float32 only): lstm B=3 T=4 H=8 float64 (fwd)." in md


def test_precision_only_int8_text(tmp_path, capsys):
    rc, report = run_json(tmp_path, "--cells", "rnn", "--modes", "fwd", "--precision", "int8",
                          "--peers", "reference")
    assert rc == 0 and report["precisions"] == ["fp32", "int8"]
    assert set(report["precision_summary"]) == {"int8"}
    rows = timed_rows(report)
    assert rows and all(r["int8_max_err"] > 0 and "pyrnn_bf16_ms" not in r for r in rows)
    out = capsys.readouterr().out
    assert "int8 ms" in out and "int8 max err" in out and "bf16" not in out
    assert "best fp32/int8" not in out  # no fp32 peer asked for
    summary = " ".join(out.split())
    assert "int8: best fp32 peer/int8 - (no fp32 peer in --peers); torch-int8/int8 - (torch-int8 not in --peers)" \
        in summary
    assert "best fp32 peer/int8 >= 2x at B <= 8: not measured" in summary


def test_failing_precision_is_an_error(tmp_path, monkeypatch):
    original = runner.pyrnn_runner

    def broken_bf16(case, inputs, mode, precision=None):
        step = original(case, inputs, mode, precision=precision)
        if precision != "bf16":
            return step

        def boom():
            raise RuntimeError("bf16 boom")

        return boom

    monkeypatch.setattr(runner, "pyrnn_runner", broken_bf16)
    rc, report = run_json(tmp_path, "--cells", "rnn", "--modes", "fwd", "--precision", "int8,bf16")
    assert rc == 1
    for r in timed_rows(report):
        assert r["pyrnn_bf16_note"] == "error: RuntimeError: bf16 boom" and r["pyrnn_bf16_ms"] is None
        assert r["pyrnn_int8_ms"] > 0 and r["pyrnn_ms"] > 0


def test_output_errors_over_valid_steps():
    y = np.zeros((3, 2, 1), np.float32)
    off = y.copy()
    off[:, 0] = 0.5
    off[2, 1] = 9.0  # past the second sequence's length: not counted
    assert runner.output_errors(off, y, np.array([3, 2])) == (0.5, pytest.approx(0.5 * 3 / 5))
    assert runner.output_errors(off, y) == (9.0, pytest.approx((1.5 + 9.0) / 6))


def test_precision_summary_and_targets():
    def row(cell, B, best, torch_int8):
        return {"mode": "fwd", "status": "ok", "cell": cell, "B": B, "int8_vs_best_fp32": best,
                "int8_vs_torch_int8": torch_int8, "bf16_vs_best_fp32": best / 2}

    rows = [row("lstm", 1, 4.0, 2.0), row("lstm", 64, 1.0, 1.0), row("gru", 4, 1.0, None),
            dict(row("lstm", 1, 100.0, 100.0), mode="fwdbwd")]
    s = runner.precision_summary(rows, ["int8", "bf16"])
    assert s["int8"]["vs_best_fp32"]["small_batch"] == {"geomean": pytest.approx(2.0), "rows": 2}
    assert s["int8"]["vs_best_fp32"]["all"] == {"geomean": pytest.approx(4 ** (1 / 3)), "rows": 3}
    assert s["int8"]["vs_torch_int8"]["lstm"] == {"geomean": pytest.approx(2 ** 0.5), "rows": 2}
    assert [(t["target"], t["met"]) for t in s["int8"]["targets"]] == [(2.0, True), (1.5, False)]
    assert "vs_torch_int8" not in s["bf16"]
    assert [(t["target"], t["met"]) for t in s["bf16"]["targets"]] == [(1.4, False)]
    lines = bench_report.precision_lines({"peers": ["torch", "torch-int8"], "precision_summary": s})
    assert lines[0].startswith("int8: best fp32 peer/int8 2.00x (2 rows) at B <= 8, 1.59x (3 rows) over all; "
                               "torch-int8/int8 ")
    assert "torch-int8/int8 >= 1.5x on LSTM rows: NOT met" in lines[0]
    assert lines[1] == ("bf16: best fp32 peer/bf16 1.00x (2 rows) at B <= 8, 0.79x (3 rows) over all (targets: "
                        "best fp32 peer/bf16 >= 1.4x at B <= 8: NOT met)")


def test_more_threads_than_cores_warns(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("pyrnn.bench.cli.available_cores", lambda: 1)
    rc, report = run_json(tmp_path, "--threads", "2", "--cells", "rnn", "--modes", "fwd",
                          base=["--tiny", "--in-process"])
    assert rc == 0 and report["threads"] == [2]  # measured anyway
    assert "warning: --threads 2 is more than the cores this process may use (1)" in capsys.readouterr().err
