"""The benchmark's cases: shapes (``SUITE``, ``SCALING_SUITE``), profiles, inputs and flop counts."""

from __future__ import annotations

import dataclasses
import math
from typing import Collection, Optional

import numpy as np

from pyrnn import _cells, _stack

MODES = ("fwd", "fwdbwd")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark shape. ``variant`` is a cell name of pyrnn._cells.CELLS.

    impl: "functional" runs pyrnn.functional, one call per layer and direction
    (layers chained, directions concatenated, as a stacked layer does);
    "layer" runs pyrnn.LSTM / GRU / RNN. dtype: of the inputs and weights
    ("float32", or "float64": pyrnn, torch and the reference only, and no
    reduced-precision runs).
    """

    variant: str
    B: int
    T: int
    H: int
    I: Optional[int] = None  # noqa: E741  (None: I = H)
    layers: int = 1
    bidirectional: bool = False
    lengths: Optional[tuple] = None  # (lo, hi): lengths drawn uniformly from [lo, hi]
    impl: str = "functional"
    name: str = ""
    dtype: str = "float32"

    @property
    def cell(self) -> str:
        """The family: "lstm", "gru" or "rnn"."""
        return _cells.CELLS[self.variant].family

    @property
    def input_size(self) -> int:
        return self.H if self.I is None else self.I

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def label(self) -> str:
        parts = [self.name or self.variant]
        if self.layers > 1:
            parts.append(f"{self.layers}L")
        if self.bidirectional:
            parts.append("bi")
        parts.append(f"B={self.B} T={self.T}")
        if self.I is not None and self.I != self.H:
            parts.append(f"I={self.I}")
        parts.append(f"H={self.H}")
        if self.lengths:
            parts.append(f"len[{self.lengths[0]},{self.lengths[1]}]*")
        if self.dtype != "float32":
            parts.append(self.dtype)
        return " ".join(parts)


# The standard suite (I = H unless given). To add a case, add a line. Its
# single-layer, unidirectional cases are also bench/test_bench_sequence.py's shapes.
#: The standard suite: the shapes ``python -m pyrnn.bench`` times.
SUITE = (
    Case("lstm", B=64, T=50, H=512),
    Case("lstm", B=16, T=25, H=1024),
    Case("lstm", B=32, T=100, H=256),
    Case("lstm", B=1, T=150, H=256),
    Case("lstm", B=4, T=25, H=1024),
    Case("gru", B=32, T=100, H=256),
    Case("gru", B=64, T=50, H=512),
    Case("gru", B=1, T=100, H=512),
    Case("rnn_tanh", B=16, T=50, H=1760),
    Case("lstm", B=32, T=100, H=256, layers=2, bidirectional=True, lengths=(50, 100), impl="layer"),
    # Two chained pyrnn.functional.lstm_forward calls (impl="layer" would use pyrnn.LSTM(65, 128, 2)).
    Case("lstm", B=50, T=50, H=128, I=65, layers=2, name="char-lstm"),
)

# Multi-core scaling (--suite scaling): one large shape per gated cell, timed at
# 1, 2, 4, ... threads up to the machine's cores.
#: ``--suite scaling``: LSTM and GRU B=128 T=50 H=1024, timed at 1, 2, 4, ... threads.
SCALING_SUITE = (
    Case("lstm", B=128, T=50, H=1024),
    Case("gru", B=128, T=50, H=1024),
)
#: The suites by their ``--suite`` name.
SUITES = {"standard": SUITE, "scaling": SCALING_SUITE}


@dataclasses.dataclass(frozen=True)
class Profile:
    """How much to run: shape caps and the repetition policy."""

    name: str
    description: str
    max_T: Optional[int] = None
    max_B: Optional[int] = None
    max_H: Optional[int] = None
    warmup: int = 1
    min_reps: int = 3
    max_reps: int = 15
    budget_s: float = 1.0  # stop repeating after this long (once min_reps are done)
    peak_seconds: float = 0.5


#: The profiles by name: "full" (the default), "quick" (``--quick``) and "tiny" (tests only).
PROFILES = {
    "full": Profile("full", "full suite"),
    "quick": Profile("quick", "QUICK suite: T capped at 20, at most 5 repetitions (not comparable with the "
                     "full suite)", max_T=20, max_reps=5, budget_s=0.3),
    # hidden, for tests: tiny shapes, no time spent
    "tiny": Profile("tiny", "TINY suite (smoke test only, meaningless numbers)", max_T=4, max_B=3, max_H=8,
                    max_reps=3, budget_s=0.0, peak_seconds=0.02),
}


def _cap(value: int, cap: Optional[int]) -> int:
    return value if cap is None else min(value, cap)


def scale_case(case: Case, profile: Profile) -> Case:
    """``case`` with its shape capped by the profile (lengths scaled with T)."""
    T = _cap(case.T, profile.max_T)
    H = _cap(case.H, profile.max_H)
    lengths = case.lengths
    if lengths is not None and T != case.T:
        lengths = tuple(max(1, min(T, round(v * T / case.T))) for v in lengths)
    I = None if case.I is None else _cap(case.I, profile.max_H)  # noqa: E741
    return dataclasses.replace(case, B=_cap(case.B, profile.max_B), T=T, H=H, I=I, lengths=lengths)


def select_cases(profile: Profile, cells: Collection[str], suite: str = "standard") -> list[Case]:
    """The cases of ``suite`` whose family is in ``cells``, each capped by ``profile`` (:func:`scale_case`)."""
    return [scale_case(c, profile) for c in SUITES[suite] if c.cell in cells]


def scaling_threads(cores: int) -> list[int]:
    """1, 2, 4, ... below ``cores``, then ``cores``."""
    out, t = [], 1
    while t < cores:
        out.append(t)
        t *= 2
    return out + [cores]


def param_names(layer: int, direction: int) -> dict[str, str]:
    """PyTorch's parameter names for one layer and direction: {"weight_ih": "weight_ih_l0", ...}."""
    suffix = _stack.param_suffix(layer, direction)
    return {k: f"{k}{suffix}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


def layer_input_size(case: Case, layer: int) -> int:
    return case.input_size if layer == 0 else case.H * case.directions


def build_inputs(case: Case, seed: int = 0) -> dict:
    """x [T, B, I], lengths (or None), dy = ones and the weights, all in case.dtype (PyTorch's init range;
    drawn in fp32, so a float64 case has the same values as its float32 twin)."""
    rng = np.random.default_rng(seed)
    G, H = _cells.GATES[case.cell], case.H
    bound = 1.0 / math.sqrt(H)
    params = {}
    for layer in range(case.layers):
        shapes = {"weight_ih": (G * H, layer_input_size(case, layer)), "weight_hh": (G * H, H),
                  "bias_ih": (G * H,), "bias_hh": (G * H,)}
        for d in range(case.directions):
            for key, name in param_names(layer, d).items():
                params[name] = rng.uniform(-bound, bound, shapes[key]).astype(np.float32).astype(case.dtype)
    lengths = None
    if case.lengths is not None:
        lengths = rng.integers(case.lengths[0], case.lengths[1] + 1, case.B).astype(np.int64)
    return {
        "x": rng.standard_normal((case.T, case.B, case.input_size), dtype=np.float32).astype(case.dtype),
        "lengths": lengths,
        "dy": np.ones((case.T, case.B, case.directions * H), case.dtype),
        "params": params,
    }


def case_gflop(case: Case, lengths: Optional[np.ndarray], mode: str) -> float:
    """2*N*G*H*(I+H) per layer and direction, N = B*T or sum(lengths); x3 for forward+backward."""
    steps = case.B * case.T if lengths is None else int(np.sum(lengths))
    G, H = _cells.GATES[case.cell], case.H
    flops = 0
    for layer in range(case.layers):
        flops += case.directions * 2 * steps * G * H * (layer_input_size(case, layer) + H)
    return flops * (3 if mode == "fwdbwd" else 1) / 1e9
