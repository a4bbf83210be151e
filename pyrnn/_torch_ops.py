"""pyrnn's sequence kernels as PyTorch custom operators (``torch.library``).

Four operators, registered when this module is imported (``pyrnn.torch`` imports it):
``pyrnn::rnn_layer`` and ``pyrnn::rnn_layer_backward`` (below) for the LSTM, GRU and
RNN, and ``pyrnn::layernorm_layer`` and ``pyrnn::layernorm_layer_backward`` for the
layer-normalised LSTM and GRU (described, with how their backward finds the forward's
workspace, in the section "layer-normalised cells" further down).

``pyrnn::rnn_layer(Tensor x, Tensor? h0, Tensor? c0, Tensor W_ih, Tensor W_hh,
Tensor? b_ih, Tensor? b_hh, Tensor? W_hr, Tensor? lengths, Tensor? h_mask,
str cell, str nonlinearity, bool reset_after, bool reverse, bool need_residual,
Tensor? zoneout_h=None, Tensor? zoneout_c=None) -> (Tensor y, Tensor h_n, Tensor c_n, Tensor residual)``
    One layer, one direction, the whole sequence in C++. x [T, B, I]
    time-major; h0 [B, H_out] or None (zeros); c0 [B, H] (LSTM) or None;
    W_ih [G*H, I]; W_hh [G*H, H_out]; W_hr [H_out, H] (LSTM proj_size) or None;
    lengths int64 [B] (CPU) or None (all T); h_mask [B, H_out] (recurrent
    dropout, already scaled) or None; cell "lstm", "gru" or "rnn"; nonlinearity
    "tanh" or "relu" (rnn); reset_after (gru); zoneout_h [T, B, H_out] and
    zoneout_c [T, B, H] (LSTM), or None: zoneout masks (per step and unit, the
    weight kept of the previous state; see :func:`pyrnn.functional.lstm_forward`),
    last and optional so that calls without them keep their form. H_out =
    W_hh.shape[1] (the projection size with W_hr, else H).
    Returns y [T, B, H_out], h_n [B, H_out], c_n ([B, H] for the LSTM, an empty
    tensor of shape [0] for the GRU and RNN) and residual: with need_residual,
    the training workspace the backward reads (uint8 [F.residual_nbytes(...)],
    written by the C++ forward in place, no copy); without, the inference kernel
    runs (no workspace kept) and residual is an empty uint8 tensor of shape [0].

``pyrnn::rnn_layer_backward(<the same 10 tensors>, Tensor y, Tensor residual, Tensor? grad_y,
Tensor? grad_h_n, Tensor? grad_c_n, <the same 4 options>, Tensor? zoneout_h=None, Tensor? zoneout_c=None,
bool want_dx=True) -> (Tensor x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr)``
    The gradients of rnn_layer's tensor inputs, from rnn_layer's output y and
    residual: the C++ BPTT over the workspace in ``residual``
    (``F.workspace_from_residual``), without running the forward again. An
    empty residual (a forward with need_residual=False that is differentiated
    anyway) makes it rerun the forward in training mode first, so the
    gradients stay right at the cost of a second forward. A gradient of an
    input that was None is an empty tensor of shape [0]. Omitted grad_* are zeros. The
    masks (lengths, h_mask, zoneout_*) get no gradient. want_dx=False skips x's
    gradient (dx = dG W_ih, a quarter of the backward's FLOPs at I = H) and returns
    an empty tensor of shape [0] in its place; the autograd formula passes it when
    x needs no gradient (data fed to a first layer).

rnn_layer has an autograd formula (rnn_layer_backward; it saves the inputs, y
and residual), fake (meta) kernels for both (the residual's size is symbolic in T
and B, so dynamic shapes trace), so ``torch.compile`` (fullgraph),
``torch.export`` and AOTAutograd trace them, and vmap rules: without
need_residual, rnn_layer folds a vmapped dimension of x / h0 / c0 / lengths /
h_mask / zoneout masks into the batch (one kernel call); with it, or when a weight is vmapped
(e.g. ``torch.func.stack_module_state`` ensembles), it loops over the vmapped
dimension and stacks the per-sample residuals (a folded batch's workspace
cannot give per-sample weight gradients); rnn_layer_backward loops
(per-sample gradients: ``vmap(grad(...))``), one sample's residual per call.
Differentiating rnn_layer_backward (double backward) raises a RuntimeError.
All outputs are fresh tensors (never views of the inputs or of each other).
"""

import weakref

import numpy as np
import torch
import torch.autograd.forward_ad as _forward_ad

from . import functional as F
from ._cells import BY_KIND, GATES

__all__ = ["rnn_layer", "rnn_layer_backward", "RnnLayerFunction", "layernorm_layer", "layernorm_layer_backward",
           "LayerNormLayerFunction", "DOUBLE_BACKWARD"]

DOUBLE_BACKWARD = (
    "pyrnn.torch: double backward is not supported: the C++ BPTT that computes these gradients is not "
    "itself differentiable (create_graph=True through a pyrnn module, then differentiating the "
    "gradients, e.g. gradient penalties, Hessian-vector products or MAML). Use the torch.nn module "
    "for higher-order derivatives."
)

FORWARD_AD = ("pyrnn: forward-mode AD (torch.autograd.forward_ad, torch.func.jvp, jacfwd) is not implemented by "
              "pyrnn's kernels; use reverse mode (backward, torch.func.vjp, jacrev)")


class NoForwardAD:
    """Base of pyrnn's autograd Functions: forward-mode AD raises FORWARD_AD (torch's own message, with
    gradients on, would ask the caller to implement jvp)."""

    @staticmethod
    def jvp(ctx, *tangents):
        raise NotImplementedError(FORWARD_AD)

_TENSORS = ("Tensor x, Tensor? h0, Tensor? c0, Tensor W_ih, Tensor W_hh, Tensor? b_ih, Tensor? b_hh, "
            "Tensor? W_hr, Tensor? lengths, Tensor? h_mask")
_OPTIONS = "str cell, str nonlinearity, bool reset_after, bool reverse"
_ZONEOUT = "Tensor? zoneout_h=None, Tensor? zoneout_c=None"
_GRAD_NAMES = ("x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh", "W_hr")
_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _np(t):
    """NumPy view (no copy) of a CPU tensor; None stays None. A forward-mode AD tangent
    (torch.autograd.forward_ad) raises: the kernels would drop it."""
    if t is None:
        return None
    if _forward_ad._current_level >= 0 and _forward_ad.unpack_dual(t).tangent is not None:
        raise NotImplementedError(FORWARD_AD)
    if t.requires_grad:  # (.numpy() refuses it; a detach costs a small step's call ~1.4 us, so only then)
        t = t.detach()
    if t.is_neg() or t.is_conj():  # (a lazy negation or conjugation: .numpy() refuses it)
        t = t.resolve_neg().resolve_conj()
    return t.numpy()


def _lengths(t):
    return None if t is None else np.ascontiguousarray(t.detach().numpy(), dtype=np.int64)


def _check_cell(cell):
    if cell not in GATES:
        raise ValueError(f"pyrnn::rnn_layer: cell must be one of {sorted(GATES)}, got {cell!r}")


def _residual_nbytes(x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths, h_mask, cell, nonlinearity, reset_after):
    """Bytes of rnn_layer's residual, from shapes alone (T and B may be SymInts: the fake
    kernel sizes it with these too, so the real and fake residuals always agree)."""
    if x.dtype not in _NP_DTYPES:
        raise TypeError(f"pyrnn::rnn_layer: x must be float32 or float64, got {x.dtype}")
    # (Sizes below come from these shapes: a weight of another rank, say one substituted through
    # torch.func.functional_call, must fail here as the kernel's own checks word it.)
    for name, t, dims in (("x", x, 3), ("h0", h0, 2), ("c0", c0, 2), ("W_ih", W_ih, 2), ("W_hh", W_hh, 2),
                          ("b_ih", b_ih, 1), ("b_hh", b_hh, 1), ("W_hr", W_hr, 2)):
        if t is not None and t.dim() != dims:
            raise ValueError(f"pyrnn::rnn_layer: {name} must be {dims}-D, got {t.dim()}-D of shape {tuple(t.shape)}")
    return F.residual_nbytes_for(
        cell, x.shape[0], x.shape[1], W_ih.shape[1], W_hh.shape[0] // GATES[cell],
        proj_size=0 if W_hr is None else W_hr.shape[0], dtype=_NP_DTYPES[x.dtype],
        bias=b_ih is not None or b_hh is not None, h0=h0 is not None, c0=c0 is not None,
        h_mask=h_mask is not None, lengths=lengths is not None, nonlinearity=nonlinearity, reset_after=reset_after)


def _kernel(x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths, h_mask, cell, nonlinearity, reset_after, reverse,
            training, residual=None, zoneout_h=None, zoneout_c=None):
    _check_cell(cell)
    return F.forward(cell, _np(x), _np(h0), _np(c0), _np(W_ih), _np(W_hh), _np(b_ih), _np(b_hh),
                     nonlinearity=nonlinearity, reset_after=reset_after, W_hr=_np(W_hr), h_mask=_np(h_mask),
                     lengths=_lengths(lengths), reverse=reverse, training=training, residual=residual,
                     zoneout_h=_np(zoneout_h), zoneout_c=_np(zoneout_c))


def _fresh(arrays, inputs):
    """Tensors of the kernel's output arrays, copied where one shares memory with an
    input or an earlier output (an operator's outputs must not alias anything)."""
    taken = [a for a in (_np(t) for t in inputs if t is not None) if a.size]
    out = []
    for a in arrays:
        if any(np.may_share_memory(a, b) for b in taken):
            a = a.copy()
        taken.append(a)
        out.append(torch.from_numpy(a))
    return out


# ------------------------------------------------------------- forward --

@torch.library.custom_op("pyrnn::rnn_layer", mutates_args=(), device_types="cpu",
                         schema=f"({_TENSORS}, {_OPTIONS}, bool need_residual, {_ZONEOUT}) -> "
                                "(Tensor, Tensor, Tensor, Tensor)")
def rnn_layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths, h_mask, cell, nonlinearity, reset_after, reverse,
              need_residual, zoneout_h=None, zoneout_c=None):
    _check_cell(cell)
    tensors = (x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths, h_mask)
    zoneout = {"zoneout_h": zoneout_h, "zoneout_c": zoneout_c}
    if need_residual:  # the training kernel writes its workspace into this tensor's memory
        # Zeros, not empty: the kernel leaves alignment padding and the steps past lengths unwritten,
        # and an operator's output must not depend on what that memory held before.
        residual = torch.zeros(_residual_nbytes(*tensors, cell, nonlinearity, reset_after), dtype=torch.uint8)
        y, h_n, c_n, _ = _kernel(*tensors, cell, nonlinearity, reset_after, reverse, training=True,
                                 residual=residual.numpy(), **zoneout)
    else:
        residual = torch.empty((0,), dtype=torch.uint8)
        y, h_n, c_n, _ = _kernel(*tensors, cell, nonlinearity, reset_after, reverse, training=False, **zoneout)
    if c_n is None:
        c_n = np.empty((0,), dtype=y.dtype)
    return (*_fresh((y, h_n, c_n), tensors + (zoneout_h, zoneout_c, residual)), residual)


@rnn_layer.register_fake
def _rnn_layer_fake(x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths, h_mask, cell, nonlinearity, reset_after,
                    reverse, need_residual, zoneout_h=None, zoneout_c=None):
    _check_cell(cell)
    torch._check(x.dim() == 3, lambda: f"pyrnn::rnn_layer: x must be [T, B, I], got {x.dim()}-D")
    T, B = x.shape[0], x.shape[1]
    H_out = W_hh.shape[1]
    H = W_hh.shape[0] // GATES[cell]
    c_n = x.new_empty((B, H)) if cell == "lstm" else x.new_empty((0,))
    nbytes = (_residual_nbytes(x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths, h_mask, cell, nonlinearity,
                               reset_after) if need_residual else 0)
    return x.new_empty((T, B, H_out)), x.new_empty((B, H_out)), c_n, x.new_empty((nbytes,), dtype=torch.uint8)


# ------------------------------------------------------------ backward --

def _residual_array(residual):
    """A NumPy view of residual as the C++ reads it (C-contiguous, 16-byte aligned)."""
    r = residual.detach()
    if not r.is_contiguous() or r.data_ptr() % 16:
        r = r.clone(memory_format=torch.contiguous_format)
        if r.data_ptr() % 16:  # the CPU allocator aligns to 64; an offset view of a clone cannot happen
            raise ValueError("pyrnn::rnn_layer_backward: residual is not 16-byte aligned")
    return r.numpy()


@torch.library.custom_op(
    "pyrnn::rnn_layer_backward", mutates_args=(), device_types="cpu",
    schema=f"({_TENSORS}, Tensor y, Tensor residual, Tensor? grad_y, Tensor? grad_h_n, Tensor? grad_c_n, "
           f"{_OPTIONS}, {_ZONEOUT}, bool want_dx=True) -> "
           "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
def rnn_layer_backward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths, h_mask, y, residual, grad_y, grad_h_n,
                       grad_c_n, cell, nonlinearity, reset_after, reverse, zoneout_h=None, zoneout_c=None,
                       want_dx=True):
    _check_cell(cell)
    tensors = (x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths, h_mask)
    if residual.numel():
        ws = F.workspace_from_residual(
            _residual_array(residual), cell, _np(x), _np(h0), _np(c0), _np(W_ih), _np(W_hh), _np(b_ih), _np(b_hh),
            y=_np(y), nonlinearity=nonlinearity, reset_after=reset_after, W_hr=_np(W_hr), h_mask=_np(h_mask),
            lengths=_lengths(lengths), reverse=reverse, zoneout_h=_np(zoneout_h), zoneout_c=_np(zoneout_c))
    else:  # rnn_layer ran with need_residual=False: rebuild the workspace with a training forward
        *_, ws = _kernel(*tensors, cell, nonlinearity, reset_after, reverse, training=True, zoneout_h=zoneout_h,
                         zoneout_c=zoneout_c)
    g = F.backward(ws, _np(grad_y), _np(grad_h_n), _np(grad_c_n) if cell == "lstm" else None,
                   input_grad=bool(want_dx))
    empty = np.empty((0,), dtype=ws.dtype)
    grads = [empty.copy() if t is None or g[k] is None else g[k] for k, t in zip(_GRAD_NAMES, tensors)]
    return tuple(_fresh(grads, tensors + (y, residual, grad_y, grad_h_n, grad_c_n, zoneout_h, zoneout_c)))


@rnn_layer_backward.register_fake
def _rnn_layer_backward_fake(x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths, h_mask, y, residual, grad_y,
                             grad_h_n, grad_c_n, cell, nonlinearity, reset_after, reverse, zoneout_h=None,
                             zoneout_c=None, want_dx=True):
    _check_cell(cell)
    return tuple(x.new_empty((0,)) if t is None or (k == 0 and not want_dx)
                 else torch.empty_like(t, memory_format=torch.contiguous_format)
                 for k, t in enumerate((x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr)))


# ------------------------------------------------------------ autograd --

# rnn_layer's arguments: 10 tensors (0-9), the 4 options (10-13), need_residual (14), the zoneout masks (15, 16)
_N_ARGS = 17


def _zoneout_args(inputs):
    """rnn_layer's zoneout masks (None where not given) from its inputs."""
    return tuple(inputs[15:17]) + (None,) * (_N_ARGS - max(len(inputs), 15))


def _save(ctx, inputs, output):
    # the inputs, y, the residual and the zoneout masks (the backward rebuilds the workspace from all of them)
    ctx.save_for_backward(*inputs[:10], output[0], output[3], *_zoneout_args(inputs))
    ctx.options = inputs[10:14]


def _backward_args(ctx, grad_y, grad_h_n, grad_c_n):
    """(rnn_layer_backward's arguments, the saved forward inputs) from a _save'd ctx."""
    saved = ctx.saved_tensors
    lstm = ctx.options[0] == "lstm"
    # want_dx: x's gradient only when autograd asks for it
    return ((*saved[:12], grad_y, grad_h_n, grad_c_n if lstm else None, *ctx.options, *saved[12:14],
             bool(ctx.needs_input_grad[0])), saved[:10])


def _input_grads(ctx, grads, inputs):
    """The gradients of rnn_layer's _N_ARGS arguments: the 8 differentiable tensors', None for the rest."""
    out = [g if need and t is not None else None for g, t, need in zip(grads, inputs, ctx.needs_input_grad)]
    return (*out, *(None,) * (len(ctx.needs_input_grad) - len(out)))


def _no_double_backward(ctx, *grads):
    raise RuntimeError(DOUBLE_BACKWARD)


def _register_autograd(op, op_backward, save, backward_args):
    """The autograd of a forward operator ``op`` whose backward is the operator ``op_backward`` (which
    itself refuses double backward). ``save(ctx, inputs, output)`` saves what the backward needs;
    ``backward_args(ctx, grad_y, grad_h_n, grad_c_n)`` returns (op_backward's arguments, the inputs)."""

    def setup_context(ctx, inputs, output):
        save(ctx, inputs, output)
        ctx.set_materialize_grads(False)  # unused outputs give None, which the kernel reads as zeros

    def backward(ctx, grad_y, grad_h_n, grad_c_n, grad_residual):
        args, inputs = backward_args(ctx, grad_y, grad_h_n, grad_c_n)
        return _input_grads(ctx, op_backward(*args), inputs)

    op.register_autograd(backward, setup_context=setup_context)
    op_backward.register_autograd(_no_double_backward, setup_context=lambda ctx, inputs, output: None)


_register_autograd(rnn_layer, rnn_layer_backward, _save, _backward_args)


# -------------------------------------------------------- torch.func --
#
# torch.func transforms refuse the autograd.Function that register_autograd
# generates (it has no setup_context staticmethod: pytorch/pytorch#168393,
# #179652), so under them the operators are called through these two.

def _func_function(name, op, op_backward, save, backward_args):
    """An autograd.Function running the operator ``op`` with its backward operator ``op_backward``
    (through a second Function that refuses double backward), usable under torch.func transforms
    (grad, vjp, vmap and nestings). ``save(ctx, inputs, output)`` saves what the backward needs;
    ``backward_args(ctx, grad_y, grad_h_n, grad_c_n)`` returns (op_backward's arguments, the inputs)."""

    class Backward(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(*args):
            return op_backward(*args)

        @staticmethod
        def setup_context(ctx, inputs, output):
            pass

        @staticmethod
        def backward(ctx, *grads):
            raise RuntimeError(DOUBLE_BACKWARD)

    class Forward(NoForwardAD, torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(*args):
            return op(*args)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.mark_non_differentiable(output[3])
            save(ctx, inputs, output)

        @staticmethod
        def backward(ctx, grad_y, grad_h_n, grad_c_n, grad_residual):
            args, inputs = backward_args(ctx, grad_y, grad_h_n, grad_c_n)
            return _input_grads(ctx, Backward.apply(*args), inputs)

    Forward.__name__ = Forward.__qualname__ = name
    Backward.__name__ = Backward.__qualname__ = f"_{name}Backward"
    Forward.__doc__ = f"{op._name} with its backward, usable under torch.func transforms (grad, vjp, vmap and nestings)."
    return Forward


RnnLayerFunction = _func_function("RnnLayerFunction", rnn_layer, rnn_layer_backward, _save, _backward_args)


# ---------------------------------------------------------------- vmap --

def _front(t, d, n):
    """t with its vmapped dim d first (expanded to n when t is not vmapped); None stays None."""
    if t is None:
        return None
    return t.unsqueeze(0).expand(n, *t.shape) if d is None else t.movedim(d, 0)


def _loop(op, info, in_dims, args):
    """The op once per vmapped index, outputs stacked on dim 0 (residuals too: one per sample)."""
    n = info.batch_size
    outs = []
    for i in range(n):
        call = [a if d is None or a is None else a.select(d, i) for a, d in zip(args, in_dims)]
        outs.append(op(*call))
    return tuple(torch.stack(o) for o in zip(*outs)), (0,) * len(outs[0])


@rnn_layer.register_vmap
def _rnn_layer_vmap(info, in_dims, x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths, h_mask, cell, nonlinearity,
                    reset_after, reverse, need_residual, zoneout_h=None, zoneout_c=None):
    args = (x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths, h_mask, cell, nonlinearity, reset_after, reverse,
            need_residual, zoneout_h, zoneout_c)
    in_dims = tuple(in_dims) + (None,) * (len(args) - len(in_dims))
    # A vmapped weight: one call per index. need_residual: also one call per index, so that each
    # sample has its own residual (rnn_layer_backward's vmap rule gives per-sample weight gradients
    # from them; the workspace of a folded batch only gives their sum).
    if need_residual or any(d is not None for d in in_dims[3:8]):
        return _loop(rnn_layer, info, in_dims, args)
    n = info.batch_size
    xs = _front(x, in_dims[0], n)  # [n, T, B, I]
    T, B = xs.shape[1], xs.shape[2]
    xs = xs.transpose(0, 1).reshape(T, n * B, xs.shape[3])

    def fold(t, d):
        t = _front(t, d, n)
        return None if t is None else t.reshape(n * B, *t.shape[2:])

    def fold_steps(t, d):  # [T, B, ...] per sample -> [T, n * B, ...]
        t = _front(t, d, n)
        return None if t is None else t.transpose(0, 1).reshape(T, n * B, *t.shape[3:])

    y, h_n, c_n, residual = rnn_layer(xs, fold(h0, in_dims[1]), fold(c0, in_dims[2]), W_ih, W_hh, b_ih, b_hh, W_hr,
                                      fold(lengths, in_dims[8]), fold(h_mask, in_dims[9]), cell, nonlinearity,
                                      reset_after, reverse, False, fold_steps(zoneout_h, in_dims[15]),
                                      fold_steps(zoneout_c, in_dims[16]))
    y = y.reshape(T, n, B, y.shape[-1])
    h_n = h_n.reshape(n, B, h_n.shape[-1])
    if cell == "lstm":
        return (y, h_n, c_n.reshape(n, B, c_n.shape[-1]), residual), (1, 0, 0, None)
    return (y, h_n, c_n, residual), (1, 0, None, None)


@rnn_layer_backward.register_vmap
def _rnn_layer_backward_vmap(info, in_dims, *args):
    # Per sample: its slice of every vmapped input, and its own residual (stacked by
    # rnn_layer's vmap rule), or the empty one (need_residual=False: rerun).
    return _loop(rnn_layer_backward, info, in_dims, args)


# ===================================================== layer-normalised cells --
#
# ``pyrnn::layernorm_layer(Tensor x, Tensor? h0, Tensor? c0, Tensor W_ih, Tensor W_hh, Tensor? b_ih,
# Tensor? b_hh, Tensor ln_ih, Tensor ln_hh, Tensor? ln_c_weight, Tensor? ln_c_bias, Tensor? W_hr,
# Tensor? lengths, Tensor? h_mask, Tensor? zoneout_h, Tensor? zoneout_c, str cell, bool reverse,
# bool training) -> (Tensor y, Tensor h_n, Tensor c_n, Tensor residual)``
#     One layer and direction of pyrnn.functional.layernorm_lstm_forward / layernorm_gru_forward
#     (cell "lstm" or "gru"; GRU: c0, ln_c_weight, ln_c_bias, W_hr and zoneout_c None). x [T, B, I],
#     h0 [B, Ho], c0 [B, H] or None, W_ih [G*H, I], W_hh [G*H, Ho], b_* (the gate layer norms'
#     betas) and ln_ih, ln_hh (their gains) [G*H], ln_c_* [H]; W_hr [P, H] (the LSTM's output
#     projection, proj_size) or None; Ho is P with W_hr, else H. lengths int64 [B] or None; h_mask
#     [B, Ho] (recurrent dropout, already scaled), zoneout_h [T, B, Ho], zoneout_c [T, B, H], or
#     None. Returns y [T, B, Ho], h_n [B, Ho], c_n [B, H] (an empty [0] tensor for the GRU) and
#     residual: with training, a uint8 tensor of one byte that owns the forward's workspace;
#     without, the inference kernel runs and residual is an empty [0] tensor.
#
# ``pyrnn::layernorm_layer_backward(<the same 16 tensors>, Tensor y, Tensor residual, Tensor? grad_y,
# Tensor? grad_h_n, Tensor? grad_c_n, str cell, bool reverse) -> 12 Tensors``
#     The gradients of x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias, W_hr
#     (an empty [0] tensor for an input that was None); the masks get none.
#
# The residual hand-off. The layer-norm kernels have no residual_nbytes /
# workspace_from_residual: their workspace (pyrnn._core.LayerNormWorkspace) is
# an opaque C++ object holding the saved activations and raw pointers into the
# forward's arrays. So the residual does not hold the workspace's bytes but
# owns the workspace object: its memory is a one-byte buffer (a bytearray
# subclass wrapped by torch.frombuffer, which keeps the buffer alive as long as
# the tensor's storage lives) whose attribute holds the workspace, and
# _LN_WORKSPACES maps the address of that byte to it through a weak reference.
# - Lifetime: the workspace lives exactly as long as the residual's storage
#   (autograd saves the residual for the backward and frees it with the
#   graph); nothing is kept in a table when the tensor dies, whether or not a
#   backward ran (the table's values are weak references), so repeated calls
#   do not accumulate memory.
# - No stale workspace: the key is the address of memory the entry's own
#   buffer occupies while it is alive, so no other live tensor can have that
#   data_ptr; a residual that was copied (a clone, a torch.stack) simply is
#   not found. And the workspace never points into memory anyone else can
#   write: the forward passes the kernel private copies of every input (x,
#   states, weights, masks, lengths) and returns a copy of y, keeping the
#   kernel's own y for the workspace, so compilers that reuse buffers
#   (inductor) or in-place ops after the forward cannot change what the
#   backward reads.
# - Fallback: a residual that is empty (training=False) or not found (a copy
#   of one, or its owner freed) makes the backward rerun the training forward
#   from its tensor arguments first (the kernels are deterministic: the same
#   gradients, at the cost of a second forward).
# The residual's value is always a zero byte, so outputs are deterministic
# (torch.library.opcheck compares them).

_LN_TENSORS = ("Tensor x, Tensor? h0, Tensor? c0, Tensor W_ih, Tensor W_hh, Tensor? b_ih, Tensor? b_hh, "
               "Tensor ln_ih, Tensor ln_hh, Tensor? ln_c_weight, Tensor? ln_c_bias, Tensor? W_hr, Tensor? lengths, "
               "Tensor? h_mask, Tensor? zoneout_h, Tensor? zoneout_c")
_LN_N = 16  # the tensor arguments
_LN_DIFF = 12  # the first 12 get gradients
_LN_CELLS = ("lstm", "gru")


class _Slot:
    """One workspace, referenced weakly from _LN_WORKSPACES."""

    __slots__ = ("ws", "__weakref__")

    def __init__(self, ws):
        self.ws = ws


class _ResidualMemory(bytearray):
    """A residual tensor's memory (one zero byte per workspace); it owns the _Slots."""


# the address of a residual's byte -> its _Slot
_LN_WORKSPACES: "weakref.WeakValueDictionary[int, _Slot]" = weakref.WeakValueDictionary()


def _ln_residual(slots):
    """A uint8 tensor of len(slots) zero bytes whose storage owns the slots (None: no workspace)."""
    mem = _ResidualMemory(len(slots))
    mem.slots = list(slots)
    t = torch.frombuffer(mem, dtype=torch.uint8)
    base = t.data_ptr()
    for i, s in enumerate(mem.slots):
        if s is not None:
            _LN_WORKSPACES[base + i] = s
    return t


def _ln_slot(residual, i=0):
    """The _Slot whose byte is element i of the contiguous residual, or None."""
    if type(residual) is not torch.Tensor or residual.dtype != torch.uint8 or residual.device.type != "cpu":
        return None
    return _LN_WORKSPACES.get(residual.data_ptr() + i)


def _check_ln_cell(cell):
    if cell not in _LN_CELLS:
        raise ValueError(f"pyrnn::layernorm_layer: cell must be 'lstm' or 'gru', got {cell!r}")


def _own(a):
    """A private C-contiguous copy of a NumPy array (None stays None)."""
    return None if a is None else np.array(a, order="C", copy=True)


def _ln_kernel(tensors, cell, reverse, training, own=False):
    """The kernel on the 16 tensors' NumPy views (own: on private copies). (y, h_n, c_n, ws)."""
    _check_ln_cell(cell)
    x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_cw, ln_cb, W_hr = (_np(t) for t in tensors[:_LN_DIFF])
    lengths = _lengths(tensors[_LN_DIFF])
    h_mask, zoneout_h, zoneout_c = (_np(t) for t in tensors[_LN_DIFF + 1:])
    arrays = [x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_cw, ln_cb, W_hr, lengths, h_mask, zoneout_h,
              zoneout_c]
    if own:
        arrays = [_own(a) for a in arrays]
    (x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_cw, ln_cb, W_hr, lengths, h_mask, zoneout_h,
     zoneout_c) = arrays
    kw = {"lengths": lengths, "reverse": reverse, "training": training, "h_mask": h_mask, "zoneout_h": zoneout_h}
    if cell == "lstm":
        return F.layernorm_lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_cw, ln_cb,
                                        zoneout_c=zoneout_c, W_hr=W_hr, **kw)
    if c0 is not None or ln_cw is not None or ln_cb is not None or zoneout_c is not None or W_hr is not None:
        raise ValueError("pyrnn::layernorm_layer: c0, ln_c_weight, ln_c_bias, W_hr and zoneout_c are for the LSTM "
                         "only")
    y, h_n, ws = F.layernorm_gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, **kw)
    return y, h_n, None, ws


@torch.library.custom_op("pyrnn::layernorm_layer", mutates_args=(), device_types="cpu",
                         schema=f"({_LN_TENSORS}, str cell, bool reverse, bool training) -> "
                                "(Tensor, Tensor, Tensor, Tensor)")
def layernorm_layer(x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias, W_hr, lengths, h_mask,
                    zoneout_h, zoneout_c, cell, reverse, training):
    tensors = (x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias, W_hr, lengths, h_mask,
               zoneout_h, zoneout_c)
    # training: private copies in, and y copied out (the workspace keeps the kernel's own y)
    y, h_n, c_n, ws = _ln_kernel(tensors, cell, reverse, training, own=training)
    if training:
        y, residual = y.copy(), _ln_residual([_Slot(ws)])
    else:
        residual = torch.empty((0,), dtype=torch.uint8)
    if c_n is None:
        c_n = np.empty((0,), dtype=y.dtype)
    return (*_fresh((y, h_n, c_n), tensors), residual)


@layernorm_layer.register_fake
def _layernorm_layer_fake(x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias, W_hr, lengths,
                          h_mask, zoneout_h, zoneout_c, cell, reverse, training):
    _check_ln_cell(cell)
    torch._check(x.dim() == 3, lambda: f"pyrnn::layernorm_layer: x must be [T, B, I], got {x.dim()}-D")
    # h (y, h_n) is W_hh's width: P with a projection (W_hh [4H, P]), else H; c is H wide.
    T, B, Ho = x.shape[0], x.shape[1], W_hh.shape[1]
    H = W_hr.shape[1] if W_hr is not None else Ho
    c_n = x.new_empty((B, H)) if cell == "lstm" else x.new_empty((0,))
    return (x.new_empty((T, B, Ho)), x.new_empty((B, Ho)), c_n,
            x.new_empty((1 if training else 0,), dtype=torch.uint8))


@torch.library.custom_op(
    "pyrnn::layernorm_layer_backward", mutates_args=(), device_types="cpu",
    schema=f"({_LN_TENSORS}, Tensor y, Tensor residual, Tensor? grad_y, Tensor? grad_h_n, Tensor? grad_c_n, "
           "str cell, bool reverse) -> (" + ", ".join(["Tensor"] * _LN_DIFF) + ")")
def layernorm_layer_backward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias, W_hr,
                             lengths, h_mask, zoneout_h, zoneout_c, y, residual, grad_y, grad_h_n, grad_c_n, cell,
                             reverse):
    _check_ln_cell(cell)
    tensors = (x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias, W_hr, lengths, h_mask,
               zoneout_h, zoneout_c)
    slot = _ln_slot(residual) if residual.numel() == 1 else None
    ws = None if slot is None else slot.ws
    if ws is not None:  # the forward's own workspace: check it belongs to a call of this form
        T, B, I = x.shape
        H = W_ih.shape[0] // (4 if cell == "lstm" else 3)
        P = 0 if W_hr is None else W_hr.shape[0]
        if (ws.shape != (T, B, I, H) or ws.proj_size != P or ws.dtype != _NP_DTYPES.get(x.dtype)
                or BY_KIND[ws.cell].family != cell):
            raise ValueError(f"pyrnn::layernorm_layer_backward: residual holds the workspace of another call "
                             f"(shape {ws.shape}, {ws.dtype}), not of this {cell} call on x {tuple(x.shape)}")
    else:  # training=False, or a copy of the residual: rebuild the workspace with a training forward
        *_, ws = _ln_kernel(tensors, cell, reverse, training=True)
    dy, dh_n = _np(grad_y), _np(grad_h_n)
    if cell == "lstm":
        g = F.layernorm_lstm_backward(ws, dy, dh_n, _np(grad_c_n))
        g = (*g, None) if len(g) < _LN_DIFF else g  # dW_hr: only with a projection
    else:
        dx, dh0, *rest = F.layernorm_gru_backward(ws, dy, dh_n)
        g = (dx, dh0, None, *rest, None, None, None)
    empty = np.empty((0,), dtype=ws.dtype)
    grads = [empty.copy() if t is None or a is None else a for a, t in zip(g, tensors[:_LN_DIFF])]
    return tuple(_fresh(grads, tensors + (y, residual, grad_y, grad_h_n, grad_c_n)))


@layernorm_layer_backward.register_fake
def _layernorm_layer_backward_fake(x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias, W_hr,
                                   lengths, h_mask, zoneout_h, zoneout_c, y, residual, grad_y, grad_h_n, grad_c_n,
                                   cell, reverse):
    _check_ln_cell(cell)
    return tuple(x.new_empty((0,)) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in (x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_c_weight, ln_c_bias, W_hr))


# layernorm_layer's arguments: 16 tensors (0-15: the 12 differentiable ones, then lengths, h_mask,
# zoneout_h, zoneout_c), cell (16), reverse (17), training (18)

def _ln_save(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:_LN_N], output[0], output[3])
    ctx.options = tuple(inputs[_LN_N:_LN_N + 2])


def _ln_backward_args(ctx, grad_y, grad_h_n, grad_c_n):
    saved = ctx.saved_tensors
    lstm = ctx.options[0] == "lstm"
    return (*saved, grad_y, grad_h_n, grad_c_n if lstm else None, *ctx.options), saved[:_LN_N]


_register_autograd(layernorm_layer, layernorm_layer_backward, _ln_save, _ln_backward_args)


LayerNormLayerFunction = _func_function("LayerNormLayerFunction", layernorm_layer, layernorm_layer_backward,
                                        _ln_save, _ln_backward_args)


def _ln_restack(residuals):
    """torch.stack of per-sample residuals whose memory keeps (and maps) their workspaces, so that
    layernorm_layer_backward's vmap rule finds each sample's; a plain stack (the backward then
    reruns the forwards) where they are not real tensors (tracing)."""
    r0 = residuals[0]
    if (r0.numel() == 0 or torch._C._len_torch_dispatch_stack() > 0
            or any(type(r) is not torch.Tensor or not r.is_contiguous() for r in residuals)):
        return torch.stack(residuals)
    slots = [_ln_slot(r, i) for r in residuals for i in range(r.numel())]
    return _ln_residual(slots).reshape(len(residuals), *r0.shape)


@layernorm_layer.register_vmap
def _layernorm_layer_vmap(info, in_dims, *args):
    in_dims = tuple(in_dims) + (None,) * (len(args) - len(in_dims))
    n = info.batch_size
    training = args[_LN_N + 2]
    if training or any(d is not None for d in in_dims[3:_LN_DIFF]):
        # A vmapped weight, or a gradient may follow: one call per index, each sample with its own
        # workspace (the backward's vmap rule gives per-sample gradients from them).
        outs = []
        for i in range(n):
            outs.append(layernorm_layer(*(a if d is None or a is None else a.select(d, i)
                                          for a, d in zip(args, in_dims))))
        y, h_n, c_n, res = zip(*outs)
        return (torch.stack(y), torch.stack(h_n), torch.stack(c_n), _ln_restack(list(res))), (0, 0, 0, 0)
    x = _front(args[0], in_dims[0], n)  # [n, T, B, I]
    T, B = x.shape[1], x.shape[2]
    x = x.transpose(0, 1).reshape(T, n * B, x.shape[3])

    def fold(k):  # [n, B, ...] -> [n * B, ...]
        t = _front(args[k], in_dims[k], n)
        return None if t is None else t.reshape(n * B, *t.shape[2:])

    def fold_steps(k):  # [n, T, B, ...] -> [T, n * B, ...]
        t = _front(args[k], in_dims[k], n)
        return None if t is None else t.transpose(0, 1).reshape(T, n * B, *t.shape[3:])

    y, h_n, c_n, residual = layernorm_layer(x, fold(1), fold(2), *args[3:_LN_DIFF], fold(_LN_DIFF),
                                            fold(_LN_DIFF + 1), fold_steps(_LN_DIFF + 2), fold_steps(_LN_DIFF + 3),
                                            *args[_LN_N:])
    y = y.reshape(T, n, B, y.shape[-1])
    h_n = h_n.reshape(n, B, h_n.shape[-1])
    if args[_LN_N] == "lstm":
        return (y, h_n, c_n.reshape(n, B, c_n.shape[-1]), residual), (1, 0, 0, None)
    return (y, h_n, c_n, residual), (1, 0, None, None)


@layernorm_layer_backward.register_vmap
def _layernorm_layer_backward_vmap(info, in_dims, *args):
    # Per sample: its slice of every vmapped input, and its own residual (restacked by
    # layernorm_layer's vmap rule, so each slice still finds its workspace).
    return _loop(layernorm_layer_backward, info, in_dims, args)
