"""Drop-in replacements for torch.nn.RNNCell / LSTMCell / GRUCell, on NumPy arrays.

One step per call, for generation loops that feed a model its own output::

    cell = pyrnn.LSTMCell(65, 128).eval()
    h = c = None
    for _ in range(steps):
        h, c = cell(x, None if h is None else (h, c))

The step runs in C++ on the PyTorch-layout weights as they are at the call (at
small batches straight on them; from 16 rows, 32 for weights beyond the L2
cache, packed for that call only), so in-place weight updates are always seen,
and it releases the GIL. In training
mode a call keeps its inputs, and ``backward`` returns the gradients of that
step and adds the parameter gradients to ``grads`` (it reruns the step through
the sequence kernels with T = 1).
"""

from __future__ import annotations

import math

import numpy as np

from . import _core
from . import functional as F
from ._cells import cell_options, cell_spec
from ._module import Module, check_mode
from ._validation import (array_like, cell_array, check_bool, check_positive_int, check_precision, check_stack_memory,
                          check_reduced_weights, make_rng, named_arrays, refuse_masked)

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "FrozenCell"]


class _StepInputs:
    """Input handling shared by the cells and their frozen copies (dtype, input_size, hidden_size)."""

    dtype: np.dtype
    input_size: int
    hidden_size: int

    def _prepare(self, x, states):
        # Fast path, the common case in a generation loop: arrays that can go to C++ as they are.
        # (A plain loop: a generator in all() cost ~1 us of a ~8 us frozen step.)
        dt = self.dtype
        if type(x) is np.ndarray and x.dtype is dt and x.ndim == 2 and x.flags.c_contiguous \
                and x.shape[1] == self.input_size:
            shape = (x.shape[0], self.hidden_size)
            arrays = []
            for _, s in states:
                if s is not None and not (type(s) is np.ndarray and s.dtype is dt and s.shape == shape
                                          and s.flags.c_contiguous):
                    break
                arrays.append(s)
            else:
                return x, arrays, False
        x = np.asarray(refuse_masked("input", x)) if type(x) is not np.ndarray else x
        if x.ndim not in (1, 2):
            raise ValueError(f"{type(self).__name__}: Expected input to be 1D or 2D, got {x.ndim}D instead")
        unbatched = x.ndim == 1
        x = cell_array(self, "input", x[None] if unbatched else x, self.input_size)
        out = []
        for name, s in states:
            if s is not None:
                s = np.asarray(refuse_masked(name, s))  # lists too
                if s.ndim != (1 if unbatched else 2):  # as torch.nn's cells
                    raise ValueError(f"{type(self).__name__}: Expected {name} to be {1 if unbatched else 2}D like "
                                     f"the input, got {s.ndim}D instead")
                s = cell_array(self, name, s[None] if unbatched else s, self.hidden_size)
                if s.shape[0] != x.shape[0]:
                    raise ValueError(f"Input batch size {x.shape[0]} doesn't match {name} batch size {s.shape[0]}")
            out.append(s)
        return x, out, unbatched

    def _call(self, x, hx, step):
        """A step from Python: (h', c') for a cell with a cell state, else h'; ``step(x, h, c, unbatched)`` runs it."""
        if self.cell.has_cell_state:
            if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
                raise TypeError(f"{type(self).__name__}: hx must be a tuple (h, c) or None, got {type(hx).__name__}")
            h, c = (None, None) if hx is None else hx
            if (h is None) != (c is None):  # as torch.nn.LSTMCell: both states or neither
                raise TypeError(f"{type(self).__name__}: hx must hold both h and c (or be None), got "
                                f"({type(h).__name__}, {type(c).__name__})")
            x, (h, c), unbatched = self._prepare(x, [("hx[0]", h), ("hx[1]", c)])
            h1, c1 = step(x, h, c, unbatched)
            return (h1[0], c1[0]) if unbatched else (h1, c1)
        if isinstance(hx, tuple) and any(e is None or hasattr(e, "shape") for e in hx):
            # an LSTM's (h, c) given to a GRU or RNN cell (a tuple of numbers or rows is array-like)
            raise TypeError(f"{type(self).__name__}: hx must be an array h or None (only an LSTM cell takes a "
                            f"tuple (h, c)), got a tuple of {len(hx)}")
        x, (h,), unbatched = self._prepare(x, [("hx", hx)])
        h1, _ = step(x, h, None, unbatched)
        return h1[0] if unbatched else h1


class _CellBase(_StepInputs, Module):
    _fixed = ("input_size", "hidden_size", "bias")

    def __init__(self, family, input_size, hidden_size, bias, dtype, seed, rng, nonlinearity="tanh",
                 reset_after=True):
        super().__init__(dtype)
        self.cell = cell_spec(family, nonlinearity=nonlinearity, reset_after=reset_after)
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.bias = check_bool("bias", bias)
        self._saved = None
        G, H = self.cell.gates, self.hidden_size
        check_stack_memory(type(self).__name__, G, self.input_size, H, 0, 1, 1, self.dtype)
        r = make_rng(seed, rng)
        bound = 1.0 / math.sqrt(H)
        self._add_param("weight_ih", (G * H, self.input_size), r, bound)
        self._add_param("weight_hh", (G * H, H), r, bound)
        if self.bias:
            self._add_param("bias_ih", (G * H,), r, bound)
            self._add_param("bias_hh", (G * H,), r, bound)

    def __repr__(self):
        defaults = {"nonlinearity": "tanh", "reset_after": True}
        extra = "".join(f", {k}={v!r}" for k, v in cell_options(self.cell).items() if v != defaults[k])
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{'' if self.bias else ', bias=False'}{extra})"

    def __call__(self, x, hx=None):
        return self.forward(x, hx)

    def _weights(self):
        """(W_ih, W_hh, b_ih, b_hh): the live arrays (updated in place, never replaced); biases None without bias."""
        p = self._params
        return p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh")

    def _step(self, x, h, c, unbatched):
        cell = self.cell
        if self.training:  # copies: the caller may reuse these buffers before backward
            self._saved = tuple(None if a is None else a.copy() for a in (x, h, c)) + (unbatched, cell)
        return _core.cell_step(cell.kind, x, h, c, *self._weights())

    def forward(self, x, hx=None):
        """x [B, I] or [I]; hx: h [B, H] or [H] (LSTMCell: a tuple (h, c) of those), or None.
        Returns h' (LSTMCell: (h', c'))."""
        return self._call(x, hx, self._step)

    def freeze(self, precision=None):
        """A :class:`~pyrnn.cells.FrozenCell`: this cell for inference, its weights packed once;
        ``precision`` "int8" or "bf16" as in :meth:`pyrnn.LSTM.freeze`."""
        return FrozenCell(self, precision)

    def backward(self, dh1=None, dc1=None):
        """Gradients of the last training-mode step: returns (dx, dh) or, for the
        LSTM, (dx, (dh, dc)); parameter gradients are added to ``grads``."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a call in training mode first")
        x, h, c, unbatched, cell = self._saved  # (backward differentiates the cell that forward ran)
        weights = self._weights()
        if dc1 is not None and not self.cell.has_cell_state:
            raise ValueError(f"dc1 is only used by LSTMCell, got dc1 for a {type(self).__name__}")
        shape = (self.hidden_size,) if unbatched else x.shape[:1] + (self.hidden_size,)  # the step's h'
        label = f"{type(self).__name__}.backward"
        dh1, dc1 = (None if g is None else np.ascontiguousarray(
            array_like(f"{label}: {name}", g, self.dtype, shape).reshape(x.shape[0], self.hidden_size))
            for name, g in (("dh1", dh1), ("dc1", dc1)))
        self._saved = None  # (after the checks: a bad gradient leaves the step to retry)
        _, _, _, ws = F.forward(cell.family, x[None], h, c, *weights, **cell_options(cell))
        g = F.backward(ws, None, dh1, dc1)
        self._accumulate(g)
        dx, dh, dc = g["x"][0], g["h0"], g["c0"]
        if unbatched:
            dx, dh = dx[0], dh[0]
            dc = None if dc is None else dc[0]
        return (dx, (dh, dc)) if self.cell.has_cell_state else (dx, dh)


def _check_nonlinearity(value):
    if not isinstance(value, str) or value not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity: {value}")
    return value


class RNNCell(_CellBase):
    """torch.nn.RNNCell: h' = tanh|relu(W_ih x + b_ih + W_hh h + b_hh)."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", *, dtype=np.float32, seed=None,
                 rng=None):
        super().__init__("rnn", input_size, hidden_size, bias, dtype, seed, rng,
                         nonlinearity=_check_nonlinearity(nonlinearity))

    # The cell kind is the one source: a nonlinearity set after construction is what the next
    # forward, backward and freeze() run (as torch.nn.RNNCell reads it each call).
    @property
    def nonlinearity(self):
        return cell_options(self.cell)["nonlinearity"]

    @nonlinearity.setter
    def nonlinearity(self, value):
        self.cell = cell_spec("rnn", nonlinearity=_check_nonlinearity(value))


class LSTMCell(_CellBase):
    """torch.nn.LSTMCell (gates i, f, g, o)."""

    def __init__(self, input_size, hidden_size, bias=True, *, dtype=np.float32, seed=None, rng=None):
        super().__init__("lstm", input_size, hidden_size, bias, dtype, seed, rng)


class GRUCell(_CellBase):
    """torch.nn.GRUCell (gates r, z, n). reset_after=False: Cho et al. v3 (Keras reset_after=False)."""

    def __init__(self, input_size, hidden_size, bias=True, *, reset_after=True, dtype=np.float32, seed=None,
                 rng=None):
        super().__init__("gru", input_size, hidden_size, bias, dtype, seed, rng,
                         reset_after=check_bool("reset_after", reset_after))

    # As RNNCell.nonlinearity: the next forward, backward and freeze() run a reset_after set later.
    @property
    def reset_after(self):
        return cell_options(self.cell)["reset_after"]

    @reset_after.setter
    def reset_after(self, value):
        self.cell = cell_spec("gru", reset_after=check_bool("reset_after", value))


class FrozenCell(_StepInputs):
    """A cell for inference with its weights packed once: ``cell.freeze()``.

    Called like the cell in eval mode (same inputs, outputs and checks). Each
    step runs the packed weights through the GEMM micro-kernel, with no
    per-step packing, weight conversion or horizontal sums, which makes
    generation loops faster (README, "Frozen cells").

    It holds a copy of the weights as they were when ``freeze()`` ran: later
    changes to the cell's parameters (training steps, ``load_state_dict``) do
    not reach it, so it can never mix old and new weights; freeze again to
    use new ones. No training mode, no backward.
    """

    def __init__(self, cell, precision=None):
        if not isinstance(cell, _CellBase):
            raise TypeError(f"FrozenCell needs a pyrnn RNNCell, LSTMCell or GRUCell, got {type(cell).__name__}")
        self.precision = check_precision(precision, cell.dtype)
        self.cell, self.dtype = cell.cell, cell.dtype
        self.input_size, self.hidden_size, self.bias = cell.input_size, cell.hidden_size, cell.bias
        self._name = type(cell).__name__
        # the snapshot, kept to copy and pickle the frozen cell (packed again on load)
        self._snapshot = tuple(None if w is None else w.copy() for w in cell._weights())
        self._pack()

    def _pack(self):
        for w in self._snapshot:  # read-only, as a frozen layer's: an edit would not reach the packed weights
            if w is not None:
                w.flags.writeable = False
        check_reduced_weights(self.precision, {"weight_ih": self._snapshot[0], "weight_hh": self._snapshot[1]})
        self._packed = _core.PackedCell(self.cell.kind, *self._snapshot, precision=self.precision)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_packed"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.precision = state.get("precision", "same")  # (absent in cells pickled before it existed)
        self.dtype = np.dtype(self.dtype.name)  # the canonical instance, for _prepare's fast path (`is`)
        self._pack()

    training = False  # inference only, as a frozen layer
    frozen = True

    def train(self, mode=True):
        """``train(False)`` returns the frozen cell; training mode raises (freeze the cell you train)."""
        if check_mode(mode):
            raise RuntimeError(f"{self._name}: a frozen cell is for inference only; freeze() the cell you train")
        return self

    def eval(self):
        """The frozen cell itself (always in inference mode)."""
        return self

    _NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

    def named_parameters(self):
        """Yields (name, array) of the snapshot of the weights, as a cell's (biases only with bias=True)."""
        yield from ((k, w) for k, w in zip(self._NAMES, self._snapshot) if w is not None)

    def with_weights(self, weights):
        """This frozen cell with other weights of the same names and shapes, packed in the same precision."""
        mine = dict(self.named_parameters())
        new = named_arrays("FrozenCell.with_weights", weights, list(mine), self.dtype)
        for k, v in new.items():
            if v.shape != mine[k].shape:
                raise ValueError(f"{k} must have shape {mine[k].shape}, got {v.shape}")
        clone = object.__new__(type(self))
        clone.__setstate__({**self.__getstate__(), "_snapshot": tuple(new.get(k) for k in self._NAMES)})
        return clone

    @property
    def nbytes(self):
        """Bytes of packed weights."""
        return self._packed.nbytes

    def __repr__(self):
        prec = "" if self.precision == "same" else f", precision={self.precision!r}"
        return f"FrozenCell({self._name}({self.input_size}, {self.hidden_size}{'' if self.bias else ', bias=False'}){prec})"

    def __call__(self, x, hx=None):
        """x [B, I] or [I]; hx: h (LSTM: a tuple (h, c)), or None. Returns h' (LSTM: (h', c'))."""
        return self._call(x, hx, lambda x, h, c, unbatched: self._packed.step(x, h, c))
