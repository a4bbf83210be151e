"""Gradients through time: dL/dh_t at every step, from pyrnn's own BPTT.

:func:`hidden_state_grads` runs a layer's forward and backward through the C++
kernels (:mod:`pyrnn.functional`) and asks backward for the total gradient
reaching every hidden state (``return_dh_seq=True``): the quantity whose
vanishing or explosion Bengio et al. (1994) and Pascanu et al. (2013) analyse.
Nothing is re-derived in Python; this module only chains the layers and
directions, as ``layer.backward`` does::

    rnn = pyrnn.RNN(1, 128)
    x = np.random.default_rng(0).standard_normal((200, 16, 1)).astype(np.float32)
    dh_T = np.ones((1, 16, 128), np.float32)            # loss = sum(h_T)
    norms = pyrnn.diagnostics.hidden_grad_norms(rnn, x, dh_n=dh_T)   # [1, 200]
    print(norms[0, 0] / norms[0, -1])                     # ||dL/dh_1|| / ||dL/dh_T||

For an LSTM, h_t is the hidden (output) state; the cell state's gradient is
not reported.
"""

from __future__ import annotations

import numpy as np

from . import _stack
from . import functional as F
from ._validation import array_like, check_lengths, layer_input, layer_states

__all__ = ["hidden_state_grads", "hidden_grad_norms", "step_norms"]


def hidden_state_grads(layer, x, hx=None, *, dy=None, dh_n=None, dc_n=None, lengths=None):
    """dL/dh_t for every step, layer and direction of a pyrnn ``RNN``, ``LSTM`` or ``GRU``.

    The loss is defined by its gradients, given as for ``layer.backward``:
    ``dy`` (the output's shape; a loss on the outputs) and ``dh_n`` / ``dc_n``
    (the final states' shapes; a loss on the last step). Any may be None (zero).
    ``x``, ``hx`` and ``lengths`` are as for ``layer(x, hx, lengths)``; the
    layers and directions run as in the layer (pyrnn._stack), each through
    ``layer.run_direction``.

    The forward runs without dropout (as in eval mode) and the layer is left
    untouched (its ``grads`` and saved state are not changed).

    Returns an array ``[num_layers * num_directions, T, B, H_out]``, time-major
    whatever ``batch_first`` is (``[L * D, T, H_out]`` for unbatched input):
    entry ``[k, t]`` is the total gradient of the loss reaching the hidden state
    that layer/direction k produces at input step t (so, for the reverse
    direction, after reading x_t .. x_T), as computed by the kernels' BPTT.
    """
    from .layers import _RNNBase

    if not isinstance(layer, _RNNBase):
        raise TypeError(f"hidden_state_grads needs a pyrnn RNN, LSTM or GRU layer, got {type(layer).__name__}")
    if layer.precision != "same":
        raise TypeError(f"hidden_state_grads needs a layer with float weights (gradients), got a layer frozen "
                        f"with precision={layer.precision!r}: pass the layer it was frozen from")
    mode = layer.mode
    x, unbatched = layer_input(layer, x)
    T, B, _ = x.shape
    if lengths is not None:
        lengths = check_lengths(lengths, T, B)
    h0_all, c0_all = layer_states(layer, hx, B, unbatched)
    dtype, L, D = layer.dtype, layer.num_layers, layer.num_directions
    Ho, H = layer.proj_size or layer.hidden_size, layer.hidden_size
    st_shape = (L * D, B, Ho)

    def batched(name, a, shape):
        if a is None:
            return None
        if unbatched:
            return array_like(name, a, dtype, shape[:1] + shape[2:])[:, None, :]
        if name == "dy" and layer.batch_first:
            return array_like(name, a, dtype, (B, T, shape[2])).transpose(1, 0, 2)
        return array_like(name, a, dtype, shape)

    dy = batched("dy", dy, (T, B, D * Ho))
    dh_n = batched("dh_n", dh_n, st_shape)
    if mode != "LSTM" and dc_n is not None:
        raise ValueError(f"dc_n is only used by the LSTM, got dc_n for a {mode}")
    dc_n = batched("dc_n", dc_n, st_shape[:2] + (H,))

    def run(ell, d, layer_x):
        k = ell * D + d
        return layer.run_direction(ell, d, layer_x, None if h0_all is None else h0_all[k],
                                   None if c0_all is None else c0_all[k], lengths=lengths)

    _, results = _stack.forward(run, x, L, D)
    dh = np.empty((L * D, T, B, Ho), dtype=dtype)

    def run_back(ell, d, dy_d):
        k = ell * D + d
        g = F.backward(results[k][3], dy_d, None if dh_n is None else dh_n[k], None if dc_n is None else dc_n[k],
                       return_dh_seq=True)
        dh[k] = g["dh_seq"]
        return g["x"]

    _stack.backward(run_back, dy, L, D, Ho)
    return dh[:, :, 0] if unbatched else dh


def step_norms(dh, reduce="mean"):
    """Per-step norms of ``dh`` [..., T, B, H]: ||dh[..., t, b, :]||, then over the batch

    ``reduce="mean"`` (the mean of the per-sequence norms, [..., T]), ``"norm"`` (the
    norm over batch and units together, [..., T]) or ``"none"`` ([..., T, B]).
    """
    a = np.asarray(dh)
    if a.dtype.kind not in "fiu":  # (complex lost its imaginary part, strings were parsed)
        raise TypeError(f"dh must be a real-valued array, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if a.ndim < 3:
        raise ValueError(f"dh must have shape [..., T, B, H] (at least 3-D), got shape {a.shape}")
    n = np.linalg.norm(a, axis=-1)
    if reduce == "none":
        return n
    if reduce == "mean":
        if a.shape[-2] == 0:  # (the mean of no norms: NaN and a RuntimeWarning)
            raise ValueError(f"reduce='mean' needs a batch of at least one sequence, got B = 0 (shape {a.shape})")
        return n.mean(axis=-1)
    if reduce == "norm":
        return np.sqrt(np.sum(n * n, axis=-1))
    raise ValueError(f"reduce must be 'mean', 'norm' or 'none', got {reduce!r}")


def hidden_grad_norms(layer, x, hx=None, *, dy=None, dh_n=None, dc_n=None, lengths=None, reduce="mean"):
    """||dL/dh_t|| for every step: ``step_norms(hidden_state_grads(...), reduce)``.

    Returns ``[num_layers * num_directions, T]`` (``reduce="mean"``: the mean over
    the batch of each sequence's norm). Unbatched input gives the same shape.
    """
    dh = hidden_state_grads(layer, x, hx, dy=dy, dh_n=dh_n, dc_n=dc_n, lengths=lengths)
    if dh.ndim == 3:
        dh = dh[:, :, None, :]
    return step_norms(dh, reduce)
