"""The command line, ``python -m pyrnn.bench``: options, machine information, and main()."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import shlex
import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np

import pyrnn

from .cases import MODES, PROFILES, SUITES, Profile, scaling_threads, select_cases
from .report import PLOT_HINT, footnotes, render_markdown, render_text, write_plot
from .runner import (LOW_PRECISIONS, PEERS, PRECISIONS, add_bandwidth, field, measure_bandwidth, measure_peaks,
                     precision_summary, run_suite, training_memory)

CELLS = ("lstm", "gru", "rnn")  # the families (pyrnn._cells.FAMILIES), in the suite's order


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


def load_average() -> Optional[float]:
    """1-minute load average (None where unknown): a busy machine makes the numbers unreliable."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _list_of(choices: Optional[Sequence[str]] = None, kind: Callable[[str], Any] = str) -> Callable[[str], list]:
    def parse(text: str) -> list:
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
            if kind is int and not 1 <= v <= 4096:  # (the FMA-peak probe starts that many threads)
                raise argparse.ArgumentTypeError(f"thread counts must be in 1..4096, got {v}")
            if v not in out:
                out.append(v)
        return out

    return parse


def _positive_int(text: str) -> int:
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
        description="Benchmark pyrnn's fp32 LSTM/GRU/RNN kernels against PyTorch (and ONNX Runtime, JAX, "
        "PyTorch int8) on the standard suite, each framework in a process of its own.",
        epilog="Exit status: 0 all good, 1 a correctness mismatch or a failed case, 2 bad usage.")
    p.add_argument("--suite", choices=sorted(SUITES), default="standard",
                   help="standard: the shapes below (default); scaling: LSTM and GRU B=128 T=50 H=1024 at "
                   "1, 2, 4, ... threads up to the cores, with a speed-up table")
    p.add_argument("--quick", action="store_true",
                   help="reduced suite (T capped at 20, fewer repetitions), ~35 s against torch, ~2 min with "
                   "every peer")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: tiny shapes
    p.add_argument("--threads", type=_list_of(kind=int), default=None,
                   help=f"comma-separated thread counts (default: {','.join(map(str, sorted({1, cores})))}; "
                   f"with --suite scaling {','.join(map(str, scaling_threads(cores)))})")
    p.add_argument("--cells", type=_list_of(CELLS), default=list(CELLS), help="subset of lstm,gru,rnn")
    p.add_argument("--modes", type=_list_of(MODES), default=list(MODES), help="subset of fwd,fwdbwd")
    p.add_argument("--reps", type=_positive_int, default=None, metavar="N",
                   help="at least N timed repetitions per case and framework (default 3; more steadies "
                   "medians on a noisy machine)")
    p.add_argument("--peers", type=_list_of(PEERS), default=["torch"],
                   help="comma-separated frameworks to time against pyrnn: torch (default), ort (ONNX Runtime, "
                   "inference), jax, torch-int8 (dynamic int8, inference), reference (the NumPy reference); "
                   "one that is not installed shows '-'")
    p.add_argument("--precision", type=_list_of(PRECISIONS), default=["fp32"], metavar="LIST",
                   help="comma-separated weight precisions of pyrnn's inference (fwd) rows: fp32 (default, always "
                   "run), int8 (int8 weights with a scale per row, activations quantized per row, int32 sums), "
                   "bf16 (bfloat16 weights, fp32 sums): each adds columns with pyrnn's time in it, its speed "
                   "against the best fp32 peer (and, for int8, against torch-int8) and its error against "
                   "pyrnn's fp32 output, and a summary line; float32 cases only")
    p.add_argument("--reference", action="store_true",
                   help="also time the NumPy reference (pyrnn.reference), skipping very slow shapes "
                   "(the same as adding reference to --peers)")
    p.add_argument("--in-process", action="store_true",
                   help="run every framework in this process, unpinned, instead of one pinned worker process "
                   "per framework and thread count (debugging; idle threads of one framework can then slow "
                   "the next)")
    p.add_argument("--json", metavar="PATH", help="write all rows and machine info as JSON")
    p.add_argument("--markdown", metavar="PATH", help="write a markdown table")
    p.add_argument("--memory", action="store_true",
                   help="also measure peak RSS of one LSTM B=64 T=50 H=512 training step (pyrnn vs PyTorch)")
    p.add_argument("--plot", metavar="PATH.png",
                   help="bar chart: GFLOP/s, or with several fp32 peers the best peer's time over pyrnn's "
                   f"(needs matplotlib: {PLOT_HINT})")
    p.add_argument("--from-json", metavar="PATH",
                   help="run nothing: redraw --plot from a run recorded with --json")
    return p


def _output_paths(args: argparse.Namespace) -> list[tuple[str, Optional[str]]]:
    """(option, path or None) of the files a run writes."""
    return [("--json", args.json), ("--markdown", args.markdown), ("--plot", args.plot)]


def output_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the --json / --markdown / --plot paths, checked before anything runs (a
    full suite takes minutes): an empty path, two options naming one file, a folder that does not
    exist, a file that cannot be opened for writing (a name too long, a read-only file or file
    system), a plot format matplotlib cannot write."""
    problems = []
    seen: dict[str, str] = {}
    for opt, path in _output_paths(args):
        if path is None:
            continue
        if not path:
            problems.append(f"{opt}: an empty path")
            continue
        folder = os.path.dirname(os.path.abspath(path))
        real = os.path.realpath(path)
        if real in seen:
            problems.append(f"{opt} {path}: the same file as {seen[real]} (one would overwrite the other)")
            continue
        seen[real] = opt
        if os.path.isdir(path):
            problems.append(f"{opt} {path}: is a folder, not a file")
        elif not os.path.isdir(folder):
            problems.append(f"{opt} {path}: the folder {folder} does not exist")
        else:
            problem = _unwritable(path)
            if problem:
                problems.append(f"{opt} {path}: cannot be written ({problem})")
    if args.plot:
        from matplotlib.figure import Figure

        formats = Figure().canvas.get_supported_filetypes()
        ext = os.path.splitext(args.plot)[1].lstrip(".").lower()
        if ext not in formats:
            problems.append(f"--plot {args.plot}: matplotlib writes {', '.join(sorted(formats))}, not {ext!r}")
    return problems


def _unwritable(path: str) -> Optional[str]:
    """Why ``path`` cannot be opened for writing, or None: opened for appending (an existing file is
    left as it was) and removed again if this made it."""
    real = os.path.realpath(path)  # (a symbolic link's target: the file that would be written)
    existed = os.path.exists(real)
    try:
        with open(real, "a", encoding="utf-8"):
            pass
    except OSError as e:
        return e.strerror or str(e)
    if not existed:
        try:
            os.remove(real)
        except OSError:
            pass
    return None


def _write_outputs(args: argparse.Namespace, write: dict[str, Callable[[str], None]]) -> bool:
    """Writes each output given (option -> writer of a path); one that fails is reported and the
    others are still written. Returns whether all were."""
    ok = True
    for opt, path in _output_paths(args):
        if not path:
            continue
        try:
            write[opt](path)
        except OSError as e:
            print(f"error: {opt} {path}: {e.strerror or e}", file=sys.stderr)
            ok = False
    return ok


def from_json(args: argparse.Namespace) -> int:
    """--from-json: the plot of a recorded run, without measuring anything. (Not its markdown: the
    footnotes describe how the current version measures, which a recorded run may predate.)"""
    try:
        with open(args.from_json, encoding="utf-8") as f:
            recorded = json.load(f)
        rows, meta = recorded["rows"], recorded
        meta["peak_gflops"] = {int(t): p for t, p in recorded["peak_gflops"].items()}
        write_plot(args.plot, rows, meta)  # (the paths were checked before: its errors are the file's)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        print(f"error: --from-json {args.from_json}: not a run written by --json ({e!r})", file=sys.stderr)
        return 2
    return 0


def machine_info(args: argparse.Namespace, argv: Sequence[str], profile: Profile) -> dict[str, Any]:
    """Run metadata; "peak_gflops", "torch", "versions", "unavailable" and "workers" are filled in by the
    caller once measured."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m pyrnn.bench" + (" " + shlex.join(argv) if argv else ""),
        "suite": (profile.description if args.suite == "standard" else "scaling suite" if profile.name == "full"
                  else f"scaling suite, {profile.description}"),
        "machine": {"cpu": cpu_model(), "cores": available_cores(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_average_at_start": load_average()},
        "pyrnn": pyrnn._config.config(),
        "numpy": np.__version__,
        "torch": None,
        "threads": args.threads,
        "modes": args.modes,
        "peers": args.peers + (["reference"] if args.reference and "reference" not in args.peers else []),
        "precisions": ["fp32"] + [p for p in args.precision if p in LOW_PRECISIONS],
        "isolated": not args.in_process,
        "peak_gflops": {},
    }


def failed_row(row: dict[str, Any]) -> bool:
    notes = [row.get(field(fw, "note")) or "" for fw in (*PEERS, *(f"pyrnn-{p}" for p in LOW_PRECISIONS))]
    return (row["status"].startswith("error") or (row["check"] or "ok") != "ok"
            or any(n.startswith("error") for n in notes))


def with_reps(profile: Profile, reps: int) -> Profile:
    """``profile`` with at least ``reps`` timed repetitions (``--reps``), its description saying so."""
    max_reps = max(profile.max_reps, reps)
    return dataclasses.replace(profile, min_reps=reps, max_reps=max_reps, description=profile.description.replace(
        f"at most {profile.max_reps} repetitions", f"at most {max_reps} repetitions"))


def main(argv: Optional[Sequence[Any]] = None) -> int:
    """``python -m pyrnn.bench``: parses ``argv`` (default ``sys.argv[1:]``), runs the suite, prints the
    table and writes the files asked for (with ``--from-json``, only redraws a recorded run's plot).
    Returns the exit status: 0 all good, 1 a correctness mismatch or a failed case, 2 bad usage."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, message already printed)
        return int(e.code or 0)
    if args.from_json and (not args.plot or args.markdown or args.json):
        print("error: --from-json redraws a plot: give --plot PATH.png (and no --markdown or --json)",
              file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(f"error: --plot needs matplotlib, which is not installed: {PLOT_HINT}", file=sys.stderr)
            return 2
    problems = output_problems(args)
    if problems:
        print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
        return 2
    if args.from_json:
        return from_json(args)
    try:
        pyrnn.isa()
    except ValueError as e:  # a bad PYRNN_ISA: a message, not a traceback from the first probe
        print(f"error: {e}", file=sys.stderr)
        return 2
    in_suite = {c.cell for c in SUITES[args.suite]}
    if not in_suite & set(args.cells):
        print(f"error: the {args.suite} suite has no case of --cells {','.join(args.cells)} (it has "
              f"{', '.join(sorted(in_suite))})", file=sys.stderr)
        return 2
    cores = available_cores()
    if args.threads is None:
        args.threads = scaling_threads(cores) if args.suite == "scaling" else sorted({1, cores})
    elif max(args.threads) > cores:  # measured anyway: a user may want to see oversubscription
        print(f"warning: --threads {max(args.threads)} is more than the cores this process may use ({cores}); "
              f"threads then share cores and the times say little about the kernels", file=sys.stderr)
    profile = PROFILES["tiny" if args.tiny else "quick" if args.quick else "full"]
    if args.reps is not None:
        profile = with_reps(profile, args.reps)
    meta = machine_info(args, argv, profile)  # first: the load average before we add to it
    peaks = meta["peak_gflops"] = measure_peaks(args.threads, profile)
    bandwidth = meta["bandwidth_gbs"] = measure_bandwidth(args.threads, profile)
    cases = select_cases(profile, args.cells, args.suite)
    info: dict[str, Any] = {}
    low = meta["precisions"][1:]
    rows = run_suite(cases, args.threads, args.modes, meta["peers"], profile, peaks,
                     isolate=not args.in_process, info=info, precisions=low)
    meta.update(info)
    if low:
        meta["precision_summary"] = precision_summary(rows, low)
    add_bandwidth(rows, bandwidth, pyrnn.cache_sizes())
    meta["torch"] = info["versions"].get("torch")
    meta["machine"]["load_average_at_end"] = load_average()
    if args.memory:
        meta["memory"] = training_memory(["pyrnn"] + (["torch"] if importlib.util.find_spec("torch") else []))

    print(render_text(rows, meta))

    def write_json(path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(dict(meta, peak_gflops={str(t): p for t, p in peaks.items()}, rows=rows,
                           footnotes=footnotes(rows, meta)), f, indent=1, default=str)

    def write_markdown(path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(render_markdown(rows, meta))

    written = _write_outputs(args, {"--json": write_json, "--markdown": write_markdown,
                                    "--plot": lambda path: write_plot(path, rows, meta)})
    failed = [r for r in rows if failed_row(r)]
    if failed:
        print(f"{len(failed)} row(s) failed a correctness check or errored: see the check column and notes",
              file=sys.stderr)
    return 1 if failed or not written else 0
