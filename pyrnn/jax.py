"""JAX functions on pyrnn's C++ kernels: ``lstm``, ``gru`` and ``rnn``.

One layer, one direction, a whole sequence per call, in PyTorch's layout (the
same arguments as :mod:`pyrnn.functional`): x ``[T, B, I]`` time-major,
h0/c0 ``[B, H]``, ``W_ih [G*H, I]``, ``W_hh [G*H, H]``, gate order LSTM
i,f,g,o and GRU r,z,n. They work under ``jax.jit``, ``jax.grad``/``jax.vjp``
and ``jax.vmap``::

    import jax, jax.numpy as jnp
    import pyrnn.jax as rj

    @jax.jit
    def loss(params, x):
        y, h_n, c_n = rj.lstm(x, None, None, params["W_ih"], params["W_hh"], params["b_ih"], params["b_hh"])
        return jnp.mean(y ** 2)

    grads = jax.grad(loss)(params, x)

The kernels run as XLA custom calls (``jax.ffi``, handlers in
csrc/bindings/xla_ffi.cpp) where pyrnn was built with XLA's FFI headers, else
through ``jax.pure_callback`` (:func:`backend` says which); a
``jax.custom_vjp`` rule runs the C++ BPTT. Under differentiation the forward
keeps its activations (the training workspace) as a residual uint8 array that
the backward consumes (:func:`pyrnn.functional.workspace_from_residual`), so a
gradient costs one forward and one backward, as in PyTorch. Gradients reach
x, the initial states and every weight; ``lengths`` is not differentiable.
Where x is not differentiated (data fed to a first layer), the backward does
not compute its gradient (dx = dG W_ih, a quarter of the backward's FLOPs at
I = H): the rule sees which inputs JAX perturbs (``symbolic_zeros``).
The kernels run on the host CPU, so inputs on another device are copied to it
and back. float32 and float64 (``jax_enable_x64``) only, all of one dtype.

``jax.vmap``: without differentiation and with unbatched weights (a
per-example model mapped over a batch), the mapped axis is folded into B:
one kernel call for all elements. Under differentiation, or with batched
weights, it loops, one kernel call per element (each keeps its own
workspace, which per-example gradients need).

``lengths`` ([B] integers in [1, T], optional) gives PyTorch's packed-sequence
results: outputs are zero past each length, final states are each sequence's
own last valid state, and ``reverse=True`` starts each sequence at its own
last valid step.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

try:
    import jax
except ImportError as e:  # (name the extra, not only the module)
    raise ModuleNotFoundError(f"pyrnn.jax needs JAX, which is not importable ({e}): pip install jax "
                              f"(pyrnn's extra: pyrnn[jax])", name="jax") from e
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from . import _core
from . import functional as F
from ._cells import GATES, cell_spec, check_nonlinearity
from ._validation import check_bool, check_forward

__all__ = ["lstm", "gru", "rnn", "backend"]

_NAMES = ("x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh", "W_hr", "lengths")


class _Spec(NamedTuple):
    """The static part of a call (hashable: it keys jit's and custom_vjp's caches)."""

    cell: str
    reverse: bool
    reset_after: bool = True
    nonlinearity: str = "tanh"
    want_dx: bool = True  # the backward's: x is differentiated (set by the custom_vjp rule)


def _host(a):
    return None if a is None else np.asarray(a)


def _host_forward(spec, arrays, training):
    x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths = (_host(a) for a in arrays)
    return F.forward(spec.cell, x, h0, c0, W_ih, W_hh, b_ih, b_hh, nonlinearity=spec.nonlinearity,
                     reset_after=spec.reset_after, W_hr=W_hr, lengths=lengths, reverse=spec.reverse,
                     training=training)


def _options(spec):
    return {"nonlinearity": spec.nonlinearity, "reset_after": spec.reset_after, "reverse": spec.reverse}


def _forward_callback(spec, *arrays):
    y, h_n, c_n, _ = _host_forward(spec, arrays, training=False)
    return (y, h_n) if c_n is None else (y, h_n, c_n)


def _training_callback(spec, nbytes, *arrays):
    """The training forward: its outputs and the workspace as a residual block (bytes) for backward."""
    residual = np.empty(nbytes, np.uint8)
    x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths = (_host(a) for a in arrays)
    y, h_n, c_n, _ = F.forward(spec.cell, x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr=W_hr, lengths=lengths,
                               training=True, residual=residual, **_options(spec))
    return (y, h_n, residual) if c_n is None else (y, h_n, c_n, residual)


def _backward_callback(spec, present, residual, y, *args):  # present: the gradients returned, by name
    arrays, cts = args[:len(_NAMES)], args[len(_NAMES):]
    x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths = (_host(a) for a in arrays)
    ws = F.workspace_from_residual(np.asarray(residual), spec.cell, x, h0, c0, W_ih, W_hh, b_ih, b_hh, y=_host(y), W_hr=W_hr,
                                   lengths=lengths, **_options(spec))
    grads = F.backward(ws, *(_host(c) for c in cts), input_grad=spec.want_dx)
    return tuple(grads[name] for name in present)


def _residual_nbytes(spec, arrays):
    """The residual block's size, from shapes alone (trace time)."""
    x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths = arrays
    T, B, I = x.shape
    return F.residual_nbytes_for(spec.cell, T, B, I, W_hh.shape[0] // GATES[spec.cell],
                                 proj_size=0 if W_hr is None else W_hr.shape[0], dtype=np.dtype(x.dtype),
                                 bias=b_ih is not None, h0=h0 is not None, c0=c0 is not None,
                                 lengths=lengths is not None, nonlinearity=spec.nonlinearity,
                                 reset_after=spec.reset_after)


def _out_shapes(spec, x, h0, W_hh, W_hr):
    T, B, _ = x.shape
    H = W_hh.shape[1] if W_hr is None else W_hr.shape[1]
    H_out = H if W_hr is None else W_hr.shape[0]
    shapes = [jax.ShapeDtypeStruct((T, B, H_out), x.dtype), jax.ShapeDtypeStruct((B, H_out), x.dtype)]
    if spec.cell == "lstm":
        shapes.append(jax.ShapeDtypeStruct((B, H), x.dtype))
    return tuple(shapes)


# ------------------------------------------------- XLA FFI (custom calls) --

_FFI_TARGETS = getattr(_core, "xla_ffi_targets", None)


@functools.lru_cache(maxsize=None)
def _ffi_registered():
    """Registers pyrnn's XLA custom-call targets once; False when this build has none."""
    if not _FFI_TARGETS or not hasattr(jax, "ffi"):
        return False
    for name, capsule in _FFI_TARGETS.items():
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")
    return True


_ffi_registered()  # at import: a jax.export-ed model deserialised in a fresh process finds the targets


def backend():
    """How pyrnn.jax calls the kernels: "ffi" (XLA custom calls, no host callback) or
    "pure_callback" (this build found no XLA FFI headers, see pyrnn.show_config())."""
    return "ffi" if _ffi_registered() else "pure_callback"


_PRESENT = (("h0", 1), ("c0", 2), ("b_ih", 4), ("W_hr", 8), ("lengths", 16))
_NO_DX = 32  # the backward's: x needs no gradient (csrc/bindings/xla_ffi.cpp kNoDx)


def _ffi_operands(spec, arrays):
    """The nine operands (zero-size stand-ins for absent ones) and the handler's attributes."""
    x = arrays[0]
    named = dict(zip(_NAMES, arrays))
    present = sum(bit for name, bit in _PRESENT if named[name] is not None)
    empty = jnp.zeros((0,), x.dtype)
    ops = [empty if a is None else a for a in arrays[:-1]]
    lengths = named["lengths"]
    ops.append(jnp.zeros((0,), jnp.int32) if lengths is None else lengths)
    kind = cell_spec(spec.cell, nonlinearity=spec.nonlinearity, reset_after=spec.reset_after).kind
    attrs = {"cell": np.int64(int(kind)), "present": np.int64(present), "reverse": np.int64(spec.reverse)}
    return ops, attrs


def _ffi_forward(spec, arrays, training):
    x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths = arrays
    # The custom call runs outside Python, where reading the environment could race os.environ's
    # updates: it uses PYRNN_ISA as last read from Python, which this read (at trace time) sets, and
    # the settings read once per process (OMP_NUM_THREADS, ...), which it reads now if not yet read.
    _core.read_settings()
    outs = list(_out_shapes(spec, x, h0, W_hh, W_hr))
    if spec.cell != "lstm":
        outs.append(jax.ShapeDtypeStruct((0,), x.dtype))  # c_n
    nbytes = _residual_nbytes(spec, arrays) if training else 0
    outs.append(jax.ShapeDtypeStruct((nbytes,), jnp.uint8))
    ops, attrs = _ffi_operands(spec, arrays)
    ops, outs = _vary_results(ops, outs)
    y, h_n, c_n, residual = jax.ffi.ffi_call("pyrnn_sequence_fwd", outs, vmap_method="sequential")(
        *ops, **attrs, training=np.int64(training))
    return ((y, h_n) if spec.cell != "lstm" else (y, h_n, c_n)), residual


def _ffi_backward(spec, residual, y, arrays, cts):
    x = arrays[0]
    ops, attrs = _ffi_operands(spec, arrays)
    dy, dh_n, *dc_n = cts
    dc_n = dc_n[0] if dc_n else jnp.zeros((0,), x.dtype)
    # dh0 and dc0 always come out of the kernel (zeros-initial states have gradients too); they are
    # dropped below when absent. Other absent inputs get zero-size outputs.
    states = _out_shapes(spec, x, arrays[1], arrays[4], arrays[7])[1:]
    shapes = [jax.ShapeDtypeStruct(a.shape if a is not None else (0,), x.dtype) for a in arrays[:-1]]
    shapes[1:1 + len(states)] = states
    if not spec.want_dx:  # dx zero-size and not computed (the handler's kNoDx bit)
        shapes[0] = jax.ShapeDtypeStruct((0,), x.dtype)
        attrs["present"] = np.int64(attrs["present"] | _NO_DX)
    operands, shapes = _vary_results([residual, *ops, y, dy, dh_n, dc_n], shapes)
    grads = jax.ffi.ffi_call("pyrnn_sequence_bwd", shapes, vmap_method="sequential")(*operands, **attrs)
    return _invariant_like(tuple(g if w else None for g, w in zip(grads, _wanted(spec, arrays))), arrays[:-1])


def _wanted(spec, arrays):
    """Which of the gradients of x, the states and the weights the backward returns: those of the
    inputs given, x's only where it is differentiated."""
    return [a is not None and (k > 0 or spec.want_dx) for k, a in enumerate(arrays[:-1])]


def _pure_callback(fn, shapes, *args):
    """jax.pure_callback (one call per element under vmap); under shard_map's varying-axis types its
    operands and results vary over the axes any operand varies over, as _vary_results's (None
    arguments pass through)."""
    axes = _union_axes(args)
    outs = jax.pure_callback(fn, tuple(shapes), *(_pvary(a, axes) for a in args), vmap_method="sequential")
    return tuple(_pvary(o, axes) for o in outs)


def _pvary(a, axes):
    """``a`` typed as varying over ``axes`` (a no-op for None, no axes, or axes it varies over already)."""
    missing = () if a is None else tuple(sorted(axes - _varying_axes(a)))
    return jax.lax.pcast(a, missing, to="varying") if missing else a


# ------------------------------------------------------------- the rule --

def _infer(spec, arrays):
    """The inference call (no gradient taken), with a batching rule that folds a vmapped axis into B."""
    present = tuple(a is not None for a in arrays)
    return _folding_infer(spec, present)(*(a for a in arrays if a is not None))


def _with_absent(args, present):
    it = iter(args)
    return [next(it) if p else None for p in present]


@functools.lru_cache(maxsize=None)
def _folding_infer(spec, present):
    """A custom_vmap function of the present arrays (cached per call signature). Under jax.vmap with
    the weights unbatched, the mapped axis of x, the states and lengths becomes part of the batch: one
    kernel call for all of it (equal to one call per element up to rounding: rows then fall into other
    register tiles of the GEMMs). With a batched weight it maps one call per element."""

    def run(*args):
        arrays = _with_absent(args, present)
        if _ffi_registered():
            return _ffi_forward(spec, arrays, training=False)[0]
        x, h0, _, W_ih, W_hh, _, _, W_hr, _ = arrays
        return _pure_callback(functools.partial(_forward_callback, spec), _out_shapes(spec, x, h0, W_hh, W_hr),
                              *arrays)

    fn = jax.custom_batching.custom_vmap(run)

    @fn.def_vmap
    def rule(axis_size, in_batched, *args):
        arrays, batched = _with_absent(args, present), _with_absent(in_batched, present)
        outs_n = 3 if spec.cell == "lstm" else 2
        if any(batched[3:8]):  # a weight differs per element: one call each
            def one(i):
                return fn(*(a[i] if b else a for a, b in zip(args, in_batched)))
            if axis_size == 0:  # (lax.map's body would index an element that does not exist)
                element = [jax.ShapeDtypeStruct(a.shape[1:], a.dtype) if b else a for a, b in zip(args, in_batched)]
                return tuple(jnp.zeros((0,) + o.shape, o.dtype) for o in jax.eval_shape(fn, *element)), \
                    (True,) * outs_n
            return jax.lax.map(one, jnp.arange(axis_size)), (True,) * outs_n
        x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths = arrays
        V = axis_size
        if not batched[0]:
            x = jnp.broadcast_to(x, (V,) + x.shape)
        T, B = x.shape[1], x.shape[2]

        def per_entry(a, b):  # [V, B, ...] (broadcast when unbatched) -> [V*B, ...]
            if a is None:
                return None
            a = a if b else jnp.broadcast_to(a, (V,) + a.shape)
            return a.reshape((V * B,) + a.shape[2:])

        folded = (jnp.moveaxis(x, 0, 1).reshape(T, V * B, x.shape[3]), per_entry(h0, batched[1]),
                  per_entry(c0, batched[2]), W_ih, W_hh, b_ih, b_hh, W_hr, per_entry(lengths, batched[8]))
        outs = fn(*(a for a in folded if a is not None))
        y = jnp.moveaxis(outs[0].reshape(T, V, B, outs[0].shape[-1]), 1, 0)  # (-1 fails on zero elements)
        return (y,) + tuple(o.reshape((V, B) + o.shape[1:]) for o in outs[1:]), (True,) * outs_n

    return fn


def _outputs_typed_like(outs, x):
    """(y, h_n[, c_n]) sharded as x is over explicit mesh axes: y over its T and B axes, the states over
    B (the custom calls' results are typed as replicated; jax's own ops would shard them so)."""
    spec = _explicit_spec(x)
    if spec is None:
        return outs
    t_axis, b_axis = (tuple(spec) + (None, None))[:2]
    P = jax.sharding.PartitionSpec
    return (jax.sharding.reshard(outs[0], P(t_axis, b_axis, None)),) + tuple(
        jax.sharding.reshard(o, P(b_axis, None)) for o in outs[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sequence(spec, x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths):
    return _outputs_typed_like(_infer(spec, (x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths)), x)


def _first_order_only(fn):
    """``fn(spec, ...)`` as a jax.custom_jvp function whose JVP rule raises. The kernels have one
    derivative, the custom_vjp rule below; differentiating its forward or backward pass again (jax.hessian,
    grad of grad, jvp of grad) would otherwise fail inside JAX with ffi_call's or pure_callback's
    "cannot be differentiated ... use jax.custom_jvp", which names neither pyrnn nor the cause. (With
    every tangent zero JAX skips the rule: what differentiated before still does.)"""
    wrapped = jax.custom_jvp(fn, nondiff_argnums=(0,))

    def refuse(spec, primals, tangents):
        raise NotImplementedError(
            f"pyrnn.jax.{spec.cell} has first derivatives in reverse mode only (jax.grad, jax.vjp, jax.jacrev, "
            f"jax.value_and_grad): a second derivative (jax.hessian, a grad of a grad, a jvp of a grad) needs "
            f"the derivative of pyrnn's backward kernel, which it does not have; use a lax.scan implementation "
            f"for those")

    wrapped.defjvp(refuse)
    return wrapped


@_first_order_only
def _training_forward(spec, *arrays):
    """The forward under differentiation: (outputs, the residual holding the workspace)."""
    if _ffi_registered():
        return _ffi_forward(spec, arrays, training=True)
    x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths = arrays
    nbytes = _residual_nbytes(spec, arrays)
    shapes = _out_shapes(spec, x, h0, W_hh, W_hr) + (jax.ShapeDtypeStruct((nbytes,), jnp.uint8),)
    *outs, residual = _pure_callback(functools.partial(_training_callback, spec, nbytes), shapes, *arrays)
    return tuple(outs), residual


@_first_order_only
def _backward(spec, residual, y, arrays, cts):
    """The gradients of x, the states and the weights (None where the input was None)."""
    if _ffi_registered():
        return _ffi_backward(spec, residual, y, arrays, cts)
    wanted = _wanted(spec, arrays)
    present = tuple(name for name, w in zip(_NAMES[:-1], wanted) if w)
    shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a, w in zip(arrays[:-1], wanted) if w)
    grads = iter(_pure_callback(functools.partial(_backward_callback, spec, present), shapes, residual, y,
                                *arrays, *cts))
    grads = tuple(next(grads) if w else None for w in wanted)
    return _invariant_like(grads, arrays[:-1])


def _sequence_fwd(spec, *primals):
    # symbolic_zeros: each array comes as a CustomVJPPrimal saying whether JAX differentiates it; x's
    # flag goes to the backward as the residuals' structure (a tuple of one or none), which is static
    arrays = tuple(None if p is None else p.value for p in primals)
    outs, residual = _training_forward(spec, *arrays)
    return _outputs_typed_like(outs, arrays[0]), (residual, outs, arrays, (None,) if primals[0].perturbed else ())


def _explicit_spec(a):
    """The PartitionSpec of ``a``'s type where it is sharded over mesh axes of the Explicit type (JAX
    0.10's jax.make_mesh default, under jax.set_mesh), else None."""
    sharding = getattr(jax.typeof(a), "sharding", None) if hasattr(jax, "typeof") else None
    spec, mesh = getattr(sharding, "spec", None), getattr(sharding, "mesh", None)
    types = dict(zip(getattr(mesh, "axis_names", ()), getattr(mesh, "axis_types", ())))
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    if spec is None or explicit is None:
        return None
    names = [n for p in spec if p is not None for n in (p if isinstance(p, tuple) else (p,))]
    return spec if names and all(types.get(n) == explicit for n in names) else None


def _typed_like(grads, arrays):
    """Each gradient given its primal's explicit sharding: the custom calls' results are typed as
    replicated, and a custom_vjp's gradient must have its primal's type (under explicit sharding JAX
    otherwise raised a type error naming neither pyrnn nor the cause)."""
    out = []
    for g, a in zip(grads, arrays):
        spec = None if g is None else _explicit_spec(a)
        out.append(g if spec is None else jax.sharding.reshard(g, spec))
    return tuple(out)


def _sequence_bwd(spec, saved, cts):
    residual, outs, arrays, want_dx = saved
    # an output nobody used has a symbolic zero cotangent: zeros like that output, as the kernel reads it
    cts = tuple(jnp.zeros_like(o) if isinstance(c, SymbolicZero) else c for c, o in zip(cts, outs))
    grads = _backward(spec._replace(want_dx=bool(want_dx)), residual, outs[0], arrays, cts)
    return _typed_like(grads, arrays[:-1]) + (None,)  # lengths: no gradient


_sequence.defvjp(_sequence_fwd, _sequence_bwd, symbolic_zeros=True)


def _varying_axes(a):
    """The shard_map mesh axes over which ``a`` varies (its type's varying manual axes), or an empty set.
    (JAX 0.10 names them aval.manual_axis_type.varying; earlier releases aval.vma.)"""
    aval = jax.typeof(a) if hasattr(jax, "typeof") else getattr(a, "aval", None)
    varying = getattr(getattr(aval, "manual_axis_type", None), "varying", None)
    if varying is None:
        varying = getattr(aval, "vma", None)
    return frozenset(varying or ())


def _union_axes(arrays):
    """The mesh axes any of ``arrays`` (None skipped) varies over."""
    return frozenset().union(*(_varying_axes(a) for a in arrays if a is not None))


def _typed_manual_axes_supported():
    """Whether this JAX has the API _vary_results types results with (jax.lax.pcast: JAX 0.10)."""
    return hasattr(jax, "typeof") and hasattr(jax.lax, "pcast")


def _refuse_varying_manual_axes(arrays):
    """Under shard_map with check_vma=True (the default), an older JAX whose varying-axis types the
    custom calls cannot give their results (outputs would be typed as replicated): a clear error."""
    axes = _union_axes(arrays)
    if axes and not _typed_manual_axes_supported():
        raise NotImplementedError(
            f"pyrnn.jax under shard_map with check_vma=True (inputs varying over mesh axes {sorted(axes)}) needs "
            f"JAX 0.10 or later: pass check_vma=False to shard_map (results and gradients are then right), or "
            f"use jax.pmap")


def _vary_results(ops, shapes):
    """Under shard_map's varying-axis types: every operand made varying over the axes any of them
    varies over, and the results typed as varying over those axes too (each device computes its own);
    elsewhere ``ops`` and ``shapes`` as given."""
    axes = _union_axes(ops)
    if not axes:
        return ops, shapes
    ops = [_pvary(o, axes) for o in ops]
    like = jax.typeof(next(o for o in ops if _varying_axes(o)))
    shapes = [like.update(shape=s.shape, dtype=s.dtype,
                          sharding=like.sharding.update(spec=jax.sharding.PartitionSpec(*([None] * len(s.shape)))))
              for s in shapes]
    return ops, shapes


def _invariant_like(grads, arrays):
    """Gradients of operands that do not vary over some mesh axes, summed over those axes (as JAX
    does for its own ops' cotangents under shard_map)."""
    out = []
    for g, a in zip(grads, arrays):
        extra = () if g is None else tuple(sorted(_varying_axes(g) - _varying_axes(a)))
        out.append(jax.lax.psum(g, extra) if extra else g)
    return tuple(out)


def _check_static_shape(name, a):
    """The workspace's size and the custom calls' result shapes are computed from the sizes at trace
    time: symbolic dimensions (jax.export's shape polymorphism) are refused here, in words."""
    if a is not None and not all(isinstance(d, (int, np.integer)) for d in a.shape):
        raise ValueError(f"{name} must have a static shape (pyrnn.jax sizes its workspace at trace time; "
                         f"jax.export's symbolic dimensions are not supported), got shape {tuple(a.shape)}")


def _prepare(cell, x, states, W_ih, W_hh, b_ih, b_hh, W_hr, lengths):
    """Checks shapes and dtypes at trace time (values of lengths too when they are concrete)."""
    arrays = {"x": x, **states, "W_ih": W_ih, "W_hh": W_hh, "b_ih": b_ih, "b_hh": b_hh, "W_hr": W_hr}
    arrays = {k: None if v is None else jnp.asarray(v) for k, v in arrays.items()}
    for name, a in arrays.items():
        if a is not None and a.dtype not in (jnp.float32, jnp.float64):
            raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
        _check_static_shape(name, a)
    # zero-strided stand-ins: the NumPy checks see shapes and dtypes without copying any data
    stand_ins = {k: None if v is None else np.broadcast_to(np.zeros((), v.dtype), v.shape) for k, v in arrays.items()}
    _refuse_varying_manual_axes(arrays.values())
    lengths_check = None
    if lengths is not None:
        try:  # the caller's values, before any narrowing (2**32 + 3 as int32 would be 3)
            lengths_check = np.asarray(lengths)
        except jax.errors.TracerArrayConversionError:  # traced: its shape is checked, its values cannot be
            pass
        lengths = jnp.asarray(lengths)
        if not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise TypeError(f"lengths must be an integer array, got dtype {lengths.dtype}")
        _check_static_shape("lengths", lengths)
        if lengths.dtype not in (jnp.int32, jnp.int64):  # the kernels read int32 or int64
            # uint64 (jax_enable_x64) to int64: traced values past the range then turn negative and are
            # refused by the kernel, whereas int32 2**32 + 3 would wrap to a valid 3
            lengths = lengths.astype(jnp.int64 if lengths.dtype.itemsize == 8 else jnp.int32)
        if lengths_check is None:
            x_shape = arrays["x"].shape
            lengths_check = np.full(lengths.shape, x_shape[0] if len(x_shape) == 3 else 1)
    check_forward(cell, stand_ins["x"], {k: stand_ins[k] for k in states}, stand_ins["W_ih"], stand_ins["W_hh"],
                  stand_ins["b_ih"], stand_ins["b_hh"], lengths_check, W_hr=stand_ins["W_hr"])
    return arrays, lengths


def lstm(x, h0, c0, W_ih, W_hh, b_ih=None, b_hh=None, *, lengths=None, reverse=False, W_hr=None):
    """LSTM over a sequence (gates i, f, g, o). Returns (y [T, B, H], h_n [B, H], c_n [B, H]).

    h0/c0 may be None (zeros). W_hr ([P, H], optional) is PyTorch's proj_size:
    h is then P wide (W_hh [4H, P], y, h0 and h_n [.., P]).
    """
    a, lengths = _prepare("lstm", x, {"h0": h0, "c0": c0}, W_ih, W_hh, b_ih, b_hh, W_hr, lengths)
    spec = _Spec("lstm", check_bool("reverse", reverse))
    return _sequence(spec, a["x"], a["h0"], a["c0"], a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"], a["W_hr"], lengths)


def gru(x, h0, W_ih, W_hh, b_ih=None, b_hh=None, *, reset_after=True, lengths=None, reverse=False):
    """GRU over a sequence (gates r, z, n). Returns (y [T, B, H], h_n [B, H]).

    reset_after=True is PyTorch's GRU; False is Cho et al. v3 (Keras
    reset_after=False): n = tanh(W_in x + b_in + W_hn (r * h) + b_hn).
    """
    a, lengths = _prepare("gru", x, {"h0": h0}, W_ih, W_hh, b_ih, b_hh, None, lengths)
    spec = _Spec("gru", check_bool("reverse", reverse), reset_after=check_bool("reset_after", reset_after))
    return _sequence(spec, a["x"], a["h0"], None, a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"], None, lengths)


def rnn(x, h0, W_ih, W_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", lengths=None, reverse=False):
    """Elman RNN over a sequence: h' = tanh|relu(W_ih x + b_ih + W_hh h + b_hh). Returns (y, h_n)."""
    check_nonlinearity(nonlinearity)
    a, lengths = _prepare("rnn", x, {"h0": h0}, W_ih, W_hh, b_ih, b_hh, None, lengths)
    spec = _Spec("rnn", check_bool("reverse", reverse), nonlinearity=nonlinearity)
    return _sequence(spec, a["x"], a["h0"], None, a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"], None, lengths)
