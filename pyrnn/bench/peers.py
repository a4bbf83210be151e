"""The peers beyond PyTorch: ONNX Runtime (``ort``), JAX (``jax``) and PyTorch's dynamic int8 (``torch-int8``).

Each is a runner factory like those of :mod:`pyrnn.bench.runner`:
``make(case, inputs, mode)`` -> a callable that runs one step and returns
(y, dx or None), raising :class:`~pyrnn.bench.runner.Unavailable` when the
peer cannot run the case. They run inside a worker process
(:mod:`pyrnn.bench.worker`) whose thread count :func:`runner.current_threads`
gives.
"""

from __future__ import annotations

import io
import warnings
from types import ModuleType
from typing import Any, Callable, Optional, Tuple

import numpy as np

from . import runner
from .cases import Case, param_names
from .runner import Step, Unavailable, torch_forward, torch_module


def _import(name: str) -> Optional[ModuleType]:
    try:
        return __import__(name, fromlist=["_"])
    except ImportError:
        return None


# --------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------

ONNX_RNN_OPS = ("LSTM", "GRU", "RNN")
ONNX_SEQUENCE_LENS = 4  # the optional sequence_lens input of the ONNX LSTM/GRU/RNN ops


def onnx_model(case: Case, inputs: dict) -> bytes:
    """The torch.nn layer of the case, with its weights, exported to ONNX (TorchScript exporter);
    with variable lengths, a graph input "lengths" (int32 [B]) feeds every recurrent node's
    sequence_lens."""
    torch = _import("torch")
    if torch is None:
        raise Unavailable("torch not importable (it exports the ONNX model)")
    onnx = _import("onnx")
    if onnx is None:
        raise Unavailable("onnx not importable")
    module = torch_module(case, inputs).eval()

    base: Any = torch.nn.Module

    class Output(base):  # the layer's y alone
        def __init__(self) -> None:
            super().__init__()
            self.rnn = module

        def forward(self, x: Any) -> Any:
            return self.rnn(x)[0]

    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(Output(), (torch.from_numpy(inputs["x"]),), buf, dynamo=False,
                          input_names=["x"], output_names=["y"])
    if inputs["lengths"] is None:
        return buf.getvalue()
    model = onnx.load_from_string(buf.getvalue())
    graph = model.graph
    nodes = [n for n in graph.node if n.op_type in ONNX_RNN_OPS]
    if not nodes:
        raise Unavailable("no ONNX recurrent node in the export")
    graph.input.append(onnx.helper.make_tensor_value_info("lengths", onnx.TensorProto.INT32, [case.B]))
    for node in nodes:
        while len(node.input) <= ONNX_SEQUENCE_LENS:
            node.input.append("")
        node.input[ONNX_SEQUENCE_LENS] = "lengths"
    return bytes(model.SerializeToString())


def ort_runner(case: Case, inputs: dict, mode: str) -> Step:
    if mode != "fwd":
        raise Unavailable("inference only")
    ort = _import("onnxruntime")
    if ort is None:
        raise Unavailable("onnxruntime not importable")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = runner.current_threads() or 0  # 0: ORT's default
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only
    session = ort.InferenceSession(onnx_model(case, inputs), opts, providers=["CPUExecutionProvider"])
    feed = {"x": inputs["x"]}
    if inputs["lengths"] is not None:
        feed["lengths"] = inputs["lengths"].astype(np.int32)
    return lambda: (session.run(["y"], feed)[0], None)


# --------------------------------------------------------------------------
# PyTorch dynamic int8
# --------------------------------------------------------------------------

INT8_FAMILIES = ("lstm", "gru")  # what quantize_dynamic quantizes (nn.LSTM, nn.GRU)


def torch_int8_runner(case: Case, inputs: dict, mode: str) -> Step:
    if mode != "fwd":
        raise Unavailable("inference only")
    if case.cell not in INT8_FAMILIES:
        raise Unavailable(f"quantize_dynamic has no int8 {case.cell.upper()}")
    torch = _import("torch")
    if torch is None:
        raise Unavailable("torch not importable")
    module = torch_module(case, inputs).eval()
    quantize = getattr(getattr(getattr(torch, "ao", None), "quantization", None), "quantize_dynamic", None)
    if quantize is None:
        raise Unavailable("torch.ao.quantization.quantize_dynamic not available")
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation warning
        warnings.simplefilter("ignore")
        # quantize_dynamic swaps submodules, not the module it is given: wrap the layer
        quantized = quantize(torch.nn.Sequential(module), {torch.nn.LSTM, torch.nn.GRU}, dtype=torch.qint8)[0]
    if quantized is module:
        raise Unavailable("quantize_dynamic left the layer in fp32")
    forward = torch_forward(quantized, case, inputs)
    x = torch.from_numpy(inputs["x"])

    def infer() -> Tuple[Any, Any]:
        with torch.no_grad():
            return forward(x), None

    return infer


# --------------------------------------------------------------------------
# JAX
# --------------------------------------------------------------------------

JAX_VARIANTS = ("lstm", "gru", "gru_reset_before", "rnn_tanh", "rnn_relu")
JAX_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={n}"


def _jax_cell(jnp: Any, variant: str, W_hh: Any, b_hh: Any) -> Callable[[Any, Any], Tuple[Any, Any]]:
    """One step, PyTorch's equations and gate order: (state, gi) -> (new state, h), gi = W_ih x + b_ih."""
    H = W_hh.shape[1]

    def sigmoid(v: Any) -> Any:
        return 1.0 / (1.0 + jnp.exp(-v))

    if variant == "lstm":
        def lstm(state: Any, gi: Any) -> Tuple[Any, Any]:
            h, c = state
            i, f, g, o = jnp.split(gi + h @ W_hh.T + b_hh, 4, axis=-1)
            c = sigmoid(f) * c + sigmoid(i) * jnp.tanh(g)
            h = sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        return lstm
    if variant == "gru":  # reset after the recurrent product (PyTorch, cuDNN)
        def gru(state: Any, gi: Any) -> Tuple[Any, Any]:
            (h,) = state
            gh = h @ W_hh.T + b_hh
            r, z = jnp.split(sigmoid(gi[:, :2 * H] + gh[:, :2 * H]), 2, axis=-1)
            n = jnp.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
            h = n + z * (h - n)
            return (h,), h

        return gru
    if variant == "gru_reset_before":  # Cho et al. v3: r applied to h before W_hn
        W_hrz, W_hn, b_hrz, b_hn = W_hh[:2 * H], W_hh[2 * H:], b_hh[:2 * H], b_hh[2 * H:]

        def gru_v3(state: Any, gi: Any) -> Tuple[Any, Any]:
            (h,) = state
            r, z = jnp.split(sigmoid(gi[:, :2 * H] + h @ W_hrz.T + b_hrz), 2, axis=-1)
            n = jnp.tanh(gi[:, 2 * H:] + (r * h) @ W_hn.T + b_hn)
            h = n + z * (h - n)
            return (h,), h

        return gru_v3
    act = jnp.tanh if variant == "rnn_tanh" else (lambda v: jnp.maximum(v, 0.0))

    def rnn(state: Any, gi: Any) -> Tuple[Any, Any]:
        (h,) = state
        h = act(gi + h @ W_hh.T + b_hh)
        return (h,), h

    return rnn


def jax_forward(jax: Any, case: Case, mask: Any) -> Callable[[Any, Any], Any]:
    """(x [T, B, I], params {torch name: array}) -> y [T, B, D*H]: every layer and direction a
    lax.scan; mask [T, B, 1] (variable lengths) holds the state and zeroes y past each length,
    which also starts a reverse direction at its sequence's last valid step."""
    jnp, lax = jax.numpy, jax.lax
    state_count = 2 if case.cell == "lstm" else 1

    def direction(x: Any, p: dict, reverse: bool) -> Any:
        T, B = x.shape[0], x.shape[1]
        gi = (x.reshape(T * B, -1) @ p["weight_ih"].T + p["bias_ih"]).reshape(T, B, -1)  # one GEMM for all steps
        cell = _jax_cell(jnp, case.variant, p["weight_hh"], p["bias_hh"])
        state0 = tuple(jnp.zeros((B, case.H), x.dtype) for _ in range(state_count))
        if mask is None:
            return lax.scan(cell, state0, gi, reverse=reverse)[1]

        def masked(state: Any, inp: Any) -> Tuple[Any, Any]:
            gi_t, m = inp
            new, h = cell(state, gi_t)
            return tuple(jnp.where(m, a, b) for a, b in zip(new, state)), jnp.where(m, h, 0.0)

        return lax.scan(masked, state0, (gi, mask), reverse=reverse)[1]

    def forward(x: Any, params: dict) -> Any:
        for layer in range(case.layers):
            ys = []
            for d in range(case.directions):
                names = param_names(layer, d)
                ys.append(direction(x, {k: params[v] for k, v in names.items()}, bool(d)))
            x = ys[0] if case.directions == 1 else jnp.concatenate(ys, axis=-1)
        return x

    return forward


def jax_runner(case: Case, inputs: dict, mode: str) -> Step:
    jax = _import("jax")
    if jax is None:
        raise Unavailable("jax not importable")
    if case.variant not in JAX_VARIANTS:
        raise Unavailable(f"no JAX cell for {case.variant}")
    jnp = jax.numpy
    params = {k: jax.device_put(v) for k, v in inputs["params"].items()}
    x = jax.device_put(inputs["x"])
    mask = None
    if inputs["lengths"] is not None:
        valid = np.arange(case.T)[:, None] < inputs["lengths"][None, :]
        mask = jnp.asarray(valid[:, :, None])
    forward = jax_forward(jax, case, mask)
    if mode == "fwd":
        infer = jax.jit(forward)
        return lambda: (jax.block_until_ready(infer(x, params)), None)

    dy = jax.device_put(inputs["dy"])

    @jax.jit
    def train(x: Any, params: dict, dy: Any) -> Any:
        # the gradient of sum(y * dy) with respect to x and every weight (all returned, so XLA computes them)
        y, vjp = jax.vjp(forward, x, params)
        dx, dparams = vjp(dy)
        return y, dx, dparams

    def train_step() -> Tuple[Any, Any]:
        y, dx, _ = jax.block_until_ready(train(x, params, dy))
        return y, dx

    return train_step
