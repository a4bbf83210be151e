"""PyTorch drop-ins for torch.nn.LSTM / GRU / RNN and their cells, on pyrnn's C++ kernels.

``pyrnn.torch.LSTM``, ``GRU``, ``RNN``, ``LSTMCell``, ``GRUCell`` and
``RNNCell`` subclass their ``torch.nn`` namesakes: same constructor, parameters
(names, shapes, initialisation), ``state_dict`` keys, forward signature and
outputs (padded tensors, unbatched input, ``batch_first`` and
``PackedSequence`` in, ``PackedSequence`` out), so state dicts load either way
and a training loop does not change::

    model = pyrnn.torch.LSTM(10, 20, num_layers=2, bidirectional=True)
    model.load_state_dict(torch.nn.LSTM(10, 20, num_layers=2, bidirectional=True).state_dict())
    y, (h_n, c_n) = model(x)                # x: [T, B, 10] or a PackedSequence
    y.sum().backward()                      # BPTT in C++

Extras beyond torch.nn (keyword-only): ``recurrent_dropout`` (variational
dropout on h_{t-1}: one mask per sequence, per layer and direction, drawn
with torch's RNG on every training-mode call), ``zoneout`` (Krueger et al.
2016: at each step each unit keeps its previous value with this probability,
h_t = h_{t-1}; masks per step, layer and direction, drawn with torch's RNG on
every training-mode call, the identity in eval mode; layers and cells) and
``zoneout_c`` (the LSTM's and LSTMCell's rate for the cell state c; None: the
rate of h) and, for the GRU and GRUCell, ``reset_after=False`` (Cho et al. v3 /
Keras ``reset_after=False``).

Each (layer, direction) is one ``torch.autograd.Function`` whose forward runs
the whole sequence in C++ and whose backward runs the C++ BPTT; stacking,
concatenation of directions and dropout between layers are torch ops, so
autograd handles them. Contiguous CPU float32/float64 tensors go to the
kernels without copies (NumPy views of the same memory; a PackedSequence is
padded first and its output packed again), and the kernels' outputs become
tensors without copies. Gradients reach the input, the initial
states and every parameter. When no gradient is needed (``torch.no_grad()``,
or nothing requires grad) the kernels run without keeping activations.

Inference copies: ``pyrnn.torch.freeze(module, precision=None)`` (or
``module.freeze()``) and ``pyrnn.torch.quantize_dynamic(model, dtype=torch.qint8
| torch.bfloat16)`` replace recurrent modules (torch.nn's or these) by
:class:`FrozenRNN` / :class:`FrozenRNNCell`: the weights copied and packed once,
in float32 or in int8 (per-row scales, activations quantised per row) or bf16.

torch.compile, torch.export, torch.func: the kernels are also the custom
operator ``pyrnn::rnn_layer`` (one layer and direction; see
``pyrnn._torch_ops``), with fake kernels, an autograd formula (the operator
``pyrnn::rnn_layer_backward``) and a vmap rule; the layer-normalised
``LayerNormLSTM`` / ``LayerNormGRU`` have ``pyrnn::layernorm_layer`` (and
``pyrnn::layernorm_layer_backward``) and are traced the same way. The layers and cells call it
instead of the autograd.Function above when traced: under ``torch.compile``
(dynamo), ``torch.export`` (strict or not), a ``torch.func`` transform or a
TorchDispatchMode; plain eager calls keep the path above. So
``torch.compile(model, fullgraph=True)`` compiles padded-tensor calls (any
num_layers, bidirectional, proj_size, batch_first, unbatched, hx, dropout,
recurrent_dropout and zoneout, whose masks are drawn with torch ops) without a graph break,
forward and backward; ``torch.export.export`` gives a program holding
``pyrnn.rnn_layer`` nodes (batch and time may be dynamic); ``torch.func.grad`` /
``vjp`` over ``functional_call`` give autograd's gradients; ``torch.func.vmap``
folds a vmapped input or state dimension into the batch (one kernel call) when
no gradient is needed, loops over a vmapped weight (``stack_module_state``
ensembles), and per-sample gradients (``vmap(grad(...))``) run one forward and
one backward per sample. Dynamo refuses to
trace any torch.nn.RNN / GRU / LSTM subclass unless
``torch._dynamo.config.allow_rnn``; importing this module lets it trace these
classes only (a wrapper on dynamo's module builder, installed when dynamo is
first imported), so torch.nn's own LSTM keeps its graph break.

Limits: CPU tensors of dtype float32 or float64 only (others raise); no
double backward (differentiating the gradients raises a RuntimeError saying
so, eager, compiled or under torch.func); no forward-mode AD (``jvp``,
``jacfwd``, ``hessian``, ``torch.autograd.forward_ad`` raise); no batched
gradients (``is_grads_batched=True`` raises; ``torch.func.jacrev`` works).
Compiled and traced calls run the forward kernels once per step, as eager calls do: when a gradient may be taken, the
operator's forward writes the C++ training workspace into a uint8 tensor (its
``residual`` output), which autograd saves for ``rnn_layer_backward``; without
one (``torch.no_grad()``, nothing requiring grad: export under no_grad for a
graph without residuals) the inference kernels run. Under ``torch.func.vmap``
with gradients possible, the forward runs once per sample (each keeps its own
workspace) instead of folding the vmapped dimension into the batch. A ``PackedSequence`` input
graph-breaks under torch.compile (dynamo skips ``pack_padded_sequence`` /
``pad_packed_sequence``; ``fullgraph=True`` raises) and does not export; pass
padded tensors. ``torch.jit.trace`` records the ``pyrnn::rnn_layer`` operator
(with gradients on, pass ``check_trace=False``); ``torch.jit.script`` does not
compile these modules.

Threads: pyrnn's kernels use up to ``pyrnn.get_num_threads()`` threads (its own
setting: adaptive up to ``OMP_NUM_THREADS``, else the core count, or fixed with
``pyrnn.set_num_threads``),
PyTorch's ops ``torch.get_num_threads()``; neither setting changes the other
and this module changes neither. A kernel runs on the thread that called
forward or backward while PyTorch's intra-op threads wait, so the two never
compute at the same time and at most max(pyrnn's, torch's) threads are busy.
"""

from __future__ import annotations

import collections
import copy
import functools
import numbers
import importlib.abc
import sys
import threading
import weakref
from collections.abc import Mapping
from typing import ClassVar, NamedTuple

import numpy as np

try:
    import torch
except ImportError as e:  # (name the extra, not only the module)
    raise ModuleNotFoundError(f"pyrnn.torch needs PyTorch, which is not importable ({e}): "
                              f"pip install torch (version 2.1 or later; pyrnn's extra: pyrnn[torch])",
                              name="torch") from e
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from torch.optim.optimizer import register_optimizer_step_pre_hook as _register_optimizer_step_pre_hook

from . import _core, _onnx, _stack, _torch_ops
from ._onnx import WithLengths
from . import functional as F
from ._cells import GATES, cell_spec
from ._validation import (CellStateZoneout, check_bool, check_layer_dropout, check_probability, check_stack_memory,
                          check_training_rates, to_numpy, zoneout_rates)

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "InputError", "FrozenRNN", "FrozenRNNCell",
           "freeze", "quantize_dynamic", "WithLengths", "LayerNormLSTM", "LayerNormGRU"]

_DTYPES = (torch.float32, torch.float64)
_DOUBLE_BACKWARD = _torch_ops.DOUBLE_BACKWARD


# --------------------------------------------------------------- the kernels --

class _Spec(NamedTuple):
    """What one (layer, direction) call runs besides its tensors."""

    cell: str  # family: "lstm", "gru" or "rnn"
    options: dict  # the keyword options that select the cell (nonlinearity, reset_after)
    reverse: bool = False
    lengths: np.ndarray | None = None  # int64 [B], or None: all T
    h_mask: np.ndarray | None = None  # recurrent dropout mask [B, H_out], or None
    zoneout_h: np.ndarray | None = None  # zoneout mask of h [T, B, H_out] (1: keep the previous value), or None
    zoneout_c: np.ndarray | None = None  # zoneout mask of the LSTM's c [T, B, H], or None
    # A cell's training step (T = 1, no lengths, masks or projection; inputs checked by the cell):
    # the kernels are called directly and only (h_n, c_n) come out (no y).
    step: bool = False
    # A sequence module's call, whose input, states and weights the module checked (dtypes, shapes):
    # without lengths or masks the kernels are called directly, as for a step.
    checked: bool = False
    # A module's call of one step: the _StepChain of the call before it for this layer and direction
    # (the h_n it returned came back as hx), or None.
    follows: object = None
    kind: object = None  # the kernels' CellKind where the caller has it (a cell's step), or None


def _spec_kind(spec):
    return spec.kind if spec.kind is not None else _kind(spec.cell, spec.options)


_np = _torch_ops._np  # NumPy view (no copy) of a CPU tensor; None stays None


@functools.lru_cache(maxsize=None)
def _kind_of(cell, nonlinearity, reset_after):
    return cell_spec(cell, nonlinearity=nonlinearity, reset_after=reset_after).kind


def _kind(cell, options):
    """The kernels' CellKind of a cell family and its options, checked as cell_spec checks them (a
    reset_after of another type than bool, set after construction, is refused at every call: not
    served from the cache because 1.0 == True)."""
    nonlinearity, reset_after = options["nonlinearity"], options["reset_after"]
    if type(nonlinearity) is str and type(reset_after) is bool:
        return _kind_of(cell, nonlinearity, reset_after)
    return cell_spec(cell, nonlinearity=nonlinearity, reset_after=reset_after).kind


def _direct(spec):
    """Whether a call goes to the kernels directly: a cell's step, or a module's call without lengths
    or masks (its input, states and weights checked by the module)."""
    return spec.step or (spec.checked and spec.lengths is None and spec.h_mask is None and spec.zoneout_h is None
                         and spec.zoneout_c is None)


def _kernel_forward(spec, arrays, training, packed=None):
    """Runs one layer and direction: arrays = (x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr); ``packed``:
    W_ih and W_hh packed once (a direct call of one step, _StepChain), or None."""
    x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr = arrays
    if _direct(spec):
        # The cell or module checked its input and states (and a module its weights); the kernel
        # checks every array's dtype and shape again (ValueError/TypeError naming it). The
        # functional API's checks in Python cost a small call about as much as the kernels.
        if not spec.step:
            F._check_memory(spec.cell, x, W_hh, W_hr, None, training)
        arrays = (F._c(a) for a in (x, h0, c0, W_ih, W_hh, b_ih, b_hh))
        return _core.sequence_forward(_spec_kind(spec), *arrays, None, spec.reverse, training,
                                      F._c(W_hr), None, packed)
    return F.forward(spec.cell, x, h0, c0, W_ih, W_hh, b_ih, b_hh, **spec.options, W_hr=W_hr, h_mask=spec.h_mask,
                     lengths=spec.lengths, reverse=spec.reverse, training=training, zoneout_h=spec.zoneout_h,
                     zoneout_c=spec.zoneout_c)


def _arrays(spec, tensors):
    """NumPy views of _Recurrence's tensors (x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr) for _kernel_forward:
    a cell's step (spec.step) takes x as [B, I], and the kernels see the sequence of one step."""
    arrays = [_np(t) for t in tensors]
    if spec.step:
        arrays[0] = arrays[0][None]
    return arrays


class _NotTwiceDifferentiable(torch.autograd.Function):
    """Passes gradients computed under create_graph=True through; differentiating them raises."""

    @staticmethod
    def forward(ctx, n_anchors, *tensors):
        return tuple(g.clone() for g in tensors[n_anchors:])

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(_DOUBLE_BACKWARD)


def _guard_create_graph(out, inputs, grad_outputs):
    """A backward's gradients ``out`` (tensors or None). Under create_graph=True, differentiating
    them must fail loudly, not give zeros or None: the guard hangs off the forward's inputs and the
    incoming gradients that require grad, so both stay reachable from the gradients (a second
    derivative through the incoming gradient, as autograd.functional.jvp takes, included)."""
    if not (torch.is_grad_enabled() and any(g is not None for g in out)):
        return out
    anchors = [t for t in (*inputs, *grad_outputs) if t is not None and t.requires_grad]
    given = [g for g in out if g is not None]
    guarded = iter(_NotTwiceDifferentiable.apply(len(anchors), *anchors, *given))
    return [None if g is None else next(guarded) for g in out]


_FUNCTORCH = getattr(torch._C, "_functorch", None)
if _FUNCTORCH is not None and hasattr(_FUNCTORCH, "is_legacy_batchedtensor"):
    def _batched(t):
        """Whether ``t`` is a vmap-batched tensor (functorch's, or the legacy vmap's of is_grads_batched)."""
        return _FUNCTORCH.is_legacy_batchedtensor(t) or _FUNCTORCH.is_batchedtensor(t)
else:  # (another torch: its dispatch keys, 3 us where the checks above cost 0.6)
    def _batched(t):
        return "Batched" in str(torch._C._dispatch_keys(t))


def _refuse_batched(grad_outputs):
    """autograd.grad(is_grads_batched=True) and jacobian(vectorize=True) vmap the eager backward,
    whose gradients go to C++ as NumPy arrays: a clear error instead of a batching rule's."""
    if any(g is not None and _batched(g) for g in grad_outputs):
        raise RuntimeError("pyrnn: batched gradients (autograd.grad(is_grads_batched=True), "
                           "autograd.functional.jacobian(vectorize=True)) are not supported by the eager "
                           "kernels; use torch.func.jacrev / vmap over torch.func.vjp, or vectorize=False")


def _training_outputs(y, h_n, c_n):
    """The tensors of a training call's (y, h_n, c_n or None). y goes out as a copy: the workspace
    keeps the kernel's y (backward reads h_t from it), so in-place ops on the output (y += x,
    ReLU(inplace=True)) are free to run, as torch.nn allows them on a GRU's or an RNN's output."""
    return (torch.from_numpy(y.copy()),) + tuple(torch.from_numpy(a) for a in (h_n, c_n) if a is not None)


def _saved_tensor_hooks_active():
    """Whether torch.autograd.graph.saved_tensors_hooks are in force (they may hand backward copies
    of the saved tensors instead of the tensors, e.g. to offload or compress them)."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top is None or top(False) is not None  # (unknown in another torch: assume they may be)


def _versions(tensors):
    """The tensors' version counters (None for None, or where a tensor keeps none)."""
    out = []
    for t in tensors:
        try:
            out.append(None if t is None else t._version)
        except RuntimeError:  # (an inference tensor)
            out.append(None)
    return tuple(out)


class _Rerun:
    """What backward needs to run a layer's forward again, kept only under saved_tensors_hooks: the
    inputs the workspace reads (their memory and version counters at forward) and ``args``, what
    else the forward took (the biases as they were, lengths, masks). Under such hooks the unpacked
    saved tensors may be copies, and an input edited in place after forward raises no error there
    (torch.nn then uses the copies): if one was, backward runs the forward again on the copies.
    torch.utils.checkpoint(use_reentrant=False) hands back recomputed tensors too, but edits nothing,
    so its calls keep their workspace."""

    def __init__(self, tensors, args):
        self.tensors, self.versions, self.args = tensors, _versions(tensors), args

    def needed(self):
        return _versions(self.tensors) != self.versions


class _HeldWorkspace:
    """A training forward's C++ workspace (gates, states: the activations), held for its backward."""

    __slots__ = ("ws", "token_ref")

    def __init__(self, ws):
        self.ws, self.token_ref = ws, None

    def release(self, _ref=None):
        self.ws = None


# The prototype of the workspace tokens: on the CPU (set_default_device("cuda") allocated there), and
# not an inference tensor (autograd refuses to save those) though pyrnn.torch may be imported under
# torch.inference_mode() (a torch.load there unpickles a pyrnn module).
with torch.inference_mode(False):
    _TOKEN = torch.empty(0, device="cpu")


def _hold_workspace(ctx, ws, hooks):
    """Keeps ``ws`` in ``ctx.held`` while autograd keeps the node's saved tensors, as torch.nn's saved
    activations: the returned token, saved beside them, releases it when autograd frees them (after a
    backward without retain_graph), not when the graph node dies. Outputs kept after backward (logits
    gathered for an epoch's metrics) used to keep every layer's workspace: a 2-layer LSTM I=64 H=256
    T=200 B=32 grew by 1725 MiB over 20 steps where torch.nn grew by 89. Under saved_tensors_hooks
    (``hooks``) a token could be packed into a copy and freed at once: there the workspace stays until
    the node dies, and None is returned."""
    held = ctx.held = _HeldWorkspace(ws)
    if hooks:
        return None
    # A tensor of its own, with its own version counter (not a detached alias, whose counter all tokens
    # would share), and a weak reference whose callback releases the workspace: 2.7 us where
    # torch.empty and weakref.finalize took 7.5.
    token = _TOKEN.new_empty(0)
    held.token_ref = weakref.ref(token, held.release)
    return token


def _held_workspace(ctx, rerun):
    """The workspace for this backward. Where it was released though autograd still holds the saved
    tensors (hooks registered on them after forward, grad_fn._raw_saved_tensors[i].register_hooks,
    packed the token into a copy), ``rerun()`` runs the forward again on the saved tensors."""
    if ctx.held.ws is None:
        ctx.held.ws = rerun()
    return ctx.held.ws


class _StepChain:
    """The weights of a cell's training steps in one graph, packed once for all of them.

    A training loop calls a cell once per time step: each call is a forward of one step whose
    backward runs later, and each packed W_ih and W_hh for its forward and again for its backward
    (a fifth of the kernels' time at B=32 I=H=256). A step whose h (or c) is the output of the
    step before it, run with the same weights, joins that step's chain: from the chain's second
    step on the forwards read one packing, and the backward calls share another, made by the
    first of them. The weights must be unchanged in between: the same tensors, at the same
    version counter and address (what autograd checks of the saved weights, and it refuses the
    backward after an in-place update it sees). Every chain's forward packing is dropped when
    a backward call of any chain starts and before any optimizer's step (a fused optimizer's
    update, like an edit through ``.data``, moves no version counter; a step after that packs
    again), and only the last ``_HELD`` chains to pack keep theirs (graphs kept without a
    backward would each hold a copy of the weights); the backward packing lasts one backward
    pass (the next reads the weights again). Not under saved_tensors_hooks, where backward may
    see copies."""

    __slots__ = ("kind", "weights", "stamp", "forward", "backward", "steps", "__weakref__")
    _HELD = 32
    _holding: ClassVar[collections.deque[weakref.ref[_StepChain]]] = collections.deque()  # chains with a forward packing
    _holding_lock: ClassVar[threading.Lock] = threading.Lock()  # (steps from several Python threads at once)

    def __init__(self, kind, weights, stamp):
        self.kind, self.weights, self.stamp = kind, weights, stamp
        self.forward = self.backward = None
        self.steps = 1

    def _pack_forward(self):
        W_ih, W_hh = self.weights
        packed = _core.PackedRecurrence(self.kind, F._c(_np(W_ih)), F._c(_np(W_hh)))
        with _StepChain._holding_lock:
            held = _StepChain._holding
            live = [ref for ref in held if (chain := ref()) is not None and chain.forward is not None]
            held.clear()
            held.extend(live)
            while len(held) >= _StepChain._HELD:
                old = held.popleft()()
                if old is not None:
                    old.forward = None
            self.forward = packed
            held.append(weakref.ref(self))

    @staticmethod
    def chainable(spec, x, W_hr):
        """Whether a training call may join a chain: a direct kernel call of one step, no projection."""
        return _direct(spec) and (spec.step or x.shape[0] == 1) and W_hr is None  # (a step's x: [B, I])

    @classmethod
    def join(cls, spec, h0, c0, W_ih, W_hh):
        """The chain this training step belongs to: its previous step's, or a new one (None where
        the weights keep no version counter)."""
        try:
            stamp = (W_ih._version, W_hh._version, W_ih.data_ptr(), W_hh.data_ptr())
        except RuntimeError:  # (an inference tensor)
            return None
        kind = _spec_kind(spec)
        for chain in (spec.follows, h0, c0):
            if chain is not None and type(chain) is not _StepChain:
                chain = _chain_of(chain)
            if (chain is not None and chain.stamp == stamp and chain.weights[0] is W_ih and chain.weights[1] is W_hh
                    and chain.kind == kind):
                if chain.forward is None:
                    chain._pack_forward()
                chain.steps += 1
                return chain
        return cls(kind, (W_ih, W_hh), stamp)

    @staticmethod
    def drop_forward_packings(*_):
        """Drops every chain's forward packing (an optimizer's step pre-hook, for all optimizers)."""
        with _StepChain._holding_lock:
            held = _StepChain._holding
            while held:
                chain = held.popleft()()
                if chain is not None:
                    chain.forward = None

    def backward_packing(self, ws):
        """The packing for a backward call of this chain (made from its workspace ``ws`` at the
        pass's first, dropped when the pass ends), or None for a chain of one step."""
        _StepChain.drop_forward_packings()  # (this chain's among them)
        if self.steps < 2:
            return None
        if self.backward is None:
            try:
                torch.autograd.Variable._execution_engine.queue_callback(self._end_of_pass)
            except RuntimeError:  # (not inside autograd's engine)
                return None
            self.backward = _core.pack_backward(ws)
        return self.backward

    def _end_of_pass(self):
        self.backward = None


class _Recurrence(_torch_ops.NoForwardAD, torch.autograd.Function):
    """One layer, one direction: forward and backward in C++.

    Inputs: spec, x [T, B, I], h0, c0 (LSTM) or None, W_ih, W_hh, b_ih, b_hh, W_hr
    (each a tensor or None). Outputs: y [T, B, H_out], h_n [B, H_out] and, for
    the LSTM, c_n [B, H]; for a cell's step (spec.step) x is [B, I] and only
    h_n (and c_n) come out.
    """

    @staticmethod
    def forward(ctx, spec, x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr):
        tensors = (x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr)
        hooks = _saved_tensor_hooks_active()
        chain = (_StepChain.join(spec, h0, c0, W_ih, W_hh) if not hooks and _StepChain.chainable(spec, x, W_hr)
                 else None)
        y, h_n, c_n, ws = _kernel_forward(spec, _arrays(spec, tensors), training=True,
                                          packed=None if chain is None else chain.forward)
        # (h_n and c_n are arrays of their own; y is the workspace's, so it goes out as a copy)
        outs = (((torch.from_numpy(h_n),) if c_n is None else (torch.from_numpy(h_n), torch.from_numpy(c_n)))
                if spec.step else _training_outputs(y, h_n, c_n))
        ctx.spec = spec
        ctx.chain = chain
        token = _hold_workspace(ctx, ws, hooks)
        ctx.set_materialize_grads(False)  # unused outputs give None, which the kernel reads as zeros
        # The workspace reads these tensors' memory in backward: saving them makes
        # autograd raise if any is modified in place in between. The biases are not
        # read there (torch.nn also lets them change between forward and backward).
        ctx.save_for_backward(x, h0, c0, W_ih, W_hh, None, None, W_hr, token)
        ctx.biases = (b_ih, b_hh)  # (for the create_graph guard below, and a rerun)
        ctx.bias_versions = _versions(ctx.biases)
        ctx.rerun = (_Rerun((x, h0, c0, W_ih, W_hh, W_hr),
                            tuple(None if b is None else b.detach().clone() for b in (b_ih, b_hh)))
                     if hooks else None)
        return outs

    @staticmethod
    def backward(ctx, *grad_outputs):
        # Read once: raises if an input that backward reads was modified in place since forward (a second
        # read fails under torch.utils.checkpoint(use_reentrant=False), which unpacks each saved tensor once).
        saved = ctx.saved_tensors[:8]
        _refuse_batched(grad_outputs)
        spec = ctx.spec
        if ctx.rerun is not None and ctx.rerun.needed():
            x, h0, c0, W_ih, W_hh, _, _, W_hr = saved
            ctx.held.ws = None  # (not two workspaces at once)
            ctx.held.ws = _kernel_forward(spec, _arrays(spec, (x, h0, c0, W_ih, W_hh, *ctx.rerun.args, W_hr)),
                                          training=True)[3]
        def rerun():
            if _versions(ctx.biases) != ctx.bias_versions:
                raise RuntimeError("pyrnn: this backward runs its forward again (hooks on the saved tensors "
                                   "released its workspace), but a bias was modified in place since forward")
            x, h0, c0, W_ih, W_hh, _, _, W_hr = saved
            return _kernel_forward(spec, _arrays(spec, (x, h0, c0, W_ih, W_hh, *ctx.biases, W_hr)), True)[3]

        ws = _held_workspace(ctx, rerun)
        # (autograd gives gradients of the outputs' dtypes and shapes, or None; the kernel checks them)
        dy, dh_n, dc_n = (None, *grad_outputs, None)[:3] if spec.step else (*grad_outputs, None)[:3]
        chain = ctx.chain
        need = ctx.needs_input_grad[1:]  # (x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr)
        # dx only where x needs a gradient (not for data fed to a first layer or a cell: a quarter of the
        # backward's FLOPs at I = H)
        g = _core.sequence_backward(ws, F._c(_np(dy)), F._c(_np(dh_n)),
                                    F._c(_np(dc_n)) if spec.cell == "lstm" else None, False,
                                    None if chain is None else chain.backward_packing(ws), need[0])
        # (dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh; dh_seq not asked for; dW_hr; a step's dx as its x, [B, I])
        grads = (g[0][0] if spec.step and g[0] is not None else g[0], *g[1:7], g[8])
        out = [None if g is None or not n else torch.from_numpy(g) for g, n in zip(grads, need)]
        return (None, *_guard_create_graph(out, (*saved, *ctx.biases), grad_outputs))


_RecurrenceBackward = _Recurrence._backward_cls
# (not traced by a compiled optimizer step: it only drops references)
_register_optimizer_step_pre_hook(getattr(getattr(torch, "compiler", None), "disable", lambda f: f)(
    _StepChain.drop_forward_packings))


def _chain_of(t):
    """The _StepChain of the call that returned ``t``, or None."""
    node = t.grad_fn
    return node.chain if type(node) is _RecurrenceBackward else None


# A module's calls of one step with gradients (a decoder called step by step, as in torch's seq2seq
# tutorial) chain through the h_n they return, which comes back as the next call's hx: id(h_n) ->
# (a weak reference to it, the chains of its layers and directions). Not an attribute on the
# tensor: pickling or copying h_n would then carry the chains' packed weights along.
_MODULE_CHAINS: dict = {}


def _remember_chains(t, chains):
    key = id(t)

    def forget(ref):
        if _MODULE_CHAINS.get(key, (None,))[0] is ref:
            del _MODULE_CHAINS[key]
    _MODULE_CHAINS[key] = (weakref.ref(t, forget), chains)


def _chains_given(t):
    entry = _MODULE_CHAINS.get(id(t)) if isinstance(t, torch.Tensor) else None
    return entry[1] if entry is not None and entry[0]() is t else None


class InputError(ValueError, RuntimeError):
    """A bad input (shape, device): a ValueError, and also the RuntimeError that
    torch.nn raises in the same case, so code written for either keeps working."""


def _check_tensor(owner, name, t, dtype=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_cpu:
        raise InputError(f"{owner}: pyrnn's kernels run on the CPU only, but {name} is on {t.device}; move the "
                           f"module and inputs to the CPU (.cpu()) or use torch.nn.{owner} on {t.device.type}")
    if dtype is None:
        if t.dtype not in _DTYPES:
            raise TypeError(f"{owner}: pyrnn's kernels support float32 and float64, but {name} has dtype {t.dtype}")
    elif t.dtype != dtype:
        other = f", or convert the model: model.to({t.dtype})" if t.dtype in _DTYPES else \
            " (pyrnn's kernels compute in float32 or float64 only)"
        raise InputError(f"{owner}: {name} dtype ({t.dtype}) does not match weight dtype ({dtype}). "
                         f"Convert it: .to({dtype}){other}")


def _check_packed(owner, packed, dtype):
    """A PackedSequence input: its data [sum(batch_sizes), I] of the weights' dtype, batch_sizes a
    1-D int64 CPU tensor of positive, non-increasing counts summing to data's rows, and its
    sorted_indices/unsorted_indices (both or neither) a permutation of the batch and its inverse.
    A hand-built one can break any of these; torch's pad_packed_sequence corrupts memory on a
    negative count, and a short permutation silently drops sequences."""
    _check_tensor(owner, "input", packed.data, dtype)
    if packed.data.dim() != 2:
        raise InputError(f"{owner}: a PackedSequence's data must be 2-D [sum(batch_sizes), input_size], got "
                         f"{packed.data.dim()}-D of shape {tuple(packed.data.shape)}")
    sizes = packed.batch_sizes
    if not isinstance(sizes, torch.Tensor) or sizes.dtype != torch.int64 or sizes.dim() != 1 or not sizes.is_cpu:
        got = (f"{sizes.dim()}-D {sizes.dtype} on {sizes.device}" if isinstance(sizes, torch.Tensor)
               else type(sizes).__name__)
        raise TypeError(f"{owner}: a PackedSequence's batch_sizes must be a 1-D int64 CPU tensor, got {got}")
    counts = sizes.numpy()  # (NumPy: a few microseconds where torch's small ops took ~100)
    if counts.size == 0:
        raise InputError(f"{owner}: Expected sequence length to be larger than 0 (the PackedSequence's batch_sizes "
                         f"is empty)")
    if counts.min() < 1 or (counts[1:] > counts[:-1]).any():
        raise InputError(f"{owner}: a PackedSequence's batch_sizes must be positive and non-increasing "
                         f"(as pack_padded_sequence makes them), got {counts.tolist()}")
    total = int(counts.sum())
    if total != packed.data.size(0):
        raise InputError(f"{owner}: a PackedSequence's batch_sizes sum to {total} but its data has "
                         f"{packed.data.size(0)} rows")
    order, inverse = packed.sorted_indices, packed.unsorted_indices
    if (order is None) != (inverse is None):
        raise InputError(f"{owner}: a PackedSequence has sorted_indices and unsorted_indices both or neither")
    if order is not None:
        batch = int(counts[0])
        for what, idx in (("sorted_indices", order), ("unsorted_indices", inverse)):
            if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 or idx.dim() != 1 \
                    or idx.numel() != batch:
                got = (f"{idx.dim()}-D {idx.dtype} of {idx.numel()} elements" if isinstance(idx, torch.Tensor)
                       else type(idx).__name__)
                raise InputError(f"{owner}: a PackedSequence's {what} must be a 1-D int64 tensor of the batch's "
                                 f"{batch} indices, got {got}")
        o, u, every = order.detach().cpu().numpy(), inverse.detach().cpu().numpy(), np.arange(batch)
        if not (np.array_equal(np.sort(o), every) and np.array_equal(np.sort(u), every)
                and np.array_equal(u[o], every)):
            raise InputError(f"{owner}: a PackedSequence's sorted_indices must be a permutation of 0..{batch - 1} "
                             f"and unsorted_indices its inverse, got {o.tolist()} and {u.tolist()}")


def _hooked(module):
    """Whether calling ``module`` runs any hook (its own or a global one), as Module.__call__ decides."""
    m = nn.modules.module
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or getattr(m, "_global_forward_hooks", None)
                or getattr(m, "_global_forward_pre_hooks", None) or getattr(m, "_global_backward_hooks", None)
                or getattr(m, "_global_backward_pre_hooks", None))


def _autocast_cpu():
    """Whether torch.autocast is enabled for the CPU here."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _autocast_inputs(dtype, *args):
    """Under torch.autocast("cpu"), inputs and states in a lower precision (bfloat16, float16: a
    Linear's output there) go to the weights' dtype: pyrnn's kernels compute in float32 or float64,
    like the ops autocast runs in float32. Elsewhere, the arguments as given."""
    if not _autocast_cpu():
        return args

    def up(t):
        low = (torch.bfloat16, torch.float16)
        if isinstance(t, PackedSequence):  # (a NamedTuple: before the tuple case)
            return t.to(dtype) if t.data.dtype in low else t
        if isinstance(t, (tuple, list)):
            ups = [up(u) for u in t]
            return type(t)(*ups) if hasattr(t, "_fields") else type(t)(ups)
        if isinstance(t, torch.Tensor) and t.dtype in low:
            return t.to(dtype)
        return t
    return tuple(up(a) for a in args)


def _weights_dtype(module):
    d = module.__dict__
    # (A module without submodules: its own parameters, as named_parameters() gives them, without its
    # generator's cost: 8 of a cell step's 40 us at B=1.)
    params = (d["_parameters"].items() if "_parameters" in d and not d.get("_modules")
              else module.named_parameters())
    dtype = None
    for name, p in params:
        if p is None:
            continue
        # (_check_tensor, which names the offender, only where the check fails: its call and message
        # took 12-15 us of a small cell's training step)
        if not (isinstance(p, torch.Tensor) and p.is_cpu and p.dtype in _DTYPES):
            _check_tensor(type(module).__name__, f"parameter {name}", p)
        if dtype is None:
            dtype = p.dtype
        elif p.dtype != dtype:
            raise TypeError(f"{type(module).__name__}: all parameters must have one dtype, got {dtype} and "
                            f"{p.dtype} ({name})")
    return dtype


def _needs_grad(tensors):
    if torch.is_grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return True
    return False


def _run(spec, grad, x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr):
    """(y, h_n, c_n or None) for one layer and direction, through autograd when grad."""
    tensors = (x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr)
    if grad:
        outs = _Recurrence.apply(spec, *tensors)
        return outs if len(outs) == 3 else (outs[0], outs[1], None)
    y, h_n, c_n, _ = _kernel_forward(spec, _arrays(spec, tensors), training=False)
    return torch.from_numpy(y), torch.from_numpy(h_n), None if c_n is None else torch.from_numpy(c_n)


def _allocates(device):
    """Whether parameters made for ``device`` (None: the default device, a ``with torch.device(...)``
    block's included) take memory: not on the meta device, where torch.nn builds any size."""
    try:
        d = torch.device(device) if device is not None else torch.get_default_device()
    except (TypeError, ValueError, RuntimeError):
        return True  # (torch.nn names the bad device)
    return d.type != "meta"


def _dropout_mask(shape, p, dtype):
    """A tensor: kept units scaled by 1/(1-p) (p=1 drops everything); torch's RNG."""
    if p >= 1:
        return torch.zeros(shape, dtype=dtype)
    # Out of place, so vmap(randomness="different") can batch it.
    return torch.bernoulli(torch.full(shape, 1.0 - p, dtype=dtype)) / (1.0 - p)


def _zoneout_mask(shape, p, dtype, device):
    """A zoneout mask: 1 (the unit keeps its previous value) with probability p, else 0; torch's RNG."""
    # Out of place, so vmap(randomness="different") can batch it.
    return torch.bernoulli(torch.full(shape, p, dtype=dtype, device=device))


def _traced(x):
    """Whether this call runs through the ``pyrnn::rnn_layer`` operator rather than
    the eager autograd.Function on NumPy views: under torch.compile / torch.export
    (dynamo or non-strict), torch.func transforms, a TorchDispatchMode (make_fx,
    FakeTensorMode, ...), torch.jit.trace (the NumPy path would be recorded as a
    constant) or for a tensor subclass input."""
    return (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or torch._C._len_torch_dispatch_stack() > 0 or type(x) is not torch.Tensor or torch.jit.is_tracing())


def _functorch_apply(*args):
    if torch.compiler.is_compiling():
        return torch._dynamo.disable(_torch_ops.RnnLayerFunction.apply)(*args)
    return _torch_ops.RnnLayerFunction.apply(*args)


def _op(cell, options, reverse, x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths=None, h_mask=None, zoneout_h=None,
        zoneout_c=None):
    """(y, h_n, c_n or None) for one layer and direction through the pyrnn::rnn_layer operator
    (its own autograd formula; under torch.func transforms, through an autograd.Function they accept)."""
    # need_residual: the forward keeps its training workspace (an extra output, which the backward
    # reads) only when a gradient may be taken; otherwise the inference kernel runs.
    need_residual = _needs_grad((x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, h_mask))
    args = (x, h0, c0, W_ih, W_hh, b_ih, b_hh, W_hr, lengths, h_mask, cell, options["nonlinearity"],
            options["reset_after"], reverse, need_residual, zoneout_h, zoneout_c)
    if torch._C._are_functorch_transforms_active():
        # torch.func rejects the autograd.Function register_autograd generates; dynamo cannot trace this
        # one's apply, so a compiled torch.func transform runs it outside the graph.
        y, h_n, c_n, _ = _functorch_apply(*args)
    else:
        y, h_n, c_n, _ = torch.ops.pyrnn.rnn_layer(*args)
    return y, h_n, (c_n if cell == "lstm" else None)


# ------------------------------------------------------- sequence modules --

class _PyrnnRNNMixin(CellStateZoneout):
    """forward for subclasses of torch.nn.RNNBase, on pyrnn's kernels."""

    _cell = "rnn"
    reset_after = True  # GRU's keyword; the others always run PyTorch's equations
    zoneout = 0.0  # (class defaults: modules pickled before zoneout existed have none; zoneout_c: CellStateZoneout)

    def __init__(self, *args, recurrent_dropout=0.0, zoneout=0.0, zoneout_c=None, **kwargs):
        rates = zoneout_rates("LSTM" if self._cell == "lstm" else type(self).__name__, zoneout, zoneout_c)
        sizes = [args[i] if len(args) > i else kwargs.get(k, 1) for i, k in
                 enumerate(("input_size", "hidden_size", "num_layers"))]
        if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in sizes) and \
                _allocates(kwargs.get("device")):
            # (before torch.nn allocates: num_layers=2**40 looped adding parameters; a lower bound:
            # one direction, no projection, float32, gradients allocated later)
            check_stack_memory(type(self).__name__, GATES[self._cell], *sizes[:2],
                               0, sizes[2], 1, np.float32, copies=1)
        super().__init__(*args, **kwargs)
        for name in ("bias", "batch_first", "bidirectional"):  # (torch.nn keeps them as given: 'False' ran as True)
            setattr(self, name, check_bool(name, getattr(self, name)))
        self.recurrent_dropout = check_probability("recurrent_dropout", recurrent_dropout)
        self.zoneout, self._zoneout_c = rates  # of h and (LSTM) c; the GRU's and RNN's zoneout_c is 0.0

    def extra_repr(self):
        s = super().extra_repr()
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"  # torch.nn.RNN's repr omits it; ours says which kernel runs
        if self.mode == "GRU" and not self.reset_after:
            s += ", reset_after=False"
        if self.recurrent_dropout:
            s += f", recurrent_dropout={self.recurrent_dropout}"
        return s + _zoneout_repr(self)

    def freeze(self, precision=None):
        """An inference-only copy with the weights packed once (optionally int8 or bf16): :func:`freeze`."""
        return freeze(self, precision)

    def _spec(self, **kw):
        options = {"nonlinearity": "relu" if self.mode == "RNN_RELU" else "tanh", "reset_after": self.reset_after}
        return _Spec(self._cell, options, **kw)

    def _zoneout_masks(self, layer, direction, T, B, dtype):
        """The zoneout masks of one training-mode call, for one layer and direction: (m_h [T, B, H_out],
        m_c [T, B, H] or None), each None where its rate is 0; 1 where a unit keeps its previous value at
        that step (Bernoulli draws with torch's RNG, so torch.manual_seed fixes them). ``forward`` draws
        every mask through this method: override it (on the instance) to see or fix them. Time is
        aligned with the input (entry t is the step that reads x[t], in either direction)."""
        H_out = self.proj_size or self.hidden_size
        device = self.weight_hh_l0.device
        m_h = _zoneout_mask((T, B, H_out), self.zoneout, dtype, device) if self.zoneout > 0 else None
        m_c = (_zoneout_mask((T, B, self.hidden_size), self.zoneout_c, dtype, device)
               if self._cell == "lstm" and self.zoneout_c > 0 else None)
        return m_h, m_c

    def _states(self, hx, B, unbatched, dtype):
        """(h0, c0): [L*D, B, size] tensors or None, checked as torch.nn checks them."""
        name = type(self).__name__
        LD = self.num_layers * (2 if self.bidirectional else 1)
        H_out = self.proj_size or self.hidden_size
        if hx is None:
            return None, None
        if self._cell == "lstm":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0) of tensors, got {type(hx).__name__}")
            states = [("hx[0]", hx[0], H_out, "hidden[0]"), ("hx[1]", hx[1], self.hidden_size, "hidden[1]")]
        else:
            states = [("hx", hx, H_out, "hidden")]
        out = []
        for arg, h, size, label in states:
            _check_tensor(name, arg, h, dtype)
            want = 2 if unbatched else 3
            if h.dim() != want:
                raise InputError(f"For {'unbatched 2-D' if unbatched else 'batched 3-D'} input, {arg} should "
                                   f"also be {want}-D but got {h.dim()}-D tensor")
            if unbatched:
                h = h.unsqueeze(1)
            expected = (LD, B, size)
            if tuple(h.shape) != expected:
                raise InputError(f"Expected {label} size {expected}, got {list(h.shape)}")
            out.append(h)
        return (out + [None])[:2]

    def forward(self, input, hx=None):
        """As torch.nn's forward: ``input`` [T, B, I] ([B, T, I] with ``batch_first``),
        unbatched [T, I], or a PackedSequence; ``hx``: h_0 (for the LSTM, a tuple
        (h_0, c_0)) of size [num_layers * num_directions, B, H], or None (zeros).
        Returns (output, h_n) or, for the LSTM, (output, (h_n, c_n)); output is a
        PackedSequence when the input is one."""
        if _onnx.exporting():  # standard ONNX LSTM/GRU/RNN nodes (pyrnn/_onnx.py)
            return _onnx.export_forward(self, input, hx)
        return self._forward(input, hx, None)

    def _forward_with_lengths(self, x, lengths, hx):
        """WithLengths' call while traced (torch.compile, torch.export, ...): padded ``x`` and its [B]
        ``lengths`` straight to the pyrnn::rnn_layer operator, which takes lengths, where packing
        (data-dependent shapes) does not trace; the padded output (zeros past each length) and the
        states at each sequence's last step, as packing gives them. None (pack instead) when not
        traced, for a subclass with a forward of its own, or where a hook would see the call (the
        module's or global ones: pruning's and weight_norm's pre-hooks recompute weights)."""
        if type(self).forward is not _PyrnnRNNMixin.forward or not _traced(x) or _hooked(self):
            return None
        return self._forward(x, hx, lengths.to(torch.int64))

    def _forward(self, input, hx, lengths):
        name = type(self).__name__
        dtype = _weights_dtype(self)
        input, hx = _autocast_inputs(dtype, input, hx)
        packed = isinstance(input, PackedSequence)
        if packed:
            _check_packed(name, input, dtype)
            x, lengths = pad_packed_sequence(input)  # [T, B, I] and lengths, in the caller's batch order
            unbatched = False
        else:
            _check_tensor(name, "input", input, dtype)
            if input.dim() not in (2, 3):
                raise InputError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        if x.size(-1) != self.input_size:
            raise InputError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {x.size(-1)}")
        if x.size(0) == 0:
            raise InputError(f"{name}: Expected sequence length to be larger than 0")
        T, B = x.shape[:2]
        h0_all, c0_all = self._states(hx, B, unbatched, dtype)
        traced = _traced(x)  # through the pyrnn::rnn_layer operator (lengths stay a tensor), else NumPy views
        options, lengths_np = self._spec().options, None
        if not traced:
            lengths_np = None if lengths is None else lengths.numpy().astype(np.int64, copy=False)

        D = 2 if self.bidirectional else 1
        H_out = self.proj_size or self.hidden_size
        check_training_rates(self)
        rec_p = self.recurrent_dropout if self.training else 0.0
        zoned = self.training and (self.zoneout > 0 or self.zoneout_c > 0)

        # A call of one step chains with the call whose h_n came back as hx (_StepChain).
        given = None if traced or T != 1 else _chains_given(hx[0] if isinstance(hx, (tuple, list)) else hx)
        chains = []

        def run(layer, d, layer_x):
            k = layer * D + d
            mask = _dropout_mask((B, H_out), rec_p, dtype) if rec_p > 0 else None
            zh, zc = self._zoneout_masks(layer, d, T, B, dtype) if zoned else (None, None)
            W_ih, W_hh, b_ih, b_hh, W_hr = _layer_weights(self, layer, d, None if traced else layer_x.size(-1))
            tensors = (layer_x, None if h0_all is None else h0_all[k], None if c0_all is None else c0_all[k],
                       W_ih, W_hh, b_ih, b_hh, W_hr)
            if traced:
                return _op(self._cell, options, d == 1, *tensors, lengths=lengths, h_mask=mask, zoneout_h=zh,
                           zoneout_c=zc)
            spec = _Spec(self._cell, options, d == 1, lengths_np, _np(mask), _np(zh), _np(zc), checked=True,
                         follows=given[k] if given is not None and k < len(given) else None)
            # (whether a gradient may follow from the tensors this call reads, as autograd decides: a
            # weight may be a tensor that is not the module's parameter, e.g. a hypernetwork's output
            # or AWD-LSTM's WeightDrop, whose raw parameter lives on a wrapper)
            out = _run(spec, _needs_grad(tensors), *tensors)
            if T == 1:
                chains.append(_chain_of(out[1]))
            return out

        result = _stacked_call(self, run, x, D, packed, unbatched, lengths, input)
        if any(c is not None for c in chains):
            _remember_chains(result[1][0] if self._cell == "lstm" else result[1], tuple(chains))
        return result


_LAYER_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def _check_weight_shapes(owner, names, weights, shapes):
    """InputError naming the first weight (not None) whose shape is not the expected one."""
    for name, w, shape in zip(names, weights, shapes):
        if w is not None and w.shape != shape:  # (torch.Size is a tuple)
            raise InputError(f"{owner}: {name} has shape {list(w.shape)}, expected {list(shape)}")


def _layer_weights(module, layer, d, width):
    """(W_ih, W_hh, b_ih, b_hh, W_hr) of a layer and direction (None where absent), as attribute
    access gives them, their shapes checked against the module's sizes (``width``: the layer's
    input width; None: not checked here, where the pyrnn::rnn_layer operator checks them). For
    pyrnn's own module classes a registered parameter is read from ``_parameters`` directly
    (Module.__getattr__ costs ~2-5 us per name); a subclass (torch.nn.utils.parametrize's
    included) or a weight held otherwise (AWD-LSTM's WeightDrop, a hypernetwork's tensor) goes
    through getattr."""
    sfx = _stack.param_suffix(layer, d)
    names = tuple(n + sfx for n in _LAYER_WEIGHTS)
    if type(module) in _MODULE_TYPES:
        p = module._parameters
        weights = tuple(p[n] if n in p else getattr(module, n, None) for n in names)
    else:
        weights = tuple(getattr(module, n, None) for n in names)
    if width is None:
        return weights
    GH, H = GATES[module._cell] * module.hidden_size, module.hidden_size
    H_out = module.proj_size or H
    _check_weight_shapes(type(module).__name__, names, weights, ((GH, width), (GH, H_out), (GH,), (GH,), (H_out, H)))
    if weights[0] is None or weights[1] is None:
        missing = names[0] if weights[0] is None else names[1]
        raise InputError(f"{type(module).__name__}: {missing} is missing (None)")
    if (weights[2] is None) != (weights[3] is None):
        raise InputError(f"{type(module).__name__}: {names[2]} and {names[3]} must both be set or both be None")
    return weights


def _stacked_call(module, run, x, D, packed, unbatched, lengths, input):
    """A recurrent module's layers in turn (``run(layer, d, x)`` -> (y, h_n, c_n); dropout between
    layers in training), and its results in the layout of ``input``."""
    def dropout(layer, y):
        if not (module.training and module.dropout > 0):
            return y
        if packed:  # torch.nn drops units of the packed data [sum(lengths), D*H]: the same draws, in that order
            p = _repack(y, lengths, input)
            p = PackedSequence(nn.functional.dropout(p.data, module.dropout, training=True), p.batch_sizes,
                               p.sorted_indices, p.unsorted_indices)
            return pad_packed_sequence(p, total_length=y.shape[0])[0]
        return nn.functional.dropout(y, module.dropout, training=True)

    out, results = _stack.forward(run, x, module.num_layers, D, concat=lambda ys: torch.cat(ys, 2), between=dropout)
    h_n = torch.stack([r[1] for r in results])
    c_n = torch.stack([r[2] for r in results]) if module._cell == "lstm" else None
    if packed:
        out = _repack(out, lengths, input)
    elif unbatched:
        out, h_n = out.squeeze(1), h_n.squeeze(1)
        c_n = None if c_n is None else c_n.squeeze(1)
    elif module.batch_first:
        out = out.transpose(0, 1)
    return (out, (h_n, c_n)) if module._cell == "lstm" else (out, h_n)


def _zoneout_repr(module):
    s = f", zoneout={module.zoneout}" if module.zoneout else ""
    if module._cell == "lstm" and module.zoneout_c != module.zoneout:
        s += f", zoneout_c={module.zoneout_c}"
    return s


def _repack(y, lengths, like):
    """Packs padded time-major y (caller's batch order) as ``like`` is packed."""
    order = like.sorted_indices
    if order is not None:
        y = y.index_select(1, order)
        lengths = lengths.index_select(0, order.to(lengths.device))
    data = pack_padded_sequence(y, lengths, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


# ------------------------------------------------------------ torch.compile --
#
# Dynamo refuses to trace any instance of torch.nn.RNN / GRU / LSTM (subclasses
# included) unless torch._dynamo.config.allow_rnn is set, and setting that
# globally makes dynamo trace torch.nn's own LSTM too (which fails to compile on
# the CPU in torch 2.13, where it otherwise runs eagerly behind a graph break).
# So dynamo's module wrapper is patched to allow these modules, and only them;
# lazily, when dynamo is first imported (importing it costs seconds).

_DYNAMO_BUILDER = "torch._dynamo.variables.builder"


def _allow_dynamo(builder):
    """Lets dynamo wrap (so trace into) pyrnn's sequence modules; torch.nn's keep their graph break."""
    cls = getattr(builder, "VariableBuilder", None)
    wrap = getattr(cls, "wrap_module", None)
    if wrap is None or getattr(wrap, "_pyrnn", False):
        return  # a torch that has moved this: torch._dynamo.config.allow_rnn = True still works
    from torch._dynamo import config

    @functools.wraps(wrap)
    def wrap_module(self, value):
        if isinstance(value, _PyrnnRNNMixin) and not config.allow_rnn:
            with config.patch(allow_rnn=True):
                return wrap(self, value)
        return wrap(self, value)

    wrap_module._pyrnn = True
    cls.wrap_module = wrap_module


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):  # get_source, get_filename, ... of the real loader
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _allow_dynamo(module)


class _DynamoImportHook(importlib.abc.MetaPathFinder):
    """Applies :func:`_allow_dynamo` when dynamo's variable builder is imported, then removes itself."""

    def find_spec(self, name, path=None, target=None):
        if name != _DYNAMO_BUILDER:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if find is None else find(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


if _DYNAMO_BUILDER in sys.modules:
    _allow_dynamo(sys.modules[_DYNAMO_BUILDER])
elif not any(isinstance(f, _DynamoImportHook) for f in sys.meta_path):
    sys.meta_path.insert(0, _DynamoImportHook())


class RNN(_PyrnnRNNMixin, nn.RNN):
    """torch.nn.RNN on pyrnn's kernels: h' = tanh|relu(W_ih x + b_ih + W_hh h + b_hh).

    Extra keywords: recurrent_dropout (variational dropout on h_{t-1}, training only);
    zoneout (the probability that a unit keeps its previous value at a step, training only).
    """

    _cell = "rnn"


class LSTM(_PyrnnRNNMixin, nn.LSTM):
    """torch.nn.LSTM on pyrnn's kernels (gates i, f, g, o; proj_size as PyTorch).

    Extra keywords: recurrent_dropout (variational dropout on h_{t-1}, training only);
    zoneout (the probability that a unit of h keeps its previous value at a step, training
    only) and zoneout_c (the same for the cell state c; None: zoneout).
    """

    _cell = "lstm"


class GRU(_PyrnnRNNMixin, nn.GRU):
    """torch.nn.GRU on pyrnn's kernels (gates r, z, n).

    Extra keywords: reset_after=False (Cho et al. v3 / Keras reset_after=False:
    n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)); recurrent_dropout; zoneout.
    """

    _cell = "gru"

    def __init__(self, *args, reset_after=True, **kwargs):
        reset_after = check_bool("reset_after", reset_after)
        super().__init__(*args, **kwargs)
        self.reset_after = reset_after


# ------------------------------------------------------------------- cells --

class _PyrnnCellMixin(CellStateZoneout):
    """forward for subclasses of torch.nn.RNNCellBase: one C++ step per call."""

    _cell = "rnn"
    reset_after = True
    zoneout = 0.0

    def __init__(self, *args, zoneout=0.0, zoneout_c=None, **kwargs):
        rates = zoneout_rates("LSTM" if self._cell == "lstm" else type(self).__name__, zoneout, zoneout_c)
        super().__init__(*args, **kwargs)
        self.zoneout, self._zoneout_c = rates

    def extra_repr(self):
        return super().extra_repr() + _zoneout_repr(self)

    def _zoneout_masks(self, B, dtype):
        """The zoneout masks of one training-mode step: (m_h [1, B, H], m_c [1, B, H] or None), each None
        where its rate is 0; 1 where a unit keeps its previous value (torch's RNG). Override it (on the
        instance) to see or fix them."""
        H, device = self.hidden_size, self.weight_hh.device
        m_h = _zoneout_mask((1, B, H), self.zoneout, dtype, device) if self.zoneout > 0 else None
        m_c = (_zoneout_mask((1, B, H), self.zoneout_c, dtype, device)
               if self._cell == "lstm" and self.zoneout_c > 0 else None)
        return m_h, m_c

    def _options(self):
        # (Only the RNN has a nonlinearity: a failed attribute lookup costs an LSTM or GRU step ~2 us.)
        return {"nonlinearity": getattr(self, "nonlinearity", "tanh") if self._cell == "rnn" else "tanh",
                "reset_after": self.reset_after}

    def freeze(self, precision=None):
        """An inference-only copy with the weights packed once (optionally int8 or bf16): :func:`freeze`."""
        return freeze(self, precision)

    def _step(self, input, states):
        if _onnx.exporting():  # a one-step ONNX node (pyrnn/_onnx.py)
            return _onnx.export_cell_step(self, input, [h for _, h in states])
        name = type(self).__name__
        dtype = _weights_dtype(self)
        input, states = _autocast_inputs(dtype, input, [(label, h) for label, h in states])
        _check_tensor(name, "input", input, dtype)
        if input.dim() not in (1, 2):
            raise InputError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if x.size(1) != self.input_size:
            raise InputError(f"{name}: input has inconsistent input_size: got {x.size(1)} expected "
                               f"{self.input_size}")
        checked = []
        for label, h in states:
            if h is not None:
                _check_tensor(name, label, h, dtype)
                if h.dim() != input.dim():
                    raise InputError(f"{name}: Expected {label} to be {input.dim()}D like the input, "
                                     f"got {h.dim()}D instead")
                h = h.unsqueeze(0) if unbatched else h
                if tuple(h.shape) != (x.size(0), self.hidden_size):
                    raise InputError(f"{name}: {label} has shape {list(h.shape)}, expected "
                                       f"{[x.size(0), self.hidden_size]} (batch, hidden_size)")
            checked.append(h)
        h0, c0 = (checked + [None])[:2]
        weights = _cell_weights(self)
        GH = GATES[self._cell] * self.hidden_size
        _check_weight_shapes(name, _CELL_WEIGHTS, weights,
                             ((GH, self.input_size), (GH, self.hidden_size), (GH,), (GH,)))
        zoned = self.training and (self.zoneout != 0 or self.zoneout_c != 0)
        if zoned:  # (a cell's only rates: check_training_rates checks nothing else that a cell uses)
            check_training_rates(self)
        zh, zc = self._zoneout_masks(x.size(0), dtype) if zoned else (None, None)
        grad = _needs_grad([x, h0, c0, *weights])
        if self.input_size == 0 or self.hidden_size == 0:  # (torch.nn's cells take these sizes; the kernels not)
            h1, c1 = _empty_size_step(self._cell, self._options(), x, h0, c0, *weights, zh, zc)
        elif _traced(x):
            _, h1, c1 = _op(self._cell, self._options(), False, x.unsqueeze(0), h0, c0, *weights, None,
                            zoneout_h=zh, zoneout_c=zc)
        elif grad and zh is None and zc is None:  # a training step: the kernels' one-step sequence, lean
            options = self._options()
            h1, *c1 = _Recurrence.apply(_Spec(self._cell, options, step=True, kind=_kind(self._cell, options)), x, h0,
                                        c0, *weights, None)
            c1 = c1[0] if c1 else None
        elif zh is not None or zc is not None or grad:  # a one-step sequence
            spec = _Spec(self._cell, self._options(), zoneout_h=_np(zh), zoneout_c=_np(zc))
            _, h1, c1 = _run(spec, grad, x.unsqueeze(0), h0, c0, *weights, None)
        else:
            arrays = [None if t is None else np.ascontiguousarray(_np(t)) for t in (x, h0, c0, *weights)]
            h1, c1 = (None if a is None else torch.from_numpy(a)
                      for a in _core.cell_step(_kind(self._cell, self._options()), *arrays))
        if unbatched:
            h1 = h1.squeeze(0)
            c1 = None if c1 is None else c1.squeeze(0)
        return h1, c1


_CELL_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _empty_size_step(cell, options, x, h0, c0, W_ih, W_hh, b_ih, b_hh, zh, zc):
    """One step of a cell with input_size or hidden_size 0, in torch operations (with their gradients):
    (h', c' or None). torch.nn's cells take these sizes; pyrnn's sequence kernels do not."""
    B, H = x.size(0), W_hh.size(1)
    h = x.new_zeros(B, H) if h0 is None else h0
    gi = x @ W_ih.t() + (0 if b_ih is None else b_ih)
    gh = h @ W_hh.t() + (0 if b_hh is None else b_hh)
    c1 = None
    if cell == "rnn":
        h1 = torch.relu(gi + gh) if options["nonlinearity"] == "relu" else torch.tanh(gi + gh)
    elif cell == "lstm":
        c = x.new_zeros(B, H) if c0 is None else c0
        i, f, g, o = (gi + gh).chunk(4, 1)
        c1 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h1 = torch.sigmoid(o) * torch.tanh(c1)
        if zc is not None:
            c1 = zc[0] * c + (1 - zc[0]) * c1
    else:
        r, z = torch.sigmoid(gi[:, :2 * H] + gh[:, :2 * H]).chunk(2, 1)
        if options["reset_after"]:
            n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        else:
            n = torch.tanh(gi[:, 2 * H:] + (r * h) @ W_hh[2 * H:].t() + (0 if b_hh is None else b_hh[2 * H:]))
        h1 = (1 - z) * n + z * h
    if zh is not None:
        h1 = zh[0] * h + (1 - zh[0]) * h1
    return h1, c1


def _cell_weights(cell):
    """(weight_ih, weight_hh, bias_ih, bias_hh) of a cell, as attribute access gives them. For
    pyrnn's own cell classes a registered parameter is read from ``_parameters`` directly
    (Module.__getattr__ costs ~1.7 us per name); a subclass (torch.nn.utils.parametrize's
    included) or a weight held otherwise (weight_norm's plain attribute) goes through getattr."""
    if type(cell) in _CELL_TYPES:
        p = cell._parameters
        return tuple(p[n] if n in p else getattr(cell, n) for n in _CELL_WEIGHTS)
    return tuple(getattr(cell, n) for n in _CELL_WEIGHTS)


class RNNCell(_PyrnnCellMixin, nn.RNNCell):
    """torch.nn.RNNCell on pyrnn's one-step kernel.

    Extra keyword: zoneout (the probability that a unit keeps its previous value, per call; training only).
    """

    _cell = "rnn"

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None, *,
                 zoneout=0.0):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity}")
        super().__init__(input_size, hidden_size, bias, nonlinearity, device=device, dtype=dtype, zoneout=zoneout)

    def forward(self, input, hx=None):
        """One step: ``input`` [B, I] (or unbatched [I]), ``hx`` h [B, H] or None (zeros). Returns h'."""
        return self._step(input, [("hx", hx)])[0]


class LSTMCell(_PyrnnCellMixin, nn.LSTMCell):
    """torch.nn.LSTMCell on pyrnn's one-step kernel (gates i, f, g, o).

    Extra keywords: zoneout (the probability that a unit of h keeps its previous value, per call;
    training only) and zoneout_c (the same for c; None: zoneout).
    """

    _cell = "lstm"

    # (an explicit signature, as torch.nn.LSTMCell's: torch.nn.utils.skip_init looks for `device`)
    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, zoneout=0.0, zoneout_c=None):
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype, zoneout=zoneout,
                         zoneout_c=zoneout_c)

    def forward(self, input, hx=None):
        """One step: ``input`` [B, I] (or unbatched [I]), ``hx`` a tuple (h, c) of [B, H] tensors or
        None (zeros). Returns (h', c')."""
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"LSTMCell: hx must be a tuple (h, c) of tensors or None, got {type(hx).__name__}")
        h, c = (None, None) if hx is None else hx
        if (h is None) != (c is None):
            raise TypeError(f"LSTMCell: hx must hold both h and c (or be None), got ({type(h).__name__}, "
                            f"{type(c).__name__})")
        return self._step(input, [("hx[0]", h), ("hx[1]", c)])


class GRUCell(_PyrnnCellMixin, nn.GRUCell):
    """torch.nn.GRUCell on pyrnn's one-step kernel (gates r, z, n).

    Extra keywords: reset_after=False (Cho et al. v3 / Keras reset_after=False); zoneout (as RNNCell).
    """

    _cell = "gru"

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, reset_after=True,
                 zoneout=0.0):
        reset_after = check_bool("reset_after", reset_after)
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype, zoneout=zoneout)
        self.reset_after = reset_after

    def extra_repr(self):
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")

    def forward(self, input, hx=None):
        """One step: ``input`` [B, I] (or unbatched [I]), ``hx`` h [B, H] or None (zeros). Returns h'."""
        return self._step(input, [("hx", hx)])[0]


_CELL_TYPES: frozenset[type] = frozenset((RNNCell, LSTMCell, GRUCell))
_MODULE_TYPES: frozenset[type] = frozenset((RNN, LSTM, GRU))


# ------------------------------------------------- frozen / quantised inference --

_RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)
_CELLS = (nn.LSTMCell, nn.GRUCell, nn.RNNCell)


def _numpy_copy(module):
    """A pyrnn NumPy layer or cell with a copy of a torch.nn / pyrnn.torch module's configuration and weights."""
    from . import cells as _cells_mod
    from . import layers as _layers_mod

    name = type(module).__name__
    dtype = _weights_dtype(module)
    np_dtype = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
    reset_after = getattr(module, "reset_after", True)
    if isinstance(module, _RECURRENT):
        common = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
                      bidirectional=module.bidirectional, dtype=np_dtype)
        if isinstance(module, nn.LSTM):
            out = _layers_mod.LSTM(module.input_size, module.hidden_size, proj_size=module.proj_size, **common)
        elif isinstance(module, nn.GRU):
            out = _layers_mod.GRU(module.input_size, module.hidden_size, reset_after=reset_after, **common)
        else:
            out = _layers_mod.RNN(module.input_size, module.hidden_size, nonlinearity=module.nonlinearity, **common)
    elif isinstance(module, _CELLS):
        common = dict(bias=module.bias, dtype=np_dtype)
        if isinstance(module, nn.LSTMCell):
            out = _cells_mod.LSTMCell(module.input_size, module.hidden_size, **common)
        elif isinstance(module, nn.GRUCell):
            out = _cells_mod.GRUCell(module.input_size, module.hidden_size, reset_after=reset_after, **common)
        else:
            out = _cells_mod.RNNCell(module.input_size, module.hidden_size, nonlinearity=module.nonlinearity,
                                     **common)
    else:
        raise TypeError(f"freeze needs a torch.nn (or pyrnn.torch) LSTM, GRU, RNN or one of their cells, got {name}")
    # getattr, not state_dict(): a parametrized weight (weight_norm, parametrize) is computed on access
    out.load_state_dict({k: getattr(module, k).detach().numpy().copy() for k, _ in out.named_parameters()})
    return out.eval()


def _state_arrays(owner, hx, dtype, lstm):
    """hx (a tensor, or for the LSTM a tuple (h, c)) as NumPy arrays."""
    if hx is None:
        return None
    if lstm:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"{owner}: hx must be a tuple (h, c) of tensors or None, got {type(hx).__name__}")
        for label, t in (("hx[0]", hx[0]), ("hx[1]", hx[1])):
            _check_tensor(owner, label, t, dtype)
        return (_np(hx[0]), _np(hx[1]))
    _check_tensor(owner, "hx", hx, dtype)
    return _np(hx)


class _Frozen(nn.Module):
    """A NumPy frozen copy (layer.freeze / cell.freeze) of a torch module, for inference."""

    def __init__(self, module, precision=None):
        super().__init__()
        self.source = type(module).__name__
        self.frozen = _numpy_copy(module).freeze(precision)
        self.torch_dtype = _weights_dtype(module)

    @property
    def precision(self):
        """Precision of the packed weights: "same" (the module's dtype), "int8" or "bf16"."""
        return self.frozen.precision

    def train(self, mode=True):
        """``train(False)`` (``eval()``) is allowed; ``train(True)`` raises RuntimeError: a frozen
        module is for inference only."""
        if mode:
            raise RuntimeError(f"{self.source}: a frozen module is for inference only; train the original")
        return super().train(False)

    def _apply(self, fn, recurse=True):
        # .to(dtype), .double(), .half(), .cuda(): there are no parameters to convert, and a silent
        # no-op would leave the inputs' dtype mismatched later. (.cpu() and .to("cpu") pass.)
        probe = fn(torch.zeros((), dtype=self.torch_dtype))
        if probe.dtype != self.torch_dtype or probe.device.type != "cpu":
            raise RuntimeError(f"{self.source}: a frozen module keeps the dtype ({self.torch_dtype}) and device (cpu) "
                               f"of the module it was made from; freeze a converted module instead")
        return super()._apply(fn, recurse)

    def _refuse_traced(self, x):
        """A frozen copy runs pyrnn's NumPy kernels on the tensors' memory: no graph can record it
        (torch.jit.trace kept the traced call's output as a constant; ONNX export failed inside torch)."""
        if _onnx.exporting():
            _onnx.refuse_export(f"{self.source} (frozen, {self.precision})",
                                "a frozen or quantized module runs pyrnn's packed kernels outside torch's graph; "
                                "export the float module it was made from")
        # (only what records instead of running: a dispatch mode such as FlopCounterMode, or a tensor
        # subclass with real memory, runs the kernels as before)
        if torch.jit.is_tracing() or torch._C._are_functorch_transforms_active() or _proxy_mode_active() or (
                isinstance(x, torch.Tensor) and (x.is_meta or type(x).__name__ in ("FakeTensor", "FunctionalTensor"))):
            raise RuntimeError(f"{self.source} (frozen): a frozen or quantized module cannot be traced (torch.jit.trace, "
                               f"torch.export, torch.func, fake tensors): it runs pyrnn's NumPy kernels on real tensors. "
                               f"Trace the float module it was made from (pyrnn.torch's layers trace through the "
                               f"pyrnn::rnn_layer operator); under torch.compile a frozen module is a graph break.")

    def _dispatch(self, run, input, hx):
        """``run(input, hx)`` eagerly; under torch.compile as a graph break (Dynamo cannot follow the
        NumPy kernels; a decorator would cost every eager call ~5 us). torch.export (non-strict) runs
        the break with fake tensors, which the check then refuses."""
        return (_frozen_call_eagerly if torch.compiler.is_compiling() else _frozen_call)(self, run, input, hx)

    # Its weights travel in state_dict() as extra state (float tensors, safe for
    # torch.load(weights_only=True)): a quantized model saved and loaded into a
    # freshly quantized one runs the saved weights, as torch's quantized modules do.
    def get_extra_state(self):
        """The frozen copy's precision and float weights, for ``state_dict()``."""
        if _onnx.exporting():  # (the TorchScript exporter reads the state before forward)
            self._refuse_traced(None)
        return {"precision": self.precision,
                "weights": {k: torch.from_numpy(np.array(v)) for k, v in self.frozen.named_parameters()}}

    def set_extra_state(self, state):
        """Packs the weights of ``get_extra_state()``'s result (``load_state_dict``), which must be
        of this frozen copy's precision, names and shapes."""
        weights = state.get("weights") if isinstance(state, dict) else None
        if not isinstance(weights, dict) or state.get("precision") != self.precision:
            raise RuntimeError(f"{self.source}: the state to load is not a frozen {self.source} of precision "
                               f"{self.precision!r}")
        mine = [k for k, _ in self.frozen.named_parameters()]
        try:
            if sorted(weights) != sorted(mine):
                raise ValueError(f"names {sorted(weights)}, expected {sorted(mine)}")
            self.frozen = self.frozen.with_weights({k: v.detach().cpu().numpy() for k, v in weights.items()})
        except ValueError as e:  # (with_weights checks the shapes)
            raise RuntimeError(f"{self.source}: the frozen weights to load have other names or shapes: {e}") from None


def _frozen_call(module, run, input, hx):
    """A frozen module's call on real tensors (refused where it would be recorded instead of run)."""
    module._refuse_traced(input.data if isinstance(input, PackedSequence) else input)
    out = run(input, hx)
    if torch.is_grad_enabled():
        given = [t for t in _tensors_in((input, hx)) if t.requires_grad]
        if given:
            return _map_tensors(out, lambda t: _FrozenNoGradient.apply(module.source, t, *given))
    return out


def _tensors_in(obj):
    """The tensors in a nest of tuples, lists and PackedSequences (a frozen module's inputs or outputs)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, PackedSequence):
        return [obj.data]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors_in(o)]
    return []


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, PackedSequence):
        return PackedSequence(fn(obj.data), obj.batch_sizes, obj.sorted_indices, obj.unsorted_indices)
    if isinstance(obj, tuple):
        return tuple(_map_tensors(o, fn) for o in obj)
    return obj


class _FrozenNoGradient(torch.autograd.Function):
    """A frozen module's output where its input (or hx) requires grad: the same values, and a backward
    through it raises. Plain outputs (no gradient) left such a path out of the input's gradient without
    a word (a loss f(x) + g(x) gave x.grad of g alone)."""

    @staticmethod
    def forward(ctx, source, out, *given):
        ctx.source = source
        ctx.mark_dirty(out)  # (the output itself, not a view: in-place ops on it stay allowed)
        return out

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(f"{ctx.source} (frozen): a frozen or quantized module is for inference only and has no "
                           f"backward; its output cannot pass a gradient to the input or hx. Call it under "
                           f"torch.no_grad() (or detach its inputs), or train through the float module it was made "
                           f"from")


# (a named function, so that Dynamo's fullgraph error says what it skipped)
_frozen_call_eagerly = torch.compiler.disable(_frozen_call)


def _proxy_mode_active():
    """Whether make_fx (a proxy dispatch mode) is recording: it would keep a frozen call's result as a
    constant. Other dispatch modes (FlopCounterMode, ...) run the call."""
    if torch._C._len_torch_dispatch_stack() == 0:
        return False
    try:
        from torch.fx.experimental.proxy_tensor import get_proxy_mode
    except ImportError:  # another torch layout: any mode counts
        return True
    return get_proxy_mode() is not None


class FrozenRNN(_Frozen):
    """Inference-only copy of an LSTM, GRU or RNN (torch.nn or pyrnn.torch) with
    its weights packed once, optionally in int8 or bf16: :func:`freeze`,
    :func:`quantize_dynamic`.

    Called like the module it was made from (padded or PackedSequence input,
    ``batch_first``, unbatched input, hx), returning the same structure. It
    holds a copy of the weights taken when it was made (no parameters: later
    changes to the original do not reach it; freeze again to use them).
    Outputs carry no gradient: where the input or hx requires grad (in grad mode), a
    backward through them raises.
    """

    def extra_repr(self):
        return f"{self.frozen!r}".replace(".freeze(", " frozen(")

    def forward(self, input, hx=None):
        """As the module it was made from: padded or PackedSequence ``input``, ``hx`` or None.
        Returns (output, h_n) or, for an LSTM, (output, (h_n, c_n)), without gradients."""
        return self._dispatch(self._run, input, hx)

    def _run(self, input, hx):
        owner = self.source
        layer = self.frozen
        packed = isinstance(input, PackedSequence)
        if packed:
            _check_packed(owner, input, self.torch_dtype)
            x, lengths = pad_packed_sequence(input, batch_first=layer.batch_first)
            lengths = lengths.numpy().astype(np.int64)
        else:
            _check_tensor(owner, "input", input, self.torch_dtype)
            x, lengths = input, None
        states = _state_arrays(owner, hx, self.torch_dtype, layer.mode == "LSTM")
        out, state = layer(_np(x), states, lengths=lengths)
        y = torch.from_numpy(out)
        if packed:
            y = _repack(y.transpose(0, 1) if layer.batch_first else y, torch.from_numpy(lengths), input)
        if layer.mode == "LSTM":
            return y, (torch.from_numpy(state[0]), torch.from_numpy(state[1]))
        return y, torch.from_numpy(state)


class FrozenRNNCell(_Frozen):
    """Inference-only copy of an LSTMCell, GRUCell or RNNCell (torch.nn or
    pyrnn.torch) with its weights packed once, optionally int8 or bf16; called
    like the cell. See :class:`FrozenRNN`."""

    def extra_repr(self):
        return repr(self.frozen)

    def forward(self, input, hx=None):
        """As the cell it was made from: ``input`` [B, I] or [I], ``hx`` (LSTM: a tuple (h, c)) or
        None. Returns h' (LSTM: (h', c')), without gradients."""
        return self._dispatch(self._run, input, hx)

    def _run(self, input, hx):
        owner = self.source
        _check_tensor(owner, "input", input, self.torch_dtype)
        lstm = self.frozen.cell.has_cell_state
        out = self.frozen(_np(input), _state_arrays(owner, hx, self.torch_dtype, lstm))
        if lstm:
            return torch.from_numpy(out[0]), torch.from_numpy(out[1])
        return torch.from_numpy(out)


def freeze(module, precision=None):
    """An inference-only copy of a recurrent module (LSTM, GRU, RNN or a cell;
    torch.nn or pyrnn.torch) with its weights packed once: :class:`FrozenRNN` or
    :class:`FrozenRNNCell`. ``precision``: None (the module's dtype, the same
    results), "int8" or "bf16" (float32 modules; see
    :func:`pyrnn.functional.pack_weights`)."""
    if isinstance(module, _RECURRENT + _CELLS) and type(module).forward not in _LAYER_FORWARDS:
        raise TypeError(f"freeze: {type(module).__name__} overrides forward(), which a frozen copy would not run; "
                        f"freeze the torch.nn or pyrnn.torch module inside it")
    if isinstance(module, _RECURRENT):
        return FrozenRNN(module, precision).eval()
    if isinstance(module, _CELLS):
        return FrozenRNNCell(module, precision).eval()
    raise TypeError(f"freeze needs a torch.nn (or pyrnn.torch) LSTM, GRU, RNN or one of their cells, "
                    f"got {type(module).__name__}")


# pyrnn.torch's drop-ins and the torch.nn classes they replace; the forwards a frozen copy computes
# (a subclass that overrides forward may compute otherwise)
_DROP_INS = {LSTM: nn.LSTM, GRU: nn.GRU, RNN: nn.RNN, LSTMCell: nn.LSTMCell, GRUCell: nn.GRUCell, RNNCell: nn.RNNCell}
_LAYER_CLASSES: "tuple[type[nn.Module], ...]" = (*_RECURRENT, *_CELLS, *_DROP_INS)
_LAYER_FORWARDS = {c.forward for c in _LAYER_CLASSES}


def _freeze_with_hooks(module, precision):
    """freeze(module), with the forward hooks and pre-hooks of ``module`` (as torch.ao's swap_module)."""
    frozen = freeze(module, precision)
    for key, hook in module._forward_pre_hooks.items():
        frozen.register_forward_pre_hook(hook, with_kwargs=key in module._forward_pre_hooks_with_kwargs)
    for key, hook in module._forward_hooks.items():
        frozen.register_forward_hook(hook, with_kwargs=key in module._forward_hooks_with_kwargs,
                                     always_call=key in module._forward_hooks_always_called)
    return frozen


_QUANT_DTYPES = {torch.qint8: "int8", torch.bfloat16: "bf16", "int8": "int8", "bf16": "bf16"}


def _qconfig_precision(key, qconfig):
    """The precision a ``qconfig_spec`` dict entry asks for: None leaves the module in float (torch's
    meaning), a qconfig its weight observer's dtype (torch.qint8; pyrnn's bf16 for torch.bfloat16)."""
    if qconfig is None:
        return None
    weight = getattr(qconfig, "weight", None)
    if not callable(weight):
        raise TypeError(f"quantize_dynamic: qconfig_spec's entry for {key} must be a qconfig (e.g. "
                        f"torch.ao.quantization.default_dynamic_qconfig) or None, got {type(qconfig).__name__}")
    wdtype = getattr(weight(), "dtype", None)
    if wdtype not in _QUANT_DTYPES:
        raise ValueError(f"quantize_dynamic: qconfig_spec's entry for {key} asks for {wdtype} weights; pyrnn's "
                         f"kernels take torch.qint8 or torch.bfloat16 (float16_dynamic_qconfig: use "
                         f"dtype=torch.bfloat16)")
    return _QUANT_DTYPES[wdtype]


def quantize_dynamic(model, qconfig_spec=None, dtype=torch.qint8, mapping=None, inplace=False):
    """torch.ao.quantization.quantize_dynamic for recurrent layers, on pyrnn's kernels.

    Replaces every LSTM, GRU, RNN and cell (torch.nn or pyrnn.torch) in
    ``model`` by a :func:`freeze` copy in ``dtype``: ``torch.qint8`` (int8
    weights with a scale per row, activations quantised per row dynamically,
    int32 sums, as torch's dynamic quantisation) or ``torch.bfloat16`` (bf16
    weights, fp32 sums). ``qconfig_spec``, as torch's: None (every such
    module), a set of module types or of submodule names (as
    ``model.named_modules()`` gives them), or a dict from those to qconfigs
    (a qconfig's weight dtype then replaces ``dtype``; None leaves the module
    in float). An entry covers the modules under it too (a container's type or
    name), a name's entry overriding a type's; a module held under several
    names becomes one frozen copy if any of its names selects it. As torch's, a type matches only
    modules of exactly that type (torch.nn.LSTM matches pyrnn.torch.LSTM too),
    and the converted modules keep their forward hooks and pre-hooks. A
    subclass that overrides ``forward`` is left as it is (its computation is not
    the layer's). Other modules (Linear included) are left as they are;
    torch's own ``quantize_dynamic(model, {nn.Linear})`` can follow. Returns
    the converted model (a copy unless ``inplace``); a recurrent module given
    as ``model`` is returned converted. ``mapping``, in torch's place (before
    ``inplace``): None, or torch's dict from float module types to quantized
    ones (e.g. ``get_default_dynamic_quant_module_mappings()``), of which
    pyrnn reads the keys: only recurrent modules of those types are converted
    (torch's default has no ``nn.RNN``), each by a frozen copy whatever the
    value.
    """
    if not isinstance(dtype, (torch.dtype, str)) or dtype not in _QUANT_DTYPES:  # (a list: unhashable)
        raise ValueError(f"quantize_dynamic: dtype must be torch.qint8 or torch.bfloat16, got {dtype!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_dynamic needs a torch.nn.Module, got {type(model).__name__}")
    if mapping is not None and not isinstance(mapping, Mapping):  # (inplace passed 4th, as pyrnn's old order)
        raise TypeError(f"quantize_dynamic: mapping (4th, as torch's) must be None or a dict from float module "
                        f"types to quantized ones, got {type(mapping).__name__} {mapping!r}; pass inplace= by name")
    if qconfig_spec is None:
        qconfig_spec = set(_RECURRENT + _CELLS)  # (and so pyrnn.torch's drop-ins of them)
    if isinstance(qconfig_spec, (str, type)) or not hasattr(qconfig_spec, "__iter__"):  # ("rnn" split into letters)
        raise TypeError(f"quantize_dynamic: qconfig_spec must be a set (or dict) of module types or submodule "
                        f"names, e.g. {{torch.nn.LSTM}}, got {type(qconfig_spec).__name__} {qconfig_spec!r}")
    # (a dict's qconfigs are read only where they reach a module pyrnn converts: a spec shared with
    # torch's own quantize_dynamic may hold float16 entries for its Linear layers)
    spec = dict(qconfig_spec) if isinstance(qconfig_spec, Mapping) else dict.fromkeys(set(qconfig_spec), dtype)
    if not all(isinstance(k, (type, str)) for k in spec):
        raise TypeError("quantize_dynamic: qconfig_spec must hold module types or submodule names")

    def lookup(name, m, inherited):
        """The spec entry for module m at name: its name's entry, else its type's (a pyrnn.torch
        drop-in's torch.nn type's, then its own), else its parent's."""
        q = inherited
        for t in (_DROP_INS.get(type(m)), type(m)):
            if t is not None and t in spec:
                q = spec[t]
        return spec.get(name, q)

    def precision_of(key, q):
        if q is None:
            return None
        return _QUANT_DTYPES[q] if not isinstance(qconfig_spec, Mapping) else _qconfig_precision(key, q)

    def convertible(m):
        return (isinstance(m, _RECURRENT + _CELLS) and type(m).forward in _LAYER_FORWARDS
                and (mapping is None or type(m) in mapping or _DROP_INS.get(type(m)) in mapping))

    root = lookup("", model, None)
    if convertible(model):
        p = precision_of(f"the model ({type(model).__name__})", root)
        if p is not None:
            return _freeze_with_hooks(model, p)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()  # as torch's: the result is for inference (a frozen copy cannot train)
    # A module held under several names is one frozen copy, made when any of its names selects it
    # (the first such name's precision): first every location is looked up, then replaced.
    chosen, places = {}, []

    def walk(module, prefix, inherited):
        for child_name, child in list(module._modules.items()):
            if child is None:
                continue
            full = prefix + child_name
            q = lookup(full, child, inherited)
            if convertible(child):
                places.append((module, child_name, child))
                p = precision_of(f"submodule {full!r} ({type(child).__name__})", q)
                if p is not None:
                    chosen.setdefault(id(child), p)
            else:
                walk(child, full + ".", q)

    walk(model, "", root)
    done = {}
    for module, child_name, child in places:
        if id(child) in chosen:
            if id(child) not in done:
                done[id(child)] = _freeze_with_hooks(child, chosen[id(child)])
            setattr(module, child_name, done[id(child)])
    return model


# ----------------------------------------------- layer-normalised LSTM / GRU --
#
# pyrnn.torch.LayerNormLSTM / LayerNormGRU: the equations, parameter names and
# initialisation of pyrnn.LayerNormLSTM / LayerNormGRU (see pyrnn.layernorm),
# as torch.nn.Modules. In eager calls each (layer, direction) is one
# autograd.Function running the fused C++ forward and BPTT
# (pyrnn.functional.layernorm_*) on NumPy views; when traced (torch.compile,
# torch.export, torch.func, a TorchDispatchMode: _traced) it is the custom
# operator pyrnn::layernorm_layer instead (pyrnn._torch_ops: fake kernels, an
# autograd formula whose backward reads the forward's workspace through the
# residual output, vmap rules), as the plain layers' pyrnn::rnn_layer. CPU
# float32 / float64. recurrent_dropout and zoneout masks are drawn with torch's
# RNG as LSTM's are and reach the kernels as constants (no gradient flows to them).

_LN_ORDER = ("x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh", "ln_ih", "ln_hh", "ln_c_weight", "ln_c_bias",
             "W_hr")


def _layernorm_kernel_forward(cell, lengths, reverse, masks, arrays, training):
    """masks: (h_mask, zoneout_h, zoneout_c), NumPy arrays or None."""
    x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_cw, ln_cb, W_hr = arrays
    h_mask, zoneout_h, zoneout_c = masks
    kw = {"lengths": lengths, "reverse": reverse, "training": training, "h_mask": h_mask, "zoneout_h": zoneout_h}
    if cell == "lstm":
        return F.layernorm_lstm_forward(x, h0, c0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, ln_cw, ln_cb,
                                        zoneout_c=zoneout_c, W_hr=W_hr, **kw)
    y, h_n, ws = F.layernorm_gru_forward(x, h0, W_ih, W_hh, b_ih, b_hh, ln_ih, ln_hh, **kw)
    return y, h_n, None, ws


def _layernorm_functorch_apply(*args):
    if torch.compiler.is_compiling():
        return torch._dynamo.disable(_torch_ops.LayerNormLayerFunction.apply)(*args)
    return _torch_ops.LayerNormLayerFunction.apply(*args)


def _layernorm_op(cell, reverse, tensors, lengths, h_mask, zoneout_h, zoneout_c):
    """(y, h_n, c_n or None) for one layer-normalised layer and direction through the
    pyrnn::layernorm_layer operator; tensors as _LN_ORDER (None where absent)."""
    training = _needs_grad(tuple(tensors) + (h_mask,))  # keep the workspace only when a gradient may follow
    args = (*tensors, lengths, h_mask, zoneout_h, zoneout_c, cell, reverse, training)
    if torch._C._are_functorch_transforms_active():
        y, h_n, c_n, _ = _layernorm_functorch_apply(*args)
    else:
        y, h_n, c_n, _ = torch.ops.pyrnn.layernorm_layer(*args)
    return y, h_n, (c_n if cell == "lstm" else None)


class _LayerNormRecurrence(_torch_ops.NoForwardAD, torch.autograd.Function):
    """One layer and direction of a layer-normalised cell. Inputs: cell, lengths
    (int64 array or None), reverse, masks ((h_mask, zoneout_h, zoneout_c),
    NumPy arrays or None: constants), then the tensors of _LN_ORDER (None
    where absent). Outputs: y [T, B, Ho], h_n [B, Ho] and, for the LSTM, c_n [B, H]
    (Ho: proj_size with the LSTM's projection W_hr, else H)."""

    @staticmethod
    def forward(ctx, cell, lengths, reverse, masks, *tensors):
        y, h_n, c_n, ws = _layernorm_kernel_forward(cell, lengths, reverse, masks, [_np(t) for t in tensors], True)
        outs = _training_outputs(y, h_n, c_n)
        ctx.cell, ctx.call = cell, (lengths, reverse, masks)
        hooks = _saved_tensor_hooks_active()
        token = _hold_workspace(ctx, ws, hooks)
        ctx.set_materialize_grads(False)  # unused outputs give None: zeros for the kernel
        ctx.save_for_backward(*tensors, token)  # the workspace reads their memory in backward
        # (copies from saved_tensors_hooks: backward may run the forward again on them, as _Recurrence's)
        ctx.rerun = _Rerun(tensors, (lengths, reverse, masks)) if hooks else None
        return outs

    @staticmethod
    def backward(ctx, *grad_outputs):
        # raises if an input was modified in place since forward (read once, as above)
        saved = ctx.saved_tensors[:-1]
        _refuse_batched(grad_outputs)
        if ctx.rerun is not None and ctx.rerun.needed():
            ctx.held.ws = None  # (not two workspaces at once)
            ctx.held.ws = _layernorm_kernel_forward(ctx.cell, *ctx.rerun.args, [_np(t) for t in saved], True)[3]
        ws = _held_workspace(ctx, lambda: _layernorm_kernel_forward(ctx.cell, *ctx.call, [_np(t) for t in saved],
                                                                     True)[3])
        dy, dh_n = (_np(g) for g in grad_outputs[:2])
        if ctx.cell == "lstm":
            grads = F.layernorm_lstm_backward(ws, dy, dh_n, _np(grad_outputs[2]))
            grads = (*grads, None) if len(grads) < len(_LN_ORDER) else grads  # dW_hr: with a projection only
        else:
            dx, dh0, *rest = F.layernorm_gru_backward(ws, dy, dh_n)
            grads = (dx, dh0, None, *rest, None, None, None)
        out = [None if g is None or not need else torch.from_numpy(g)
               for g, need in zip(grads, ctx.needs_input_grad[4:])]
        out = _guard_create_graph(out, saved[:len(_LN_ORDER)], grad_outputs)
        return (None, None, None, None, *out)


class _LayerNormRNN(CellStateZoneout, nn.Module):
    recurrent_dropout = 0.0  # (class defaults: modules pickled before these options existed have none)
    zoneout = 0.0

    proj_size = 0

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, *, recurrent_dropout=0.0, zoneout=0.0,
                 zoneout_c=None, proj_size=0):
        rates = zoneout_rates("LSTM" if mode == "LSTM" else type(self).__name__, zoneout, zoneout_c)
        rec_p = check_probability("recurrent_dropout", recurrent_dropout)
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers),
                        ("proj_size", proj_size)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name} should be of type int, got: {type(v).__name__}")
            if v < 0 or (v == 0 and name != "proj_size"):
                raise ValueError(f"{name} must be greater than zero" if name != "proj_size"
                                 else "proj_size should be a positive integer or zero to disable projections")
        if proj_size and mode != "LSTM":
            raise ValueError(f"proj_size argument is only supported for LayerNormLSTM, not {type(self).__name__}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} and "
                             f"hidden_size={hidden_size}")
        check_layer_dropout(dropout, num_layers)
        input_size, hidden_size, num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.mode, self._cell = mode, mode.lower()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = check_bool("bias", bias), check_bool("batch_first", batch_first)
        self.dropout = float(dropout)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        if _allocates(device):
            check_stack_memory(type(self).__name__, GATES[self._cell], input_size, hidden_size, int(proj_size),
                               num_layers, 2 if self.bidirectional else 1, np.float32, copies=1)
        self.proj_size = proj_size = int(proj_size)
        self.recurrent_dropout = rec_p
        self.zoneout, self._zoneout_c = rates  # of h and (LSTM) c; the GRU's zoneout_c is 0.0
        G, H, P = (4 if mode == "LSTM" else 3), hidden_size, proj_size
        H_out = P or H
        D = 2 if bidirectional else 1
        factory = {"device": device, "dtype": dtype}
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else H_out * D
            for d in range(D):
                sfx = _stack.param_suffix(layer, d)
                shapes = {"weight_ih": (G * H, in_size), "weight_hh": (G * H, H_out), "ln_weight_ih": (G * H,),
                          "ln_weight_hh": (G * H,)}
                if self.bias:
                    shapes.update(bias_ih=(G * H,), bias_hh=(G * H,))
                if P:
                    shapes["weight_hr"] = (P, H)
                if mode == "LSTM":
                    shapes["ln_weight_c"] = (H,)
                    if self.bias:
                        shapes["ln_bias_c"] = (H,)
                # torch.nn.LSTM's order (weight_hr after the biases), then the layer norms'
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "ln_weight_ih",
                             "ln_weight_hh", "ln_weight_c", "ln_bias_c"):
                    if name in shapes:
                        self.register_parameter(name + sfx, nn.Parameter(torch.empty(shapes[name], **factory)))
        self.reset_parameters()

    def reset_parameters(self):
        """Weights uniform(-1/sqrt(H), 1/sqrt(H)) (as torch.nn.LSTM), gains 1, betas 0."""
        bound = 1.0 / self.hidden_size ** 0.5
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("weight"):
                    p.uniform_(-bound, bound)
                elif name.startswith("ln_weight"):
                    p.fill_(1.0)
                else:
                    p.zero_()

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.recurrent_dropout:
            s += f", recurrent_dropout={self.recurrent_dropout}"
        return s + _zoneout_repr(self)

    def _zoneout_masks(self, layer, direction, T, B, dtype):
        """The zoneout masks of one training-mode call, for one layer and direction: (m_h [T, B, H_out]
        (H_out: proj_size or hidden_size), m_c [T, B, H] or None), each None where its rate is 0; 1 where a unit keeps its previous value at
        that step (Bernoulli draws with torch's RNG, so torch.manual_seed fixes them). ``forward`` draws
        every mask through this method: override it (on the instance) to see or fix them. Time is
        aligned with the input (entry t is the step that reads x[t], in either direction)."""
        device = self.weight_hh_l0.device
        H_out = self.proj_size or self.hidden_size
        m_h = _zoneout_mask((T, B, H_out), self.zoneout, dtype, device) if self.zoneout > 0 else None
        m_c = (_zoneout_mask((T, B, self.hidden_size), self.zoneout_c, dtype, device)
               if self._cell == "lstm" and self.zoneout_c > 0 else None)
        return m_h, m_c

    def _states(self, hx, B, unbatched, dtype):
        name = type(self).__name__
        LD = self.num_layers * (2 if self.bidirectional else 1)
        if hx is None:
            return None, None
        if self._cell == "lstm":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0) of tensors, got {type(hx).__name__}")
            given = [("hx[0]", hx[0]), ("hx[1]", hx[1])]
        else:
            given = [("hx", hx)]
        out = []
        for k, (arg, h) in enumerate(given):
            _check_tensor(name, arg, h, dtype)
            if h.dim() != (2 if unbatched else 3):
                raise InputError(f"{name}: {arg} should be {2 if unbatched else 3}-D, got {h.dim()}-D")
            h = h.unsqueeze(1) if unbatched else h
            width = (self.proj_size or self.hidden_size) if k == 0 else self.hidden_size  # h0 is P wide, c0 H
            if tuple(h.shape) != (LD, B, width):
                raise InputError(f"{name}: expected {arg} of size {(LD, B, width)}, got {list(h.shape)}")
            out.append(h.contiguous())
        return (out + [None])[:2]

    def forward(self, input, hx=None, lengths=None):
        """As pyrnn.torch.LSTM / GRU: input [T, B, I] ([B, T, I] with batch_first),
        unbatched [T, I], or a PackedSequence; hx: h_0 (and c_0 for the LSTM, a
        tuple) of size [num_layers * num_directions, B, H] (h_0: proj_size wide with a
        projection), or None. ``lengths``
        (a [B] integer tensor or array, padded input only): PyTorch's packed-sequence
        semantics on a padded batch (outputs zero past each length, h_n at each
        sequence's own last step). Returns (output, h_n) or (output, (h_n, c_n))."""
        name = type(self).__name__
        if _onnx.exporting():
            _onnx.refuse_export(name, "layer-normalised layers have no standard ONNX node (the ONNX LSTM and GRU "
                                      "operators normalise nothing)")
        dtype = _weights_dtype(self)
        input, hx = _autocast_inputs(dtype, input, hx)
        packed = isinstance(input, PackedSequence)
        if packed:
            if lengths is not None:
                raise ValueError(f"{name}: a PackedSequence carries its lengths; do not pass lengths too")
            _check_packed(name, input, dtype)
            x, lengths = pad_packed_sequence(input)
            unbatched = False
        else:
            _check_tensor(name, "input", input, dtype)
            if input.dim() not in (2, 3):
                raise InputError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        if x.size(-1) != self.input_size:
            raise InputError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                             f"got {x.size(-1)}")
        T, B = x.shape[:2]
        traced = _traced(x)  # through the pyrnn::layernorm_layer operator (lengths a tensor), else NumPy views
        lengths_np, lengths_t = None, None
        if lengths is not None and traced:
            # the values (in [1, T]) are checked by the kernel when it runs
            lengths_t = lengths if isinstance(lengths, torch.Tensor) else torch.as_tensor(np.asarray(lengths))
            if lengths_t.dtype == torch.bool or lengths_t.is_floating_point() or lengths_t.is_complex():
                raise TypeError(f"{name}: lengths must be an integer array, got dtype {lengths_t.dtype}")
            lengths_t = lengths_t.to(torch.int64)
        elif lengths is not None:
            from ._validation import check_lengths
            given = np.asarray(to_numpy(lengths, "lengths"))
            lengths_np = np.ascontiguousarray(check_lengths(given, T, B), dtype=np.int64)  # dtype checked first
        h0_all, c0_all = self._states(hx, B, unbatched, dtype)
        D = 2 if self.bidirectional else 1
        check_training_rates(self)
        rec_p = self.recurrent_dropout if self.training else 0.0
        zoned = self.training and (self.zoneout > 0 or self.zoneout_c > 0)

        def run(layer, d, layer_x):
            k = layer * D + d
            mask = _dropout_mask((B, self.proj_size or self.hidden_size), rec_p, dtype) if rec_p > 0 else None
            zh, zc = self._zoneout_masks(layer, d, T, B, dtype) if zoned else (None, None)
            sfx = _stack.param_suffix(layer, d)
            p = {short: getattr(self, n + sfx, None) for short, n in (
                ("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh"),
                ("ln_ih", "ln_weight_ih"), ("ln_hh", "ln_weight_hh"), ("ln_c_weight", "ln_weight_c"),
                ("ln_c_bias", "ln_bias_c"), ("W_hr", "weight_hr"))}
            tensors = (layer_x.contiguous(), None if h0_all is None else h0_all[k],
                       None if c0_all is None else c0_all[k], *(p[n] for n in _LN_ORDER[3:]))
            if traced:
                return _layernorm_op(self._cell, d == 1, tensors, lengths_t, mask, zh, zc)
            masks = (_np(mask), _np(zh), _np(zc))
            if _needs_grad(tensors):  # (the tensors this call reads, as in _PyrnnRNNMixin.forward)
                outs = _LayerNormRecurrence.apply(self._cell, lengths_np, d == 1, masks, *tensors)
                return outs if len(outs) == 3 else (outs[0], outs[1], None)
            y, h_n, c_n, _ = _layernorm_kernel_forward(self._cell, lengths_np, d == 1, masks,
                                                       [_np(t) for t in tensors], False)
            return torch.from_numpy(y), torch.from_numpy(h_n), None if c_n is None else torch.from_numpy(c_n)

        return _stacked_call(self, run, x, D, packed, unbatched, lengths, input)


class LayerNormLSTM(_LayerNormRNN):
    """Layer-normalised LSTM (Ba et al. 2016; the equations in :mod:`pyrnn.layernorm`)
    as a torch.nn.Module: parameters weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k},
    bias_hh_l{k} (the gate layer norms' betas), ln_weight_ih_l{k}, ln_weight_hh_l{k}
    (their gains), ln_weight_c_l{k}, ln_bias_c_l{k} (the cell state's), with
    ``_reverse`` for the second direction; bias=False removes every beta.
    proj_size > 0 (as torch.nn.LSTM's) adds weight_hr_l{k} [proj_size, hidden_size]
    after the betas: h = W_hr (o * tanh(LN(c))) is proj_size wide (weight_hh
    [4 * hidden_size, proj_size], h_0 and h_n [.., proj_size], the output
    num_directions * proj_size wide); c stays hidden_size wide.

    Extra keywords, as :class:`LSTM`'s: recurrent_dropout (variational dropout on
    h_{t-1} where it enters W_hh h, training only); zoneout (the probability that
    a unit of h keeps its previous value at a step, training only) and zoneout_c
    (the same for the cell state c; h~ reads the LN of the un-zoned c~; None: zoneout). Masks
    are drawn with torch's RNG per call, layer and direction.

    torch.compile (fullgraph, training steps included), torch.export and torch.func
    (grad, vjp, vmap) trace it through the custom operator ``pyrnn::layernorm_layer``
    (see :mod:`pyrnn.torch`'s notes on ``pyrnn::rnn_layer``; a PackedSequence input
    graph-breaks under torch.compile, as there)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, *, recurrent_dropout=0.0, zoneout=0.0,
                 zoneout_c=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, recurrent_dropout=recurrent_dropout, zoneout=zoneout, zoneout_c=zoneout_c,
                         proj_size=proj_size)


class LayerNormGRU(_LayerNormRNN):
    """Layer-normalised GRU (reset-after; :mod:`pyrnn.layernorm`) as a torch.nn.Module;
    parameters as :class:`LayerNormLSTM` without the cell-state ones. Extra keywords:
    recurrent_dropout (z * h keeps the unmasked h) and zoneout, as :class:`GRU`'s.
    Traced by torch.compile, torch.export and torch.func as :class:`LayerNormLSTM`."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, *, recurrent_dropout=0.0, zoneout=0.0,
                 zoneout_c=None, proj_size=0):
        # zoneout_c and proj_size are accepted only to be refused with the reason (as GRU's; torch.nn.GRU
        # refuses proj_size with a ValueError too)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, recurrent_dropout=recurrent_dropout, zoneout=zoneout, zoneout_c=zoneout_c,
                         proj_size=proj_size)
