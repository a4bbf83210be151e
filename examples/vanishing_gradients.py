"""Gradients through time: how ||dL/dh_t|| decays (or grows) with the distance to the loss.

For a loss at the last step T of a sequence, backpropagation through time
multiplies dL/dh_T by one Jacobian dh_t/dh_{t-1} per step. For a tanh RNN that
Jacobian is diag(1 - h_t^2) W_hh, so the gradient reaching h_1 shrinks or grows
geometrically with the spectral radius of W_hh (Bengio et al. 1994; Pascanu
et al. 2013). Here W_hh is a random orthogonal matrix times the radius (every
eigenvalue and singular value equals it): radius < 1 vanishes; > 1 is needed
to explode, and the tanh's saturation (1 - h_t^2 < 1) holds the growth back
until the radius is well above 1 (at 1.1 growth and saturation roughly
balance, 1.5 explodes). Gated cells carry state additively
(c_t = f_t c_{t-1} + ..., h_t = (1 - z_t) n_t + z_t h_{t-1}), so the decay per
step is a gate value that the network sets and learns: about 0.5 at
PyTorch's default initialisation (gates at sigmoid(~0)), close to 1 with the
forget/update gates opened by chrono initialisation (Tallec & Ollivier 2018:
bias log U[1, T - 1]).

The gradients come from pyrnn's own BPTT (pyrnn.diagnostics, which asks the
C++ kernels for dL/dh_t at every step); the networks are in float64 so that
nothing underflows over T = 200 steps::

    python examples/vanishing_gradients.py            # T = 200, hidden 128, batch 32
    python examples/vanishing_gradients.py --fast     # batch 8 (CI)

Prints ||dL/dh_1|| / ||dL/dh_T|| for each network and plots ||dL/dh_t|| against t.
"""

from __future__ import annotations


import numpy as np

import pyrnn
from pyrnn.diagnostics import hidden_grad_norms

import _common  # examples/_common.py: options, threads and figures the scripts share


def chrono_init(layer, t_max, rng):
    """Chrono initialisation (Tallec & Ollivier 2018) of a one-layer pyrnn LSTM or GRU, in place.

    LSTM: forget-gate bias log U[1, t_max - 1], input-gate bias its negative.
    GRU (PyTorch's h' = (1 - z) n + z h): update-gate bias log U[1, t_max - 1],
    so z starts between 1/2 and 1 - 1/t_max and a unit remembers for up to ~t_max steps.
    """
    H = layer.hidden_size
    b = np.log(rng.uniform(1.0, t_max - 1.0, H))
    b_ih, b_hh = layer.bias_ih_l0, layer.bias_hh_l0  # live arrays: in-place writes take effect
    if layer.mode == "LSTM":  # gates i, f, g, o
        b_ih[:H], b_hh[:H] = -b, 0.0
        b_ih[H:2 * H], b_hh[H:2 * H] = b, 0.0
    elif layer.mode == "GRU":  # gates r, z, n
        b_ih[H:2 * H], b_hh[H:2 * H] = b, 0.0
    else:
        raise ValueError("chrono initialisation needs an LSTM or a GRU")


def scaled_recurrent_matrix(rng, hidden, radius):
    """A random orthogonal matrix times ``radius``: every eigenvalue has modulus ``radius``
    (the spectral radius) and so does every singular value, so radius^k is the linear
    theory's exact gain over k steps, not only a bound."""
    q, r = np.linalg.qr(rng.standard_normal((hidden, hidden)))
    return radius * q * np.sign(np.diag(r))  # sign fix: Haar-distributed


def build_networks(hidden, radii, t_max, seed):
    """{label: layer}: tanh RNNs whose W_hh has each spectral radius, LSTMs and GRUs (float64)."""
    dt = np.float64
    s_rnn, s_w, s_lstm, s_lstm_c, s_gru, s_gru_c = np.random.SeedSequence(seed).generate_state(6)
    base = scaled_recurrent_matrix(np.random.default_rng(s_w), hidden, 1.0)  # one matrix for all radii
    nets = {}
    for radius in radii:
        rnn = pyrnn.RNN(1, hidden, nonlinearity="tanh", dtype=dt, seed=s_rnn)  # the same W_ih, biases
        rnn.weight_hh_l0[...] = radius * base  # live array: the next call sees it
        nets[f"RNN tanh, radius {radius:g}"] = rnn
    nets["LSTM, default init"] = pyrnn.LSTM(1, hidden, dtype=dt, seed=s_lstm)
    lstm = pyrnn.LSTM(1, hidden, dtype=dt, seed=s_lstm_c)
    chrono_init(lstm, t_max, np.random.default_rng(s_lstm_c + 1))
    nets["LSTM, chrono init"] = lstm
    nets["GRU, default init"] = pyrnn.GRU(1, hidden, dtype=dt, seed=s_gru)
    gru = pyrnn.GRU(1, hidden, dtype=dt, seed=s_gru_c)
    chrono_init(gru, t_max, np.random.default_rng(s_gru_c + 1))
    nets["GRU, chrono init"] = gru
    return nets


def measure(nets, T, batch, seed):
    """{label: [T] mean over the batch of ||dL/dh_t||} for L = sum_b <u_b, h_T^b>, u_b random unit vectors."""
    rng = np.random.default_rng([seed, 1])
    x = rng.standard_normal((T, batch, 1))
    out = {}
    for label, net in nets.items():
        u = rng.standard_normal((1, batch, net.hidden_size))
        u /= np.linalg.norm(u, axis=-1, keepdims=True)
        out[label] = hidden_grad_norms(net, x, dh_n=u)[0]
    return out


def plot(norms, T, path):
    plt = _common.pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    t = np.arange(1, T + 1)
    rnn = [k for k in norms if k.startswith("RNN")]
    gated = [k for k in norms if not k.startswith("RNN")]
    for ax, labels, title in ((axes[0], rnn, "tanh RNN: W_hh scaled to spectral radius"),
                              (axes[1], gated, "LSTM and GRU at initialisation")):
        for label in labels:
            n = norms[label]
            color = {"LSTM": "C0", "GRU": "C2"}.get(label.split(",")[0])
            ax.semilogy(t, n / n[-1], "--" if "default" in label else "-", color=color, lw=1.8, label=label)
        if labels is gated:  # the plain RNN at radii 0.9 and 1 for reference
            for ref, style in (("RNN tanh, radius 0.9", ":"), ("RNN tanh, radius 1", "-")):
                if ref in norms:
                    ax.semilogy(t, norms[ref] / norms[ref][-1], style, color="0.6", lw=1.2, label=ref)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step t")
        ax.set_xlim(1, T)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel(r"$\|\partial L/\partial h_t\| \;/\; \|\partial L/\partial h_T\|$")
    fig.suptitle(f"Gradient of a loss at step T = {T} reaching each hidden state h_t (pyrnn's BPTT)", fontsize=11)
    return _common.save_figure(plt, fig, path)


def parse_args(argv):
    p = _common.parser(__doc__, "batch 8 (a few seconds; CI runs it)")
    p.add_argument("--length", type=_common.positive_int, default=200, help="sequence length T")
    p.add_argument("--hidden", type=_common.positive_int, help="hidden size (default 128)")
    p.add_argument("--batch", type=_common.positive_int, help="sequences averaged over (default 32; fast: 8)")
    p.add_argument("--radii", type=_common.positive_float, nargs="+", default=[0.9, 1.0, 1.1, 1.5],
                   help="spectral radii of the tanh RNN's W_hh")
    _common.add_run_options(p, __file__)
    args = p.parse_args(argv)
    if args.hidden is None:
        args.hidden = 128
    if args.batch is None:
        args.batch = 8 if args.fast else 32
    if args.length < 3:
        p.error("--length must be at least 3")
    return args


def main(argv=None):
    args = parse_args(argv)
    with _common.pyrnn_threads(args.threads):
        T = args.length
        print(f"gradients through time: loss at step T = {T}; hidden {args.hidden}, batch {args.batch}, "
              f"input N(0, 1) (1 channel), float64; seed {args.seed}")
        nets = build_networks(args.hidden, args.radii, T, args.seed)
        norms = measure(nets, T, args.batch, args.seed)
        ratios, per_step = {}, {}
        header = f"{'network':<24s} {'|dL/dh_1|/|dL/dh_T|':>21s} {'per step':>9s} {'linear theory':>14s}"
        print(header)
        print("-" * len(header))
        for label, n in norms.items():
            ratios[label] = float(n[0] / n[-1])
            # geometric-mean factor per step over steps T-1 .. 1 (after the step where the loss enters)
            per_step[label] = float(np.exp(np.log(n[0] / n[-2]) / (T - 2))) if n[0] > 0 else 0.0
            theory = ""
            if label.startswith("RNN"):
                theory = f"{float(label.rsplit(' ', 1)[1]) ** (T - 1):.3g}"
            print(f"{label:<24s} {ratios[label]:21.3g} {per_step[label]:9.4f} {theory:>14s}")
        print("(per step: (|dL/dh_1| / |dL/dh_{T-1}|)^(1/(T-2)); linear theory: radius^(T-1), "
              "the tanh RNN without saturation)")
        if not args.no_plot:
            plot(norms, T, args.plot)
        return {"ratios": ratios, "per_step": per_step, "norms": norms}


if __name__ == "__main__":
    main()
