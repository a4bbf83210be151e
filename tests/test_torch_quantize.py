"""pyrnn.torch.freeze and quantize_dynamic: inference copies of torch.nn and
pyrnn.torch recurrent modules with packed (optionally int8/bf16) weights."""
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import pyrnn.torch as pt  # noqa: E402
from pyrnn import reference as R  # noqa: E402

nn = torch.nn


def _emulated_stack(module, x, precision, cell, **opts):
    """The emulation (pyrnn.reference) of a unidirectional stack, time-major x."""
    out = x.numpy()
    for layer in range(module.num_layers):
        w = [getattr(module, f"{n}_l{layer}").detach().numpy() for n in ("weight_ih", "weight_hh", "bias_ih",
                                                                          "bias_hh")]
        states = (None, None) if cell == "lstm" else (None,)
        out = getattr(R, f"{cell}_forward")(out, *states, *w, training=False, precision=precision, **opts)[0]
    return out


@pytest.mark.parametrize("dtype,precision", [(torch.qint8, "int8"), (torch.bfloat16, "bf16")])
@pytest.mark.parametrize("cls,cell,opts", [(nn.LSTM, "lstm", {}), (nn.GRU, "gru", {}), (pt.GRU, "gru", {}),
                                           (pt.LSTM, "lstm", {}), (nn.RNN, "rnn", {})])
def test_quantize_dynamic_matches_the_emulation(cls, cell, opts, dtype, precision):
    torch.manual_seed(0)
    model = nn.Sequential(cls(6, 10, num_layers=2), nn.Identity())
    x = torch.randn(5, 3, 6)
    q = pt.quantize_dynamic(model, dtype=dtype)
    assert isinstance(q[0], pt.FrozenRNN) and q[0].precision == precision
    assert isinstance(model[0], cls)  # a copy: the model itself is unchanged
    y, h = q[0](x)
    np.testing.assert_allclose(y.numpy(), _emulated_stack(model[0], x, precision, cell, **opts), rtol=1e-5,
                               atol=3e-6)
    assert not y.requires_grad


def test_quantize_dynamic_selection_and_inplace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(4, 8), nn.GRU(8, 8), nn.Linear(8, 2))
    by_type = pt.quantize_dynamic(model, {nn.GRU})
    assert isinstance(by_type[0], nn.LSTM) and isinstance(by_type[1], pt.FrozenRNN)
    assert isinstance(by_type[2], nn.Linear)
    by_name = pt.quantize_dynamic(model, {"0"})
    assert isinstance(by_name[0], pt.FrozenRNN) and isinstance(by_name[1], nn.GRU)
    same = pt.quantize_dynamic(model, inplace=True)
    assert same is model and isinstance(model[0], pt.FrozenRNN) and isinstance(model[1], pt.FrozenRNN)
    assert isinstance(pt.quantize_dynamic(nn.LSTM(3, 4)), pt.FrozenRNN)  # the module itself
    with pytest.raises(ValueError, match="qint8 or torch.bfloat16"):
        pt.quantize_dynamic(model, dtype=torch.float16)
    with pytest.raises(TypeError, match="types or submodule names"):
        pt.quantize_dynamic(model, {3})
    with pytest.raises(TypeError, match="float32 weights"):
        pt.quantize_dynamic(nn.LSTM(3, 4).double())


def test_quantize_dynamic_takes_torchs_positional_mapping():
    """torch.ao's signature (model, qconfig_spec, dtype, mapping, inplace): a mapping passed 4th is
    not read as inplace (a review, 2026-12-05: the caller's model was converted in place); its keys
    select the types converted; a bool 4th argument (pyrnn's old order) is a TypeError."""
    from torch.ao.quantization import float16_dynamic_qconfig
    from torch.ao.quantization.quantization_mappings import get_default_dynamic_quant_module_mappings

    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(4, 8), nn.RNN(8, 8), pt.GRU(8, 8))
    mapping = get_default_dynamic_quant_module_mappings()  # (LSTM and GRU, no RNN)
    q = pt.quantize_dynamic(model, None, torch.qint8, mapping)
    assert isinstance(model[0], nn.LSTM) and model.training  # the caller's model untouched
    assert isinstance(q[0], pt.FrozenRNN) and isinstance(q[1], nn.RNN) and isinstance(q[2], pt.FrozenRNN)
    q = pt.quantize_dynamic(model, {nn.LSTM, nn.RNN}, torch.qint8, {nn.RNN: None}, False)
    assert isinstance(q[0], nn.LSTM) and isinstance(q[1], pt.FrozenRNN) and isinstance(q[2], pt.GRU)
    same = pt.quantize_dynamic(model, None, torch.qint8, None, True)
    assert same is model and all(isinstance(m, pt.FrozenRNN) for m in model)
    with pytest.raises(TypeError, match=r"mapping \(4th, as torch's\) must be None or a dict .* got bool True"):
        pt.quantize_dynamic(nn.Sequential(nn.LSTM(3, 4)), None, torch.qint8, True)
    with pytest.raises(ValueError, match=r"qconfig_spec's entry for submodule '0' \(LSTM\) asks for torch.float16"):
        pt.quantize_dynamic(nn.Sequential(nn.LSTM(3, 4)), {nn.LSTM: float16_dynamic_qconfig})


def test_frozen_layer_is_called_like_the_module():
    torch.manual_seed(1)
    m = pt.LSTM(5, 7, num_layers=2, bidirectional=True, batch_first=True, proj_size=3)
    x = torch.randn(4, 6, 5)
    h0, c0 = torch.randn(4, 4, 3), torch.randn(4, 4, 7)
    f = m.freeze()
    with torch.no_grad():
        ref = m(x, (h0, c0))
    got = f(x, (h0, c0))
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1][1], ref[1][1])
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 2, 4, 1]), batch_first=True,
                                               enforce_sorted=False)
    with torch.no_grad():
        ref_p = m(packed)
    got_p = f(packed)
    assert isinstance(got_p[0], nn.utils.rnn.PackedSequence)
    torch.testing.assert_close(got_p[0].data, ref_p[0].data)
    torch.testing.assert_close(f(x[0])[0], m(x[0])[0].detach())  # unbatched
    # a copy: changing the original does not reach it
    with torch.no_grad():
        m.weight_hh_l0.mul_(2)
    torch.testing.assert_close(f(x, (h0, c0))[0], got[0])
    assert list(f.parameters()) == []
    f2 = pickle.loads(pickle.dumps(f))
    torch.testing.assert_close(f2(x, (h0, c0))[0], got[0])
    with pytest.raises(RuntimeError, match="inference only"):
        f.train()
    with pytest.raises(ValueError, match="dtype"):
        f(x.double())
    with pytest.raises(TypeError, match="tuple"):
        f(x, h0)


@pytest.mark.parametrize("cls", [nn.LSTMCell, nn.GRUCell, nn.RNNCell, pt.GRUCell])
@pytest.mark.parametrize("precision", [None, "int8", "bf16"])
def test_frozen_cells(cls, precision):
    torch.manual_seed(2)
    c = cls(5, 9)
    x, h = torch.randn(3, 5), torch.randn(3, 9)
    hx = (h, torch.randn(3, 9)) if cls is nn.LSTMCell else h
    f = pt.freeze(c, precision)
    assert isinstance(f, pt.FrozenRNNCell)
    with torch.no_grad():
        ref = c(x, hx)
    got = f(x, hx)
    tol = {None: 1e-6, "int8": 0.03, "bf16": 0.01}[precision]
    if cls is nn.LSTMCell:
        torch.testing.assert_close(got[0], ref[0], atol=tol, rtol=0)
        torch.testing.assert_close(got[1], ref[1], atol=tol, rtol=0)
    else:
        torch.testing.assert_close(got, ref, atol=tol, rtol=0)


def test_freeze_refuses_other_modules():
    with pytest.raises(TypeError, match="LSTM, GRU, RNN"):
        pt.freeze(nn.Linear(2, 2))


class _Net(nn.Module):
    def __init__(self, shared=False):
        super().__init__()
        self.rnn = nn.LSTM(3, 5, num_layers=2)
        self.cell = nn.GRUCell(3, 5)
        self.other = self.rnn if shared else nn.GRU(3, 5)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.drop(self.rnn(x)[0] + self.other(x)[0] + self.cell(x[-1])))


def test_quantized_model_state_dict_round_trip(tmp_path):
    """The frozen copies' weights travel in state_dict (extra state of float tensors): saved with
    torch.save and loaded (weights_only) into a freshly quantized model, they run the saved weights,
    as torch's quantized modules do. The result is in eval mode, as torch's quantize_dynamic's."""
    torch.manual_seed(0)
    q = pt.quantize_dynamic(_Net())
    assert not q.training and not q.drop.training
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(q(x), q(x))  # no dropout
    torch.save(q.state_dict(), tmp_path / "q.pt")
    fresh = pt.quantize_dynamic(_Net())
    assert not torch.equal(fresh(x), q(x))
    fresh.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=True))
    assert torch.equal(fresh(x), q(x))
    bf16 = pt.quantize_dynamic(_Net(), dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="precision 'bf16'"):
        bf16.load_state_dict(q.state_dict())
    wide = pt.quantize_dynamic(nn.LSTM(3, 6))
    with pytest.raises(RuntimeError, match="other names or shapes"):
        wide.load_state_dict(pt.quantize_dynamic(nn.LSTM(3, 5)).state_dict())


class _DoubledLSTM(nn.LSTM):
    def forward(self, x, hx=None):
        return super().forward(2 * x, hx)


class _PlainSubclass(pt.GRU):
    pass


def test_subclasses_hooks_and_parametrizations():
    """As torch.ao's quantize_dynamic: a type matches exactly, a subclass that overrides forward is left
    alone (freeze refuses it), and the converted modules keep their hooks. Parametrized weights are
    read as computed."""
    torch.manual_seed(0)
    x = torch.randn(4, 2, 3)
    net = nn.Sequential(_DoubledLSTM(3, 5))
    q = pt.quantize_dynamic(net, dtype="bf16")
    assert type(q[0]) is _DoubledLSTM
    with pytest.raises(TypeError, match="_DoubledLSTM overrides forward"):
        pt.freeze(net[0])
    q = pt.quantize_dynamic(nn.Sequential(_PlainSubclass(3, 5)), {_PlainSubclass})
    assert isinstance(q[0], pt.FrozenRNN)
    assert type(pt.quantize_dynamic(nn.Sequential(_PlainSubclass(3, 5)), {nn.GRU})[0]) is _PlainSubclass
    assert isinstance(pt.quantize_dynamic(nn.Sequential(pt.GRU(3, 5)), {nn.GRU})[0], pt.FrozenRNN)

    lstm = nn.LSTM(3, 5).eval()
    seen = []
    lstm.register_forward_pre_hook(lambda m, args: (args[0] * 0.5,))
    lstm.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs), with_kwargs=True)
    with torch.no_grad():
        want = lstm(x)[0]
    for frozen in (pt.quantize_dynamic(nn.Sequential(lstm), dtype="bf16")[0], pt.quantize_dynamic(lstm, dtype="bf16")):
        with torch.no_grad():
            torch.testing.assert_close(frozen(x)[0], want, atol=2e-2, rtol=0)
    assert len(seen) == 3

    weighted = nn.utils.parametrizations.weight_norm(nn.GRU(3, 5), "weight_hh_l0").eval()
    with torch.no_grad():
        weighted.parametrizations.weight_hh_l0.original0.mul_(3)
        torch.testing.assert_close(pt.freeze(weighted)(x)[0], weighted(x)[0], atol=1e-6, rtol=0)


def test_quantize_converts_a_shared_module_once():
    q = pt.quantize_dynamic(_Net(shared=True))
    assert isinstance(q.rnn, pt.FrozenRNN) and q.other is q.rnn


def test_frozen_module_refuses_dtype_and_device_changes():
    f = pt.freeze(nn.GRU(3, 5))
    assert f.to("cpu") is f and f.float() is f
    for convert in (lambda m: m.double(), lambda m: m.to(torch.float64), lambda m: m.half()):
        with pytest.raises(RuntimeError, match="keeps the dtype"):
            convert(f)
