"""Helpers for checking kernels against the reference (used by tests and benchmarks).

``module`` arguments are :mod:`pyrnn.reference` or :mod:`pyrnn.functional`,
which share the per-cell functions' names and core arguments, so one call runs either.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from ._cells import CELLS, GATES, cell_options
from ._validation import check_positive_int

# variant (cell) name -> (family, the keyword options that select it):
# "rnn_tanh", "rnn_relu", "rnn_leaky", "lstm", "gru", "gru_reset_before"
# (rnn_leaky with a leak of 0.6, so the tests see the leak at work)
VARIANTS = {c.name: (c.family, {**cell_options(c), **({"leak": 0.6} if c.name == "rnn_leaky" else {})})
            for c in CELLS.values()}
# names of the backward results, in order
GRAD_NAMES = {
    "rnn": ("x", "h0", "W_ih", "W_hh", "b_ih", "b_hh"),
    "lstm": ("x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh"),
    "gru": ("x", "h0", "W_ih", "W_hh", "b_ih", "b_hh"),
}

# The one tolerance table: kernel vs reference, per dtype. float32 kernels are
# compared with the float64 reference run on the same (float32) inputs; atol
# is relative to the largest magnitude of the expected array.
TOLERANCES = {
    np.dtype(np.float64): {"rtol": 1e-12, "atol": 1e-12},
    np.dtype(np.float32): {"rtol": 1e-5, "atol": 1e-5},
}


def _choice(name, value, choices):
    """``value`` if it is one of ``choices`` (their keys), else ValueError naming them (not a KeyError)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _check_inputs(rng, dtype, sizes):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got "
                        f"{type(rng).__name__}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in TOLERANCES:
        raise TypeError(f"dtype must be one of {', '.join(d.name for d in TOLERANCES)}, got {dtype!r}")
    for name, n in sizes.items():
        check_positive_int(name, n, allow_zero=True)


def _check_tolerance(name, value, positive=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}")


def assert_close(actual, expected, dtype, name="", factor=1.0):
    """Asserts ``actual`` matches ``expected`` within the table's tolerance for ``dtype``
    (times ``factor``, for a comparison whose own rounding is measured to need more)."""
    tol = TOLERANCES.get(np.dtype(dtype))
    if tol is None:
        raise ValueError(f"dtype must be one of {', '.join(d.name for d in TOLERANCES)}, got {np.dtype(dtype).name}")
    _check_tolerance("factor", factor, positive=True)  # (a negative factor failed every comparison)
    expected = np.asarray(expected)
    if expected.dtype.kind not in "fiu":
        raise TypeError(f"{name + ': ' if name else ''}expected must be a real-valued array, got dtype "
                        f"{expected.dtype}")
    finite = np.abs(expected[np.isfinite(expected)]) if expected.size else expected
    # (the scale from finite entries: an inf made atol inf, and then anything passed)
    scale = max(1.0, float(np.max(finite))) if finite.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"] * factor, atol=tol["atol"] * scale * factor,
                               err_msg=f"{name} ({np.dtype(dtype).name})")


def make_params(rng, cell, T=4, B=3, I=5, H=7, bias=True, dtype=np.float64):
    """Random inputs for ``cell`` ("rnn", "lstm" or "gru"): x, h0 (c0), W_ih, W_hh (b_ih, b_hh), drawn
    from the numpy.random.Generator ``rng``, of ``dtype`` float32 or float64."""
    G = GATES[_choice("cell", cell, GATES)]
    _check_inputs(rng, dtype, {"T": T, "B": B, "I": I, "H": H})
    p = {"x": rng.standard_normal((T, B, I)), "h0": 0.5 * rng.standard_normal((B, H))}
    if cell == "lstm":
        p["c0"] = 0.5 * rng.standard_normal((B, H))
    p["W_ih"] = rng.uniform(-0.5, 0.5, (G * H, I))
    p["W_hh"] = rng.uniform(-0.5, 0.5, (G * H, H))
    if bias:
        p["b_ih"] = rng.uniform(-0.5, 0.5, G * H)
        p["b_hh"] = rng.uniform(-0.5, 0.5, G * H)
    return {k: v.astype(dtype) for k, v in p.items()}


def run_forward(module, variant, p, **kw):
    """Forward of ``variant`` on the inputs ``p``; returns (outputs dict, cache)."""
    cell, opts = VARIANTS[_choice("variant", variant, VARIANTS)]
    biases = (p.get("b_ih"), p.get("b_hh"))
    if cell == "lstm":
        y, h_n, c_n, cache = module.lstm_forward(
            p["x"], p.get("h0"), p.get("c0"), p["W_ih"], p["W_hh"], *biases, **opts, **kw)
        return {"y": y, "h_n": h_n, "c_n": c_n}, cache
    forward = module.rnn_forward if cell == "rnn" else module.gru_forward
    y, h_n, cache = forward(p["x"], p.get("h0"), p["W_ih"], p["W_hh"], *biases, **opts, **kw)
    return {"y": y, "h_n": h_n}, cache


def run_backward(module, variant, cache, cot):
    """Backward of ``variant`` for the output cotangents ``cot``; returns a dict of gradients."""
    cell = VARIANTS[_choice("variant", variant, VARIANTS)][0]
    if cell == "lstm":
        grads = module.lstm_backward(cache, cot.get("y"), cot.get("h_n"), cot.get("c_n"))
    else:
        backward = module.rnn_backward if cell == "rnn" else module.gru_backward
        grads = backward(cache, cot.get("y"), cot.get("h_n"))
    assert len(grads) == len(GRAD_NAMES[cell])
    return dict(zip(GRAD_NAMES[cell], grads))


def random_cotangents(rng, outs):
    """Standard-normal arrays shaped and typed like each entry of the dict ``outs`` (same keys)."""
    return {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in outs.items()}


def check_directional_derivatives(loss, grads, p, rng, eps=1e-6, rtol=1e-6, atol=1e-8):
    """Checks the gradients ``grads`` of the scalar ``loss(inputs)`` at the input dict ``p`` by central
    finite differences along one random direction: first every input at once, then one input at a time
    (to name a wrong gradient). Raises AssertionError naming the inputs whose derivatives disagree
    (``abs(analytic - numeric) > max(rtol * abs(numeric), atol)``). Meant for float64 inputs."""
    _check_tolerance("eps", eps, positive=True)
    _check_tolerance("rtol", rtol)
    _check_tolerance("atol", atol)
    if not isinstance(p, Mapping) or not isinstance(grads, Mapping):
        raise TypeError(f"p and grads must be dicts of arrays by input name, got {type(p).__name__} and "
                        f"{type(grads).__name__}")
    if missing := [k for k in p if k not in grads]:
        raise ValueError(f"grads lacks the gradients of the inputs {missing}")
    direction = {k: rng.standard_normal(v.shape) for k, v in p.items()}
    failures = []
    for names in [tuple(p)] + [(k,) for k in p]:
        analytic = sum(np.sum(grads[k] * direction[k]) for k in names)
        plus = {k: v + eps * direction[k] if k in names else v for k, v in p.items()}
        minus = {k: v - eps * direction[k] if k in names else v for k, v in p.items()}
        numeric = (loss(plus) - loss(minus)) / (2 * eps)
        if abs(analytic - numeric) > max(rtol * abs(numeric), atol):
            failures.append((names, analytic, numeric))
    if failures:
        # (every check runs: the one along all inputs at once fails first, and names none of them)
        wrong = [names[0] for names, _, _ in failures if len(names) == 1]
        raise AssertionError(
            (f"the derivatives of {wrong} disagree with finite differences" if wrong else
             "the derivative along all inputs disagrees with finite differences, no single input's does") + ": "
            + "; ".join(f"d loss along {names}: analytic {a!r}, finite differences {n!r}" for names, a, n in failures))


def assert_bitwise_equal(actual, expected):
    """Asserts two dicts of arrays (outputs or gradients; None entries skipped) are bitwise equal:
    the same dtype, shape and bytes (signed zeros and NaN payloads included)."""
    if not isinstance(actual, Mapping) or not isinstance(expected, Mapping):
        raise TypeError(f"assert_bitwise_equal compares two dicts of arrays (by name), got "
                        f"{type(actual).__name__} and {type(expected).__name__}")
    assert actual.keys() == expected.keys(), (sorted(actual), sorted(expected))
    for k, v in expected.items():
        if v is None:
            continue
        a, e = np.asarray(actual[k]), np.asarray(v)
        assert a.dtype == e.dtype and a.shape == e.shape, f"{k}: {a.dtype} {a.shape} against {e.dtype} {e.shape}"
        if a.tobytes() != e.tobytes():
            np.testing.assert_array_equal(a, e, err_msg=k)  # (where values differ, with numpy's report)
            raise AssertionError(f"{k}: equal values, other bits (signed zeros or NaN payloads)")


def make_masks(rng, cell, T, B, H, *, h_mask=True, zoneout=True, binary=False, dtype=np.float64, proj_size=0):
    """Keyword arguments of a forward call with masks: ``h_mask`` [B, H] (recurrent dropout) and
    ``zoneout_h`` (and for the LSTM ``zoneout_c``) [T, B, H]. ``binary``: as the layers draw them
    (kept units scaled by 1/0.7; zoneout 1 with probability 0.4); else fractional values, which
    exercise every term of the gradients (h_mask in [0, 2], zoneout in [0, 1]). ``proj_size``
    (LSTM projection, P > 0): h_mask and zoneout_h are P wide."""
    m = {}
    Ho = proj_size or H
    if h_mask:
        m["h_mask"] = ((rng.random((B, Ho)) >= 0.3) / 0.7 if binary else rng.uniform(0.0, 2.0, (B, Ho))).astype(dtype)
    if zoneout:
        draw = (lambda s: (rng.random(s) < 0.4).astype(dtype)) if binary else (lambda s: rng.random(s).astype(dtype))
        m["zoneout_h"] = draw((T, B, Ho))
        if cell == "lstm":
            m["zoneout_c"] = draw((T, B, H))
    return m


# ---------------------------------------------------------------- layer norm --
# The layer-normalised cells (reference.layernorm_* / functional.layernorm_*).

LN_GRAD_NAMES = {
    "lstm": ("x", "h0", "c0", "W_ih", "W_hh", "b_ih", "b_hh", "ln_ih", "ln_hh", "ln_c_weight", "ln_c_bias"),
    "gru": ("x", "h0", "W_ih", "W_hh", "b_ih", "b_hh", "ln_ih", "ln_hh"),
}


def make_layernorm_params(rng, cell, T=4, B=3, I=5, H=7, bias=True, dtype=np.float64, proj_size=0):
    """Random inputs of a layer-normalised ``cell`` ("lstm" or "gru"): those of
    :func:`make_params` plus gains near 1 ("ln_ih", "ln_hh", and for the LSTM
    "ln_c_weight") and, with ``bias``, "ln_c_bias" (LSTM). ``proj_size`` P > 0
    (LSTM): a projection "W_hr" [P, H], with h0 [B, P] and W_hh [4H, P]."""
    _choice("cell", cell, LN_GRAD_NAMES)
    _check_inputs(rng, dtype, {"proj_size": proj_size})
    if proj_size and cell != "lstm":
        raise ValueError(f"proj_size (a projection) is only for the LSTM, got proj_size={proj_size} for {cell}")
    p = make_params(rng, cell, T=T, B=B, I=I, H=H, bias=bias, dtype=np.float64)
    G = GATES[cell]
    if proj_size:
        P = proj_size
        p["h0"] = 0.5 * rng.standard_normal((B, P))
        p["W_hh"] = rng.uniform(-0.5, 0.5, (G * H, P))
        p["W_hr"] = rng.uniform(-0.5, 0.5, (P, H))
    p["ln_ih"] = rng.uniform(0.5, 1.5, G * H)
    p["ln_hh"] = rng.uniform(0.5, 1.5, G * H)
    if cell == "lstm":
        p["ln_c_weight"] = rng.uniform(0.5, 1.5, H)
        if bias:
            p["ln_c_bias"] = rng.uniform(-0.5, 0.5, H)
    return {k: v.astype(dtype) for k, v in p.items()}


def run_layernorm_forward(module, cell, p, **kw):
    """Layer-normalised forward of ``cell`` on ``p``; returns (outputs dict, cache)."""
    _choice("cell", cell, LN_GRAD_NAMES)
    biases = (p.get("b_ih"), p.get("b_hh"))
    if cell == "lstm":
        if "W_hr" in p:
            kw = {**kw, "W_hr": p["W_hr"]}
        y, h_n, c_n, cache = module.layernorm_lstm_forward(
            p["x"], p.get("h0"), p.get("c0"), p["W_ih"], p["W_hh"], *biases, p["ln_ih"], p["ln_hh"],
            p["ln_c_weight"], p.get("ln_c_bias"), **kw)
        return {"y": y, "h_n": h_n, "c_n": c_n}, cache
    y, h_n, cache = module.layernorm_gru_forward(p["x"], p.get("h0"), p["W_ih"], p["W_hh"], *biases,
                                                 p["ln_ih"], p["ln_hh"], **kw)
    return {"y": y, "h_n": h_n}, cache


def run_layernorm_backward(module, cell, cache, cot):
    """Layer-normalised backward of ``cell``; returns a dict of gradients by input name."""
    _choice("cell", cell, LN_GRAD_NAMES)
    if cell == "lstm":
        grads = module.layernorm_lstm_backward(cache, cot.get("y"), cot.get("h_n"), cot.get("c_n"))
    else:
        grads = module.layernorm_gru_backward(cache, cot.get("y"), cot.get("h_n"))
    names = LN_GRAD_NAMES[cell] + (("W_hr",) if len(grads) == len(LN_GRAD_NAMES[cell]) + 1 else ())
    assert len(grads) == len(names)
    return dict(zip(names, grads))


def check_layernorm_gradients(module, cell, p, rng, **kw):
    """Runs the layer-normalised forward and backward of ``module`` (reference or functional) on the
    float64 inputs ``p`` for random output cotangents, checks the gradients by
    :func:`check_directional_derivatives`, and returns them (a dict by input name)."""
    outs, cache = run_layernorm_forward(module, cell, p, **kw)
    cot = random_cotangents(rng, outs)
    grads = run_layernorm_backward(module, cell, cache, cot)

    def loss(q):
        o, none = run_layernorm_forward(module, cell, q, training=False, **kw)
        assert none is None
        return sum(np.sum(cot[k] * o[k]) for k in o)

    check_directional_derivatives(loss, grads, p, rng)
    return grads
