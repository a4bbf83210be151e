"""What the fifteenth session's reviews (learning tasks with the NumPy API and with pyrnn.torch) found,
each pinned by the behaviour a user of torch would expect."""

import pickle
import warnings

import numpy as np
import pytest

import pyrnn
from pyrnn import optim

# ------------------------------------------------- grads entries assigned (torch's p.grad = ...)


def _step_loss(layer, x):
    y, _ = layer(x)
    layer.zero_grad()
    layer.backward(np.ones_like(y))


def _clipped_training(assign, steps=3):
    layer = pyrnn.LSTM(3, 4, dtype=np.float64, seed=0)
    opt = optim.SGD(layer, lr=0.1, momentum=0.9)
    x = np.random.default_rng(1).standard_normal((5, 2, 3))
    for _ in range(steps):
        _step_loss(layer, x)
        for k in list(layer.grads):
            if assign:
                layer.grads[k] = np.clip(layer.grads[k], -0.01, 0.01)
            else:
                np.clip(layer.grads[k], -0.01, 0.01, out=layer.grads[k])
        opt.step()
    return layer.state_dict()


def test_assigning_a_grads_entry_reaches_the_optimizer():
    """l.grads[k] = np.clip(l.grads[k], ...) trains as clipping in place: before, the optimizer kept
    the old arrays (step 1 unclipped) and zero_grad() zeroed those while backward added into the new."""
    a, b = _clipped_training(True), _clipped_training(False)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_assigning_grads_copies_into_the_live_arrays():
    layer = pyrnn.GRU(2, 3, seed=0)
    live = dict(layer.grads)
    layer.grads["weight_hh_l0"] = np.full((9, 3), 2.0)  # float64 values into the float32 gradient
    assert layer.grads["weight_hh_l0"] is live["weight_hh_l0"]
    assert (live["weight_hh_l0"] == 2).all() and live["weight_hh_l0"].dtype == np.float32
    layer.grads = {k: np.ones_like(v) for k, v in live.items()}  # the whole mapping
    assert all(layer.grads[k] is v and (v == 1).all() for k, v in live.items())
    with pytest.raises(ValueError, match=r"shape \(9, 3\), got \(3, 9\)"):
        layer.grads["weight_hh_l0"] = np.zeros((3, 9))
    with pytest.raises(TypeError, match="floating-point"):
        layer.grads["weight_hh_l0"] = np.zeros((9, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="expected the names"):
        layer.grads = {"weight_hh_l0": np.zeros((9, 3))}
    with pytest.raises(TypeError, match="mapping"):
        layer.grads = [np.zeros((9, 3))]
    assert (live["weight_hh_l0"] == 1).all()  # a refused assignment changes nothing


def test_grads_survive_pickling_and_freezing():
    layer = pyrnn.LSTM(2, 3, seed=0)
    back = pickle.loads(pickle.dumps(layer))
    kept = back.grads["weight_ih_l0"]
    back.grads["weight_ih_l0"] = np.ones((12, 2))
    assert back.grads["weight_ih_l0"] is kept and (kept == 1).all()
    old = pickle.loads(pickle.dumps(layer))  # as pickled before grads was a Gradients: a plain dict
    state = dict(old.__dict__)
    state["grads"] = dict(state["grads"])
    older = object.__new__(type(layer))
    older.__setstate__(state)
    kept = older.grads["bias_hh_l0"]
    older.grads["bias_hh_l0"] = np.ones(12)
    assert older.grads["bias_hh_l0"] is kept and (kept == 1).all()
    frozen = layer.freeze()
    assert len(frozen.grads) == 0
    clone = frozen.with_weights(layer.state_dict())
    assert len(clone.grads) == 0


# ------------------------------------------------- a torch tensor given to a NumPy layer's training call


def test_training_input_tensor_edited_before_backward():
    """layers.md: the layer keeps its own copy of the input, so editing the caller's buffer before
    backward changes nothing. It held for arrays; a torch tensor's memory was kept as it was."""
    torch = pytest.importorskip("torch")
    layer = pyrnn.LSTM(3, 4, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    for given in (x, x[:, 0]):  # batched, unbatched
        y, _ = layer(given.copy())
        layer.zero_grad()
        layer.backward(np.ones_like(y))
        want = {k: v.copy() for k, v in layer.grads.items()}
        t = torch.from_numpy(given.copy())
        y, _ = layer(t)
        t.add_(10.0)
        layer.zero_grad()
        layer.backward(np.ones_like(y))
        for k, v in want.items():
            np.testing.assert_array_equal(layer.grads[k], v)


# ------------------------------------------------- zoneout_c=None follows zoneout when it changes


def _numpy_lstms():
    return [pyrnn.LSTM(3, 4, zoneout=0.5, seed=0), pyrnn.LayerNormLSTM(3, 4, zoneout=0.5, seed=0)]


def test_numpy_zoneout_c_follows_a_changed_zoneout():
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    for layer in _numpy_lstms():
        assert layer.zoneout_c == 0.5
        layer.zoneout = 0.0  # (e.g. annealed on a schedule)
        assert layer.zoneout_c == 0.0
        y_train, _ = layer(x)
        y_eval, _ = layer.eval()(x)
        np.testing.assert_array_equal(y_train, y_eval)  # no zoneout left in training
        layer.train()
        layer.zoneout_c = 0.25  # a rate of its own stays
        layer.zoneout = 0.1
        assert layer.zoneout_c == 0.25


def test_torch_zoneout_c_follows_a_changed_zoneout():
    torch = pytest.importorskip("torch")
    import pyrnn.torch as pt

    x = torch.randn(5, 2, 3)
    for m in (pt.LSTM(3, 4, zoneout=0.5), pt.LayerNormLSTM(3, 4, zoneout=0.5), pt.LSTMCell(3, 4, zoneout=0.5)):
        assert m.zoneout_c == 0.5
        m.zoneout = 0.0
        assert m.zoneout_c == 0.0
        inp = x[0] if isinstance(m, pt.LSTMCell) else x
        with torch.no_grad():
            a = m(inp)
            b = m.eval()(inp)
        a, b = (v[0] if isinstance(v, tuple) else v for v in (a, b))
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert pt.LSTM(3, 4, zoneout=0.5, zoneout_c=0.2).zoneout_c == 0.2
    assert pt.GRU(3, 4, zoneout=0.5).zoneout_c == 0.0


def test_zoneout_c_of_modules_pickled_as_plain_attributes():
    """Pickles from before zoneout_c read through zoneout keep the rate they held."""
    layer = pyrnn.LSTM(3, 4, zoneout=0.5, zoneout_c=0.3, seed=0)
    state = pickle.loads(pickle.dumps(layer)).__dict__.copy()
    state["zoneout_c"] = state.pop("_zoneout_c")
    old = object.__new__(type(layer))
    old.__setstate__(state)
    assert old.zoneout_c == 0.3 and old.zoneout == 0.5


# ------------------------------------------------- dropout with one layer warns, as torch.nn


@pytest.mark.parametrize("make", [lambda **kw: pyrnn.LSTM(3, 4, **kw), lambda **kw: pyrnn.GRU(3, 4, **kw),
                                  lambda **kw: pyrnn.LayerNormLSTM(3, 4, **kw),
                                  lambda **kw: pyrnn.LayerNormGRU(3, 4, **kw)])
def test_dropout_with_one_layer_warns(make):
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        make(dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(dropout=0.5, num_layers=2)
        make(dropout=0.0)


def test_torch_layernorm_dropout_with_one_layer_warns():
    pytest.importorskip("torch")
    import pyrnn.torch as pt

    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        pt.LayerNormLSTM(3, 4, dropout=0.5)


# ------------------------------------------------- weights that are not the module's parameters (pyrnn.torch)


def _replace_weight(m, name, value):
    delattr(m, name)
    setattr(m, name, value)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_torch_weight_from_outside_the_module_gets_its_gradient(cls):
    """AWD-LSTM's WeightDrop (the raw weight on a wrapper) or a hypernetwork's output as a weight: with
    the module's own parameters frozen, pyrnn ran the no-grad kernels (the raw weight got no gradient,
    or backward raised), where torch.nn follows the tensors it reads."""
    torch = pytest.importorskip("torch")
    import pyrnn.torch as pt

    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(3, 5, num_layers=2, dtype=torch.float64)
    ours = getattr(pt, cls)(3, 5, num_layers=2, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    raw = torch.nn.Parameter(ref.weight_hh_l1.detach().clone())
    grads = []
    for m in (ref, ours):
        for p in m.parameters():
            p.requires_grad_(False)
        raw.grad = None
        _replace_weight(m, "weight_hh_l1", raw * 0.9)  # (a tensor computed from the raw weight)
        y, _ = m(x)
        y.square().sum().backward()
        grads.append(raw.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


def test_torch_layernorm_weight_from_outside_the_module_gets_its_gradient():
    torch = pytest.importorskip("torch")
    import pyrnn.torch as pt

    torch.manual_seed(0)
    m = pt.LayerNormLSTM(3, 5, num_layers=2, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    y, _ = m(x)
    y.square().sum().backward()
    want = m.weight_ih_l1.grad.clone()
    raw = torch.nn.Parameter(m.weight_ih_l1.detach().clone())
    for p in m.parameters():
        p.requires_grad_(False)
    _replace_weight(m, "weight_ih_l1", raw * 1.0)
    y, _ = m(x)
    y.square().sum().backward()
    torch.testing.assert_close(raw.grad, want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------- the second reader's findings


def test_a_copy_of_grads_does_not_write_through():
    import copy

    layer = pyrnn.LSTM(2, 3, seed=0)
    layer.grads["bias_ih_l0"][...] = 1.0
    for snap in (layer.grads.copy(), copy.copy(layer.grads)):
        snap["bias_ih_l0"] = snap["bias_ih_l0"] * 0.5 + 1  # a plain dict of the same arrays: rebinds
        assert (layer.grads["bias_ih_l0"] == 1).all()


def test_subclass_with_a_class_default_for_zoneout_c():
    class MyLSTM(pyrnn.LSTM):
        zoneout_c = 0.0  # (the class-default pattern pyrnn's own classes used)

    m = MyLSTM(3, 4, zoneout=0.5, zoneout_c=0.2, seed=0)
    assert m.zoneout_c == 0.2
    m(np.zeros((2, 1, 3), np.float32))
    assert MyLSTM(3, 4, zoneout=0.3, seed=0).zoneout_c == 0.3
    torch = pytest.importorskip("torch")
    import pyrnn.torch as pt

    class MyTorchLSTM(pt.LSTM):
        zoneout_c = 0.0

    t = MyTorchLSTM(3, 4, zoneout=0.5, zoneout_c=0.2)
    assert t.zoneout_c == 0.2
    t(torch.zeros(2, 1, 3))


def test_dropout_warning_names_the_callers_line():
    for make in (lambda: pyrnn.LSTM(3, 4, dropout=0.5), lambda: pyrnn.LayerNormGRU(3, 4, dropout=0.5)):
        with pytest.warns(UserWarning) as rec:
            make()
        assert rec[0].filename == __file__


def test_training_input_container_edited_before_backward():
    """An object whose __array__ hands out its own live array (xarray-like) is copied too."""

    class Box:
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    layer = pyrnn.GRU(3, 4, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    y, _ = layer(x.copy())
    layer.zero_grad()
    layer.backward(np.ones_like(y))
    want = {k: v.copy() for k, v in layer.grads.items()}
    box = Box(x.copy())
    y, _ = layer(box)
    box.a += 10.0
    layer.zero_grad()
    layer.backward(np.ones_like(y))
    for k, v in want.items():
        np.testing.assert_array_equal(layer.grads[k], v)
