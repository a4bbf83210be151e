"""A plain NumPy training loop around a pyrnn LSTM: the case where pyrnn's and
NumPy's BLAS threads share the cores (README, Configuration > Threads).

    python bench/numpy_loop.py                      # pyrnn's default ("auto")
    python bench/numpy_loop.py --threads 1          # one pyrnn thread
    python bench/numpy_loop.py --shape 50,32,256,256 --seconds 6

Each step: LSTM forward (training), a NumPy readout y @ W and its mean-square
loss gradient, LSTM backward, SGD on every parameter. Prints ms per step.
"""

import argparse
import time

import numpy as np

import pyrnn


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="auto", help="pyrnn threads: an integer or auto (default)")
    p.add_argument("--shape", default="24,48,32,96", help="T,B,I,H (default 24,48,32,96)")
    p.add_argument("--seconds", type=float, default=4.0, help="timed duration, roughly")
    args = p.parse_args(argv)
    pyrnn.set_num_threads(args.threads if args.threads == "auto" else int(args.threads))
    T, B, I, H = (int(v) for v in args.shape.split(","))
    O = 32
    rng = np.random.default_rng(0)
    lstm = pyrnn.LSTM(I, H, seed=0).train()
    W = (rng.standard_normal((H, O)) * 0.1).astype(np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    target = rng.standard_normal((T, B, O)).astype(np.float32)

    def step():
        nonlocal W
        y, _ = lstm(x)
        out = y @ W
        g = 2 * (out - target) / out.size
        dW = y.reshape(-1, H).T @ g.reshape(-1, O)
        lstm.backward(g @ W.T)
        for name, param in lstm.named_parameters():
            param -= 0.01 * lstm.grads[name]
        W -= 0.01 * dW
        lstm.zero_grad()

    # warm-up: caches, and in adaptive mode the first timings of both choices
    for _ in range(10):
        step()
    t0 = time.perf_counter()
    for _ in range(10):
        step()
    n = max(5, int(args.seconds / ((time.perf_counter() - t0) / 10)))
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    ms = (time.perf_counter() - t0) / n * 1e3
    print(f"T={T} B={B} I={I} H={H} threads={pyrnn.thread_setting()}: {ms:.2f} ms/step over {n} steps "
          f"{pyrnn.thread_stats()}")
    return ms


if __name__ == "__main__":
    main()
