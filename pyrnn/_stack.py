"""The one multi-layer, bidirectional loop, for every stack pyrnn runs.

The layers (NumPy), :mod:`pyrnn.diagnostics`, :mod:`pyrnn.torch` (tensors,
autograd) and the benchmark (:mod:`pyrnn.functional` or
:mod:`pyrnn.reference`) differ only in how one layer and direction runs and
how outputs are joined, so they pass those in::

    out, results = forward(run, x, num_layers, num_directions, concat=...)
    dx = backward(run_back, dy, num_layers, num_directions, width)

Layer ``layer``, direction ``d`` (0 forward, 1 reverse) is entry
``layer * num_directions + d`` of ``results`` and of the stacked final states,
as in PyTorch's ``h_n``.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np


def param_suffix(layer: int, direction: int) -> str:
    """PyTorch's parameter-name suffix: ``_l0``, ``_l0_reverse``, ..."""
    return f"_l{layer}" + ("_reverse" if direction else "")


def forward(run: Callable[[int, int, Any], Sequence[Any]], x: Any, num_layers: int, num_directions: int, *,
            concat: Callable[[List[Any]], Any] = lambda ys: np.concatenate(ys, axis=2),
            between: Optional[Callable[[int, Any], Any]] = None) -> Tuple[Any, list]:
    """Runs ``run(layer, direction, layer_input)`` -> ``(y, ...)`` for every layer and
    direction, feeding each layer the directions' outputs joined by ``concat``.
    ``between(layer, y)``, if given, transforms a layer's output before the next
    layer reads it (dropout); it is not applied after the last layer.
    Returns (the last layer's output, the list of what ``run`` returned)."""
    results = []
    layer_x = x
    for layer in range(num_layers):
        ys = []
        for d in range(num_directions):
            r = run(layer, d, layer_x)
            ys.append(r[0])
            results.append(r)
        layer_x = ys[0] if num_directions == 1 else concat(ys)
        if between is not None and layer < num_layers - 1:
            layer_x = between(layer, layer_x)
    return layer_x, results


def backward(run: Callable[[int, int, Any], Any], dy: Any, num_layers: int, num_directions: int, width: int, *,
             between: Optional[Callable[[int, Any], Any]] = None) -> Any:
    """The reverse of :func:`forward`: ``run(layer, direction, dy_d)`` -> dx of that
    direction, layers last to first; ``dy_d`` is the direction's ``width`` columns of
    the gradient reaching the layer's output (None stays None), and the
    directions' dx are summed. ``between(layer, dy)`` is the backward of
    forward's ``between`` (applied before the layer's directions run). Returns
    the gradient of the first layer's input."""
    d_layer = dy
    for layer in reversed(range(num_layers)):
        if between is not None and layer < num_layers - 1 and d_layer is not None:
            d_layer = between(layer, d_layer)
        dx_sum = None
        for d in range(num_directions):
            dy_d = None
            if d_layer is not None:
                dy_d = d_layer if num_directions == 1 else np.ascontiguousarray(d_layer[..., d * width:(d + 1) * width])
            dx = run(layer, d, dy_d)
            dx_sum = dx if dx_sum is None else dx_sum + dx
        d_layer = dx_sum
    return d_layer
