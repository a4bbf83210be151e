"""Argument checks the thirteenth session's fuzz asked for: optim, keras, diagnostics, testing and
reference.quantize_rows_int8 give a clear TypeError or ValueError, never a wrong result."""

import numpy as np
import pytest

import pyrnn
from pyrnn import diagnostics, keras, optim
from pyrnn import functional as F
from pyrnn import reference as R
from pyrnn import testing as T

# ------------------------------------------------------------------- losses


def test_mse_loss_checks_dtypes_and_size():
    with pytest.raises(TypeError, match="pred must be a floating-point array.*got dtype int64"):
        optim.mse_loss(np.array([1, 2]), np.array([1.5, 2.5]))  # was (0.0, [0, 0]): target cast to int
    with pytest.raises(TypeError, match="target must be a real-valued array, got dtype <U3"):
        optim.mse_loss(np.array([1.0, 2.0]), np.array(["1.5", "2.5"]))
    with pytest.raises(TypeError, match="target must be a real-valued array, got dtype complex128"):
        optim.mse_loss(np.array([1.0, 2.0]), np.array([1 + 1j, 2]))
    with pytest.raises(TypeError, match="pred must be"):
        optim.mse_loss(None, None)
    with pytest.raises(ValueError, match=r"empty \(shape \(0,\)\)"):
        optim.mse_loss(np.ones(0), np.ones(0))
    loss, d = optim.mse_loss(np.array([1.0, 2.0]), np.array([2, 4]))  # integer targets are numbers
    assert loss == pytest.approx(2.5) and d.dtype == np.float64
    np.testing.assert_allclose(d, [-1.0, -2.0])
    loss, d = optim.mse_loss(np.float32(1.0), np.float64(3.0))
    assert loss == 4.0 and d.dtype == np.float32


def test_softmax_cross_entropy_checks_logits():
    t = np.array([0, 2])
    with pytest.raises(TypeError, match="logits must be a floating-point array.*int64"):
        optim.softmax_cross_entropy(np.array([[1, 2, 3], [3, 2, 1]]), t)  # dlogits came back int (zeros)
    with pytest.raises(TypeError, match="complex128"):
        optim.softmax_cross_entropy(np.ones((2, 3), complex), t)
    with pytest.raises(TypeError, match="<U1"):
        optim.softmax_cross_entropy(np.full((2, 3), "1"), t)
    with pytest.raises(ValueError, match=r"logits must have shape \[..., C\] with C >= 1"):
        optim.softmax_cross_entropy(np.float32(1), np.array(0))
    with pytest.raises(ValueError, match="C >= 1"):
        optim.softmax_cross_entropy(np.zeros((2, 0)), np.zeros(2, int))


def test_softmax_cross_entropy_checks_mask():
    logits, t = np.zeros((2, 3), np.float32), np.array([0, 2])
    with pytest.raises(ValueError, match="finite weights >= 0, got -1.0"):
        optim.softmax_cross_entropy(logits, t, mask=np.array([1.0, -1.0]))  # was a silent 0.0
    with pytest.raises(ValueError, match="NaN or inf"):
        optim.softmax_cross_entropy(logits, t, mask=np.array([1.0, np.nan]))
    with pytest.raises(TypeError, match="mask must be a real array"):
        optim.softmax_cross_entropy(logits, t, mask=np.array(["1", "1"]))
    with pytest.raises(TypeError, match="mask must be a real array"):
        optim.softmax_cross_entropy(logits, t, mask=np.array([1, 1j]))
    with pytest.raises(ValueError, match=r"mask of shape \(4,\) does not match targets \(2, 2\)"):
        optim.softmax_cross_entropy(np.zeros((2, 2, 3)), np.zeros((2, 2), int), mask=np.ones(4))
    # 0/1 masks of any real dtype, bool included, weigh alike
    ref = optim.softmax_cross_entropy(logits, t, mask=np.array([1.0, 0.0]))
    for m in (np.array([True, False]), np.array([1, 0]), np.array([1, 0], np.uint8)):
        loss, d = optim.softmax_cross_entropy(logits, t, mask=m)
        assert loss == ref[0] and d.dtype == np.float32
        np.testing.assert_array_equal(d, ref[1])


def test_log_softmax_and_softmax_checks():
    with pytest.raises(ValueError, match=r"axis 5 is out of range for logits of shape \(2, 3\)"):
        optim.log_softmax(np.ones((2, 3)), axis=5)
    with pytest.raises(TypeError, match="axis must be an int, got float"):
        optim.log_softmax(np.ones((2, 3)), axis=1.5)
    with pytest.raises(TypeError, match="axis must be an int, got bool"):
        optim.softmax(np.ones((2, 3)), axis=True)
    for bad in (None, np.array(["a", "b"]), "abc", np.array([1 + 1j, 2]), np.array([True, False])):
        with pytest.raises(TypeError, match="logits must be a real-valued array"):
            optim.log_softmax(bad)
        with pytest.raises(TypeError, match="logits must be a real-valued array"):
            optim.softmax(bad)
    with pytest.raises(ValueError, match="at least one entry along axis -1"):
        optim.softmax(np.ones((2, 0)))
    # integers are computed in float64; NumPy integer axes are ints
    np.testing.assert_array_equal(optim.log_softmax(np.array([1, 2, 3])), optim.log_softmax([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(optim.softmax(np.ones((2, 3)), axis=np.int64(0)), np.full((2, 3), 0.5))


# --------------------------------------------------------- optimizer state


def _opt(kind):
    lstm = pyrnn.LSTM(3, 4, rng=np.random.default_rng(0))
    return {"SGD": lambda: optim.SGD(lstm, lr=0.1, momentum=0.9, nesterov=True),
            "RMSprop": lambda: optim.RMSprop(lstm, centered=True),
            "Adam": lambda: optim.Adam(lstm, decoupled_weight_decay=True, weight_decay=0.01)}[kind]()


@pytest.mark.parametrize("kind", ["SGD", "RMSprop", "Adam"])
def test_load_state_dict_checks_everything_first(kind):
    opt = _opt(kind)
    for _, grads in opt._groups:
        for g in grads:
            g[...] = 0.5
    opt.step()
    sd = opt.state_dict()
    before = opt.state_dict()

    def edited(**changes):
        new = {**sd, "hyper": dict(sd["hyper"]), "state": [dict(s) for s in sd["state"]]}
        for k, v in changes.items():
            if k in sd["hyper"] or k == "step":
                new["hyper"][k] = v
            else:
                new[k] = v
        return new

    with pytest.raises(TypeError, match=f"{kind}.load_state_dict: expected a mapping.*got list"):
        opt.load_state_dict([1])
    with pytest.raises(TypeError, match="got NoneType"):
        opt.load_state_dict(None)
    with pytest.raises(ValueError, match=r"lacks the keys \['step_count', 'hyper', 'state'\]"):
        opt.load_state_dict({"type": kind})
    with pytest.raises(ValueError, match="Invalid learning rate: -5.0"):
        opt.load_state_dict(edited(lr=-5.0))
    with pytest.raises(ValueError, match="Invalid learning rate: 'abc'"):
        opt.load_state_dict(edited(lr="abc"))
    with pytest.raises(ValueError, match=r"state_dict\['hyper'\] must have the keys"):
        opt.load_state_dict(edited(step=None))  # was setattr: the step() method replaced by None
    with pytest.raises(ValueError, match=r"must have the keys"):
        opt.load_state_dict({**sd, "hyper": {"lr": 0.1}})
    with pytest.raises(TypeError, match="step_count must be an int, got float 2.7"):
        opt.load_state_dict(edited(step_count=2.7))
    with pytest.raises(TypeError, match="step_count must be an int, got bool"):
        opt.load_state_dict(edited(step_count=True))
    with pytest.raises(ValueError, match="step_count must be >= 0, got -3"):
        opt.load_state_dict(edited(step_count=-3))
    for dtype in (complex, str, object):
        bad = [{k: v.astype(dtype) for k, v in s.items()} for s in sd["state"]]
        with pytest.raises(TypeError, match="must be a real numeric array"):
            opt.load_state_dict(edited(state=bad))
    with pytest.raises(ValueError, match="has shape"):
        opt.load_state_dict(edited(state=[{k: 0.0 for k in s} for s in sd["state"]]))
    with pytest.raises(TypeError, match=r"state_dict\['state'\] must be a list"):
        opt.load_state_dict(edited(state=5))
    with pytest.raises(TypeError, match="must be a dict of arrays"):
        opt.load_state_dict(edited(state=[1] * len(sd["state"])))
    flag = {"SGD": "nesterov", "RMSprop": "centered", "Adam": "decoupled_weight_decay"}[kind]
    with pytest.raises(TypeError, match=f"{flag} must be True or False, got str 'False'"):
        opt.load_state_dict(edited(**{flag: "False"}))
    if kind == "SGD":  # the constructor's cross-check too
        with pytest.raises(ValueError, match="Nesterov"):
            opt.load_state_dict(edited(momentum=0.0))
    if kind == "Adam":
        with pytest.raises(ValueError, match="beta parameter at index 1"):
            opt.load_state_dict(edited(betas=[0.9, 1.0]))
    # nothing changed by the refused loads
    assert callable(opt.step) and opt.state_dict()["hyper"] == before["hyper"]
    assert opt.step_count == before["step_count"]
    for mine, theirs in zip(opt.state, before["state"]):
        for k in mine:
            np.testing.assert_array_equal(mine[k], theirs[k])
    # what is valid still loads: NumPy ints, lists for tuples (a JSON round trip), integer moments
    good = edited(step_count=np.int64(3), lr=np.float32(0.5),
                  state=[{k: np.zeros(v.shape, np.int32) for k, v in s.items()} for s in sd["state"]])
    if kind == "Adam":
        good["hyper"]["betas"] = list(sd["hyper"]["betas"])
    opt.load_state_dict(good)
    assert opt.step_count == 3 and type(opt.step_count) is int and opt.lr == 0.5 and type(opt.lr) is float
    assert not any(v.any() for s in opt.state for v in s.values())
    assert opt.state_dict()["hyper"].keys() == sd["hyper"].keys()


# ------------------------------------------------------- params and options


def test_params_that_are_not_iterable():
    for bad in (None, 3, 2.5):
        for make in (lambda v: optim.SGD(v, 0.1), lambda v: optim.RMSprop(v), lambda v: optim.Adam(v)):
            with pytest.raises(TypeError, match="expected a module, or a list of modules and .param, grad. pairs, "
                                                f"got {type(bad).__name__}"):
                make(bad)
        for clip in (lambda v: optim.clip_grad_norm(v, 1.0), lambda v: optim.clip_grad_value(v, 1.0)):
            with pytest.raises(TypeError, match="pairs and gradient arrays, got"):
                clip(bad)
    with pytest.raises(TypeError, match="got str"):
        optim.clip_grad_norm("m", 1.0)


def test_clip_grad_norm_norm_type():
    g = np.array([3.0, 4.0])
    for bad in (True, False, "2", None, [2], 2 + 0j, float("nan"), 0, -1, np.array([2.0])):
        with pytest.raises(ValueError, match="Invalid norm_type"):
            optim.clip_grad_norm([g], 10.0, norm_type=bad)  # True was the 1-norm, '2' parsed
    assert optim.clip_grad_norm([g], 10.0) == pytest.approx(5.0)
    assert optim.clip_grad_norm([g], 10.0, norm_type=np.float32(1)) == pytest.approx(7.0)
    assert optim.clip_grad_norm([g], 10.0, norm_type=np.int64(1)) == pytest.approx(7.0)
    assert optim.clip_grad_norm([g], 10.0, norm_type="inf") == 4.0  # (torch's spelling)
    assert optim.clip_grad_norm([g], 10.0, norm_type=float("inf")) == 4.0


def test_boolean_options_are_bools():
    p, g = np.zeros(3), np.zeros(3)
    makers = {"nesterov": lambda v: optim.SGD([(p, g)], 0.1, momentum=0.9, nesterov=v),
              "centered": lambda v: optim.RMSprop([(p, g)], centered=v),
              "decoupled_weight_decay": lambda v: optim.Adam([(p, g)], decoupled_weight_decay=v),
              "error_if_nonfinite": lambda v: optim.clip_grad_norm([g], 1.0, error_if_nonfinite=v)}
    for name, make in makers.items():
        for bad in ("False", "no", None, 2, 0.5, []):
            with pytest.raises(TypeError, match=f"{name} must be True or False, got {type(bad).__name__}"):
                make(bad)
        for ok in (True, False, np.bool_(True), np.bool_(False)):
            make(ok)
    assert optim.SGD([(p, g)], 0.1, momentum=0.9, nesterov=np.bool_(True)).nesterov is True


# -------------------------------------------------------------------- keras


def _keras_lstm(rng, I=3, U=4):
    return (rng.standard_normal((I, 4 * U)).astype(np.float32), rng.standard_normal((U, 4 * U)).astype(np.float32),
            rng.standard_normal(4 * U).astype(np.float32))


@pytest.mark.parametrize("dtype", [str, bool, int, object, complex])
def test_keras_converters_need_floating_arrays(dtype, rng):
    k, rk, b = _keras_lstm(rng)
    with pytest.raises(TypeError, match="kernel must be a floating-point array, got dtype"):
        keras.from_keras("lstm", k.astype(dtype), rk, b)
    with pytest.raises(TypeError, match="recurrent_kernel must be a floating-point array"):
        keras.from_keras("lstm", k, rk.astype(dtype), b)
    with pytest.raises(TypeError, match="bias must be a floating-point array"):
        keras.from_keras("lstm", k, rk, b.astype(dtype))
    w = keras.from_keras("lstm", k, rk, b)
    for name in ("W_ih", "W_hh", "b_ih", "b_hh"):
        with pytest.raises(TypeError, match=f"{name} must be a floating-point array"):
            keras.to_keras("lstm", **{**w, name: w[name].astype(dtype)})
    layer = pyrnn.LSTM(3, 4)
    with pytest.raises(TypeError, match="kernel must be a floating-point array"):
        layer.load_keras_weights(k.astype(dtype), rk, b)


def test_keras_converters_need_sizes(rng):
    k, rk, _ = _keras_lstm(rng)
    with pytest.raises(ValueError, match="with U >= 1"):
        keras.from_keras("lstm", np.zeros((3, 0)), np.zeros((0, 0)))
    with pytest.raises(ValueError, match="with I >= 1"):
        keras.from_keras("lstm", np.zeros((0, 16)), rk)
    with pytest.raises(ValueError, match="with H >= 1"):
        keras.to_keras("gru", np.zeros((0, 3)), np.zeros((0, 0)))
    with pytest.raises(ValueError, match="with I >= 1"):
        keras.to_keras("gru", np.zeros((12, 0)), np.zeros((12, 4)))
    # float16 and float64 weights convert as before, and round-trip
    for dtype in (np.float16, np.float64):
        w = keras.from_keras("lstm", k.astype(dtype), rk.astype(dtype))
        assert w["W_ih"].dtype == dtype
        back = keras.to_keras("lstm", w["W_ih"], w["W_hh"])
        np.testing.assert_array_equal(back[0], k.astype(dtype))


# -------------------------------------------------------------- diagnostics


def test_step_norms_needs_real_numbers():
    with pytest.raises(TypeError, match="dh must be a real-valued array, got dtype complex128"):
        diagnostics.step_norms(np.ones((2, 2, 2)) * 1j)  # the imaginary part was dropped
    with pytest.raises(TypeError, match="<U1"):
        diagnostics.step_norms(np.full((2, 2, 2), "3"))
    with pytest.raises(TypeError, match="object"):
        diagnostics.step_norms(None)
    np.testing.assert_allclose(diagnostics.step_norms(np.full((2, 2, 2), 3)), [np.sqrt(18)] * 2)
    np.testing.assert_allclose(diagnostics.step_norms(np.full((2, 2, 2), 3, np.float32)), [np.sqrt(18)] * 2)


# ------------------------------------------------------------------ testing


def test_testing_helpers_check_their_arguments(rng):
    with pytest.raises(ValueError, match="cell must be one of 'rnn', 'lstm', 'gru', got 'conv'"):
        T.make_params(rng, "conv")
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator.*got int"):
        T.make_params(0, "lstm")
    for dtype in (int, np.float16, "abc"):
        with pytest.raises(TypeError, match="dtype must be one of float64, float32"):
            T.make_params(rng, "lstm", dtype=dtype)
    with pytest.raises(TypeError, match="T should be of type int, got: float"):
        T.make_params(rng, "lstm", T=2.5)
    with pytest.raises(ValueError, match="cell must be one of 'lstm', 'gru', got 'rnn'"):
        T.make_layernorm_params(rng, "rnn")
    with pytest.raises(ValueError, match="proj_size .* only for the LSTM"):
        T.make_layernorm_params(rng, "gru", proj_size=2)
    p = T.make_params(rng, "lstm", T=np.int64(2), dtype=np.float32)
    assert p["x"].shape == (2, 3, 5) and p["x"].dtype == np.float32
    with pytest.raises(ValueError, match="variant must be one of 'rnn_tanh'.*got 'lstm2'"):
        T.run_forward(F, "lstm2", p)
    with pytest.raises(ValueError, match="variant must be one of"):
        T.run_backward(F, "lstm2", None, {})
    with pytest.raises(ValueError, match="cell must be one of 'lstm', 'gru', got 'rnn'"):
        T.run_layernorm_forward(F, "rnn", p)
    with pytest.raises(TypeError, match="two dicts of arrays .by name., got ndarray and ndarray"):
        T.assert_bitwise_equal(np.ones(2), np.ones(2))
    T.assert_bitwise_equal({"a": np.ones(2), "b": None}, {"a": np.ones(2), "b": None})

    q = {"a": np.ones(2)}

    def loss(d):
        return float(np.sum(d["a"] ** 2))

    for eps in (0, -1e-6, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be a finite number > 0"):
            T.check_directional_derivatives(loss, {"a": 2 * np.ones(2)}, q, rng, eps=eps)
    with pytest.raises(TypeError, match="eps must be a real number, got str"):
        T.check_directional_derivatives(loss, {"a": 2 * np.ones(2)}, q, rng, eps="1e-6")
    with pytest.raises(ValueError, match="rtol must be a finite number >= 0"):
        T.check_directional_derivatives(loss, {"a": 2 * np.ones(2)}, q, rng, rtol=-1)
    with pytest.raises(ValueError, match=r"grads lacks the gradients of the inputs \['a'\]"):
        T.check_directional_derivatives(loss, {}, q, rng)
    T.check_directional_derivatives(loss, {"a": 2 * np.ones(2)}, q, rng, eps=np.float32(1e-4))
    with pytest.raises(AssertionError, match="analytic"):
        T.check_directional_derivatives(loss, {"a": 3 * np.ones(2)}, q, rng)


# ---------------------------------------------------------------- reference


def test_quantize_rows_int8_checks():
    a = np.array([[0.5, -1.0]], np.float32)
    for bad in (0, 128, -1):
        with pytest.raises(ValueError, match=r"levels must be an int in \[1, 127\]"):
            R.quantize_rows_int8(a, levels=bad)  # 0 gave scale inf
    for bad in (True, 63.0, "63", None):
        with pytest.raises(TypeError, match=r"levels must be an int in \[1, 127\]"):
            R.quantize_rows_int8(a, levels=bad)
    for bad in (np.full((2, 2), "1"), np.ones((2, 2), int), np.ones((2, 2), complex), None):
        with pytest.raises(TypeError, match="needs a floating-point array"):
            R.quantize_rows_int8(bad)
    with pytest.raises(ValueError, match=r"2-D array \[n, K\], got shape \(2,\)"):
        R.quantize_rows_int8(np.ones(2))
    q, s = R.quantize_rows_int8(a.astype(np.float64), levels=np.int64(1))
    np.testing.assert_array_equal(q, [[0, -1]])  # 0.5 rounds to even
    assert s.dtype == np.float32 and s[0] == 1.0


def test_assert_close_checks_factor_and_expected():
    for bad in (-1, 0, float("inf")):
        with pytest.raises(ValueError, match="factor must be a finite number > 0"):
            T.assert_close(np.ones(2), np.ones(2), np.float32, factor=bad)
    with pytest.raises(TypeError, match="factor must be a real number, got str"):
        T.assert_close(np.ones(2), np.ones(2), np.float32, factor="2")
    with pytest.raises(TypeError, match="expected must be a real-valued array, got dtype <U1"):
        T.assert_close(np.ones(2), np.array(["a", "b"]), np.float32)
    T.assert_close(np.ones(2), np.ones(2, int), np.float64, factor=np.float32(2))
