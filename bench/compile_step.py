"""Training step of a small LSTM model: torch.compile vs eager, pyrnn.torch vs torch.nn.

Model: 2-layer LSTM (hidden 256), a Linear head on every step's output, MSE
loss, SGD step; input [T=50, B=32, I=64] float32. Four cases, each in its own
process pinned to one core (``taskset -c 0``) with one thread
(``torch.set_num_threads(1)``, ``pyrnn.set_num_threads(1)``):

    compile-pyrnn   torch.compile(model) with pyrnn.torch.LSTM (fullgraph: no graph break; the
                    backward reads the forward's workspace from the op's residual output, so
                    one C++ forward per layer per step, as in eager)
    compile-torch   torch.compile(model) with torch.nn.LSTM (dynamo graph-breaks at torch.nn's LSTM,
                    which runs eagerly; fullgraph=True is refused unless torch._dynamo.config.allow_rnn,
                    which fails to compile torch.nn.LSTM on the CPU in torch 2.13)
    eager-pyrnn     pyrnn.torch.LSTM, no compile
    eager-torch     torch.nn.LSTM, no compile

Each warms up (compiles) first, then reports the median of ``--steps`` steps.
Run from the repository root::

    .venv/bin/python bench/compile_step.py [--steps 20] [--input-size 64]

One case, in this process (what the driver runs under taskset)::

    .venv/bin/python bench/compile_step.py --case eager-pyrnn
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = ("compile-pyrnn", "compile-torch", "eager-pyrnn", "eager-torch")
T, B, H, LAYERS = 50, 32, 256, 2


def run_case(case, steps, input_size, warmup):
    import torch
    from torch import nn

    import pyrnn
    import pyrnn.torch as pt

    torch.set_num_threads(1)
    pyrnn.set_num_threads(1)
    torch.manual_seed(0)
    compiled, lib = case.split("-")
    rnn_cls = pt.LSTM if lib == "pyrnn" else nn.LSTM

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn_cls(input_size, H, num_layers=LAYERS)
            self.head = nn.Linear(H, 1)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.head(y)

    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(T, B, input_size)
    target = torch.randn(T, B, 1)
    fn = model
    if compiled == "compile":
        fn = torch.compile(model, fullgraph=(lib == "pyrnn"))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(fn(x), target)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    return {"case": case, "median_ms": statistics.median(times), "min_ms": min(times), "steps": steps,
            "warmup_s": warm_s}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=CASES, help="run one case in this process and print JSON")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--cpu", default="0", help="taskset CPU list for the case processes")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.steps, args.input_size, args.warmup)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    results = {}
    for case in CASES:
        cmd = ["taskset", "-c", args.cpu, sys.executable, os.path.abspath(__file__), "--case", case,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--input-size", str(args.input_size)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        results[case] = json.loads(out.strip().splitlines()[-1])
        r = results[case]
        print(f"{case:14s} median {r['median_ms']:8.2f} ms   min {r['min_ms']:8.2f} ms   "
              f"warm-up {r['warmup_s']:6.1f} s", flush=True)
    med = {c: r["median_ms"] for c, r in results.items()}
    print(f"compile-pyrnn / eager-pyrnn   {med['compile-pyrnn'] / med['eager-pyrnn']:.2f}")
    print(f"compile-pyrnn / compile-torch {med['compile-pyrnn'] / med['compile-torch']:.2f}")
    print(f"eager-pyrnn   / eager-torch   {med['eager-pyrnn'] / med['eager-torch']:.2f}")
    print(f"compile-torch / eager-torch   {med['compile-torch'] / med['eager-torch']:.2f}")


if __name__ == "__main__":
    main()
