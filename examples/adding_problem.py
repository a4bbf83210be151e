"""The adding problem: a long-range dependency that gated cells learn and a tanh RNN does not.

Each input is a sequence of T steps with two channels: values drawn from
U[0, 1], and markers, 0 everywhere except one 1 in the first half and one 1 in
the second half. The target is the sum of the two marked values, read from the
last hidden state through a linear readout (Hochreiter & Schmidhuber 1997;
the setting of Arjovsky et al. 2016). Predicting 1 whatever the input gives
MSE Var(X1 + X2) = 1/6 = 0.167: a model must carry the first marked value
across at least T/2 steps to do better.

The script trains an LSTM, a GRU (PyTorch's variant, and reset_after=False,
Cho et al. v3) and a tanh RNN with the same budget (steps, batch, hidden size,
Adam, gradient-norm clipping) for each T, prints the test MSE table and plots
the learning curves::

    python examples/adding_problem.py                 # T = 50, 100, 200
    python examples/adding_problem.py --fast          # T = 50, fewer steps, a smaller test set (CI)
    python examples/adding_problem.py --lengths 100 --models lstm rnn

Built only on pyrnn's public API: the layers' forward/backward and pyrnn.optim.
"""

from __future__ import annotations

import time

import numpy as np

import pyrnn
from pyrnn.optim import Adam, Linear, clip_grad_norm, mse_loss

import _common  # examples/_common.py: options, threads and figures the scripts share

BASELINE_MSE = 1.0 / 6.0  # always predicting 1: Var(U1 + U2)

MODELS = {
    "lstm": ("LSTM", lambda hidden, rng: pyrnn.LSTM(2, hidden, rng=rng)),
    "gru": ("GRU", lambda hidden, rng: pyrnn.GRU(2, hidden, rng=rng)),
    "gru_reset_before": ("GRU (reset_after=False)", lambda hidden, rng: pyrnn.GRU(2, hidden, reset_after=False, rng=rng)),
    "rnn": ("RNN (tanh)", lambda hidden, rng: pyrnn.RNN(2, hidden, nonlinearity="tanh", rng=rng)),
}


def adding_batch(rng, batch, T):
    """x [T, B, 2] (values, markers) and y [B, 1], the sum of the two marked values."""
    values = rng.random((T, batch))
    markers = np.zeros((T, batch))
    cols = np.arange(batch)
    markers[rng.integers(0, T // 2, batch), cols] = 1.0
    markers[rng.integers(T // 2, T, batch), cols] = 1.0
    x = np.stack([values, markers], axis=-1).astype(np.float32)
    y = (values * markers).sum(axis=0, keepdims=True).T.astype(np.float32)
    return x, y


def _last_hidden(net, x):
    _, h_n = net(x)
    if isinstance(h_n, tuple):  # LSTM: (h_n, c_n)
        h_n = h_n[0]
    return h_n[-1]  # top layer's final state [B, H]


def evaluate(net, fc, x, y):
    net.eval()
    fc.eval()
    try:
        return mse_loss(fc(_last_hidden(net, x)), y)[0]
    finally:
        net.train()
        fc.train()


def train_model(model, T, *, hidden, batch, steps, lr, clip, eval_every, test, seed):
    """Trains one model on sequences of length T; returns its learning curve and final test MSE."""
    ss = np.random.SeedSequence([seed, T, list(MODELS).index(model)])
    init_rng, data_rng = (np.random.default_rng(s) for s in ss.spawn(2))
    net = MODELS[model][1](hidden, init_rng)
    fc = Linear(hidden, 1, rng=init_rng)
    opt = Adam([net, fc], lr=lr)
    x_test, y_test = test
    curve = [(0, evaluate(net, fc, x_test, y_test))]
    train_losses = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = adding_batch(data_rng, batch, T)
        pred = fc(_last_hidden(net, x))
        loss, dpred = mse_loss(pred, y)
        train_losses.append(loss)
        opt.zero_grad()
        dh_top = fc.backward(dpred)
        dh_n = np.zeros((net.num_layers, batch, hidden), np.float32)
        dh_n[-1] = dh_top
        net.backward(dh_n=dh_n, input_grad=False)  # (the input is data: no dx)
        clip_grad_norm([net, fc], clip)
        opt.step()
        if step % eval_every == 0 or step == steps:
            curve.append((step, evaluate(net, fc, x_test, y_test)))
    return {"curve": curve, "test_mse": curve[-1][1], "train_loss_last100": float(np.mean(train_losses[-100:])),
            "seconds": time.perf_counter() - t0}


def plot(results, lengths, models, path):
    plt = _common.pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.6), sharey=True, squeeze=False)
    for ax, T in zip(axes[0], lengths):
        for model in models:
            steps, mse = zip(*results[model, T]["curve"])
            ax.plot(steps, mse, label=MODELS[model][0], lw=1.5)
        ax.axhline(BASELINE_MSE, color="k", ls="--", lw=1, label="baseline (predict 1)")
        ax.set_yscale("log")
        ax.set_title(f"T = {T}")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("test MSE")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("The adding problem: the gated cells learn, the tanh RNN stays at the baseline", fontsize=10)
    return _common.save_figure(plt, fig, path)


def parse_args(argv):
    p = _common.parser(__doc__, "T = 50, 800 steps and 500 test sequences (CI runs it)")
    p.add_argument("--lengths", type=_common.positive_int, nargs="+",
                   help="sequence lengths T (default 50 100 200; fast: 50)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--steps", type=_common.positive_int,
                   help="training steps per model and T (default 3000; fast: 800)")
    p.add_argument("--batch", type=_common.positive_int, default=64)
    p.add_argument("--hidden", type=_common.positive_int, default=64)
    p.add_argument("--lr", type=_common.positive_float, default=1e-2, help="Adam learning rate")
    p.add_argument("--clip", type=_common.positive_float, default=1.0, help="gradient-norm clipping threshold")
    p.add_argument("--test-size", type=_common.positive_int,
                   help="test sequences per T, evaluated 40 times in training (default 2000; fast: 500)")
    _common.add_run_options(p, __file__)
    args = p.parse_args(argv)
    if args.lengths is None:
        args.lengths = [50] if args.fast else [50, 100, 200]
    if args.steps is None:
        args.steps = 800 if args.fast else 3000
    if args.test_size is None:
        args.test_size = 500 if args.fast else 2000
    if min(args.lengths) < 2:
        p.error("--lengths must be at least 2")
    return args


def main(argv=None):
    args = parse_args(argv)
    with _common.pyrnn_threads(args.threads):
        print(f"adding problem: models {', '.join(args.models)}; T = {', '.join(map(str, args.lengths))}; "
              f"{args.steps} steps of batch {args.batch}, hidden {args.hidden}, Adam lr {args.lr}, "
              f"clip {args.clip}; seed {args.seed}; {pyrnn.get_num_threads()} thread(s)")
        print(f"baseline (always predict 1): MSE {BASELINE_MSE:.3f}")
        results = {}
        for T in args.lengths:
            test = adding_batch(np.random.default_rng([args.seed, T, 999]), args.test_size, T)
            for model in args.models:
                r = train_model(model, T, hidden=args.hidden, batch=args.batch, steps=args.steps, lr=args.lr,
                                clip=args.clip, eval_every=max(1, args.steps // 40), test=test, seed=args.seed)
                results[model, T] = r
                print(f"  T={T:4d}  {MODELS[model][0]:<24s} test MSE {r['test_mse']:.2e}  "
                      f"({r['test_mse'] / BASELINE_MSE:7.2%} of baseline, {r['seconds']:.1f} s)", flush=True)
        print()
        header = f"{'test MSE':<24s}" + "".join(f"{'T=' + str(T):>10s}" for T in args.lengths)
        print(header)
        print("-" * len(header))
        for model in args.models:
            print(f"{MODELS[model][0]:<24s}" + "".join(f"{results[model, T]['test_mse']:10.2e}" for T in args.lengths))
        print(f"{'baseline':<24s}" + "".join(f"{BASELINE_MSE:10.2e}" for _ in args.lengths))
        if not args.no_plot:
            plot(results, args.lengths, args.models, args.plot)
        return {"results": {k: v["test_mse"] for k, v in results.items()}, "curves": results,
                "baseline": BASELINE_MSE}


if __name__ == "__main__":
    main()
