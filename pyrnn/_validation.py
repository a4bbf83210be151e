"""Input validation: the one place pyrnn checks what users pass.

Every bad input raises ValueError or TypeError naming what was expected and
what was given. The layers, cells, :mod:`pyrnn.functional`,
:mod:`pyrnn.reference`, :mod:`pyrnn.jax` and :mod:`pyrnn.diagnostics` check
their arguments here (:mod:`pyrnn.torch` checks tensors itself, as torch.nn
does); the C++ extension re-checks only what protects memory.
"""

from __future__ import annotations

import numbers
import os
import warnings
from collections.abc import Mapping
from typing import NamedTuple, Optional, Tuple

import numpy as np

from ._cells import GATES

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ------------------------------------------------------------------ arrays --

def _kind(a):
    return "None" if a is None else "an array"


def refuse_masked(name, a):
    """A NumPy masked array's mask would be ignored (the kernels read its data): refused."""
    if isinstance(a, np.ma.MaskedArray):
        hint = " (and lengths= for padded sequences)" if name in ("input", "x") else ""
        raise TypeError(f"{name} is a masked array (numpy.ma), whose mask pyrnn would ignore: pass "
                        f"{name}.filled(value){hint}")
    return a


def as_float_array(name, a):
    a = np.asarray(refuse_masked(name, a))
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    return a


def check_shape(name, a, shape, layout):
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {layout} = {shape}, got {a.shape}")


def check_same_dtype(arrays):
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        given = ", ".join(f"{name}={dt}" for name, dt in dtypes.items())
        raise TypeError(f"all inputs must have the same dtype, got {given}")


def check_lengths(lengths, T, B):
    """Return lengths as an intp array [B] (all T when lengths is None)."""
    if lengths is None:
        return np.full(B, T, dtype=np.intp)
    lengths = np.asarray(refuse_masked("lengths", lengths))
    if lengths.size and (lengths.dtype == np.bool_ or not np.issubdtype(lengths.dtype, np.integer)):
        raise TypeError(f"lengths must be an integer array, got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must be a 1-D array of size B = {B}, got shape {lengths.shape}")
    if lengths.size and (lengths.min() < 1 or lengths.max() > T):
        raise ValueError(
            f"lengths must lie in [1, T] = [1, {T}], got min {lengths.min()} and max {lengths.max()}"
        )
    return lengths.astype(np.intp)


class ForwardInputs(NamedTuple):
    """The checked inputs of one layer and direction (:func:`check_forward`)."""

    x: np.ndarray
    states: Tuple[np.ndarray, ...]  # h0 (and c0), zeros where None was given
    W_ih: np.ndarray
    W_hh: np.ndarray
    b_ih: Optional[np.ndarray]
    b_hh: Optional[np.ndarray]
    lengths: np.ndarray  # intp [B], T where None was given
    h_mask: Optional[np.ndarray]
    W_hr: Optional[np.ndarray]
    zoneout_h: Optional[np.ndarray] = None  # [T, B, P or H]
    zoneout_c: Optional[np.ndarray] = None  # [T, B, H] (LSTM)


def _check_mixing_weights(name, m):
    """Zoneout masks are weights of the previous state: outside [0, 1] (or NaN) they extrapolate."""
    if not (np.all(m >= 0) and np.all(m <= 1)):
        raise ValueError(f"{name} must hold weights in [0, 1] (1: the unit keeps its previous value), got values "
                         f"in [{np.nanmin(m) if not np.all(np.isnan(m)) else np.nan}, "
                         f"{np.nanmax(m) if not np.all(np.isnan(m)) else np.nan}]"
                         f"{' and NaN' if np.isnan(m).any() else ''}")


def check_forward(cell, x, states, W_ih, W_hh, b_ih, b_hh, lengths, h_mask=None, W_hr=None, zoneout_h=None,
                  zoneout_c=None) -> ForwardInputs:
    """Validate the forward inputs of ``cell`` ("rnn", "lstm" or "gru").

    ``states`` maps "h0" (and "c0") to an array or None. ``W_hr`` (LSTM
    projection, [P, H]) makes h P wide: W_hh is then [4H, P], h0 [B, P].
    ``h_mask`` (recurrent dropout) is [B, P or H]. ``zoneout_h`` [T, B, P or H]
    and ``zoneout_c`` (LSTM) [T, B, H]: zoneout masks, the weight each unit
    keeps of its previous state at each step.
    """
    G = GATES[cell]
    x = as_float_array("x", x)
    if x.ndim != 3:
        raise ValueError(f"x must be a 3-D array [T, B, I], got ndim {x.ndim} (shape {x.shape})")
    T, B, I = x.shape
    if T < 1:
        raise ValueError(f"x must have at least one time step (T >= 1), got T = {T}")
    if I < 1:
        raise ValueError(f"x must have at least one input feature (I >= 1), got I = {I}")

    W_hh = as_float_array("W_hh", W_hh)
    if W_hr is not None:
        if cell != "lstm":
            raise ValueError(f"W_hr (a projection) is only supported for the LSTM, not {cell}")
        W_hr = as_float_array("W_hr", W_hr)
        if W_hr.ndim != 2 or not 1 <= W_hr.shape[0] < W_hr.shape[1]:
            raise ValueError(f"W_hr must have shape (P, H) with 1 <= P < H, got {W_hr.shape}")
        # H from W_ih's rows where they give one (hidden_size), so that a W_hr of the wrong
        # width is the array the message names
        W_ih = as_float_array("W_ih", W_ih)
        rows = W_ih.shape[0] if W_ih.ndim == 2 else 0
        P, H = W_hr.shape[0], (rows // G if rows and rows % G == 0 else W_hr.shape[1])
        check_shape("W_hr", W_hr, (P, H), "(P, H)")
        check_shape("W_hh", W_hh, (G * H, P), f"({G}*H, P)")
    else:
        if W_hh.ndim != 2 or W_hh.shape[0] != G * W_hh.shape[1] or W_hh.shape[1] < 1:
            raise ValueError(f"W_hh must have shape ({G}*H, H) with H >= 1 for {cell}, got {W_hh.shape}")
        H = P = W_hh.shape[1]
    h_layout = "(B, P)" if W_hr is not None else "(B, H)"

    W_ih = as_float_array("W_ih", W_ih)
    if W_ih.ndim == 2 and W_ih.shape[0] == G * H and W_ih.shape[1] != I:
        # (x or W_ih may be the wrong one: name both)
        raise ValueError(f"x has I = {I} input features (its last dimension) but W_ih has {W_ih.shape[1]} columns: "
                         f"W_ih must have shape ({G}*H, I) = {(G * H, I)}, got {W_ih.shape}")
    check_shape("W_ih", W_ih, (G * H, I), f"({G}*H, I)")

    if (b_ih is None) != (b_hh is None):
        raise ValueError(f"b_ih and b_hh must both be given or both be None, got b_ih {_kind(b_ih)} and "
                         f"b_hh {_kind(b_hh)}")
    if b_ih is not None:
        b_ih = as_float_array("b_ih", b_ih)
        b_hh = as_float_array("b_hh", b_hh)
        check_shape("b_ih", b_ih, (G * H,), f"({G}*H,)")
        check_shape("b_hh", b_hh, (G * H,), f"({G}*H,)")

    given, sizes = {}, {}
    for name, s in states.items():
        size, layout = (H, "(B, H)") if name == "c0" else (P, h_layout)
        sizes[name] = size
        if s is not None:
            s = as_float_array(name, s)
            check_shape(name, s, (B, size), layout)
        given[name] = s
    if h_mask is not None:
        h_mask = as_float_array("h_mask", h_mask)
        check_shape("h_mask", h_mask, (B, P), h_layout)
    if zoneout_h is not None:
        zoneout_h = as_float_array("zoneout_h", zoneout_h)
        check_shape("zoneout_h", zoneout_h, (T, B, P), "(T, " + h_layout[1:])
        _check_mixing_weights("zoneout_h", zoneout_h)
    if zoneout_c is not None:
        if cell != "lstm":
            raise ValueError(f"zoneout_c (a cell-state mask) is only used by the LSTM, not {cell}")
        zoneout_c = as_float_array("zoneout_c", zoneout_c)
        check_shape("zoneout_c", zoneout_c, (T, B, H), "(T, B, H)")
        _check_mixing_weights("zoneout_c", zoneout_c)

    check_same_dtype({"x": x, "W_ih": W_ih, "W_hh": W_hh, "b_ih": b_ih, "b_hh": b_hh, "W_hr": W_hr, **given,
                      "h_mask": h_mask, "zoneout_h": zoneout_h, "zoneout_c": zoneout_c})
    state_arrays = tuple(np.zeros((B, sizes[name]), dtype=x.dtype) if s is None else s for name, s in given.items())
    return ForwardInputs(x, state_arrays, W_ih, W_hh, b_ih, b_hh, check_lengths(lengths, T, B), h_mask, W_hr,
                         zoneout_h, zoneout_c)


def check_grads(dtype, expected, grads, zeros=False):
    """Output gradients of a backward call: ``grads`` maps a name to an array or
    None, ``expected`` a name to (shape, layout). Each must have the forward's
    ``dtype``. Returns the list of arrays, None (or zeros, with ``zeros``) where
    None was given."""
    out = []
    for name, g in grads.items():
        shape, layout = expected[name]
        if g is None:
            out.append(np.zeros(shape, dtype=dtype) if zeros else None)
            continue
        g = as_float_array(name, g)
        if g.dtype != dtype:
            raise TypeError(f"{name} must have the forward dtype {dtype}, got {g.dtype}")
        check_shape(name, g, shape, layout)
        out.append(g)
    return out


# ------------------------------------------------ layer and cell arguments --

def check_dtype(dtype):
    """float32 or float64 as a NumPy dtype; None is float32, the default of every
    pyrnn layer and cell (np.dtype(None) would be float64)."""
    try:
        dt = np.dtype(np.float32 if dtype is None else dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


_PRECISIONS = {None: "same", "same": "same", "int8": "int8", "bf16": "bf16", "bfloat16": "bf16"}


def check_precision(precision, dtype):
    """The kernels' name ("same", "int8", "bf16") of a weight precision for
    inference: None or "same" (the weights' dtype), "int8", "bf16"/"bfloat16"."""
    key = precision.lower() if isinstance(precision, str) else precision
    if not (key is None or isinstance(key, str)) or key not in _PRECISIONS:
        raise ValueError(f"precision must be None, 'same', 'int8' or 'bf16', got {precision!r}")
    name = _PRECISIONS[key]
    if name != "same" and np.dtype(dtype) != np.float32:
        raise TypeError(f"precision {precision!r} needs float32 weights, got {np.dtype(dtype)}")
    return name


_BF16_MAX = 3.3895313892515355e38  # the largest finite bfloat16
_BF16_INF_FROM = 3.3961775292304235e38  # halfway to 2**128: from here float32 rounds to inf (nearest even)


# int8 products: activations in [-63, 63] times weights in [-127, 127], summed in 32-bit integers
# (csrc/gemm/lowp.h): exact up to this many per sum, 63 * 127 * K <= 2**31 - 1.
INT8_MAX_SUM = (2**31 - 1) // (63 * 127)


def check_reduced_weights(precision, weights):
    """``weights`` ({name: array or None}) fit a reduced ``precision`` ("int8", "bf16"): finite (an inf
    weight made its row's int8 scale inf, NaN for every output of the row) and, for bf16, within its
    range (a float32 weight above ~3.39e38 rounds to inf); for int8, rows of at most INT8_MAX_SUM
    (268401) columns, whose sums fit the kernels' 32-bit integers (beyond, a sum could wrap around: a
    flipped sign, no error). ValueError naming the weight otherwise."""
    if precision not in ("int8", "bf16"):
        return
    for name, w in weights.items():
        if w is None:
            continue
        if precision == "int8" and w.ndim == 2 and w.shape[1] > INT8_MAX_SUM:
            raise ValueError(f"{name} has {w.shape[1]} columns: int8 sums of more than {INT8_MAX_SUM} products "
                             f"can overflow the kernels' 32-bit integer sums; use precision='bf16' or None")
        if not np.isfinite(w).all():
            raise ValueError(f"{name} holds NaN or infinite values, which {precision} weights cannot represent; "
                             f"keep such a layer in float32 (precision=None)")
        if precision == "bf16" and w.size and float(np.max(np.abs(w))) >= _BF16_INF_FROM:
            raise ValueError(f"{name} holds values beyond bfloat16's range (|w| > {_BF16_MAX:.4g}), which would "
                             f"become infinite; keep such a layer in float32 (precision=None)")


def make_rng(seed, rng):
    """The Generator of a ``seed=`` / ``rng=`` pair of arguments (at most one given)."""
    if rng is not None and seed is not None:
        raise ValueError("give either seed or rng, not both")
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        return rng
    expected = f"seed must be None, a non-negative int or a sequence of them, got {seed!r}"
    if isinstance(seed, (bool, np.bool_)):  # (NumPy takes True as the seed 1)
        raise TypeError(expected)
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        raise type(e)(expected) from None


def check_positive_int(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'zero or a positive integer' if allow_zero else 'greater than zero'}, "
                         f"got {value}")
    return int(value)


def check_bool(name, value):
    """A boolean option: True/False (a NumPy bool, 0 or 1 too). bool() would read 'False' as True
    and None as False."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def _physical_memory():
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


PHYSICAL_MEMORY = _physical_memory()


def check_parameter_memory(owner, count, dtype, what="its parameters and their gradients", copies=2):
    """MemoryError, before anything is allocated, when ``copies`` times ``count`` elements of ``dtype``
    (parameters and as many gradients) exceed this machine's memory: a huge size (num_layers=2**40)
    otherwise looped allocating, or failed deep inside NumPy."""
    need = copies * int(count) * np.dtype(dtype).itemsize
    have = PHYSICAL_MEMORY if PHYSICAL_MEMORY is not None else 1 << 50
    if need > have:
        raise MemoryError(f"{owner}: {what} would need {need / 2**30:.3g} GiB, more than this machine's "
                          f"{have / 2**30:.1f} GiB")


def check_stack_memory(owner, G, I, H, P, num_layers, num_directions, dtype, copies=2):
    """check_parameter_memory for a stack of ``num_layers`` recurrent layers (G gate blocks, input I,
    hidden H, projection P or 0), before its parameters are allocated (``copies``: 2 with gradients
    allocated beside them, 1 where they come later, as torch's)."""
    Ho = P or H

    def per_direction(inputs):  # W_ih, W_hh, biases, W_hr (and layer-norm gains)
        return G * H * (inputs + Ho + 4) + P * H + 4 * H

    count = num_directions * (per_direction(I) + (num_layers - 1) * per_direction(num_directions * Ho))
    check_parameter_memory(owner, count, dtype, copies=copies,
                           what="its parameters and their gradients" if copies == 2 else "its parameters")


def check_probability(name, p):
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} should be a number in range [0, 1] representing the probability of an "
                        f"element being zeroed, got {type(p).__name__} {p!r}")
    if not 0 <= p <= 1:
        raise ValueError(f"{name} should be a number in range [0, 1] representing the probability of an "
                         f"element being zeroed, got {p!r}")
    return float(p)


def to_numpy(value, name="the array"):
    """NumPy view of a NumPy array or a (CPU) torch tensor, without importing torch. A masked
    array is refused (TypeError naming ``name``): its mask would be dropped here."""
    refuse_masked(name, value)
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        if getattr(getattr(value, "device", None), "type", None) == "meta":
            raise TypeError("got a tensor on the meta device, which holds no values")
        t = value.detach().cpu()
        if str(getattr(t, "dtype", "")) in ("torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e5m2"):
            t = t.float()  # (no NumPy dtype: bf16 checkpoints load as float32, then the layer's dtype)
        return t.numpy()
    return np.asarray(value)


def named_arrays(owner, weights, names, dtype):
    """``weights`` (a mapping with exactly ``names``; arrays or torch tensors) as {name: new array of
    ``dtype``} in the order of ``names``."""
    if not isinstance(weights, Mapping):
        raise TypeError(f"{owner}: weights must be a mapping of names to arrays, got {type(weights).__name__}")
    missing = [k for k in names if k not in weights]
    unexpected = [k for k in weights if k not in names]
    if missing or unexpected:
        raise ValueError(f"{owner}: weights must have the names {list(names)}; missing {missing}, "
                         f"unexpected {unexpected}")
    out = {}
    for k in names:
        a = np.asarray(to_numpy(weights[k], k))
        if a.dtype.kind != "f":  # (as load_state_dict: strings were parsed, complex lost its imaginary part)
            raise TypeError(f"{owner}: {k} must be a floating-point array, got dtype {a.dtype}")
        out[k] = np.array(a, dtype=dtype)
    return out


def array_like(name, a, dtype, shape):
    """``a`` as an array of exactly ``dtype`` and ``shape`` (gradients given to a layer)."""
    a = np.asarray(refuse_masked(name, a))
    if a.dtype != dtype:
        raise TypeError(f"{name} must have the layer's dtype {dtype}, got {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return a


def cell_array(cell, name, a, size):
    """A cell's [B, size] input or state as a C-contiguous array of the cell's dtype."""
    if type(a) is not np.ndarray or a.dtype != cell.dtype:
        a = np.asarray(refuse_masked(name, a))
        if a.dtype != cell.dtype:
            raise TypeError(f"{type(cell).__name__}: {name} must have the cell's dtype {cell.dtype}, got {a.dtype}")
    if a.ndim != 2 or a.shape[-1] != size:
        raise ValueError(f"{name} has inconsistent size: got shape {a.shape}, expected (B, {size})")
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _layer_label(layer):
    """The name a layer's messages give it: its class's (pyrnn.LayerNormLSTM) where it says, else its mode."""
    label = getattr(layer, "_label", None)
    return label() if callable(label) else layer.mode


def layer_input(layer, x, source=None):
    """A layer's input as a contiguous time-major [T, B, I] array, and whether it was unbatched.
    ``source``: what the caller was given, where ``x`` is already its array (named in a dtype error)."""
    raw = x if source is None else source
    x = np.asarray(refuse_masked("input", x))
    if x.dtype != layer.dtype:
        if x.dtype.kind == "f":
            # (the advice names what the layer can be built with: float32 or float64, native byte order)
            array = isinstance(raw, np.ndarray)
            cast = f"x.astype(np.{layer.dtype.name})" if array else f"np.asarray(x, dtype=np.{layer.dtype.name})"
            advice = (f"cast it ({cast}), or build the layer with dtype={x.dtype.name}"
                      if x.dtype.name in ("float32", "float64") and x.dtype.isnative and x.dtype.name != layer.dtype.name
                      else f"cast it: {cast}; layers are float32 or float64 in native byte order")
            given = x.dtype if array else f"a {type(raw).__name__}, which NumPy reads as {x.dtype}"
            raise TypeError(f"{_layer_label(layer)}: input must have the layer's dtype {layer.dtype}, got {given} "
                            f"({advice})")
        raise TypeError(f"{_layer_label(layer)}: input must have dtype {layer.dtype}, got {x.dtype}")
    if x.ndim not in (2, 3):
        raise ValueError(f"{_layer_label(layer)}: Expected input to be 2D or 3D, got {x.ndim}D input")
    unbatched = x.ndim == 2
    if unbatched:
        x = x[:, None, :]
    elif layer.batch_first:
        x = x.transpose(1, 0, 2)
    if x.shape[2] != layer.input_size:
        raise ValueError(f"input.size(-1) must be equal to input_size. Expected {layer.input_size}, "
                         f"got {x.shape[2]}")
    if x.shape[0] == 0:
        raise ValueError(f"{_layer_label(layer)}: Expected sequence length to be larger than 0 in RNN")
    return np.ascontiguousarray(x), unbatched


def _layer_state(layer, name, h, B, size, unbatched):
    LD = layer.num_layers * layer.num_directions
    expected = (LD, size) if unbatched else (LD, B, size)
    if h is None:  # in an LSTM's (h0, c0): torch.nn takes both or neither
        raise TypeError(f"{_layer_label(layer)}: {name} must be an array of shape {expected}, got None")
    h = np.asarray(refuse_masked(name, h))
    if h.dtype != layer.dtype:
        raise TypeError(f"{name} must have the layer's dtype {layer.dtype}, got {h.dtype}")
    if h.shape != expected:
        raise ValueError(f"Expected {name} size {expected}, got {list(h.shape)}")
    return h[:, None, :] if unbatched else h


def layer_states(layer, hx, B, unbatched):
    """(h0, c0) of a layer call as [L*D, B, size] arrays, or None."""
    if hx is None:
        return None, None
    H_out = layer.proj_size or layer.hidden_size
    if layer.mode == "LSTM":
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"{_layer_label(layer)}: hx must be a tuple (h0, c0), got {type(hx).__name__}"
                            f"{'' if not isinstance(hx, (tuple, list)) else f' of length {len(hx)}'}")
        return (_layer_state(layer, "hidden[0]", hx[0], B, H_out, unbatched),
                _layer_state(layer, "hidden[1]", hx[1], B, layer.hidden_size, unbatched))
    return _layer_state(layer, "hidden", hx, B, H_out, unbatched), None


def check_zoneout(name, p):
    """A zoneout rate: a real number in [0, 1] (the probability that a unit keeps its previous value)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} should be a number in range [0, 1] representing the probability that a unit "
                        f"keeps its previous value at a step, got {type(p).__name__} {p!r}")
    if not 0 <= p <= 1:
        raise ValueError(f"{name} should be a number in range [0, 1] representing the probability that a unit "
                         f"keeps its previous value at a step, got {p!r}")
    return float(p)


def check_training_rates(module):
    """In training mode, checks a module's ``dropout``, ``recurrent_dropout``, ``zoneout`` and ``zoneout_c``
    (public attributes a user may change, e.g. on a schedule) before a call draws masks with them:
    out-of-range values were used silently (above 1 as 1, below 0 as no masks)."""
    if not module.training:
        return
    # (every value checked, not only truthy ones: None set on a schedule failed later with a bare
    # "'>' not supported"; the LSTM's zoneout_c=None means "as zoneout")
    check_probability("dropout", getattr(module, "dropout", 0.0))
    check_probability("recurrent_dropout", getattr(module, "recurrent_dropout", 0.0))
    check_zoneout("zoneout", getattr(module, "zoneout", 0.0))
    if getattr(module, "zoneout_c", None) is not None:
        check_zoneout("zoneout_c", module.zoneout_c)


def check_layer_dropout(dropout, num_layers):
    """``dropout`` (between stacked layers) checked as a probability; with one layer it does nothing,
    which torch.nn says with this warning."""
    p = check_probability("dropout", dropout)
    if p > 0 and num_layers == 1:  # (num_layers checked by the caller)
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                      f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                      stacklevel=4)  # (the user's line: the layer's __init__, its base's, this)
    return p


def zoneout_rates(mode, zoneout, zoneout_c):
    """(rate of h, rate of c) of a layer's ``zoneout`` / ``zoneout_c`` arguments; c's is 0.0 but for the
    LSTM, whose ``zoneout_c=None`` stays None: :class:`CellStateZoneout` reads it as ``zoneout``."""
    p_h = check_zoneout("zoneout", zoneout)
    if zoneout_c is not None and mode != "LSTM":
        raise TypeError(f"{mode}: zoneout_c is the LSTM's cell-state zoneout rate, and a {mode} has no cell "
                        f"state: use zoneout")
    if mode != "LSTM":
        return p_h, 0.0
    return p_h, None if zoneout_c is None else check_zoneout("zoneout_c", zoneout_c)


class CellStateZoneout:
    """``zoneout_c`` of the layers and cells with zoneout (NumPy and torch): the LSTM's rate for the cell
    state c. Left None (the constructors' default) it reads as the current ``zoneout``, so a rate
    changed later, on a schedule, applies to c too, as the constructor's None promised (it was fixed
    at the rate of construction); a number is its own rate. The GRU's and RNN's is 0.0."""

    _zoneout_c = 0.0  # (modules pickled before zoneout existed)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        default = cls.__dict__.get("zoneout_c")
        if default is not None and not isinstance(default, property):
            # a subclass's class default (zoneout_c = 0.0, as pyrnn's own classes had) would hide the
            # property, and the rate its constructor stores: it becomes the default of the stored rate
            cls._zoneout_c = default
            delattr(cls, "zoneout_c")

    @property
    def zoneout_c(self):
        rate = self._zoneout_c
        return self.zoneout if rate is None else rate

    @zoneout_c.setter
    def zoneout_c(self, rate):
        self._zoneout_c = rate

    def __setstate__(self, state):
        if "zoneout_c" in state:  # pickled when zoneout_c was a plain attribute: the rate it held
            state = dict(state)
            state["_zoneout_c"] = state.pop("zoneout_c")
        super().__setstate__(state)


def check_layernorm_params(cell, H, dtype, params):
    """The layer-norm gains and biases of a layer-normalised ``cell`` ("lstm" or
    "gru") with H hidden units: ``params`` maps "ln_ih" and "ln_hh" (gains,
    [G*H]) and, for the LSTM, "ln_c_weight" ([H], the cell-state gain) and
    "ln_c_bias" ([H] or None: no cell-state bias) to arrays. Each must have the
    forward's ``dtype``. Returns them in order, as arrays."""
    G = GATES[cell]
    out = []
    for name, a in params.items():
        size, layout = (H, "(H,)") if name.startswith("ln_c") else (G * H, f"({G}*H,)")
        if a is None:
            if name != "ln_c_bias":
                raise TypeError(f"{name} must be an array of shape {layout} = {(size,)}, got None")
            out.append(None)
            continue
        a = as_float_array(name, a)
        if a.dtype != dtype:
            raise TypeError(f"{name} must have the dtype of x, {dtype}, got {a.dtype}")
        check_shape(name, a, (size,), layout)
        out.append(a)
    return out
