"""Converters between Keras recurrent weights and pyrnn's (PyTorch's) layout.

Keras stores ``kernel`` (I, G*U), ``recurrent_kernel`` (U, G*U) and ``bias``,
with gate order LSTM i,f,c,o and GRU z,r,h; a GRU with ``reset_after=True``
has bias (2, 3U) (input and recurrent biases), otherwise (3U,). PyTorch stores
W_ih (G*H, I), W_hh (G*H, H), b_ih, b_hh with LSTM i,f,g,o and GRU r,z,n.
Keras has one bias where PyTorch has two, so ``to_keras`` adds them (the
layers compute the same function) and ``from_keras`` puts it in b_ih.
"""

from __future__ import annotations

import numpy as np

from ._cells import GATES, check_family
from ._validation import to_numpy

__all__ = ["from_keras", "to_keras"]


def _own(a):
    """A C-contiguous copy (never a view of the caller's array: ascontiguousarray of a Fortran-ordered
    kernel's transpose was one)."""
    return np.array(a, order="C", copy=True)


def _gru_swap(a, U):
    """Swaps the first two gate blocks along the last axis: Keras z,r,h <-> PyTorch r,z,n."""
    return np.concatenate([a[..., U:2 * U], a[..., :U], a[..., 2 * U:]], axis=-1)


def _weights(name, a):
    """A weight array (NumPy or torch) as NumPy, floating point as the layers' load_state_dict takes
    it: other dtypes came back unchanged (strings, bools, complex, objects)."""
    a = to_numpy(a, name)
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")
    return a


def _check(cell, kernel, recurrent_kernel):
    G = GATES[check_family(cell)]
    kernel, recurrent_kernel = _weights("kernel", kernel), _weights("recurrent_kernel", recurrent_kernel)
    if (recurrent_kernel.ndim != 2 or recurrent_kernel.shape[1] != G * recurrent_kernel.shape[0]
            or recurrent_kernel.shape[0] < 1):
        raise ValueError(f"recurrent_kernel must have shape (U, {G}*U) with U >= 1 for {cell}, got "
                         f"{recurrent_kernel.shape}")
    U = recurrent_kernel.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != G * U or kernel.shape[0] < 1:
        raise ValueError(f"kernel must have shape (I, {G}*U) = (I, {G * U}) with I >= 1, got {kernel.shape}")
    return kernel, recurrent_kernel, U


def _check_reset_after(reset_after):
    if not isinstance(reset_after, (bool, np.bool_)):  # ("no" counted as True)
        raise TypeError(f"reset_after must be a bool, got {type(reset_after).__name__} {reset_after!r}")


def from_keras(cell, kernel, recurrent_kernel, bias=None, *, reset_after=True):
    """Keras weights -> dict with W_ih, W_hh, b_ih, b_hh (biases None when bias is None)."""
    _check_reset_after(reset_after)
    kernel, recurrent_kernel, U = _check(cell, kernel, recurrent_kernel)
    G = GATES[cell]
    order = (lambda a: _gru_swap(a, U)) if cell == "gru" else (lambda a: a)
    out = {"W_ih": _own(order(kernel).T), "W_hh": _own(order(recurrent_kernel).T),
           "b_ih": None, "b_hh": None}
    if bias is not None:
        bias = _weights("bias", bias)
        two = cell == "gru" and reset_after
        want = (2, G * U) if two else (G * U,)
        if bias.shape != want:
            raise ValueError(f"bias must have shape {want} for {cell}"
                             f"{' with reset_after=True' if two else ''}, got {bias.shape}")
        out["b_ih"] = order(bias[0] if two else bias).copy()
        out["b_hh"] = order(bias[1]).copy() if two else np.zeros_like(out["b_ih"])
    return out


def to_keras(cell, W_ih, W_hh, b_ih=None, b_hh=None, *, reset_after=True):
    """PyTorch-layout weights -> (kernel, recurrent_kernel, bias) as Keras stores them."""
    _check_reset_after(reset_after)
    G = GATES[check_family(cell)]
    W_ih, W_hh = _weights("W_ih", W_ih), _weights("W_hh", W_hh)
    if W_hh.ndim != 2 or W_hh.shape[0] != G * W_hh.shape[1] or W_hh.shape[1] < 1:
        raise ValueError(f"W_hh must have shape ({G}*H, H) with H >= 1 for {cell}, got {W_hh.shape}")
    U = W_hh.shape[1]
    if W_ih.ndim != 2 or W_ih.shape[0] != G * U or W_ih.shape[1] < 1:
        raise ValueError(f"W_ih must have shape ({G * U}, I) with I >= 1, got {W_ih.shape}")
    order = (lambda a: _gru_swap(a, U)) if cell == "gru" else (lambda a: a)
    kernel, recurrent = order(W_ih.T), order(W_hh.T)
    if b_ih is None and b_hh is None:
        return _own(kernel), _own(recurrent), None
    if b_ih is None or b_hh is None:
        raise ValueError(f"b_ih and b_hh must be given together (or neither), got only "
                         f"{'b_hh' if b_ih is None else 'b_ih'}")
    b_ih, b_hh = _weights("b_ih", b_ih), _weights("b_hh", b_hh)
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b.shape != (G * U,):
            raise ValueError(f"{name} must have shape ({G * U},), got {b.shape}")
    if cell == "gru" and reset_after:
        bias = np.stack([order(b_ih), order(b_hh)])
    else:
        bias = order(b_ih + b_hh)
    return _own(kernel), _own(recurrent), bias
