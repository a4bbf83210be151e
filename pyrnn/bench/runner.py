"""Running the cases: one runner factory per framework, the correctness check, timing, and the memory probe.

A runner factory is ``make(case, inputs, mode)`` -> a callable that runs one
step and returns (y, dx or None); it raises :class:`Unavailable` when the
framework cannot run the case.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import time
from types import ModuleType
from typing import Any, Callable, Iterable, Optional, Sequence, TextIO, Tuple

import numpy as np

import pyrnn
from pyrnn import _cells, _stack
from pyrnn import functional as F
from pyrnn import reference as R
from pyrnn.testing import run_backward, run_forward

from .cases import Case, Profile, build_inputs, case_gflop, param_names

PEERS = ("torch", "reference")  # frameworks timed against pyrnn, in column order
CHECK_TOL = 1e-3  # max |pyrnn - peer| / max(1, max |peer|), for y and dx
REFERENCE_MAX_S = 3.0  # skip the reference where one call is estimated to take longer

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


FUNCTIONAL_ARGS = {"W_ih": "weight_ih", "W_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}


def _functional_forward(module: ModuleType, case: Case, inputs: dict, training: bool) -> Tuple[np.ndarray, list]:
    """All layers and directions through ``module`` (pyrnn.functional or pyrnn.reference);
    returns (y, the caches in _stack order)."""

    def run(layer: int, d: int, x: np.ndarray) -> Tuple[np.ndarray, Any]:
        names = param_names(layer, d)
        p = {arg: inputs["params"][names[key]] for arg, key in FUNCTIONAL_ARGS.items()}
        out, cache = run_forward(module, case.variant, dict(p, x=x), lengths=inputs["lengths"],
                                 reverse=bool(d), training=training)
        return out["y"], cache

    y, results = _stack.forward(run, inputs["x"], case.layers, case.directions)
    return y, [cache for _, cache in results]


def _functional_backward(module: ModuleType, case: Case, caches: list, dy: np.ndarray) -> np.ndarray:
    def run(layer: int, d: int, dy_d: np.ndarray) -> np.ndarray:
        return run_backward(module, case.variant, caches[layer * case.directions + d], {"y": dy_d})["x"]

    return _stack.backward(run, dy, case.layers, case.directions, case.H)


def functional_runner(module: ModuleType) -> RunnerFactory:
    """Runner factory for pyrnn.functional or pyrnn.reference (same API)."""

    def make(case: Case, inputs: dict, mode: str) -> Step:
        if mode == "fwd":
            return lambda: (_functional_forward(module, case, inputs, False)[0], None)

        def train_step() -> Tuple[Any, Any]:
            y, caches = _functional_forward(module, case, inputs, True)
            return y, _functional_backward(module, case, caches, inputs["dy"])

        return train_step

    return make


LAYERS: dict[str, Callable[..., Any]] = {"lstm": pyrnn.LSTM, "gru": pyrnn.GRU, "rnn": pyrnn.RNN}


def layer_runner(case: Case, inputs: dict, mode: str) -> Step:
    """pyrnn.LSTM / GRU / RNN (PyTorch-compatible layers)."""
    layer = LAYERS[case.cell](case.input_size, case.H, case.layers, bidirectional=case.bidirectional,
                              **_cells.cell_options(_cells.CELLS[case.variant]))
    layer.load_state_dict(inputs["params"])
    layer.train(mode == "fwdbwd")
    lengths = {} if inputs["lengths"] is None else {"lengths": inputs["lengths"]}
    if mode == "fwd":
        return lambda: (layer(inputs["x"], **lengths)[0], None)

    def train_step() -> Tuple[Any, Any]:
        layer.zero_grad()
        y, _ = layer(inputs["x"], **lengths)
        return y, layer.backward(inputs["dy"])[0]

    return train_step


def pyrnn_runner(case: Case, inputs: dict, mode: str) -> Step:
    make = layer_runner if case.impl == "layer" else functional_runner(F)
    return make(case, inputs, mode)


# torch.nn module and extra constructor arguments per variant (variants missing here have no PyTorch peer)
TORCH_MODULES = {
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
    "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}


def torch_runner(case: Case, inputs: dict, mode: str) -> Step:
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

    def forward(x: Any) -> Any:
        if lengths is None:
            return module(x)[0]
        packed = rnn_utils.pack_padded_sequence(x, lengths, enforce_sorted=False)
        return rnn_utils.pad_packed_sequence(module(packed)[0], total_length=case.T)[0]

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
    estimate = reference_estimate_s(case, inputs["lengths"], mode)
    if estimate > REFERENCE_MAX_S:
        raise Unavailable(f"skipped: ~{estimate:.0f} s per call")
    return functional_runner(R)(case, inputs, mode)


RUNNERS: dict[str, RunnerFactory] = {"pyrnn": pyrnn_runner, "torch": torch_runner, "reference": reference_runner}


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


def check_case(runners: dict, modes: Iterable[str]) -> dict[str, dict[str, float]]:
    """{peer: {"y": err, "dx": err}} comparing each peer's outputs with pyrnn's (max over modes)."""
    errors: dict[str, dict[str, float]] = {}
    for mode in modes:
        y, dx = runners["pyrnn"][mode]()
        for peer in PEERS:
            run = runners[peer][mode]
            if not callable(run):
                continue
            py, pdx = run()
            errs = errors.setdefault(peer, {})
            errs["y"] = max(errs.get("y", 0.0), max_rel_error(y, py))
            if dx is not None:
                errs["dx"] = max(errs.get("dx", 0.0), max_rel_error(dx, pdx))
    return errors


def check_summary(errors: dict[str, dict[str, float]]) -> str:
    bad = [f"{peer} {k} {e:.1e}" for peer, errs in errors.items() for k, e in errs.items() if not e <= CHECK_TOL]
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


class ThreadSetter:
    """Sets pyrnn's and PyTorch's thread counts together; restores both on exit."""

    def __init__(self) -> None:
        self.torch = _import_torch()
        self.saved = (pyrnn.thread_setting(), self.torch.get_num_threads() if self.torch else None)

    def set(self, n: int) -> None:
        pyrnn.set_num_threads(n)
        if self.torch is not None:
            self.torch.set_num_threads(n)

    def __enter__(self) -> ThreadSetter:
        return self

    def __exit__(self, *exc: object) -> None:
        pyrnn.set_num_threads(self.saved[0])
        if self.torch is not None:
            self.torch.set_num_threads(self.saved[1])


def _make_runners(case: Case, inputs: dict, modes: Sequence[str], peers: Sequence[str]) -> dict:
    """{framework: {mode: callable, the reason it is unavailable, or None (not requested)}}."""
    runners: dict[str, dict[str, Any]] = {}
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


def _base_row(case: Case, inputs: dict, mode: str, threads: Optional[int]) -> dict[str, Any]:
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


def run_suite(cases: Sequence[Case], threads: Sequence[int], modes: Sequence[str], peers: Sequence[str],
              profile: Profile, peaks: dict[int, float], log: Optional[TextIO] = None) -> list[dict[str, Any]]:
    log = sys.stderr if log is None else log
    rows, total, done = [], len(cases) * len(threads) * len(modes), 0
    with ThreadSetter() as setter:
        for case in cases:
            inputs = build_inputs(case)
            runners = _make_runners(case, inputs, modes, peers)
            failed = next((r for r in runners["pyrnn"].values() if not callable(r)), None)
            if failed is not None:  # pyrnn cannot run this case: one row for the case
                done += len(threads) * len(modes)
                print(f"[{done}/{total}] {case.label}: {failed}", file=log, flush=True)
                rows.append(dict(_base_row(case, inputs, "-", None), status=failed))
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


def _time_row(row: dict[str, Any], runners: dict, mode: str, profile: Profile, peak: float) -> None:
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
