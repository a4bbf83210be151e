"""pytest-benchmark suites for the sequence kernels, grouped by cell and mode.

Run: python -m pytest bench/ --benchmark-only   (CI runs them with
--benchmark-disable, once each, so they stay correct). Each benchmark first
checks the kernel against the NumPy reference on a smaller twin of its shape.
"""

import dataclasses

import numpy as np
import pytest

from pyrnn import functional as F
from pyrnn import reference as R
from pyrnn.bench.cases import SUITE, Case
from pyrnn.testing import assert_close, make_params, random_cotangents, run_backward, run_forward

# The standard suite's single-layer, unidirectional shapes, and its first GRU shape with reset_after=False.
CASES = [c for c in SUITE if c.layers == 1 and not c.bidirectional]
CASES.append(dataclasses.replace(next(c for c in CASES if c.variant == "gru"), variant="gru_reset_before"))


def _id(case):
    i = f"-I{case.I}" if case.I not in (None, case.H) else ""
    return f"{case.variant}-B{case.B}-T{case.T}{i}-H{case.H}"


def _check_twin(case):
    """Kernel vs reference (float32 kernel, float64 reference) on a reduced shape."""
    rng = np.random.default_rng(0)
    b, t, i, h = min(case.B, 5), min(case.T, 6), min(case.input_size, 37), min(case.H, 37)
    p = make_params(rng, case.cell, T=t, B=b, I=i, H=h, dtype=np.float32)
    outs, ws = run_forward(F, case.variant, p)
    ref, cache = run_forward(R, case.variant, {k: v.astype(np.float64) for k, v in p.items()})
    for k in outs:
        assert_close(outs[k], ref[k], np.float32, k)
    cot = random_cotangents(rng, outs)
    grads = run_backward(F, case.variant, ws, cot)
    ref_grads = run_backward(R, case.variant, cache, {k: v.astype(np.float64) for k, v in cot.items()})
    for k, g in grads.items():
        assert_close(g, ref_grads[k], np.float32, "d" + k)


def _full(case):
    rng = np.random.default_rng(1)
    p = make_params(rng, case.cell, T=case.T, B=case.B, I=case.input_size, H=case.H, dtype=np.float32)
    scale = np.float32(1.0 / np.sqrt(case.H))  # PyTorch's init range keeps the gates off saturation
    for k in ("W_ih", "W_hh", "b_ih", "b_hh"):
        p[k] = p[k] * scale
    return p


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_forward_inference(benchmark, case: Case):
    benchmark.group = f"{case.cell} forward"
    _check_twin(case)
    p = _full(case)
    outs, ws = benchmark(run_forward, F, case.variant, p, training=False)
    assert ws is None and np.all(np.isfinite(outs["y"]))


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_forward_backward(benchmark, case: Case):
    benchmark.group = f"{case.cell} forward+backward"
    _check_twin(case)
    p = _full(case)
    dy = np.ones((case.T, case.B, case.H), np.float32)

    def train_step():
        _, ws = run_forward(F, case.variant, p)
        return run_backward(F, case.variant, ws, {"y": dy})

    grads = benchmark(train_step)
    assert all(np.all(np.isfinite(g)) for g in grads.values() if g is not None)
