"""Reservoir computing: echo state networks (ESNs) with a closed-form ridge readout.

An echo state network drives a fixed random recurrent network, the
*reservoir*, with the input, and trains only a linear readout of its states
(Jaeger 2001; Jaeger & Haas 2004; Lukoševičius 2012, "A practical guide to
applying echo state networks")::

    esn = pyrnn.reservoir.ESN(1, 500, spectral_radius=0.9, leak=0.5, seed=0)
    esn.fit(u_train, y_train, washout=100, ridge=[1e-10, 1e-8, 1e-6])  # sweep on a validation tail
    y_hat = esn.predict(u_test)                        # teacher forced: one step ahead
    future = esn.generate(200, warmup=u_recent)        # free running: its outputs are its next inputs

The reservoir is a leaky-integrator tanh RNN,

    h_t = (1 - a) h_{t-1} + a tanh(W_in u_t + W h_{t-1} + b),

run by pyrnn's C++ kernels (:func:`pyrnn.functional.forward` with ``leak=a``;
:func:`pyrnn.reference.rnn_forward` is the same arithmetic in NumPy). W is
drawn at random, dense or sparse, and rescaled to a chosen spectral radius;
W_in and b are uniform. The readout is

    y_t = W_out [1; u_t; h_t]        (or W_out [1; h_t] with use_raw_inputs=False),

fitted by ridge regression in closed form. Shapes use T steps, B sequences,
I inputs, H reservoir units, O outputs and F = 1 + I + H (or 1 + H) features.

Determinism: the states come from pyrnn's kernels and are bitwise equal at
any thread count; the readout is solved in float64 by NumPy's BLAS and LAPACK,
whose last bits can change with their thread count (``OPENBLAS_NUM_THREADS``;
measured: 4.6e-8 in W_out between one and two threads). Fix that count to
reproduce a fit bitwise.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

import numpy as np
import numpy.typing as npt

from . import functional as F
from ._validation import check_dtype, check_parameter_memory, make_rng, refuse_masked, to_numpy

__all__ = ["ESN", "spectral_radius"]

ArrayLike = npt.ArrayLike
NDArray = npt.NDArray[Any]

# Feature rows turned into float64 at once when accumulating Φ^T Φ (bounds the temporary to ~64 MiB).
_CHUNK_ELEMENTS = 1 << 23


# ------------------------------------------------------------------- checks --

def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not np.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out!r}")
    return out


# (numpy.exceptions from NumPy 1.25; the main namespace before 2.0)
_RaggedWarning: Type[Warning] = getattr(getattr(np, "exceptions", np), "VisibleDeprecationWarning", DeprecationWarning)


def _positive_int(name: str, value: Any, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else 'positive'}, got {value}")
    return int(value)


def _real_array(name: str, a: Any, dtype: np.dtype) -> NDArray:
    """``a`` as an array of ``dtype``: any real (integer or floating) finite data is accepted and cast."""
    a = to_numpy(a, name) if hasattr(a, "detach") else refuse_masked(name, a)  # (a tensor detached, as the layers)
    try:
        with warnings.catch_warnings():  # (NumPy < 1.24 makes a ragged list an object array, with this warning)
            warnings.simplefilter("error", _RaggedWarning)
            arr = np.asarray(a)
    except (TypeError, ValueError, _RaggedWarning) as e:  # ragged nested lists
        raise ValueError(f"{name} must be an array of numbers with one length per axis, got "
                         f"{type(a).__name__} ({e})") from None
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (integer or floating point), got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got NaN or infinity")
    with np.errstate(over="ignore"):
        out = arr.astype(dtype, copy=False)
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        raise ValueError(f"{name} has values beyond the range of {np.dtype(dtype).name} "
                         f"(largest magnitude {float(np.abs(arr).max()):.3g})")
    return out


def spectral_radius(W: ArrayLike) -> float:
    """The spectral radius of a square matrix W [H, H]: the largest modulus of its eigenvalues.

    Computed exactly with ``np.linalg.eigvals`` in float64 (LAPACK's geev): O(H^3)
    time and O(H^2) memory. On a 2-core AMD EPYC with one BLAS thread: about
    0.2 s for H = 500, 0.8 s for 1000, 4 s for 2000 and 30-40 s for 4000.
    """
    A = _real_array("W", W, np.dtype(np.float64))
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"W must be a square matrix [H, H], got shape {A.shape}")
    if A.size == 0:
        return 0.0
    return float(np.max(np.abs(np.linalg.eigvals(A))))  # (A is float64 already: no second copy)


_radius = spectral_radius  # (ESN.__init__'s parameter of the same name shadows it there)


def _is_acyclic(pattern: NDArray) -> bool:
    """Whether the directed graph of a square boolean matrix has no cycle (then any W with
    this pattern is nilpotent: spectral radius 0). Kahn's algorithm, one layer per round."""
    alive = np.ones(pattern.shape[0], bool)
    while alive.any():
        sub = pattern[np.ix_(alive, alive)]
        sources = ~sub.any(axis=1)  # no edge from a live unit (row i: the units unit i reads)
        if not sources.any():
            return False
        idx = np.flatnonzero(alive)
        alive[idx[sources]] = False
    return True


# ------------------------------------------------------------ ridge algebra --

def _fill_features(out: NDArray, x2: Optional[NDArray], h2: NDArray) -> None:
    """out [r, F] = [1, x, h] rows (x2 None: [1, h])."""
    out[:, 0] = 1.0
    if x2 is None:
        out[:, 1:] = h2
    else:
        I = x2.shape[1]
        out[:, 1:1 + I] = x2
        out[:, 1 + I:] = h2


def _chunks(n: int, width: int) -> Iterable[Tuple[int, int]]:
    step = max(1, _CHUNK_ELEMENTS // max(width, 1))
    for a in range(0, n, step):
        yield a, min(n, a + step)


def _gram(x2: Optional[NDArray], h2: NDArray, y2: NDArray, n_features: int) -> Tuple[NDArray, NDArray]:
    """G = Φ^T Φ [F, F] and C = Φ^T Y [F, O] in float64, Φ the feature rows of (x2, h2),
    accumulated chunk by chunk (no float64 copy of all the states at once)."""
    G = np.zeros((n_features, n_features))
    C = np.zeros((n_features, y2.shape[1]))
    for a, b in _chunks(h2.shape[0], n_features):
        phi = np.empty((b - a, n_features))
        _fill_features(phi, None if x2 is None else x2[a:b], h2[a:b])
        with np.errstate(over="ignore", invalid="ignore"):
            G += phi.T @ phi
            C += phi.T @ y2[a:b].astype(np.float64)
    if not (np.isfinite(G).all() and np.isfinite(C).all()):
        raise ValueError("the readout's normal equations overflow float64: the inputs, states or targets are "
                         "too large (scale u and y down)")
    return G, C


def _solve(G: NDArray, C: NDArray, ridge: float) -> NDArray:
    """argmin_W |Φ W - Y|^2 + ridge |W[1:]|^2 from G = Φ^T Φ and C = Φ^T Y: the normal
    equations (G + ridge P) W = C, P the identity but for the unpenalised bias (row 0).
    Returns W [F, O] (float64). Ridge 0 takes the minimum-norm least-squares solution of the
    normal equations (``np.linalg.lstsq`` on Φ^T Φ: directions of Φ with singular values below
    about sqrt(eps) of the largest count as zero, so a badly conditioned Φ fits less closely
    than ``lstsq`` on Φ itself would, without that solution's rounding-noise weights)."""
    if ridge == 0:
        # (np.linalg.solve rarely fails on a matrix singular up to rounding: it returns one exact fit
        # among many, made of rounding noise. pinv(Φ^T Φ) Φ^T Y = pinv(Φ) Y: the minimum-norm one.)
        return np.linalg.lstsq(G, C, rcond=None)[0]
    A = G.copy()
    diag = np.arange(1, A.shape[0])
    A[diag, diag] += ridge  # positive definite (the bias column is all ones)
    try:
        return np.linalg.solve(A, C)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(A, C, rcond=None)[0]


def _score_value(value: Any) -> float:
    """A score callable's result as a float (NaN: infinity, it ranks last)."""
    # (a Python or NumPy number, or any 0-d array with __float__: a torch or JAX scalar)
    dtype = getattr(value, "dtype", None)
    kind_ok = dtype.kind in "fiu" if isinstance(dtype, np.dtype) else not any(
        k in str(dtype) for k in ("bool", "complex"))  # (a torch or JAX dtype)
    if (isinstance(value, (bool, np.bool_, str)) or not hasattr(value, "__float__") or getattr(value, "ndim", 0) != 0
            or not kind_ok):
        raise TypeError(f"score must return a real number, got {type(value).__name__} {value!r}"[:200])
    e = float(value)
    return math.inf if math.isnan(e) else e


def _ridge_values(ridge: Any) -> Tuple[List[float], bool]:
    """([values], whether it is a sweep) from a number or a sequence of numbers."""
    if isinstance(ridge, np.ndarray) and ridge.ndim == 0:
        ridge = ridge.item()
    if isinstance(ridge, numbers.Real) and not isinstance(ridge, bool):
        values, sweep = [ridge], False
    elif isinstance(ridge, (Sequence, np.ndarray)) and not isinstance(ridge, (str, bytes)):
        values, sweep = list(np.ravel(np.asarray(ridge, dtype=object))), True
        if not values:
            raise ValueError("ridge must hold at least one value, got an empty sequence")
    else:
        raise TypeError(f"ridge must be a number >= 0 or a sequence of them, got {type(ridge).__name__}")
    out = []
    for v in values:
        r = _number("ridge", v)
        if r < 0:
            raise ValueError(f"ridge must be >= 0, got {r!r}")
        out.append(r)
    return out, sweep


# ---------------------------------------------------------------------- ESN --

class ESN:
    """An echo state network: a fixed random leaky tanh reservoir and a linear ridge readout.

    Reservoir (run by :func:`pyrnn.functional.forward` with ``leak=``)::

        h_t = (1 - leak) h_{t-1} + leak * tanh(W_in u_t + W h_{t-1} + b)

    Readout, fitted in closed form by :meth:`fit`::

        y_t = W_out [1; u_t; h_t]      (use_raw_inputs=True, the default; Jaeger & Haas 2004)
        y_t = W_out [1; h_t]           (use_raw_inputs=False)

    Parameters:

    input_size : int
        I, the width of u_t.
    reservoir_size : int
        H, the number of reservoir units.
    output_size : int, optional
        O, the width of y_t (default: I, as for a generative model whose outputs
        become its next inputs in :meth:`generate`).
    spectral_radius : float
        The largest eigenvalue modulus W is rescaled to (>= 0; default 0.9).
        Below 1 usually gives the echo state property for a tanh reservoir.
        The radius is computed exactly with ``np.linalg.eigvals`` on [H, H], an
        O(H^3) step at construction: ~1 s for 1000 units, ~4 s for 2000 and
        30-40 s for 4000 on one core (see :func:`spectral_radius`).
    leak : float
        The leaking rate a in (0, 1] (default 1: no leaky integration).
    density : float
        Fraction of nonzero entries of W in (0, 1] (default 1: dense). Exactly
        round(density H^2) entries (at least one) are drawn from U(-1, 1) at
        uniformly chosen positions. The kernels compute with dense matrices: a
        sparse W is stored dense, with zeros, and costs as much as a dense one.
    input_scaling : float or array [I]
        W_in is drawn from U(-1, 1) and multiplied by this (per input column
        when an array; default 1).
    bias_scaling : float
        b is drawn from U(-bias_scaling, bias_scaling); 0 (the default) means
        no bias (``b`` is None).
    use_raw_inputs : bool
        Whether the readout also sees u_t (features [1; u_t; h_t], the default)
        or only the states ([1; h_t]).
    seed, rng : int (or sequence of ints) or numpy.random.Generator, optional
        The random weights' source (give one at most).
    dtype : float32 (default) or float64
        The reservoir's dtype: its weights, states and outputs. Inputs of any
        real dtype are cast to it. The readout is fitted and kept in float64.

    Cost: construction is dominated by the eigenvalues of W (O(H^3), above).
    Running the reservoir costs O(T B H^2); one sequence (B = 1) is bound by
    memory bandwidth once W (4 H^2 bytes in float32) outgrows the caches, as
    every step reads all of W, so batching sequences (B > 1) is nearly free
    there. Fitting: O(N F^2 + F^3) (:meth:`fit`). Measured on a 2-core AMD EPYC
    (one thread, float32, one sequence of 2000 steps): H = 4000 (density 0.01)
    takes ~40 s to build, 15-19 s for the states, ~15 s to fit (states
    included) and ~15 ms per generated step.

    Attributes:

    W_in : [H, I], W : [H, H], b : [H] or None
        The reservoir's weights (read-only arrays: the kernels use a packed copy
        made once; assign new arrays to change them).
    W_out : [O, F] float64 or None
        The readout, None until :meth:`fit`; columns in feature order (bias, inputs, states).
    ridge : float or None
        The ridge value of the fitted readout.
    validation_errors : dict {ridge: error} or None
        The validation MSEs of the last sweep (:meth:`fit` with several ridge
        values), or the scores of ``fit(score=...)``; None after a single-value fit.

    The other constructor arguments are kept as attributes of the same names
    (``leak`` is read at every call; changing the others has no effect, but
    ``use_raw_inputs`` and ``dtype``, which shape the readout and the arrays,
    are read-only: build a new ESN to change them).
    """

    @property
    def use_raw_inputs(self) -> bool:
        """Whether the readout sees u_t beside h_t (fixed at construction)."""
        return self._use_raw_inputs

    @property
    def leak(self) -> float:
        """The leaking rate a in (0, 1], read at every call (assign a new value to change it)."""
        return self._leak

    @leak.setter
    def leak(self, value: float) -> None:
        a = _number("leak", value)
        if not 0 < a <= 1:
            raise ValueError(f"leak must be in (0, 1], got {a!r}")
        self._leak = a

    @property
    def dtype(self) -> np.dtype:
        """The reservoir's dtype (fixed at construction)."""
        return self._dtype

    def __init__(self, input_size: int, reservoir_size: int, output_size: Optional[int] = None, *,
                 spectral_radius: float = 0.9, leak: float = 1.0, density: float = 1.0,
                 input_scaling: Union[float, ArrayLike] = 1.0, bias_scaling: float = 0.0,
                 use_raw_inputs: bool = True, seed: Union[int, Sequence[int], None] = None,
                 rng: Optional[np.random.Generator] = None, dtype: npt.DTypeLike = np.float32) -> None:
        I = _positive_int("input_size", input_size)
        H = _positive_int("reservoir_size", reservoir_size)
        O = I if output_size is None else _positive_int("output_size", output_size)
        radius = _number("spectral_radius", spectral_radius)
        if radius < 0:
            raise ValueError(f"spectral_radius must be >= 0, got {radius!r}")
        self.leak = leak
        d = _number("density", density)
        if not 0 < d <= 1:
            raise ValueError(f"density must be in (0, 1], got {d!r}")
        scale = np.asarray(input_scaling)
        if scale.dtype.kind not in "fiu" or isinstance(input_scaling, bool):
            raise TypeError(f"input_scaling must be a number or an array of numbers, got "
                            f"{type(input_scaling).__name__} of dtype {scale.dtype}")
        if scale.ndim > 1 or (scale.ndim == 1 and scale.shape != (I,)):
            raise ValueError(f"input_scaling must be a number or an array of shape (input_size,) = ({I},), got "
                             f"shape {scale.shape}")
        scale = scale.astype(np.float64)
        if not np.isfinite(scale).all() or (scale < 0).any():
            raise ValueError(f"input_scaling must be finite and >= 0, got {input_scaling!r}")
        bias = _number("bias_scaling", bias_scaling)
        if bias < 0:
            raise ValueError(f"bias_scaling must be >= 0, got {bias!r}")
        if not isinstance(use_raw_inputs, (bool, np.bool_)):
            raise TypeError(f"use_raw_inputs must be a bool, got {type(use_raw_inputs).__name__}")
        dt = check_dtype(dtype)  # (None: float32, the default)
        # W is built in float64, then the reservoir's arrays; the readout is fitted on [1, x, h] features
        check_parameter_memory("ESN", H * H * 2 + H * (I + 2) + O * (1 + I + H), np.float64, "its weights", 1)
        gen = make_rng(seed, rng)

        self.input_size, self.reservoir_size, self.output_size = I, H, O
        self.spectral_radius = radius
        self.density = d
        self.input_scaling: Union[float, NDArray] = float(scale) if scale.ndim == 0 else scale
        self.bias_scaling = bias
        self._use_raw_inputs = bool(use_raw_inputs)
        self._dtype = dt

        if d >= 1.0:
            W = gen.uniform(-1.0, 1.0, (H, H))
        else:
            nnz = max(1, int(round(d * H * H)))
            W = np.zeros((H, H))
            W.flat[gen.choice(H * H, size=nnz, replace=False)] = gen.uniform(-1.0, 1.0, nnz)
        if radius > 0:
            rho = _radius(W)
            if rho < 0.05 and _is_acyclic(W != 0):
                raise ValueError(f"the random W ({H} units, density {d}) has spectral radius 0 (its nonzero "
                                 f"entries form no cycle), so it cannot be rescaled to {radius}: raise density "
                                 f"or reservoir_size")
            W *= radius / rho
        else:
            W[:] = 0.0
        W_in = gen.uniform(-1.0, 1.0, (H, I)) * scale
        b = gen.uniform(-bias, bias, H) if bias > 0 else None
        # (The setters below would name W, W_in or b, which the caller never passed.)
        for arg, value, arr in (("spectral_radius", radius, W), ("input_scaling", input_scaling, W_in),
                                ("bias_scaling", bias, b)):
            big = 0.0 if arr is None or arr.size == 0 else float(np.abs(arr).max())
            if not np.isfinite(big) or big > float(np.finfo(dt).max):
                raise ValueError(f"{arg}={value!r} scales the reservoir's random weights beyond the range of "
                                 f"{np.dtype(dt).name} (largest magnitude {big:.3g}): use a smaller {arg}")

        self._packed: Any = None
        self.W_in = W_in
        self.W = W
        self.b = b
        self.W_out: Optional[NDArray] = None
        self.ridge: Optional[float] = None
        self.validation_errors: Optional[Dict[float, float]] = None

    # ------------------------------------------------------------- weights

    @property
    def W_in(self) -> NDArray:
        """Input weights [H, I] (read-only; assign a new array to change them)."""
        return self._W_in

    @W_in.setter
    def W_in(self, value: ArrayLike) -> None:
        self._W_in = self._weight("W_in", value, (self.reservoir_size, self.input_size))
        self._packed = None

    @property
    def W(self) -> NDArray:
        """Recurrent weights [H, H] (read-only; assign a new array to change them: it is not rescaled)."""
        return self._W

    @W.setter
    def W(self, value: ArrayLike) -> None:
        self._W = self._weight("W", value, (self.reservoir_size, self.reservoir_size))
        self._packed = None

    @property
    def b(self) -> Optional[NDArray]:
        """Bias [H], or None (no bias)."""
        return self._b

    @b.setter
    def b(self, value: Optional[ArrayLike]) -> None:
        H = self.reservoir_size
        self._b = None if value is None else self._weight("b", value, (H,))
        self._b_hh = None if value is None else np.zeros(H, self.dtype)

    def _weight(self, name: str, value: ArrayLike, shape: Tuple[int, ...]) -> NDArray:
        arr = np.array(_real_array(name, value, self.dtype), order="C", copy=True)
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
        arr.flags.writeable = False
        return arr

    @property
    def feature_size(self) -> int:
        """F, the readout's input width: 1 + I + H (use_raw_inputs) or 1 + H."""
        return 1 + (self.input_size if self.use_raw_inputs else 0) + self.reservoir_size

    def _packed_weights(self) -> Any:
        if self._packed is None:
            self._packed = F.pack_weights("rnn", self._W_in, self._W, leak=self.leak)
        return self._packed

    def __getstate__(self) -> Dict[str, Any]:  # pickles and copies pack the weights again when used
        return {**self.__dict__, "_packed": None}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        for name in ("use_raw_inputs", "dtype", "leak"):  # (plain attributes in ESNs pickled before they were properties)
            if name in state:
                state["_" + name] = state.pop(name)
        self.__dict__.update(state)
        for name in ("_W_in", "_W", "_b"):  # read-only again (pickles and deep copies make writeable arrays):
            if getattr(self, name, None) is not None:  # an in-place edit would not reach the packed weights
                getattr(self, name).flags.writeable = False

    def __repr__(self) -> str:
        extra = "".join([
            f", leak={self.leak:g}" if self.leak != 1 else "",
            f", density={self.density:g}" if self.density != 1 else "",
            f", bias_scaling={self.bias_scaling:g}" if self.bias_scaling else "",
            ", use_raw_inputs=False" if not self.use_raw_inputs else "",
            ", dtype=float64" if self.dtype == np.float64 else "",
        ])
        fitted = f", fitted with ridge={self.ridge:g}" if self.W_out is not None and self.ridge is not None else ""
        return (f"ESN({self.input_size}, {self.reservoir_size}, {self.output_size}, "
                f"spectral_radius={self.spectral_radius:g}{extra}){fitted}")

    # -------------------------------------------------------------- inputs

    def _input(self, name: str, u: ArrayLike) -> Tuple[NDArray, bool]:
        """u as a C-contiguous [T, B, I] array of the dtype, and whether it was unbatched ([T, I])."""
        x = _real_array(name, u, self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"{name} must have shape [T, I] or [T, B, I] with I = {self.input_size}, "
                             f"got shape {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        if x.shape[2] != self.input_size:
            raise ValueError(f"{name} must have {self.input_size} features on its last axis (input_size), got "
                             f"shape {x.shape[:1] + x.shape[2:] if unbatched else x.shape}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"{name} must have at least one step and one sequence, got shape "
                             f"{x.shape[:1] + x.shape[2:] if unbatched else x.shape}")
        return np.ascontiguousarray(x), unbatched

    def _h0(self, h0: Optional[ArrayLike], B: int, unbatched: bool) -> Optional[NDArray]:
        if h0 is None:
            return None
        h = _real_array("h0", h0, self.dtype)
        expected = (self.reservoir_size,) if unbatched else (B, self.reservoir_size)
        if h.shape != expected:
            raise ValueError(f"h0 must have shape {expected} ({'[H]' if unbatched else '[B, H]'} for "
                             f"{'unbatched' if unbatched else 'batched'} inputs), got {h.shape}")
        return np.ascontiguousarray(h[None] if unbatched else h)

    def _targets(self, y: ArrayLike, T: int, B: int, unbatched: bool) -> NDArray:
        Y = _real_array("y", y, self.dtype)
        expected = (T, self.output_size) if unbatched else (T, B, self.output_size)
        if Y.shape != expected:
            layout = "[T, O]" if unbatched else "[T, B, O]"
            raise ValueError(f"y must have shape {layout} = {expected} to match u and output_size, got {Y.shape}")
        return Y[:, None, :] if unbatched else Y

    @staticmethod
    def _washout(washout: Any, T: int) -> int:
        w = _positive_int("washout", washout, allow_zero=True)
        if w >= T:
            raise ValueError(f"washout must be smaller than the number of steps T = {T}, got {w}")
        return w

    # ------------------------------------------------------------- running

    def _run(self, x: NDArray, h0: Optional[NDArray]) -> NDArray:
        """The reservoir's states [T, B, H] for x [T, B, I] from h0 [B, H] (None: zeros), in C++."""
        y: NDArray = F.forward("rnn", x, h0, None, self._W_in, self._W, self._b, self._b_hh, leak=self.leak,
                               training=False, packed=self._packed_weights())[0]
        return y

    def states(self, u: ArrayLike, h0: Optional[ArrayLike] = None, *, washout: int = 0) -> NDArray:
        """The reservoir's states for the input sequence u.

        u: [T, I] or [T, B, I]. h0: the state before u_1, [H] or [B, H] (None:
        zeros). washout: the number of first states to discard (the transient
        from h0; 0 <= washout < T). Returns [T - washout, H] or [T - washout, B, H]:
        h_{washout+1}, ..., h_T.
        """
        x, unbatched = self._input("u", u)
        w = self._washout(washout, x.shape[0])
        X = self._run(x, self._h0(h0, x.shape[1], unbatched))[w:]
        return X[:, 0] if unbatched else X

    def _features(self, x2: NDArray, h2: NDArray) -> Tuple[Optional[NDArray], NDArray]:
        return (x2 if self.use_raw_inputs else None), h2

    def _readout(self, x2: NDArray, h2: NDArray) -> NDArray:
        """y [N, O] (dtype) from inputs x2 [N, I] and states h2 [N, H]."""
        W = self._require_fit("predict")
        I = self.input_size if self.use_raw_inputs else 0
        y = np.empty((h2.shape[0], W.shape[0]), self.dtype)
        for a, b in _chunks(h2.shape[0], W.shape[1]):  # (float32 states times float64 W_out: a float64
            part = h2[a:b] @ W[:, 1 + I:].T             # copy of each chunk, not of all the states at once)
            if I:
                part += x2[a:b] @ W[:, 1:1 + I].T
            part += W[:, 0]
            y[a:b] = part
        return y

    def _require_fit(self, what: str) -> NDArray:
        if self.W_out is None:
            raise ValueError(f"ESN.{what} needs a trained readout: call fit(u, y) first")
        return self.W_out

    # ------------------------------------------------------------- fitting

    def fit(self, u: ArrayLike, y: ArrayLike, *, washout: int = 0,
            ridge: Union[float, Sequence[float]] = 1e-8, validation: float = 0.2,
            h0: Optional[ArrayLike] = None, score: Optional[Callable[[ESN], float]] = None) -> ESN:
        """Fits the readout by ridge regression on the states of u (teacher forcing).

        u: [T, I] or [T, B, I], the input sequence(s); y: [T, O] or [T, B, O],
        the target at each step (e.g. u shifted by one step for one-step-ahead
        prediction). The first ``washout`` steps of every sequence are left out.
        With features Φ (rows [1; u_t; h_t] or [1; h_t], one per remaining step
        and sequence) the readout solves the normal equations

            (Φ^T Φ + ridge P) W_out^T = Φ^T Y

        (P: the identity except for the bias, which is not penalised) with
        ``np.linalg.solve`` (ridge 0: the minimum-norm solution, ``np.linalg.lstsq``);
        Φ^T Φ is accumulated in float64 over chunks of the
        states. Cost: O(N F^2) for N rows, plus O(F^3) per ridge value.

        ridge: a number >= 0, or a sequence of them: a sweep. A sweep fits on
        all but the last ``validation`` fraction of the (post-washout) steps,
        measures the one-step MSE (teacher forced, mean over steps, sequences
        and outputs) on that validation tail for each value, keeps the errors in
        ``validation_errors`` and refits on all the steps with the best value
        (the first on ties). h0: the state before u_1 ([H] or [B, H]).

        score: instead of the validation tail, a callable that rates this ESN
        with each candidate readout (fitted on all the steps, set in ``W_out``
        and ``ridge`` when it is called; lower is better, NaN counts as
        infinity), e.g. the free-running error on held-out data, which
        one-step errors predict poorly for generation. The states and Φ^T Φ
        are computed once for all the candidates; ``ridge`` may then be one
        value or several; ``validation_errors`` holds the scores.
        Returns self.
        """
        x, unbatched = self._input("u", u)
        T, B = x.shape[:2]
        Y = self._targets(y, T, B, unbatched)
        w = self._washout(washout, T)
        ridges, sweep = _ridge_values(ridge)
        frac = _number("validation", validation)
        if not 0 < frac < 1:  # (checked even where unused, as scikit-learn's parameters)
            raise ValueError(f"validation must be in (0, 1), got {frac!r}")
        if score is not None and not callable(score):
            raise TypeError(f"score must be a callable taking the ESN, got {type(score).__name__}")
        X = self._run(x, self._h0(h0, B, unbatched))
        x, X, Y = x[w:], X[w:], Y[w:]
        if score is not None:
            G, C = self._gram(x, X, Y)
            candidates: Dict[float, NDArray] = {}
            errors = {}
            before = self.W_out, self.ridge
            try:
                for r in ridges:
                    if r not in candidates:
                        candidates[r] = _solve(G, C, r)
                        self.W_out, self.ridge = candidates[r].T.copy(), r
                        e = _score_value(score(self))
                        errors[r] = e
            except BaseException:
                self.W_out, self.ridge = before  # a failed fit leaves the readout as it was
                raise
            best = min(errors, key=lambda r: errors[r])
            W = candidates[best]
        elif not sweep:
            G, C = self._gram(x, X, Y)
            W, best, errors = _solve(G, C, ridges[0]), ridges[0], None
        else:
            errors, G, C = self._sweep(x, X, Y, ridges, frac)
            best = min(errors, key=lambda r: errors[r])
            W = _solve(G, C, best)
        self.W_out, self.ridge, self.validation_errors = W.T.copy(), best, errors
        return self

    def ridge_sweep(self, u: ArrayLike, y: ArrayLike, ridges: Sequence[float], *, washout: int = 0,
                    validation: float = 0.2, h0: Optional[ArrayLike] = None) -> Dict[float, float]:
        """The validation MSE of each ridge value, as :meth:`fit` with a sweep measures it,
        without changing the readout. Same arguments as :meth:`fit`; returns {ridge: MSE}."""
        x, unbatched = self._input("u", u)
        T, B = x.shape[:2]
        Y = self._targets(y, T, B, unbatched)
        w = self._washout(washout, T)
        values, sweep = _ridge_values(ridges)
        if not sweep:
            raise TypeError(f"ridges must be a sequence of numbers, got {type(ridges).__name__}")
        frac = _number("validation", validation)
        if not 0 < frac < 1:
            raise ValueError(f"validation must be in (0, 1), got {frac!r}")
        X = self._run(x, self._h0(h0, B, unbatched))
        return self._sweep(x[w:], X[w:], Y[w:], values, frac)[0]

    def _gram(self, x: NDArray, X: NDArray, Y: NDArray) -> Tuple[NDArray, NDArray]:
        x2, h2 = self._features(x.reshape(-1, x.shape[-1]), X.reshape(-1, X.shape[-1]))
        return _gram(x2, h2, Y.reshape(-1, Y.shape[-1]), self.feature_size)

    def _sweep(self, x: NDArray, X: NDArray, Y: NDArray, ridges: List[float],
               frac: float) -> Tuple[Dict[float, float], NDArray, NDArray]:
        """({ridge: validation MSE}, G, C of all the rows) for [n, B, ...] arrays."""
        n = x.shape[0]
        n_val = max(1, int(round(frac * n)))
        if n - n_val < 1:
            raise ValueError(f"a ridge sweep needs at least one training and one validation step after the "
                             f"washout, got {n} step(s) (validation={frac})")
        G_tr, C_tr = self._gram(x[:-n_val], X[:-n_val], Y[:-n_val])
        G_va, C_va = self._gram(x[-n_val:], X[-n_val:], Y[-n_val:])
        Ws = [_solve(G_tr, C_tr, r) for r in ridges]
        W_all = np.concatenate(Ws, axis=1)  # [F, K*O]
        xv, hv = self._features(x[-n_val:].reshape(-1, x.shape[-1]), X[-n_val:].reshape(-1, X.shape[-1]))
        yv = Y[-n_val:].reshape(-1, Y.shape[-1]).astype(np.float64)
        K, O, Fs = len(ridges), yv.shape[1], self.feature_size
        sq = np.zeros(K)
        for a, b in _chunks(hv.shape[0], Fs):
            phi = np.empty((b - a, Fs))
            _fill_features(phi, None if xv is None else xv[a:b], hv[a:b])
            err = (phi @ W_all).reshape(b - a, K, O) - yv[a:b, None, :]
            sq += np.einsum("nko,nko->k", err, err)
        mse = sq / (yv.shape[0] * O)
        errors: Dict[float, float] = {}
        for r, e in zip(ridges, mse):
            errors.setdefault(r, math.inf if math.isnan(e) else float(e))  # (NaN ranks last, as with score=)
        return errors, G_tr + G_va, C_tr + C_va

    # ---------------------------------------------------------- prediction

    def predict(self, u: ArrayLike, h0: Optional[ArrayLike] = None, *, washout: int = 0) -> NDArray:
        """Teacher-forced outputs: y_t = W_out [1; u_t; h_t] for the given inputs u.

        u: [T, I] or [T, B, I]; h0: [H] or [B, H] (None: zeros); washout: first
        outputs to leave out. Returns [T - washout, O] or [T - washout, B, O] (dtype).
        """
        self._require_fit("predict")
        x, unbatched = self._input("u", u)
        w = self._washout(washout, x.shape[0])
        X = self._run(x, self._h0(h0, x.shape[1], unbatched))[w:]
        x = x[w:]
        y = self._readout(x.reshape(-1, x.shape[-1]), X.reshape(-1, X.shape[-1])).reshape(X.shape[:2] + (-1,))
        return y[:, 0] if unbatched else y

    def generate(self, n_steps: int, warmup: ArrayLike, *, h0: Optional[ArrayLike] = None) -> NDArray:
        """Free-running generation: each output is fed back as the next input.

        The reservoir first reads ``warmup`` (the true sequence, [T_w, I] or
        [T_w, B, I], T_w >= 1; from h0, [H] or [B, H], None: zeros). Output k
        (k = 0, ..., n_steps - 1) is then the model's prediction of step T_w + 1 + k:
        output 0 is the readout after the last warmup input, and each later one
        comes from one more reservoir step (:func:`pyrnn.functional.forward` with
        T = 1 and the previous state) whose input is the previous output.
        Needs output_size == input_size and a fitted readout.
        Returns [n_steps, O] or [n_steps, B, O] (dtype).
        """
        self._require_fit("generate")
        if self.output_size != self.input_size:
            raise ValueError(f"generate feeds the outputs back as inputs: it needs output_size == input_size, "
                             f"got output_size {self.output_size} and input_size {self.input_size}")
        n = _positive_int("n_steps", n_steps, allow_zero=True)
        x, unbatched = self._input("warmup", warmup)
        B = x.shape[1]
        h_start = self._h0(h0, B, unbatched)
        out = np.empty((n, B, self.output_size), self.dtype)
        if n:
            X = self._run(x, h_start)
            h, u_t = X[-1], x[-1]
            packed = self._packed_weights()
            for k in range(n):
                if k:
                    step = u_t[None]
                    _, h, _, _ = F.forward("rnn", step, h, None, self._W_in, self._W, self._b, self._b_hh,
                                           leak=self.leak, training=False, packed=packed)
                out[k] = self._readout(u_t, h)
                u_t = out[k]
        return out[:, 0] if unbatched else out

