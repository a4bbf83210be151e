"""Benchmark pyrnn against PyTorch (and optionally the NumPy reference).

Run ``python -m pyrnn.bench`` (the full suite, a few minutes) or
``python -m pyrnn.bench --quick`` (T capped, fewer repetitions, about a
minute on a 2-core machine); ``--help`` lists the options.

Every case is timed in fp32 for forward (inference) and forward+backward
(training, dy = ones) at each requested thread count, with the same inputs,
weights and thread count for every framework. Before a case is timed, each
peer's output (y, and dx for forward+backward) is compared with pyrnn's; a
disagreement is flagged in the table and makes the exit status 1.

The pipeline: case table (``SUITE``) -> inputs (``build_inputs``) -> one
runner factory per framework (``RUNNERS``) -> correctness check -> timing
(``time_calls``, frameworks interleaved) -> report (text table, JSON, markdown, plot).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import sys
import textwrap
import time
from typing import Callable, Optional

import numpy as np

import pyrnn
from pyrnn import functional as F
from pyrnn import reference as R
from pyrnn.testing import NUM_GATES, VARIANTS, run_backward, run_forward

CELLS = ("lstm", "gru", "rnn")
MODES = ("fwd", "fwdbwd")
PEERS = ("torch", "reference")  # frameworks timed against pyrnn, in column order
PEER_TITLES = {"torch": "PyTorch", "reference": "NumPy reference"}
PEER_SHORT = {"torch": "torch", "reference": "ref"}  # table column headers
CHECK_TOL = 1e-3  # max |pyrnn - peer| / max(1, max |peer|), for y and dx
REFERENCE_MAX_S = 3.0  # skip the reference where one call is estimated to take longer
PLOT_HINT = 'pip install "pyrnn[plot]"'


# --------------------------------------------------------------------------
# The case table
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark shape. ``variant`` is a key of pyrnn.testing.VARIANTS.

    impl: "functional" runs pyrnn.functional, one call per layer and direction
    (layers chained, directions concatenated, as a stacked layer does);
    "layer" runs pyrnn.LSTM / GRU / RNN, looked up when the case runs and
    reported as not available while pyrnn lacks it.
    """

    variant: str
    B: int
    T: int
    H: int
    I: Optional[int] = None  # noqa: E741  (None: I = H)
    layers: int = 1
    bidirectional: bool = False
    lengths: Optional[tuple] = None  # (lo, hi): lengths drawn uniformly from [lo, hi]
    impl: str = "functional"
    name: str = ""

    @property
    def cell(self) -> str:
        return VARIANTS[self.variant][0]

    @property
    def input_size(self) -> int:
        return self.H if self.I is None else self.I

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def label(self) -> str:
        parts = [self.name or self.variant]
        if self.layers > 1:
            parts.append(f"{self.layers}L")
        if self.bidirectional:
            parts.append("bi")
        parts.append(f"B={self.B} T={self.T}")
        if self.I is not None and self.I != self.H:
            parts.append(f"I={self.I}")
        parts.append(f"H={self.H}")
        if self.lengths:
            parts.append(f"len[{self.lengths[0]},{self.lengths[1]}]*")
        return " ".join(parts)


# The standard suite (I = H unless given). To add a case, add a line; cases
# with impl="layer" need pyrnn.LSTM / GRU / RNN and are skipped without them.
SUITE = (
    Case("lstm", B=64, T=50, H=512),
    Case("lstm", B=16, T=25, H=1024),
    Case("lstm", B=32, T=100, H=256),
    Case("lstm", B=1, T=150, H=256),
    Case("lstm", B=4, T=25, H=1024),
    Case("gru", B=32, T=100, H=256),
    Case("gru", B=64, T=50, H=512),
    Case("gru", B=1, T=100, H=512),
    Case("rnn_tanh", B=16, T=50, H=1760),
    Case("lstm", B=32, T=100, H=256, layers=2, bidirectional=True, lengths=(50, 100), impl="layer"),
    # Two chained pyrnn.functional.lstm_forward calls (impl="layer" would use pyrnn.LSTM(65, 128, 2)).
    Case("lstm", B=50, T=50, H=128, I=65, layers=2, name="char-lstm"),
)

# Multi-core scaling (--suite scaling): one large shape per gated cell, timed at
# 1, 2, 4, ... threads up to the machine's cores.
SCALING_SUITE = (
    Case("lstm", B=128, T=50, H=1024),
    Case("gru", B=128, T=50, H=1024),
)
SUITES = {"standard": SUITE, "scaling": SCALING_SUITE}


@dataclasses.dataclass(frozen=True)
class Profile:
    """How much to run: shape caps and the repetition policy."""

    name: str
    description: str
    max_T: Optional[int] = None
    max_B: Optional[int] = None
    max_H: Optional[int] = None
    warmup: int = 1
    min_reps: int = 3
    max_reps: int = 15
    budget_s: float = 1.0  # stop repeating after this long (once min_reps are done)
    peak_seconds: float = 0.5


PROFILES = {
    "full": Profile("full", "full suite"),
    "quick": Profile("quick", "QUICK suite: T capped at 20, at most 5 repetitions (not comparable with the "
                     "full suite)", max_T=20, max_reps=5, budget_s=0.3),
    # hidden, for tests: tiny shapes, no time spent
    "tiny": Profile("tiny", "TINY suite (smoke test only, meaningless numbers)", max_T=4, max_B=3, max_H=8,
                    max_reps=3, budget_s=0.0, peak_seconds=0.02),
}


def _cap(value, cap):
    return value if cap is None else min(value, cap)


def scale_case(case: Case, profile: Profile) -> Case:
    """``case`` with its shape capped by the profile (lengths scaled with T)."""
    T = _cap(case.T, profile.max_T)
    H = _cap(case.H, profile.max_H)
    lengths = case.lengths
    if lengths is not None and T != case.T:
        lengths = tuple(max(1, min(T, round(v * T / case.T))) for v in lengths)
    I = None if case.I is None else _cap(case.I, profile.max_H)  # noqa: E741
    return dataclasses.replace(case, B=_cap(case.B, profile.max_B), T=T, H=H, I=I, lengths=lengths)


def select_cases(profile: Profile, cells, suite: str = "standard") -> list:
    return [scale_case(c, profile) for c in SUITES[suite] if c.cell in cells]


def scaling_threads(cores: int) -> list:
    """1, 2, 4, ... below ``cores``, then ``cores``."""
    out, t = [], 1
    while t < cores:
        out.append(t)
        t *= 2
    return out + [cores]


# --------------------------------------------------------------------------
# Inputs and flop counts
# --------------------------------------------------------------------------


def param_names(layer: int, direction: int) -> dict:
    """PyTorch's parameter names for one layer and direction: {"weight_ih": "weight_ih_l0", ...}."""
    suffix = f"_l{layer}" + ("_reverse" if direction else "")
    return {k: f"{k}{suffix}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


def layer_input_size(case: Case, layer: int) -> int:
    return case.input_size if layer == 0 else case.H * case.directions


def build_inputs(case: Case, seed: int = 0) -> dict:
    """x [T, B, I], lengths (or None), dy = ones and the weights, all fp32 (PyTorch's init range)."""
    rng = np.random.default_rng(seed)
    G, H = NUM_GATES[case.cell], case.H
    bound = 1.0 / math.sqrt(H)
    params = {}
    for layer in range(case.layers):
        shapes = {"weight_ih": (G * H, layer_input_size(case, layer)), "weight_hh": (G * H, H),
                  "bias_ih": (G * H,), "bias_hh": (G * H,)}
        for d in range(case.directions):
            for key, name in param_names(layer, d).items():
                params[name] = rng.uniform(-bound, bound, shapes[key]).astype(np.float32)
    lengths = None
    if case.lengths is not None:
        lengths = rng.integers(case.lengths[0], case.lengths[1] + 1, case.B).astype(np.int64)
    return {
        "x": rng.standard_normal((case.T, case.B, case.input_size), dtype=np.float32),
        "lengths": lengths,
        "dy": np.ones((case.T, case.B, case.directions * H), np.float32),
        "params": params,
    }


def case_gflop(case: Case, lengths, mode: str) -> float:
    """2*N*G*H*(I+H) per layer and direction, N = B*T or sum(lengths); x3 for forward+backward."""
    steps = case.B * case.T if lengths is None else int(np.sum(lengths))
    G, H = NUM_GATES[case.cell], case.H
    flops = 0
    for layer in range(case.layers):
        flops += case.directions * 2 * steps * G * H * (layer_input_size(case, layer) + H)
    return flops * (3 if mode == "fwdbwd" else 1) / 1e9


# --------------------------------------------------------------------------
# Runners: make(case, inputs, mode) -> callable() returning (y, dx or None)
# --------------------------------------------------------------------------


class Unavailable(Exception):
    """A framework or feature a case needs is missing; the case is reported, not run."""


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


FUNCTIONAL_ARGS = {"W_ih": "weight_ih", "W_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}


def _functional_forward(module, case, inputs, training):
    """All layers and directions through ``module`` (pyrnn.functional or pyrnn.reference)."""
    h, caches = inputs["x"], []
    for layer in range(case.layers):
        outs, layer_caches = [], []
        for d in range(case.directions):
            names = param_names(layer, d)
            p = {arg: inputs["params"][names[key]] for arg, key in FUNCTIONAL_ARGS.items()}
            out, cache = run_forward(module, case.variant, dict(p, x=h), lengths=inputs["lengths"],
                                     reverse=bool(d), training=training)
            outs.append(out["y"])
            layer_caches.append(cache)
        h = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=-1)
        caches.append(layer_caches)
    return h, caches


def _functional_backward(module, case, caches, dy):
    for layer_caches in reversed(caches):
        parts = np.split(dy, len(layer_caches), axis=-1) if len(layer_caches) > 1 else [dy]
        dy = sum(run_backward(module, case.variant, c, {"y": g})["x"] for c, g in zip(layer_caches, parts))
    return dy


def functional_runner(module):
    """Runner factory for pyrnn.functional or pyrnn.reference (same API)."""

    def make(case, inputs, mode):
        if mode == "fwd":
            return lambda: (_functional_forward(module, case, inputs, False)[0], None)

        def train_step():
            y, caches = _functional_forward(module, case, inputs, True)
            return y, _functional_backward(module, case, caches, inputs["dy"])

        return train_step

    return make


def layer_runner(case, inputs, mode):
    """pyrnn.LSTM / GRU / RNN (PyTorch-compatible layers), looked up lazily."""
    cls = getattr(pyrnn, case.cell.upper(), None)
    if cls is None:
        raise Unavailable(f"needs pyrnn.{case.cell.upper()}")
    layer = cls(case.input_size, case.H, case.layers, bidirectional=case.bidirectional,
                **VARIANTS[case.variant][1])
    layer.load_state_dict(inputs["params"])
    layer.train(mode == "fwdbwd")
    lengths = {} if inputs["lengths"] is None else {"lengths": inputs["lengths"]}
    if mode == "fwd":
        return lambda: (layer(inputs["x"], **lengths)[0], None)

    def train_step():
        layer.zero_grad()
        y, _ = layer(inputs["x"], **lengths)
        return y, layer.backward(inputs["dy"])[0]

    return train_step


def pyrnn_runner(case, inputs, mode):
    make = layer_runner if case.impl == "layer" else functional_runner(F)
    return make(case, inputs, mode)


# torch.nn module and extra constructor arguments per variant (variants missing here have no PyTorch peer)
TORCH_MODULES = {
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}


def torch_runner(case, inputs, mode):
    torch = _import_torch()
    if torch is None:
        raise Unavailable("torch not importable")
    if case.variant not in TORCH_MODULES:
        raise Unavailable(f"no PyTorch {case.variant}")
    cls_name, kwargs = TORCH_MODULES[case.variant]
    module = getattr(torch.nn, cls_name)(case.input_size, case.H, case.layers, bidirectional=case.bidirectional,
                                         **kwargs)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.from_numpy(inputs["params"][name]))
    lengths = None if inputs["lengths"] is None else torch.from_numpy(inputs["lengths"])
    rnn_utils = torch.nn.utils.rnn

    def forward(x):
        if lengths is None:
            return module(x)[0]
        packed = rnn_utils.pack_padded_sequence(x, lengths, enforce_sorted=False)
        return rnn_utils.pad_packed_sequence(module(packed)[0], total_length=case.T)[0]

    if mode == "fwd":
        x = torch.from_numpy(inputs["x"])

        def infer():
            with torch.no_grad():
                return forward(x), None

        return infer

    x = torch.from_numpy(inputs["x"].copy()).requires_grad_(True)
    dy = torch.from_numpy(inputs["dy"])

    def train_step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        y = forward(x)
        y.backward(dy)
        return y.detach(), x.grad

    return train_step


def reference_estimate_s(case, lengths, mode):
    """A pessimistic guess of one NumPy reference call: 20 GFLOP/s plus 1 ms per time step."""
    steps = case.T * case.layers * case.directions * (2 if mode == "fwdbwd" else 1)
    return case_gflop(case, lengths, mode) / 20.0 + steps * 1e-3


def reference_runner(case, inputs, mode):
    estimate = reference_estimate_s(case, inputs["lengths"], mode)
    if estimate > REFERENCE_MAX_S:
        raise Unavailable(f"skipped: ~{estimate:.0f} s per call")
    return functional_runner(R)(case, inputs, mode)


RUNNERS = {"pyrnn": pyrnn_runner, "torch": torch_runner, "reference": reference_runner}


# --------------------------------------------------------------------------
# Checking and timing
# --------------------------------------------------------------------------


def _to_numpy(a):
    return a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)


def max_rel_error(actual, expected) -> float:
    actual, expected = _to_numpy(actual), _to_numpy(expected)
    if actual.shape != expected.shape:
        return math.inf
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    return float(np.max(np.abs(actual - expected))) / scale if expected.size else 0.0


def check_case(runners: dict, modes) -> dict:
    """{peer: {"y": err, "dx": err}} comparing each peer's outputs with pyrnn's (max over modes)."""
    errors: dict[str, dict[str, float]] = {}
    for mode in modes:
        y, dx = runners["pyrnn"][mode]()
        for peer in PEERS:
            run = runners[peer].get(mode)
            if not callable(run):
                continue
            py, pdx = run()
            errs = errors.setdefault(peer, {})
            errs["y"] = max(errs.get("y", 0.0), max_rel_error(y, py))
            if dx is not None:
                errs["dx"] = max(errs.get("dx", 0.0), max_rel_error(dx, pdx))
    return errors


def check_summary(errors: dict) -> str:
    bad = [f"{peer} {k} {e:.1e}" for peer, errs in errors.items() for k, e in errs.items() if not e <= CHECK_TOL]
    return "MISMATCH " + ", ".join(bad) if bad else "ok"


def time_calls(fns: dict, profile: Profile) -> dict:
    """{name: (median seconds, repetitions)} for each callable, after warm-up;
    a callable that raises gets its exception instead and is dropped from the
    remaining rounds, so the others keep their timings.

    The callables are timed in turn, one repetition of each per round, so a
    burst of load from elsewhere on a shared machine slows all of them alike
    instead of one framework's whole series. Rounds go on until max_reps, or
    until min_reps are done and the time budget (per callable) is spent.
    """
    out, live = {}, dict(fns)

    def call(name, fn):
        try:
            fn()
            return True
        except Exception as e:  # reported in the row, the other frameworks go on
            out[name] = e
            del live[name]
            return False

    for name, fn in list(live.items()):
        for _ in range(profile.warmup):
            if not call(name, fn):
                break
    times: dict[str, list[float]] = {name: [] for name in live}
    start, budget = time.perf_counter(), profile.budget_s * max(1, len(live))
    rounds = 0
    while live and rounds < profile.max_reps and (rounds < profile.min_reps
                                                  or time.perf_counter() - start < budget):
        for name, fn in list(live.items()):
            t0 = time.perf_counter()
            if call(name, fn):
                times[name].append(time.perf_counter() - t0)
        rounds += 1
    for name in live:
        out[name] = (statistics.median(times[name]), len(times[name]))
    return out


def measure_peaks(threads, profile: Profile) -> dict:
    """FMA peak per thread count: the best of five short measurements (a peak
    is what the machine can do, so a burst of load elsewhere must not lower it)."""
    return {t: max(pyrnn.fma_peak_gflops(t, profile.peak_seconds / 5) for _ in range(5)) for t in threads}


class ThreadSetter:
    """Sets pyrnn's and PyTorch's thread counts together; restores both on exit."""

    def __init__(self):
        self.torch = _import_torch()
        self.saved = (pyrnn.thread_setting(), self.torch.get_num_threads() if self.torch else None)

    def set(self, n):
        pyrnn.set_num_threads(n)
        if self.torch is not None:
            self.torch.set_num_threads(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pyrnn.set_num_threads(self.saved[0])
        if self.torch is not None:
            self.torch.set_num_threads(self.saved[1])


def _make_runners(case, inputs, modes, peers):
    """{framework: {mode: callable or the reason it is unavailable}}."""
    runners = {}
    for fw in ("pyrnn",) + PEERS:
        runners[fw] = {}
        for mode in modes:
            if fw != "pyrnn" and fw not in peers:
                runners[fw][mode] = None
                continue
            try:
                runners[fw][mode] = RUNNERS[fw](case, inputs, mode)
            except Unavailable as e:
                runners[fw][mode] = str(e)
            except Exception as e:  # e.g. an API that changed: report it, run the other cases
                runners[fw][mode] = f"error: {type(e).__name__}: {e}"
    return runners


def _base_row(case, inputs, mode, threads):
    return {
        "case": case.label, "variant": case.variant, "cell": case.cell, "B": case.B, "T": case.T,
        "I": case.input_size, "H": case.H, "layers": case.layers, "bidirectional": case.bidirectional,
        "lengths": None if inputs["lengths"] is None else [int(v) for v in inputs["lengths"]],
        "impl": case.impl, "mode": mode, "threads": threads,
        "gflop": case_gflop(case, inputs["lengths"], mode),
        "status": "ok", "check": None, "check_errors": None,
        "pyrnn_ms": None, "pyrnn_gflops": None, "pct_peak": None, "pyrnn_reps": None,
        **{f"{p}_{k}": None for p in PEERS for k in ("ms", "gflops", "ratio", "note")},
    }


def run_suite(cases, threads, modes, peers, profile, peaks, log=None) -> list:
    log = sys.stderr if log is None else log
    rows, total, done = [], len(cases) * len(threads) * len(modes), 0
    with ThreadSetter() as setter:
        for case in cases:
            inputs = build_inputs(case)
            runners = _make_runners(case, inputs, modes, peers)
            missing = next((r for r in runners["pyrnn"].values() if not callable(r)), None)
            if missing is not None:  # pyrnn cannot run this case: one row for the case
                done += len(threads) * len(modes)
                status = missing if missing.startswith("error") else f"not available ({missing})"
                print(f"[{done}/{total}] {case.label}: {status}", file=log, flush=True)
                rows.append(dict(_base_row(case, inputs, "-", None), status=status))
                continue
            setter.set(threads[-1])
            errors: dict | None
            try:
                checked = check_case(runners, modes)
            except Exception as e:  # a broken runner must not stop the suite
                errors, check = None, f"ERROR {type(e).__name__}: {e}"
            else:
                errors, check = checked, check_summary(checked)
            for t in threads:
                setter.set(t)
                for mode in modes:
                    done += 1
                    print(f"[{done}/{total}] {case.label} {mode} {t} thread{'s' if t > 1 else ''} ...",
                          file=log, flush=True)
                    row = dict(_base_row(case, inputs, mode, t), check=check, check_errors=errors)
                    try:
                        _time_row(row, runners, mode, profile, peaks[t])
                    except Exception as e:
                        row["status"] = f"error: {type(e).__name__}: {e}"
                    rows.append(row)
    return rows


def _time_row(row, runners, mode, profile, peak):
    fns = {"pyrnn": runners["pyrnn"][mode]}
    for peer in PEERS:
        run = runners[peer][mode]
        if callable(run):
            fns[peer] = run
        else:
            row[f"{peer}_note"] = run
    timed = time_calls(fns, profile)
    if isinstance(timed["pyrnn"], Exception):
        raise timed["pyrnn"]
    seconds, reps = timed["pyrnn"]
    row.update(pyrnn_ms=seconds * 1e3, pyrnn_gflops=row["gflop"] / seconds, pyrnn_reps=reps,
               pct_peak=100.0 * row["gflop"] / seconds / peak)
    for peer, result in timed.items():
        if peer == "pyrnn":
            continue
        if isinstance(result, Exception):
            row[f"{peer}_note"] = f"error: {type(result).__name__}: {result}"
            continue
        peer_s = result[0]
        row.update({f"{peer}_ms": peer_s * 1e3, f"{peer}_gflops": row["gflop"] / peer_s,
                    f"{peer}_ratio": peer_s / seconds})


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average():
    """1-minute load average (None where unknown): a busy machine makes the numbers unreliable."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _fmt(value, spec, suffix=""):
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table_columns(peers):
    """(header, row -> str) for the table; peer columns only for the peers that ran."""
    columns = [
        ("case", lambda r: r["case"]),
        ("mode", lambda r: r["mode"]),
        ("thr", lambda r: _fmt(r["threads"], "d")),
        ("pyrnn ms", lambda r: _fmt(r["pyrnn_ms"], ".3f")),
        ("GFLOP/s", lambda r: _fmt(r["pyrnn_gflops"], ".1f")),
        ("% peak", lambda r: _fmt(r["pct_peak"], ".1f", "%")),
    ]
    for peer in peers:
        columns += [(f"{PEER_SHORT[peer]} ms", lambda r, p=peer: _fmt(r[f"{p}_ms"], ".3f")),
                    (f"{PEER_SHORT[peer]}/pyrnn", lambda r, p=peer: _fmt(r[f"{p}_ratio"], ".2f", "x"))]
    columns.append(("check", lambda r: r["check"] if r["status"] == "ok" else r["status"]))
    return columns


def scaling_columns(peers, base):
    """Columns of the speed-up table; base[(case, mode, framework)] is the time at the fewest threads."""

    def speedup(r, fw):
        b = base.get((r["case"], r["mode"], fw))
        return None if b is None or r[f"{fw}_ms"] is None else b / r[f"{fw}_ms"]

    columns = [
        ("case", lambda r: r["case"]),
        ("mode", lambda r: r["mode"]),
        ("thr", lambda r: _fmt(r["threads"], "d")),
        ("pyrnn ms", lambda r: _fmt(r["pyrnn_ms"], ".3f")),
        ("pyrnn speed-up", lambda r: _fmt(speedup(r, "pyrnn"), ".2f", "x")),
        ("% peak", lambda r: _fmt(r["pct_peak"], ".1f", "%")),
    ]
    for peer in peers:
        columns += [(f"{PEER_SHORT[peer]} ms", lambda r, p=peer: _fmt(r[f"{p}_ms"], ".3f")),
                    (f"{PEER_SHORT[peer]} speed-up", lambda r, p=peer: _fmt(speedup(r, p), ".2f", "x")),
                    (f"{PEER_SHORT[peer]}/pyrnn", lambda r, p=peer: _fmt(r[f"{p}_ratio"], ".2f", "x"))]
    return columns


def scaling_table(rows, peers, markdown=False) -> str:
    """Rows grouped by case and mode, thread counts ascending, with speed-ups."""
    rows = [r for r in rows if r["status"] == "ok" and r["pyrnn_ms"] is not None]
    first: dict[str, int] = {}
    for r in rows:
        first.setdefault(r["case"], len(first))
    rows.sort(key=lambda r: (first[r["case"]], MODES.index(r["mode"]), r["threads"]))
    base: dict[tuple, float] = {}
    for r in rows:  # fewest threads first
        for fw in ("pyrnn",) + tuple(peers):
            if r[f"{fw}_ms"] is not None:
                base.setdefault((r["case"], r["mode"], fw), r[f"{fw}_ms"])
    return format_table(rows, peers, markdown, scaling_columns(peers, base))


LEFT_COLUMNS = ("case", "mode", "check")


def format_table(rows, peers, markdown=False, columns=None) -> str:
    columns = table_columns(peers) if columns is None else columns
    cells = [[h for h, _ in columns]] + [[fn(r) for _, fn in columns] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        left = {i for i, (h, _) in enumerate(columns) if h in LEFT_COLUMNS}
        align = [":---" if i in left else "---:" for i in range(len(columns))]
        lines.insert(1, "|" + "|".join(align) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    left = {i for i, (h, _) in enumerate(columns) if h in LEFT_COLUMNS}

    def line(row):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def header_lines(meta) -> list:
    peaks = ", ".join(f"{t} thread{'s' if t > 1 else ''} {p:.1f} GFLOP/s" for t, p in meta["peak_gflops"].items())
    torch_line = (f"PyTorch {meta['torch']} (same inputs, weights and thread count)" if meta["torch"]
                  else "PyTorch not importable: its columns show '-'")
    return [
        f"pyrnn {meta['pyrnn']['version']} benchmark, {meta['suite']}",
        f"machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores (load average "
        f"{meta['machine']['load_average_at_start']} at start); ISA {meta['pyrnn']['isa_selected']}; fp32; "
        f"threads {','.join(map(str, meta['threads']))}; {meta['date']}",
        torch_line,
        f"measured FMA peak: {peaks}",
        f"command: {meta['command']}",
    ]


def footnotes(rows, meta) -> list:
    notes = [
        "GFLOP/s counts 2*N*G*H*(I+H) per layer and direction (G = 4 LSTM, 3 GRU, 1 RNN; N = B*T), "
        "x3 for fwdbwd; % peak is of the measured FMA peak at that thread count.",
        "fwd = inference (training=False; torch under no_grad); fwdbwd = forward(training=True) + backward "
        "with dy = ones (torch: y.backward(dy), x requiring grad). Times are medians after warm-up, the "
        "frameworks timed in turn (one repetition each per round); the FMA peak is the best of 5 measurements.",
        "X/pyrnn = X ms / pyrnn ms: above 1 means pyrnn is faster.",
        "check: each peer's y (and dx for fwdbwd) vs pyrnn's, max abs diff / max(1, max|peer|) "
        f"< {CHECK_TOL:g}.",
    ]
    if any(r["lengths"] for r in rows):
        notes.append("* variable lengths: N = sum of lengths (valid steps only); torch gets a PackedSequence "
                     "(pack_padded_sequence(enforce_sorted=False), padded back with pad_packed_sequence).")
    for case, impl in sorted({(r["case"], r["impl"]) for r in rows if r["layers"] > 1 or r["bidirectional"]}):
        how = ("pyrnn.LSTM/GRU/RNN layer" if impl == "layer"
               else "chained pyrnn.functional calls (one per layer and direction)")
        notes.append(f"{case}: pyrnn runs {how}.")
    load, cores = meta["machine"].get("load_average_at_end"), meta["machine"]["cores"]
    if load is not None and load > cores + 1:
        notes.append(f"WARNING: the machine was busy (1-min load average {load} at the end on {cores} cores, this "
                     f"run using at most {max(meta['threads'])}): other processes competed; timings are unreliable.")
    mem = meta.get("memory")
    if mem:
        fmt = lambda v: "failed" if v is None else f"{v:.0f} MiB"
        notes.append(f"memory, one training step of {mem['shape']} (peak RSS growth in a fresh process): pyrnn "
                     f"{fmt(mem.get('pyrnn'))}, PyTorch {fmt(mem.get('torch')) if 'torch' in mem else '-'}; "
                     f"x, y, 4 gates and c per step alone are {mem['saved_activations_mib']:.0f} MiB.")
    if "reference" in meta["peers"]:
        notes.append("reference = pyrnn.reference (NumPy, fp32); its BLAS threads are NumPy's own, not --threads.")
    for r in rows:
        for peer in meta["peers"]:
            if peer == "torch" and meta["torch"] is None:
                continue  # said once in the header
            if r[f"{peer}_note"] and r["mode"] == meta["modes"][0] and r["threads"] == meta["threads"][0]:
                notes.append(f"{r['case']}: {PEER_TITLES[peer]} not run ({r[f'{peer}_note']}).")
    return notes


def show_scaling(meta) -> bool:
    return meta["suite"].startswith("scaling") or len(meta["threads"]) > 2


SCALING_TITLE = "Speed-up over the fewest threads (same case and mode):"


def render_text(rows, meta) -> str:
    notes = [textwrap.fill(n, 110, initial_indent="  ", subsequent_indent="    ") for n in footnotes(rows, meta)]
    scaling = ["", SCALING_TITLE, scaling_table(rows, meta["peers"])] if show_scaling(meta) else []
    return "\n".join(header_lines(meta) + ["", format_table(rows, meta["peers"])] + scaling + [""] + notes)


def render_markdown(rows, meta) -> str:
    head = header_lines(meta)
    scaling = (["", SCALING_TITLE, "", scaling_table(rows, meta["peers"], markdown=True)]
               if show_scaling(meta) else [])
    return "\n".join([f"## {head[0]}", "", *(f"- {line}" for line in head[1:]), "",
                      format_table(rows, meta["peers"], markdown=True), *scaling, "",
                      *(f"- {n}" for n in footnotes(rows, meta))]) + "\n"


def write_scaling_plot(path, rows, meta):
    """GFLOP/s against threads, one panel per case and mode, a line per framework."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frameworks = ["pyrnn"] + list(meta["peers"])
    rows = [r for r in rows if r["status"] == "ok" and r["pyrnn_gflops"] is not None]
    panels = list(dict.fromkeys((r["case"], r["mode"]) for r in rows))
    threads = sorted(meta["peak_gflops"])
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 4), squeeze=False)
    for ax, (case, mode) in zip(axes[0], panels):
        sub = sorted((r for r in rows if (r["case"], r["mode"]) == (case, mode)), key=lambda r: r["threads"])
        for fw in frameworks:
            pts = [(r["threads"], r[f"{fw}_gflops"]) for r in sub if r[f"{fw}_gflops"] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=PEER_TITLES.get(fw, fw))
        ax.plot(threads, [meta["peak_gflops"][t] for t in threads], "k--", label="FMA peak")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(threads)
        ax.set_xticklabels([str(t) for t in threads])
        ax.set_xlabel("threads")
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"{case} {mode}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"pyrnn {meta['pyrnn']['version']} fp32 scaling, {meta['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plot(path, rows, meta):
    if meta["suite"].startswith("scaling"):
        return write_scaling_plot(path, rows, meta)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frameworks = ["pyrnn"] + list(meta["peers"])
    threads = meta["threads"]
    per_thread = {t: [r for r in rows if r["threads"] == t and r["pyrnn_gflops"] is not None] for t in threads}
    width_in = max(8.0, 0.45 * len(frameworks) * max(len(sub) for sub in per_thread.values()))
    fig, axes = plt.subplots(len(threads), 1, figsize=(width_in, 5 * len(threads)), squeeze=False)
    for ax, t in zip(axes[:, 0], threads):
        sub = per_thread[t]
        xs = np.arange(len(sub))
        width = 0.8 / len(frameworks)
        for k, fw in enumerate(frameworks):
            vals = [r[f"{fw}_gflops"] or 0.0 for r in sub]
            ax.bar(xs + (k - (len(frameworks) - 1) / 2) * width, vals, width, label=PEER_TITLES.get(fw, fw))
        ax.axhline(meta["peak_gflops"][t], color="k", linestyle="--", label=f"FMA peak ({t} thr)")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{r['case']}\n{r['mode']}" for r in sub], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}")
        ax.legend(fontsize=8)
    fig.suptitle(f"pyrnn {meta['pyrnn']['version']} fp32, {meta['machine']['cpu']} ({meta['suite']})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _list_of(choices=None, kind=str):
    def parse(text):
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        out = []
        for s in items:
            try:
                v = kind(s)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
            if choices is not None and v not in choices:
                raise argparse.ArgumentTypeError(f"{s!r} is not one of {', '.join(choices)}")
            if kind is int and v < 1:
                raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {v}")
            if v not in out:
                out.append(v)
        return out

    return parse


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    cores = available_cores()
    p = argparse.ArgumentParser(
        prog="python -m pyrnn.bench",
        description="Benchmark pyrnn's fp32 LSTM/GRU/RNN kernels against PyTorch on the standard suite.",
        epilog="Exit status: 0 all good, 1 a correctness mismatch or a failed case, 2 bad usage.")
    p.add_argument("--suite", choices=sorted(SUITES), default="standard",
                   help="standard: the shapes below (default); scaling: LSTM and GRU B=128 T=50 H=1024 at "
                   "1, 2, 4, ... threads up to the cores, with a speed-up table")
    p.add_argument("--quick", action="store_true", help="reduced suite (T capped at 20, fewer repetitions), ~1 min")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: tiny shapes
    p.add_argument("--threads", type=_list_of(kind=int), default=None,
                   help=f"comma-separated thread counts (default: {','.join(map(str, sorted({1, cores})))}; "
                   f"with --suite scaling {','.join(map(str, scaling_threads(cores)))})")
    p.add_argument("--cells", type=_list_of(CELLS), default=list(CELLS), help="subset of lstm,gru,rnn")
    p.add_argument("--modes", type=_list_of(MODES), default=list(MODES), help="subset of fwd,fwdbwd")
    p.add_argument("--reps", type=_positive_int, default=None, metavar="N",
                   help="at least N timed repetitions per case and framework (default 3; more steadies "
                   "medians on a noisy machine)")
    p.add_argument("--reference", action="store_true",
                   help="also time the NumPy reference (pyrnn.reference), skipping very slow shapes")
    p.add_argument("--json", metavar="PATH", help="write all rows and machine info as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write a markdown table")
    p.add_argument("--memory", action="store_true",
                   help="also measure peak RSS of one LSTM B=64 T=50 H=512 training step (pyrnn vs PyTorch)")
    p.add_argument("--plot", metavar="PATH.png", help=f"bar chart of GFLOP/s (needs matplotlib: {PLOT_HINT})")
    return p


def machine_info(args, argv, profile, torch) -> dict:
    """Run metadata; "peak_gflops" is filled in by the caller once measured."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m pyrnn.bench" + (" " + shlex.join(argv) if argv else ""),
        "suite": (profile.description if args.suite == "standard" else "scaling suite" if profile.name == "full"
                  else f"scaling suite, {profile.description}"),
        "machine": {"cpu": cpu_model(), "cores": available_cores(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_average_at_start": load_average()},
        "pyrnn": pyrnn._config.config(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "threads": args.threads,
        "modes": args.modes,
        "peers": [p for p in PEERS if p != "reference" or args.reference],
        "peak_gflops": {},
    }


def failed_row(row) -> bool:
    notes = [row[f"{peer}_note"] or "" for peer in PEERS]
    return (row["status"].startswith("error") or (row["check"] or "ok") != "ok"
            or any(n.startswith("error") for n in notes))


# Peak memory of one training step (forward + backward), in a fresh process so
# the measurement holds only that step: ru_maxrss after the step minus before it
# (inputs and weights already allocated).
_MEMORY_SNIPPET = r"""
import resource, sys
import numpy as np
def peak_kib():
    # VmHWM belongs to this process image; ru_maxrss can carry the parent's peak across fork/exec
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
peer, B, T, H = sys.argv[1], *map(int, sys.argv[2:5])
rng = np.random.default_rng(0)
x = rng.standard_normal((T, B, H), dtype=np.float32)
dy = np.ones((T, B, H), np.float32)
if peer == "pyrnn":
    import pyrnn
    m = pyrnn.LSTM(H, H)
    step = lambda: m.backward(dy) if m(x) else None
else:
    import torch
    m = torch.nn.LSTM(H, H)
    xt, dyt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dy)
    step = lambda: m(xt)[0].backward(dyt)
before = peak_kib()
step()
print((peak_kib() - before) / 1024)
"""

MEMORY_SHAPE = (64, 50, 512)  # the largest LSTM training shape of the suite (B, T, H)


def training_memory(peers, shape=MEMORY_SHAPE) -> dict:
    """MiB of peak RSS growth for one LSTM training step, per peer ('pyrnn', 'torch')."""
    import subprocess

    out: dict[str, float | str | None] = {}
    for peer in peers:
        res = subprocess.run([sys.executable, "-c", _MEMORY_SNIPPET, peer, *map(str, shape)],
                             capture_output=True, text=True)
        out[peer] = float(res.stdout.strip()) if res.returncode == 0 else None
    B, T, H = shape
    # what backward needs at minimum: x, y (h_t), 4 activated gates and c_t per step
    out["saved_activations_mib"] = T * B * H * (1 + 1 + 4 + 1) * 4 / 2**20
    out["shape"] = f"LSTM B={B} T={T} I=H={H} fp32"
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, message already printed)
        return int(e.code or 0)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(f"error: --plot needs matplotlib, which is not installed: {PLOT_HINT}", file=sys.stderr)
            return 2
    if args.threads is None:
        args.threads = scaling_threads(available_cores()) if args.suite == "scaling" else sorted({1, available_cores()})
    profile = PROFILES["tiny" if args.tiny else "quick" if args.quick else "full"]
    if args.reps is not None:
        profile = dataclasses.replace(profile, min_reps=args.reps, max_reps=max(profile.max_reps, args.reps))
    torch = _import_torch()
    meta = machine_info(args, argv, profile, torch)  # first: the load average before we add to it
    peaks = meta["peak_gflops"] = measure_peaks(args.threads, profile)
    cases = select_cases(profile, args.cells, args.suite)
    rows = run_suite(cases, args.threads, args.modes, meta["peers"], profile, peaks)
    meta["machine"]["load_average_at_end"] = load_average()
    if args.memory:
        meta["memory"] = training_memory(["pyrnn"] + (["torch"] if torch is not None else []))

    print(render_text(rows, meta))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(meta, peak_gflops={str(t): p for t, p in peaks.items()}, rows=rows,
                           footnotes=footnotes(rows, meta)), f, indent=1, default=str)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(render_markdown(rows, meta))
    if args.plot:
        write_plot(args.plot, rows, meta)
    failed = [r for r in rows if failed_row(r)]
    if failed:
        print(f"{len(failed)} row(s) failed a correctness check or errored: see the check column and notes",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
