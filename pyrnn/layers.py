"""Drop-in replacements for torch.nn.RNN / LSTM / GRU, on NumPy arrays.

Same constructor arguments, parameter names, shapes, gate orders and output
layout as PyTorch, so a PyTorch ``state_dict`` loads directly and gives the
same numbers. Training from NumPy::

    lstm = pyrnn.LSTM(10, 20, num_layers=2)
    y, (h_n, c_n) = lstm(x)                 # keeps what backward needs (training mode)
    dx, (dh0, dc0) = lstm.backward(dy)      # accumulates into lstm.grads
    for name, p in lstm.named_parameters():
        p -= 0.1 * lstm.grads[name]         # in place: the next call sees it
    lstm.zero_grad()

Each layer and direction runs in C++ (pyrnn.functional): the time loop,
lengths and directions never loop in Python.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections import OrderedDict

import numpy as np

from . import _core, _stack
from . import functional as F
from ._cells import GATES, cell_spec
from ._module import PARAM_NAMES, Gradients, Module, check_mode
from ._validation import (CellStateZoneout, array_like, check_bool, check_layer_dropout, check_lengths,
                          check_parameter_memory, check_positive_int, check_precision, check_probability,
                          check_stack_memory, check_training_rates, layer_input, layer_states, make_rng, named_arrays,
                          refuse_masked, zoneout_rates)

__all__ = ["RNN", "LSTM", "GRU", "Linear"]


def _plain(a, dtype, shape):
    """Whether ``a`` is a NumPy array (not a subclass) of exactly this dtype and shape, C-contiguous."""
    return type(a) is np.ndarray and a.dtype is dtype and a.shape == shape and a.flags.c_contiguous


class _StackedLayer(CellStateZoneout, Module):
    """What a multi-layer, bidirectional NumPy recurrent layer shares (pyrnn.LSTM
    and its kin, pyrnn.LayerNormLSTM and its kin): input and state checks,
    dropout between layers, the stack loop (:mod:`pyrnn._stack`) and backward's
    bookkeeping. A subclass runs one layer and direction:
    ``_direction_call(layer, d, x, h0, c0, lengths, training, T, B)`` -> (y, h_n, c_n, workspace)
    and ``_direction_backward(workspace, layer, d, dy, dh_n, dc_n, input_grad)`` -> (dx or None, dh0, dc0),
    adding its parameter gradients to ``self.grads``."""

    proj_size = 0
    _fixed = ("mode", "input_size", "hidden_size", "num_layers", "bias", "bidirectional", "proj_size")
    recurrent_dropout = 0.0
    zoneout = 0.0  # (class defaults: layers pickled before zoneout existed have none; zoneout_c: CellStateZoneout)

    def _label(self):
        """The name its messages give it."""
        return self.mode

    def __call__(self, x, hx=None, lengths=None):
        return self.forward(x, hx, lengths)

    @property
    def num_directions(self):
        """2 for a bidirectional layer, else 1."""
        return 2 if self.bidirectional else 1

    def _dropout_mask(self, shape, p):
        """Kept units scaled by 1/(1-p); p=1 drops everything."""
        if p >= 1:
            return np.zeros(shape, dtype=self.dtype)
        return ((self._rng.random(shape) >= p) / (1.0 - p)).astype(self.dtype)

    def _zoneout_masks(self, layer, direction, T, B):
        """The zoneout masks of one training-mode call, for one layer and direction: (m_h [T, B, H_out],
        m_c [T, B, H] or None), each None where its rate is 0; 1 where a unit keeps its previous value at
        that step (Bernoulli(zoneout), Bernoulli(zoneout_c), drawn from the layer's RNG). ``forward``
        draws every mask through this method: override it (on the instance) to see or fix them.
        Time is aligned with the input (entry t is the step that reads x[t], in either direction)."""
        def bernoulli(shape, p):
            return (self._rng.random(shape) < p).astype(self.dtype)

        m_h = bernoulli((T, B, self.proj_size or self.hidden_size), self.zoneout) if self.zoneout > 0 else None
        m_c = (bernoulli((T, B, self.hidden_size), self.zoneout_c)
               if self.mode == "LSTM" and self.zoneout_c > 0 else None)
        return m_h, m_c

    def _direction_masks(self, layer, d, T, B, training):
        """(h_mask [B, H_out] or None, zoneout_h, zoneout_c) of one call of one layer and direction:
        drawn in training mode where the rates are above 0, else None."""
        if not training:
            return None, None, None
        H_out = self.proj_size or self.hidden_size
        rec_mask = self._dropout_mask((B, H_out), self.recurrent_dropout) if self.recurrent_dropout > 0 else None
        zh, zc = (self._zoneout_masks(layer, d, T, B) if self.zoneout > 0 or self.zoneout_c > 0 else (None, None))
        return rec_mask, zh, zc

    def forward(self, x, hx=None, lengths=None):
        """Returns (output, h_n) or, for the LSTM, (output, (h_n, c_n)).

        x: (T, B, I), (B, T, I) with batch_first, or unbatched (T, I).
        hx: h0 (and c0 for the LSTM: a tuple) of shape (num_layers * num_directions, B, H_out), or None.
        lengths: optional (B,) valid lengths in [1, T] (PyTorch's packed-sequence results:
        outputs are zero past each length, h_n is each sequence's own last valid state).
        In training mode the call keeps what ``backward`` needs, and draws the masks of dropout,
        recurrent_dropout and zoneout (eval mode: none of them applies).
        """
        given = x if isinstance(x, np.ndarray) else np.asarray(refuse_masked("input", x))  # (a tensor's memory)
        x, unbatched = layer_input(self, given, source=x)
        T, B, _ = x.shape
        if lengths is not None:
            lengths = check_lengths(lengths, T, B)
        h0_all, c0_all = layer_states(self, hx, B, unbatched)
        D = self.num_directions
        training = self.training
        if training and getattr(self, "_packed", None):  # (train() refuses it; `.training = True` bypasses that)
            raise RuntimeError(f"{self.mode}: a frozen layer is for inference only (training is True); freeze() "
                               f"the layer you train")
        check_training_rates(self)
        if training and np.may_share_memory(x, given):
            # backward reads x: its result must not change if the caller reuses the buffer (an array, or
            # the memory of a torch tensor or other container that x is a view of)
            x = x.copy()
        if training:  # and h0, c0 (truncated BPTT writes h_n into the buffer it passed as h0)
            h0_all, c0_all = (None if s is None else s.copy() for s in (h0_all, c0_all))
        masks = []

        def run(layer, d, layer_x):
            k = layer * D + d
            return self._direction_call(layer, d, layer_x, None if h0_all is None else h0_all[k],
                                        None if c0_all is None else c0_all[k], lengths, training, T, B)

        def dropout(layer, y):
            if not (training and self.dropout > 0):
                masks.append(None)
                return y
            masks.append(self._dropout_mask(y.shape, self.dropout))
            return y * masks[-1]

        out, results = _stack.forward(run, x, self.num_layers, D, between=dropout)
        if training:  # (an eval-mode call, a validation pass, leaves a pending backward alone, as the cells do)
            self._saved = {"ws": [r[3] for r in results], "dropout": masks, "unbatched": unbatched, "B": B, "T": T}
        if training and D == 1:
            out = out.copy()  # the last layer's y is in its workspace (backward reads h_t): edits must not reach it
        h_n = np.stack([r[1] for r in results])
        c_n = np.stack([r[2] for r in results]) if self.mode == "LSTM" else None
        if unbatched:
            out, h_n = out[:, 0], h_n[:, 0]
            c_n = None if c_n is None else c_n[:, 0]
        elif self.batch_first:
            out = out.transpose(1, 0, 2)
        return (out, (h_n, c_n)) if self.mode == "LSTM" else (out, h_n)

    def backward(self, dy=None, dh_n=None, dc_n=None, *, input_grad=True):
        """Backpropagates through the last training-mode call.

        dy has the output's shape; dh_n (and dc_n) the final states' shapes; any
        may be None (zeros). Parameter gradients are added to ``self.grads``.
        Returns (dx, dh0) or, for the LSTM, (dx, (dh0, dc0)). input_grad=False:
        dx is None, not computed (the input is data that needs no gradient: the
        first layer skips its product over W_ih; the other gradients are the same).
        """
        input_grad = check_bool("input_grad", input_grad)
        s = self._saved
        if s is None:
            raise RuntimeError(f"{self._label()}.backward needs a forward call in training mode first "
                               f"(or backward was already called for it)")
        if self.mode != "LSTM" and dc_n is not None:
            raise ValueError(f"dc_n is only used by the LSTM, got dc_n for a {self._label()}")
        T, B, unbatched = s["T"], s["B"], s["unbatched"]
        D, L = self.num_directions, self.num_layers
        H_out = self.proj_size or self.hidden_size
        out_shape = (T, D * H_out) if unbatched else ((B, T, D * H_out) if self.batch_first else (T, B, D * H_out))
        st_shape = (L * D, H_out) if unbatched else (L * D, B, H_out)
        grads = {"dy": (dy, out_shape), "dh_n": (dh_n, st_shape), "dc_n": (dc_n, st_shape[:-1] + (self.hidden_size,))}
        dy, dh_n, dc_n = (None if g is None else array_like(name, g, self.dtype, shape)
                          for name, (g, shape) in grads.items())
        if unbatched:
            dy = None if dy is None else dy[:, None, :]
            dh_n = None if dh_n is None else dh_n[:, None, :]
            dc_n = None if dc_n is None else dc_n[:, None, :]
        elif self.batch_first and dy is not None:
            dy = dy.transpose(1, 0, 2)
        dh0 = [None] * (L * D)
        dc0 = [None] * (L * D)

        def run(layer, d, dy_d):
            k = layer * D + d
            dx, dh0[k], dc0[k] = self._direction_backward(s["ws"][k], layer, d, dy_d,
                                                          None if dh_n is None else dh_n[k],
                                                          None if dc_n is None else dc_n[k], input_grad or layer > 0)
            return dx

        dx = _stack.backward(run, dy, L, D, H_out, between=lambda layer, g: g * s["dropout"][layer]
                             if s["dropout"][layer] is not None else g)
        self._saved = None
        dh0 = np.stack(dh0)
        dc0 = np.stack(dc0) if self.mode == "LSTM" else None
        if unbatched:
            dx, dh0 = None if dx is None else dx[:, 0], dh0[:, 0]
            dc0 = None if dc0 is None else dc0[:, 0]
        elif self.batch_first and dx is not None:
            dx = dx.transpose(1, 0, 2)
        return (dx, (dh0, dc0)) if self.mode == "LSTM" else (dx, dh0)


class _RNNBase(_StackedLayer):
    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, nonlinearity="tanh", reset_after=True, recurrent_dropout=0.0,
                 dtype=np.float32, seed=None, rng=None, zoneout=0.0, zoneout_c=None):
        super().__init__(dtype)
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("num_layers", num_layers)
        check_positive_int("proj_size", proj_size, allow_zero=True)
        check_layer_dropout(dropout, num_layers)
        check_probability("recurrent_dropout", recurrent_dropout)
        zoneout, zoneout_c = zoneout_rates(mode, zoneout, zoneout_c)
        if proj_size and mode != "LSTM":
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} and "
                             f"hidden_size={hidden_size}")
        if not isinstance(nonlinearity, str) or nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.")
        self.mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = check_bool("bias", bias)
        self.batch_first = check_bool("batch_first", batch_first)
        self.dropout = float(dropout)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        self.proj_size = int(proj_size)
        self.nonlinearity = nonlinearity
        self.reset_after = check_bool("reset_after", reset_after)
        check_stack_memory(mode, GATES[mode.lower()], self.input_size, self.hidden_size, self.proj_size,
                           self.num_layers, self.num_directions, self.dtype)  # (before the parameters below)
        self.recurrent_dropout = float(recurrent_dropout)
        self.zoneout = zoneout  # probability that a unit of h keeps its previous value at a step (training)
        self._zoneout_c = zoneout_c  # the same for the LSTM's c (None: zoneout's; 0.0 for the GRU and RNN)
        self._rng = make_rng(seed, rng)
        self._saved = None
        self._packed = {}  # (layer, direction) -> packed recurrent weights, in a freeze() copy
        self._precision = "same"  # of the packed weights (freeze(precision=))
        self.cell = cell_spec(mode.lower(), nonlinearity=nonlinearity, reset_after=reset_after)

        G, H, P = self.cell.gates, self.hidden_size, self.proj_size
        H_out = P or H
        bound = 1.0 / math.sqrt(H)
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else H_out * self.num_directions
            for suffix in (_stack.param_suffix(layer, d) for d in range(self.num_directions)):
                self._add_param(f"weight_ih{suffix}", (G * H, in_size), self._rng, bound)
                self._add_param(f"weight_hh{suffix}", (G * H, H_out), self._rng, bound)
                if self.bias:
                    self._add_param(f"bias_ih{suffix}", (G * H,), self._rng, bound)
                    self._add_param(f"bias_hh{suffix}", (G * H,), self._rng, bound)
                if P:
                    self._add_param(f"weight_hr{suffix}", (P, H), self._rng, bound)

    def direction_params(self, layer, direction):
        """The parameters of one layer and direction (0 forward, 1 reverse), by
        :mod:`pyrnn.functional`'s names: W_ih, W_hh, b_ih, b_hh, W_hr (None when absent)."""
        sfx = _stack.param_suffix(layer, direction)
        return {short: self._params.get(name + sfx) for short, name in PARAM_NAMES.items()}


    def __repr__(self):
        extra = "".join([
            f", num_layers={self.num_layers}" if self.num_layers != 1 else "",
            ", bias=False" if not self.bias else "",
            ", batch_first=True" if self.batch_first else "",
            f", dropout={self.dropout}" if self.dropout else "",
            ", bidirectional=True" if self.bidirectional else "",
            f", proj_size={self.proj_size}" if self.proj_size else "",
            f", nonlinearity='{self.nonlinearity}'" if self.mode == "RNN" and self.nonlinearity != "tanh" else "",
            ", reset_after=False" if self.mode == "GRU" and not self.reset_after else "",
            f", recurrent_dropout={self.recurrent_dropout}" if self.recurrent_dropout else "",
            f", zoneout={self.zoneout}" if self.zoneout else "",
            f", zoneout_c={self.zoneout_c}" if self.mode == "LSTM" and self.zoneout_c != self.zoneout else "",
        ])
        prec = getattr(self, "_precision", "same")
        frozen = f".freeze(precision={prec!r})" if prec != "same" else ".freeze()"
        return f"{self.mode}({self.input_size}, {self.hidden_size}{extra}){frozen if self._packed else ''}"

    def load_keras_weights(self, kernel, recurrent_kernel, bias=None, *, layer=0, direction=0):
        """Loads one Keras layer's weights (``layer.get_weights()``) into layer ``layer``,
        direction ``direction`` (0 forward, 1 reverse). See :mod:`pyrnn.keras`."""
        from .keras import from_keras

        if self.proj_size:
            raise ValueError("Keras LSTMs have no projection: cannot load into a layer with proj_size > 0")
        for name, value in (("layer", layer), ("direction", direction)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # (0.5 loaded nothing)
                raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        if not 0 <= layer < self.num_layers or direction not in range(self.num_directions):
            raise ValueError(f"no layer {layer} direction {direction} in {self!r}")
        layer, direction = int(layer), int(direction)
        w = from_keras(self.mode.lower(), kernel, recurrent_kernel, bias, reset_after=self.reset_after)
        if (w["b_ih"] is None) == self.bias:
            raise ValueError(f"the layer has bias={self.bias} but the Keras weights "
                             f"{'have no' if w['b_ih'] is None else 'have a'} bias")
        sfx = _stack.param_suffix(layer, direction)
        self.load_state_dict({PARAM_NAMES[k] + sfx: v for k, v in w.items() if v is not None}, strict=False)

    # ------------------------------------------------------------------ forward


    def run_direction(self, layer, direction, x, h0=None, c0=None, *, lengths=None, h_mask=None, training=True,
                      zoneout_h=None, zoneout_c=None):
        """One layer and direction through :func:`pyrnn.functional.forward` (time-major x):
        returns (y, h_n, c_n, workspace)."""
        packed = self._packed.get((layer, direction)) if self._packed else None
        return F.forward(self.cell.family, x, h0, c0, **self.direction_params(layer, direction),
                         nonlinearity=self.nonlinearity, reset_after=self.reset_after, h_mask=h_mask,
                         lengths=lengths, reverse=direction == 1, training=training, packed=packed,
                         zoneout_h=zoneout_h, zoneout_c=zoneout_c)

    def freeze(self, precision=None):
        """An inference-only copy of this layer with its recurrent weights packed once.

        Called like the layer in eval mode, with the same results; each call
        skips packing W_hh (worth most for short sequences and small batches).
        Its parameters are read-only copies, so nothing can change them under
        the packed weights; train() raises. Freeze again after training steps.

        precision (float32 layers): "int8" (weights with a scale per row,
        activations quantised per row dynamically, int32 sums: torch's
        ``quantize_dynamic``) or "bf16" (bfloat16 weights, fp32 sums) for
        W_ih, W_hh and W_hr; the results then differ from the float32
        layer's by the rounding of those (:func:`pyrnn.functional.pack_weights`).
        None: the layer's dtype, same results.
        """
        name = check_precision(precision, self.dtype)
        frozen = copy.deepcopy(self)
        frozen.training, frozen._saved = False, None
        OrderedDict.clear(frozen.grads)  # (Gradients refuses removals: a frozen layer has no gradients)
        frozen._precision = name
        frozen._pack()
        return frozen

    @property
    def precision(self):
        """Precision of the weights in the products: "same" (the dtype), or a frozen copy's "int8" / "bf16"."""
        return getattr(self, "_precision", "same")  # (absent in layers pickled before it existed)

    def _pack(self):
        for a in self._params.values():
            a.flags.writeable = False
        self._packed = {}
        calls = []
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                p = self.direction_params(layer, d)
                self._packed[layer, d] = F.pack_weights(self.cell.family, p["W_ih"], p["W_hh"], p["W_hr"],
                                                        precision=self.precision,
                                                        nonlinearity=self.nonlinearity, reset_after=self.reset_after)
                calls.append((p, self._packed[layer, d]))
        # (the weights of each direction, checked once here: read-only from now on; and the options they
        # were packed for, which the general path checks against the attributes on each call)
        self._fast_calls = ((self.nonlinearity, self.reset_after), tuple(calls))

    def forward(self, x, hx=None, lengths=None):
        fast = self.__dict__.get("_fast_calls")
        cls = type(self)
        if (fast and lengths is None and type(x) is np.ndarray and not self.training
                and fast[0] == (self.nonlinearity, self.reset_after)
                # (a subclass that runs its directions its own way keeps its way)
                and cls.run_direction is _RNNBase.run_direction and cls._direction_call is _RNNBase._direction_call):
            out = self._frozen_forward(fast[1], x, hx)
            if out is not None:
                return out
        return super().forward(x, hx, lengths)

    forward.__doc__ = _StackedLayer.forward.__doc__

    def _frozen_forward(self, calls, x, hx):
        """A frozen layer's call on arrays that go to the kernels as they are (time-major, the layer's
        dtype, C-contiguous; hx absent or such arrays of the full shape): its read-only weights were
        checked when packed, so only x and hx are. None where the inputs need the general path (which
        converts them, or raises)."""
        dt, lstm = self.dtype, self.mode == "LSTM"
        if x.dtype is not dt or x.ndim != 3 or self.batch_first or not x.flags.c_contiguous:
            return None
        T, B, I = x.shape
        if T == 0 or B == 0 or I != self.input_size:
            return None
        h0_all = c0_all = None
        if hx is not None:
            if lstm:
                if type(hx) is not tuple or len(hx) != 2:
                    return None
                h0_all, c0_all = hx
            else:
                h0_all = hx
            n = len(calls)
            if not (_plain(h0_all, dt, (n, B, self.proj_size or self.hidden_size))
                    and (not lstm or _plain(c0_all, dt, (n, B, self.hidden_size)))):
                return None
        D, family = self.num_directions, self.cell.family

        def run(layer, d, layer_x):
            k = layer * D + d
            p, packed = calls[k]
            F._check_memory(family, layer_x, p["W_hh"], p["W_hr"], None, False)
            return _core.sequence_forward(
                packed.cell, layer_x, None if h0_all is None else h0_all[k], None if c0_all is None else c0_all[k],
                p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], None, d == 1, False, p["W_hr"], None, packed, None,
                leak=1.0, zoneout_h=None, zoneout_c=None)

        out, results = _stack.forward(run, x, self.num_layers, D)
        # (one direction: a view of its fresh h_n with the leading axis, not np.stack's copy)
        stack = (lambda i: results[0][i][None]) if len(results) == 1 else (lambda i: np.stack([r[i] for r in results]))
        return (out, (stack(1), stack(2))) if lstm else (out, stack(1))

    def with_weights(self, weights):
        """A frozen copy (of a frozen layer) with other weights of the same names and shapes,
        packed in the same precision."""
        if not self._packed:
            raise RuntimeError("with_weights is for frozen layers (freeze()); load_state_dict updates a layer")
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._params = OrderedDict(named_arrays(f"{type(self).__name__}.with_weights", weights, list(self._params),
                                                 self.dtype))
        for k, v in clone._params.items():
            if v.shape != self._params[k].shape:
                raise ValueError(f"{k} must have shape {self._params[k].shape}, got {v.shape}")
        clone.__dict__["grads"] = Gradients()  # (its own, empty: a frozen copy has none)
        clone._pack()
        return clone

    def __getstate__(self):  # copies and pickles of a frozen layer pack again
        state = {**super().__getstate__(), "_packed": bool(self._packed)}
        state.pop("_fast_calls", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if state.get("_packed"):  # (absent in layers pickled before freeze() existed)
            self._pack()
        else:
            self._packed, self._fast_calls = {}, ()

    def load_state_dict(self, state_dict, strict=True):
        if self._packed:
            raise RuntimeError(f"{self.mode}: a frozen layer's parameters are read-only; load the state into the "
                               f"layer it was frozen from, then freeze() again")
        return super().load_state_dict(state_dict, strict)

    @property
    def frozen(self):
        """Whether this is a :meth:`freeze` copy (inference only, packed weights)."""
        return bool(self._packed)

    def train(self, mode=True):
        if check_mode(mode) and self._packed:
            raise RuntimeError(f"{self.mode}: a frozen layer is for inference only; freeze() the layer you train")
        return super().train(mode)

    def _direction_call(self, layer, d, layer_x, h0, c0, lengths, training, T, B):
        rec_mask, zh, zc = self._direction_masks(layer, d, T, B, training)
        return self.run_direction(layer, d, layer_x, h0, c0, lengths=lengths, h_mask=rec_mask, training=training,
                                  zoneout_h=zh, zoneout_c=zc)

    def _direction_backward(self, ws, layer, d, dy, dh_n, dc_n, input_grad=True):
        g = F.backward(ws, dy, dh_n, dc_n, input_grad=input_grad)
        self._accumulate(g, _stack.param_suffix(layer, d))
        return g["x"], g["h0"], g["c0"]


class RNN(_RNNBase):
    """torch.nn.RNN on NumPy: h' = tanh|relu(W_ih x + b_ih + W_hh h + b_hh).

    Extras (keyword-only): recurrent_dropout (variational: one mask per sequence
    on h_{t-1}, drawn per call, training only), zoneout (Krueger et al. 2016: the
    probability that a unit keeps its previous value at a step, h_t = h_{t-1};
    masks drawn per call and step, training only), dtype, seed / rng.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, recurrent_dropout=0.0, zoneout=0.0, dtype=np.float32,
                 seed=None, rng=None):
        super().__init__("RNN", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         nonlinearity=nonlinearity, recurrent_dropout=recurrent_dropout, dtype=dtype, seed=seed,
                         rng=rng, zoneout=zoneout)


class LSTM(_RNNBase):
    """torch.nn.LSTM on NumPy (gates i, f, g, o; proj_size as PyTorch).

    Extras (keyword-only): recurrent_dropout, zoneout (of h, as :class:`RNN`) and
    zoneout_c (of the cell state c; None: the rate of h), dtype, seed / rng.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, *, recurrent_dropout=0.0, zoneout=0.0, zoneout_c=None,
                 dtype=np.float32, seed=None, rng=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size=proj_size, recurrent_dropout=recurrent_dropout, dtype=dtype, seed=seed, rng=rng,
                         zoneout=zoneout, zoneout_c=zoneout_c)


class GRU(_RNNBase):
    """torch.nn.GRU on NumPy (gates r, z, n). reset_after=False selects Cho et al. v3
    (Keras reset_after=False): n = tanh(W_in x + b_in + W_hn (r*h) + b_hn).
    Extras (keyword-only): recurrent_dropout, zoneout (as :class:`RNN`), dtype, seed / rng."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, *, reset_after=True, recurrent_dropout=0.0, zoneout=0.0, dtype=np.float32,
                 seed=None, rng=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         reset_after=reset_after, recurrent_dropout=recurrent_dropout, dtype=dtype, seed=seed,
                         rng=rng, zoneout=zoneout)


class Linear(Module):
    """y = x W^T + b on the last axis of x, as torch.nn.Linear (``weight`` [out, in], ``bias`` [out]).

    Initialised as torch.nn.Linear: U(-1/sqrt(in), 1/sqrt(in)). A call keeps its
    input; ``backward(dy)`` returns dx and adds the parameter gradients to ``grads``.
    """

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, seed=None, rng=None):
        super().__init__(dtype)
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        check_parameter_memory("Linear", self.out_features * (self.in_features + 1), self.dtype)
        rng = make_rng(seed, rng)
        bound = 1.0 / math.sqrt(self.in_features)
        self._add_param("weight", (self.out_features, self.in_features), rng, bound)
        if check_bool("bias", bias):
            self._add_param("bias", (self.out_features,), rng, bound)
        self._x = None

    @property
    def bias(self):
        """The bias array [out_features], or None (``bias=False``)."""
        return self._params.get("bias")

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        """y = x W^T + b for x [..., in_features] of the layer's dtype; in training mode keeps x for
        :meth:`backward`."""
        x = np.asarray(refuse_masked("input", x))
        if x.dtype != self.dtype:
            raise TypeError(f"Linear: input must have dtype {self.dtype}, got {x.dtype}")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: expected last dimension {self.in_features}, got shape {x.shape}")
        # A copy: backward's result must not change if the caller reuses x's buffer in between.
        # (An eval-mode call leaves a pending backward alone.)
        if self.training:
            self._x = x.copy()
        y = x @ self.weight.T
        if "bias" in self._params:
            y += self.bias
        return y

    def backward(self, dy):
        """Returns dL/dx for the last training-mode call; adds dL/dW, dL/db to ``grads``."""
        if self._x is None:
            raise RuntimeError("Linear.backward needs a call in training mode first (or backward was already "
                               "called for it)")
        x = self._x
        dy = np.asarray(refuse_masked("dy", dy))
        if dy.dtype.kind != "f":  # (strings were parsed, complex lost its imaginary part)
            raise TypeError(f"Linear.backward: dy must be a floating-point array, got dtype {dy.dtype}")
        dy = dy.astype(self.dtype, copy=False)
        if dy.shape != x.shape[:-1] + (self.out_features,):
            raise ValueError(f"Linear.backward: dy must have the output's shape {x.shape[:-1] + (self.out_features,)}, "
                             f"got {dy.shape}")
        self._x = None
        x2 = x.reshape(-1, self.in_features)
        dy2 = dy.reshape(-1, self.out_features)
        self.grads["weight"] += dy2.T @ x2
        if "bias" in self._params:
            self.grads["bias"] += dy2.sum(axis=0)
        return (dy2 @ self.weight).reshape(x.shape)

    def __repr__(self):
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={'bias' in self._params})")
