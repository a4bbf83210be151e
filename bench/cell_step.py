"""One cell step from Python: pyrnn's cell, its frozen (packed) copy, and PyTorch's.

    taskset -c 0 python bench/cell_step.py            # 1 thread, fp32

For each shape it prints microseconds per step (best of 5 runs of 1000 steps)
for pyrnn.LSTMCell / GRUCell in eval mode, cell.freeze(), torch.nn's cell and
pyrnn.torch's cell under torch.no_grad() (the unpacked one-step kernel),
and the bandwidth bound: the step's weight bytes over the measured read
bandwidth of the cache level they fit in (pyrnn.memory_bandwidth); then
cell.freeze("int8") and cell.freeze("bf16") with their own bounds (a quarter
and a half of the fp32 bytes, at the level those fit in).
"""

import sys
import time

import numpy as np

import pyrnn

SHAPES = [("LSTMCell", 1, 256, 256), ("LSTMCell", 1, 65, 128), ("LSTMCell", 8, 256, 256), ("GRUCell", 1, 512, 512),
          ("LSTMCell", 1, 128, 512)]


def per_step(fn, steps=1000, runs=5):
    for _ in range(100):
        fn()
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        best = min(best, (time.perf_counter() - t) / steps)
    return best * 1e6


def main():
    pyrnn.set_num_threads(1)
    try:
        import torch

        import pyrnn.torch as pt
        torch.set_num_threads(1)
    except ImportError:
        torch = None
    caches = pyrnn.cache_sizes()
    bw = pyrnn.memory_bandwidth(threads=1, seconds=0.2)
    print(f"# {pyrnn.isa()}, 1 thread, fp32; read bandwidth GB/s: "
          + ", ".join(f"{k} {v['gbs']:.0f}" for k, v in bw.items()))
    print("| cell | B | I | H | weights | pyrnn cell us | frozen us | torch.nn us | pyrnn.torch us | bound us "
          "| int8 us | int8 bound us | bf16 us | bf16 bound us |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def bound_us(nbytes):
        level = next((k for k in ("L1", "L2", "L3") if nbytes <= caches.get(k, 0) * (0.5 if k != "L3" else 1)),
                     "DRAM")
        return level, nbytes / (bw[level]["gbs"] * 1e9) * 1e6

    for cls, B, I, H in SHAPES:
        G = 4 if cls == "LSTMCell" else 3
        nbytes = 4 * G * H * (I + H)
        level, bound = bound_us(nbytes)
        cell = getattr(pyrnn, cls)(I, H, seed=0).eval()
        frozen = cell.freeze()
        x = np.ones((B, I), np.float32)
        h = np.zeros((B, H), np.float32)
        st = (h, h) if cls == "LSTMCell" else h
        row = [per_step(lambda: cell(x, st)), per_step(lambda: frozen(x, st))]
        if torch is not None:
            tc, pc = getattr(torch.nn, cls)(I, H), getattr(pt, cls)(I, H)
            xt, ht = torch.ones(B, I), torch.zeros(B, H)
            stt = (ht, ht) if cls == "LSTMCell" else ht
            with torch.no_grad():
                row += [per_step(lambda: tc(xt, stt)), per_step(lambda: pc(xt, stt))]
        else:
            row += [float("nan")] * 2
        low = []
        for precision, share in (("int8", 0.25), ("bf16", 0.5)):
            frozen_low = cell.freeze(precision)
            low += [per_step(lambda: frozen_low(x, st)), bound_us(nbytes * share)[1]]
        print(f"| {cls} | {B} | {I} | {H} | {nbytes / 2**20:.2f} MiB ({level}) | "
              + " | ".join(f"{v:.1f}" for v in row) + f" | {bound:.1f} | "
              + " | ".join(f"{v:.1f}" for v in low) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
