"""The training workspace in caller memory (functional.forward(residual=),
workspace_from_residual): what torch's custom operators and JAX's XLA custom
calls keep between their forward and backward, so nothing is recomputed."""

import numpy as np
import pytest

from pyrnn import functional as F
from pyrnn import testing

CASES = [  # (variant, options beyond the variant's): every cell, mask, lengths, reverse, projection, no bias
    ("lstm", {}), ("lstm", {"h_mask": True, "lengths": [5, 2, 4], "reverse": True}), ("lstm", {"proj_size": 3}),
    ("lstm", {"proj_size": 3, "h_mask": True, "lengths": [1, 5, 3]}), ("gru", {"h_mask": True}),
    ("gru", {"lengths": [2, 5, 5], "reverse": True}), ("gru_reset_before", {}),
    ("gru_reset_before", {"h_mask": True, "lengths": [4, 1, 5]}), ("rnn_tanh", {"bias": False}),
    ("rnn_relu", {"h_mask": True, "lengths": [3, 3, 5]}), ("lstm", {"B": 0}), ("gru", {"T": 1, "B": 1, "h_mask": True}),
]


def _args(variant, opts, dtype, rng, I=4, H=6):
    cell, cell_opts = testing.VARIANTS[variant]
    T, B = opts.get("T", 5), opts.get("B", 3)
    P = opts.get("proj_size", 0)
    G, Ho = {"lstm": 4, "gru": 3, "rnn": 1}[cell], P or H

    def r(*shape, scale=0.4):
        return (rng.standard_normal(shape) * scale).astype(dtype)

    bias = opts.get("bias", True)
    kw = dict(cell_opts, W_hr=r(P, H) if P else None, reverse=opts.get("reverse", False),
              h_mask=(rng.random((B, Ho)) > 0.3).astype(dtype) * 1.4 if opts.get("h_mask") else None,
              lengths=None if "lengths" not in opts else np.array(opts["lengths"]))
    pos = (cell, r(T, B, I, scale=1), r(B, Ho), r(B, H) if cell == "lstm" else None, r(G * H, I), r(G * H, Ho),
           r(G * H) if bias else None, r(G * H) if bias else None)
    return pos, kw


@pytest.mark.parametrize("variant, opts", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_from_the_residual_is_bitwise_the_usual_one(variant, opts, dtype, isa, rng):
    pos, kw = _args(variant, opts, dtype, rng)
    n = F.residual_nbytes(*pos, **kw)
    cell, T, B, I = pos[0], *pos[1].shape
    H = pos[4].shape[0] // {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    assert n == F.residual_nbytes_for(cell, T, B, I, H, proj_size=opts.get("proj_size", 0), dtype=dtype,
                                      h_mask=bool(opts.get("h_mask")), lengths="lengths" in opts,
                                      **testing.VARIANTS[variant][1])
    y, h_n, c_n, ws = F.forward(*pos, **kw)
    residual = np.full(n, 0xAB, np.uint8)  # garbage: the forward must write all it reads back
    y2, h_n2, c_n2, ws2 = F.forward(*pos, **kw, residual=residual)
    for a, b in ((y, y2), (h_n, h_n2), (c_n, c_n2)):
        assert (a is None and b is None) or np.array_equal(a, b)
    del ws2
    residual.flags.writeable = False  # backward only reads it
    ws3 = F.workspace_from_residual(residual, *pos, y=y2, **kw)
    dy, dh_n = rng.standard_normal(y.shape).astype(dtype), rng.standard_normal(h_n.shape).astype(dtype)
    dc_n = None if c_n is None else rng.standard_normal(c_n.shape).astype(dtype)
    g1, g3 = F.backward(ws, dy, dh_n, dc_n), F.backward(ws3, dy, dh_n, dc_n)
    for k in g1:
        assert (g1[k] is None and g3[k] is None) or np.array_equal(g1[k], g3[k]), k


def test_residual_errors(rng):
    pos, kw = _args("lstm", {}, np.float32, rng)
    n = F.residual_nbytes(*pos, **kw)
    with pytest.raises(ValueError, match=f"at least {n} bytes"):
        # (smaller than the block at every ISA level: one sized at a lower level runs there)
        F.forward(*pos, **kw, residual=np.empty(100, np.uint8))
    with pytest.raises(ValueError, match="training=True"):
        F.forward(*pos, **kw, residual=np.empty(n, np.uint8), training=False)
    with pytest.raises(TypeError, match="NumPy array"):
        F.forward(*pos, **kw, residual=bytearray(n))
    with pytest.raises(ValueError, match="writable"):
        ro = np.empty(n, np.uint8)
        ro.flags.writeable = False
        F.forward(*pos, **kw, residual=ro)
    residual = np.empty(n, np.uint8)
    y = F.forward(*pos, **kw, residual=residual)[0]
    with pytest.raises(ValueError, match="not a workspace"):
        F.workspace_from_residual(np.zeros(n, np.uint8), *pos, y=y, **kw)
    with pytest.raises(ValueError, match="header"):
        F.workspace_from_residual(residual[:16], *pos, y=y, **kw)
    with pytest.raises(ValueError, match="shorter"):
        F.workspace_from_residual(residual[:n - 64], *pos, y=y, **kw)
    with pytest.raises(ValueError, match="another cell"):  # another shape: different hidden state
        F.workspace_from_residual(residual, *pos, y=y, **dict(kw, reverse=True))
    with pytest.raises(ValueError, match="y must be"):
        F.workspace_from_residual(residual, *pos, y=y[:, :2], **kw)
    gru_pos, gru_kw = _args("gru", {}, np.float32, rng)
    with pytest.raises(ValueError, match="another cell"):
        F.workspace_from_residual(residual, *gru_pos, y=np.zeros((5, 3, 6), np.float32), **gru_kw)
    # other lengths than the forward's: backward would read rows that forward never wrote
    pos, kw = _args("lstm", {"lengths": [5, 2, 3]}, np.float32, rng)
    residual = np.empty(F.residual_nbytes(*pos, **kw), np.uint8)
    y = F.forward(*pos, **kw, residual=residual)[0]
    F.workspace_from_residual(residual, *pos, y=y, **kw)
    for other in ([5, 3, 2], [4, 2, 3]):
        with pytest.raises(ValueError, match="lengths"):
            F.workspace_from_residual(residual, *pos, y=y, **dict(kw, lengths=np.array(other)))
