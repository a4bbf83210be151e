"""The cell vocabulary, read from the C++ cell table (csrc/include/pyrnn/cells.h).

Every module that needs a gate count, a kernel kind or a cell's options asks
here; nothing else spells them::

    spec = cell_spec("gru", reset_after=False)   # -> Cell(name="gru_reset_before", ...)
    spec.gates, spec.kind, spec.has_cell_state
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _core


class Cell(NamedTuple):
    kind: _core.CellKind
    name: str  # "rnn_tanh", "rnn_relu", "rnn_leaky", "lstm", "gru", "gru_reset_before"
    family: str  # the torch.nn module it implements: "rnn", "lstm" or "gru"
    gates: int  # gate groups per unit in W_ih / W_hh

    @property
    def has_cell_state(self) -> bool:
        """Whether it has a cell state c (c0, c_n): the LSTM."""
        return self.family == "lstm"

    def __reduce__(self):
        # Pickled (and copied) by name, so that it comes back as the table's own entry (every layer and
        # cell holds one).
        return (_cell_named, (self.name,))


def _cell_named(name: str) -> Cell:
    return CELLS[name]


CELLS = {name: Cell(kind, name, family, gates) for kind, name, family, gates in _core.cells()}
BY_KIND = {c.kind: c for c in CELLS.values()}
FAMILIES = tuple(dict.fromkeys(c.family for c in CELLS.values()))  # "rnn", "lstm", "gru"
GATES = {c.family: c.gates for c in CELLS.values()}


def _family_list() -> str:
    return ", ".join(repr(f) for f in FAMILIES[:-1]) + f" or {FAMILIES[-1]!r}"


def check_family(family) -> str:
    if not isinstance(family, str) or family not in FAMILIES:
        raise ValueError(f"cell must be {_family_list()}, got {family!r}")
    return family


def check_nonlinearity(nonlinearity) -> str:
    if not isinstance(nonlinearity, str) or nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return nonlinearity


def check_leak(leak) -> "float | None":
    """The leaky-integrator rate of the tanh RNN: None (no leak) or a real number in (0, 1]."""
    if leak is None:
        return None
    if isinstance(leak, bool) or not isinstance(leak, (int, float, np.floating, np.integer)):
        raise TypeError(f"leak must be a real number in (0, 1] or None, got {type(leak).__name__}")
    if not 0.0 < float(leak) <= 1.0:
        raise ValueError(f"leak must lie in (0, 1], got {leak}")
    return float(leak)


def cell_spec(family: str, *, nonlinearity: str = "tanh", reset_after: bool = True, leak=None) -> Cell:
    """The cell a family and its options select (another family's options must keep their defaults:
    ``F.forward("lstm", ..., nonlinearity="relu")`` is an error, not ignored).

    ``leak`` (RNN, tanh only): a leaky-integrator rate a selects "rnn_leaky",
    h' = (1 - a) h + a tanh(W_ih x + b_ih + W_hh h + b_hh); None: the plain RNN.
    """
    from ._validation import check_bool  # (here: _validation imports this module)

    check_family(family)
    reset_after = check_bool("reset_after", reset_after)
    if family != "rnn":
        if nonlinearity != "tanh":
            raise ValueError(f"nonlinearity is the RNN's option (tanh or relu); a {family} takes none, got "
                             f"{nonlinearity!r}")
        if leak is not None:
            raise ValueError(f"leak is the tanh RNN's option (a leaky-integrator reservoir); a {family} takes none")
    if family != "gru" and not reset_after:
        raise ValueError(f"reset_after=False is the GRU's option; a {family} takes none")
    if family == "rnn":
        check_nonlinearity(nonlinearity)
        if check_leak(leak) is not None:
            if nonlinearity != "tanh":
                raise ValueError(f"leak is for the tanh RNN (a leaky-integrator reservoir), got nonlinearity "
                                 f"{nonlinearity!r}")
            return CELLS["rnn_leaky"]
        return CELLS[f"rnn_{nonlinearity}"]
    if family == "gru":
        return CELLS["gru" if reset_after else "gru_reset_before"]
    return CELLS[family]


def cell_options(cell: Cell) -> dict:
    """The keyword options that select ``cell`` within its family (the inverse of :func:`cell_spec`)."""
    if cell.name == "rnn_leaky":  # any leak selects it; 1.0 is the plain tanh update
        return {"nonlinearity": "tanh", "leak": 1.0}
    if cell.family == "rnn":
        return {"nonlinearity": cell.name[len("rnn_"):]}
    if cell.family == "gru":
        return {"reset_after": cell.name == "gru"}
    return {}
