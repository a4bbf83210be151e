"""Sequence to sequence: an encoder-decoder that learns to reverse (or sort) digit strings.

The encoder (an LSTM or GRU) reads the digits; its final state is the
decoder's initial state; the decoder (same cell) is trained with teacher
forcing to emit the transformed string followed by an end token (Sutskever et
al. 2014; Cho et al. 2014). At test time it decodes greedily, one step at a
time through the cell API, feeding back its own most likely token until it
emits the end token. Accuracy is the exact match of whole strings on held-out
strings that training never sees (chance: 10^-length), measured at the end
again with the encoder's and decoder's weights in int8 and bfloat16 (frozen
layers and cells, ``freeze(precision=...)``; the readout stays float32), beside
float32 (--precisions)::

    python examples/seq2seq.py                     # reverse strings of 3-12 digits, LSTM
    python examples/seq2seq.py --task sort --cell gru
    python examples/seq2seq.py --fast              # strings of 3-8 digits, fewer steps (CI)

Built only on pyrnn's public API: layers (lengths, initial states, backward
with dh_n/dc_n into the encoder), cells for decoding, and pyrnn.optim.
"""

from __future__ import annotations

import time

import numpy as np

import pyrnn
from pyrnn.optim import Adam, Linear, clip_grad_norm, softmax_cross_entropy

import _common  # examples/_common.py: options, threads and figures the scripts share

DIGITS = 10
EOS = 10  # output token: end of string
GO = 10  # decoder input token at the first step (input index 10; digits are 0..9)
N_OUT = DIGITS + 1  # digits and EOS
N_DEC_IN = DIGITS + 1  # digits and GO

TASKS = {
    "reverse": lambda s: s[::-1],
    "sort": lambda s: np.sort(s),
}


def random_strings(rng, n, min_len, max_len):
    lengths = rng.integers(min_len, max_len + 1, n)
    return [rng.integers(0, DIGITS, k) for k in lengths]


def held_out_strings(rng, n, min_len, max_len):
    """n distinct strings (with their keys), used only for testing."""
    seen, out = set(), []
    while len(out) < n:
        for s in random_strings(rng, n, min_len, max_len):
            key = s.tobytes()
            if key not in seen and len(out) < n:
                seen.add(key)
                out.append(s)
    return out, seen


def encode_batch(strings, task, max_len):
    """One-hot encoder input, decoder input (GO + target), targets (target + EOS) and lengths."""
    B = len(strings)
    src_len = np.array([len(s) for s in strings])
    x_enc = np.zeros((max_len, B, DIGITS), np.float32)
    x_dec = np.zeros((max_len + 1, B, N_DEC_IN), np.float32)
    targets = np.zeros((max_len + 1, B), np.int64)
    mask = np.zeros((max_len + 1, B), np.float32)
    for b, s in enumerate(strings):
        k = len(s)
        tgt = TASKS[task](s)
        x_enc[np.arange(k), b, s] = 1
        x_dec[0, b, GO] = 1
        x_dec[np.arange(1, k + 1), b, tgt] = 1
        targets[:k, b] = tgt
        targets[k, b] = EOS
        mask[:k + 1, b] = 1
    return x_enc, x_dec, targets, mask, src_len


class Seq2Seq:
    def __init__(self, cell, hidden, layers, rng):
        layer_cls = {"lstm": pyrnn.LSTM, "gru": pyrnn.GRU}[cell]
        self.cell = cell
        self.hidden, self.layers = hidden, layers
        self.encoder = layer_cls(DIGITS, hidden, num_layers=layers, rng=rng)
        self.decoder = layer_cls(N_DEC_IN, hidden, num_layers=layers, rng=rng)
        self.readout = Linear(hidden, N_OUT, rng=rng)
        self.modules = [self.encoder, self.decoder, self.readout]

    def train_step(self, batch, opt, clip):
        """One teacher-forced step; returns (loss in nats per token, gradient norm before clipping)."""
        x_enc, x_dec, targets, mask, src_len = batch
        _, state = self.encoder(x_enc, lengths=src_len)  # each string's own last state
        y, _ = self.decoder(x_dec, state, lengths=src_len + 1)
        logits = self.readout(y)
        loss, dlogits = softmax_cross_entropy(logits, targets, mask)
        opt.zero_grad()
        dy = self.readout.backward(dlogits)
        # the gradient reaching the decoder's initial state ... (the one-hot inputs need none: no dx)
        _, d_state = self.decoder.backward(dy, input_grad=False)
        if self.cell == "lstm":
            # ... is the encoder's final state's
            self.encoder.backward(dh_n=d_state[0], dc_n=d_state[1], input_grad=False)
        else:
            self.encoder.backward(dh_n=d_state, input_grad=False)
        norm = clip_grad_norm(self.modules, clip)
        opt.step()
        return loss, norm

    def decoder_cells(self, precision=None):
        """One cell per decoder layer, holding that layer's weights (for step-by-step decoding);
        with a precision ("int8", "bf16"), frozen cells whose weights are in it."""
        cell_cls = {"lstm": pyrnn.LSTMCell, "gru": pyrnn.GRUCell}[self.cell]
        cells = []
        for k in range(self.layers):
            in_size = N_DEC_IN if k == 0 else self.hidden
            cell = cell_cls(in_size, self.hidden).eval()
            cell.load_state_dict({name: getattr(self.decoder, f"{name}_l{k}")
                                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
            cells.append(cell if precision is None else cell.freeze(precision))
        return cells

    def greedy_decode(self, strings, max_out, precision=None):
        """Decodes a batch greedily: each step feeds back the previous step's argmax.

        precision "int8" or "bf16": the encoder and the decoder cells run frozen
        copies with their weights in it (the readout stays float32)."""
        max_len = max(len(s) for s in strings)
        x_enc, _, _, _, src_len = encode_batch(strings, "reverse", max_len)
        if precision is None:
            self.encoder.eval()
            _, state = self.encoder(x_enc, lengths=src_len)
            self.encoder.train()
        else:
            _, state = self.encoder.freeze(precision)(x_enc, lengths=src_len)
        cells = self.decoder_cells(precision)
        if self.cell == "lstm":
            states = [(state[0][k], state[1][k]) for k in range(self.layers)]
        else:
            states = [state[k] for k in range(self.layers)]
        self.readout.eval()
        B = len(strings)
        token = np.full(B, GO)
        out = np.zeros((max_out, B), np.int64)
        for t in range(max_out):
            inp = np.zeros((B, N_DEC_IN), np.float32)
            inp[np.arange(B), token] = 1
            for k, cell in enumerate(cells):
                states[k] = cell(inp, states[k])
                inp = states[k][0] if self.cell == "lstm" else states[k]
            token = np.argmax(self.readout(inp), axis=-1)
            out[t] = token
        self.readout.train()
        decoded = []
        for b in range(B):
            seq = out[:, b]
            end = np.flatnonzero(seq == EOS)
            decoded.append(seq[:end[0]] if end.size else seq)  # no EOS: the whole output (never a match)
        return decoded


def evaluate(model, strings, task, max_len, precision=None):
    pred = model.greedy_decode(strings, max_len + 2, precision)
    exact = np.array([len(p) == len(s) and np.array_equal(p, TASKS[task](s)) for p, s in zip(pred, strings)])
    return float(exact.mean()), pred, exact


def plot(history, path, title):
    plt = _common.pyplot()
    if plt is None:
        return None
    steps, losses, accs = zip(*history)
    fig, ax1 = plt.subplots(figsize=(6.5, 3.8))
    ax1.plot(steps, losses, color="C0", label="training loss (nats/token)")
    ax1.set_xlabel("training step")
    ax1.set_ylabel("training loss (nats/token)", color="C0")
    ax1.set_yscale("log")
    ax2 = ax1.twinx()
    ax2.plot(steps, accs, color="C3", marker="o", ms=3, label="held-out exact match")
    ax2.set_ylabel("held-out exact-match accuracy", color="C3")
    ax2.set_ylim(-0.02, 1.02)
    ax1.grid(alpha=0.3)
    ax1.set_title(title, fontsize=10)
    return _common.save_figure(plt, fig, path)


def parse_args(argv):
    p = _common.parser(__doc__, "strings of 3-8 digits, 1000 steps (CI)")
    p.add_argument("--task", choices=list(TASKS), default="reverse")
    p.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    p.add_argument("--min-len", type=_common.positive_int, default=3)
    p.add_argument("--max-len", type=_common.positive_int, help="longest string (default 12; fast: 8)")
    p.add_argument("--hidden", type=_common.positive_int, default=128)
    p.add_argument("--layers", type=_common.positive_int, default=1)
    p.add_argument("--steps", type=_common.positive_int, help="training steps (default 5000; fast: 1000)")
    p.add_argument("--batch", type=_common.positive_int, default=64)
    p.add_argument("--lr", type=_common.positive_float, default=3e-3, help="Adam learning rate")
    p.add_argument("--clip", type=_common.positive_float, default=1.0, help="gradient-norm clipping threshold")
    p.add_argument("--test-size", type=_common.positive_int, default=1000)
    p.add_argument("--precisions", default="int8,bf16",
                   help="weight precisions of the encoder and decoder to measure the held-out accuracy in beside "
                        "float32, comma-separated (int8, bf16; default int8,bf16; '' for none)")
    _common.add_run_options(p, __file__)
    args = p.parse_args(argv)
    if args.max_len is None:
        args.max_len = 8 if args.fast else 12
    if args.steps is None:
        args.steps = 1000 if args.fast else 5000
    if not 1 <= args.min_len <= args.max_len:
        p.error("need 1 <= --min-len <= --max-len")
    args.precisions = [s.strip().lower() for s in args.precisions.split(",") if s.strip()]
    if not set(args.precisions) <= {"int8", "bf16"}:
        p.error(f"--precisions: int8 and/or bf16, got {','.join(args.precisions)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    with _common.pyrnn_threads(args.threads):
        return _run(args)


def _run(args):
    init_rng, data_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(args.seed).spawn(3))
    test, test_keys = held_out_strings(test_rng, args.test_size, args.min_len, args.max_len)
    model = Seq2Seq(args.cell, args.hidden, args.layers, init_rng)
    opt = Adam(model.modules, lr=args.lr)
    chance = float(np.mean([10.0 ** -len(s) for s in test]))
    print(f"seq2seq: {args.task} digit strings of length {args.min_len}-{args.max_len}; "
          f"{args.cell.upper()} encoder-decoder, {args.layers} layer(s) of {args.hidden}; {args.steps} steps of "
          f"batch {args.batch}, Adam lr {args.lr}, clip {args.clip}; seed {args.seed}; "
          f"{pyrnn.get_num_threads()} thread(s)")
    print(f"held-out: {len(test)} strings never trained on; chance exact match {chance:.1e}")
    eval_every = max(1, args.steps // 20)
    history, losses = [], []
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        strings = []
        while len(strings) < args.batch:  # never train on a held-out string
            strings.extend(s for s in random_strings(data_rng, args.batch, args.min_len, args.max_len)
                           if s.tobytes() not in test_keys)
        batch = encode_batch(strings[:args.batch], args.task, args.max_len)
        loss, _ = model.train_step(batch, opt, args.clip)
        losses.append(loss)
        if step % eval_every == 0 or step == args.steps:
            acc = evaluate(model, test, args.task, args.max_len)[0]
            history.append((step, float(np.mean(losses[-eval_every:])), acc))
            print(f"  step {step:5d}  loss {history[-1][1]:.4f} nats/token  held-out exact match {acc:6.1%}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    acc, pred, exact = evaluate(model, test, args.task, args.max_len)
    seconds = time.perf_counter() - t0
    by_len = {}
    for s, ok in zip(test, exact):
        by_len.setdefault(len(s), []).append(ok)
    print(f"\nheld-out exact-match accuracy: {acc:.1%} (chance {chance:.1e}); training {seconds:.1f} s")
    print("by length: " + ", ".join(f"{k}: {np.mean(v):.0%}" for k, v in sorted(by_len.items())))
    fmt = "".join
    for s, p_, ok in list(zip(test, pred, exact))[:5]:
        print(f"  {fmt(map(str, s)):>{args.max_len}s} -> {fmt(map(str, p_)):<{args.max_len + 2}s} "
              f"{'ok' if ok else 'wrong (expected ' + fmt(map(str, TASKS[args.task](s))) + ')'}")
    accs = None
    if args.precisions:
        accs = {"fp32": acc}
        accs.update((prec, evaluate(model, test, args.task, args.max_len, prec)[0]) for prec in args.precisions)
        print("held-out exact match by weight precision (encoder and decoder; the readout in float32):")
        print(f"  {'precision':<9s}  {'exact match':>11s}  {'vs fp32':>16s}")
        for prec, a in accs.items():
            diff = "" if prec == "fp32" else (f"{100.0 * (a - acc):+.1f} pt, " +
                                                (f"{100.0 * (a - acc) / acc:+.2f}%" if acc > 0 else "n/a"))
            print(f"  {prec:<9s}  {a:11.1%}  {diff:>16s}")
    if not args.no_plot:
        plot(history, args.plot, f"seq2seq, {args.task} {args.min_len}-{args.max_len} digits "
                                        f"({args.cell.upper()} {args.layers}x{args.hidden})")
    return {"accuracy": acc, "chance": chance, "history": history, "by_length": by_len, "seconds": seconds,
            "precision_accuracy": accs}


if __name__ == "__main__":
    main()
