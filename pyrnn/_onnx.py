"""ONNX export of pyrnn.torch's LSTM / GRU / RNN and their cells: standard ONNX LSTM, GRU and RNN nodes.

``torch.onnx.export`` of a model holding ``pyrnn.torch`` layers writes one
ONNX ``LSTM`` / ``GRU`` / ``RNN`` node per layer (both directions in one
node; a cell: one node over one step), with the weights in ONNX's layout and
gate order (LSTM: torch's i, f, g, o become ONNX's i, o, f, c; GRU: torch's
r, z, n become z, r, h; biases ``[Wb, Rb]``), folded into the model's
initializers, so a model trained with pyrnn runs on ONNX Runtime or any ONNX
backend. The GRU exports with ``linear_before_reset=1`` (torch's equations)
or, for ``reset_after=False``, ``linear_before_reset=0``; the RNN with
``activations=["Tanh"]`` or ``["Relu"]``. pyrnn.torch's modules call
:func:`export_forward` / :func:`export_cell_step` while
``torch.onnx.is_in_onnx_export()`` (:func:`exporting`); both also take torch.nn's modules.

Both exporters: the TorchScript one (``torch.onnx.export(..., dynamo=False)``,
needs ``onnx``) and torch's default ``dynamo=True`` one (needs ``onnxscript``
too, as for any model).

Variable lengths: wrap the layer in :class:`WithLengths`; its forward takes
padded ``x`` and ``lengths`` ([B] integers), returns padded outputs (zeros
past each length, as ``pad_packed_sequence`` and ONNX give) and the states at
each sequence's last step, and exports with ``lengths`` feeding every node's
``sequence_lens`` input::

    model = WithLengths(pyrnn.torch.LSTM(10, 20, batch_first=True))
    y, (h_n, c_n) = model(x, lengths)                  # training and inference in torch
    torch.onnx.export(model, (x, lengths), "m.onnx", input_names=["x", "lengths"],
                      dynamic_axes={"x": {0: "B", 1: "T"}, "lengths": {0: "B"}})  # dynamo=False

The torch idiom ``pack_padded_sequence`` -> layer -> ``pad_packed_sequence``
exports too with the TorchScript exporter: a PackedSequence input goes to
torch.nn's own forward (the same parameters), whose packing that exporter
turns into ``sequence_lens`` (torch.nn's GRU only: not ``reset_after=False``).

Not exportable (a clear error): LayerNormLSTM / LayerNormGRU, frozen and
quantized modules (:func:`pyrnn.torch.freeze`, :func:`pyrnn.torch.quantize_dynamic`:
export the float module), LSTM ``proj_size`` (the ONNX LSTM has no
projection), dropout, recurrent_dropout or zoneout in training mode (export in
``eval()``, torch's default, where zoneout is the identity), a PackedSequence with the dynamo exporter or for
``GRU(reset_after=False)`` (use :class:`WithLengths`).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _stack
from . import functional as F

__all__ = ["export_forward", "export_cell_step", "WithLengths"]

# mode (torch.nn.RNNBase.mode) -> (ONNX op, pyrnn cell, the torch gate block at each ONNX gate position)
_OPS = {
    "LSTM": ("LSTM", "lstm", (0, 3, 1, 2)),  # torch i f g o -> ONNX i o f c
    "GRU": ("GRU", "gru", (1, 0, 2)),  # torch r z n -> ONNX z r h
    "RNN_TANH": ("RNN", "rnn", (0,)),
    "RNN_RELU": ("RNN", "rnn", (0,)),
}


def _mode(module):
    mode = getattr(module, "mode", None)
    if mode not in _OPS:
        raise TypeError(f"pyrnn ONNX export: expected an LSTM, GRU or RNN module, got {type(module).__name__}")
    return mode


def _check_exportable(module, name):
    if getattr(module, "proj_size", 0):
        raise NotImplementedError(
            f"{name}: cannot export an LSTM with proj_size={module.proj_size} to ONNX: the ONNX LSTM operator has "
            "no projection (h_t = W_hr (o_t * tanh(c_t)) feeds the recurrence, which no standard ONNX LSTM node "
            "computes). Export a model without proj_size, or run this layer outside the ONNX graph.")
    if module.training and (module.dropout > 0 or getattr(module, "recurrent_dropout", 0.0) > 0):
        raise NotImplementedError(
            f"{name}: ONNX export is for inference, but the module is in training mode with dropout "
            f"{module.dropout} / recurrent_dropout {getattr(module, 'recurrent_dropout', 0.0)}: call model.eval() "
            "(or export with the default training=torch.onnx.TrainingMode.EVAL)")
    _check_no_zoneout(module, name)


def refuse_export(name, reason):
    """The error of a module that has no ONNX form, raised during torch.onnx.export."""
    raise NotImplementedError(f"{name}: cannot export to ONNX: {reason}. Run this module outside the exported "
                              "graph, or export a model built from pyrnn.torch.LSTM / GRU / RNN and their cells.")


def _check_no_zoneout(module, name):
    """Zoneout (pyrnn.torch's layers and cells) is the identity in eval mode, and in training mode no
    standard ONNX node computes it."""
    rates = (getattr(module, "zoneout", 0.0), getattr(module, "zoneout_c", 0.0))
    if module.training and any(p > 0 for p in rates):
        raise NotImplementedError(
            f"{name}: ONNX export is for inference, but the module is in training mode with zoneout {rates[0]}"
            f"{f' / zoneout_c {rates[1]}' if _cell_state(module) else ''} (no ONNX node draws zoneout masks; in "
            "eval mode zoneout is the identity): call model.eval() (or export with the default "
            "training=torch.onnx.TrainingMode.EVAL)")


def _cell_state(module):
    return isinstance(module, (nn.LSTM, nn.LSTMCell))


# ------------------------------------------------------------ weights --

def _regate(w, order, H):
    """Rows of w (gate blocks of H rows each) in ``order``: a torch op, so the exporter sees (and folds) it."""
    if len(order) == 1:
        return w
    return torch.cat([w[k * H:(k + 1) * H] for k in order], 0)


def _onnx_weights(module, suffixes, order, H):
    """ONNX W [D, G*H, I], R [D, G*H, H] and B [D, 2*G*H] (or None) of one layer (one direction per
    parameter-name suffix), from torch's parameters."""
    Ws, Rs, Bs = [], [], []
    for sfx in suffixes:
        Ws.append(_regate(getattr(module, "weight_ih" + sfx), order, H))
        Rs.append(_regate(getattr(module, "weight_hh" + sfx), order, H))
        if module.bias:
            Bs.append(torch.cat([_regate(getattr(module, "bias_ih" + sfx), order, H),
                                 _regate(getattr(module, "bias_hh" + sfx), order, H)]))
    B = torch.stack(Bs) if Bs else None
    return torch.stack(Ws), torch.stack(Rs), B


def _torch_order(order):
    """The inverse permutation: ONNX gate blocks back to torch's order."""
    inv = [0] * len(order)
    for onnx_pos, torch_pos in enumerate(order):
        inv[torch_pos] = onnx_pos
    return tuple(inv)


# ------------------------------------------------------- the ONNX node --

def _run_node(mode, X, W, R, B, seq_lens, h0, c0, *, reset_after):
    """The ONNX node's outputs (Y [T, D, B, H], Y_h [D, B, H], Y_c or None) computed by pyrnn's kernels."""
    _, cell, order = _OPS[mode]
    inv = _torch_order(order)
    D, GH = W.shape[0], W.shape[1]
    H = R.shape[2]
    lengths = None if seq_lens is None else seq_lens.detach().numpy().astype(np.int64)

    def a(t):
        return None if t is None else np.ascontiguousarray(t.detach().numpy())

    options = {"nonlinearity": "relu" if mode == "RNN_RELU" else "tanh", "reset_after": reset_after}
    ys, hs, cs = [], [], []
    for d in range(D):
        bias = (None, None) if B is None else (_regate(B[d, :GH], inv, H), _regate(B[d, GH:], inv, H))
        y, h_n, c_n, _ = F.forward(cell, a(X), None if h0 is None else a(h0[d]), None if c0 is None else a(c0[d]),
                                   a(_regate(W[d], inv, H)), a(_regate(R[d], inv, H)), a(bias[0]), a(bias[1]),
                                   **options, lengths=lengths, reverse=d == 1, training=False)
        ys.append(torch.from_numpy(y))
        hs.append(torch.from_numpy(h_n))
        cs.append(None if c_n is None else torch.from_numpy(c_n))
    Y = torch.stack(ys, 1)
    return Y, torch.stack(hs), (torch.stack(cs) if cs[0] is not None else None)


def _unused(g):
    """An omitted optional input of an ONNX node (TorchScript exporter)."""
    n = g.op("prim::Constant")
    n.setType(torch._C.OptionalType.ofTensor())
    return n


class _OnnxRecurrence(torch.autograd.Function):
    """One ONNX LSTM / GRU / RNN node for the TorchScript exporter (torch.onnx.export(..., dynamo=False)).

    forward computes the node's outputs with pyrnn's kernels (the values the trace
    carries on); symbolic writes the node."""

    @staticmethod
    def forward(ctx, mode, reset_after, D, H, X, W, R, B, seq_lens, h0, c0):  # type: ignore[override]
        # The symbolic stands for this computation in the graph: the tracer's warnings
        # about the NumPy round trip inside it do not apply.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            Y, Y_h, Y_c = _run_node(mode, X, W, R, B, seq_lens, h0, c0, reset_after=reset_after)
        return (Y, Y_h) if Y_c is None else (Y, Y_h, Y_c)

    @staticmethod
    def symbolic(g, mode, reset_after, D, H, X, W, R, B, seq_lens, h0, c0):
        op = _OPS[mode][0]
        inputs = [X, W, R] + [_unused(g) if v is None else v for v in (B, seq_lens, h0)]
        if op == "LSTM":
            inputs.append(_unused(g) if c0 is None else c0)
        attrs = {k + ("_i" if isinstance(v, int) else "_s"): v for k, v in _node_attrs(mode, reset_after, D, H).items()}
        return g.op(op, *inputs, outputs=3 if op == "LSTM" else 2, **attrs)


def _node_attrs(mode, reset_after, D, H):
    op = _OPS[mode][0]
    attrs = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
    if op == "GRU":
        attrs["linear_before_reset"] = 1 if reset_after else 0
    if op == "RNN":
        attrs["activations"] = ["Relu" if mode == "RNN_RELU" else "Tanh"] * D
    return attrs


def exporting():
    """``torch.onnx.is_in_onnx_export()``, read so that dynamo sees its value.

    torch.onnx.export (dynamo=True) retries a failed non-strict export with a
    strict one, in which dynamo takes ``is_in_onnx_export()`` for the constant
    False: the layers would then trace their pyrnn::rnn_layer operator, which
    has no ONNX translation, and a user would see that instead of the export's
    own message (e.g. proj_size). Under dynamo this reads the dynamo exporter's
    flag, a module global that dynamo reads (and guards on) as it is; the
    TorchScript exporter never runs under dynamo.
    """
    if torch.compiler.is_compiling():
        try:
            from torch.onnx._internal.exporter import _flags
        except ImportError:  # another torch layout
            return False
        return bool(_flags._is_onnx_exporting)
    if _EXPORT_FLAGS:  # (torch.onnx.is_in_onnx_export imports both modules at every call: 2.3 us of each layer call)
        dynamo_flags, torchscript_globals = _EXPORT_FLAGS
        return bool(torchscript_globals.in_onnx_export or dynamo_flags._is_onnx_exporting)
    return torch.onnx.is_in_onnx_export()


def _export_flags():
    """The two exporters' flags that torch.onnx.is_in_onnx_export reads, or () in another torch layout."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        return ()
    return (_flags, GLOBALS) if hasattr(_flags, "_is_onnx_exporting") and hasattr(GLOBALS, "in_onnx_export") else ()


_EXPORT_FLAGS = _export_flags()


def _node(mode, reset_after, D, H, X, W, R, B, seq_lens, h0, c0):
    """(Y, Y_h, Y_c or None) of one ONNX node, in whichever exporter is running."""
    if torch.jit.is_tracing():  # the TorchScript exporter
        outs = _OnnxRecurrence.apply(mode, reset_after, D, H, X, W, R, B, seq_lens, h0, c0)
        return (*outs, None) if len(outs) == 2 else tuple(outs)
    if not exporting():
        raise RuntimeError("pyrnn ONNX export: export_forward / export_cell_step run only inside torch.onnx.export")
    # The dynamo exporter (torch.export, then ONNX): torch.onnx.ops.symbolic_multi_out becomes the node as given.
    op = _OPS[mode][0]
    T, N = X.shape[0], X.shape[1]
    n_out = 3 if op == "LSTM" else 2
    shapes = [(T, D, N, H), (D, N, H), (D, N, H)][:n_out]
    inputs = [X, W, R, B, seq_lens, h0] + ([c0] if op == "LSTM" else [])
    while inputs[-1] is None:
        inputs.pop()
    outs = torch.onnx.ops.symbolic_multi_out(op, inputs, _node_attrs(mode, reset_after, D, H),
                                             dtypes=[X.dtype] * n_out, shapes=shapes)
    return (*outs, None) if n_out == 2 else tuple(outs)


# ------------------------------------------------------------ the layer --

def _torch_forward(module):
    for cls in (nn.LSTM, nn.GRU, nn.RNN):
        if isinstance(module, cls):
            return cls.forward
    raise TypeError(f"pyrnn ONNX export: expected an LSTM, GRU or RNN module, got {type(module).__name__}")


def export_forward(module, input, hx=None, lengths=None):
    """The forward of an LSTM / GRU / RNN (pyrnn.torch's or torch.nn's) during ``torch.onnx.export``:
    the same outputs, computed by ops that export as one ONNX LSTM / GRU / RNN node per layer.

    ``lengths`` ([B] integers, or None): each sequence's length, fed to the nodes'
    ``sequence_lens`` (outputs past a length are zeros; the states are those at
    each sequence's last step). See :class:`WithLengths`.
    """
    mode = _mode(module)
    name = type(module).__name__
    _check_exportable(module, name)
    reset_after = bool(getattr(module, "reset_after", True))
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise ValueError(f"{name}: pass lengths with a padded input, not with a PackedSequence")
        if not torch.jit.is_tracing():
            raise NotImplementedError(
                f"{name}: the dynamo ONNX exporter does not take a PackedSequence; pass padded input and lengths "
                "through pyrnn.torch.WithLengths, or export with torch.onnx.export(..., dynamo=False)")
        if not reset_after:
            raise NotImplementedError(
                f"{name}: a PackedSequence input of GRU(reset_after=False) does not export (torch's packed-sequence "
                "export knows only its own GRU); pass padded input and lengths through pyrnn.torch.WithLengths")
        # torch.nn's forward (the same parameters): the TorchScript exporter turns its packed
        # sequence into the nodes' sequence_lens when the model packs and pads around the layer.
        return _torch_forward(module)(module, input, hx)

    if input.dim() not in (2, 3):
        raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
    unbatched = input.dim() == 2
    x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if module.batch_first else input)
    if mode == "LSTM":
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"{name}: hx must be a tuple (h_0, c_0) of tensors, got {type(hx).__name__}")
        h0_all, c0_all = (None, None) if hx is None else hx
    else:
        h0_all, c0_all = hx, None
    LD = module.num_layers * (2 if module.bidirectional else 1)
    _check_export_inputs(name, module, x, x.shape[1], unbatched, [
        ("hx[0]" if mode == "LSTM" else "hx", h0_all, (LD, module.proj_size or module.hidden_size)),
        ("hx[1]", c0_all, (LD, module.hidden_size))])
    if isinstance(x.shape[0], int) and x.shape[0] == 0:  # (a symbolic T is at least 2 while exporting)
        raise ValueError(f"{name}: Expected sequence length to be larger than 0")
    if unbatched:
        h0_all = None if h0_all is None else h0_all.unsqueeze(1)
        c0_all = None if c0_all is None else c0_all.unsqueeze(1)
    seq_lens = None if lengths is None else lengths.to(torch.int32)

    order = _OPS[mode][2]
    D = 2 if module.bidirectional else 1
    H = module.hidden_size
    h_ns, c_ns = [], []
    layer_x = x
    for layer in range(module.num_layers):
        W, R, B = _onnx_weights(module, [_stack.param_suffix(layer, d) for d in range(D)], order, H)
        states = slice(layer * D, (layer + 1) * D)
        Y, Y_h, Y_c = _node(mode, reset_after, D, H, layer_x, W, R, B, seq_lens,
                            None if h0_all is None else h0_all[states], None if c0_all is None else c0_all[states])
        # Y [T, D, B, H] -> [T, B, D*H], directions side by side as torch concatenates them
        layer_x = Y.squeeze(1) if D == 1 else Y.transpose(1, 2).flatten(2)
        h_ns.append(Y_h)
        c_ns.append(Y_c)
    h_n = h_ns[0] if len(h_ns) == 1 else torch.cat(h_ns, 0)
    c_n = None if mode != "LSTM" else (c_ns[0] if len(c_ns) == 1 else torch.cat(c_ns, 0))
    out = layer_x
    if unbatched:
        out, h_n = out.squeeze(1), h_n.squeeze(1)
        c_n = None if c_n is None else c_n.squeeze(1)
    elif module.batch_first:
        out = out.transpose(0, 1)
    return (out, (h_n, c_n)) if mode == "LSTM" else (out, h_n)


def _check_export_inputs(name, module, x, B, unbatched, states):
    """The checks of the module's forward that an export would otherwise skip (a model ignoring extra
    state rows, or one that fails only in ONNX Runtime; the dynamo exporter runs no kernel): the input
    ``x``'s features equal the module's input_size; each state (label, tensor or None, its size
    without the batch) has the input's rank and that size with the input's batch B; the input and
    the states have the weights' dtype."""
    features, input_size = x.shape[-1], module.input_size
    if features != input_size:
        raise ValueError(f"{name}: input.size(-1) must be equal to input_size. Expected {input_size}, got "
                         f"{int(features)}")
    for label, h, size in states:
        if h is None:
            continue
        if not isinstance(h, torch.Tensor):
            raise TypeError(f"{name}: {label} must be a tensor, got {type(h).__name__}")
        want = len(size) + (0 if unbatched else 1)
        if h.dim() != want:
            raise ValueError(f"{name}: {label} must be {want}-D for {'unbatched' if unbatched else 'batched'} "
                             f"input, got {h.dim()}-D")
        expected = size if unbatched else (*size[:-1], B, size[-1])
        if tuple(h.shape) != tuple(expected):
            raise ValueError(f"{name}: Expected {label} size {tuple(int(v) for v in expected)}, got "
                             f"{[int(v) for v in h.shape]}")
    weight = next(iter(module.parameters()), None)
    if weight is None:
        return
    for label, t in [("input", x)] + [(label, h) for label, h, _ in states]:
        if t is not None and t.dtype != weight.dtype:
            raise ValueError(f"{name}: {label} dtype ({t.dtype}) does not match weight dtype ({weight.dtype}). "
                             f"Convert it: .to({weight.dtype})")


def _cell_mode(cell):
    if isinstance(cell, nn.LSTMCell):
        return "LSTM"
    if isinstance(cell, nn.GRUCell):
        return "GRU"
    if isinstance(cell, nn.RNNCell):
        return "RNN_RELU" if cell.nonlinearity == "relu" else "RNN_TANH"
    raise TypeError(f"pyrnn ONNX export: expected an LSTMCell, GRUCell or RNNCell, got {type(cell).__name__}")


def export_cell_step(cell, input, states):
    """One step of an LSTMCell / GRUCell / RNNCell (pyrnn.torch's or torch.nn's) during
    ``torch.onnx.export``, as an ONNX LSTM / GRU / RNN node over one time step.

    ``states``: [h] or, for the LSTMCell, [h, c] (each a tensor or None). Returns
    (h', c' or None), unbatched if ``input`` is 1-D.
    """
    mode = _cell_mode(cell)
    _check_no_zoneout(cell, type(cell).__name__)
    if input.dim() not in (1, 2):
        raise ValueError(f"{type(cell).__name__}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    unbatched = input.dim() == 1
    x = input.unsqueeze(0) if unbatched else input
    h0, c0 = (list(states) + [None])[:2]
    _check_export_inputs(type(cell).__name__, cell, x, x.shape[0], unbatched,
                         [("hx[0]" if mode == "LSTM" else "hx", h0, (cell.hidden_size,)),
                          ("hx[1]", c0, (cell.hidden_size,))])
    h0, c0 = (None if h is None else (h.unsqueeze(0) if unbatched else h).unsqueeze(0) for h in (h0, c0))
    H = cell.hidden_size
    W, R, B = _onnx_weights(cell, [""], _OPS[mode][2], H)
    _, Y_h, Y_c = _node(mode, bool(getattr(cell, "reset_after", True)), 1, H, x.unsqueeze(0), W, R, B, None, h0, c0)
    h1 = Y_h.squeeze(0)
    c1 = None if Y_c is None else Y_c.squeeze(0)
    if unbatched:
        h1 = h1.squeeze(0)
        c1 = None if c1 is None else c1.squeeze(0)
    return h1, c1


class WithLengths(nn.Module):
    """An LSTM / GRU / RNN (pyrnn.torch's or torch.nn's) called on padded input and lengths,
    exportable to ONNX with the lengths as the nodes' ``sequence_lens``.

    ``forward(x, lengths, hx=None)``: ``x`` padded ([T, B, I], or [B, T, I] with
    ``batch_first``), ``lengths`` a [B] integer tensor (any order; each in 1..T).
    Returns what the layer returns for ``pack_padded_sequence(x, lengths)``, with
    the output padded again to T steps (zeros past each length): ``(y, h_n)``
    or, for the LSTM, ``(y, (h_n, c_n))``; the states are those at each
    sequence's last step (the reverse direction's after its first step).
    """

    def __init__(self, rnn):
        super().__init__()
        _mode(rnn)
        self.rnn = rnn

    def forward(self, x, lengths, hx=None):
        """The layer on padded ``x`` and ``lengths``, as the class describes."""
        if not isinstance(lengths, torch.Tensor):
            try:
                lengths = torch.as_tensor(lengths)
            except (TypeError, ValueError, RuntimeError) as e:
                raise TypeError(f"WithLengths: lengths must be a [B] integer tensor (or a sequence of ints), got "
                                f"{type(lengths).__name__}") from e
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"WithLengths: lengths must be integers, got dtype {lengths.dtype}")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"WithLengths: x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"WithLengths: expected padded 3-D input, got {x.dim()}-D")
        bf = self.rnn.batch_first
        T, B = (x.shape[1], x.shape[0]) if bf else (x.shape[0], x.shape[1])
        if lengths.dim() != 1 or lengths.shape[0] != B:
            raise ValueError(f"WithLengths: lengths must have shape ({B},) (one per sequence), got {tuple(lengths.shape)}")
        if exporting():
            # (The lengths' values are not known while exporting: ONNX Runtime checks them against T.)
            return export_forward(self.rnn, x, hx, lengths=lengths)
        # pyrnn.torch's layers, traced (torch.compile, torch.export): lengths straight to their operator,
        # which checks the values when it runs (packing's data-dependent shapes do not trace)
        direct = getattr(self.rnn, "_forward_with_lengths", None)
        result = None if direct is None else direct(x, lengths, hx)
        if result is not None:
            return result
        if B and not bool(((lengths >= 1) & (lengths <= T)).all()):
            raise ValueError(f"WithLengths: lengths must lie in [1, T] = [1, {T}], got min {int(lengths.min())} and "
                             f"max {int(lengths.max())}")
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=bf, enforce_sorted=False)
        y, state = self.rnn(packed, hx)
        y, _ = pad_packed_sequence(y, batch_first=bf, total_length=x.shape[1 if bf else 0])
        return y, state
