"""pyrnn: fast fused LSTM, GRU and RNN kernels for CPUs, with a NumPy API."""

from importlib.metadata import PackageNotFoundError, version as _version


def _use_installed_extension():
    """From a source checkout (``python -m pytest`` in the repository root puts it
    first on sys.path) the compiled ``_core`` is not next to these files; let the
    package also look in the installed copy, so a ``pip install .`` is enough."""
    import glob
    import os
    import sys

    here = os.path.realpath(__path__[0])
    for entry in sys.path:
        candidate = os.path.join(entry or os.curdir, "pyrnn")
        if os.path.realpath(candidate) != here and glob.glob(os.path.join(candidate, "_core*")):
            __path__.append(candidate)
            return


def _short_openmp_wait():
    """Before libgomp loads: its idle threads should wait ~0.1 ms, not ~3 ms.

    libgomp reads GOMP_SPINCOUNT once, when it loads. By default its threads
    busy-wait about 3 ms after every parallel region; in a loop that also runs
    NumPy, that spinning takes a core from NumPy's BLAS after every pyrnn
    call (LSTM B=48 H=96 training loop: 10.2 ms/step at the default, 6.5 at
    10000 spins, the same as one thread; pyrnn's own per-step barriers were
    not slowed, see README "Threads"). Left alone when the user set
    GOMP_SPINCOUNT or OMP_WAIT_POLICY, and without effect when libgomp was
    loaded before pyrnn (e.g. by torch): then its setting stands.
    Returns a function that restores the environment (child processes must
    not inherit the change).
    """
    import os

    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return lambda: None
    os.environ["GOMP_SPINCOUNT"] = "10000"
    return lambda: os.environ.pop("GOMP_SPINCOUNT", None)


def _libgomp_loaded():
    """Whether a libgomp.so.1 (the soname pyrnn links) is loaded already; torch's
    wheels may bundle one under that name, which the process then shares."""
    import os

    try:
        with open("/proc/self/maps") as maps:
            return any(os.path.basename(fields[-1]).startswith("libgomp.so")
                       for fields in map(str.split, maps) if len(fields) >= 6)
    except OSError:
        return None


_OPENMP_LOADED_BEFORE = _libgomp_loaded()
_restore_environment = _short_openmp_wait()
try:
    try:
        from . import _core  # noqa: F401
    except ImportError:
        _use_installed_extension()

    from . import diagnostics, functional, optim, reference, reservoir
    from ._config import (cache_info, cache_sizes, empty_cache, fma_peak_gflops, get_num_threads, isa,
                          memory_bandwidth, set_cache_limit, set_num_threads, show_config, thread_setting,
                          thread_stats)
    from .cells import GRUCell, LSTMCell, RNNCell
    from .layers import GRU, LSTM, RNN, Linear
    from .layernorm import LayerNormGRU, LayerNormLSTM
finally:
    _restore_environment()

try:
    __version__ = _version("pyrnn")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "LayerNormLSTM",
    "LayerNormGRU",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "Linear",
    "functional",
    "optim",
    "diagnostics",
    "reference",
    "reservoir",
    "show_config",
    "set_num_threads",
    "get_num_threads",
    "thread_setting",
    "thread_stats",
    "isa",
    "fma_peak_gflops",
    "memory_bandwidth",
    "cache_sizes",
    "cache_info",
    "set_cache_limit",
    "empty_cache",
    "__version__",
]
