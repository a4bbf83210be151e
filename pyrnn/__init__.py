"""pyrnn: fast fused LSTM, GRU and RNN kernels for CPUs, with a NumPy API."""

from ._version import __version__


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
    not slowed, see docs/guide/threads.md). Left alone when the user set
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
    """Whether the libgomp that pyrnn's extension links is loaded already.

    A wheel repaired by auditwheel carries its own copy in ``pyrnn.libs/``
    under a hashed name that nothing else loads. Otherwise pyrnn links
    libgomp.so.1, which torch's wheels may bundle under that name too, and
    the process then shares one copy."""
    import glob
    import os

    site = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    vendored = {os.path.realpath(p) for p in glob.glob(os.path.join(site, "pyrnn.libs", "libgomp*"))}
    try:
        with open("/proc/self/maps") as maps:
            paths = [fields[-1] for fields in map(str.split, maps) if len(fields) >= 6]
    except OSError:
        return None
    if vendored:
        return any(os.path.realpath(p) in vendored for p in paths)
    return any(os.path.basename(p).startswith("libgomp.so") for p in paths)


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
