"""Layer-normalised LSTM and GRU layers on NumPy arrays (issue #16; Ba, Kiros & Hinton 2016).

The interface of :class:`pyrnn.LSTM` / :class:`pyrnn.GRU` (constructor
arguments, ``num_layers``, ``bidirectional``, ``batch_first``, ``dropout``
between layers, for the LSTM ``proj_size``, ``lengths``, ``forward`` /
``backward`` / ``grads``, ``named_parameters``, ``state_dict``), with each
gate pre-activation block layer-normalised::

    LN_G(v; gamma, beta): each of the G gate blocks of H units of v [G*H] is
        normalised on its own: (v_blk - mean) / sqrt(var + 1e-5) * gamma_blk + beta_blk
        (biased variance, eps 1e-5, as torch.nn.LayerNorm)

    LayerNormLSTM (gates i, f, g, o):
        a = LN_4(W_ih x; ln_weight_ih, bias_ih) + LN_4(W_hh h; ln_weight_hh, bias_hh)
        i, f, o = sigmoid, g = tanh of a's blocks;  c' = f * c + i * g
        h' = o * tanh(LN_1(c'; ln_weight_c, ln_bias_c))
        with proj_size P > 0 (as torch.nn.LSTM): h' = W_hr (o * tanh(LN_1(c'; ...))), P wide
    LayerNormGRU (gates r, z, n; PyTorch's reset-after form):
        gi = LN_3(W_ih x; ln_weight_ih, bias_ih);  gh = LN_3(W_hh h; ln_weight_hh, bias_hh)
        r = sigmoid(gi_r + gh_r);  z = sigmoid(gi_z + gh_z);  n = tanh(gi_n + r * gh_n)
        h' = (1 - z) * n + z * h

The usual ``bias_ih`` / ``bias_hh`` are the layer norms' betas (a bias added
before a normalisation would cancel). Parameters per layer and direction
(suffix ``_l{k}`` and ``_l{k}_reverse`` as PyTorch's)::

    weight_ih [G*H, I]   weight_hh [G*H, H]   (uniform(-1/sqrt(H), 1/sqrt(H)), as pyrnn.LSTM)
    bias_ih, bias_hh [G*H]                     (betas, 0)
    LSTM with proj_size P: weight_hr [P, H]    (uniform as above); weight_hh is then [4H, P]
    ln_weight_ih, ln_weight_hh [G*H]           (gains, 1)
    LSTM: ln_weight_c [H] (1), ln_bias_c [H] (0)

With a projection, h0 and h_n are [num_layers * num_directions, B, P], c0
and c_n [.., B, H], the output's last dimension is num_directions * P and
the next layer's input is num_directions * P wide (as torch.nn.LSTM).

``bias=False`` removes every beta (bias_ih, bias_hh and ln_bias_c); the gains stay.

Training options (keyword-only, as :class:`pyrnn.LSTM` / :class:`pyrnn.GRU`'s;
masks drawn per call, layer and direction from the layer's RNG in training
mode; eval mode uses none): ``recurrent_dropout`` (one mask per sequence on
h where it enters W_hh h; the GRU's z * h keeps the unmasked h) and
``zoneout`` (h' = m h + (1 - m) h' with m ~ Bernoulli(zoneout) per unit and
step), for the LSTM also ``zoneout_c`` (the same on the state c', while h~
reads LN(c~) of the un-zoned c~, as Krueger et al. 2016; None: the rate of h).
Each layer and direction runs in C++ (:func:`pyrnn.functional.layernorm_lstm_forward`).
"""

from __future__ import annotations

import math

import numpy as np

from . import _stack
from . import functional as F
from ._cells import GATES
from ._validation import (check_bool, check_layer_dropout, check_positive_int, check_probability, check_stack_memory,
                          make_rng, zoneout_rates)
from .layers import _StackedLayer

__all__ = ["LayerNormLSTM", "LayerNormGRU"]

# pyrnn.functional's argument names -> parameter names (before the _l0 / _l0_reverse suffix)
LN_PARAM_NAMES = {"W_ih": "weight_ih", "W_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh",
                  "ln_ih": "ln_weight_ih", "ln_hh": "ln_weight_hh", "ln_c_weight": "ln_weight_c",
                  "ln_c_bias": "ln_bias_c", "W_hr": "weight_hr"}


class _LayerNormRNNBase(_StackedLayer):

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, *, recurrent_dropout=0.0, zoneout=0.0, zoneout_c=None,
                 dtype=np.float32, seed=None, rng=None):
        super().__init__(dtype)
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("num_layers", num_layers)
        check_positive_int("proj_size", proj_size, allow_zero=True)
        if proj_size and mode != "LSTM":
            raise ValueError(f"proj_size argument is only supported for LayerNormLSTM, not LayerNorm{mode}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} and "
                             f"hidden_size={hidden_size}")
        check_layer_dropout(dropout, num_layers)
        check_probability("recurrent_dropout", recurrent_dropout)
        zoneout, zoneout_c = zoneout_rates(mode, zoneout, zoneout_c)
        self.mode = mode  # "LSTM" or "GRU": the states and messages of pyrnn.LSTM / GRU
        self.family = mode.lower()
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = check_bool("bias", bias)
        self.batch_first = check_bool("batch_first", batch_first)
        self.dropout = float(dropout)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        self.proj_size = int(proj_size)
        check_stack_memory(f"LayerNorm{mode}", GATES[self.family], self.input_size, self.hidden_size, self.proj_size,
                           self.num_layers, self.num_directions, self.dtype)  # (before the parameters below)
        self.recurrent_dropout = float(recurrent_dropout)
        self.zoneout = zoneout  # probability that a unit of h keeps its previous value at a step (training)
        self._zoneout_c = zoneout_c  # the same for the LSTM's c (None: zoneout's; 0.0 for the GRU)
        self._rng = make_rng(seed, rng)
        self._saved = None
        G, H, P = (4 if mode == "LSTM" else 3), self.hidden_size, self.proj_size
        H_out = P or H
        bound = 1.0 / math.sqrt(H)
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else H_out * self.num_directions
            for sfx in (_stack.param_suffix(layer, d) for d in range(self.num_directions)):
                self._add_param(f"weight_ih{sfx}", (G * H, in_size), self._rng, bound)
                self._add_param(f"weight_hh{sfx}", (G * H, H_out), self._rng, bound)
                if self.bias:
                    self._add_const(f"bias_ih{sfx}", (G * H,), 0.0)
                    self._add_const(f"bias_hh{sfx}", (G * H,), 0.0)
                if P:  # after the biases, as pyrnn.LSTM / torch.nn.LSTM
                    self._add_param(f"weight_hr{sfx}", (P, H), self._rng, bound)
                self._add_const(f"ln_weight_ih{sfx}", (G * H,), 1.0)
                self._add_const(f"ln_weight_hh{sfx}", (G * H,), 1.0)
                if mode == "LSTM":
                    self._add_const(f"ln_weight_c{sfx}", (H,), 1.0)
                    if self.bias:
                        self._add_const(f"ln_bias_c{sfx}", (H,), 0.0)

    def _add_const(self, name, shape, value):
        self._params[name] = np.full(shape, value, dtype=self.dtype)
        self.grads[name] = np.zeros(shape, dtype=self.dtype)

    def direction_params(self, layer, direction):
        """One layer and direction's parameters by :mod:`pyrnn.functional`'s names
        (W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, and for the LSTM ln_c_weight,
        ln_c_bias, W_hr); None where absent."""
        sfx = _stack.param_suffix(layer, direction)
        names = LN_PARAM_NAMES if self.mode == "LSTM" else {k: v for k, v in LN_PARAM_NAMES.items()
                                                            if not k.startswith("ln_c") and k != "W_hr"}
        return {short: self._params.get(name + sfx) for short, name in names.items()}

    def __repr__(self):
        extra = "".join([
            f", num_layers={self.num_layers}" if self.num_layers != 1 else "",
            ", bias=False" if not self.bias else "",
            ", batch_first=True" if self.batch_first else "",
            f", dropout={self.dropout}" if self.dropout else "",
            ", bidirectional=True" if self.bidirectional else "",
            f", proj_size={self.proj_size}" if self.proj_size else "",
            f", recurrent_dropout={self.recurrent_dropout}" if self.recurrent_dropout else "",
            f", zoneout={self.zoneout}" if self.zoneout else "",
            f", zoneout_c={self.zoneout_c}" if self.mode == "LSTM" and self.zoneout_c != self.zoneout else "",
        ])
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra})"

    def run_direction(self, layer, direction, x, h0=None, c0=None, *, lengths=None, training=True, h_mask=None,
                      zoneout_h=None, zoneout_c=None):
        """One layer and direction (time-major x): returns (y, h_n, c_n or None, workspace).
        h_mask, zoneout_h, zoneout_c: the masks of :func:`pyrnn.functional.layernorm_lstm_forward`."""
        p = self.direction_params(layer, direction)
        kw = {"lengths": lengths, "reverse": direction == 1, "training": training, "h_mask": h_mask,
              "zoneout_h": zoneout_h}
        if self.mode == "LSTM":
            return F.layernorm_lstm_forward(x, h0, c0, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], p["ln_ih"],
                                            p["ln_hh"], p["ln_c_weight"], p["ln_c_bias"], zoneout_c=zoneout_c,
                                            W_hr=p["W_hr"], **kw)
        y, h_n, ws = F.layernorm_gru_forward(x, h0, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], p["ln_ih"],
                                             p["ln_hh"], **kw)
        return y, h_n, None, ws

    def _label(self):
        return type(self).__name__

    def _direction_call(self, layer, d, layer_x, h0, c0, lengths, training, T, B):
        rec_mask, zh, zc = self._direction_masks(layer, d, T, B, training)
        return self.run_direction(layer, d, layer_x, h0, c0, lengths=lengths, training=training, h_mask=rec_mask,
                                  zoneout_h=zh, zoneout_c=zc)

    def _direction_backward(self, ws, layer, d, dy, dh_n, dc_n, input_grad=True):
        if self.mode == "LSTM":
            dx, dh0, dc0, *pg = F.layernorm_lstm_backward(ws, dy, dh_n, dc_n)
            names = ("W_ih", "W_hh", "b_ih", "b_hh", "ln_ih", "ln_hh", "ln_c_weight", "ln_c_bias", "W_hr")
        else:
            (dx, dh0, *pg), dc0 = F.layernorm_gru_backward(ws, dy, dh_n), None
            names = ("W_ih", "W_hh", "b_ih", "b_hh", "ln_ih", "ln_hh")
        sfx = _stack.param_suffix(layer, d)
        for short, grad in zip(names, pg):
            if grad is not None:
                self.grads[LN_PARAM_NAMES[short] + sfx] += grad
        return dx if input_grad else None, dh0, dc0  # (the layer-normalised kernels compute dx always)


class LayerNormLSTM(_LayerNormRNNBase):
    """Layer-normalised LSTM on NumPy (the equations: :mod:`pyrnn.layernorm`);
    the arguments of :class:`pyrnn.LSTM`, proj_size included (h = W_hr m is
    proj_size wide, weight_hr_l{k} [proj_size, hidden_size], as torch.nn.LSTM).

    Extras (keyword-only): recurrent_dropout (variational: one mask per sequence
    on h_{t-1} where it enters W_hh h, drawn per call, training only), zoneout
    (of h: each unit keeps its previous value with this probability at each
    step, training only) and zoneout_c (of the cell state c, before its layer
    norm; None: the rate of h), dtype, seed / rng."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, *, recurrent_dropout=0.0, zoneout=0.0, zoneout_c=None,
                 dtype=np.float32, seed=None, rng=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, recurrent_dropout=recurrent_dropout, zoneout=zoneout, zoneout_c=zoneout_c, dtype=dtype,
                         seed=seed, rng=rng)


class LayerNormGRU(_LayerNormRNNBase):
    """Layer-normalised GRU (reset-after) on NumPy (the equations: :mod:`pyrnn.layernorm`);
    the arguments of :class:`pyrnn.GRU` without reset_after.

    Extras (keyword-only): recurrent_dropout (one mask per sequence on h_{t-1}
    where it enters W_hh h; z * h keeps the unmasked h), zoneout (of h), as
    :class:`pyrnn.LayerNormLSTM`; dtype, seed / rng."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, *, recurrent_dropout=0.0, zoneout=0.0, dtype=np.float32, seed=None, rng=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         recurrent_dropout=recurrent_dropout, zoneout=zoneout, dtype=dtype, seed=seed, rng=rng)
