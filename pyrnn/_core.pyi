# Type stubs for the C++ extension (csrc/bindings). Shapes use the project's
# names: T steps, B batch, I inputs, H hidden units, G gates, P projection.
# The kernels take C-contiguous float32/float64 arrays of one dtype;
# pyrnn.functional validates and converts before calling them.
from enum import Enum
from typing import Any, Optional

import numpy as np
import numpy.typing as npt

_Array = npt.NDArray[Any]

# The members are the cell table's (csrc/include/pyrnn/cells.h; tests/test_config.py checks they agree).
class CellKind(Enum):
    RNN_TANH = ...
    RNN_RELU = ...
    RNN_LEAKY = ...
    LSTM = ...
    GRU = ...
    GRU_RESET_BEFORE = ...

def cells() -> list[tuple[CellKind, str, str, int]]: ...  # (kind, name, family, gates)

class Workspace:
    """What a training forward keeps for backward."""

    @property
    def cell(self) -> CellKind: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def shape(self) -> tuple[int, int, int, int]: ...  # (T, B, I, H)
    @property
    def proj_size(self) -> int: ...

def sequence_forward(
    cell: CellKind,
    x: _Array,  # [T, B, I]
    h0: Optional[_Array],  # [B, H or P]
    c0: Optional[_Array],  # [B, H], LSTM
    W_ih: _Array,  # [G*H, I]
    W_hh: _Array,  # [G*H, H or P]
    b_ih: Optional[_Array],  # [G*H]
    b_hh: Optional[_Array],
    lengths: Optional[_Array],  # [B] int64 in [1, T]
    reverse: bool,
    training: bool,
    W_hr: Optional[_Array] = None,  # [P, H]
    h_mask: Optional[_Array] = None,  # [B, H or P]
    packed: Any = None,  # PackedRecurrence
    residual: Optional[_Array] = None,  # writable, >= residual_nbytes bytes: holds the training workspace
    *,
    leak: float = 1.0,  # rnn_leaky's rate, in (0, 1]
    zoneout_h: Optional[_Array] = None,  # [T, B, H or P]
    zoneout_c: Optional[_Array] = None,  # [T, B, H] (LSTM)
) -> tuple[_Array, _Array, Optional[_Array], Optional[Workspace]]: ...  # y, h_n, c_n, workspace
def residual_strides(
    cell: CellKind,
    x: _Array,
    h0: Optional[_Array],
    c0: Optional[_Array],
    W_ih: _Array,
    W_hh: _Array,
    b_ih: Optional[_Array],
    b_hh: Optional[_Array],
    lengths: Optional[_Array],
    reverse: bool,
    W_hr: Optional[_Array] = None,
    h_mask: Optional[_Array] = None,
    *,
    leak: float = 1.0,  # rnn_leaky's rate, in (0, 1]
    zoneout_h: Optional[_Array] = None,  # [T, B, H or P]
    zoneout_c: Optional[_Array] = None,  # [T, B, H] (LSTM)
) -> tuple[int, list[int], int, int]: ...  # header bytes, elements per row of each part, per entry, element bytes
def workspace_from_residual(
    residual: _Array,
    cell: CellKind,
    x: _Array,
    h0: Optional[_Array],
    c0: Optional[_Array],
    W_ih: _Array,
    W_hh: _Array,
    b_ih: Optional[_Array],
    b_hh: Optional[_Array],
    lengths: Optional[_Array],
    reverse: bool,
    W_hr: Optional[_Array],
    h_mask: Optional[_Array],
    y: _Array,
    *,
    leak: float = 1.0,  # rnn_leaky's rate, in (0, 1]
    zoneout_h: Optional[_Array] = None,  # [T, B, H or P]
    zoneout_c: Optional[_Array] = None,  # [T, B, H] (LSTM)
) -> Workspace: ...
class PackedBackward:
    """A training forward's weights packed for sequence_backward (pack_backward)."""

    @property
    def nbytes(self) -> int: ...

def pack_backward(workspace: Workspace) -> PackedBackward: ...
def sequence_backward(
    workspace: Workspace,
    dy: Optional[_Array],
    dh_n: Optional[_Array],
    dc_n: Optional[_Array],
    want_dh_seq: bool = False,
    packed: Optional[PackedBackward] = None,  # pack_backward of a forward with the same weights
    want_dx: bool = True,  # False: dx is not computed (None)
) -> tuple[
    Optional[_Array],  # dx
    _Array,  # dh0
    Optional[_Array],  # dc0
    _Array,  # dW_ih
    _Array,  # dW_hh
    Optional[_Array],  # db_ih
    Optional[_Array],  # db_hh
    Optional[_Array],  # dh_seq
    Optional[_Array],  # dW_hr
]: ...
def cell_step(
    cell: CellKind,
    x: _Array,  # [B, I]
    h: Optional[_Array],
    c: Optional[_Array],
    W_ih: _Array,
    W_hh: _Array,
    b_ih: Optional[_Array],
    b_hh: Optional[_Array],
) -> tuple[_Array, Optional[_Array]]: ...  # h1, c1 (LSTM)

# configuration
def build_info() -> dict[str, Any]: ...
def isa_supported() -> list[str]: ...
def isa_selected() -> str: ...
def read_settings() -> str: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def set_adaptive_threads() -> None: ...
def threads_adaptive() -> bool: ...
def thread_stats() -> dict[str, int | float]: ...
def reset_thread_stats() -> None: ...
def num_procs() -> int: ...
def cache_info() -> dict[str, int]: ...
def set_cache_limit(bytes: int) -> None: ...
def empty_cache() -> None: ...
def blocking_caches() -> dict[str, int]: ...  # {"L1", "L2", "L3"}: bytes the blocking derives from
def fma_peak_gflops(nthreads: int, seconds: float = 0.2) -> float: ...
def read_bandwidth_gbs(bytes: int, nthreads: int, seconds: float = 0.1) -> float: ...
