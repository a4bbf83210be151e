"""Running the cases: one runner factory per framework, the correctness check, timing, and the memory probe.

A runner factory is ``make(case, inputs, mode)`` -> a callable that runs one
step and returns (y, dx or None); it raises :class:`Unavailable` when the
framework cannot run the case. ONNX Runtime's, JAX's and PyTorch int8's are in
:mod:`pyrnn.bench.peers`. :func:`run_suite` times each framework in a worker
process of its own (:mod:`pyrnn.bench.worker`), pinned to as many cores as
threads, one framework after another. pyrnn's reduced-precision inference
(``precisions``: int8, bf16 weights) is timed in pyrnn's worker, beside its fp32
calls, and compared with pyrnn's own fp32 output.
"""

from __future__ import annotations

import math
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from types import ModuleType
from typing import Any, Callable, Iterable, Optional, Sequence, TextIO, Tuple

import numpy as np

import pyrnn
from pyrnn import _cells, _stack
from pyrnn import functional as F
from pyrnn._module import PARAM_NAMES
from pyrnn import reference as R
from pyrnn.testing import run_backward, run_forward

from .cases import Case, Profile, build_inputs, case_gflop, param_names

PEERS = ("torch", "ort", "jax", "torch-int8", "reference")  # every framework timed against pyrnn
FP32_PEERS = ("torch", "ort", "jax")  # the candidates of the "best peer" column
IN_PROCESS = ("reference",)  # run in this process even when the others get workers (NumPy's threads are its own)
CHECK_TOL = 1e-3  # max |pyrnn - peer| / max(1, max |peer|), for y and dx
CHECK_TOLS = {"torch-int8": 0.1}  # int8 weights and activations against pyrnn's fp32: ~1e-2 off on the suite
REFERENCE_MAX_S = 3.0  # skip the reference where one call is estimated to take longer
PRECISIONS = ("fp32", "int8", "bf16")  # --precision: fp32 is pyrnn's own (always run), the others its inference
LOW_PRECISIONS = PRECISIONS[1:]  # pyrnn's reduced-precision inference weights (pack_weights / freeze precision=)

Step = Callable[[], Tuple[Any, Any]]  # one call: (y, dx or None)
RunnerFactory = Callable[[Case, dict, str], Step]


class Unavailable(Exception):
    """A framework or feature a case needs is missing; the case is reported, not run."""


def _import_torch() -> Optional[ModuleType]:
    try:
        import torch
    except ImportError:
        return None
    return torch




def _functional_forward(module: ModuleType, case: Case, inputs: dict, training: bool,
                        packed: Optional[list] = None) -> Tuple[np.ndarray, list]:
    """All layers and directions through ``module`` (pyrnn.functional or pyrnn.reference);
    returns (y, the caches in _stack order). ``packed``: pyrnn's weights packed once, per direction."""

    def run(layer: int, d: int, x: np.ndarray) -> Tuple[np.ndarray, Any]:
        names = param_names(layer, d)
        p = {arg: inputs["params"][names[key]] for arg, key in PARAM_NAMES.items() if key in names}
        kw = {} if packed is None else {"packed": packed[layer * case.directions + d]}
        out, cache = run_forward(module, case.variant, dict(p, x=x), lengths=inputs["lengths"],
                                 reverse=bool(d), training=training, **kw)
        return out["y"], cache

    y, results = _stack.forward(run, inputs["x"], case.layers, case.directions)
    return y, [cache for _, cache in results]


def _functional_backward(module: ModuleType, case: Case, caches: list, dy: np.ndarray) -> np.ndarray:
    def run(layer: int, d: int, dy_d: np.ndarray) -> np.ndarray:
        return run_backward(module, case.variant, caches[layer * case.directions + d], {"y": dy_d})["x"]

    return _stack.backward(run, dy, case.layers, case.directions, case.H)


def functional_runner(module: ModuleType) -> Callable[..., Step]:
    """Runner factory for pyrnn.functional or pyrnn.reference (same API); ``precision`` (pyrnn.functional,
    inference): the packed weights' (pack_weights(precision=))."""

    def make(case: Case, inputs: dict, mode: str, precision: Optional[str] = None) -> Step:
        if mode == "fwd":
            # pyrnn's inference packs its recurrent weights once, as a session of ONNX Runtime does
            packed = None if module is not F else [
                F.pack_weights(case.cell, inputs["params"][param_names(layer, d)["weight_ih"]],
                               inputs["params"][param_names(layer, d)["weight_hh"]], precision=precision,
                               **_cells.cell_options(_cells.CELLS[case.variant]))
                for layer in range(case.layers) for d in range(case.directions)]
            return lambda: (_functional_forward(module, case, inputs, False, packed)[0], None)

        def train_step() -> Tuple[Any, Any]:
            y, caches = _functional_forward(module, case, inputs, True)
            return y, _functional_backward(module, case, caches, inputs["dy"])

        return train_step

    return make


LAYERS: dict[str, Callable[..., Any]] = {"lstm": pyrnn.LSTM, "gru": pyrnn.GRU, "rnn": pyrnn.RNN}


def layer_runner(case: Case, inputs: dict, mode: str, precision: Optional[str] = None) -> Step:
    """pyrnn.LSTM / GRU / RNN (PyTorch-compatible layers); ``precision``: freeze(precision=) for inference."""
    layer = LAYERS[case.cell](case.input_size, case.H, case.layers, bidirectional=case.bidirectional,
                              dtype=case.dtype, **_cells.cell_options(_cells.CELLS[case.variant]))
    layer.load_state_dict(inputs["params"])
    layer.train(mode == "fwdbwd")
    lengths = {} if inputs["lengths"] is None else {"lengths": inputs["lengths"]}
    if mode == "fwd":
        frozen = layer.freeze(precision)  # inference: the recurrent weights packed once
        return lambda: (frozen(inputs["x"], **lengths)[0], None)

    def train_step() -> Tuple[Any, Any]:
        layer.zero_grad()
        y, _ = layer(inputs["x"], **lengths)
        return y, layer.backward(inputs["dy"])[0]

    return train_step


def pyrnn_runner(case: Case, inputs: dict, mode: str, precision: Optional[str] = None) -> Step:
    """pyrnn on the case; ``precision`` "int8" or "bf16": its inference with weights packed in that precision
    (raises Unavailable for training or float64 cases)."""
    if precision == "fp32":
        precision = None
    if precision is not None:
        if mode != "fwd":
            raise Unavailable("inference only")
        if case.dtype != "float32":
            raise Unavailable("float32 only")
    make = layer_runner if case.impl == "layer" else functional_runner(F)
    return make(case, inputs, mode, precision=precision)


# torch.nn module and extra constructor arguments per variant (variants missing here have no PyTorch peer)
TORCH_MODULES = {
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}


def torch_module(case: Case, inputs: dict) -> Any:
    """The torch.nn layer of ``case`` holding its weights (raises Unavailable)."""
    torch = _import_torch()
    if torch is None:
        raise Unavailable("torch not importable")
    if case.variant not in TORCH_MODULES:
        raise Unavailable(f"no PyTorch {case.variant}")
    cls_name, kwargs = TORCH_MODULES[case.variant]
    module = getattr(torch.nn, cls_name)(case.input_size, case.H, case.layers, bidirectional=case.bidirectional,
                                         **kwargs)
    if case.dtype == "float64":
        module = module.double()
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.from_numpy(inputs["params"][name]))
    return module


def torch_forward(module: Any, case: Case, inputs: dict) -> Callable[[Any], Any]:
    """x -> y through ``module``; with lengths, a PackedSequence padded back to T."""
    torch = _import_torch()
    assert torch is not None
    lengths = None if inputs["lengths"] is None else torch.from_numpy(inputs["lengths"])
    rnn_utils = torch.nn.utils.rnn

    def forward(x: Any) -> Any:
        if lengths is None:
            return module(x)[0]
        packed = rnn_utils.pack_padded_sequence(x, lengths, enforce_sorted=False)
        return rnn_utils.pad_packed_sequence(module(packed)[0], total_length=case.T)[0]

    return forward


def torch_runner(case: Case, inputs: dict, mode: str) -> Step:
    module = torch_module(case, inputs)
    forward = torch_forward(module, case, inputs)
    torch = _import_torch()
    assert torch is not None

    if mode == "fwd":
        x = torch.from_numpy(inputs["x"])

        def infer() -> Tuple[Any, Any]:
            with torch.no_grad():
                return forward(x), None

        return infer

    x = torch.from_numpy(inputs["x"].copy()).requires_grad_(True)
    dy = torch.from_numpy(inputs["dy"])

    def train_step() -> Tuple[Any, Any]:
        module.zero_grad(set_to_none=True)
        x.grad = None
        y = forward(x)
        y.backward(dy)
        return y.detach(), x.grad

    return train_step


def reference_estimate_s(case: Case, lengths: Optional[np.ndarray], mode: str) -> float:
    """A pessimistic guess of one NumPy reference call: 20 GFLOP/s plus 1 ms per time step."""
    steps = case.T * case.layers * case.directions * (2 if mode == "fwdbwd" else 1)
    return case_gflop(case, lengths, mode) / 20.0 + steps * 1e-3


def reference_runner(case: Case, inputs: dict, mode: str) -> Step:
    """The NumPy reference (pyrnn.reference) as a runner; raises :class:`Unavailable` for a case
    it would take too long on."""
    estimate = reference_estimate_s(case, inputs["lengths"], mode)
    if estimate > REFERENCE_MAX_S:
        raise Unavailable(f"skipped: ~{estimate:.0f} s per call")
    return functional_runner(R)(case, inputs, mode)


def _peer(name: str) -> RunnerFactory:
    """A runner factory of pyrnn.bench.peers, imported on first use (peers imports this module)."""

    def make(case: Case, inputs: dict, mode: str) -> Step:
        from . import peers

        if case.dtype != "float32":
            raise Unavailable("float32 only")
        factory: RunnerFactory = getattr(peers, name)
        return factory(case, inputs, mode)

    return make


#: Runner factories by framework name: ``RUNNERS[name](case, inputs, mode)`` returns a step
#: function to time (or raises :class:`Unavailable`).
RUNNERS: dict[str, RunnerFactory] = {
    "pyrnn": pyrnn_runner, "torch": torch_runner, "reference": reference_runner,
    "ort": _peer("ort_runner"), "jax": _peer("jax_runner"), "torch-int8": _peer("torch_int8_runner"),
}


# --------------------------------------------------------------------------
# Checking and timing
# --------------------------------------------------------------------------


def _to_numpy(a: Any) -> np.ndarray:
    return a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)


def max_rel_error(actual: Any, expected: Any) -> float:
    actual, expected = _to_numpy(actual), _to_numpy(expected)
    if actual.shape != expected.shape:
        return math.inf
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    return float(np.max(np.abs(actual - expected))) / scale if expected.size else 0.0


def output_errors(actual: Any, expected: Any, lengths: Optional[np.ndarray] = None) -> Tuple[float, float]:
    """(max, mean) of |actual - expected| over y [T, B, D*H]; with lengths, over the valid steps only
    (padding is zero in both)."""
    diff = np.abs(_to_numpy(actual).astype(np.float64) - _to_numpy(expected).astype(np.float64))
    if lengths is not None:
        diff = diff[np.arange(diff.shape[0])[:, None] < np.asarray(lengths)[None, :]]
    if not diff.size:
        return 0.0, 0.0
    return float(np.max(diff)), float(np.mean(diff))


def check_tol(peer: str) -> float:
    return CHECK_TOLS.get(peer, CHECK_TOL)


def compare_outputs(errors: dict[str, dict[str, float]], peer: str, mine: Tuple[Any, Any],
                    theirs: Tuple[Any, Any]) -> None:
    """Adds the peer's y (and dx) error against pyrnn's to ``errors`` (max over calls)."""
    (y, dx), (py, pdx) = mine, theirs
    errs = errors.setdefault(peer, {})
    errs["y"] = max(errs.get("y", 0.0), max_rel_error(y, py))
    if dx is not None and pdx is not None:
        errs["dx"] = max(errs.get("dx", 0.0), max_rel_error(dx, pdx))


def check_summary(errors: dict[str, dict[str, float]]) -> str:
    bad = [f"{peer} {k} {e:.1e}" for peer, errs in errors.items() for k, e in errs.items()
           if not e <= check_tol(peer)]
    return "MISMATCH " + ", ".join(bad) if bad else "ok"


def time_calls(fns: dict[str, Callable[[], Any]], profile: Profile) -> dict[str, Any]:
    """{name: (median seconds, repetitions)} for each callable, after warm-up;
    a callable that raises gets its exception instead and is dropped from the
    remaining rounds, so the others keep their timings.

    The callables are timed in turn, one repetition of each per round, so a
    burst of load from elsewhere on a shared machine slows all of them alike
    instead of one framework's whole series. Rounds go on until max_reps, or
    until min_reps are done and the time budget (per callable) is spent.
    """
    out: dict[str, Any] = {}
    live = dict(fns)

    def call(name: str, fn: Callable[[], Any]) -> bool:
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


def measure_peaks(threads: Iterable[int], profile: Profile) -> dict[int, float]:
    """FMA peak per thread count: the best of five short measurements (a peak
    is what the machine can do, so a burst of load elsewhere must not lower it)."""
    return {t: max(pyrnn.fma_peak_gflops(t, profile.peak_seconds / 5) for _ in range(5)) for t in threads}


def measure_bandwidth(threads: Iterable[int], profile: Profile) -> dict[int, dict]:
    """Read bandwidth per cache level and thread count (pyrnn.memory_bandwidth)."""
    return {t: pyrnn.memory_bandwidth(threads=t, seconds=max(0.01, profile.peak_seconds / 10)) for t in threads}


SMALL_BATCH = 8  # rows with B <= this get the W_hh bandwidth column: their steps are bandwidth bound


def add_bandwidth(rows: list, bandwidth: dict[int, dict], caches: dict[str, int]) -> None:
    """For small-batch inference rows: the GB/s at which the time loop reads the recurrent
    weights (every step reads each direction's W_hh once: G*H*H*4 bytes per layer and
    direction, T steps), and the bound: the measured bandwidth of the level one thread's
    share of a W_hh fits in."""
    for r in rows:
        r.update(whh_gbs=None, bound_level=None, bound_gbs=None)
        if r["mode"] != "fwd" or r["B"] > SMALL_BATCH or not r["pyrnn_ms"] or r["threads"] not in bandwidth:
            continue
        whh = _cells.GATES[r["cell"]] * r["H"] * r["H"] * 4
        steps = max(r["lengths"]) if r["lengths"] else r["T"]
        share = whh / r["threads"]
        level = next((k for k in ("L2", "L3") if share <= caches.get(k, 0)), "DRAM")
        r.update(whh_gbs=whh * r["layers"] * (2 if r["bidirectional"] else 1) * steps / (r["pyrnn_ms"] / 1e3) / 1e9,
                 bound_level=level, bound_gbs=bandwidth[r["threads"]][level]["gbs"])


_current_threads: list[Optional[int]] = [None]


def current_threads() -> Optional[int]:
    """The thread count being timed (for runners that take it per session, as ONNX Runtime does)."""
    return _current_threads[0]


def set_current_threads(n: Optional[int]) -> None:
    _current_threads[0] = n


class ThreadSetter:
    """Sets pyrnn's and (with ``torch``) PyTorch's thread counts together; restores both on exit."""

    def __init__(self, torch: bool = True) -> None:
        self.torch = _import_torch() if torch else None
        self.saved = (pyrnn.thread_setting(), self.torch.get_num_threads() if self.torch else None)

    def set(self, n: int) -> None:
        set_current_threads(n)
        pyrnn.set_num_threads(n)
        if self.torch is not None:
            self.torch.set_num_threads(n)

    def __enter__(self) -> ThreadSetter:
        return self

    def __exit__(self, *exc: object) -> None:
        set_current_threads(None)
        pyrnn.set_num_threads(self.saved[0])
        if self.torch is not None:
            self.torch.set_num_threads(self.saved[1])


def field(framework: str, what: str) -> str:
    """A row's key: field("torch-int8", "ms") -> "torch_int8_ms"."""
    return f"{framework.replace('-', '_')}_{what}"


def precision_keys(precision: str) -> list[str]:
    """A reduced precision's row fields: pyrnn_int8_ms (gflops, reps, note), int8_vs_pyrnn_fp32 (pyrnn's fp32
    ms over its int8 ms), int8_vs_best_fp32 (the best fp32 peer's ms over it), int8_vs_torch_int8 (int8 only),
    int8_max_err and int8_mean_err (|y - pyrnn's fp32 y|)."""
    fw = f"pyrnn-{precision}"
    return ([field(fw, k) for k in ("ms", "gflops", "reps", "note")]
            + [f"{precision}_vs_{x}" for x in ("pyrnn_fp32", "best_fp32")]
            + ([f"{precision}_vs_torch_int8"] if precision == "int8" else [])
            + [f"{precision}_max_err", f"{precision}_mean_err"])


def _base_row(case: Case, inputs: dict, mode: str, threads: Optional[int],
              precisions: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "case": case.label, "variant": case.variant, "cell": case.cell, "B": case.B, "T": case.T,
        "I": case.input_size, "H": case.H, "layers": case.layers, "bidirectional": case.bidirectional,
        "lengths": None if inputs["lengths"] is None else [int(v) for v in inputs["lengths"]],
        "impl": case.impl, "mode": mode, "threads": threads,
        "gflop": case_gflop(case, inputs["lengths"], mode),
        "status": "ok", "check": None, "check_errors": None,
        "pyrnn_ms": None, "pyrnn_gflops": None, "pct_peak": None, "pyrnn_reps": None,
        **{field(p, k): None for p in PEERS for k in ("ms", "gflops", "ratio", "note")},
        "best_peer": None, "best_peer_ms": None, "best_peer_ratio": None,
        **{k: None for p in precisions for k in precision_keys(p)},
    }


def set_best_peer(row: dict[str, Any], peers: Iterable[str]) -> None:
    """The fastest of the requested fp32 peers (FP32_PEERS: not torch-int8, not the NumPy
    reference) that ran on the row: its name, ms, and ms over pyrnn's."""
    times = [(row[field(p, "ms")], p) for p in peers if p in FP32_PEERS and row[field(p, "ms")] is not None]
    if not times:
        row.update(best_peer=None, best_peer_ms=None, best_peer_ratio=None)
        return
    ms, peer = min(times)
    row.update(best_peer=peer, best_peer_ms=ms,
               best_peer_ratio=None if row["pyrnn_ms"] is None else ms / row["pyrnn_ms"])


def set_precisions(row: dict[str, Any], entry: dict, precisions: Sequence[str]) -> None:
    """The reduced-precision fields of a row (after set_best_peer) from pyrnn's worker entry:
    entry["precisions"][p] = {"ms", "reps", "note", "max_err", "mean_err"} (absent for training rows)."""
    for p in precisions:
        e = entry.get("precisions", {}).get(p)
        if e is None:
            continue
        fw = f"pyrnn-{p}"
        row.update({f"{p}_max_err": e["max_err"], f"{p}_mean_err": e["mean_err"], field(fw, "note"): e["note"]})
        if e["ms"] is None:
            continue
        ms = e["ms"]
        row.update({field(fw, "ms"): ms, field(fw, "gflops"): row["gflop"] / (ms / 1e3), field(fw, "reps"): e["reps"],
                    f"{p}_vs_pyrnn_fp32": None if row["pyrnn_ms"] is None else row["pyrnn_ms"] / ms,
                    f"{p}_vs_best_fp32": None if row["best_peer_ms"] is None else row["best_peer_ms"] / ms})
        if p == "int8":
            row["int8_vs_torch_int8"] = None if row["torch_int8_ms"] is None else row["torch_int8_ms"] / ms


# Goals of the reduced-precision inference (geometric means over the fwd rows): (ratio key, rows, target)
PRECISION_TARGETS = {
    "int8": (("vs_best_fp32", "small_batch", 2.0), ("vs_torch_int8", "lstm", 1.5)),
    "bf16": (("vs_best_fp32", "small_batch", 1.4),),
}


def geomean(values: Sequence[float]) -> Optional[float]:
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else None


def precision_summary(rows: Sequence[dict[str, Any]], precisions: Sequence[str]) -> dict[str, Any]:
    """Per reduced precision: the geometric means of its speed ratios over the fwd rows, at B <= SMALL_BATCH
    ("small_batch") and over all ("all"; for int8 vs torch-int8 also over the LSTM rows, "lstm"), each
    {"geomean", "rows"}, and the targets of PRECISION_TARGETS with "met"."""
    out: dict[str, Any] = {}
    fwd = [r for r in rows if r["mode"] == "fwd" and r["status"] == "ok"]
    groups = {"small_batch": lambda r: r["B"] <= SMALL_BATCH, "all": lambda r: True,
              "lstm": lambda r: r["cell"] == "lstm"}
    for p in precisions:
        summary: dict[str, Any] = {}
        for ratio in ("vs_best_fp32",) + (("vs_torch_int8",) if p == "int8" else ()):
            summary[ratio] = {}
            for group, keep in groups.items():
                if group == "lstm" and ratio != "vs_torch_int8":
                    continue
                values = [r[f"{p}_{ratio}"] for r in fwd if keep(r) and r.get(f"{p}_{ratio}") is not None]
                summary[ratio][group] = {"geomean": geomean(values), "rows": len(values)}
        summary["targets"] = [
            {"ratio": ratio, "rows": group, "target": target, "geomean": summary[ratio][group]["geomean"],
             "met": None if summary[ratio][group]["geomean"] is None else summary[ratio][group]["geomean"] >= target}
            for ratio, group, target in PRECISION_TARGETS.get(p, ())]
        out[p] = summary
    return out


# --------------------------------------------------------------------------
# Workers: one process per framework and thread count
# --------------------------------------------------------------------------


def available_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def cores_for(threads: int, cores: Sequence[int]) -> list[int]:
    """The first ``threads`` of ``cores`` (all of them when there are fewer)."""
    return list(cores[:threads])


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = [l.strip() for l in f if l.strip()]  # noqa: E741
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def spawn_worker(job: dict, tmpdir: str, progress: Callable[[str], None]) -> dict:
    """Runs ``job`` in a fresh interpreter pinned to job["cores"] (see :mod:`pyrnn.bench.worker`);
    returns its result, or one whose "unavailable" says why the worker failed."""
    from . import worker
    from .peers import JAX_XLA_FLAGS

    fw, n = job["framework"], job["threads"]
    stem = os.path.join(tmpdir, f"{fw}-{n}")
    job_path, result_path, err_path = stem + ".job", stem + ".result", stem + ".stderr"
    with open(job_path, "wb") as f:
        pickle.dump(job, f, protocol=pickle.HIGHEST_PROTOCOL)
    env = dict(os.environ)
    if fw == "jax":  # XLA takes its threads at start; the pinned cores bound them too
        env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS"), JAX_XLA_FLAGS.format(n=n)]))
    cmd = [sys.executable, "-c", worker.BOOTSTRAP, ",".join(map(str, job["cores"] or [])), job_path, result_path]
    # cwd: a source checkout in the working directory must not shadow the pyrnn this process imported
    with open(err_path, "wb") as err, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                                        cwd=tmpdir) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                progress(line.rstrip("\n"))
            rc = proc.wait()
        except BaseException:  # (Ctrl-C, SIGTERM: the pinned worker must not live on, timing on its own)
            proc.kill()
            proc.wait()
            raise
    if rc == 0 and os.path.exists(result_path):
        with open(result_path, "rb") as f:
            result: dict = pickle.load(f)
        return result
    why = f"error: {fw} worker exited with status {rc}" + (f": {_tail(err_path)}" if _tail(err_path) else "")
    entries = {(i, mode): {"ms": None, "reps": None, "note": why, "built": False, "y": None, "dx": None}
               for i in range(len(job["cases"])) for mode in job["modes"]}
    return {"framework": fw, "threads": n, "cores": job["cores"], "pid": None, "isolated": True,
            "version": None, "unavailable": why, "entries": entries, "affinity": None, "thread_affinity": None}


def run_frameworks(cases: Sequence[Case], threads: Sequence[int], modes: Sequence[str], frameworks: Sequence[str],
                   profile: Profile, log: TextIO, isolate: bool = True, seed: int = 0,
                   precisions: Sequence[str] = ()) -> Tuple[dict, dict]:
    """Every framework at every thread count, one after another: a worker process each
    (``isolate``; the NumPy reference stays in this process), else all in this process.
    ``precisions`` (int8, bf16): pyrnn's worker also times its inference in those.
    Returns ({(framework, threads): worker result}, {(case index, mode): check errors}); outputs are
    kept at the last thread count only, compared with pyrnn's as each worker ends, then dropped."""
    from .worker import run_job

    results: dict[Tuple[str, int], dict] = {}
    errors: dict[Tuple[int, str], dict[str, dict[str, float]]] = {}
    mine: dict[Tuple[int, str], Tuple[Any, Any]] = {}
    total, done = len(cases) * len(modes) * len(threads) * len(frameworks), [0]
    all_cores = available_cores()

    def progress(text: str) -> None:
        if text.startswith("+ "):
            done[0] += 1
            text = f"[{done[0]}/{total}] {text[2:]}"
        print(text, file=log, flush=True)

    torch_based = any(fw in ("torch", "torch-int8", "ort") for fw in frameworks)
    with ThreadSetter(torch=torch_based and not isolate), tempfile.TemporaryDirectory(prefix="pyrnn-bench-") as tmp:
        for t in threads:
            for fw in frameworks:
                in_process = not isolate or fw in IN_PROCESS
                job = {"framework": fw, "threads": t, "cores": None if in_process else cores_for(t, all_cores),
                       "cases": list(cases), "modes": list(modes), "profile": profile, "seed": seed,
                       "keep_outputs": t == threads[-1], "isolated": not in_process,
                       "precisions": [p for p in precisions if p in LOW_PRECISIONS] if fw == "pyrnn" else []}
                start = done[0]
                result = run_job(job, progress) if in_process else spawn_worker(job, tmp, progress)
                done[0] = start + len(cases) * len(modes)  # an unavailable framework skips its steps
                for (i, mode), entry in result["entries"].items():
                    out = (entry.pop("y"), entry.pop("dx"))
                    if out[0] is None:
                        continue
                    if fw == "pyrnn":
                        mine[(i, mode)] = out
                    elif (i, mode) in mine:
                        compare_outputs(errors.setdefault((i, mode), {}), fw, mine[(i, mode)], out)
                results[(fw, t)] = result
    return results, errors


def run_suite(cases: Sequence[Case], threads: Sequence[int], modes: Sequence[str], peers: Sequence[str],
              profile: Profile, peaks: dict[int, float], log: Optional[TextIO] = None, *, isolate: bool = True,
              info: Optional[dict] = None, precisions: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows: one per case, mode and thread count (one per case that pyrnn cannot run).
    ``info``, if given, receives "workers" (framework, threads, pid, cores and affinity of each
    worker), "versions" and "unavailable" ({framework: why}, frameworks that could not be imported).
    ``precisions``: the reduced precisions (int8, bf16) of pyrnn's inference to time too
    (the rows' fields of ``runner.precision_keys``)."""
    log = sys.stderr if log is None else log
    frameworks = ["pyrnn"] + [p for p in peers if p in PEERS]
    low = [p for p in precisions if p in LOW_PRECISIONS]
    results, errors = run_frameworks(cases, threads, modes, frameworks, profile, log, isolate, precisions=low)
    if info is not None:
        info["workers"] = [{k: v for k, v in r.items() if k != "entries"} for r in results.values()]
        info["versions"] = {fw: next((r["version"] for (f, _), r in results.items() if f == fw and r["version"]),
                                     None) for fw in frameworks}
        info["unavailable"] = {fw: r["unavailable"] for (fw, _), r in results.items() if r["unavailable"]}
    rows = []
    for i, case in enumerate(cases):
        inputs = build_inputs(case)
        failed = next((e["note"] for t in threads for mode in modes
                       if not (e := results[("pyrnn", t)]["entries"][(i, mode)])["built"]), None)
        if failed is not None:  # pyrnn cannot run this case: one row for the case
            rows.append(dict(_base_row(case, inputs, "-", None, low), status=failed))
            continue
        for t in threads:
            for mode in modes:
                case_errors = errors.get((i, mode), {})  # (each mode its own: a fwd row has no dx)
                row = dict(_base_row(case, inputs, mode, t, low), check=check_summary(case_errors),
                           check_errors=case_errors)
                entries = {fw: results[(fw, t)]["entries"][(i, mode)] for fw in frameworks}
                mine = entries["pyrnn"]
                _fill_row(row, entries, peaks[t])
                set_best_peer(row, peers)
                if row["pyrnn_ms"] is not None:
                    set_precisions(row, mine, low)
                rows.append(row)
    return rows


def _fill_row(row: dict[str, Any], entries: dict[str, dict], peak: float) -> None:
    mine = entries.pop("pyrnn")
    if mine["ms"] is None:
        row["status"] = mine["note"] or "error: not timed"
        return
    seconds = mine["ms"] / 1e3
    row.update(pyrnn_ms=mine["ms"], pyrnn_gflops=row["gflop"] / seconds, pyrnn_reps=mine["reps"],
               pct_peak=100.0 * row["gflop"] / seconds / peak)
    for peer, entry in entries.items():
        if entry["ms"] is None:
            row[field(peer, "note")] = entry["note"]
            continue
        row.update({field(peer, "ms"): entry["ms"], field(peer, "gflops"): row["gflop"] / (entry["ms"] / 1e3),
                    field(peer, "ratio"): entry["ms"] / mine["ms"]})


# --------------------------------------------------------------------------
# Training memory
# --------------------------------------------------------------------------

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


def training_memory(peers: Iterable[str], shape: Tuple[int, int, int] = MEMORY_SHAPE) -> dict[str, Any]:
    """MiB of peak RSS growth for one LSTM training step, per peer ('pyrnn', 'torch')."""
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
