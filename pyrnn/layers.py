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

import math
import numbers
from collections import OrderedDict

import numpy as np

from . import functional as F
from ._validation import _check_lengths

__all__ = ["RNN", "LSTM", "GRU"]

_GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}


def _as_dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _make_rng(seed, rng):
    if rng is not None and seed is not None:
        raise ValueError("give either seed or rng, not both")
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return rng
    return np.random.default_rng(seed)


def _check_positive_int(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be greater than zero")


def _check_probability(name, p):
    if isinstance(p, bool) or not isinstance(p, numbers.Number) or not 0 <= p <= 1:
        raise ValueError(f"{name} should be a number in range [0, 1] representing the probability of an "
                         f"element being zeroed")


def _to_numpy(value):
    """NumPy view of a NumPy array or a (CPU) torch tensor, without importing torch."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class _Parametrised:
    """Named parameters, gradients, train/eval and state dicts (as torch.nn.Module)."""

    def __init__(self, dtype):
        self.dtype = _as_dtype(dtype)
        self._params = OrderedDict()
        self.grads = OrderedDict()
        self.training = True

    def _add_param(self, name, shape, rng, bound):
        self._params[name] = rng.uniform(-bound, bound, shape).astype(self.dtype)
        self.grads[name] = np.zeros(shape, dtype=self.dtype)

    def named_parameters(self):
        """Yields (name, array): the live arrays, so in-place updates take effect."""
        yield from self._params.items()

    def parameters(self):
        yield from self._params.values()

    def __getattr__(self, name):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def _accumulate(self, g, suffix=""):
        """Adds the parameter gradients of a functional.backward result to ``grads``."""
        for short, name in (("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh"),
                            ("W_hr", "weight_hr")):
            if g[short] is not None:
                self.grads[name + suffix] += g[short]

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0

    def state_dict(self):
        """An OrderedDict of copies of the parameters, keyed as PyTorch keys them."""
        return OrderedDict((k, v.copy()) for k, v in self._params.items())

    def load_state_dict(self, state_dict, strict=True):
        """Copies NumPy arrays or torch tensors into the parameters (in place).

        Shapes must match exactly; values are converted to the layer's dtype.
        With strict=True the keys must match too. Returns (missing, unexpected).
        """
        missing = [k for k in self._params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self._params]
        if strict and (missing or unexpected):
            raise ValueError(f"Error(s) in loading state_dict for {type(self).__name__}: "
                             f"missing keys {missing}, unexpected keys {unexpected}")
        arrays = {}
        for k, v in state_dict.items():
            if k not in self._params:
                continue
            a = _to_numpy(v)
            if a.dtype.kind != "f":
                raise TypeError(f"{k} must be a floating-point array, got dtype {a.dtype}")
            if a.shape != self._params[k].shape:
                raise ValueError(f"size mismatch for {k}: copying a param with shape {a.shape} from checkpoint, "
                                 f"the shape in current model is {self._params[k].shape}")
            arrays[k] = a
        for k, a in arrays.items():  # all checked before any is copied
            np.copyto(self._params[k], a, casting="unsafe")
        return missing, unexpected


class _RNNBase(_Parametrised):
    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, nonlinearity="tanh", reset_after=True, recurrent_dropout=0.0,
                 dtype=np.float32, seed=None, rng=None):
        super().__init__(dtype)
        _check_positive_int("input_size", input_size)
        _check_positive_int("hidden_size", hidden_size)
        _check_positive_int("num_layers", num_layers)
        _check_positive_int("proj_size", proj_size, allow_zero=True)
        _check_probability("dropout", dropout)
        _check_probability("recurrent_dropout", recurrent_dropout)
        if proj_size and mode != "LSTM":
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = int(proj_size)
        self.nonlinearity = nonlinearity
        self.reset_after = bool(reset_after)
        self.recurrent_dropout = float(recurrent_dropout)
        self._rng = _make_rng(seed, rng)
        self._saved = None

        G, H, P = _GATES[mode], self.hidden_size, self.proj_size
        H_out = P or H
        bound = 1.0 / math.sqrt(H)
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else H_out * self.num_directions
            for suffix in self._suffixes(layer):
                self._add_param(f"weight_ih{suffix}", (G * H, in_size), self._rng, bound)
                self._add_param(f"weight_hh{suffix}", (G * H, H_out), self._rng, bound)
                if self.bias:
                    self._add_param(f"bias_ih{suffix}", (G * H,), self._rng, bound)
                    self._add_param(f"bias_hh{suffix}", (G * H,), self._rng, bound)
                if P:
                    self._add_param(f"weight_hr{suffix}", (P, H), self._rng, bound)

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def _suffixes(self, layer):
        return [f"_l{layer}"] + ([f"_l{layer}_reverse"] if self.bidirectional else [])

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
        ])
        return f"{self.mode}({self.input_size}, {self.hidden_size}{extra})"

    def load_keras_weights(self, kernel, recurrent_kernel, bias=None, *, layer=0, direction=0):
        """Loads one Keras layer's weights (``layer.get_weights()``) into layer `layer`,
        direction `direction` (0 forward, 1 reverse). See :mod:`pyrnn.keras`."""
        from .keras import from_keras

        if self.proj_size:
            raise ValueError("Keras LSTMs have no projection: cannot load into a layer with proj_size > 0")
        if not 0 <= layer < self.num_layers or direction not in range(self.num_directions):
            raise ValueError(f"no layer {layer} direction {direction} in {self!r}")
        w = from_keras(self.mode.lower(), kernel, recurrent_kernel, bias, reset_after=self.reset_after)
        if (w["b_ih"] is None) == self.bias:
            raise ValueError(f"the layer has bias={self.bias} but the Keras weights "
                             f"{'have no' if w['b_ih'] is None else 'have a'} bias")
        sfx = self._suffixes(layer)[direction]
        names = {"W_ih": "weight_ih", "W_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}
        self.load_state_dict({names[k] + sfx: v for k, v in w.items() if v is not None}, strict=False)

    # ------------------------------------------------------------------ forward

    def __call__(self, x, hx=None, lengths=None):
        return self.forward(x, hx, lengths)

    def _check_input(self, x):
        x = np.asarray(x)
        if x.dtype != self.dtype:
            if x.dtype.kind == "f":
                raise TypeError(f"{self.mode}: input must have the layer's dtype {self.dtype}, got floating "
                                f"{x.dtype} (cast it, or build the layer with dtype={x.dtype.name})")
            raise TypeError(f"{self.mode}: input must have dtype {self.dtype}, got {x.dtype}")
        if x.ndim not in (2, 3):
            raise ValueError(f"{self.mode}: Expected input to be 2D or 3D, got {x.ndim}D input")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        if x.shape[2] != self.input_size:
            raise ValueError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                             f"got {x.shape[2]}")
        if x.shape[0] == 0:
            raise ValueError(f"{self.mode}: Expected sequence length to be larger than 0 in RNN")
        return np.ascontiguousarray(x), unbatched

    def _check_state(self, name, h, B, size, unbatched):
        LD = self.num_layers * self.num_directions
        expected = (LD, size) if unbatched else (LD, B, size)
        h = np.asarray(h)
        if h.dtype != self.dtype:
            raise TypeError(f"{name} must have the layer's dtype {self.dtype}, got {h.dtype}")
        if h.shape != expected:
            raise ValueError(f"Expected {name} size {expected}, got {list(h.shape)}")
        return h[:, None, :] if unbatched else h

    def _split_hx(self, hx, B, unbatched):
        H_out = self.proj_size or self.hidden_size
        if self.mode == "LSTM":
            if hx is None:
                return None, None
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"LSTM: hx must be a tuple (h0, c0), got {type(hx).__name__}"
                                f"{'' if not isinstance(hx, (tuple, list)) else f' of length {len(hx)}'}")
            h0 = self._check_state("hidden[0]", hx[0], B, H_out, unbatched)
            c0 = self._check_state("hidden[1]", hx[1], B, self.hidden_size, unbatched)
            return h0, c0
        if hx is None:
            return None, None
        return self._check_state("hidden", hx, B, H_out, unbatched), None

    def _dropout_mask(self, shape, p):
        """Kept units scaled by 1/(1-p); p=1 drops everything."""
        if p >= 1:
            return np.zeros(shape, dtype=self.dtype)
        return ((self._rng.random(shape) >= p) / (1.0 - p)).astype(self.dtype)

    def _run_direction(self, layer_x, suffix, h0, c0, lengths, reverse, rec_mask, training):
        p = self._params
        return F.forward(self.mode.lower(), layer_x, h0, c0, p[f"weight_ih{suffix}"], p[f"weight_hh{suffix}"],
                         p.get(f"bias_ih{suffix}"), p.get(f"bias_hh{suffix}"), nonlinearity=self.nonlinearity,
                         reset_after=self.reset_after, W_hr=p.get(f"weight_hr{suffix}"), h_mask=rec_mask,
                         lengths=lengths, reverse=reverse, training=training)

    def forward(self, x, hx=None, lengths=None):
        """Returns (output, h_n) or, for the LSTM, (output, (h_n, c_n)).

        x: (T, B, I), (B, T, I) with batch_first, or unbatched (T, I).
        hx: h0 (and c0 for the LSTM: a tuple) of shape (num_layers * num_directions, B, H_out), or None.
        lengths: optional (B,) valid lengths in [1, T] (PyTorch's packed-sequence results:
        outputs are zero past each length, h_n is each sequence's own last valid state).
        In training mode the call keeps what ``backward`` needs.
        """
        x, unbatched = self._check_input(x)
        T, B, _ = x.shape
        if lengths is not None:
            lengths = _check_lengths(lengths, T, B)
        h0_all, c0_all = self._split_hx(hx, B, unbatched)
        H_out = self.proj_size or self.hidden_size
        D = self.num_directions
        training = self.training
        saved = {"ws": [], "dropout": [], "unbatched": unbatched, "B": B, "T": T} if training else None
        layer_x = x
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            ys, layer_ws = [], []
            for d, suffix in enumerate(self._suffixes(layer)):
                k = layer * D + d
                rec_mask = (self._dropout_mask((B, H_out), self.recurrent_dropout)
                            if training and self.recurrent_dropout > 0 else None)
                y, h, c, ws = self._run_direction(
                    layer_x, suffix, None if h0_all is None else h0_all[k],
                    None if c0_all is None else c0_all[k], lengths, d == 1, rec_mask, training)
                ys.append(y)
                h_n.append(h)
                c_n.append(c)
                layer_ws.append(ws)
            layer_y = ys[0] if D == 1 else np.concatenate(ys, axis=2)
            mask = None
            if training and self.dropout > 0 and layer < self.num_layers - 1:
                mask = self._dropout_mask(layer_y.shape, self.dropout)
                layer_y = layer_y * mask
            if saved is not None:
                saved["ws"].append(layer_ws)
                saved["dropout"].append(mask)
            layer_x = layer_y
        self._saved = saved
        out = layer_x
        h_n = np.stack(h_n)
        c_n = np.stack(c_n) if self.mode == "LSTM" else None
        if unbatched:
            out, h_n = out[:, 0], h_n[:, 0]
            c_n = None if c_n is None else c_n[:, 0]
        elif self.batch_first:
            out = out.transpose(1, 0, 2)
        return (out, (h_n, c_n)) if self.mode == "LSTM" else (out, h_n)

    # ----------------------------------------------------------------- backward

    def _grad_in(self, name, g, shape):
        if g is None:
            return None
        g = np.asarray(g)
        if g.dtype != self.dtype:
            raise TypeError(f"{name} must have the layer's dtype {self.dtype}, got {g.dtype}")
        if g.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {g.shape}")
        return g

    def backward(self, dy=None, dh_n=None, dc_n=None):
        """Backpropagates through the last training-mode call.

        dy has the output's shape; dh_n (and dc_n) the final states' shapes; any
        may be None (zeros). Parameter gradients are added to ``self.grads``.
        Returns (dx, dh0) or, for the LSTM, (dx, (dh0, dc0)).
        """
        s = self._saved
        if s is None:
            raise RuntimeError(f"{self.mode}.backward needs a forward call in training mode first "
                               f"(or backward was already called for it)")
        if self.mode != "LSTM" and dc_n is not None:
            raise ValueError(f"dc_n is only used by the LSTM, got dc_n for a {self.mode}")
        T, B, unbatched = s["T"], s["B"], s["unbatched"]
        D, L = self.num_directions, self.num_layers
        H_out = self.proj_size or self.hidden_size
        out_shape = (T, D * H_out) if unbatched else ((B, T, D * H_out) if self.batch_first else (T, B, D * H_out))
        st_shape = (L * D, H_out) if unbatched else (L * D, B, H_out)
        dy = self._grad_in("dy", dy, out_shape)
        dh_n = self._grad_in("dh_n", dh_n, st_shape)
        dc_n = self._grad_in("dc_n", dc_n, st_shape[:-1] + (self.hidden_size,))
        if unbatched:
            dy = None if dy is None else dy[:, None, :]
            dh_n = None if dh_n is None else dh_n[:, None, :]
            dc_n = None if dc_n is None else dc_n[:, None, :]
        elif self.batch_first and dy is not None:
            dy = dy.transpose(1, 0, 2)
        dh0 = [None] * (L * D)
        dc0 = [None] * (L * D)
        d_layer = dy
        for layer in reversed(range(L)):
            mask = s["dropout"][layer]
            if mask is not None and d_layer is not None:
                d_layer = d_layer * mask
            dx_sum = None
            for d, suffix in enumerate(self._suffixes(layer)):
                k = layer * D + d
                dy_d = None if d_layer is None else np.ascontiguousarray(d_layer[..., d * H_out:(d + 1) * H_out])
                g = self._backward_direction(s["ws"][layer][d], suffix, dy_d,
                                             None if dh_n is None else dh_n[k], None if dc_n is None else dc_n[k])
                dh0[k], dc0[k] = g["h0"], g.get("c0")
                dx_sum = g["x"] if dx_sum is None else dx_sum + g["x"]
            d_layer = dx_sum
        self._saved = None
        dx = d_layer
        dh0 = np.stack(dh0)
        dc0 = np.stack(dc0) if self.mode == "LSTM" else None
        if unbatched:
            dx, dh0 = dx[:, 0], dh0[:, 0]
            dc0 = None if dc0 is None else dc0[:, 0]
        elif self.batch_first:
            dx = dx.transpose(1, 0, 2)
        return (dx, (dh0, dc0)) if self.mode == "LSTM" else (dx, dh0)

    def _backward_direction(self, ws, suffix, dy, dh_n, dc_n):
        g = F.backward(ws, dy, dh_n, dc_n)
        self._accumulate(g, suffix)
        return g


class RNN(_RNNBase):
    """torch.nn.RNN on NumPy: h' = tanh|relu(W_ih x + b_ih + W_hh h + b_hh).

    Extras (keyword-only): recurrent_dropout (variational: one mask per sequence
    on h_{t-1}, drawn per call, training only), dtype, seed / rng.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, recurrent_dropout=0.0, dtype=np.float32, seed=None,
                 rng=None):
        super().__init__("RNN", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         nonlinearity=nonlinearity, recurrent_dropout=recurrent_dropout, dtype=dtype, seed=seed,
                         rng=rng)


class LSTM(_RNNBase):
    """torch.nn.LSTM on NumPy (gates i, f, g, o; proj_size as PyTorch)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, *, recurrent_dropout=0.0, dtype=np.float32, seed=None, rng=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size=proj_size, recurrent_dropout=recurrent_dropout, dtype=dtype, seed=seed, rng=rng)


class GRU(_RNNBase):
    """torch.nn.GRU on NumPy (gates r, z, n). reset_after=False selects Cho et al. v3
    (Keras reset_after=False): n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, *, reset_after=True, recurrent_dropout=0.0, dtype=np.float32, seed=None,
                 rng=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         reset_after=reset_after, recurrent_dropout=recurrent_dropout, dtype=dtype, seed=seed,
                         rng=rng)
