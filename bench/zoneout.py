"""Training step of an LSTM with zoneout: pyrnn.torch against what a torch user writes.

torch.nn.LSTM has no zoneout, so a torch user writes the step loop around
torch.nn.LSTMCell and mixes each state with its previous value under a fresh
Bernoulli mask per step (Krueger et al. 2016):
    c = m_c * c_prev + (1 - m_c) * c~;  h = m_h * h_prev + (1 - m_h) * h~
The loop runs eagerly, under torch.jit.script or under torch.compile; the
fastest of the three is the peer. Cases (each in its own process pinned with
taskset to the same cores, with torch's and pyrnn's thread counts set alike):

    pyrnn            pyrnn.torch.LSTM(zoneout=p) in training mode (fused kernels)
    torch-eager      the LSTMCell loop
    torch-script     the loop under torch.jit.script
    torch-compile    the step under torch.compile (the loop stays in Python: compiling the
                     unrolled 100-step loop did not finish in 20 minutes)
    pyrnn-plain      pyrnn.torch.LSTM without zoneout (what zoneout costs)
    torch-nn-plain   torch.nn.LSTM without zoneout (oneDNN's fused LSTM; no zoneout possible)

A step: forward over x [T, B, I], loss = sum(y * g) with a fixed random g,
backward to every parameter (no optimiser). Median of ``--steps`` steps after
warm-up. Run from the repository root::

    .venv/bin/python bench/zoneout.py --threads 1 [--steps 20]
    .venv/bin/python bench/zoneout.py --threads 2 --cpus 0,1
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = ("pyrnn", "torch-eager", "torch-script", "torch-compile", "pyrnn-plain", "torch-nn-plain")
PEERS = ("torch-eager", "torch-script", "torch-compile")


def torch_zoneout_loop(torch, nn, I, H, p):
    """A torch user's LSTM with zoneout: LSTMCell + masks, as an nn.Module (scriptable)."""

    class ZoneoutLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.LSTMCell(I, H)
            self.p = p
            self.hidden = H

        def step(self, x_t, h, c):
            h_new, c_new = self.cell(x_t, (h, c))
            m_h = torch.bernoulli(torch.full_like(h, self.p))
            m_c = torch.bernoulli(torch.full_like(c, self.p))
            return m_h * h + (1 - m_h) * h_new, m_c * c + (1 - m_c) * c_new

        def forward(self, x):
            T, B = x.shape[0], x.shape[1]
            h = torch.zeros(B, self.hidden, dtype=x.dtype)
            c = torch.zeros(B, self.hidden, dtype=x.dtype)
            ys = []
            for t in range(T):
                h, c = self.step(x[t], h, c)
                ys.append(h)
            return torch.stack(ys)

    return ZoneoutLSTM()


def run_case(case, T, B, I, H, p, steps, warmup, threads):
    import torch
    from torch import nn

    import pyrnn
    import pyrnn.torch as pt

    torch.set_num_threads(threads)
    pyrnn.set_num_threads(threads)
    torch.manual_seed(0)
    if case.startswith("pyrnn"):
        model = pt.LSTM(I, H, zoneout=p if case == "pyrnn" else 0.0)
    elif case == "torch-nn-plain":
        model = nn.LSTM(I, H)
    else:
        model = torch_zoneout_loop(torch, nn, I, H, p)
    model.train()
    fn = model
    if case == "torch-script":
        fn = torch.jit.script(model)
    elif case == "torch-compile":
        # The step compiled (LSTMCell and the zoneout mixing in one graph), the loop in Python:
        # compiling the whole unrolled loop took over 20 minutes here.
        model.step = torch.compile(model.step)
    x = torch.randn(T, B, I)
    g = torch.randn(T, B, H)

    def step():
        model.zero_grad(set_to_none=True)
        out = fn(x)
        y = out[0] if isinstance(out, tuple) else out
        (y * g).sum().backward()

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
            "warmup_s": warm_s, "threads": threads, "shape": {"T": T, "B": B, "I": I, "H": H}, "zoneout": p}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=CASES, help="run one case in this process and print JSON")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cpus", default="0", help="taskset CPU list for the case processes")
    ap.add_argument("--shape", default="100,32,256,256", help="T,B,I,H")
    ap.add_argument("--zoneout", type=float, default=0.1)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    T, B, I, H = (int(v) for v in args.shape.split(","))
    if args.case:
        print(json.dumps(run_case(args.case, T, B, I, H, args.zoneout, args.steps, args.warmup, args.threads)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    results = {}
    for case in args.cases.split(","):
        cmd = ["taskset", "-c", args.cpus, sys.executable, os.path.abspath(__file__), "--case", case,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
               "--shape", args.shape, "--zoneout", str(args.zoneout)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        results[case] = json.loads(out.strip().splitlines()[-1])
        r = results[case]
        print(f"{case:15s} median {r['median_ms']:9.2f} ms   min {r['min_ms']:9.2f} ms   warm-up {r['warmup_s']:6.1f} s",
              flush=True)
    peers = {c: results[c]["median_ms"] for c in PEERS if c in results}
    if "pyrnn" in results and peers:
        best = min(peers, key=peers.get)
        print(f"fastest torch zoneout loop: {best}; {best} / pyrnn = {peers[best] / results['pyrnn']['median_ms']:.2f}x")
    if "pyrnn" in results and "pyrnn-plain" in results:
        print(f"pyrnn with zoneout / without: {results['pyrnn']['median_ms'] / results['pyrnn-plain']['median_ms']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
