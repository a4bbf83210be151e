"""The cell vocabulary, read from the C++ cell table (csrc/include/pyrnn/cells.h).

Every module that needs a gate count, a kernel kind or a cell's options asks
here; nothing else spells them::

    spec = cell_spec("gru", reset_after=False)   # -> Cell(name="gru_reset_before", ...)
    spec.gates, spec.kind, spec.has_cell_state
"""

from __future__ import annotations

from typing import NamedTuple

from . import _core


class Cell(NamedTuple):
    kind: _core.CellKind
    name: str  # "rnn_tanh", "rnn_relu", "lstm", "gru", "gru_reset_before"
    family: str  # the torch.nn module it implements: "rnn", "lstm" or "gru"
    gates: int  # gate groups per unit in W_ih / W_hh

    @property
    def has_cell_state(self) -> bool:
        """Whether it has a cell state c (c0, c_n): the LSTM."""
        return self.family == "lstm"


CELLS = {name: Cell(kind, name, family, gates) for kind, name, family, gates in _core.cells()}
BY_KIND = {c.kind: c for c in CELLS.values()}
FAMILIES = tuple(dict.fromkeys(c.family for c in CELLS.values()))  # "rnn", "lstm", "gru"
GATES = {c.family: c.gates for c in CELLS.values()}


def _family_list() -> str:
    return ", ".join(repr(f) for f in FAMILIES[:-1]) + f" or {FAMILIES[-1]!r}"


def check_family(family) -> str:
    if family not in FAMILIES:
        raise ValueError(f"cell must be {_family_list()}, got {family!r}")
    return family


def check_nonlinearity(nonlinearity) -> str:
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return nonlinearity


def cell_spec(family: str, *, nonlinearity: str = "tanh", reset_after: bool = True) -> Cell:
    """The cell a family and its options select (the options of other families are ignored)."""
    check_family(family)
    if family == "rnn":
        return CELLS[f"rnn_{check_nonlinearity(nonlinearity)}"]
    if family == "gru":
        return CELLS["gru" if reset_after else "gru_reset_before"]
    return CELLS[family]


def cell_options(cell: Cell) -> dict:
    """The keyword options that select ``cell`` within its family (the inverse of :func:`cell_spec`)."""
    if cell.family == "rnn":
        return {"nonlinearity": cell.name[len("rnn_"):]}
    if cell.family == "gru":
        return {"reset_after": cell.name == "gru"}
    return {}
