"""NumPy reference ("oracle") for one recurrent layer in one direction.

Forward and backward (backpropagation through time) passes for the Elman RNN,
the LSTM and the GRU, written for clarity rather than speed: vectorised over
the batch, a plain Python loop over time.  Everything is computed in the dtype
of the inputs (float32 or float64, all inputs the same), and every output has
that dtype.  Only NumPy is needed.

Layout (as ``torch.nn.RNN`` / ``LSTM`` / ``GRU``, ``batch_first=False``)::

    x        [T, B, I]
    h0, c0   [B, H]          (None means zeros)
    W_ih     [G*H, I]
    W_hh     [G*H, H]
    b_ih     [G*H] or None   (b_ih and b_hh are both given or both None)
    b_hh     [G*H] or None
    y        [T, B, H]

with G = 1 for the RNN, G = 4 for the LSTM (gate blocks i, f, g, o) and G = 3
for the GRU (gate blocks r, z, n), in PyTorch's order.

Equations (``s`` is the sigmoid, ``*`` the element-wise product)::

    RNN   h' = act(W_ih x + b_ih + W_hh h + b_hh),   act = tanh or relu
          leaky (``leak=a``, tanh): h' = (1 - a) h + a tanh(W_ih x + b_ih + W_hh h + b_hh)
    LSTM  i, f, g, o = s, s, tanh, s of (W_ih x + b_ih + W_hh h + b_hh)
          c' = f * c + i * g;   h' = o * tanh(c')
    GRU   r = s(W_ir x + b_ir + W_hr h + b_hr);   z likewise
          reset_after=True  (PyTorch, cuDNN):
              n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
          reset_after=False (Cho et al. 2014 v3, Keras reset_after=False):
              n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)
          h' = (1 - z) * n + z * h

Variable lengths (``lengths``, an integer array [B], each in [1, T]) follow
PyTorch's packed-sequence semantics: sequence b only consumes its first L_b
inputs; its output is zero at t >= L_b, and its final state is the state after
its own last valid step.  In backward, ``dy`` at padded positions is ignored,
the gradient with respect to padded inputs is zero, and ``dh_n`` / ``dc_n``
enter at each sequence's own last valid step.

Zoneout (``zoneout_h`` [T, B, H], and for the LSTM ``zoneout_c`` [T, B, H]):
the step that consumes x[t] mixes each state with its previous value,
h' = m h + (1 - m) h~ with m = zoneout_h[t] and h~ the update above; for the
LSTM also c' = m_c c + (1 - m_c) c~, while h~ = o * tanh(c~) reads the un-zoned
c~ = f * c + i * g (Krueger et al. 2016, eq. for the LSTM).

``reverse=True`` processes each sequence backwards in time: sequence b
consumes x[L_b - 1], x[L_b - 2], ..., x[0] (as the reverse direction of a
bidirectional PyTorch layer on a packed sequence does).  ``y[t, b]`` is the
output produced when consuming ``x[t, b]``, and ``h_n`` is the state after
consuming ``x[0]``.

With ``training=True`` the forward functions also return a ``cache`` (a plain
dict) holding what the matching ``*_backward`` needs; with ``training=False``
the cache is None.  Cache entries::

    "cell"       "rnn", "lstm" or "gru"
    "x", "W_ih", "W_hh", "b_ih", "b_hh"   the (validated) forward inputs;
                 the biases may be None
    "lengths"    int array [B] (all T when no lengths were given)
    "reverse"    bool
    "nonlinearity" and "leak" (RNN) or "reset_after" (GRU)
    "zoneout"    per state (h, c), the zoneout masks [T, B, H] in processing
                 order, or None
    "h"          [T+1, B, H]: "h"[s] is the hidden state *before* processing
                 step s ("h"[0] = h0, "h"[T] = h_n); steps are counted in
                 processing order, so with reverse=True step s consumes
                 x[L_b - 1 - s]; padded steps repeat the previous state
    "c"          (LSTM) [T+1, B, H], the cell state, indexed like "h"
    activations, each [T, B, H] and indexed by processing step:
        RNN:  "a"  (the new hidden state before length masking)
        LSTM: "i", "f", "g", "o" (activated gates), "tanh_c" (tanh of the new, un-zoned c~)
        GRU:  "r", "z", "n" (activated gates) and "hn", the hidden-side
              pre-activation of n: W_hn h + b_hn (reset_after=True) or
              W_hn (r * h) + b_hn (reset_after=False)
"""

from __future__ import annotations

import numpy as np

from ._cells import GATES, cell_spec
from ._validation import check_bool, check_forward, check_grads, check_layernorm_params

__all__ = [
    "rnn_forward",
    "rnn_backward",
    "lstm_forward",
    "lstm_backward",
    "gru_forward",
    "gru_backward",
    "layernorm_lstm_forward",
    "layernorm_lstm_backward",
    "layernorm_gru_forward",
    "layernorm_gru_backward",
    "LN_EPS",
    "lower_weights",
    "quantize_rows_int8",
    "round_bf16",
]

_STATE_NAMES = {"rnn": ("h",), "lstm": ("h", "c"), "gru": ("h",)}


# --------------------------------------------------------------------------
# small numeric helpers
# --------------------------------------------------------------------------


def _sigmoid(v):
    # The tanh form never overflows (no RuntimeWarning for large |v|) and
    # keeps the dtype of v.
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def _affine(v, W, b):
    """v @ W.T + b, with b possibly None; W may be a :func:`lower_weights` result."""
    if isinstance(W, _Int8Weights):
        qa, sa = quantize_rows_int8(v, levels=63)  # activations: 7 bits (see lower_weights)
        out = (qa.astype(np.int64) @ W.q.T.astype(np.int64)).astype(np.float32) * (sa[:, None] * W.scale[None, :])
    else:
        out = v @ W.T
    return out if b is None else out + b


# --------------------------------------------------------------------------
# reduced-precision weights (the kernels' int8 and bf16 inference, csrc/gemm/lowp.h)
# --------------------------------------------------------------------------

PRECISIONS = ("same", "int8", "bf16")


class _Int8Weights:
    """W [N, K] as int8 values (held as int32) with a float32 scale per row."""

    def __init__(self, W):
        self.q, self.scale = quantize_rows_int8(W)
        self.shape = W.shape

    def __getitem__(self, rows):  # a block of rows keeps its rows' scales
        out = object.__new__(_Int8Weights)
        out.q, out.scale = self.q[rows], self.scale[rows]
        out.shape = out.q.shape
        return out


def quantize_rows_int8(a, levels=127):
    """Symmetric quantisation of each row of a float32 [n, K] array to integers in
    [-levels, levels]: returns (q [n, K] int32, scale [n] float32), a ~= q * scale[:, None].

    scale = max|row| / levels and q = round-half-even(row * (levels / max|row|))
    in float32, as the kernels compute it; a row with inf or NaN gets scale NaN
    (its products come out NaN) and a zero row scale 0. The kernels use 127
    levels for weights and 63 (7 bits) for activations.
    """
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)):
        raise TypeError(f"levels must be an int in [1, 127], got {type(levels).__name__} {levels!r}")
    if not 1 <= levels <= 127:  # (0 gave scale inf; int8 holds +-127)
        raise ValueError(f"levels must be an int in [1, 127], got {levels}")
    a = np.asarray(a)
    if a.dtype.kind != "f":  # (strings were parsed)
        raise TypeError(f"quantize_rows_int8 needs a floating-point array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"quantize_rows_int8 needs a 2-D array [n, K], got shape {a.shape}")
    a = a.astype(np.float32, copy=False)
    with np.errstate(invalid="ignore"):
        amax = np.max(np.abs(a), axis=1) if a.shape[1] else np.zeros(a.shape[0], np.float32)
    finite = np.isfinite(amax)
    usable = finite & (amax > 0)
    lv = np.float32(levels)
    inv = np.where(usable, lv / np.where(usable, amax, np.float32(1)), np.float32(0)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        q = np.rint(np.where(finite[:, None], a * inv[:, None], np.float32(0))).astype(np.int32)
    scale = np.where(finite, amax / lv, np.float32(np.nan)).astype(np.float32)
    return q, scale


def round_bf16(a):
    """float32 values rounded to bfloat16 (nearest, ties to even), as float32."""
    a = np.asarray(a, np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    r = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    return np.where(np.isnan(a), a, r)


def lower_weights(W, precision):
    """W as a reduced-precision forward multiplies it: "int8" (per-row scales,
    127 levels; the activations it multiplies are quantised per row at each
    product to 63 levels, 7 bits, as torch's fbgemm reduce_range keeps them, so
    the kernels' 8-bit products cannot saturate), "bf16", or "same"/None (W)."""
    if precision in (None, "same"):
        return W
    if np.asarray(W).dtype != np.float32:
        raise TypeError(f"precision {precision!r} needs float32 weights, got {np.asarray(W).dtype}")
    if precision == "int8":
        return _Int8Weights(np.asarray(W, np.float32))
    if precision == "bf16":
        return round_bf16(W)
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _lowered(precision, training, W_ih, W_hh):
    training = check_bool("training", training)
    if precision in (None, "same"):
        return W_ih, W_hh
    if training:
        raise ValueError("precision: reduced-precision weights are for inference (training=False)")
    return lower_weights(W_ih, precision), lower_weights(W_hh, precision)


# --------------------------------------------------------------------------
# time loop shared by the three cells
# --------------------------------------------------------------------------


def _time_order(lengths, T, reverse):
    """Which input each sequence consumes at each processing step.

    Returns (idx, valid), both [T, B]: at processing step s, sequence b
    consumes x[idx[s, b], b] when valid[s, b]; a step is valid while
    s < L_b.  Forward order is idx = s, reverse order is idx = L_b - 1 - s.
    Invalid entries of idx are 0 (any in-range index would do).
    """
    steps = np.arange(T)[:, None]
    valid = steps < lengths[None, :]
    idx = lengths[None, :] - 1 - steps if reverse else np.broadcast_to(steps, valid.shape)
    return np.where(valid, idx, 0), valid


def _run_forward(step, x, states, lengths, reverse, training, cache, zoneout=()):
    """Run ``step`` over time.

    ``step(x_s, states, masks) -> (new_states, activations)`` computes one
    step for the whole batch; new_states[0] is the hidden state (the output)
    and activations is a dict of [B, H] arrays for backward.  ``zoneout``
    holds a zoneout mask [T, B, H] (or None) per state; ``masks`` are this
    step's ([B, H] or None).  The hidden state's zoneout is applied here, the
    cell state's by the step (its h uses the un-zoned c~).  Padded steps keep
    the previous state and produce a zero output.  ``cache`` holds the common
    entries; it is completed and returned when training, else None is.
    """
    training = check_bool("training", training)
    T, B, _ = x.shape
    H = states[0].shape[1]
    idx, valid = _time_order(lengths, T, reverse)
    batch = np.arange(B)
    zoneout = tuple(zoneout) + (None,) * (len(states) - len(zoneout))
    in_order = tuple(None if m is None else m[idx, batch] for m in zoneout)  # [T, B, H], processing order
    y = np.zeros((T, B, H), dtype=x.dtype)
    state_history = [states]
    activations = []
    for s in range(T):
        masks = tuple(None if m is None else m[s] for m in in_order)
        new_states, acts = step(x[idx[s], batch], states, masks)
        if masks[0] is not None:
            new_states = (masks[0] * states[0] + (1 - masks[0]) * new_states[0],) + tuple(new_states[1:])
        keep = valid[s][:, None]
        states = tuple(np.where(keep, new, old) for new, old in zip(new_states, states))
        y[idx[s][valid[s]], batch[valid[s]]] = new_states[0][valid[s]]
        if training:
            state_history.append(states)
            activations.append(acts)
    if not training:
        return y, states, None
    cache["zoneout"] = in_order
    for k, name in enumerate(_STATE_NAMES[cache["cell"]]):
        cache[name] = np.stack([st[k] for st in state_history])
    for key in activations[0]:
        cache[key] = np.stack([acts[key] for acts in activations])
    return y, states, cache


def _run_backward(step_backward, cache, dy, dfinal):
    """Backpropagate through time.

    ``step_backward(s, x_s, dstates) -> (dgi, dgh, dW_hh_s, dprev)`` handles
    processing step s: dstates are the gradients with respect to the states
    after the step (dy already added to the hidden one); it returns the
    gradients with respect to the input-side pre-activation W_ih x + b_ih
    (dgi, [B, G*H]) and the hidden-side pre-activation (dgh, [B, G*H]), the
    step's W_hh gradient and the gradients with respect to the previous
    states.  This driver accumulates the parameter gradients, scatters dx and
    lets the state gradients pass unchanged through padded steps.
    Returns (dx, dstates0, dW_ih, dW_hh, db_ih, db_hh).
    """
    x, W_ih, W_hh = cache["x"], cache["W_ih"], cache["W_hh"]
    T, B, _ = x.shape
    idx, valid = _time_order(cache["lengths"], T, cache["reverse"])
    batch = np.arange(B)
    dx = np.zeros_like(x)
    dW_ih = np.zeros_like(W_ih)
    dW_hh = np.zeros_like(W_hh)
    db_ih = np.zeros(W_hh.shape[0], dtype=x.dtype)
    db_hh = np.zeros(W_hh.shape[0], dtype=x.dtype)
    dstates = dfinal
    for s in reversed(range(T)):
        live = valid[s][:, None]
        x_s = x[idx[s], batch]
        d_in = (dstates[0] + dy[idx[s], batch],) + dstates[1:]
        d_in = tuple(d * live for d in d_in)  # padded rows contribute nothing
        m_h = cache["zoneout"][0]
        if m_h is not None:  # h = m h_prev + (1 - m) h~: the cell sees (1 - m) dh, h_prev gets m dh directly
            direct = m_h[s] * d_in[0]
            d_in = ((1 - m_h[s]) * d_in[0],) + d_in[1:]
        dgi, dgh, dW_hh_s, dprev = step_backward(s, x_s, d_in)
        if m_h is not None:
            dprev = (dprev[0] + direct,) + tuple(dprev[1:])
        dW_ih += dgi.T @ x_s
        db_ih += dgi.sum(axis=0)
        dW_hh += dW_hh_s
        db_hh += dgh.sum(axis=0)
        dx[idx[s][valid[s]], batch[valid[s]]] = (dgi @ W_ih)[valid[s]]
        dstates = tuple(np.where(live, new, old) for new, old in zip(dprev, dstates))
    if cache["b_ih"] is None:
        db_ih = db_hh = None
    return dx, dstates, dW_ih, dW_hh, db_ih, db_hh


def _check_backward_inputs(cell, cache, dy, dfinal):
    """The cache and the output gradients; None gradients become zeros.
    ``dfinal`` maps "dh_n" (and "dc_n") to an array or None. Returns (dy, final-state gradients)."""
    if cache is None:
        raise ValueError(f"{cell}_backward needs the cache of {cell}_forward(..., training=True), got None")
    if not isinstance(cache, dict) or cache.get("cell") != cell or cache.get("layernorm"):
        origin = ((f"layernorm_{cache.get('cell')}" if cache.get("layernorm") else cache.get("cell"))
                  if isinstance(cache, dict) else type(cache).__name__)
        raise ValueError(f"{cell}_backward needs a cache from {cell}_forward, got one from {origin!r}")
    T, B, _ = cache["x"].shape
    H = cache["W_hh"].shape[1]
    expected = {"dy": ((T, B, H), "(T, B, H)"), "dh_n": ((B, H), "(B, H)"), "dc_n": ((B, H), "(B, H)")}
    dy, *final = check_grads(cache["x"].dtype, expected, {"dy": dy, **dfinal}, zeros=True)
    return dy, tuple(final)


def _common_cache(cell, x, W_ih, W_hh, b_ih, b_hh, lengths, reverse, **options):
    return {
        "cell": cell,
        "x": x,
        "W_ih": W_ih,
        "W_hh": W_hh,
        "b_ih": b_ih,
        "b_hh": b_hh,
        "lengths": lengths,
        "reverse": reverse,
        **options,
    }


# --------------------------------------------------------------------------
# Elman RNN
# --------------------------------------------------------------------------


def rnn_forward(x, h0, W_ih, W_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh",
                lengths=None, reverse=False, training=True, precision=None, leak=None, zoneout_h=None):
    """Elman RNN forward.  Returns (y, h_n, cache); cache is None unless training.
    ``precision``: "int8" or "bf16" multiplies by the weights as the kernels'
    reduced-precision inference does (:func:`lower_weights`; training=False).
    ``leak`` (tanh, in (0, 1]): the leaky integrator; ``zoneout_h``: see above."""
    cell_spec("rnn", nonlinearity=nonlinearity, leak=leak)  # checks both
    x, (h0,), W_ih, W_hh, b_ih, b_hh, lengths, _, _, zoneout_h, _ = check_forward(
        "rnn", x, {"h0": h0}, W_ih, W_hh, b_ih, b_hh, lengths, zoneout_h=zoneout_h)
    W_ih, W_hh = _lowered(precision, training, W_ih, W_hh)
    reverse = check_bool("reverse", reverse)
    act = np.tanh if nonlinearity == "tanh" else (lambda v: np.maximum(v, 0.0))
    rate = 1.0 if leak is None else float(leak)

    def step(x_s, states, masks):
        (h,) = states
        a = act(_affine(x_s, W_ih, b_ih) + _affine(h, W_hh, b_hh))
        return ((1 - rate) * h + rate * a if leak is not None else a,), {"a": a}

    cache = _common_cache("rnn", x, W_ih, W_hh, b_ih, b_hh, lengths, reverse,
                          nonlinearity=nonlinearity, leak=rate)
    y, (h_n,), cache = _run_forward(step, x, (h0,), lengths, reverse, training, cache, (zoneout_h,))
    return y, h_n, cache


def rnn_backward(cache, dy=None, dh_n=None):
    """Elman RNN backward.  Returns (dx, dh0, dW_ih, dW_hh, db_ih, db_hh)."""
    dy, dfinal = _check_backward_inputs("rnn", cache, dy, {"dh_n": dh_n})
    W_hh = cache["W_hh"]
    tanh, rate = cache["nonlinearity"] == "tanh", cache["leak"]

    def step_backward(s, x_s, dstates):
        (dh,) = dstates
        a, h = cache["a"][s], cache["h"][s]
        # relu'(0) = 0; as torch, where(a <= 0, 0, dh): a NaN a passes dh, an inf dh stays out where a <= 0
        dpre = rate * dh * (1.0 - a * a) if tanh else np.where(a <= 0, 0.0, dh).astype(dh.dtype, copy=False)
        dh_prev = dpre @ W_hh + (1 - rate) * dh if rate != 1.0 else dpre @ W_hh
        return dpre, dpre, dpre.T @ h, (dh_prev,)

    dx, (dh0,), dW_ih, dW_hh, db_ih, db_hh = _run_backward(step_backward, cache, dy, dfinal)
    return dx, dh0, dW_ih, dW_hh, db_ih, db_hh


# --------------------------------------------------------------------------
# LSTM
# --------------------------------------------------------------------------


def lstm_forward(x, h0, c0, W_ih, W_hh, b_ih=None, b_hh=None, *, lengths=None,
                 reverse=False, training=True, precision=None, zoneout_h=None, zoneout_c=None):
    """LSTM forward.  Returns (y, h_n, c_n, cache); cache is None unless training.
    ``precision``: as :func:`rnn_forward`; ``zoneout_h``, ``zoneout_c``: see above."""
    x, (h0, c0), W_ih, W_hh, b_ih, b_hh, lengths, _, _, zoneout_h, zoneout_c = check_forward(
        "lstm", x, {"h0": h0, "c0": c0}, W_ih, W_hh, b_ih, b_hh, lengths, zoneout_h=zoneout_h, zoneout_c=zoneout_c)
    W_ih, W_hh = _lowered(precision, training, W_ih, W_hh)
    reverse = check_bool("reverse", reverse)

    def step(x_s, states, masks):
        h, c = states
        pre = _affine(x_s, W_ih, b_ih) + _affine(h, W_hh, b_hh)
        pre_i, pre_f, pre_g, pre_o = np.split(pre, 4, axis=1)
        i, f, g, o = _sigmoid(pre_i), _sigmoid(pre_f), np.tanh(pre_g), _sigmoid(pre_o)
        c_tilde = f * c + i * g
        c_new = c_tilde if masks[1] is None else masks[1] * c + (1 - masks[1]) * c_tilde
        tanh_c = np.tanh(c_tilde)  # h~ reads c~, not the zoned c_new
        return (o * tanh_c, c_new), {"i": i, "f": f, "g": g, "o": o, "tanh_c": tanh_c}

    cache = _common_cache("lstm", x, W_ih, W_hh, b_ih, b_hh, lengths, reverse)
    y, (h_n, c_n), cache = _run_forward(step, x, (h0, c0), lengths, reverse, training, cache,
                                        (zoneout_h, zoneout_c))
    return y, h_n, c_n, cache


def lstm_backward(cache, dy=None, dh_n=None, dc_n=None):
    """LSTM backward.  Returns (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh)."""
    dy, dfinal = _check_backward_inputs("lstm", cache, dy, {"dh_n": dh_n, "dc_n": dc_n})
    W_hh = cache["W_hh"]

    def step_backward(s, x_s, dstates):
        dh, dc = dstates
        i, f, g, o = (cache[k][s] for k in ("i", "f", "g", "o"))
        tanh_c, h_prev, c_prev = cache["tanh_c"][s], cache["h"][s], cache["c"][s]
        do = dh * tanh_c
        m_c = cache["zoneout"][1]
        dc_direct = 0.0 if m_c is None else m_c[s] * dc  # c = m c_prev + (1 - m) c~: dL/dc splits
        if m_c is not None:
            dc = (1 - m_c[s]) * dc
        dc = dc + dh * o * (1.0 - tanh_c * tanh_c)  # dL/dc~ (h~ = o tanh(c~))
        dpre = np.concatenate([
            dc * g * i * (1.0 - i),       # input gate
            dc * c_prev * f * (1.0 - f),  # forget gate
            dc * i * (1.0 - g * g),       # cell candidate
            do * o * (1.0 - o),           # output gate
        ], axis=1)
        return dpre, dpre, dpre.T @ h_prev, (dpre @ W_hh, dc * f + dc_direct)

    dx, (dh0, dc0), dW_ih, dW_hh, db_ih, db_hh = _run_backward(step_backward, cache, dy, dfinal)
    return dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh


# --------------------------------------------------------------------------
# GRU
# --------------------------------------------------------------------------


def gru_forward(x, h0, W_ih, W_hh, b_ih=None, b_hh=None, *, reset_after=True,
                lengths=None, reverse=False, training=True, precision=None, zoneout_h=None):
    """GRU forward.  Returns (y, h_n, cache); cache is None unless training.
    ``precision``: as :func:`rnn_forward`; ``zoneout_h``: see above."""
    x, (h0,), W_ih, W_hh, b_ih, b_hh, lengths, _, _, zoneout_h, _ = check_forward(
        "gru", x, {"h0": h0}, W_ih, W_hh, b_ih, b_hh, lengths, zoneout_h=zoneout_h)
    W_ih, W_hh = _lowered(precision, training, W_ih, W_hh)
    reverse = check_bool("reverse", reverse)
    reset_after = check_bool("reset_after", reset_after)
    H = W_hh.shape[1]
    W_hrz, W_hn = W_hh[:2 * H], W_hh[2 * H:]
    b_hrz, b_hn = (None, None) if b_hh is None else (b_hh[:2 * H], b_hh[2 * H:])

    def step(x_s, states, masks):
        (h,) = states
        gi = _affine(x_s, W_ih, b_ih)
        r, z = np.split(_sigmoid(gi[:, :2 * H] + _affine(h, W_hrz, b_hrz)), 2, axis=1)
        if reset_after:
            hn = _affine(h, W_hn, b_hn)
            n = np.tanh(gi[:, 2 * H:] + r * hn)
        else:
            hn = _affine(r * h, W_hn, b_hn)
            n = np.tanh(gi[:, 2 * H:] + hn)
        h_new = n + z * (h - n)  # = (1 - z) * n + z * h
        return (h_new,), {"r": r, "z": z, "n": n, "hn": hn}

    cache = _common_cache("gru", x, W_ih, W_hh, b_ih, b_hh, lengths, reverse,
                          reset_after=reset_after)
    y, (h_n,), cache = _run_forward(step, x, (h0,), lengths, reverse, training, cache, (zoneout_h,))
    return y, h_n, cache


def gru_backward(cache, dy=None, dh_n=None):
    """GRU backward.  Returns (dx, dh0, dW_ih, dW_hh, db_ih, db_hh)."""
    dy, dfinal = _check_backward_inputs("gru", cache, dy, {"dh_n": dh_n})
    W_hh = cache["W_hh"]
    H = W_hh.shape[1]
    W_hrz, W_hn = W_hh[:2 * H], W_hh[2 * H:]

    def step_backward(s, x_s, dstates):
        (dh,) = dstates
        r, z, n, hn = (cache[k][s] for k in ("r", "z", "n", "hn"))
        h = cache["h"][s]
        dn_pre = dh * (1.0 - z) * (1.0 - n * n)
        dz_pre = dh * (h - n) * z * (1.0 - z)
        if cache["reset_after"]:
            dr_pre = dn_pre * hn * r * (1.0 - r)
            dgh = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1)
            dW_hh_s = dgh.T @ h
            dh_prev = dh * z + dgh @ W_hh
        else:
            d_rh = dn_pre @ W_hn  # gradient with respect to r * h
            dr_pre = d_rh * h * r * (1.0 - r)
            dgh = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
            dW_hh_s = np.concatenate([dgh[:, :2 * H].T @ h, dn_pre.T @ (r * h)], axis=0)
            dh_prev = dh * z + d_rh * r + dgh[:, :2 * H] @ W_hrz
        dgi = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
        return dgi, dgh, dW_hh_s, (dh_prev,)

    dx, (dh0,), dW_ih, dW_hh, db_ih, db_hh = _run_backward(step_backward, cache, dy, dfinal)
    return dx, dh0, dW_ih, dW_hh, db_ih, db_hh


# --------------------------------------------------------------------------
# layer-normalised LSTM and GRU (Ba, Kiros & Hinton 2016)
# --------------------------------------------------------------------------
#
# LN_G(v; gamma, beta) normalises each of the G gate blocks of H units of a
# row v [G*H] on its own (biased variance, eps = LN_EPS, as torch.nn.LayerNorm):
#
#     LN_G(v)_blk = (v_blk - mean(v_blk)) / sqrt(var(v_blk) + eps) * gamma_blk + beta_blk
#
# LSTM (gates i, f, g, o):
#     a = LN_4(W_ih x; ln_ih, b_ih) + LN_4(W_hh h; ln_hh, b_hh)
#     i, f, o = s(a_i), s(a_f), s(a_o);  g = tanh(a_g)
#     c' = f * c + i * g;   h' = o * tanh(LN_1(c'; ln_c_weight, ln_c_bias))
# GRU (gates r, z, n; PyTorch's reset-after form):
#     gi = LN_3(W_ih x; ln_ih, b_ih);   gh = LN_3(W_hh h; ln_hh, b_hh)
#     r = s(gi_r + gh_r);  z = s(gi_z + gh_z);  n = tanh(gi_n + r * gh_n)
#     h' = (1 - z) * n + z * h
#
# The usual biases b_ih, b_hh are the layer norms' betas (the normalisation
# would remove a bias added before it); None (both) means no beta. ln_c_bias
# may be None on its own. Lengths and reverse as for the plain cells above.
#
# Training options, as the plain cells': ``h_mask`` [B, H] (recurrent
# dropout: W_hh (h * h_mask) in place of W_hh h, the same mask at every step;
# the GRU's z * h keeps the unmasked h) and zoneout, ``zoneout_h`` [T, B, H]
# and for the LSTM ``zoneout_c`` [T, B, H], time-aligned with x:
#     LSTM: c' = m_c c + (1 - m_c) c~ with c~ = f * c + i * g, while h~ reads
#           LN_1(c~), the un-zoned c~ (Krueger et al. 2016);
#     both: h' = m_h h + (1 - m_h) h~ with h~ the update above.
#
# LSTM projection (PyTorch's proj_size; ``W_hr`` [P, H], 0 < P < H): the
# update above gives m = o * tanh(LN_1(c')) [B, H] and h~ = m W_hr^T [B, P];
# h, y, h0, h_n, h_mask and zoneout_h are then P wide and W_hh is [4H, P]
# (c, zoneout_c stay H wide). Zoneout mixes the projected h. Backward adds
# dW_hr = sum over steps of dh~^T m and gives the cell dm = dh~ W_hr.
#
# Cache entries (besides the common ones and "ln_ih", "ln_hh", "ln_c_weight",
# "ln_c_bias"): "h" (and "c") [T+1, B, H] as above; by *time position*,
# "xhat_ih" [T, B, G*H] and "rstd_ih" [T, B, G], the normalised input
# projection and 1/sigma of each block (computed for every position, padded
# ones included: their gradient is zero); by processing step, "xhat_hh" /
# "rstd_hh" likewise for the hidden projection, the activated gates ("i", "f",
# "g", "o" or "r", "z", "n"), for the LSTM "xhat_c" / "rstd_c" [T, B, H] / [T, B, 1]
# (the new, un-zoned c~ normalised) and "tanh_c" (tanh of LN_1(c~)), for the GRU
# "ghn" (gh_n, the normalised hidden-side n block); "h_mask" and "zoneout" (per
# state, the masks in processing order, or None); "W_hr" (None without a
# projection) and with one "m" (the unprojected outputs, by processing step).

#: The layer norms' epsilon (as torch.nn.LayerNorm's default).
LN_EPS = 1e-5


def _ln_forward(v, gamma, beta, G):
    """LN_G of the rows of v [..., G*H]: returns (out, xhat, rstd [..., G])."""
    shape = v.shape
    blocks = v.reshape(shape[:-1] + (G, shape[-1] // G))
    mean = blocks.mean(axis=-1, keepdims=True)
    centred = blocks - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + v.dtype.type(LN_EPS))
    xhat = (centred * rstd).reshape(shape)
    out = xhat * gamma
    if beta is not None:
        out = out + beta
    return out, xhat, rstd[..., 0]


def _ln_backward(dout, xhat, rstd, gamma, G):
    """Gradient of LN_G with respect to its input, given dL/d(out) [..., G*H]
    and the forward's xhat and rstd [..., G]. (The gain and bias gradients are
    sums over rows of dout * xhat and dout, taken by the caller.)"""
    shape = dout.shape
    H = shape[-1] // G
    dxhat = (dout * gamma).reshape(shape[:-1] + (G, H))
    xh = xhat.reshape(dxhat.shape)
    # d/dv of (v - mean) * rstd: rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dv = rstd[..., None] * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                            - xh * np.mean(dxhat * xh, axis=-1, keepdims=True))
    return dv.reshape(shape)


def _layernorm_forward(cell, step, x, states, W_ih, W_hh, b_ih, b_hh, ln, lengths, reverse, training,
                       h_mask=None, zoneout=(None, None), W_hr=None):
    """Shared time loop of the layer-normalised cells. ``step(gi, gh, states,
    masks)`` gets the normalised input and hidden projections of one step
    ([B, G*H] each) and the step's zoneout masks ([B, H] or None per state),
    and returns (new_states, activations dict); it applies the cell state's
    zoneout, this loop the hidden state's. ``h_mask`` [B, P or H] or None:
    the recurrent projection reads h * h_mask. ``W_hr`` [P, H] or None: the
    LSTM's output projection, applied here to the step's new h (m) before
    the hidden state's zoneout."""
    G = GATES[cell]
    T, B, _ = x.shape
    reverse, training = check_bool("reverse", reverse), check_bool("training", training)
    gi_all, xhat_ih, rstd_ih = _ln_forward(x @ W_ih.T, ln["ln_ih"], b_ih, G)  # every position at once
    idx, valid = _time_order(lengths, T, reverse)
    batch = np.arange(B)
    zoneout = tuple(zoneout) + (None,) * (len(states) - len(zoneout))
    in_order = tuple(None if m is None else m[idx, batch] for m in zoneout)  # [T, B, H], processing order
    y = np.zeros((T, B, W_hh.shape[1]), dtype=x.dtype)
    history, acts_all = [states], []
    for s in range(T):
        h_rec = states[0] if h_mask is None else states[0] * h_mask
        gh, xhat_hh, rstd_hh = _ln_forward(h_rec @ W_hh.T, ln["ln_hh"], b_hh, G)
        masks = tuple(None if m is None else m[s] for m in in_order)
        new_states, acts = step(gi_all[idx[s], batch], gh, states, masks)
        if W_hr is not None:  # h~ = W_hr m
            acts = {**acts, "m": new_states[0]}
            new_states = (new_states[0] @ W_hr.T,) + tuple(new_states[1:])
        if masks[0] is not None:
            new_states = (masks[0] * states[0] + (1 - masks[0]) * new_states[0],) + tuple(new_states[1:])
        keep = valid[s][:, None]
        states = tuple(np.where(keep, new, old) for new, old in zip(new_states, states))
        y[idx[s][valid[s]], batch[valid[s]]] = new_states[0][valid[s]]
        if training:
            history.append(states)
            acts_all.append({**acts, "xhat_hh": xhat_hh, "rstd_hh": rstd_hh})
    if not training:
        return y, states, None
    cache = _common_cache(cell, x, W_ih, W_hh, b_ih, b_hh, lengths, reverse, layernorm=True,
                          xhat_ih=xhat_ih, rstd_ih=rstd_ih, h_mask=h_mask, zoneout=in_order, W_hr=W_hr, **ln)
    for k, name in enumerate(_STATE_NAMES[cell]):
        cache[name] = np.stack([st[k] for st in history])
    for key in acts_all[0]:
        cache[key] = np.stack([a[key] for a in acts_all])
    return y, states, cache


def _layernorm_backward(cell, step_backward, cache, dy, dfinal):
    """BPTT of the layer-normalised cells. ``step_backward(s, dstates)`` gets
    the gradients with respect to the states after processing step s (dy
    added, zero on padded rows) and returns (da_i, da_h, dprev, extra): the
    gradients with respect to the normalised input projection LN(W_ih x) and
    hidden projection LN(W_hh h) of that step ([B, G*H] each), the gradients
    with respect to the previous states, and a dict of gradients of other
    parameters (summed here over steps). With a projection (cache "W_hr"),
    step_backward gets dL/dm in place of dL/dh and extra gains "W_hr" (dW_hr).
    Returns (dx, dstates0, dW_ih, dW_hh, db_ih, db_hh, dln_ih, dln_hh, extra sums)."""
    G = GATES[cell]
    x, W_ih, W_hh = cache["x"], cache["W_ih"], cache["W_hh"]
    T, B, _ = x.shape
    idx, valid = _time_order(cache["lengths"], T, cache["reverse"])
    batch = np.arange(B)
    dgi_all = np.zeros((T, B, W_ih.shape[0]), dtype=x.dtype)  # dL/d LN(W_ih x), by time position
    dW_hh = np.zeros_like(W_hh)
    dln_hh = np.zeros(W_hh.shape[0], dtype=x.dtype)
    db_hh = np.zeros(W_hh.shape[0], dtype=x.dtype)
    extra = {}
    dstates = dfinal
    h_mask, m_h = cache["h_mask"], cache["zoneout"][0]
    W_hr = cache.get("W_hr")
    if W_hr is not None:
        extra["W_hr"] = np.zeros_like(W_hr)
    for s in reversed(range(T)):
        live = valid[s][:, None]
        d_in = (dstates[0] + dy[idx[s], batch],) + dstates[1:]
        d_in = tuple(d * live for d in d_in)  # padded rows contribute nothing
        if m_h is not None:  # h = m h_prev + (1 - m) h~: the cell sees (1 - m) dh, h_prev gets m dh directly
            direct = m_h[s] * d_in[0]
            d_in = ((1 - m_h[s]) * d_in[0],) + d_in[1:]
        if W_hr is not None:  # h~ = W_hr m: dW_hr += dh~^T m, the cell gets dm = dh~ W_hr
            extra["W_hr"] += d_in[0].T @ cache["m"][s]
            d_in = (d_in[0] @ W_hr,) + d_in[1:]
        da_i, da_h, dprev, ex = step_backward(s, d_in)
        if m_h is not None:
            dprev = (dprev[0] + direct,) + tuple(dprev[1:])
        dgi_all[idx[s][valid[s]], batch[valid[s]]] = da_i[valid[s]]
        dln_hh += np.sum(da_h * cache["xhat_hh"][s], axis=0)
        db_hh += da_h.sum(axis=0)
        dgh_raw = _ln_backward(da_h, cache["xhat_hh"][s], cache["rstd_hh"][s], cache["ln_hh"], G)
        h_prev = cache["h"][s] if h_mask is None else cache["h"][s] * h_mask
        dW_hh += dgh_raw.T @ h_prev
        dh_rec = dgh_raw @ W_hh if h_mask is None else (dgh_raw @ W_hh) * h_mask
        dprev = (dprev[0] + dh_rec,) + tuple(dprev[1:])
        dstates = tuple(np.where(live, new, old) for new, old in zip(dprev, dstates))
        for k, v in ex.items():
            extra[k] = extra.get(k, 0) + v
    # The input side over all positions at once (zero rows at padded positions).
    # (explicit widths: reshape(T * B, -1) fails on an empty batch, B = 0)
    flat = dgi_all.reshape(T * B, dgi_all.shape[-1])
    xhat_ih = cache["xhat_ih"].reshape(T * B, cache["xhat_ih"].shape[-1])
    dln_ih = np.sum(flat * xhat_ih, axis=0)
    db_ih = flat.sum(axis=0)
    dgi_raw = _ln_backward(flat, xhat_ih, cache["rstd_ih"].reshape(T * B, G), cache["ln_ih"], G)
    dW_ih = dgi_raw.T @ x.reshape(T * B, x.shape[-1])
    dx = (dgi_raw @ W_ih).reshape(x.shape)
    if cache["b_ih"] is None:
        db_ih = db_hh = None
    return dx, dstates, dW_ih, dW_hh, db_ih, db_hh, dln_ih, dln_hh, extra


def _check_layernorm_inputs(cell, x, states, W_ih, W_hh, b_ih, b_hh, lengths, ln, h_mask=None, zoneout_h=None,
                            zoneout_c=None, W_hr=None):
    a = check_forward(cell, x, states, W_ih, W_hh, b_ih, b_hh, lengths, h_mask, W_hr, zoneout_h=zoneout_h,
                      zoneout_c=zoneout_c)
    H = a.W_ih.shape[0] // GATES[cell]
    ln = dict(zip(ln, check_layernorm_params(cell, H, a.x.dtype, ln)))
    return a, ln


def layernorm_lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias=None, *,
                           lengths=None, reverse=False, training=True, h_mask=None, zoneout_h=None,
                           zoneout_c=None, W_hr=None):
    """Layer-normalised LSTM forward (equations above).

    x [T, B, I]; h0, c0 [B, H] or None (zeros); W_ih [4H, I]; W_hh [4H, H];
    b_ih, b_hh [4H] or both None (the betas of the two gate layer norms);
    ln_ih, ln_hh [4H] (their gains); ln_c_weight [H], ln_c_bias [H] or None
    (the cell-state layer norm). h_mask [B, H] (recurrent dropout),
    zoneout_h, zoneout_c [T, B, H] (zoneout): optional, see above.
    W_hr [P, H] or None: the output projection (see above); W_hh is then
    [4H, P] and h0, h_mask, zoneout_h, y, h_n are P wide.
    Returns (y [T, B, H or P], h_n, c_n, cache)."""
    a, ln = _check_layernorm_inputs("lstm", x, {"h0": h0, "c0": c0}, W_ih, W_hh, b_ih, b_hh, lengths,
                                    {"ln_ih": ln_ih, "ln_hh": ln_hh, "ln_c_weight": ln_c_weight,
                                     "ln_c_bias": ln_c_bias}, h_mask, zoneout_h, zoneout_c, W_hr)

    def step(gi, gh, states, masks):
        _, c = states
        pre_i, pre_f, pre_g, pre_o = np.split(gi + gh, 4, axis=1)
        i, f, g, o = _sigmoid(pre_i), _sigmoid(pre_f), np.tanh(pre_g), _sigmoid(pre_o)
        c_tilde = f * c + i * g
        c_new = c_tilde if masks[1] is None else masks[1] * c + (1 - masks[1]) * c_tilde
        cn, xhat_c, rstd_c = _ln_forward(c_tilde, ln["ln_c_weight"], ln["ln_c_bias"], 1)  # h~ reads c~
        tanh_c = np.tanh(cn)
        return (o * tanh_c, c_new), {"i": i, "f": f, "g": g, "o": o, "tanh_c": tanh_c,
                                     "xhat_c": xhat_c, "rstd_c": rstd_c}

    y, (h_n, c_n), cache = _layernorm_forward("lstm", step, a.x, a.states, a.W_ih, a.W_hh, a.b_ih, a.b_hh, ln,
                                              a.lengths, reverse, training, a.h_mask,
                                              (a.zoneout_h, a.zoneout_c), a.W_hr)
    return y, h_n, c_n, cache


def layernorm_lstm_backward(cache, dy=None, dh_n=None, dc_n=None):
    """Layer-normalised LSTM backward. Returns (dx, dh0, dc0, dW_ih, dW_hh,
    db_ih, db_hh, dln_ih, dln_hh, dln_c_weight, dln_c_bias) [+ dW_hr with a
    projection]; the bias gradients are None where the forward had no such bias."""
    dy, dfinal = _check_layernorm_backward("lstm", cache, dy, {"dh_n": dh_n, "dc_n": dc_n})

    def step_backward(s, dstates):
        dh, dc = dstates
        i, f, g, o = (cache[k][s] for k in ("i", "f", "g", "o"))
        tanh_c, xhat_c, c_prev = cache["tanh_c"][s], cache["xhat_c"][s], cache["c"][s]
        do = dh * tanh_c
        dcn = dh * o * (1.0 - tanh_c * tanh_c)  # dL/d LN_1(c~)
        m_c = cache["zoneout"][1]
        dc_direct = 0.0 if m_c is None else m_c[s] * dc  # c' = m c + (1 - m) c~: dL/dc' splits
        if m_c is not None:
            dc = (1 - m_c[s]) * dc
        dc = dc + _ln_backward(dcn, xhat_c, cache["rstd_c"][s], cache["ln_c_weight"], 1)  # dL/dc~
        da = np.concatenate([
            dc * g * i * (1.0 - i),       # input gate
            dc * c_prev * f * (1.0 - f),  # forget gate
            dc * i * (1.0 - g * g),       # cell candidate
            do * o * (1.0 - o),           # output gate
        ], axis=1)
        extra = {"ln_c_weight": np.sum(dcn * xhat_c, axis=0), "ln_c_bias": dcn.sum(axis=0)}
        return da, da, (0.0, dc * f + dc_direct), extra

    dx, (dh0, dc0), dW_ih, dW_hh, db_ih, db_hh, dln_ih, dln_hh, extra = _layernorm_backward(
        "lstm", step_backward, cache, dy, dfinal)
    dln_c_bias = None if cache["ln_c_bias"] is None else extra["ln_c_bias"]
    out = (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dln_ih, dln_hh, extra["ln_c_weight"], dln_c_bias)
    return out + ((extra["W_hr"],) if cache["W_hr"] is not None else ())


def layernorm_gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, *, lengths=None, reverse=False,
                          training=True, h_mask=None, zoneout_h=None):
    """Layer-normalised GRU forward (reset-after; equations above).

    x [T, B, I]; h0 [B, H] or None; W_ih [3H, I]; W_hh [3H, H]; b_ih, b_hh
    [3H] or both None (betas); ln_ih, ln_hh [3H] (gains). h_mask [B, H]
    (recurrent dropout; z * h keeps the unmasked h), zoneout_h [T, B, H]:
    optional, see above. Returns (y [T, B, H], h_n, cache)."""
    a, ln = _check_layernorm_inputs("gru", x, {"h0": h0}, W_ih, W_hh, b_ih, b_hh, lengths,
                                    {"ln_ih": ln_ih, "ln_hh": ln_hh}, h_mask, zoneout_h)
    H = a.W_hh.shape[1]

    def step(gi, gh, states, masks):
        (h,) = states
        r, z = np.split(_sigmoid(gi[:, :2 * H] + gh[:, :2 * H]), 2, axis=1)
        ghn = gh[:, 2 * H:]
        n = np.tanh(gi[:, 2 * H:] + r * ghn)
        return (n + z * (h - n),), {"r": r, "z": z, "n": n, "ghn": ghn}

    y, (h_n,), cache = _layernorm_forward("gru", step, a.x, a.states, a.W_ih, a.W_hh, a.b_ih, a.b_hh, ln,
                                          a.lengths, reverse, training, a.h_mask, (a.zoneout_h,))
    return y, h_n, cache


def layernorm_gru_backward(cache, dy=None, dh_n=None):
    """Layer-normalised GRU backward. Returns (dx, dh0, dW_ih, dW_hh, db_ih,
    db_hh, dln_ih, dln_hh); the bias gradients are None without biases."""
    dy, dfinal = _check_layernorm_backward("gru", cache, dy, {"dh_n": dh_n})

    def step_backward(s, dstates):
        (dh,) = dstates
        r, z, n, ghn = (cache[k][s] for k in ("r", "z", "n", "ghn"))
        h = cache["h"][s]
        dn_pre = dh * (1.0 - z) * (1.0 - n * n)
        dz_pre = dh * (h - n) * z * (1.0 - z)
        dr_pre = dn_pre * ghn * r * (1.0 - r)
        da_i = np.concatenate([dr_pre, dz_pre, dn_pre], axis=1)
        da_h = np.concatenate([dr_pre, dz_pre, dn_pre * r], axis=1)
        return da_i, da_h, (dh * z,), {}

    dx, (dh0,), dW_ih, dW_hh, db_ih, db_hh, dln_ih, dln_hh, _ = _layernorm_backward(
        "gru", step_backward, cache, dy, dfinal)
    return dx, dh0, dW_ih, dW_hh, db_ih, db_hh, dln_ih, dln_hh


def _check_layernorm_backward(cell, cache, dy, dfinal):
    name = f"layernorm_{cell}"
    if cache is None:
        raise ValueError(f"{name}_backward needs the cache of {name}_forward(..., training=True), got None")
    if not isinstance(cache, dict) or cache.get("cell") != cell or not cache.get("layernorm"):
        origin = type(cache).__name__ if not isinstance(cache, dict) else (
            f"layernorm_{cache.get('cell')}" if cache.get("layernorm") else cache.get("cell"))
        raise ValueError(f"{name}_backward needs a cache from {name}_forward, got one from {origin!r}")
    T, B, _ = cache["x"].shape
    H, Ho = cache["W_ih"].shape[0] // GATES[cell], cache["W_hh"].shape[1]
    h_layout = "P" if cache.get("W_hr") is not None else "H"
    expected = {"dy": ((T, B, Ho), f"(T, B, {h_layout})"), "dh_n": ((B, Ho), f"(B, {h_layout})"),
                "dc_n": ((B, H), "(B, H)")}
    dy, *final = check_grads(cache["x"].dtype, expected, {"dy": dy, **dfinal}, zeros=True)
    return dy, tuple(final)
