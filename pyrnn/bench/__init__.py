"""Benchmark pyrnn against PyTorch (and, with ``--peers``, ONNX Runtime, JAX,
PyTorch's dynamic int8 and the NumPy reference).

Run ``python -m pyrnn.bench`` (the full suite, a few minutes) or
``python -m pyrnn.bench --quick`` (T capped, fewer repetitions, about a
minute on a 2-core machine); ``--help`` lists the options.

Every case is timed in fp32 for forward (inference) and forward+backward
(training, dy = ones) at each requested thread count, with the same inputs,
weights and thread count for every framework. Each peer's output (y, and dx
for forward+backward) is compared with pyrnn's; a disagreement is flagged in
the table and makes the exit status 1. ``--precision int8,bf16`` also times
pyrnn's inference with its weights packed in int8 or bf16 (in pyrnn's worker),
against the best fp32 peer and PyTorch's dynamic int8, with its error against
pyrnn's fp32 output.

The pipeline: case table (``cases.SUITE``) -> one worker process per framework
and thread count, pinned to that many cores (``worker``), which rebuilds the
inputs (``cases.build_inputs``), makes the framework's runner
(``runner.RUNNERS``; the new peers in ``peers``), keeps one call's outputs and
times the calls (``runner.time_calls``) -> correctness check and rows
(``runner.run_suite``) -> report (``report``: text table, markdown, plot;
``cli``: JSON).
"""

from .cases import (PROFILES, SCALING_SUITE, SUITE, SUITES, Case, Profile, build_inputs, case_gflop, scale_case,
                    scaling_threads, select_cases)
from .cli import main
from .runner import RUNNERS, Unavailable, reference_runner, run_suite, time_calls, training_memory

__all__ = [
    "Case", "Profile", "SUITE", "SCALING_SUITE", "SUITES", "PROFILES", "scale_case", "select_cases",
    "scaling_threads", "build_inputs", "case_gflop",
    "RUNNERS", "Unavailable", "reference_runner", "run_suite", "time_calls", "training_memory",
    "main",
]
