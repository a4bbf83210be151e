"""Training step of a layer-normalised LSTM: pyrnn.torch.LayerNormLSTM vs the fastest torch loop.

One layer, B=32 T=100 I=256 H=256, float32; a step is forward + backward of
sum(y * g) for a fixed random g (gradients reach x and every parameter).
The layer (Ba et al. 2016; the equations in pyrnn.layernorm) normalises the
input and the recurrent projections per gate block and the cell state:

    a = LN_4(W_ih x) + LN_4(W_hh h);  c' = f c + i g;  h' = o tanh(LN_1(c'))

torch.nn.LSTMCell cannot express it (it adds W_ih x and W_hh h before any
normalisation), so the torch baselines are the loop a torch user writes with
the cell's weights: the input projection and its layer norm for all steps at
once (one matmul, one layer_norm: the fastest placement), then per step a
matmul with W_hh, layer_norm of its gate blocks, the gates, and layer_norm of
c (the three layer norms: input, hidden, cell). Cases, each in its own
process pinned with taskset to the same cores:

    pyrnn     pyrnn.torch.LayerNormLSTM (fused C++ forward and BPTT)
    eager     the torch loop, eager
    script    the torch loop under torch.jit.script
    compile-step  one step (recurrent matmul, its layer norm, gates, cell layer norm) under
              torch.compile, the loop over steps in Python (compiles in seconds)
    compile   the whole torch loop under torch.compile (the loop unrolled: compiling forward and
              backward of 100 steps takes many minutes; compile time not counted)

The fastest torch case is the baseline; the ratio is its median over pyrnn's.
Every case prints the loss of the same inputs and parameters, and the driver
checks they agree (so all compute the same function).

Run from the repository root::

    .venv/bin/python bench/layernorm.py --threads 1 --cpu 0
    .venv/bin/python bench/layernorm.py --threads 2 --cpu 0,1
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

CASES = ("pyrnn", "eager", "script", "compile-step", "compile")
T, B, I, H = 100, 32, 256, 256


def torch_loop(x, W_ih, W_hh, b_ih, b_hh, g_ih, g_hh, g_c, b_c):
    # type: (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor) -> Tensor
    """The layer in torch ops (zero initial state); returns y [T, B, H]."""
    T, B = x.shape[0], x.shape[1]
    H = W_hh.shape[1]
    xi = F.layer_norm((x @ W_ih.t()).view(T, B, 4, H), [H]).view(T, B, 4 * H) * g_ih + b_ih
    h = torch.zeros(B, H, dtype=x.dtype)
    c = torch.zeros(B, H, dtype=x.dtype)
    ys = []
    for t in range(T):
        gh = F.layer_norm((h @ W_hh.t()).view(B, 4, H), [H]).view(B, 4 * H) * g_hh + b_hh
        i, f, g, o = (xi[t] + gh).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, [H], g_c, b_c))
        ys.append(h)
    return torch.stack(ys)


def torch_step(xi_t, h, c, W_hh, b_hh, g_hh, g_c, b_c):
    """One step of torch_loop: (h', c') from the step's normalised input projection."""
    B, H = h.shape
    gh = F.layer_norm((h @ W_hh.t()).view(B, 4, H), [H]).view(B, 4 * H) * g_hh + b_hh
    i, f, g, o = (xi_t + gh).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(F.layer_norm(c, [H], g_c, b_c)), c


def stepwise_loop(step, x, W_ih, W_hh, b_ih, b_hh, g_ih, g_hh, g_c, b_c):
    """torch_loop with the step function ``step`` (a compiled torch_step)."""
    T, B = x.shape[0], x.shape[1]
    H = W_hh.shape[1]
    xi = F.layer_norm((x @ W_ih.t()).view(T, B, 4, H), [H]).view(T, B, 4 * H) * g_ih + b_ih
    h = torch.zeros(B, H, dtype=x.dtype)
    c = torch.zeros(B, H, dtype=x.dtype)
    ys = []
    for t in range(T):
        h, c = step(xi[t], h, c, W_hh, b_hh, g_hh, g_c, b_c)
        ys.append(h)
    return torch.stack(ys)


def run_case(case, threads, steps, warmup):
    import pyrnn
    import pyrnn.torch as pt

    torch.set_num_threads(threads)
    pyrnn.set_num_threads(threads)
    torch.manual_seed(0)
    model = pt.LayerNormLSTM(I, H)
    with torch.no_grad():  # gains and betas away from their 1 / 0 init, as after training
        for name, p in model.named_parameters():
            if not name.startswith("weight"):
                p.add_(0.2 * torch.randn(p.shape))
    x = torch.randn(T, B, I, requires_grad=True)
    g = torch.randn(T, B, H)
    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "ln_weight_ih_l0", "ln_weight_hh_l0",
             "ln_weight_c_l0", "ln_bias_c_l0")
    params = [getattr(model, n) for n in names]
    if case == "pyrnn":
        def fn():
            return model(x)[0]
    elif case == "compile-step":
        step_c = torch.compile(torch_step)

        def fn():
            return stepwise_loop(step_c, x, *params)
    else:
        loop = {"eager": torch_loop, "script": torch.jit.script(torch_loop) if case == "script" else None,
                "compile": torch.compile(torch_loop) if case == "compile" else None}[case]

        def fn():
            return loop(x, *params)

    def step():
        x.grad = None
        for p in params:
            p.grad = None
        loss = (fn() * g).sum()
        loss.backward()
        return float(loss.detach())

    t0 = time.perf_counter()
    loss = None
    for _ in range(warmup):
        loss = step()
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    return {"case": case, "threads": threads, "median_ms": statistics.median(times), "min_ms": min(times),
            "steps": steps, "warmup_s": warm_s, "loss": loss}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=CASES, help="run one case in this process and print JSON")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated cases to run (driver)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--cpu", default="0", help="taskset CPU list for the case processes")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--python", default=sys.executable,
                    help="the interpreter command of the case processes (e.g. a wrapper that puts a build "
                         "outside the environment on sys.path); default: this one")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.threads, args.steps, args.warmup)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    results = {}
    for case in args.cases.split(","):
        cmd = ["taskset", "-c", args.cpu, *shlex.split(args.python), os.path.abspath(__file__), "--case", case,
               "--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        r = results[case] = json.loads(out.strip().splitlines()[-1])
        print(f"{case:8s} threads={args.threads} median {r['median_ms']:9.1f} ms   min {r['min_ms']:9.1f} ms   "
              f"warm-up {r['warmup_s']:6.1f} s   loss {r['loss']:.6g}", flush=True)
    losses = [r["loss"] for r in results.values()]
    if max(losses) - min(losses) > 1e-3 * max(1.0, max(abs(v) for v in losses)):
        raise SystemExit(f"the cases disagree on the loss: {losses}")
    torch_cases = [c for c in results if c != "pyrnn"]
    if "pyrnn" in results and torch_cases:
        best = min(torch_cases, key=lambda c: results[c]["median_ms"])
        ratio = results[best]["median_ms"] / results["pyrnn"]["median_ms"]
        print(f"fastest torch ({best}) / pyrnn: {ratio:.2f}x  (threads={args.threads}, cpus {args.cpu})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
