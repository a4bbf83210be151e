"""show_config, ISA selection (CPUID + PYRNN_ISA) and thread control."""

import io
import os
import subprocess
import sys

import pytest

import pyrnn
from pyrnn import _core


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
    return "avx2" if "avx2" in flags else "scalar"


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


def test_pyrnn_isa_portable_alias(monkeypatch):
    monkeypatch.setenv("PYRNN_ISA", "portable")
    assert pyrnn.isa() == "scalar"


def test_pyrnn_isa_invalid_name(monkeypatch):
    monkeypatch.setenv("PYRNN_ISA", "avx1024")
    with pytest.raises(ValueError, match="PYRNN_ISA must be one of 'avx512', 'avx2', 'scalar'"):
        pyrnn.isa()


def test_pyrnn_isa_above_cpu_is_an_error(monkeypatch):
    levels = ["scalar", "avx2", "avx512"]
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
                                      ("2", TypeError), (None, TypeError)])
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
