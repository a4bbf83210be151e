"""pyrnn: fast fused LSTM, GRU and RNN kernels for CPUs, with a NumPy API."""

from importlib.metadata import PackageNotFoundError, version as _version

from . import functional, reference
from ._config import fma_peak_gflops, get_num_threads, isa, set_num_threads, show_config
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
    "reference",
    "show_config",
    "set_num_threads",
    "get_num_threads",
    "isa",
    "fma_peak_gflops",
    "__version__",
]
