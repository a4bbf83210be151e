"""Input validation shared by the NumPy reference and the kernel API.

Every bad input raises ValueError or TypeError naming what was expected and
what was given.
"""

from __future__ import annotations

import numpy as np

_NUM_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _kind(a):
    return "None" if a is None else "an array"


def _as_float_array(name, a):
    a = np.asarray(a)
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    return a


def _check_shape(name, a, shape, layout):
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {layout} = {shape}, got {a.shape}")


def _check_same_dtype(arrays):
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        given = ", ".join(f"{name}={dt}" for name, dt in dtypes.items())
        raise TypeError(f"all inputs must have the same dtype, got {given}")


def _check_lengths(lengths, T, B):
    """Return lengths as an intp array [B] (all T when lengths is None)."""
    if lengths is None:
        return np.full(B, T, dtype=np.intp)
    lengths = np.asarray(lengths)
    if lengths.size and (lengths.dtype == np.bool_ or not np.issubdtype(lengths.dtype, np.integer)):
        raise TypeError(f"lengths must be an integer array, got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must be a 1-D array of size B = {B}, got shape {lengths.shape}")
    if lengths.size and (lengths.min() < 1 or lengths.max() > T):
        raise ValueError(
            f"lengths must lie in [1, T] = [1, {T}], got min {lengths.min()} and max {lengths.max()}"
        )
    return lengths.astype(np.intp)


def _check_forward_inputs(cell, x, states, W_ih, W_hh, b_ih, b_hh, lengths, extras=None, W_hr=None):
    """Validate the forward inputs of ``cell``.

    ``states`` maps "h0" (and "c0") to an array or None.  ``W_hr`` (LSTM
    projection, [P, H]) makes h P wide: W_hh is then [4H, P], h0 [B, P].
    ``extras`` maps further names to an array or None, each checked to be
    [B, Ho] (Ho = P or H) and of the common dtype (e.g. a recurrent-dropout
    mask).  Returns (x, states tuple with None replaced by zeros, W_ih, W_hh,
    b_ih, b_hh, lengths as an intp array) and, when ``extras`` or ``W_hr`` is
    given, a dict of the checked extras (with "W_hr") as a last element.
    """
    G = _NUM_GATES[cell]
    x = _as_float_array("x", x)
    if x.ndim != 3:
        raise ValueError(f"x must be a 3-D array [T, B, I], got ndim {x.ndim} (shape {x.shape})")
    T, B, I = x.shape
    if T < 1:
        raise ValueError(f"x must have at least one time step (T >= 1), got T = {T}")
    if I < 1:
        raise ValueError(f"x must have at least one input feature (I >= 1), got I = {I}")

    W_hh = _as_float_array("W_hh", W_hh)
    if W_hr is not None:
        if cell != "lstm":
            raise ValueError(f"W_hr (a projection) is only supported for the LSTM, not {cell}")
        W_hr = _as_float_array("W_hr", W_hr)
        if W_hr.ndim != 2 or not 1 <= W_hr.shape[0] < W_hr.shape[1]:
            raise ValueError(f"W_hr must have shape (P, H) with 1 <= P < H, got {W_hr.shape}")
        P, H = W_hr.shape
        _check_shape("W_hh", W_hh, (G * H, P), f"({G}*H, P)")
    else:
        if W_hh.ndim != 2 or W_hh.shape[0] != G * W_hh.shape[1] or W_hh.shape[1] < 1:
            raise ValueError(f"W_hh must have shape ({G}*H, H) with H >= 1 for {cell}, got {W_hh.shape}")
        H = P = W_hh.shape[1]

    W_ih = _as_float_array("W_ih", W_ih)
    _check_shape("W_ih", W_ih, (G * H, I), f"({G}*H, I)")

    if (b_ih is None) != (b_hh is None):
        raise ValueError(f"b_ih and b_hh must both be given or both be None, got b_ih {_kind(b_ih)} and "
                         f"b_hh {_kind(b_hh)}")
    if b_ih is not None:
        b_ih = _as_float_array("b_ih", b_ih)
        b_hh = _as_float_array("b_hh", b_hh)
        _check_shape("b_ih", b_ih, (G * H,), f"({G}*H,)")
        _check_shape("b_hh", b_hh, (G * H,), f"({G}*H,)")

    given_states = {}
    sizes = {}
    for name, s in states.items():
        size, layout = (H, "(B, H)") if name == "c0" or W_hr is None else (P, "(B, P)")
        sizes[name] = size
        if s is not None:
            s = _as_float_array(name, s)
            _check_shape(name, s, (B, size), layout)
        given_states[name] = s
    checked_extras = {}
    for name, e in (extras or {}).items():
        if e is not None:
            e = _as_float_array(name, e)
            _check_shape(name, e, (B, P), "(B, P)" if W_hr is not None else "(B, H)")
        checked_extras[name] = e

    _check_same_dtype({"x": x, "W_ih": W_ih, "W_hh": W_hh, "b_ih": b_ih, "b_hh": b_hh, "W_hr": W_hr,
                       **given_states, **checked_extras})
    state_arrays = tuple(
        np.zeros((B, sizes[name]), dtype=x.dtype) if s is None else s for name, s in given_states.items()
    )
    lengths = _check_lengths(lengths, T, B)
    out = (x, state_arrays, W_ih, W_hh, b_ih, b_hh, lengths)
    if extras is not None or W_hr is not None:
        out += ({**checked_extras, "W_hr": W_hr},)
    return out


def _check_backward_inputs(cell, cache, dy, dfinal):
    """Validate the backward inputs; None gradients become zeros.

    ``dfinal`` maps "dh_n" (and "dc_n") to an array or None.  Returns
    (dy, tuple of final-state gradients).
    """
    if cache is None:
        raise ValueError(
            f"{cell}_backward needs the cache of {cell}_forward(..., training=True), got None"
        )
    if not isinstance(cache, dict) or cache.get("cell") != cell:
        origin = cache.get("cell") if isinstance(cache, dict) else type(cache).__name__
        raise ValueError(f"{cell}_backward needs a cache from {cell}_forward, got one from {origin!r}")
    T, B, _ = cache["x"].shape
    H = cache["W_hh"].shape[1]
    dtype = cache["x"].dtype

    def grad(name, g, shape, layout):
        if g is None:
            return np.zeros(shape, dtype=dtype)
        g = _as_float_array(name, g)
        if g.dtype != dtype:
            raise TypeError(f"{name} must have the forward dtype {dtype}, got {g.dtype}")
        _check_shape(name, g, shape, layout)
        return g

    dy = grad("dy", dy, (T, B, H), "(T, B, H)")
    return dy, tuple(grad(name, g, (B, H), "(B, H)") for name, g in dfinal.items())
