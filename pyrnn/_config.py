"""Build configuration, ISA selection and thread control."""

from __future__ import annotations

import math
import numbers
import sys

from . import _core


def _warn_bad_environment() -> None:
    """A RuntimeWarning for a PYRNN_CACHE_MB that the C++ cache cannot read (it keeps its default)."""
    import os
    import warnings

    value = os.environ.get("PYRNN_CACHE_MB")
    if value is None:
        return
    text = value.lstrip().rstrip(" \t")  # (the C++ skips leading white space, trailing blanks and tabs only)
    try:  # as the C++ reads it (strtod): hexadecimal too (0x10 is 16), no digit separators (1_000)
        hexa = text.lstrip("+-").lower().startswith("0x")
        ok = ("_" not in text and not text[-1:].isspace()  # (float() would drop a trailing newline)
              and (float.fromhex(text) if hexa else float(text)) >= 0)
    except ValueError:
        ok = False
    if not ok:
        warnings.warn(f"PYRNN_CACHE_MB={value!r} is not a number of MiB >= 0; the buffer cache keeps its default "
                      f"limit of 1024 MiB (pyrnn.set_cache_limit sets one at run time)", RuntimeWarning, stacklevel=3)


_warn_bad_environment()


def isa() -> str:
    """The ISA level kernels use now: 'avx512', 'avx2' or 'baseline' (the
    architecture's 16-byte SIMD: SSE2 on x86-64, NEON on aarch64).

    ``PYRNN_ISA`` forces a lower level; a level above what this CPU (or build)
    supports raises ValueError.
    """
    return _core.isa_selected()


def get_num_threads() -> int:
    """The most threads a pyrnn kernel call uses: the fixed count set with
    :func:`set_num_threads`, or in the default adaptive mode the limit
    (``OMP_NUM_THREADS``, else the core count)."""
    return _core.get_num_threads()


def thread_setting() -> int | str:
    """``"auto"`` (the default, adaptive) or the fixed count given to :func:`set_num_threads`.

    Pass it back to :func:`set_num_threads` to restore a setting.
    """
    return "auto" if _core.threads_adaptive() else _core.get_num_threads()


_MAX_THREADS = 2**31 - 1  # the kernels' int


def set_num_threads(n: int | str) -> None:
    """Set the threads pyrnn's kernels use: a positive integer, or ``"auto"``.

    An integer fixes the count for every call. ``"auto"`` (the default) lets
    each kind of call (entry point, cell, dtype, shape) use up to
    ``OMP_NUM_THREADS`` (else the core count) threads, or one thread where one
    is measured faster: pyrnn times both every so often and keeps the faster.
    That matters in loops that also run NumPy: NumPy's BLAS threads
    busy-wait between calls and, on the same cores, make pyrnn's per-step
    barriers wait. Results are bitwise identical for any thread count.

    This affects pyrnn only: NumPy's and PyTorch's thread settings are untouched.
    """
    if isinstance(n, str) and n == "auto":
        _core.set_adaptive_threads()
        return
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"num_threads must be a positive integer or 'auto', got {type(n).__name__} {n!r}")
    if not 1 <= n <= _MAX_THREADS:
        raise ValueError(f"num_threads must be a positive integer or 'auto' (integers up to {_MAX_THREADS}), got {n}")
    _core.set_num_threads(int(n))


def thread_stats() -> dict:
    """What the adaptive thread choice has done: shapes (keys) seen, calls run
    on one thread and on all threads, and ``timed_seconds``, the time it
    measured over those calls (calls below the split threshold and calls in
    fixed mode are not counted)."""
    return dict(_core.thread_stats())


def cache_info() -> dict:
    """pyrnn's cache of large buffers: bytes and blocks held now, the limit, hits and misses.

    Workspaces, scratch and the kernels' output arrays (from 128 KiB up) are
    taken from this cache and return to it when freed, so a training loop
    reuses memory it has already touched instead of page-faulting fresh
    mappings every call (on a 16-core VM this made one LSTM training step
    ~3x faster at 16 threads). Only freed blocks are held, up to the limit.
    """
    return dict(_core.cache_info())


def set_cache_limit(megabytes: float) -> None:
    """Hold at most this many MiB of freed buffers (0 disables the cache; default 1024,
    or the ``PYRNN_CACHE_MB`` environment variable). Blocks beyond it are freed now."""
    if isinstance(megabytes, bool) or not isinstance(megabytes, numbers.Real):
        raise TypeError(f"megabytes must be a number, got {type(megabytes).__name__} {megabytes!r}")
    if not 0 <= megabytes <= 2**40:
        raise ValueError(f"megabytes must be a number in [0, 2**40], got {megabytes!r}")
    _core.set_cache_limit(int(megabytes * 2**20))


def empty_cache() -> None:
    """Free every buffer pyrnn's cache holds (buffers in use are not affected)."""
    _core.empty_cache()


_MAX_PROBE_THREADS = 4096  # libgomp ends the process when it cannot create a region's threads


def _probe_threads(threads) -> int:
    """The thread count of a machine probe: an integer in [1, 4096] (each thread runs at once)."""
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or int(threads) < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if int(threads) > _MAX_PROBE_THREADS:
        raise ValueError(f"threads must be at most {_MAX_PROBE_THREADS} for a probe of the machine, got {threads}")
    return int(threads)


_PROBE_MAX_SECONDS = 3600.0


def _probe_seconds(seconds) -> float:
    """A probe's time: a positive number of seconds, at most an hour (1e30 ran for ever; inf never
    returned; a bool is no time)."""
    value = float(seconds) if isinstance(seconds, numbers.Real) and not isinstance(seconds, bool) else math.nan
    if not 0 < value <= _PROBE_MAX_SECONDS:
        raise ValueError(f"seconds must be a positive number of at most {_PROBE_MAX_SECONDS:g} (an hour), "
                         f"got {seconds!r}")
    return value


def fma_peak_gflops(threads: int | None = None, seconds: float = 0.2) -> float:
    """Measured fp32 FMA peak (GFLOP/s) of this machine for the selected ISA.

    Runs independent FMA chains in registers on ``threads`` threads (default:
    pyrnn's thread count); this is the roofline benchmarks report against.
    """
    threads = _probe_threads(get_num_threads() if threads is None else threads)
    return _core.fma_peak_gflops(threads, _probe_seconds(seconds))


def cache_sizes() -> dict:
    """This CPU's data caches as Linux reports them (``/sys/devices/system/cpu``):
    ``{"L1": bytes, "L2": bytes, "L3": bytes}`` for one core's view (L3 is shared);
    levels the system does not report are missing."""
    import glob
    import os

    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    out = {}
    for d in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(os.path.join(d, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(d, "level")) as f:
                level = int(f.read())
            with open(os.path.join(d, "size")) as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and text:
            size = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
            out[f"L{level}"] = size
    return dict(sorted(out.items()))


def memory_bandwidth(size: int | None = None, threads: int | None = None, seconds: float = 0.1):
    """Measured read bandwidth in GB/s (all threads together), the bound of a
    small-batch step, which reads all of W_hh for a few FLOPs per element.

    With ``size`` (bytes per thread): that working set read again and again
    with vector loads. Without: a dict over this machine's levels, each
    ``{"bytes": per-thread set, "gbs": GB/s}``: half of L1, half of L2, half of
    L3's share per thread (the sets stay inside each level) and 4x L3 in all
    (DRAM; at least 64 MiB a thread, at most 1 GiB in all).
    ``threads`` defaults to pyrnn's thread count.
    """
    threads = _probe_threads(get_num_threads() if threads is None else threads)
    seconds = _probe_seconds(seconds)
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not 1 <= size < 2**62:
            raise ValueError(f"size must be a positive number of bytes below 2**62, got {size!r}")
        return _core.read_bandwidth_gbs(int(size), int(threads), float(seconds))
    caches = cache_sizes()
    l3 = caches.get("L3", 32 * 2**20)
    # DRAM: 4x L3 in all (at least 64 MiB a thread, at most 1 GiB in all)
    dram = min(max(4 * l3 // threads, 64 * 2**20), max(2**30 // threads, 2**20))
    sets = {"L1": caches.get("L1", 32 * 2**10) // 2, "L2": caches.get("L2", 512 * 2**10) // 2,
            "L3": l3 // (2 * threads), "DRAM": dram}
    return {level: {"bytes": b, "gbs": _core.read_bandwidth_gbs(b, int(threads), float(seconds))}
            for level, b in sets.items()}


def _openmp_wait() -> str:
    """How long libgomp's idle threads busy-wait, as pyrnn's import left it."""
    import os

    import pyrnn

    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if var in os.environ:
            return f"{var}={os.environ[var]} (set by the user)"
    if pyrnn._OPENMP_LOADED_BEFORE:
        return "libgomp's default (~3 ms: it was loaded before pyrnn)"
    return "short (GOMP_SPINCOUNT=10000, ~0.1 ms, set while pyrnn loaded libgomp)"


def config() -> dict:
    """The configuration as a dict (what show_config prints)."""
    from . import __version__

    info = _core.build_info()
    try:
        selected = _core.isa_selected()
    except ValueError as e:
        selected = f"invalid PYRNN_ISA: {e}"
    return {
        "version": __version__,
        "compiler": info["compiler"],
        "flags": info["flags"],
        "isa_flags": dict(info["isa_flags"]),
        "openmp": info["openmp"],
        "isa_supported": list(_core.isa_supported()),
        "isa_selected": selected,
        "num_threads": _core.get_num_threads(),
        "thread_setting": thread_setting(),
        "openmp_wait": _openmp_wait(),
        "num_procs": _core.num_procs(),
        "cache_limit_mb": _core.cache_info()["limit_bytes"] / 2**20,
        "xla_ffi": getattr(_core, "xla_ffi_targets", None) is not None,
        "blocking_caches": dict(_core.blocking_caches()),
    }


def show_config(file=None) -> None:
    """Print version, compiler and flags, ISA levels and threads."""
    out = sys.stdout if file is None else file
    if not callable(getattr(out, "write", None)):
        raise TypeError(f"file must be a writable text stream (with a write method) or None, got "
                        f"{type(file).__name__}")
    c = config()
    print(f"pyrnn {c['version']}", file=out)
    print(f"  compiler:       {c['compiler']}", file=out)
    print(f"  flags:          {c['flags']}", file=out)
    for name, flags in c["isa_flags"].items():
        print(f"  {name + ' flags:':15} {flags or '(none)'}", file=out)
    print(f"  OpenMP:         {c['openmp']}", file=out)
    print(f"  ISA supported:  {', '.join(c['isa_supported'])}", file=out)
    print(f"  ISA selected:   {c['isa_selected']}", file=out)
    mode = (f"auto, 1 to {c['num_threads']} per call" if c["thread_setting"] == "auto"
            else f"{c['num_threads']} (fixed)")
    print(f"  threads:        {mode} (cores available: {c['num_procs']})", file=out)
    print(f"  OpenMP wait:    {c['openmp_wait']}", file=out)
    print(f"  buffer cache:   {c['cache_limit_mb']:g} MiB limit (pyrnn.set_cache_limit, PYRNN_CACHE_MB)", file=out)
    caches = ", ".join(f"{k} {v // 1024} KiB" for k, v in c["blocking_caches"].items())
    print(f"  blocking for:   {caches} (this CPU's data caches, read at run time)", file=out)
    jax_path = ("XLA FFI custom calls" if c["xla_ffi"] else
                "jax.pure_callback (built without XLA's FFI headers: set PYRNN_XLA_FFI_INCLUDE to "
                "jax.ffi.include_dir() when building)")
    print(f"  pyrnn.jax:      {jax_path}", file=out)
