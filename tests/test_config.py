"""show_config, ISA selection (CPUID + PYRNN_ISA) and thread control."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

import pyrnn
from pyrnn import _core
from pyrnn import functional as F


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _expected_best():
    flags = _cpu_flags()
    if flags is None or "fma" not in flags:
        return None
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "baseline"


def test_show_config_reports_detected_isa(monkeypatch):
    monkeypatch.delenv("PYRNN_ISA", raising=False)
    out = io.StringIO()
    pyrnn.show_config(file=out)
    text = out.getvalue()
    for field in ("pyrnn", "compiler:", "flags:", "OpenMP:", "ISA supported:", "ISA selected:", "threads:"):
        assert field in text
    expected = _expected_best()
    if expected is None:
        pytest.skip("CPU flags not readable from /proc/cpuinfo")
    assert pyrnn.isa() == expected
    assert f"ISA selected:   {expected}" in text
    assert _core.isa_supported()[-1] == expected


@pytest.mark.parametrize("level", list(_core.isa_supported()))
def test_pyrnn_isa_forces_a_lower_level(monkeypatch, level):
    monkeypatch.setenv("PYRNN_ISA", level)
    assert pyrnn.isa() == level
    out = io.StringIO()
    pyrnn.show_config(file=out)
    assert f"ISA selected:   {level}" in out.getvalue()


@pytest.mark.parametrize("former", ["scalar", "portable"])
def test_pyrnn_isa_former_names(monkeypatch, former):
    """The baseline level's former names still select it."""
    monkeypatch.setenv("PYRNN_ISA", former)
    assert pyrnn.isa() == "baseline"


def test_pyrnn_isa_invalid_name(monkeypatch):
    monkeypatch.setenv("PYRNN_ISA", "avx1024")
    with pytest.raises(ValueError, match="PYRNN_ISA must be one of 'avx512', 'avx2', 'baseline'"):
        pyrnn.isa()


def test_pyrnn_isa_above_cpu_is_an_error(monkeypatch):
    levels = ["baseline", "avx2", "avx512"]
    best = _core.isa_supported()[-1]
    above = levels[levels.index(best) + 1:]
    if not above:
        pytest.skip(f"this CPU supports the highest level ({best})")
    monkeypatch.setenv("PYRNN_ISA", above[0])
    with pytest.raises(ValueError, match="not supported by this CPU"):
        pyrnn.isa()


def test_set_and_get_num_threads(threads):
    threads(3)
    assert pyrnn.get_num_threads() == 3
    threads(1)
    assert pyrnn.get_num_threads() == 1


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError),
                                      ("2", TypeError), (None, TypeError), (2**31, ValueError), (2**64, ValueError)])
def test_set_num_threads_rejects_invalid(bad, exc, threads):
    with pytest.raises(exc, match="positive integer"):
        threads(bad)


def _threads_in_subprocess(env, cwd):
    # run outside the source tree, so the installed package is the one imported
    code = "import pyrnn; print(pyrnn.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_default_threads_follow_omp_num_threads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    assert _threads_in_subprocess({**env, "OMP_NUM_THREADS": "3"}, tmp_path) == 3
    assert _threads_in_subprocess(env, tmp_path) == _core.num_procs()


def test_fma_peak_is_measured():
    one = pyrnn.fma_peak_gflops(1, seconds=0.05)
    assert one > 1.0
    with pytest.raises(ValueError):
        pyrnn.fma_peak_gflops(0)


# ---------------------------------------------------------------- buffer cache


def _lstm_step(rng, B=8, T=60, H=96):  # y, dx: 180 KiB, above the 128 KiB the cache starts at
    """One LSTM training step large enough that its buffers go through the cache:
    (x, W, y, (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh))."""
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    W = (rng.standard_normal((4 * H, H)) * 0.1).astype(np.float32)
    h0 = np.zeros((B, H), np.float32)
    y, h_n, c_n, ws = F.lstm_forward(x, h0, h0, W, W)
    grads = F.lstm_backward(ws, np.ones_like(y))
    return x, W, y, grads


@pytest.fixture
def fresh_cache():
    limit = pyrnn.cache_info()["limit_bytes"]
    pyrnn.empty_cache()
    yield
    pyrnn.set_cache_limit(limit / 2**20)


def test_cache_reuses_buffers(fresh_cache, rng):
    _lstm_step(rng)
    info = pyrnn.cache_info()
    assert info["cached_bytes"] > 0 and info["cached_blocks"] > 0
    assert info["cached_bytes"] <= info["limit_bytes"]
    hits = info["hits"]
    _lstm_step(rng)
    assert pyrnn.cache_info()["hits"] > hits
    pyrnn.empty_cache()
    assert pyrnn.cache_info()["cached_bytes"] == 0 and pyrnn.cache_info()["cached_blocks"] == 0


def test_cache_disabled_gives_the_same_results(fresh_cache):
    a = _lstm_step(np.random.default_rng(3))
    pyrnn.set_cache_limit(0)
    assert pyrnn.cache_info()["cached_bytes"] == 0
    b = _lstm_step(np.random.default_rng(3))
    assert pyrnn.cache_info()["cached_bytes"] == 0
    np.testing.assert_array_equal(a[2], b[2])
    for ga, gb in zip(a[3], b[3]):
        np.testing.assert_array_equal(ga, gb)


def test_cached_outputs_do_not_alias(fresh_cache):
    """Arrays handed out from the cache stay independent while alive, and a
    block goes back to the cache only when its array is freed."""
    rng = np.random.default_rng(1)
    x, W, y1, g1 = _lstm_step(rng)
    y1_copy, dx1_copy = y1.copy(), g1[0].copy()
    outs = [_lstm_step(np.random.default_rng(i + 10)) for i in range(3)]
    np.testing.assert_array_equal(y1, y1_copy)
    np.testing.assert_array_equal(g1[0], dx1_copy)
    ys = [o[2] for o in outs]
    for i in range(len(ys)):
        for j in range(i + 1, len(ys)):
            assert not np.shares_memory(ys[i], ys[j])
    y1[:] = 7.0
    assert not any((o[2] == 7.0).all() for o in outs)


def test_cache_limit_is_respected(fresh_cache, rng):
    pyrnn.set_cache_limit(0.5)  # below the step's large buffers: they are freed, not held
    _lstm_step(rng)
    assert pyrnn.cache_info()["cached_bytes"] <= 2**19
    assert pyrnn.cache_info()["limit_bytes"] == 2**19


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                      (1e14, ValueError), ("10", TypeError), (None, TypeError), (True, TypeError)])
def test_set_cache_limit_rejects_invalid(bad, exc, fresh_cache):
    with pytest.raises(exc, match="megabytes"):
        pyrnn.set_cache_limit(bad)


@pytest.mark.parametrize("value, limit", [("3", 3 * 2**20), ("1.5", 3 * 2**19), ("0", 0), (" 64 ", 64 * 2**20),
                                          ("-2", 1024 * 2**20), ("lots", 1024 * 2**20), ("64MB", 1024 * 2**20)])
def test_cache_limit_from_environment(value, limit):
    code = "import pyrnn; print(pyrnn.cache_info()['limit_bytes'])"
    env = dict(os.environ, PYRNN_CACHE_MB=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) == limit  # values that are not a number >= 0 keep the default, and say so
    assert ("RuntimeWarning: PYRNN_CACHE_MB=" in out.stderr) == (limit == 1024 * 2**20)


def test_environment_thread_counts_beyond_int_and_probe_limits(tmp_path):
    """OMP_NUM_THREADS past the int range wrapped (2147483648 gave -2147483648 threads); a call's
    threads stop at max(64, 4 x cores); the machine probes refuse thread counts that libgomp could
    not start (it ends the process)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    for value in ("2147483648", "4294967298"):
        cap = max(64, 4 * len(os.sched_getaffinity(0)))
        assert _threads_in_subprocess({**env, "OMP_NUM_THREADS": value}, tmp_path) == cap
    for probe in (lambda: pyrnn.fma_peak_gflops(10**6), lambda: pyrnn.memory_bandwidth(1024, threads=10**6)):
        with pytest.raises(ValueError, match="at most 4096"):
            probe()
    with pytest.raises(ValueError, match="below 2\\*\\*62"):
        pyrnn.memory_bandwidth(2**63)
    with pytest.raises(MemoryError):
        pyrnn.memory_bandwidth(2**60, threads=1)  # before the threads start: no abort


# ---------------------------------------------------------------- PYRNN_PROFILE


def test_profile_prints_phases():
    """Every cell kind, the projected LSTM included, prints each phase of its forward and backward."""
    code = (
        "import numpy as np, pyrnn; from pyrnn import functional as F\n"
        "rng = np.random.default_rng(0)\n"
        "x = rng.standard_normal((5, 3, 8)).astype(np.float32)\n"
        "for cell, opts, P in [('rnn', dict(nonlinearity='tanh'), 0), ('rnn', dict(nonlinearity='relu'), 0),\n"
        "                      ('lstm', {}, 0), ('lstm', {}, 4), ('gru', {}, 0), ('gru', dict(reset_after=False), 0)]:\n"
        "    G = {'rnn': 1, 'lstm': 4, 'gru': 3}[cell]\n"
        "    W_ih = 0.1 * rng.standard_normal((G * 8, 8)).astype(np.float32)\n"
        "    W_hh = 0.1 * rng.standard_normal((G * 8, P or 8)).astype(np.float32)\n"
        "    W_hr = 0.1 * rng.standard_normal((P, 8)).astype(np.float32) if P else None\n"
        "    y, _, _, ws = F.forward(cell, x, None, None, W_ih, W_hh, W_hr=W_hr, **opts)\n"
        "    g = F.backward(ws, np.ones_like(y))\n"
        "    print(cell, opts, P, y.tobytes().hex()[:64], g['x'].sum(), g['W_hh'].sum())\n"
    )
    runs = {}
    for flag in ("0", "1", "false", "Off"):
        env = dict(os.environ, PYRNN_PROFILE=flag)
        runs[flag] = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert not any("pyrnn-profile" in runs[flag].stderr for flag in ("0", "false", "Off"))
    lines = [l for l in runs["1"].stderr.splitlines() if l.startswith("pyrnn-profile")]
    names = ["rnn_tanh", "rnn_relu", "lstm", "lstm+projection", "gru", "gru_reset_before"]
    assert len(lines) == 2 * len(names)
    for name, fwd, bwd in zip(names, lines[::2], lines[1::2]):
        assert f" {name} forward-train B=3 T=5 I=8 H=8" in fwd
        assert f" {name} backward B=3 T=5 I=8 H=8" in bwd
        for phase in ("pack", "input-proj", "loop", "busy", "barrier wait", "total"):
            assert phase in fwd, (name, fwd)
        for phase in ("pack", "loop", "busy", "barrier wait", "dh0", "dx", "dW_ih", "dW_hh", "db", "total"):
            assert phase in bwd, (name, bwd)
    assert runs["0"].stdout == runs["1"].stdout  # profiling changes no result


def test_cell_table_is_the_one_vocabulary():
    """pyrnn._cells, the stub and the extension's enum all come from the C++ cell table."""
    import re

    from pyrnn import _cells, _core

    table = _core.cells()
    assert [name for _, name, _, _ in table] == ["rnn_tanh", "rnn_relu", "rnn_leaky", "lstm", "gru", "gru_reset_before"]
    assert {kind.name for kind, *_ in table} == set(_core.CellKind.__members__)
    with open(os.path.join(os.path.dirname(pyrnn.__file__), "_core.pyi")) as f:
        stub = f.read()
    block = stub[stub.index("class CellKind(Enum):"):].split("\n\n")[0]
    assert set(re.findall(r"^    (\w+) = \.\.\.", block, re.M)) == set(_core.CellKind.__members__)
    assert _cells.GATES == {"rnn": 1, "lstm": 4, "gru": 3}
    for cell in _cells.CELLS.values():
        assert _cells.cell_spec(cell.family, **_cells.cell_options(cell)) is cell
    with pytest.raises(ValueError, match="cell must be 'rnn', 'lstm' or 'gru', got 'elman'"):
        _cells.cell_spec("elman")


def test_memory_bandwidth_is_measured():
    caches = pyrnn.cache_sizes()
    assert all(k in ("L1", "L2", "L3", "L4") and v > 0 for k, v in caches.items())
    one = pyrnn.memory_bandwidth(64 * 1024, threads=1, seconds=0.02)
    assert 0.5 < one < 10_000  # GB/s
    levels = pyrnn.memory_bandwidth(threads=1, seconds=0.01)
    assert list(levels) == ["L1", "L2", "L3", "DRAM"]
    assert all(v["gbs"] > 0 and v["bytes"] > 0 for v in levels.values())
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="size must be a positive number of bytes"):
            pyrnn.memory_bandwidth(bad)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        pyrnn.memory_bandwidth(1024, threads=0)


def test_blocking_uses_this_cpus_caches():
    """The kernels' blocking reads the same cache sizes Linux reports (pyrnn.cache_sizes), within the
    plausible ranges it accepts; show_config prints them and the pyrnn.jax path."""
    from pyrnn._config import cache_sizes

    used, reported = _core.blocking_caches(), cache_sizes()
    limits = {"L1": (16 << 10, 256 << 10), "L2": (128 << 10, 16 << 20), "L3": (1 << 20, 1 << 40)}
    for level, size in used.items():
        lo, hi = limits[level]
        if level in reported and lo <= reported[level] <= hi:
            assert size == reported[level], level
        else:  # not reported (or implausible): the defaults the blocking was first tuned for
            assert size == {"L1": 32 << 10, "L2": 512 << 10, "L3": 32 << 20}[level], level
    out = io.StringIO()
    pyrnn.show_config(file=out)
    assert "blocking for:" in out.getvalue() and "pyrnn.jax:" in out.getvalue()
