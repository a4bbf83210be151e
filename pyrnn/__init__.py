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


try:
    from . import _core  # noqa: F401
except ImportError:
    _use_installed_extension()

from . import diagnostics, functional, optim, reference
from ._config import (cache_info, empty_cache, fma_peak_gflops, get_num_threads, isa, set_cache_limit,
                      set_num_threads, show_config)
from .cells import GRUCell, LSTMCell, RNNCell
from .layers import GRU, LSTM, RNN

try:
    __version__ = _version("pyrnn")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "RNN",
    "LSTM",
    "GRU",
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "functional",
    "optim",
    "diagnostics",
    "reference",
    "show_config",
    "set_num_threads",
    "get_num_threads",
    "isa",
    "fma_peak_gflops",
    "cache_info",
    "set_cache_limit",
    "empty_cache",
    "__version__",
]
