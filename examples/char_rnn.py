"""Character-level language model: a stacked LSTM or GRU that reads and writes text one character at a time.

Trains on any text file with teacher forcing (predict each next character),
truncated backpropagation through time (the text is cut into chunks of
--seq-len characters; the hidden state is carried from one chunk to the next
and the gradient stops at chunk boundaries), dropout between layers and
optional recurrent (variational) dropout, gradient-norm clipping and Adam.
Reports training and validation loss in bits per character beside the
unigram-entropy baseline (a model that knows only character frequencies), saves
and resumes checkpoints, and samples text from a priming string with a
temperature, one character at a time through the cell API, feeding each
sampled character back in (Karpathy 2015's char-rnn). At the end the
validation loss is measured again with the recurrent layers' weights in int8
and bfloat16 (``layer.freeze(precision=...)``; the output Linear stays
float32), beside float32 (--precisions).

With no --text it trains on the Python standard library's own source files
(on every machine; nothing is downloaded): the analogue of char-rnn's Linux
kernel source::

    python examples/char_rnn.py                         # stdlib, 2-layer LSTM of 256
    python examples/char_rnn.py --text book.txt --cell gru --recurrent-dropout 0.1
    python examples/char_rnn.py --fast                  # 500 steps on 300k characters (CI)
    python examples/char_rnn.py --resume char_rnn.npz --steps 4000 --checkpoint char_rnn.npz
    python examples/char_rnn.py --resume char_rnn.npz --steps 0 --sample 1000 --prime "class "
    python examples/char_rnn.py --backend torch         # pyrnn.torch modules, torch.optim

--backend numpy trains with pyrnn's NumPy API (layers' forward/backward,
pyrnn.optim); --backend torch with pyrnn.torch's drop-in torch.nn modules,
torch autograd and torch.optim. Both start from the same weights and write the
same checkpoints (either can resume the other's); sampling always runs on
pyrnn's cells.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

import pyrnn
from pyrnn.optim import Adam, Linear, clip_grad_norm, softmax, softmax_cross_entropy

import _common  # examples/_common.py: options, threads and figures the scripts share

UNK = "\ufffd"  # stands for characters rarer than --min-count
LN2 = math.log(2.0)
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test"}
_TORCH_NN = False  # private switch: test the torch path with torch.nn modules instead of pyrnn.torch


# ------------------------------------------------------------------------ data


def stdlib_text(max_chars):
    """The standard library's own .py files (not tests or site-packages), in a fixed shuffled order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not _STDLIB_SKIP & set(p.relative_to(root).parts))
    if not files:
        raise SystemExit(f"no Python sources found under {root}: give a text file with --text")
    order = np.random.default_rng(1234).permutation(len(files))  # fixed: the same corpus for every --seed
    parts, n = [], 0
    for i in order:
        s = files[i].read_text(encoding="utf-8", errors="replace")
        parts.append(s)
        n += len(s) + 1
        if n >= max_chars:
            break
    return "\n".join(parts)[:max_chars], f"Python {sys.version.split()[0]} standard library ({root})"


def load_text(path, max_chars):
    if path is None:
        return stdlib_text(max_chars)
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return (text if max_chars is None else text[:max_chars]), str(path)


def build_vocab(text, min_count):
    chars, counts = np.unique(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32), return_counts=True)
    keep = [chr(c) for c, k in zip(chars, counts) if k >= min_count]
    if len(keep) < len(chars):
        keep.append(UNK)
    return "".join(sorted(set(keep)))


def encode(text, vocab):
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    table = np.full(max(int(codes.max(initial=0)), max(map(ord, vocab))) + 1, vocab.find(UNK), np.int64)
    for i, ch in enumerate(vocab):
        table[ord(ch)] = i
    ids = table[codes]
    if (ids < 0).any():
        raise ValueError("text has characters outside the vocabulary (and the vocabulary has no UNK)")
    return ids


def unigram_bits(train_ids, eval_ids, V):
    """Entropy of the training characters' frequencies, and the cross-entropy of eval_ids under them (bits)."""
    counts = np.bincount(train_ids, minlength=V).astype(np.float64)
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    q = (counts + 0.5) / (counts.sum() + 0.5 * V)  # add-1/2 smoothing for unseen characters
    return entropy, float(-np.log2(q[eval_ids]).mean())


def streams(ids, batch):
    """[batch, n] rows of contiguous text: row b continues from one chunk to the next."""
    n = (len(ids) - 1) // batch
    if n < 2:
        raise SystemExit(f"text too short for batch {batch}")
    x = ids[:n * batch].reshape(batch, n)
    y = ids[1:n * batch + 1].reshape(batch, n)
    return x, y


def one_hot(ids_tb, V):
    out = np.zeros(ids_tb.shape + (V,), np.float32)
    np.put_along_axis(out, ids_tb[..., None], 1.0, axis=-1)
    return out


# ---------------------------------------------------------------------- models


class NumpyModel:
    """Stacked pyrnn LSTM/GRU + pyrnn.optim.Linear readout, trained with pyrnn.optim.Adam."""

    def __init__(self, cell, V, hidden, layers, dropout, recurrent_dropout, rng, lr):
        layer_cls = {"lstm": pyrnn.LSTM, "gru": pyrnn.GRU}[cell]
        self.cell, self.V, self.hidden, self.layers = cell, V, hidden, layers
        self.rng = rng  # dropout masks come from this generator (saved in checkpoints)
        self.rnn = layer_cls(V, hidden, num_layers=layers, dropout=dropout, recurrent_dropout=recurrent_dropout,
                             rng=rng)
        self.fc = Linear(hidden, V, rng=rng)
        self.opt = Adam([self.rnn, self.fc], lr=lr)

    def named_arrays(self):
        """{'rnn.<name>' / 'fc.<name>': array} in a fixed order (parameters as NumPy, no copies)."""
        out = {f"rnn.{k}": v for k, v in self.rnn.named_parameters()}
        out.update({f"fc.{k}": v for k, v in self.fc.named_parameters()})
        return out

    def load_arrays(self, arrays):
        self.rnn.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("rnn.")})
        self.fc.load_state_dict({k[3:]: v for k, v in arrays.items() if k.startswith("fc.")})

    def _forward(self, x_ids, state):
        y, state = self.rnn(one_hot(x_ids, self.V), state)
        return self.fc(y), state

    def train_step(self, x_ids, y_ids, state, clip):
        self.rnn.train()
        self.fc.train()
        logits, state = self._forward(x_ids, state)
        loss, dlogits = softmax_cross_entropy(logits, y_ids)
        self.opt.zero_grad()
        # truncated BPTT: no gradient from the next chunk; the one-hot input needs none (no dx)
        self.rnn.backward(self.fc.backward(dlogits), input_grad=False)
        norm = clip_grad_norm([self.rnn, self.fc], clip)
        self.opt.step()
        return loss, norm, state

    def eval_loss(self, x_ids, y_ids, state):
        self.rnn.eval()
        self.fc.eval()
        logits, state = self._forward(x_ids, state)
        return softmax_cross_entropy(logits, y_ids)[0], state

    def optimizer_state(self):
        """{'step': int, '<param>/exp_avg': ..., '<param>/exp_avg_sq': ...} keyed by parameter name."""
        sd = self.opt.state_dict()
        out = {"step": sd["step_count"]}
        for name, st in zip(self.named_arrays(), sd["state"]):
            out[f"{name}/exp_avg"], out[f"{name}/exp_avg_sq"] = st["exp_avg"], st["exp_avg_sq"]
        return out

    def load_optimizer_state(self, st):
        sd = self.opt.state_dict()
        sd["step_count"] = int(st["step"])
        sd["state"] = [{"exp_avg": st[f"{n}/exp_avg"], "exp_avg_sq": st[f"{n}/exp_avg_sq"]}
                       for n in self.named_arrays()]
        self.opt.load_state_dict(sd)

    def rng_state(self):
        return {"numpy": self.rng.bit_generator.state}

    def set_rng_state(self, st):
        self.rng.bit_generator.state = st["numpy"]


class FrozenModel:
    """For evaluation only: the recurrent stack frozen at a weight precision
    (``layer.freeze(precision=...)``: "int8", "bf16" or None for float32), the
    Linear readout in float32. Built from named_arrays(), so from either backend."""

    def __init__(self, arrays, cell, V, hidden, layers, precision):
        rnn = {"lstm": pyrnn.LSTM, "gru": pyrnn.GRU}[cell](V, hidden, num_layers=layers)
        rnn.load_state_dict({k[4:]: np.asarray(v) for k, v in arrays.items() if k.startswith("rnn.")})
        self.rnn = rnn.freeze(precision=precision)
        self.fc = Linear(hidden, V).eval()
        self.fc.load_state_dict({k[3:]: np.asarray(v) for k, v in arrays.items() if k.startswith("fc.")})
        self.V = V

    def eval_loss(self, x_ids, y_ids, state):
        y, state = self.rnn(one_hot(x_ids, self.V), state)
        return softmax_cross_entropy(self.fc(y), y_ids)[0], state


def _import_torch_backend():
    try:
        import torch
    except ImportError:
        raise SystemExit("--backend torch needs PyTorch: pip install torch (or pyrnn[torch])") from None
    if _TORCH_NN:
        return torch, torch.nn
    try:
        return torch, importlib.import_module("pyrnn.torch")
    except ImportError as e:
        raise SystemExit(f"--backend torch needs pyrnn.torch, which this pyrnn installation does not have "
                         f"({e}); use --backend numpy") from None


class TorchModel:
    """pyrnn.torch.LSTM/GRU + torch.nn.Linear, trained with torch autograd and torch.optim.Adam.

    Starts from the NumPy model's initial weights (same seed, same numbers)."""

    def __init__(self, cell, V, hidden, layers, dropout, recurrent_dropout, rng, lr):
        torch, modules = _import_torch_backend()
        self.torch = torch
        self.cell, self.V, self.hidden, self.layers = cell, V, hidden, layers
        init = NumpyModel(cell, V, hidden, layers, 0.0, 0.0, rng, lr)  # the initial weights
        kw = {"recurrent_dropout": recurrent_dropout} if recurrent_dropout else {}
        try:
            rnn = getattr(modules, cell.upper())(V, hidden, num_layers=layers, dropout=dropout, **kw)
        except TypeError as e:
            raise SystemExit(f"--backend torch: {modules.__name__}.{cell.upper()} does not take these arguments "
                             f"({e})") from None
        self.net = torch.nn.ModuleDict({"rnn": rnn, "fc": torch.nn.Linear(hidden, V)})
        self.load_arrays(init.named_arrays())
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.gen_seed = int(rng.integers(2**62))
        torch.manual_seed(self.gen_seed)  # dropout masks come from torch's default generator

    def named_arrays(self):
        return {k: v.detach().numpy() for k, v in self.net.named_parameters()}

    def load_arrays(self, arrays):
        t = self.torch
        with t.no_grad():
            for k, p in self.net.named_parameters():
                p.copy_(t.from_numpy(np.asarray(arrays[k])))

    def _state_in(self, state):
        if state is None:
            return None
        t = self.torch
        return tuple(t.from_numpy(s) for s in state) if self.cell == "lstm" else t.from_numpy(state)

    def _state_out(self, state):
        return (tuple(s.detach().numpy().copy() for s in state) if self.cell == "lstm"
                else state.detach().numpy().copy())

    def _forward(self, x_ids, state):
        t = self.torch
        x = t.nn.functional.one_hot(t.from_numpy(x_ids), self.V).float()
        y, state = self.net["rnn"](x, self._state_in(state))
        return self.net["fc"](y), state

    def train_step(self, x_ids, y_ids, state, clip):
        t = self.torch
        self.net.train()
        logits, state = self._forward(x_ids, state)
        loss = t.nn.functional.cross_entropy(logits.reshape(-1, self.V), t.from_numpy(y_ids).reshape(-1))
        self.opt.zero_grad()
        loss.backward()
        norm = float(t.nn.utils.clip_grad_norm_(self.net.parameters(), clip))
        self.opt.step()
        return loss.detach().item(), norm, self._state_out(state)

    def eval_loss(self, x_ids, y_ids, state):
        t = self.torch
        self.net.eval()
        with t.no_grad():
            logits, state = self._forward(x_ids, state)
            loss = t.nn.functional.cross_entropy(logits.reshape(-1, self.V), t.from_numpy(y_ids).reshape(-1))
        return float(loss), self._state_out(state)

    def optimizer_state(self):
        names = [k for k, _ in self.net.named_parameters()]
        sd = self.opt.state_dict()
        out = {"step": 0}
        for i, name in enumerate(names):
            st = sd["state"].get(i)
            if st is None:
                continue
            out["step"] = int(st["step"])
            out[f"{name}/exp_avg"] = st["exp_avg"].numpy().copy()
            out[f"{name}/exp_avg_sq"] = st["exp_avg_sq"].numpy().copy()
        return out

    def load_optimizer_state(self, st):
        t = self.torch
        names = [k for k, _ in self.net.named_parameters()]
        sd = self.opt.state_dict()
        sd["state"] = {i: {"step": t.tensor(float(st["step"])),
                           "exp_avg": t.from_numpy(np.array(st[f"{n}/exp_avg"], np.float32)),
                           "exp_avg_sq": t.from_numpy(np.array(st[f"{n}/exp_avg_sq"], np.float32))}
                       for i, n in enumerate(names)}
        self.opt.load_state_dict(sd)

    def rng_state(self):
        return {"torch": self.torch.get_rng_state().numpy().tolist()}

    def set_rng_state(self, st):
        if "torch" in st:
            self.torch.set_rng_state(self.torch.tensor(st["torch"], dtype=self.torch.uint8))


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path, model, meta, state):
    arrays = {f"model/{k}": v for k, v in model.named_arrays().items()}
    opt = model.optimizer_state()
    arrays.update({f"optim/{k}": v for k, v in opt.items() if k != "step"})
    meta = dict(meta, optim_step=opt["step"], rng=model.rng_state())
    if state is not None:
        if isinstance(state, tuple):
            arrays["state/h"], arrays["state/c"] = state
        else:
            arrays["state/h"] = state
    arrays["meta"] = np.array(json.dumps(meta))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_checkpoint(path):
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        model = {k[6:]: z[k] for k in z.files if k.startswith("model/")}
        opt = {k[6:]: z[k] for k in z.files if k.startswith("optim/")}
        opt["step"] = meta["optim_step"]
        state = None
        if "state/h" in z.files:
            state = (z["state/h"], z["state/c"]) if "state/c" in z.files else z["state/h"]
    return meta, model, opt, state


# --------------------------------------------------------------------- sampling


def sample(arrays, cell, layers, vocab, prime, length, temperature, rng):
    """Generates `length` characters after `prime`, one step at a time through pyrnn's cells.

    Each layer's weights go into a cell; the priming string is fed in, then
    every sampled character is fed back as the next input."""
    V = len(vocab)
    cell_cls = {"lstm": pyrnn.LSTMCell, "gru": pyrnn.GRUCell}[cell]
    cells = []
    for k in range(layers):
        w = {name: arrays[f"rnn.{name}_l{k}"] for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        c = cell_cls(w["weight_ih"].shape[1], w["weight_hh"].shape[1]).eval()
        c.load_state_dict(w)
        cells.append(c)
    W, b = np.asarray(arrays["fc.weight"]), np.asarray(arrays["fc.bias"])
    states = [None] * layers

    def feed(char_id):  # one step through the stack; returns the top layer's h
        x = np.zeros(V, np.float32)
        x[char_id] = 1.0
        for k, c in enumerate(cells):
            states[k] = c(x, states[k])
            x = states[k][0] if cell == "lstm" else states[k]
        return x

    index = {ch: i for i, ch in enumerate(vocab)}
    unk = vocab.find(UNK)
    prime = prime or "\n"
    h = None
    for ch in prime:
        char_id = index.get(ch, unk)
        if char_id >= 0:  # (a character the model has never seen, with no UNK, is skipped)
            h = feed(char_id)
    if h is None:
        h = feed(index.get("\n", 0))
    out = []
    for _ in range(length):
        logits = (W @ h + b).astype(np.float64) / temperature
        char_id = int(rng.choice(V, p=softmax(logits)))
        out.append(vocab[char_id])
        h = feed(char_id)  # the model's own output is its next input
    return prime + "".join(out)


# ----------------------------------------------------------------- the loop


class Progress:
    """A one-line progress bar on stderr (only on a terminal)."""

    def __init__(self, total, start, enabled):
        self.total, self.start, self.enabled = total, start, enabled and sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last = 0.0

    def update(self, step, text):
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.last < 0.2 and step < self.total:
            return
        self.last = now
        done = step - self.start
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else 0.0
        frac = step / max(self.total, 1)
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        sys.stderr.write(f"\r[{bar}] {step}/{self.total} {text} {rate:.1f} it/s ETA {eta:4.0f}s ")
        sys.stderr.flush()

    def write(self, line):
        """Prints a line above the bar."""
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
        print(line, flush=True)

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def evaluate(model, x, y, seq_len):
    """Mean loss (nats/char) over the validation streams, state carried across chunks."""
    total, count, state = 0.0, 0, None
    for s in range(0, x.shape[1], seq_len):
        xs, ys = x[:, s:s + seq_len].T, y[:, s:s + seq_len].T
        loss, state = model.eval_loss(np.ascontiguousarray(xs), np.ascontiguousarray(ys), state)
        total += loss * ys.size
        count += ys.size
    return total / count


def precision_bits(arrays, args, V, x_va, y_va, fp32_bpc, precisions):
    """{"fp32": fp32_bpc, precision: validation bits/char with the recurrent weights at that precision}."""
    out = {"fp32": fp32_bpc}
    for prec in precisions:
        frozen = FrozenModel(arrays, args.cell, V, args.hidden, args.layers, prec)
        out[prec] = evaluate(frozen, x_va, y_va, args.seq_len) / LN2
    return out


def print_precision_table(bits):
    print("validation bits/char by weight precision (recurrent layers; the output Linear in float32):")
    print(f"  {'precision':<9s}  {'bits/char':>9s}  {'vs fp32':>8s}")
    for prec, b in bits.items():
        rel = "" if prec == "fp32" else f"{100.0 * (b - bits['fp32']) / bits['fp32']:+.2f}%"
        print(f"  {prec:<9s}  {b:9.4f}  {rel:>8s}")


def plot(history, baseline, path, title):
    plt = _common.pyplot()
    if plt is None:
        return None
    steps, train, val = zip(*history)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(steps, train, label="training (mean since last point)")
    ax.plot(steps, val, marker="o", ms=3, label="validation")
    ax.axhline(baseline, color="k", ls="--", lw=1, label="unigram baseline (validation)")
    ax.set_xlabel("training step")
    ax.set_ylabel("bits per character")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _common.save_figure(plt, fig, path)


def parse_args(argv):
    p = _common.parser(__doc__, "300k characters, 2x128, 500 steps at lr 1e-2 (about half a minute; CI runs it)")
    p.add_argument("--text", type=_common.existing_file,
                   help="a UTF-8 text file (default: the Python standard library's .py files)")
    p.add_argument("--max-chars", type=_common.positive_int,
                   help="use at most this many characters (default 3M; fast 300k)")
    p.add_argument("--min-count", type=_common.positive_int, default=10, help="rarer characters become one UNK symbol")
    p.add_argument("--val-frac", type=float, default=0.05, help="the text's tail kept for validation")
    p.add_argument("--val-chars", type=_common.positive_int,
                   help="validate on at most this many characters (default 150k; fast 40k)")
    p.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    p.add_argument("--layers", type=_common.positive_int, default=2)
    p.add_argument("--hidden", type=_common.positive_int, help="hidden units per layer (default 256; fast 128)")
    p.add_argument("--dropout", type=_common.probability, default=0.1, help="dropout between layers")
    p.add_argument("--recurrent-dropout", type=_common.probability, default=0.0, help="variational dropout on h_{t-1}")
    p.add_argument("--seq-len", type=_common.positive_int, default=64, help="truncated-BPTT chunk length")
    p.add_argument("--batch", type=_common.positive_int, default=32, help="parallel text streams")
    p.add_argument("--steps", type=_common.nonnegative_int,
                   help="total training steps (default 3000; fast 500); with --resume, "
                                             "the total including the checkpoint's")
    p.add_argument("--lr", type=_common.positive_float, help="Adam learning rate (default 5e-3; fast 1e-2)")
    p.add_argument("--clip", type=_common.positive_float, default=1.0, help="gradient-norm clipping threshold")
    p.add_argument("--eval-every", type=_common.positive_int, help="validate every this many steps (default steps/10)")
    p.add_argument("--checkpoint", type=_common.writable_path,
                   help="save a checkpoint here at every validation and at the end")
    p.add_argument("--resume", type=_common.existing_file,
                   help="continue from this checkpoint (its model settings and vocabulary win)")
    p.add_argument("--sample", type=_common.nonnegative_int, default=400,
                   help="characters to generate at the end (0: none)")
    p.add_argument("--prime", default="def ", help="priming string for the sample")
    p.add_argument("--temperature", type=_common.positive_float, default=0.7, help="sampling temperature")
    p.add_argument("--backend", choices=["numpy", "torch"], default="numpy")
    p.add_argument("--precisions", default="int8,bf16",
                   help="weight precisions of the recurrent layers to validate in beside float32, comma-separated "
                        "(int8, bf16; default int8,bf16; '' for none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common.add_run_options(p, __file__, threads_help="pyrnn threads (and torch's, for --backend torch)")
    args = p.parse_args(argv)
    fast = args.fast
    for name, full, quick in (("max_chars", 3_000_000, 300_000), ("val_chars", 150_000, 40_000),
                              ("hidden", 256, 128), ("steps", 3000, 500), ("lr", 5e-3, 1e-2)):
        if getattr(args, name) is None:
            setattr(args, name, quick if fast else full)
    if args.eval_every is None:
        args.eval_every = max(1, args.steps // 10)
    if not 0 < args.val_frac < 1:
        p.error("--val-frac must be in (0, 1)")
    if args.temperature <= 0:
        p.error("--temperature must be positive")
    args.precisions = [s.strip().lower() for s in args.precisions.split(",") if s.strip()]
    if not set(args.precisions) <= {"int8", "bf16"}:
        p.error(f"--precisions: int8 and/or bf16, got {','.join(args.precisions)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch_threads_before = None
    if args.threads and args.backend == "torch":
        try:
            import torch
        except ImportError:
            pass  # reported when the model is built
        else:
            torch_threads_before = torch.get_num_threads()
            torch.set_num_threads(args.threads)
    try:
        with _common.pyrnn_threads(args.threads):
            return _run(args)
    finally:
        if torch_threads_before is not None:
            sys.modules["torch"].set_num_threads(torch_threads_before)


def _run(args):
    ckpt = load_checkpoint(args.resume) if args.resume else None
    text, source = load_text(args.text, args.max_chars)
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
    if ckpt is not None:
        meta = ckpt[0]
        if meta["text_sha1"] != digest:
            raise SystemExit(f"--resume: the checkpoint was trained on another text ({meta['source']}, "
                             f"{meta['text_chars']} characters); give the same --text and --max-chars")
        for k in ("cell", "layers", "hidden", "seq_len", "batch", "val_frac", "min_count", "dropout",
                  "recurrent_dropout"):
            setattr(args, k, meta["args"][k])
        vocab = meta["vocab"]
    else:
        vocab = build_vocab(text, args.min_count)
    V = len(vocab)
    ids = encode(text, vocab)
    n_val = max(int(len(ids) * args.val_frac), args.seq_len + 2)
    train_ids, val_ids = ids[:-n_val], ids[-n_val:][:args.val_chars + 1]
    entropy, unigram_val = unigram_bits(train_ids, val_ids[1:], V)
    x_tr, y_tr = streams(train_ids, args.batch)
    x_va, y_va = streams(val_ids, min(args.batch, max(1, (len(val_ids) - 1) // (2 * args.seq_len))))
    chunks = x_tr.shape[1] // args.seq_len  # per epoch
    if chunks < 1:
        raise SystemExit(f"the training text ({len(train_ids)} characters) is shorter than --batch x --seq-len")

    init_rng = np.random.default_rng(np.random.SeedSequence(args.seed).spawn(1)[0])
    model_cls = TorchModel if args.backend == "torch" else NumpyModel
    model = model_cls(args.cell, V, args.hidden, args.layers, args.dropout, args.recurrent_dropout, init_rng,
                      args.lr)
    step, history, state = 0, [], None
    if ckpt is not None:
        meta, arrays, opt_state, state = ckpt
        model.load_arrays(arrays)
        if meta["backend"] == args.backend:
            model.set_rng_state(meta["rng"])
        model.load_optimizer_state(opt_state)
        step, history = meta["step"], [tuple(h) for h in meta["history"]]
        print(f"resumed from {args.resume} at step {step} ({meta['backend']} backend)")

    n_params = sum(int(np.size(v)) for v in model.named_arrays().values())
    print(f"char-rnn: {source}; {len(text):,} characters ({len(train_ids):,} train, {len(val_ids) - 1:,} "
          f"validation), vocabulary {V}")
    print(f"model: {args.layers}-layer {args.cell.upper()} of {args.hidden} ({n_params:,} parameters), "
          f"dropout {args.dropout}, recurrent dropout {args.recurrent_dropout}; backend {args.backend}")
    print(f"training: {args.steps} steps of {args.batch} x {args.seq_len} characters (truncated BPTT, state "
          f"carried across chunks), Adam lr {args.lr}, clip {args.clip}; seed {args.seed}; "
          f"{pyrnn.get_num_threads()} thread(s)")
    print(f"unigram baseline: entropy {entropy:.3f} bits/char (training), {unigram_val:.3f} on validation")

    meta = {"args": {k: getattr(args, k) for k in ("cell", "layers", "hidden", "seq_len", "batch", "val_frac",
                                                   "min_count", "dropout", "recurrent_dropout", "lr", "seed")},
            "vocab": vocab, "source": source, "text_sha1": digest, "text_chars": len(text),
            "backend": args.backend}
    progress = Progress(args.steps, step, not args.no_progress)
    t0 = time.perf_counter()
    window = []
    start_step = step
    val_bpc = history[-1][2] if history else None
    val_fresh = False  # val_bpc measured in this run on this validation text (not read from the checkpoint)
    while step < args.steps:
        pos = step % chunks
        if pos == 0:
            state = None  # a new epoch starts each stream at its beginning
        sl = slice(pos * args.seq_len, (pos + 1) * args.seq_len)
        xs = np.ascontiguousarray(x_tr[:, sl].T)
        ys = np.ascontiguousarray(y_tr[:, sl].T)
        loss, _, state = model.train_step(xs, ys, state, args.clip)
        step += 1
        window.append(loss / LN2)
        progress.update(step, f"train {np.mean(window[-50:]):.3f} bpc")
        if step % args.eval_every == 0 or step == args.steps:
            val_bpc = evaluate(model, x_va, y_va, args.seq_len) / LN2
            val_fresh = True
            history.append((step, float(np.mean(window)), val_bpc))
            window = []
            progress.write(f"  step {step:5d}  train {history[-1][1]:.3f} bpc  validation {val_bpc:.3f} bpc  "
                           f"({time.perf_counter() - t0:.0f} s)")
            if args.checkpoint:
                save_checkpoint(args.checkpoint, model, dict(meta, step=step, history=history), state)
    progress.close()
    seconds = time.perf_counter() - t0
    if val_bpc is None:  # nothing trained and no history: validate the loaded model
        val_bpc = evaluate(model, x_va, y_va, args.seq_len) / LN2
        val_fresh = True
    train_bpc = history[-1][1] if history else float("nan")
    if step > start_step:
        print(f"trained {step - start_step} steps in {seconds:.1f} s ({(step - start_step) / seconds:.1f} steps/s)")
    print(f"bits per character: training {train_bpc:.3f}, validation {val_bpc:.3f}; unigram baseline "
          f"{unigram_val:.3f} (validation), {entropy:.3f} (training entropy)")
    if args.checkpoint and step == start_step:
        save_checkpoint(args.checkpoint, model, dict(meta, step=step, history=history), state)
    if args.checkpoint:
        print(f"checkpoint: {args.checkpoint}")
    bits = None
    if args.precisions:
        # float32 as measured above; re-measured if it came from the checkpoint (whose validation text may differ)
        fp32 = val_bpc if val_fresh else evaluate(model, x_va, y_va, args.seq_len) / LN2
        bits = precision_bits(model.named_arrays(), args, V, x_va, y_va, fp32, args.precisions)
        print_precision_table(bits)

    text_out = None
    if args.sample > 0:
        rng = np.random.default_rng([args.seed, 7])
        text_out = sample(model.named_arrays(), args.cell, args.layers, vocab, args.prime, args.sample,
                          args.temperature, rng)
        print(f"\n--- sample (temperature {args.temperature}, primed with {args.prime!r}) ---")
        print(text_out)
        print("--- end of sample ---")
    if not args.no_plot and history:
        plot(history, unigram_val, args.plot,
                    f"char-rnn on {'the Python stdlib' if args.text is None else Path(args.text).name}: "
                    f"{args.layers}x{args.hidden} {args.cell.upper()}, {args.backend} backend")
    return {"train_bpc": train_bpc, "val_bpc": val_bpc, "unigram_bpc": unigram_val, "entropy_bpc": entropy,
            "history": history, "sample": text_out, "vocab": vocab, "step": step, "seconds": seconds,
            "precision_bits": bits}


if __name__ == "__main__":
    main()
