"""One framework's timings, in a process of its own pinned to the cores of its thread count.

The parent (:func:`pyrnn.bench.runner.run_suite`) writes a job (a pickle: the
framework, its thread count and cores, the cases, modes and profile) and starts
``python -c BOOTSTRAP CORES JOB RESULT``: the bootstrap pins the process with
``os.sched_setaffinity`` before anything that starts threads is imported, then
runs :func:`main`. ``python -m pyrnn.bench.worker JOB RESULT`` also works (it
pins on start, after pyrnn's import). For every case the worker rebuilds the
inputs from the case and seed (:func:`cases.build_inputs`), makes the
framework's runner, keeps one call's y and dx (for the parent's check against
pyrnn) where asked, and times the calls with :func:`runner.time_calls`. The
result, a pickle, holds the times, notes, outputs, and the process's pid and
affinity. pyrnn's worker also times, for the inference rows, its runs with
weights packed in each of job["precisions"] (int8, bf16), interleaved with
its fp32 calls, and measures their outputs' error against its fp32 output.
Progress lines go to the process's original stdout; anything the frameworks
print goes to stderr, which the parent keeps for a failure's note.
"""

from __future__ import annotations

import glob
import importlib
import os
import pickle
import sys
import warnings
from typing import Any, Callable, Optional, Sequence, TextIO

import numpy as np

# Run with ``python -c BOOTSTRAP CORES JOB RESULT``: pins before pyrnn (OpenMP) or any framework is imported,
# so every thread the frameworks start inherits the mask.
BOOTSTRAP = ("import os, sys\n"
             "if hasattr(os, 'sched_setaffinity'):\n"
             "    os.sched_setaffinity(0, [int(c) for c in sys.argv[1].split(',')])\n"
             "from pyrnn.bench.worker import main\n"
             "sys.exit(main(sys.argv[2:]))\n")

# The modules a framework's worker needs, imported first: a missing one makes the whole framework unavailable.
REQUIRES = {
    "pyrnn": (), "reference": (),
    "torch": ("torch",), "torch-int8": ("torch",),
    "ort": ("onnxruntime", "onnx", "torch"),
    "jax": ("jax",),
}


def affinity() -> Optional[list[int]]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def thread_affinity() -> Optional[list[int]]:
    """The union of every thread's allowed CPUs (Linux /proc), framework pools included."""
    cpus: set[int] = set()
    paths = glob.glob(f"/proc/{os.getpid()}/task/*/status")
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                line = next(l for l in f if l.startswith("Cpus_allowed_list:"))  # noqa: E741
        except (OSError, StopIteration):
            continue
        for part in line.split(":", 1)[1].strip().split(","):
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return sorted(cpus) if paths else None


def pin(cores: Optional[Sequence[int]]) -> None:
    if cores and hasattr(os, "sched_setaffinity") and affinity() != sorted(cores):
        os.sched_setaffinity(0, cores)


def version(framework: str) -> str:
    """The framework's version (what it ran on), for the report's header."""
    import pyrnn

    if framework == "pyrnn":
        return pyrnn.__version__
    if framework == "reference":
        return f"(NumPy {np.__version__})"
    if framework == "jax":
        import jax

        return str(jax.__version__)
    import torch  # every remaining framework has torch

    if framework == "torch":
        return str(torch.__version__)
    if framework == "torch-int8":
        return f"{torch.__version__}, engine {torch.backends.quantized.engine}"
    if framework == "ort":
        ort = importlib.import_module("onnxruntime")
        return f"{ort.__version__} (export: torch {torch.__version__})"
    raise ValueError(f"unknown framework {framework!r}")


def set_threads(framework: str, n: int) -> None:
    """The thread count of the framework the worker runs (ORT reads runner.current_threads() per session;
    XLA's is fixed at start by XLA_FLAGS and the pinned cores)."""
    from . import runner

    runner.set_current_threads(n)
    if framework == "pyrnn":
        import pyrnn

        pyrnn.set_num_threads(n)
    if framework in ("torch", "torch-int8", "ort"):
        import torch

        torch.set_num_threads(n)


def _numpy(a: Any) -> Optional[np.ndarray]:
    if a is None:
        return None
    return np.array(a.detach().numpy() if hasattr(a, "detach") else a, copy=True)


def _low_precision_steps(job: dict, case: Any, inputs: dict, mode: str, entry: dict) -> dict[str, Callable]:
    """pyrnn's inference steps with reduced-precision weights (job["precisions"]), for a fwd entry; fills
    entry["precisions"][p] = {"ms", "reps", "note", "max_err", "mean_err"}, a note where a step cannot be made."""
    from . import runner

    steps: dict[str, Callable] = {}
    entry["precisions"] = {}
    if job["framework"] != "pyrnn" or mode != "fwd":
        return steps
    for p in job.get("precisions", ()):
        e: dict[str, Any] = {"ms": None, "reps": None, "note": None, "max_err": None, "mean_err": None}
        entry["precisions"][p] = e
        try:
            steps[p] = runner.pyrnn_runner(case, inputs, mode, precision=p)
        except runner.Unavailable as err:
            e["note"] = str(err)
        except Exception as err:  # reported in the row, fp32 and the other precisions go on
            e["note"] = _error(err)
    return steps


def _error(e: Exception) -> str:
    return f"error: {type(e).__name__}: {e}"


def run_job(job: dict, progress: Callable[[str], None]) -> dict:
    """Times ``job["framework"]`` on every case and mode (see the module doc); returns the result dict.

    entries[(case index, mode)]: {"ms", "reps", "note", "built", "y", "dx"} (pyrnn's also "precisions",
    see :func:`_low_precision_steps`); a runner that cannot be made leaves built False and the reason in
    note, a call that raises leaves "error: ..." in note.
    """
    from . import runner
    from .cases import build_inputs

    fw, n = job["framework"], job["threads"]
    result: dict[str, Any] = {"framework": fw, "threads": n, "cores": job["cores"], "pid": os.getpid(),
                              "isolated": job["isolated"], "version": None, "unavailable": None, "entries": {}}
    for module in REQUIRES[fw]:
        try:
            importlib.import_module(module)
        except ImportError as e:
            result["unavailable"] = f"{module} not importable"
            progress(f"{fw}: {module} not importable ({e})")
            break
        except Exception as e:  # (jax with a mismatched jaxlib raises RuntimeError: the peer is unavailable)
            result["unavailable"] = f"{module} failed to import ({type(e).__name__}: {e})"
            progress(f"{fw}: {result['unavailable']}")
            break
    if result["unavailable"] is None:
        result["version"] = version(fw)
        set_threads(fw, n)
    make = runner.RUNNERS[fw]
    for i, case in enumerate(job["cases"]):
        inputs = build_inputs(case, job["seed"])
        for mode in job["modes"]:
            entry: dict[str, Any] = {"ms": None, "reps": None, "note": None, "built": True, "y": None, "dx": None}
            result["entries"][(i, mode)] = entry
            if result["unavailable"] is not None:
                entry.update(note=result["unavailable"], built=False)
                continue
            try:
                step = make(case, inputs, mode)
            except runner.Unavailable as e:
                entry.update(note=str(e), built=False)
                continue
            except Exception as e:  # e.g. an API that changed: report it, run the other cases
                entry.update(note=_error(e), built=False)
                continue
            low = _low_precision_steps(job, case, inputs, mode, entry)
            also = "".join(f" +{p}" for p in low)
            progress(f"+ {fw}: {case.label} {mode} {n} thread{'s' if n > 1 else ''}{also} ...")
            timings: dict[str, Any] = {}
            try:
                if job["keep_outputs"] or low:
                    y, dx = step()
                    y = _numpy(y)
                    if job["keep_outputs"]:
                        entry.update(y=y, dx=_numpy(dx))
                    for p in list(low):  # the same inputs: the error against pyrnn's own fp32 output
                        try:
                            max_err, mean_err = runner.output_errors(low[p]()[0], y, inputs["lengths"])
                            entry["precisions"][p].update(max_err=max_err, mean_err=mean_err)
                        except Exception as e:
                            entry["precisions"][p]["note"] = _error(e)
                            del low[p]
                # interleaved, one call of each per round: a burst of load elsewhere slows them alike
                timings = runner.time_calls({fw: step, **{f"{fw}-{p}": s for p, s in low.items()}}, job["profile"])
                timed = timings[fw]
            except Exception as e:
                timed = e
            if isinstance(timed, Exception):
                entry["note"] = _error(timed)
            else:
                entry.update(ms=timed[0] * 1e3, reps=timed[1])
            for p in low:
                t = timings.get(f"{fw}-{p}")
                if isinstance(t, Exception):
                    entry["precisions"][p]["note"] = _error(t)
                elif t is not None:
                    entry["precisions"][p].update(ms=t[0] * 1e3, reps=t[1])
            del step, low
    result.update(affinity=affinity(), thread_affinity=thread_affinity())
    return result


def main(argv: Sequence[str]) -> int:
    """``JOB RESULT``: reads the job pickle, writes the result pickle."""
    job_path, result_path = argv
    with open(job_path, "rb") as f:
        job = pickle.load(f)
    pin(job["cores"])
    # progress on the original stdout; whatever the frameworks print goes to stderr
    out: TextIO = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    warnings.simplefilter("ignore")  # deprecations and the like would only fill the kept stderr

    def progress(text: str) -> None:
        print(text, file=out, flush=True)

    result = run_job(job, progress)
    tmp = result_path + ".tmp"
    with open(tmp, "wb") as w:
        pickle.dump(result, w, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, result_path)
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
