"""Echo state network vs LSTM on Mackey-Glass: free-running prediction 84 steps ahead.

The Mackey-Glass delay equation with tau = 17 is chaotic; predicting it is the
classic echo state network benchmark (Jaeger & Haas 2004, Science 304:78):

    dx/dt = 0.2 x(t - 17) / (1 + x(t - 17)^10) - 0.1 x(t)

Discretisation: classical Runge-Kutta (RK4) with step dt = 0.1 from the constant
history x(t) = 1.2 for t <= 0, the delayed value at the half steps taken as the
mean of its two neighbouring grid values; the first 1000 time units are
dropped (transient) and the solution is subsampled to one sample per time
unit. The models see u = tanh(x - 1) (Jaeger & Haas's squashing) and predict
the next sample, u_{t+1}, from u_1..u_t.

Both models are trained by teacher forcing on the same training segment:

* ESN (pyrnn.reservoir.ESN): a random leaky tanh reservoir run by pyrnn's C++
  kernels, with a linear readout on [1; u_t; h_t] fitted by ridge regression in
  closed form. The ridge value is chosen by free-running NRMSE84 on validation
  starting points (``esn.fit(..., ridge=[...], score=...)``); the ridge that
  the one-step, teacher-forced validation error (``esn.ridge_sweep``) would
  pick is printed beside it: it can be too small for a stable free run.
* LSTM (pyrnn.LSTM + pyrnn.Linear, pyrnn.optim.Adam): trained by
  backpropagation through time on random windows of the training segment,
  one-step-ahead MSE after a burn-in of the window's first steps.

Then each model reads a warm-up window of the true series (teacher forcing) and
runs free, its prediction fed back as its next input, from many starting points
on held-out test data. NRMSE84, as Jaeger reports it: with x_j(84) the true
value 84 steps after the end of warm-up j (the 84th free-running prediction)
and x^_j(84) the model's, on the original scale (x = 1 + artanh(u)),

    NRMSE84 = sqrt( mean_j (x^_j(84) - x_j(84))^2 / var(x) ),

var(x) the variance of the whole generated series; the mean runs over every
test starting point (and, for the ESN, every reservoir: --reservoirs
independent random reservoirs). The same at every horizon k gives the error
curve of the figure::

    python examples/reservoir.py              # 1000 units, 5 reservoirs; LSTM of 64 (about 2 minutes)
    python examples/reservoir.py --fast       # 400 units, 1 reservoir; a small LSTM (a few seconds, CI)
    python examples/reservoir.py --units 2000 --dtype float64
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import pyrnn
from pyrnn.optim import Adam, clip_grad_norm, mse_loss
from pyrnn.reservoir import ESN

import _common  # examples/_common.py: options, threads and figures the scripts share

HORIZON_84 = 84


# ------------------------------------------------------------------------ data


def mackey_glass(n, tau=17.0, beta=0.2, gamma=0.1, power=10, dt=0.1, x0=1.2, discard=1000):
    """n samples (one per time unit) of the Mackey-Glass series, after `discard` time units.

    RK4 with step dt (1/dt and tau/dt must be integers) from the constant history x0;
    the delayed term at the half steps is the mean of its two grid neighbours.
    """
    sub, lag = round(1.0 / dt), round(tau / dt)
    if not (math.isclose(sub * dt, 1.0) and math.isclose(lag * dt, tau)):
        raise ValueError(f"1/dt and tau/dt must be integers, got dt={dt}, tau={tau}")
    steps = (n + discard) * sub
    x = [float(x0)] * (lag + 1) + [0.0] * steps

    def f(v, d):
        return beta * d / (1.0 + d ** power) - gamma * v

    h = dt
    for i in range(lag, lag + steps):
        v, d0, d1 = x[i], x[i - lag], x[i - lag + 1]
        dm = 0.5 * (d0 + d1)
        k1 = f(v, d0)
        k2 = f(v + 0.5 * h * k1, dm)
        k3 = f(v + 0.5 * h * k2, dm)
        k4 = f(v + h * k3, d1)
        x[i + 1] = v + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return np.array(x[lag::sub][discard:discard + n])


def squash(x):
    """The models' scale: u = tanh(x - 1)."""
    return np.tanh(x - 1.0)


def unsquash(u):
    """Back to the series' scale: x = 1 + artanh(u) (u clipped into (-1, 1); non-finite u gives nan)."""
    u = np.asarray(u, dtype=np.float64)
    return np.where(np.isfinite(u), 1.0 + np.arctanh(np.clip(u, -1 + 1e-12, 1 - 1e-12)), np.nan)


def layout(args):
    """The series' length and the validation and test starting points (indices of the first free step)."""
    first = args.train + args.warmup
    val = first + args.gap * np.arange(args.val_starts)
    test = first + args.gap * (args.val_starts + np.arange(args.test_starts))
    return int(test[-1] + args.horizon), val, test


def warmups(u, starts, warmup):
    """[warmup, len(starts), 1]: the true series just before each starting point."""
    return np.stack([u[s - warmup:s] for s in starts], axis=1)[:, :, None]


def nrmse_curve(pred_u, x, starts, variance):
    """NRMSE at each horizon k = 1..K: pred_u [K, S] (model scale) against x[starts + k - 1]."""
    K = pred_u.shape[0]
    true = x[starts[None, :] + np.arange(K)[:, None]]
    err = unsquash(pred_u) - true
    with np.errstate(over="ignore", invalid="ignore"):
        sq = np.where(np.isfinite(err), err * err, np.inf)
        return np.sqrt(np.mean(sq, axis=1) / variance)


# ------------------------------------------------------------------------- ESN


def esn_free_run(esn, u, starts, args, steps):
    """[steps, S]: the ESN's free-running predictions from each starting point."""
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging candidate readout may overflow
        return esn.generate(steps, warmups(u, starts, args.warmup))[:, :, 0].astype(np.float64)


def train_esn(k, u, x, variance, val, args):
    """One reservoir: the ridge chosen by free-running NRMSE84 on the validation starts (``fit(score=)``)."""
    t0 = time.perf_counter()
    esn = ESN(1, args.units, spectral_radius=args.spectral_radius, leak=args.leak, density=args.density,
              input_scaling=args.input_scaling, bias_scaling=args.bias_scaling, seed=[args.seed, k],
              dtype=args.dtype)
    build_seconds = time.perf_counter() - t0
    u_in, target = u[:args.train - 1, None], u[1:args.train, None]
    one_step = esn.ridge_sweep(u_in, target, args.ridges, washout=args.washout)  # teacher-forced, for the record

    def free_running_nrmse84(candidate):
        return nrmse_curve(esn_free_run(candidate, u, val, args, HORIZON_84), x, val, variance)[-1]

    t0 = time.perf_counter()
    esn.fit(u_in, target, washout=args.washout, ridge=args.ridges, score=free_running_nrmse84)
    select_seconds = time.perf_counter() - t0
    free = dict(esn.validation_errors)
    t0 = time.perf_counter()
    esn.fit(u_in, target, washout=args.washout, ridge=esn.ridge)  # once more, timed: the cost of one fit
    fit_seconds = time.perf_counter() - t0
    return esn, {"ridge": esn.ridge, "fit_seconds": fit_seconds, "select_seconds": select_seconds,
                 "build_seconds": build_seconds, "one_step_mse": one_step, "val_nrmse84": free}


# ------------------------------------------------------------------------ LSTM


class LSTMModel:
    """pyrnn.LSTM(1, hidden) and a Linear readout: u_t -> u_{t+1}."""

    def __init__(self, hidden, rng, lr):
        self.lstm = pyrnn.LSTM(1, hidden, rng=rng)
        self.fc = pyrnn.Linear(hidden, 1, rng=rng)
        self.opt = Adam([self.lstm, self.fc], lr=lr)

    def train_step(self, x, y, burn, clip):
        self.lstm.train()
        self.fc.train()
        h, _ = self.lstm(x)
        pred = self.fc(h)
        loss, dpred = mse_loss(pred[burn:], y[burn:])
        dfull = np.zeros_like(pred)
        dfull[burn:] = dpred
        self.opt.zero_grad()
        self.lstm.backward(self.fc.backward(dfull), input_grad=False)  # (the input is data: no dx)
        clip_grad_norm([self.lstm, self.fc], clip)
        self.opt.step()
        return loss

    def free_run(self, warm, steps):
        """[steps, S]: warm-up [T_w, S, 1] read with teacher forcing, then each prediction fed back."""
        self.lstm.eval()
        self.fc.eval()
        out = np.empty((steps, warm.shape[1]), np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            h, state = self.lstm(warm.astype(np.float32))
            p = self.fc(h[-1])  # [S, 1]
            for k in range(steps):
                out[k] = p[:, 0]
                if k + 1 < steps:
                    h, state = self.lstm(p[None], state)
                    p = self.fc(h[0])
        return out


def train_lstm(u, args):
    ss = np.random.SeedSequence([args.seed, 1000])
    init_rng, data_rng = (np.random.default_rng(s) for s in ss.spawn(2))
    model = LSTMModel(args.lstm_hidden, init_rng, args.lstm_lr)
    L, burn = args.lstm_window, args.lstm_burn
    series = u[:args.train].astype(np.float32)
    losses = []
    t0 = time.perf_counter()
    for step in range(args.lstm_steps):
        if step == int(0.75 * args.lstm_steps):
            model.opt.lr = args.lstm_lr * 0.1  # a step decay for the last quarter
        s = data_rng.integers(0, args.train - L - 1, args.lstm_batch)
        idx = s[None, :] + np.arange(L)[:, None]
        losses.append(model.train_step(series[idx][:, :, None], series[idx + 1][:, :, None], burn, args.lstm_clip))
    seconds = time.perf_counter() - t0
    return model, {"train_seconds": seconds, "final_loss": float(np.mean(losses[-20:]))}


# ------------------------------------------------------------------- reporting


def plot(x, test, args, esn_pred, lstm_pred, esn_curve, lstm_curve, path):
    plt = _common.pyplot()
    if plt is None:
        return None
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(8.0, 6.4))
    s0 = int(test[0])
    back = min(args.warmup, 100)
    t = np.arange(s0 - back, s0 + args.horizon)
    a1.plot(t, x[t], color="k", lw=0.9, zorder=3, label="Mackey-Glass (true)")
    steps = np.arange(s0, s0 + args.horizon)
    a1.plot(steps, unsquash(esn_pred[:, 0]), color="C0", lw=3.5, alpha=0.45,
            label=f"ESN, {args.units} units (free running)")
    if lstm_pred is not None:
        a1.plot(steps, unsquash(lstm_pred[:, 0]), color="C3", lw=1.2, ls="--",
                label=f"LSTM, {args.lstm_hidden} units (free running)")
    a1.axvline(s0 - 0.5, color="gray", lw=1)
    a1.axvline(s0 + HORIZON_84 - 1, color="gray", lw=1, ls=":")
    a1.text(s0 + HORIZON_84, a1.get_ylim()[1], " step 84", va="top", fontsize=8, color="gray")
    a1.set_xlim(t[0], t[-1])
    a1.set_ylim(0.2, 1.5)
    a1.set_xlabel("time")
    a1.set_ylabel("x(t)")
    a1.set_title("first test starting point: teacher-forced warm-up (left of the line), then free running",
                 fontsize=9)
    a1.legend(fontsize=8, loc="lower left")
    k = np.arange(1, args.horizon + 1)
    a2.semilogy(k, esn_curve, color="C0", label="ESN")
    if lstm_curve is not None:
        a2.semilogy(k, lstm_curve, color="C3", ls="--", label="LSTM")
    a2.axvline(HORIZON_84, color="gray", lw=1, ls=":")
    a2.set_xlabel("free-running steps k")
    a2.set_ylabel("NRMSE at step k")
    a2.set_title(f"NRMSE over {len(test)} test starting points"
                 + (f" and {args.reservoirs} reservoirs (ESN)" if args.reservoirs > 1 else ""), fontsize=9)
    a2.grid(alpha=0.3, which="both")
    a2.legend(fontsize=8)
    fig.suptitle("Mackey-Glass (tau = 17): echo state network" + (" vs LSTM" if lstm_curve is not None else ""),
                 fontsize=10)
    return _common.save_figure(plt, fig, path)


def _floats(text):
    """Comma-separated ridge values: finite numbers >= 0."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected one or more finite numbers >= 0, got {text!r}")
    return values


def parse_args(argv):
    p = _common.parser(__doc__, "400 units, 1 reservoir; a small LSTM briefly trained (a few seconds; CI runs it)")
    p.add_argument("--units", type=_common.positive_int, help="reservoir units (default 1000; fast 400)")
    p.add_argument("--reservoirs", type=_common.positive_int, help="independent random reservoirs (default 5; fast 1)")
    p.add_argument("--spectral-radius", type=_common.positive_float, default=0.9)
    p.add_argument("--leak", type=_common.unit_rate, default=0.5, help="leaking rate a in (0, 1]")
    p.add_argument("--density", type=_common.unit_rate, default=1.0, help="fraction of nonzero recurrent weights")
    p.add_argument("--input-scaling", type=_common.nonnegative_float, default=0.5)
    p.add_argument("--bias-scaling", type=_common.nonnegative_float, default=0.2)
    p.add_argument("--ridges", type=_floats, default=[1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6],
                   help="ridge values to choose from, comma-separated")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="the reservoir's dtype")
    p.add_argument("--train", type=_common.positive_int, help="training samples (default 4000; fast 2000)")
    p.add_argument("--washout", type=_common.nonnegative_int,
                   help="first training states left out of the fit (default 500; fast 200)")
    p.add_argument("--warmup", type=_common.positive_int, default=300, help="teacher-forced steps before each free run")
    p.add_argument("--val-starts", type=_common.positive_int, help="validation starting points (default 30; fast 20)")
    p.add_argument("--test-starts", type=_common.positive_int, help="test starting points (default 100; fast 50)")
    p.add_argument("--gap", type=_common.positive_int, default=50, help="steps between consecutive starting points")
    p.add_argument("--horizon", type=_common.positive_int,
                   help="free-running steps in the figure (default 300; fast 150)")
    p.add_argument("--lstm-hidden", type=_common.positive_int, help="LSTM units (default 64; fast 32)")
    p.add_argument("--lstm-steps", type=_common.positive_int, help="LSTM training steps (default 3000; fast 150)")
    p.add_argument("--lstm-batch", type=_common.positive_int, default=32)
    p.add_argument("--lstm-window", type=_common.positive_int, default=100, help="BPTT window length")
    p.add_argument("--lstm-burn", type=_common.nonnegative_int, default=20,
                   help="first steps of a window left out of the loss")
    p.add_argument("--lstm-lr", type=_common.positive_float, default=5e-3,
                   help="Adam learning rate (x0.1 for the last quarter)")
    p.add_argument("--lstm-clip", type=_common.positive_float, default=1.0, help="gradient-norm clipping threshold")
    p.add_argument("--no-lstm", action="store_true", help="the ESN only")
    _common.add_run_options(p, __file__)
    args = p.parse_args(argv)
    fast = args.fast
    for name, full, quick in (("units", 1000, 400), ("reservoirs", 5, 1), ("train", 4000, 2000),
                              ("washout", 500, 200), ("val_starts", 30, 20), ("test_starts", 100, 50),
                              ("horizon", 300, 150), ("lstm_hidden", 64, 32), ("lstm_steps", 3000, 150)):
        if getattr(args, name) is None:
            setattr(args, name, quick if fast else full)
    if args.horizon < HORIZON_84:
        p.error(f"--horizon must be at least {HORIZON_84}")
    for name in ("units", "reservoirs", "train", "warmup", "val_starts", "test_starts", "gap", "lstm_hidden",
                 "lstm_batch", "lstm_window"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    # (the one-step sweep needs a training and a validation step after the washout of the train - 1 inputs)
    if not 0 <= args.washout < args.train - 2:
        p.error("--washout must be in [0, train - 2)")
    if args.lstm_window + 2 > args.train or not 0 <= args.lstm_burn < args.lstm_window:
        p.error("need lstm-burn < lstm-window < train - 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    with _common.pyrnn_threads(args.threads):
        return _run(args)


def _run(args):
    n, val, test = layout(args)
    t0 = time.perf_counter()
    x = mackey_glass(n)
    u = squash(x)
    variance = float(np.var(x))
    print(f"Mackey-Glass tau=17: {n} samples (RK4, dt 0.1, 1 sample per time unit) in "
          f"{time.perf_counter() - t0:.1f} s; u = tanh(x - 1); {args.train} for training, "
          f"{args.val_starts} validation and {args.test_starts} test starting points, warm-up {args.warmup}; "
          f"seed {args.seed}; {pyrnn.get_num_threads()} thread(s)")

    # ESN: one or more independent reservoirs; NRMSE pooled over reservoirs and starting points
    print(f"ESN: {args.units} units, spectral radius {args.spectral_radius}, leak {args.leak}, density "
          f"{args.density}, input scaling {args.input_scaling}, bias scaling {args.bias_scaling}, {args.dtype}; "
          f"readout on [1; u; h], washout {args.washout}")
    curves, esn_runs, esn_pred = [], [], None
    for k in range(args.reservoirs):
        t0 = time.perf_counter()
        esn, info = train_esn(k, u, x, variance, val, args)
        info["total_seconds"] = time.perf_counter() - t0
        pred = esn_free_run(esn, u, test, args, args.horizon)
        curve = nrmse_curve(pred, x, test, variance)
        curves.append(curve ** 2)
        info["nrmse84"] = float(curve[HORIZON_84 - 1])
        esn_runs.append(info)
        esn_pred = pred if esn_pred is None else esn_pred
        one_step_pick = min(info["one_step_mse"], key=info["one_step_mse"].get)
        print(f"  reservoir {k}: NRMSE84 {info['nrmse84']:.2e} (test); ridge {info['ridge']:g} by free-running "
              f"validation (the one-step validation MSE picks {one_step_pick:g}); built in "
              f"{info['build_seconds']:.1f} s, ridge chosen in {info['select_seconds']:.1f} s, fit "
              f"{info['fit_seconds']:.2f} s")
    esn_curve = np.sqrt(np.mean(curves, axis=0))  # pooled over reservoirs and starting points
    esn_nrmse84 = float(esn_curve[HORIZON_84 - 1])
    esn_fit = float(np.mean([r["fit_seconds"] for r in esn_runs]))
    esn_total = float(np.mean([r["total_seconds"] for r in esn_runs]))

    lstm = None
    if not args.no_lstm:
        print(f"LSTM: {args.lstm_hidden} units, {args.lstm_steps} Adam steps (lr {args.lstm_lr}) on batches of "
              f"{args.lstm_batch} windows of {args.lstm_window} (loss after {args.lstm_burn} burn-in steps)")
        model, info = train_lstm(u, args)
        pred = model.free_run(warmups(u, test, args.warmup).astype(np.float32), args.horizon)
        curve = nrmse_curve(pred, x, test, variance)
        lstm = dict(info, nrmse84=float(curve[HORIZON_84 - 1]), curve=curve, pred=pred)
        print(f"  trained in {info['train_seconds']:.1f} s, final one-step MSE {info['final_loss']:.2e}; "
              f"NRMSE84 {lstm['nrmse84']:.2e} (test)")

    print()
    runs = args.test_starts * args.reservoirs
    header = f"{'model':<28s} {'NRMSE84':>9s} {'training':>10s}   runs"
    print(header)
    print("-" * len(header))
    print(f"{'ESN ' + str(args.units) + ' units':<28s} {esn_nrmse84:9.2e} {esn_fit:9.2f}s   {runs}"
          f"   (built, ridge chosen and fitted: {esn_total:.1f} s per reservoir)")
    if lstm is not None:
        print(f"{'LSTM ' + str(args.lstm_hidden) + ' units (BPTT)':<28s} {lstm['nrmse84']:9.2e} "
              f"{lstm['train_seconds']:9.2f}s   {args.test_starts}")
    print("NRMSE84: normalised RMSE of the 84th free-running prediction (original scale, over all runs); "
          "training: one ESN fit (reservoir states, H^T H and the ridge solve), the LSTM's BPTT training")
    if not args.no_plot:
        plot(x, test, args, esn_pred, lstm["pred"] if lstm else None, esn_curve, lstm["curve"] if lstm else None,
             args.plot)
    return {"esn": {"nrmse84": esn_nrmse84, "fit_seconds": esn_fit, "total_seconds": esn_total, "units": args.units,
                    "runs": esn_runs, "curve": esn_curve},
            "lstm": None if lstm is None else {k: v for k, v in lstm.items() if k != "pred"},
            "variance": variance, "test_starts": test, "val_starts": val}


if __name__ == "__main__":
    main()
