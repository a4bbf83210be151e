"""A cell in a training loop: one forward and backward per step, torch.nn.LSTMCell against
pyrnn.torch.LSTMCell (or GRUCell, RNNCell: --cell), each in its own process pinned to the same core,
rounds alternating.

    python bench/cell_train_step.py                 # 1 thread, core 0, 3 rounds
    python bench/cell_train_step.py --cpu 1 --rounds 5
    python bench/cell_train_step.py --no-grad       # steps under torch.no_grad() (generation)
    python bench/cell_train_step.py --unroll 20     # 20 steps in one graph, then one backward
    python bench/cell_train_step.py --unroll 20 --unchained   # also pyrnn with every step packing for itself
    python bench/cell_train_step.py --input-grad    # the input needs a gradient (an embedding's output)
    python bench/cell_train_step.py --cell GRUCell  # (or RNNCell; LSTMCell by default)

For each shape (B, I, H) it prints the median ms per step (7 repetitions of 50 steps; 200 steps
with --no-grad) of each round: the machine is shared and noisy, so compare within a round.
"""

import argparse
import os
import subprocess
import sys
import time

SHAPES = [(16, 32, 64), (64, 65, 128), (32, 256, 256), (128, 512, 512)]
NO_GRAD_SHAPES = [(1, 64, 256), (1, 256, 512), (4, 128, 256), (64, 65, 128)]


def worker(which, B, I, H, no_grad=False, unroll=1, input_grad=False, cell_name="LSTMCell"):
    import torch

    torch.set_num_threads(1)
    if which.startswith("pyrnn"):
        import pyrnn.torch as pt

        cls = getattr(pt, cell_name)
        if which == "pyrnn-unchained":  # the steps of one graph do not share their packed weights
            pt._StepChain.join = classmethod(lambda cls, *args: None)
    else:
        cls = getattr(torch.nn, cell_name)
    lstm = cell_name == "LSTMCell"
    torch.manual_seed(0)
    cell = cls(I, H)
    x, h, c = torch.randn(B, I, requires_grad=input_grad), torch.zeros(B, H), torch.zeros(B, H)

    def steps(n):
        for _ in range(n // unroll):
            h1, c1 = h, c
            for _ in range(unroll):
                if lstm:
                    h1, c1 = cell(x, (h1, c1))
                else:
                    h1 = cell(x, h1)
            (h1.sum() + c1.sum() if lstm else h1.sum()).backward()

    def inference_steps(n):
        with torch.no_grad():
            for _ in range(n):
                cell(x, (h, c)) if lstm else cell(x, h)

    run, n = (inference_steps, 200) if no_grad else (steps, max(50 // unroll, 1) * unroll)
    run(max(20, unroll))
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        run(n)
        times.append((time.perf_counter() - t0) / n)
    times.sort()
    print(f"{times[3] * 1e3:.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", default="0", help="core to pin every process to (taskset -c)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-grad", action="store_true", help="time steps under torch.no_grad() (generation)")
    ap.add_argument("--unroll", type=int, default=1, help="steps per graph before each backward (default 1)")
    ap.add_argument("--unchained", action="store_true",
                    help="also time pyrnn with each step packing its weights for itself (as before 2026-12-05)")
    ap.add_argument("--input-grad", action="store_true",
                    help="the input needs a gradient (an embedding's output) rather than being data")
    ap.add_argument("--cell", default="LSTMCell", choices=["LSTMCell", "GRUCell", "RNNCell"])
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        which, *shape = args.worker
        worker(which, *map(int, shape), no_grad=args.no_grad, unroll=args.unroll, input_grad=args.input_grad,
               cell_name=args.cell)
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for B, I, H in NO_GRAD_SHAPES if args.no_grad else SHAPES:
        for r in range(args.rounds):
            got = {}
            for which in ("torch", "pyrnn") + (("pyrnn-unchained",) if args.unchained else ()):
                cmd = ["taskset", "-c", args.cpu, sys.executable, __file__, "--worker", which, str(B), str(I), str(H)]
                cmd += (["--no-grad"] if args.no_grad else []) + ["--unroll", str(args.unroll)]
                cmd += (["--input-grad"] if args.input_grad else []) + ["--cell", args.cell]
                got[which] = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip()
            also = f", unchained {got['pyrnn-unchained']} ms" if args.unchained else ""
            print(f"{args.cell} B={B} I={I} H={H} round {r + 1}: torch.nn {got['torch']} ms, pyrnn.torch {got['pyrnn']} ms"
                  f"{also}",
                  flush=True)


if __name__ == "__main__":
    main()
