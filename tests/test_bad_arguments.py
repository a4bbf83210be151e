"""Bad arguments found by the thirteenth session's fuzz of the public API: each now a named
TypeError/ValueError (or a MemoryError naming the size) instead of a hang, a silent coercion or an
internal error. Valid spellings (NumPy scalars, NumPy bools) keep working."""

import numpy as np
import pytest

import pyrnn
from pyrnn import functional as F
from pyrnn.reservoir import ESN


def _lstm_weights():
    w = pyrnn.LSTM(3, 4, seed=0).state_dict()
    return w["weight_ih_l0"], w["weight_hh_l0"]


@pytest.mark.parametrize("make", [
    lambda: pyrnn.LSTM(3, 4, num_layers=2**40),  # looped adding parameters
    lambda: pyrnn.GRU(3, 2**31),
    lambda: pyrnn.LayerNormGRU(3, 4, num_layers=2**40),
    lambda: pyrnn.GRUCell(2**40, 4),
    lambda: pyrnn.Linear(2**30, 2**21),
    lambda: ESN(2**40, 20),
    lambda: ESN(2, 20, output_size=2**63),
])
def test_absurd_sizes_fail_before_allocating(make):
    with pytest.raises(MemoryError, match="would need .* GiB, more than this machine's"):
        make()


@pytest.mark.parametrize("make, name", [
    (lambda v: pyrnn.LSTM(3, 4, bias=v), "bias"),
    (lambda v: pyrnn.LSTM(3, 4, batch_first=v), "batch_first"),
    (lambda v: pyrnn.GRU(3, 4, bidirectional=v), "bidirectional"),
    (lambda v: pyrnn.GRU(3, 4, reset_after=v), "reset_after"),
    (lambda v: pyrnn.GRUCell(3, 4, reset_after=v), "reset_after"),
    (lambda v: pyrnn.RNNCell(3, 4, bias=v), "bias"),
    (lambda v: pyrnn.Linear(3, 4, bias=v), "bias"),
    (lambda v: pyrnn.LayerNormLSTM(3, 4, bidirectional=v), "bidirectional"),
])
@pytest.mark.parametrize("value", ["False", None, 2, 0.0])
def test_boolean_options_are_booleans(make, name, value):
    # bool() read 'False' as True and None as False
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        make(value)


def test_boolean_options_accept_numpy_bools_and_0_1():
    assert pyrnn.LSTM(3, 4, bidirectional=np.bool_(True)).bidirectional is True
    assert pyrnn.GRU(3, 4, bias=0).bias is False
    x = np.zeros((2, 1, 3), np.float32)
    W_ih, W_hh = _lstm_weights()
    y1 = F.forward("lstm", x, None, None, W_ih, W_hh, reverse=np.bool_(True), training=False)[0]
    y2 = F.forward("lstm", x, None, None, W_ih, W_hh, reverse=True, training=False)[0]
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("kwargs, match", [
    ({"reverse": "no"}, "reverse must be True or False"),
    ({"training": None}, "training must be True or False"),
    ({"nonlinearity": "sigmoid"}, "nonlinearity is the RNN's option"),
    ({"reset_after": False}, "reset_after=False is the GRU's option"),
])
def test_functional_options(kwargs, match):
    W_ih, W_hh = _lstm_weights()
    with pytest.raises((TypeError, ValueError), match=match):
        F.forward("lstm", np.zeros((2, 1, 3), np.float32), None, None, W_ih, W_hh, **kwargs)
    if "reverse" in kwargs or "training" in kwargs:
        return
    with pytest.raises(ValueError, match=match):
        F.pack_weights("lstm", W_ih, W_hh, **kwargs)


def test_functional_cell_and_leak():
    W_ih, W_hh = _lstm_weights()
    with pytest.raises(ValueError, match="leak is the tanh RNN's option"):
        F.pack_weights("lstm", W_ih, W_hh, leak=0.5)
    with pytest.raises(ValueError, match="cell must be"):
        F.forward(np.array(["lstm"]), np.zeros((2, 1, 3), np.float32), None, None, W_ih, W_hh)
    with pytest.raises(ValueError, match="nonlinearity"):
        pyrnn.RNN(3, 4, nonlinearity=np.array(["tanh"]))


@pytest.mark.parametrize("kwargs", [{"T": -1}, {"T": 2.5}, {"B": -1}, {"H": 2.7}, {"H": "4"}, {"H": True},
                                    {"I": "x"}, {"proj_size": -1}, {"bias": "no"}])
def test_residual_nbytes_for_sizes(kwargs):
    args = dict(cell="lstm", T=5, B=2, I=3, H=4)
    args.update(kwargs)
    with pytest.raises((TypeError, ValueError)):
        F.residual_nbytes_for(**args)
    assert F.residual_nbytes_for("lstm", np.int64(5), 2, np.int64(3), 4) == F.residual_nbytes_for("lstm", 5, 2, 3, 4)


@pytest.mark.parametrize("module", [pyrnn.LSTM(3, 4), pyrnn.LSTMCell(3, 4), pyrnn.Linear(3, 4),
                                    pyrnn.LayerNormGRU(3, 4)])
def test_train_mode_is_a_bool(module):
    with pytest.raises(ValueError, match="training mode is expected to be boolean"):
        module.train("False")
    assert module.train(np.bool_(False)).training is False
    frozen = pyrnn.LSTM(3, 4).freeze()
    with pytest.raises(ValueError, match="boolean"):
        frozen.train("False")


@pytest.mark.parametrize("p", [2.0, -1.0, float("nan")])
def test_dropout_checked_at_call(p):
    # the output stopped depending on x (2.0), or dropout was skipped (-1, NaN)
    m = pyrnn.LSTM(3, 4, num_layers=2)
    m.dropout = p
    with pytest.raises(ValueError, match="dropout"):
        m(np.zeros((2, 1, 3), np.float32))
    m.eval()
    m(np.zeros((2, 1, 3), np.float32))  # (no dropout in eval)


def test_seed_true_refused():
    with pytest.raises(TypeError, match="seed"):
        pyrnn.LSTM(3, 4, seed=True)
    with pytest.raises(TypeError, match="seed"):
        ESN(2, 20, seed=True)


def test_masked_arrays_refused():
    x = np.ma.masked_array(np.zeros((2, 1, 3), np.float32), mask=np.zeros((2, 1, 3), bool))
    for call in (lambda: pyrnn.LSTM(3, 4)(x), lambda: pyrnn.LSTMCell(3, 4)(x[0]), lambda: pyrnn.Linear(3, 4)(x),
                 lambda: F.forward("lstm", x, None, None, *_lstm_weights())):
        with pytest.raises(TypeError, match="masked array"):
            call()


def test_linear_arguments():
    lin = pyrnn.Linear(3, 4)
    with pytest.raises(ValueError, match="expected last dimension"):
        lin(np.float32(1))
    lin(np.zeros((2, 3), np.float32))
    for dy in (np.full((2, 4), "1"), np.ones((2, 4), complex)):
        with pytest.raises(TypeError, match="floating-point"):
            lin.backward(dy)
    lin.backward(np.ones((2, 4)))  # float64 into a float32 layer: cast, as before


def test_with_weights_refuses_non_float():
    layer = pyrnn.LSTM(3, 4)
    frozen = layer.freeze()
    w = layer.state_dict()
    for kind in (str, complex, int):
        with pytest.raises(TypeError, match="floating-point"):
            frozen.with_weights({k: v.astype(kind) for k, v in w.items()})
    cell = pyrnn.GRUCell(3, 4)
    with pytest.raises(TypeError, match="floating-point"):
        cell.freeze().with_weights({k: v.astype(str) for k, v in cell.state_dict().items()})


def test_x_with_another_input_size_than_W_ih_names_both():
    W_ih, W_hh = _lstm_weights()
    with pytest.raises(ValueError, match=r"x has I = 5 input features \(its last dimension\) but W_ih has 3 columns: "
                                         r"W_ih must have shape \(4\*H, I\) = \(16, 5\), got \(16, 3\)"):
        F.lstm_forward(np.zeros((2, 1, 5), np.float32), None, None, W_ih, W_hh)


def test_a_list_input_of_another_dtype_is_named_as_a_list():
    layer = pyrnn.LSTM(3, 4)
    with pytest.raises(TypeError, match=r"got a list, which NumPy reads as float64 \(cast it \(np\.asarray\(x, "
                                        r"dtype=np\.float32\)\), or build the layer with dtype=float64\)"):
        layer(np.zeros((2, 1, 3)).tolist())
