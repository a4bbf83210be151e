"""torch.onnx.export of pyrnn.torch layers: standard ONNX LSTM / GRU / RNN nodes, run on ONNX Runtime."""

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import pyrnn.torch as pt  # noqa: E402
from pyrnn import _onnx  # noqa: E402
from pyrnn._onnx import WithLengths  # noqa: E402

ATOL = 1e-5


def _export(model, args, names, *, dynamo=False, **kw):
    model.eval()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and RNN batch-size warnings
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(model, args, dynamo=True, input_names=names, **kw)
            return program.model_proto.SerializeToString()
        buf = io.BytesIO()
        torch.onnx.export(model, args, buf, dynamo=False, input_names=names, **kw)
    return buf.getvalue()


def _run(data, names, args):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return session.run(None, {n: a.numpy() for n, a in zip(names, args)})


def _flat(out):
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out.detach()]


def _recurrent_nodes(data):
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    return [n for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=ATOL, rtol=0)


def _pair(cls, *args, **kw):
    """A torch.nn module with non-symmetric random weights, and the pyrnn.torch module loaded from its state_dict."""
    pyrnn_kw = {k: kw.pop(k) for k in ("reset_after",) if k in kw}
    ref = getattr(torch.nn, cls)(*args, **kw)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(-0.8, 0.8)
    ours = getattr(pt, cls)(*args, **kw, **pyrnn_kw)
    ours.load_state_dict(ref.state_dict())
    return ref.eval(), ours.eval()


class _WithStates(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, h0, c0=None):
        return self.rnn(x, h0 if c0 is None else (h0, c0))


# name -> (class, constructor args, keywords, hx given, unbatched input)
CONFIGS = {
    "lstm": ("LSTM", (4, 5), {}, False, False),
    "lstm-stacked-bidir-batch_first-hx": ("LSTM", (4, 5), dict(num_layers=2, bidirectional=True, batch_first=True),
                                          True, False),
    "gru-stacked-bidir": ("GRU", (4, 5), dict(num_layers=2, bidirectional=True), False, False),
    "gru-reset_before-stacked-bidir-hx": ("GRU", (4, 5), dict(num_layers=2, bidirectional=True, reset_after=False),
                                          True, False),
    "gru-nobias-batch_first": ("GRU", (4, 5), dict(bias=False, batch_first=True), False, False),
    "rnn-tanh-stacked-hx": ("RNN", (4, 5), dict(num_layers=2), True, False),
    "rnn-relu-bidir": ("RNN", (4, 5), dict(nonlinearity="relu", bidirectional=True), False, False),
    "lstm-unbatched-hx": ("LSTM", (4, 5), dict(bidirectional=True), True, True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_matches_pyrnn_and_torch(name):
    cls, args, kw, with_hx, unbatched = CONFIGS[name]
    reset_after = kw.get("reset_after", True)
    ref, ours = _pair(cls, *args, **kw)
    torch.manual_seed(1)
    B, T, D = 3, 6, 2 if ours.bidirectional else 1
    x = torch.randn(T, 4) if unbatched else torch.randn(*((B, T) if ours.batch_first else (T, B)), 4)
    inputs, names = [x], ["x"]
    if with_hx:
        state_shape = (ours.num_layers * D,) + (() if unbatched else (B,)) + (5,)
        inputs.append(torch.randn(state_shape))
        names.append("h0")
        if cls == "LSTM":
            inputs.append(torch.randn(state_shape))
            names.append("c0")
    model = _WithStates(ours) if with_hx else ours

    data = _export(model, tuple(inputs), names)
    nodes = _recurrent_nodes(data)
    assert [n.op_type for n in nodes] == [cls] * ours.num_layers
    for node in nodes:
        attrs = _attrs(node)
        assert attrs["hidden_size"] == 5
        assert attrs.get("direction", b"forward") == (b"bidirectional" if D == 2 else b"forward")
        if cls == "GRU":
            assert attrs["linear_before_reset"] == (1 if reset_after else 0)
        if cls == "RNN":
            act = b"Relu" if kw.get("nonlinearity") == "relu" else b"Tanh"
            assert attrs["activations"] == [act] * D

    got = _run(data, names, inputs)
    with torch.no_grad():
        want = _flat(model(*inputs))
        _close(got, want)
        if reset_after:  # torch.nn computes the same: the weights' gate order reached ONNX right
            _close(got, _flat((_WithStates(ref) if with_hx else ref)(*inputs)))


def _padded_reference(rnn, x, lengths, hx):
    """torch.nn's packed path: the semantics WithLengths and ONNX's sequence_lens share."""
    bf = rnn.batch_first
    y, state = rnn(pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False), hx)
    return pad_packed_sequence(y, batch_first=bf, total_length=x.shape[1 if bf else 0])[0], state


# name -> (class, constructor args, keywords, hx given)
LENGTH_CONFIGS = {
    "lstm-stacked-bidir-batch_first-hx": ("LSTM", (3, 4), dict(num_layers=2, bidirectional=True, batch_first=True),
                                          True),
    "gru-reset_before-stacked-bidir": ("GRU", (3, 4), dict(num_layers=2, bidirectional=True, reset_after=False),
                                       False),
    "rnn-relu-bidir-hx": ("RNN", (3, 4), dict(nonlinearity="relu", bidirectional=True), True),
}


@pytest.mark.parametrize("name", list(LENGTH_CONFIGS))
def test_lengths_feed_sequence_lens(name):
    cls, args, kw, with_hx = LENGTH_CONFIGS[name]
    ref, ours = _pair(cls, *args, **kw)
    model = WithLengths(ours).eval()
    D = 2 if ours.bidirectional else 1
    torch.manual_seed(2)

    def inputs(B, T, lengths):
        x = torch.randn(*((B, T) if ours.batch_first else (T, B)), 3)
        out = [x, torch.tensor(lengths)]
        if with_hx:
            out += [torch.randn(ours.num_layers * D, B, 4) for _ in range(2 if cls == "LSTM" else 1)]
        return out

    names = ["x", "lengths", "h0", "c0"][:2 + (0 if not with_hx else 2 if cls == "LSTM" else 1)]
    example = inputs(3, 5, [5, 2, 4])
    batch_axis, time_axis = (0, 1) if ours.batch_first else (1, 0)
    dynamic = {"x": {batch_axis: "B", time_axis: "T"}, "lengths": {0: "B"}}
    dynamic.update({n: {1: "B"} for n in names[2:]})

    class Model(torch.nn.Module):  # hx as separate graph inputs
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x, lengths, h0=None, c0=None):
            return self.inner(x, lengths, None if h0 is None else h0 if c0 is None else (h0, c0))

    wrapped = Model().eval()
    data = _export(wrapped, tuple(example), names, dynamic_axes=dynamic)
    nodes = _recurrent_nodes(data)
    assert [n.op_type for n in nodes] == [cls] * ours.num_layers
    assert all(len(n.input) > 4 and n.input[4] for n in nodes)  # sequence_lens fed

    # Another batch size and sequence length than the export's; unequal, unsorted lengths, none of them T.
    case = inputs(4, 7, [3, 6, 1, 5])
    got = _run(data, names, case)
    with torch.no_grad():
        want = _flat(wrapped(*case))
        _close(got, want)
        y = got[0] if ours.batch_first else got[0].transpose(1, 0, 2)
        for b, n in enumerate([3, 6, 1, 5]):
            assert not y[b, n:].any()  # zeros past each length (ONNX, pad_packed_sequence and pyrnn alike)
        if kw.get("reset_after", True):
            hx = None if not with_hx else case[2] if cls != "LSTM" else (case[2], case[3])
            _close(got, _flat(_padded_reference(ref, case[0], case[1], hx)))


# name -> (class, keywords, hx given, unbatched input)
CELL_CONFIGS = {
    "lstmcell-hx": ("LSTMCell", {}, True, False),
    "grucell-reset_before-hx-unbatched": ("GRUCell", dict(reset_after=False), True, True),
    "grucell": ("GRUCell", {}, False, False),
    "rnncell-relu": ("RNNCell", dict(nonlinearity="relu"), False, False),
}


@pytest.mark.parametrize("name", list(CELL_CONFIGS))
def test_cell_exports_one_step_node(name):
    cls, kw, with_hx, unbatched = CELL_CONFIGS[name]
    ref, ours = _pair(cls, 4, 5, **kw)
    torch.manual_seed(3)
    batch = () if unbatched else (3,)
    inputs, names = [torch.randn(*batch, 4)], ["x"]
    if with_hx:
        inputs += [torch.randn(*batch, 5) for _ in range(2 if cls == "LSTMCell" else 1)]
        names += ["h0", "c0"][:len(inputs) - 1]
    model = _WithStates(ours) if with_hx else ours
    data = _export(model, tuple(inputs), names)
    nodes = _recurrent_nodes(data)
    assert [n.op_type for n in nodes] == [cls[:-4]]
    if cls == "GRUCell":
        assert _attrs(nodes[0])["linear_before_reset"] == (1 if kw.get("reset_after", True) else 0)
    got = _run(data, names, inputs)
    with torch.no_grad():
        _close(got, _flat(model(*inputs)))
        if kw.get("reset_after", True):
            _close(got, _flat((_WithStates(ref) if with_hx else ref)(*inputs)))


def test_packed_sequence_idiom_exports():
    """pack_padded_sequence -> layer -> pad_packed_sequence, as with torch.nn (TorchScript exporter)."""
    ref, ours = _pair("GRU", 3, 4, num_layers=2, bidirectional=True)

    class Model(torch.nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x, lengths):
            y, h = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
            return pad_packed_sequence(y, total_length=x.shape[0])[0], h

    model = Model(ours).eval()
    x, lengths = torch.randn(5, 3, 3), torch.tensor([4, 5, 2])
    data = _export(model, (x, lengths), ["x", "lengths"])
    assert [n.op_type for n in _recurrent_nodes(data)] == ["GRU", "GRU"]
    got = _run(data, ["x", "lengths"], (x, lengths))
    with torch.no_grad():
        _close(got, _flat(model(x, lengths)))
        _close(got, _flat(Model(ref)(x, lengths)))


def test_packed_gru_reset_before_raises():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = pt.GRU(3, 4, reset_after=False)

        def forward(self, x, lengths):
            return pad_packed_sequence(self.rnn(pack_padded_sequence(x, lengths))[0])[0]

    with pytest.raises(NotImplementedError, match="WithLengths"):
        _export(Model(), (torch.randn(4, 2, 3), torch.tensor([4, 3])), ["x", "lengths"])


def test_projection_raises():
    with pytest.raises(NotImplementedError, match="proj_size"):
        _export(pt.LSTM(3, 6, proj_size=2), (torch.randn(4, 2, 3),), ["x"])


def test_dynamo_exporter_keeps_the_reason():
    """torch.onnx.export(dynamo=True) retries a failed export in strict mode, where dynamo would take
    is_in_onnx_export() for False: the error must still say why (proj_size, training-mode dropout)."""
    pytest.importorskip("onnxscript")
    for model, reason in ((pt.LSTM(3, 6, proj_size=2).eval(), "proj_size"),
                          (pt.GRU(3, 4, recurrent_dropout=0.2).train(), "eval")):
        with pytest.raises(Exception, match=reason), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(4, 2, 3),), dynamo=True)


def test_with_lengths_bad_lengths():
    layer = WithLengths(pt.GRU(3, 4))
    x = torch.randn(5, 2, 3)
    y_list = layer(x, [5, 3])[0]  # a list of ints works as pack_padded_sequence's does
    torch.testing.assert_close(y_list, layer(x, torch.tensor([5, 3]))[0])
    with pytest.raises(ValueError, match=r"lie in \[1, T\]"):
        layer(x, torch.tensor([6, 3]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        layer(x, torch.tensor([5, 3, 1]))
    with pytest.raises(TypeError, match="integers"):
        layer(x, torch.tensor([5.0, 3.0]))
    with pytest.raises(TypeError, match="lengths must be"):
        layer(x, object())


def test_training_mode_dropout_raises():
    model = pt.LSTM(3, 4, num_layers=2, dropout=0.5)
    with pytest.raises(NotImplementedError, match="eval"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(4, 2, 3),), io.BytesIO(), dynamo=False,
                          training=torch.onnx.TrainingMode.TRAINING)


def test_with_lengths_eager_matches_packed_torch_nn():
    ref, ours = _pair("LSTM", 3, 4, bidirectional=True, batch_first=True)
    x, lengths = torch.randn(3, 6, 3), torch.tensor([2, 6, 5])
    with torch.no_grad():
        _close([t.numpy() for t in _flat(WithLengths(ours)(x, lengths))],
               _flat(_padded_reference(ref, x, lengths, None)))


@pytest.mark.parametrize("cls,kw", [("GRU", dict(num_layers=2, bidirectional=True, reset_after=False)),
                                    ("LSTM", dict(bidirectional=True, batch_first=True))])
def test_dynamo_exporter(cls, kw):
    """torch.onnx.export(..., dynamo=True) (torch's default; needs onnxscript): the same nodes."""
    pytest.importorskip("onnxscript")
    _, ours = _pair(cls, 3, 4, **kw)
    model = WithLengths(ours).eval()
    bf = ours.batch_first
    x, lengths = torch.randn(*((3, 5) if bf else (5, 3)), 3), torch.tensor([5, 2, 4])
    B, T = torch.export.Dim("B"), torch.export.Dim("T")
    data = _export(model, (x, lengths), ["x", "lengths"], dynamo=True,
                   dynamic_shapes=({0: B, 1: T} if bf else {0: T, 1: B}, {0: B}))
    nodes = _recurrent_nodes(data)
    assert [n.op_type for n in nodes] == [cls] * ours.num_layers
    if cls == "GRU":
        assert all(_attrs(n)["linear_before_reset"] == 0 for n in nodes)
    x, lengths = torch.randn(*((2, 7) if bf else (7, 2)), 3), torch.tensor([3, 7])
    got = _run(data, ["x", "lengths"], (x, lengths))
    with torch.no_grad():
        _close(got, _flat(model(x, lengths)))
