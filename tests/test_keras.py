"""Keras weight converters, checked against Keras's equations written out here
(Keras itself is not installed)."""

import re

import numpy as np
import pytest

import pyrnn
from pyrnn.keras import from_keras, to_keras


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def keras_lstm(x, kernel, rec, bias):
    """Keras LSTM, batch-major x (B, T, I); gates i, f, c, o."""
    B, T, _ = x.shape
    U = rec.shape[0]
    h, c, ys = np.zeros((B, U)), np.zeros((B, U)), []
    for t in range(T):
        z = x[:, t] @ kernel + h @ rec + bias
        i, f, cc, o = sigmoid(z[:, :U]), sigmoid(z[:, U:2 * U]), np.tanh(z[:, 2 * U:3 * U]), sigmoid(z[:, 3 * U:])
        c = f * c + i * cc
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys, 1)


def keras_gru(x, kernel, rec, bias, reset_after):
    """Keras GRU, batch-major; gates z, r, h."""
    B, T, _ = x.shape
    U = rec.shape[0]
    b_in, b_rec = (bias[0], bias[1]) if reset_after else (bias, np.zeros_like(bias))
    h, ys = np.zeros((B, U)), []
    for t in range(T):
        xz = x[:, t] @ kernel + b_in
        if reset_after:
            hz = h @ rec + b_rec
            z = sigmoid(xz[:, :U] + hz[:, :U])
            r = sigmoid(xz[:, U:2 * U] + hz[:, U:2 * U])
            hh = np.tanh(xz[:, 2 * U:] + r * hz[:, 2 * U:])
        else:
            z = sigmoid(xz[:, :U] + h @ rec[:, :U])
            r = sigmoid(xz[:, U:2 * U] + h @ rec[:, U:2 * U])
            hh = np.tanh(xz[:, 2 * U:] + (r * h) @ rec[:, 2 * U:])
        h = z * h + (1 - z) * hh
        ys.append(h)
    return np.stack(ys, 1)


def keras_rnn(x, kernel, rec, bias):
    h, ys = np.zeros((x.shape[0], rec.shape[0])), []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ kernel + h @ rec + bias)
        ys.append(h)
    return np.stack(ys, 1)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng, rng.standard_normal((3, 6, 5))


def test_lstm_from_keras(data):
    rng, x = data
    k, r, b = rng.standard_normal((5, 16)) * .4, rng.standard_normal((4, 16)) * .4, rng.standard_normal(16) * .4
    layer = pyrnn.LSTM(5, 4, batch_first=True, dtype=np.float64)
    layer.load_keras_weights(k, r, b)
    y, _ = layer(x)
    np.testing.assert_allclose(y, keras_lstm(x, k, r, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_from_keras(data, reset_after):
    rng, x = data
    k, r = rng.standard_normal((5, 12)) * .4, rng.standard_normal((4, 12)) * .4
    b = rng.standard_normal((2, 12) if reset_after else (12,)) * .4
    layer = pyrnn.GRU(5, 4, batch_first=True, reset_after=reset_after, dtype=np.float64)
    layer.load_keras_weights(k, r, b)
    y, _ = layer(x)
    np.testing.assert_allclose(y, keras_gru(x, k, r, b, reset_after), rtol=1e-12, atol=1e-12)


def test_simple_rnn_from_keras(data):
    rng, x = data
    k, r, b = rng.standard_normal((5, 4)) * .4, rng.standard_normal((4, 4)) * .4, rng.standard_normal(4) * .4
    layer = pyrnn.RNN(5, 4, batch_first=True, dtype=np.float64)
    layer.load_keras_weights(k, r, b)
    y, _ = layer(x)
    np.testing.assert_allclose(y, keras_rnn(x, k, r, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell, G, two", [("lstm", 4, False), ("gru", 3, True), ("gru", 3, False), ("rnn", 1, False)])
def test_round_trip(cell, G, two):
    rng = np.random.default_rng(1)
    k, r = rng.standard_normal((5, G * 4)), rng.standard_normal((4, G * 4))
    b = rng.standard_normal((2, G * 4) if two else (G * 4,))
    w = from_keras(cell, k, r, b, reset_after=two or cell != "gru")
    k2, r2, b2 = to_keras(cell, **w, reset_after=two or cell != "gru")
    np.testing.assert_array_equal(k2, k)
    np.testing.assert_array_equal(r2, r)
    np.testing.assert_array_equal(b2, b)
    if cell == "gru":  # gate blocks really are reordered: Keras z first, PyTorch r first
        np.testing.assert_array_equal(w["W_ih"][:4], k[:, 4:8].T)


def test_converter_errors():
    with pytest.raises(ValueError, match="recurrent_kernel must have shape"):
        from_keras("lstm", np.zeros((5, 16)), np.zeros((4, 12)))
    with pytest.raises(ValueError, match="kernel must have shape"):
        from_keras("gru", np.zeros((5, 16)), np.zeros((4, 12)))
    with pytest.raises(ValueError, match=r"bias must have shape \(2, 12\)"):
        from_keras("gru", np.zeros((5, 12)), np.zeros((4, 12)), np.zeros(12))
    with pytest.raises(ValueError, match="cell must be"):
        to_keras("conv", np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match=re.escape("b_ih must have shape (16,), got (1,)")):
        to_keras("lstm", np.zeros((16, 5)), np.zeros((16, 4)), np.zeros(1), np.zeros(16))
    with pytest.raises(ValueError, match=re.escape("b_hh must have shape (12,), got (13,)")):
        to_keras("gru", np.zeros((12, 5)), np.zeros((12, 4)), np.zeros(12), np.zeros(13))
    with pytest.raises(ValueError, match="b_ih and b_hh must be given together"):
        to_keras("rnn", np.zeros((4, 5)), np.zeros((4, 4)), np.zeros(4), None)
    layer = pyrnn.LSTM(5, 4, bias=False)
    with pytest.raises(ValueError, match="bias=False but the Keras weights have a bias"):
        layer.load_keras_weights(np.zeros((5, 16)), np.zeros((4, 16)), np.zeros(16))
    with pytest.raises(ValueError, match="size mismatch"):
        pyrnn.LSTM(6, 4).load_keras_weights(np.zeros((5, 16)), np.zeros((4, 16)), np.zeros(16))
