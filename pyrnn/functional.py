"""Stateless calls into pyrnn's C++ kernels: one layer, one direction.

Each per-cell function mirrors :mod:`pyrnn.reference`'s of the same name in
its core arguments, so code (and tests) can switch between the NumPy oracle
and the kernels by swapping the module. The differences: the training forward
returns a :class:`pyrnn._core.Workspace` instead of a dict; the kernels take
``packed=`` (the reference ``precision=``), and ``h_mask=`` / ``W_hr=`` for the
plain cells, which the reference lacks; ``forward``, ``backward``,
``pack_weights`` and the ``residual_*`` helpers are the kernels' only; backward accepts
``return_dh_seq=True`` to also return dL/dh_t for every step ([T, B, H], the
total gradient reaching each hidden state; see :mod:`pyrnn.diagnostics`).

The workspace keeps references to the forward's inputs, weights and output
``y``; do not modify them in place before calling backward.

Inputs may be any float32/float64 arrays of one dtype; non-contiguous ones are
copied. The kernels release the GIL and use ``pyrnn.get_num_threads()``
threads; results are bitwise identical for any thread count.
"""

from __future__ import annotations

import functools
import numbers
import operator

import numpy as np

from . import _core
from ._cells import BY_KIND, GATES, cell_spec
from ._validation import (PHYSICAL_MEMORY, check_bool, check_dtype, check_forward, check_grads, check_layernorm_params,
                          check_precision, check_reduced_weights)

__all__ = [
    "forward",
    "backward",
    "pack_weights",
    "residual_nbytes",
    "residual_nbytes_for",
    "workspace_from_residual",
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
]

def _c(a):
    return None if a is None else np.ascontiguousarray(a)




def _check_memory(cell, x, W_hh, W_hr, lengths, training):
    """MemoryError before any allocation when a call's outputs and workspace
    would exceed this machine's physical memory (such an allocation may
    succeed under overcommit and the process then be killed when it touches
    the pages). The kernels' largest buffers: y [T,B,Ho], the input
    projection [rows, G*H] and, for training, the saved gates [rows, <=4H]
    and two more [rows, H]; plus packed weights."""
    T, B, _ = x.shape
    G, H = GATES[cell], W_hh.shape[0] // GATES[cell]
    Ho = W_hh.shape[1]
    rows = T * B if lengths is None else int(np.sum(lengths, dtype=np.int64))
    Hp = H + 16
    elements = T * B * Ho + rows * G * Hp + G * Hp * (Ho + 16) + (rows * (4 + 2) * Hp if training else 0)
    if W_hr is not None:
        elements += rows * Hp
    need = elements * x.dtype.itemsize
    have = PHYSICAL_MEMORY
    if have is not None and need > have:
        raise MemoryError(f"this call needs about {need / 2**30:.1f} GiB for its outputs and workspace "
                          f"(T={T}, B={B}, H={H}), more than this machine's {have / 2**30:.1f} GiB; "
                          f"got x of shape {x.shape}")


def _call_arrays(spec, x, states, W_ih, W_hh, b_ih, b_hh, lengths, h_mask, W_hr, zoneout=(None, None),
                 training=None):
    """The checked, contiguous arrays of a sequence call, in _core's order (cell kind first). With
    ``training`` given (a call to run, not a size to compute), the memory check runs before the copies:
    a non-contiguous view (np.broadcast_to of a huge shape) was copied whole before being refused."""
    a = check_forward(spec.family, x, states, W_ih, W_hh, b_ih, b_hh, lengths, h_mask, W_hr, *zoneout)
    if training is not None:
        _check_memory(spec.family, a.x, a.W_hh, a.W_hr, None if lengths is None else a.lengths, training)
    # Omitted states are zeros inside the kernel; no need to pass arrays of them.
    h0 = a.states[0] if states["h0"] is not None else None
    c0 = a.states[1] if spec.has_cell_state and states["c0"] is not None else None
    lengths64 = None if lengths is None else np.ascontiguousarray(a.lengths, dtype=np.int64)
    return a, (spec.kind, _c(a.x), _c(h0), _c(c0), _c(a.W_ih), _c(a.W_hh), _c(a.b_ih), _c(a.b_hh), lengths64)


def _options(spec, a, leak):
    """_core's keyword options of a call: the leak (rnn_leaky) and the zoneout masks, only those given
    (a keyword argument costs a _core call ~3 us of pybind11's lookups: a fifth of a small step)."""
    opts = {"leak": leak} if leak is not None and spec.name == "rnn_leaky" else {}
    if a.zoneout_h is not None:
        opts["zoneout_h"] = _c(a.zoneout_h)
    if a.zoneout_c is not None:
        opts["zoneout_c"] = _c(a.zoneout_c)
    return opts


def _forward(spec, x, states, W_ih, W_hh, b_ih, b_hh, lengths, reverse, training, h_mask=None, W_hr=None,
             packed=None, residual=None, leak=None, zoneout=(None, None)):
    a, args = _call_arrays(spec, x, states, W_ih, W_hh, b_ih, b_hh, lengths, h_mask, W_hr, zoneout, training)
    opts = _options(spec, a, leak)
    if training and a.zoneout_h is not None and spec.name in ("rnn_tanh", "rnn_relu"):
        _check_binary_zoneout(a.zoneout_h)
    if packed is not None and not isinstance(packed, _core.PackedRecurrence):
        raise TypeError(f"packed must be the result of pyrnn.functional.pack_weights, got {type(packed).__name__}")
    if packed is not None and packed.cell != spec.kind:
        raise ValueError(f"packed holds weights of a {BY_KIND[packed.cell].name} cell, not {spec.name}")
    if packed is not None and training and packed.precision != "same":
        raise ValueError(f"packed holds {packed.precision} weights, which are for inference: pass training=False")
    if residual is not None:
        if not training or packed is not None:
            raise ValueError("residual holds a training workspace: pass training=True and no packed weights")
        # (its size is checked by the kernel: a block sized at a lower ISA level, where a graph was
        # traced, runs at the highest level it fits; smaller than every level's: ValueError)
        _check_residual(residual, 0)
        inputs = [v for v in (*args[1:], _c(a.W_hr), _c(a.h_mask), *opts.values()) if isinstance(v, np.ndarray)]
        if any(np.may_share_memory(residual, v) for v in inputs):  # (the forward overwrote them as it went)
            raise ValueError("residual must not overlap the call's inputs (x, states, weights, masks, lengths)")
    return _core.sequence_forward(*args, check_bool("reverse", reverse), check_bool("training", training),
                                  _c(a.W_hr), _c(a.h_mask), packed, residual,
                                  **opts)


def _check_binary_zoneout(mask):
    """The plain RNN's backward derives its nonlinearity's slope from h_t, which is h~_t only where the
    mask is 0 (and unused where it is 1): other mixing weights need the leaky cell or inference."""
    if np.any((mask != 0) & (mask != 1)):
        raise ValueError("zoneout_h of a training forward of the plain RNN must hold only 0 and 1 (zoneout's "
                         "Bernoulli masks); other mixing weights work in inference (training=False) and for the "
                         "LSTM, GRU and leaky RNN")


def _check_residual(residual, need=None):
    """need: the bytes a forward writes (which needs a writable block); None: backward's read."""
    if not isinstance(residual, np.ndarray):
        raise TypeError(f"residual must be a NumPy array (e.g. np.empty(nbytes, np.uint8)), got "
                        f"{type(residual).__name__}")
    if not residual.flags.c_contiguous or (need is not None and not residual.flags.writeable):
        raise ValueError("residual must be a C-contiguous array (writable for the forward)")
    if need is not None and residual.nbytes < need:
        raise ValueError(f"residual must hold at least {need} bytes (residual_nbytes) for this call, got "
                         f"{residual.nbytes}")


def _backward(cell, ws, grads, return_dh_seq, input_grad=True):
    if ws is None:
        raise ValueError(f"{cell}_backward needs the workspace of {cell}_forward(..., training=True), got None")
    if not isinstance(ws, _core.Workspace):
        raise TypeError(f"{cell}_backward needs a pyrnn workspace from {cell}_forward, got {type(ws).__name__}")
    family = BY_KIND[ws.cell].family
    if family != cell:
        raise ValueError(f"{cell}_backward needs a workspace from {cell}_forward, got one from {family}_forward")
    T, B, _, H = ws.shape
    Ho = ws.proj_size or H  # width of h (and y): P with a projection
    h_layout = "P" if ws.proj_size else "H"
    expected = {"dy": ((T, B, Ho), f"(T, B, {h_layout})"), "dh_n": ((B, Ho), f"(B, {h_layout})"),
                "dc_n": ((B, H), "(B, H)")}
    dy, dh_n, *dc_n = (_c(g) for g in check_grads(ws.dtype, expected, grads))
    # input_grad=False: dx is not computed (None), for an input that needs no gradient (data fed to a
    # first layer): a quarter of the backward's FLOPs at I = H
    return _core.sequence_backward(ws, dy, dh_n, dc_n[0] if dc_n else None,
                                   check_bool("return_dh_seq", return_dh_seq), None,
                                   check_bool("input_grad", input_grad))


def rnn_forward(x, h0, W_ih, W_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", lengths=None, reverse=False,
                training=True, h_mask=None, packed=None, leak=None, zoneout_h=None):
    """Elman RNN forward. Returns (y, h_n, workspace); workspace is None unless training.

    h_mask ([B, H], optional): recurrent (variational) dropout; the recurrent
    product uses h_{t-1} * h_mask at every step. packed: see :func:`pack_weights`.
    leak (tanh only, in (0, 1]): the leaky integrator of echo state networks,
    h_t = (1 - leak) h_{t-1} + leak tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).
    zoneout_h ([T, B, H], optional): zoneout, h_t = m h_{t-1} + (1 - m) h~_t
    with m = zoneout_h[t] (the mask of the step that consumes x[t]).
    """
    spec = cell_spec("rnn", nonlinearity=nonlinearity, leak=leak)
    y, h_n, _, ws = _forward(spec, x, {"h0": h0}, W_ih, W_hh, b_ih, b_hh, lengths, reverse, training, h_mask,
                             packed=packed, leak=leak, zoneout=(zoneout_h, None))
    return y, h_n, ws


def rnn_backward(ws, dy=None, dh_n=None, *, return_dh_seq=False, input_grad=True):
    """Returns (dx, dh0, dW_ih, dW_hh, db_ih, db_hh) [+ dh_seq]; dx is None with
    input_grad=False (not computed: an input that needs no gradient); db_* are None without bias."""
    dx, dh0, _, dW_ih, dW_hh, db_ih, db_hh, dh_seq, _ = _backward("rnn", ws, {"dy": dy, "dh_n": dh_n}, return_dh_seq,
                                                                input_grad)
    out = (dx, dh0, dW_ih, dW_hh, db_ih, db_hh)
    return out + (dh_seq,) if return_dh_seq else out


def lstm_forward(x, h0, c0, W_ih, W_hh, b_ih=None, b_hh=None, *, lengths=None, reverse=False, training=True,
                 h_mask=None, W_hr=None, packed=None, zoneout_h=None, zoneout_c=None):
    """LSTM forward (gates i, f, g, o). Returns (y, h_n, c_n, workspace).

    W_hr ([P, H], optional): PyTorch's proj_size; h_t = W_hr (o * tanh(c~_t)) is
    P wide, W_hh is [4H, P] and y, h0, h_n are P wide. h_mask ([B, P or H],
    optional): recurrent (variational) dropout on h_{t-1}. packed: see :func:`pack_weights`.
    zoneout_c ([T, B, H]) and zoneout_h ([T, B, P or H]), optional: zoneout,
    c_t = m c_{t-1} + (1 - m) c~_t with h~_t = o * tanh(c~_t) from the un-zoned c~_t
    (Krueger et al. 2016),
    then h_t = m' h_{t-1} + (1 - m') h~_t (masks of the step that consumes x[t]).
    """
    return _forward(cell_spec("lstm"), x, {"h0": h0, "c0": c0}, W_ih, W_hh, b_ih, b_hh, lengths,
                    reverse, training, h_mask, W_hr, packed, zoneout=(zoneout_h, zoneout_c))


def lstm_backward(ws, dy=None, dh_n=None, dc_n=None, *, return_dh_seq=False, input_grad=True):
    """Returns (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh) [+ dW_hr with a projection] [+ dh_seq]; dx is
    None with input_grad=False (not computed: an input that needs no gradient)."""
    dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dh_seq, dW_hr = _backward(
        "lstm", ws, {"dy": dy, "dh_n": dh_n, "dc_n": dc_n}, return_dh_seq, input_grad)
    out = (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh) + ((dW_hr,) if ws.proj_size else ())
    return out + (dh_seq,) if return_dh_seq else out


def gru_forward(x, h0, W_ih, W_hh, b_ih=None, b_hh=None, *, reset_after=True, lengths=None, reverse=False,
                training=True, h_mask=None, packed=None, zoneout_h=None):
    """GRU forward (gates r, z, n); reset_after=False is Cho et al. v3. Returns (y, h_n, workspace).

    h_mask ([B, H], optional): recurrent (variational) dropout: the recurrent
    products use h_{t-1} * h_mask (z * h_{t-1} keeps the unmasked state). packed: see :func:`pack_weights`.
    zoneout_h ([T, B, H], optional): zoneout, as :func:`rnn_forward`.
    """
    y, h_n, _, ws = _forward(cell_spec("gru", reset_after=reset_after), x, {"h0": h0}, W_ih, W_hh, b_ih, b_hh,
                             lengths, reverse, training, h_mask, packed=packed, zoneout=(zoneout_h, None))
    return y, h_n, ws


def gru_backward(ws, dy=None, dh_n=None, *, return_dh_seq=False, input_grad=True):
    """Returns (dx, dh0, dW_ih, dW_hh, db_ih, db_hh) [+ dh_seq]; dx is None with
    input_grad=False (not computed: an input that needs no gradient)."""
    dx, dh0, _, dW_ih, dW_hh, db_ih, db_hh, dh_seq, _ = _backward("gru", ws, {"dy": dy, "dh_n": dh_n}, return_dh_seq,
                                                                input_grad)
    out = (dx, dh0, dW_ih, dW_hh, db_ih, db_hh)
    return out + (dh_seq,) if return_dh_seq else out


def pack_weights(cell, W_ih, W_hh, W_hr=None, *, nonlinearity="tanh", reset_after=True, precision=None,
                 leak=None):
    """The weights W_ih, W_hh (and W_hr with a projection) packed once into the
    kernels' layout, for many :func:`forward` calls with ``packed=`` (inference of
    a layer whose weights do not change: each call then skips packing them).

    The result is a copy: calls with ``packed`` compute with these weights as they
    were here, whatever the arrays passed to the call hold (only their shapes and
    dtype are checked against it), so pass it only with the very W_ih, W_hh and
    W_hr it was made from, unchanged since. The biases are read from each call.
    ``layer.freeze()`` does this safely (read-only copies).

    ``precision`` (float32 weights, inference only): "int8" stores W_ih, W_hh
    (and W_hr) as int8 with a scale per row and quantises the activations
    they multiply (x, h) per row at each call and step, summing in int32, as
    torch's ``quantize_dynamic`` does; "bf16" stores them as bfloat16 and
    multiplies fp32 activations with fp32 sums. Biases and the gates' math
    stay float32. :func:`pyrnn.reference.lstm_forward` (``precision=``) gives
    the same arithmetic in NumPy. None or "same": the weights' own dtype.
    """
    spec = cell_spec(cell, nonlinearity=nonlinearity, reset_after=reset_after, leak=leak)
    W_ih = np.asarray(W_ih)
    if W_ih.dtype not in (np.float32, np.float64):
        raise TypeError(f"W_ih must have dtype float32 or float64, got {W_ih.dtype}")
    for name, w in (("W_hh", W_hh), ("W_hr", W_hr)):
        if w is not None and np.asarray(w).dtype != W_ih.dtype:
            raise TypeError(f"all weights must have one dtype, got W_ih={W_ih.dtype}, {name}={np.asarray(w).dtype}")
    if W_ih.ndim != 2 or W_ih.shape[1] < 1:  # (before the stand-in x below takes its input size from it)
        raise ValueError(f"W_ih must have shape ({spec.gates}*H, I) with I >= 1 for {spec.family}, got {W_ih.shape}")
    # (the checks of a forward, on a stand-in x of W_ih's dtype and input size)
    stand_in = np.broadcast_to(np.zeros((), W_ih.dtype), (1, 1, W_ih.shape[1]))
    a = check_forward(spec.family, stand_in, {"h0": None}, W_ih, W_hh, None, None, None, W_hr=W_hr)
    name = check_precision(precision, a.W_ih.dtype)
    check_reduced_weights(name, {"W_ih": a.W_ih, "W_hh": a.W_hh, "W_hr": a.W_hr})
    return _core.PackedRecurrence(spec.kind, _c(a.W_ih), _c(a.W_hh), _c(a.W_hr), precision=name)


def forward(cell, x, h0, c0, W_ih, W_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", reset_after=True,
            W_hr=None, h_mask=None, lengths=None, reverse=False, training=True, packed=None, residual=None,
            leak=None, zoneout_h=None, zoneout_c=None):
    """Any cell by name: "rnn", "lstm" or "gru". Returns (y, h_n, c_n, workspace), c_n None but for the LSTM.

    For adapters that handle the three cells alike; c0, W_hr and zoneout_c must be None unless cell == "lstm",
    leak unless cell == "rnn" (see :func:`rnn_forward`, :func:`lstm_forward` for leak and zoneout).
    ``packed``: :func:`pack_weights` of these W_hh (and W_hr), or None (packed in the call).
    ``residual``: with training=True, a writable C-contiguous array of at least
    :func:`residual_nbytes` bytes that receives the training workspace (the
    returned workspace views it), so a framework can keep it as a tensor
    between its forward and backward ops and rebuild the workspace with
    :func:`workspace_from_residual`; None: pyrnn allocates it.
    """
    spec = _spec_of_call(cell, nonlinearity, reset_after, leak, c0, W_hr)
    states = {"h0": h0, "c0": c0} if spec.has_cell_state else {"h0": h0}
    return _forward(spec, x, states, W_ih, W_hh, b_ih, b_hh, lengths, reverse, training, h_mask, W_hr, packed,
                    residual, leak, (zoneout_h, zoneout_c))


def _spec_of_call(cell, nonlinearity, reset_after, leak, c0, W_hr):
    if leak is not None and cell != "rnn":
        raise ValueError(f"leak is only used by the RNN (cell='rnn'), got leak for cell {cell!r}")
    spec = cell_spec(cell, nonlinearity=nonlinearity, reset_after=reset_after, leak=leak)
    if not spec.has_cell_state and (c0 is not None or W_hr is not None):
        raise ValueError(f"c0 and W_hr are only used by the LSTM, got "
                         f"{'c0' if c0 is not None else 'W_hr'} for cell {cell!r}")
    return spec


def _residual_call(cell, x, h0, c0, W_ih, W_hh, b_ih, b_hh, nonlinearity, reset_after, W_hr, h_mask, lengths,
                   reverse, leak, zoneout):
    spec = _spec_of_call(cell, nonlinearity, reset_after, leak, c0, W_hr)
    states = {"h0": h0, "c0": c0} if spec.has_cell_state else {"h0": h0}
    a, args = _call_arrays(spec, x, states, W_ih, W_hh, b_ih, b_hh, lengths, h_mask, W_hr, zoneout)
    return a, (*args, check_bool("reverse", reverse), _c(a.W_hr), _c(a.h_mask)), _options(spec, a, leak)


def residual_nbytes(cell, x, h0, c0, W_ih, W_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", reset_after=True,
                    W_hr=None, h_mask=None, lengths=None, reverse=False, leak=None, zoneout_h=None, zoneout_c=None):
    """Bytes of the ``residual`` block a training :func:`forward` with these arguments needs.

    Only shapes, dtypes and which optional arrays are given count (arrays of
    zeros or ``np.broadcast_to`` stand-ins will do), so a framework can size
    the block before it has the values. Depends on the selected ISA level.
    """
    spec = _spec_of_call(cell, nonlinearity, reset_after, leak, c0, W_hr)
    states = {"h0": h0, "c0": c0} if spec.has_cell_state else {"h0": h0}
    # (checked but not copied: a stand-in may be a broadcast view of a block larger than memory)
    a = check_forward(spec.family, x, states, W_ih, W_hh, b_ih, b_hh, lengths, h_mask, W_hr, zoneout_h, zoneout_c)
    check_bool("reverse", reverse)
    T, B, _ = a.x.shape
    H = a.W_hh.shape[0] // spec.gates
    strides = _residual_strides(spec, H, 0 if a.W_hr is None else a.W_hr.shape[0], a.x.dtype, a.b_ih is not None,
                                h0 is not None, spec.has_cell_state and c0 is not None, a.h_mask is not None,
                                lengths is not None, _core.isa_selected())
    return _residual_total(strides, T, B)


def _residual_total(strides, T, B):
    """The block's bytes for T steps and B entries from _core.residual_strides (T, B may be symbolic)."""
    header, per_row, per_entry, esize = strides

    def align(n):  # each part starts on 64 bytes
        return (n * esize + 63) // 64 * 64

    total = header + align(B * per_entry)
    for n in per_row:
        total = total + align(T * B * n)
    return total


def residual_nbytes_for(cell, T, B, I, H, *, proj_size=0, dtype=np.float32, bias=True, h0=True, c0=True,
                        h_mask=False, lengths=False, nonlinearity="tanh", reset_after=True, leak=None):
    """:func:`residual_nbytes` from sizes alone; T and B may be symbolic (e.g. torch SymInts, which
    support ``*``, ``+`` and ``//``), for frameworks that size the block while tracing. (Zoneout
    masks do not change the size.)"""
    spec = cell_spec(cell, nonlinearity=nonlinearity, reset_after=reset_after, leak=leak)
    for name, n, least in (("T", T, 1), ("B", B, 0), ("I", I, 1), ("H", H, 1), ("proj_size", proj_size, 0)):
        # (ints or symbolic sizes: T and B pass as they are, the others are read as ints)
        try:
            ok = not isinstance(n, (bool, np.bool_, float, np.floating, str)) and (
                not isinstance(n, numbers.Integral) or n >= least)
            if ok and name in ("I", "H", "proj_size"):
                ok = operator.index(n) >= least
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"{name} must be an int >= {least}, got {type(n).__name__} {n!r}")
    flags = [check_bool(name, v) for name, v in (("bias", bias), ("h0", h0), ("c0", c0), ("h_mask", h_mask),
                                                 ("lengths", lengths))]
    strides = _residual_strides(spec, int(H), int(proj_size), np.dtype(check_dtype(dtype)), *flags,
                                _core.isa_selected())
    return _residual_total(strides, T, B)


@functools.lru_cache(maxsize=256)
def _residual_strides(spec, H, P, dtype, bias, h0, c0, h_mask, lengths, isa):
    """_core.residual_strides for these sizes (they depend on neither T, B nor I, and the ISA
    level is part of the key): computed once, since frameworks size a block on every call."""
    G, Ho = spec.gates, P or H
    z = lambda *shape: np.zeros(shape, dtype)  # noqa: E731 (small stand-ins: I = T = B = 1)
    return _core.residual_strides(spec.kind, z(1, 1, 1), z(1, Ho) if h0 else None,
                                  z(1, H) if c0 and spec.has_cell_state else None, z(G * H, 1), z(G * H, Ho),
                                  z(G * H) if bias else None, z(G * H) if bias else None,
                                  np.ones(1, np.int64) if lengths else None, False, z(P, H) if P else None,
                                  z(1, Ho) if h_mask else None)


def workspace_from_residual(residual, cell, x, h0, c0, W_ih, W_hh, b_ih=None, b_hh=None, *, y, nonlinearity="tanh",
                            reset_after=True, W_hr=None, h_mask=None, lengths=None, reverse=False, leak=None,
                            zoneout_h=None, zoneout_c=None):
    """The workspace of ``forward(..., training=True, residual=residual)`` again, for :func:`backward`.

    Pass the same arguments as that forward and its output ``y``; raises
    ValueError when ``residual`` was not written by such a forward (another
    cell, shape, dtype or options, or the ISA level changed in between).
    """
    _check_residual(residual)
    a, args, opts = _residual_call(cell, x, h0, c0, W_ih, W_hh, b_ih, b_hh, nonlinearity, reset_after, W_hr, h_mask,
                                   lengths, reverse, leak, (zoneout_h, zoneout_c))
    T, B = a.x.shape[:2]
    Ho = a.W_hh.shape[1]
    y = np.asarray(y)
    if y.shape != (T, B, Ho) or y.dtype != a.x.dtype:
        raise ValueError(f"y must be the forward's output, of shape {(T, B, Ho)} and dtype {a.x.dtype}, got "
                         f"{y.shape} {y.dtype}")
    return _core.workspace_from_residual(residual, *args, _c(y), **opts)


def backward(ws, dy=None, dh_n=None, dc_n=None, *, return_dh_seq=False, input_grad=True):
    """Backward of :func:`forward`, any cell (read from the workspace).

    Returns a dict with "x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh", "W_hr"
    (None where the forward had no such input) and, with return_dh_seq=True,
    "dh_seq" ([T, B, H_out]: dL/dh_t for every step). input_grad=False: "x" is
    None, not computed (an input that needs no gradient; the other gradients
    are bitwise the same).
    """
    if not isinstance(ws, _core.Workspace):
        raise TypeError(f"backward needs a workspace from a training-mode forward, got {type(ws).__name__}")
    cell = BY_KIND[ws.cell].family
    if cell != "lstm" and dc_n is not None:
        raise ValueError(f"dc_n is only used by the LSTM, got dc_n for a {cell} workspace")
    grads = {"dy": dy, "dh_n": dh_n} if cell != "lstm" else {"dy": dy, "dh_n": dh_n, "dc_n": dc_n}
    dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dh_seq, dW_hr = _backward(cell, ws, grads, return_dh_seq, input_grad)
    out = {"x": dx, "h0": dh0, "c0": dc0, "W_ih": dW_ih, "W_hh": dW_hh, "b_ih": db_ih, "b_hh": db_hh, "W_hr": dW_hr}
    if return_dh_seq:
        out["dh_seq"] = dh_seq
    return out


# --------------------------------------------------------------------------
# layer-normalised LSTM and GRU (the equations: pyrnn.reference, "layer-normalised")
# --------------------------------------------------------------------------


def _layernorm_forward(cell, x, states, W_ih, W_hh, b_ih, b_hh, ln, lengths, reverse, training, h_mask=None,
                       zoneout=(None, None), W_hr=None):
    a = check_forward(cell, x, states, W_ih, W_hh, b_ih, b_hh, lengths, h_mask, W_hr, *zoneout)
    H = a.W_ih.shape[0] // GATES[cell]
    ln_ih, ln_hh, *ln_c = check_layernorm_params(cell, H, a.x.dtype, ln)
    ln_c_weight, ln_c_bias = ln_c if ln_c else (None, None)
    _check_memory(cell, a.x, a.W_hh, a.W_hr, None if lengths is None else a.lengths, training)
    h0 = a.states[0] if states["h0"] is not None else None
    c0 = a.states[1] if cell == "lstm" and states["c0"] is not None else None
    lengths64 = None if lengths is None else np.ascontiguousarray(a.lengths, dtype=np.int64)
    return _core.layernorm_forward(
        cell_spec(cell).kind, _c(a.x), _c(h0), _c(c0), _c(a.W_ih), _c(a.W_hh), _c(a.b_ih), _c(a.b_hh), _c(ln_ih),
        _c(ln_hh), _c(ln_c_weight), _c(ln_c_bias), lengths64, check_bool("reverse", reverse),
        check_bool("training", training), h_mask=_c(a.h_mask),
        zoneout_h=_c(a.zoneout_h), zoneout_c=_c(a.zoneout_c), W_hr=_c(a.W_hr))


def _layernorm_backward(cell, ws, grads):
    name = f"layernorm_{cell}"
    if ws is None:
        raise ValueError(f"{name}_backward needs the workspace of {name}_forward(..., training=True), got None")
    if not isinstance(ws, _core.LayerNormWorkspace):
        raise TypeError(f"{name}_backward needs a pyrnn workspace from {name}_forward, got {type(ws).__name__}")
    family = BY_KIND[ws.cell].family
    if family != cell:
        raise ValueError(f"{name}_backward needs a workspace from {name}_forward, got one from "
                         f"layernorm_{family}_forward")
    T, B, _, H = ws.shape
    Ho = ws.proj_size or H  # width of h (and y): P with a projection
    h_layout = "P" if ws.proj_size else "H"
    expected = {"dy": ((T, B, Ho), f"(T, B, {h_layout})"), "dh_n": ((B, Ho), f"(B, {h_layout})"),
                "dc_n": ((B, H), "(B, H)")}
    dy, dh_n, *dc_n = (_c(g) for g in check_grads(ws.dtype, expected, grads))
    return _core.layernorm_backward(ws, dy, dh_n, dc_n[0] if dc_n else None)


def layernorm_lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias=None, *,
                           lengths=None, reverse=False, training=True, h_mask=None, zoneout_h=None,
                           zoneout_c=None, W_hr=None):
    """Layer-normalised LSTM forward: returns (y, h_n, c_n, workspace), as
    :func:`pyrnn.reference.layernorm_lstm_forward` (same arguments and equations).
    h_mask ([B, P or H]): recurrent dropout, as :func:`lstm_forward`'s; zoneout_h
    ([T, B, P or H]), zoneout_c ([T, B, H]): zoneout masks, as :func:`lstm_forward`'s
    (h~ reads LN(c~), the un-zoned c~). W_hr ([P, H], optional): the output projection
    (PyTorch's proj_size), h_t = W_hr (o * tanh(LN(c~_t))); W_hh is then [4H, P]
    and h0, y, h_n are P wide."""
    y, h_n, c_n, ws = _layernorm_forward("lstm", x, {"h0": h0, "c0": c0}, W_ih, W_hh, b_ih, b_hh,
                                         {"ln_ih": ln_ih, "ln_hh": ln_hh, "ln_c_weight": ln_c_weight,
                                          "ln_c_bias": ln_c_bias}, lengths, reverse, training, h_mask,
                                         (zoneout_h, zoneout_c), W_hr)
    return y, h_n, c_n, ws


def layernorm_lstm_backward(ws, dy=None, dh_n=None, dc_n=None):
    """Returns (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dln_ih, dln_hh,
    dln_c_weight, dln_c_bias) [+ dW_hr with a projection]; the bias gradients
    are None without those biases. dy, dh_n (and dh0) are P wide with a projection."""
    *grads, dW_hr = _layernorm_backward("lstm", ws, {"dy": dy, "dh_n": dh_n, "dc_n": dc_n})
    return tuple(grads) + ((dW_hr,) if ws.proj_size else ())


def layernorm_gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, *, lengths=None, reverse=False,
                          training=True, h_mask=None, zoneout_h=None):
    """Layer-normalised GRU (reset-after) forward: returns (y, h_n, workspace),
    as :func:`pyrnn.reference.layernorm_gru_forward`. h_mask ([B, H]):
    recurrent dropout (z * h keeps the unmasked h); zoneout_h ([T, B, H]): zoneout, as :func:`gru_forward`'s."""
    y, h_n, _, ws = _layernorm_forward("gru", x, {"h0": h0}, W_ih, W_hh, b_ih, b_hh,
                                       {"ln_ih": ln_ih, "ln_hh": ln_hh}, lengths, reverse, training, h_mask,
                                       (zoneout_h, None))
    return y, h_n, ws


def layernorm_gru_backward(ws, dy=None, dh_n=None):
    """Returns (dx, dh0, dW_ih, dW_hh, db_ih, db_hh, dln_ih, dln_hh)."""
    dx, dh0, _, dW_ih, dW_hh, db_ih, db_hh, dln_ih, dln_hh, _, _, _ = _layernorm_backward(
        "gru", ws, {"dy": dy, "dh_n": dh_n})
    return dx, dh0, dW_ih, dW_hh, db_ih, db_hh, dln_ih, dln_hh
