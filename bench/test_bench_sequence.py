"""pytest-benchmark suites for the sequence kernels, grouped by cell and mode.

Run: python -m pytest bench/ --benchmark-only   (CI runs them with
--benchmark-disable, once each, so they stay correct). Each benchmark first
checks the kernel against the NumPy reference on a smaller twin of its shape.
"""

import numpy as np
import pytest

from pyrnn import functional as F
from pyrnn import reference as R
from pyrnn.testing import VARIANTS, assert_close, make_params, random_cotangents, run_backward, run_forward

# (variant, B, T, H) with I = H: the standard suite's single-layer shapes.
SHAPES = [
    ("lstm", 64, 50, 512),
    ("lstm", 16, 25, 1024),
    ("lstm", 32, 100, 256),
    ("lstm", 1, 150, 256),
    ("lstm", 4, 25, 1024),
    ("gru", 32, 100, 256),
    ("gru", 64, 50, 512),
    ("gru", 1, 100, 512),
    ("gru_v3", 32, 100, 256),
    ("rnn_tanh", 16, 50, 1760),
]


def _ids(shape):
    v, B, T, H = shape
    return f"{v}-B{B}-T{T}-H{H}"


def _check_twin(variant, B, T, H):
    """Kernel vs reference (float32 kernel, float64 reference) on a reduced shape."""
    rng = np.random.default_rng(0)
    b, t, h = min(B, 5), min(T, 6), min(H, 37)
    p = make_params(rng, VARIANTS[variant][0], T=t, B=b, I=h, H=h, dtype=np.float32)
    outs, ws = run_forward(F, variant, p)
    ref, cache = run_forward(R, variant, {k: v.astype(np.float64) for k, v in p.items()})
    for k in outs:
        assert_close(outs[k], ref[k], np.float32, k)
    cot = random_cotangents(rng, outs)
    grads = run_backward(F, variant, ws, cot)
    ref_grads = run_backward(R, variant, cache, {k: v.astype(np.float64) for k, v in cot.items()})
    for k, g in grads.items():
        assert_close(g, ref_grads[k], np.float32, "d" + k)


def _full(variant, B, T, H):
    rng = np.random.default_rng(1)
    p = make_params(rng, VARIANTS[variant][0], T=T, B=B, I=H, H=H, dtype=np.float32)
    scale = np.float32(1.0 / np.sqrt(H))  # PyTorch's init range keeps the gates off saturation
    for k in ("W_ih", "W_hh", "b_ih", "b_hh"):
        p[k] = p[k] * scale
    return p


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_forward_inference(benchmark, shape):
    variant = shape[0]
    benchmark.group = f"{VARIANTS[variant][0]} forward"
    _check_twin(*shape)
    p = _full(*shape)
    outs, ws = benchmark(run_forward, F, variant, p, training=False)
    assert ws is None and np.all(np.isfinite(outs["y"]))


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_forward_backward(benchmark, shape):
    variant = shape[0]
    benchmark.group = f"{VARIANTS[variant][0]} forward+backward"
    _check_twin(*shape)
    p = _full(*shape)
    dy = np.ones((shape[2], shape[1], shape[3]), np.float32)

    def train_step():
        _, ws = run_forward(F, variant, p)
        return run_backward(F, variant, ws, {"y": dy})

    grads = benchmark(train_step)
    assert all(np.all(np.isfinite(g)) for g in grads.values() if g is not None)
