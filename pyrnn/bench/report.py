"""The report: text and markdown tables, header lines, footnotes, and plots (matplotlib, optional).

``rows`` are :func:`pyrnn.bench.runner.run_suite`'s, ``meta`` is
:func:`pyrnn.bench.cli.machine_info`'s with the measured peaks (and memory).
"""

from __future__ import annotations

import textwrap
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np

from .cases import MODES
from .peers import JAX_XLA_FLAGS
from .runner import CHECK_TOL, FP32_PEERS, SMALL_BATCH, check_tol, field

PEER_TITLES = {"torch": "PyTorch", "ort": "ONNX Runtime", "jax": "JAX", "torch-int8": "PyTorch dynamic int8",
               "reference": "NumPy reference"}
PEER_SHORT = {"torch": "torch", "ort": "ort", "jax": "jax", "torch-int8": "torch-int8",
              "reference": "ref"}  # table column headers
BEST = "best peer/pyrnn"
PLOT_HINT = 'pip install "pyrnn[plot]"'
LEFT_COLUMNS = ("case", "mode", "check")
SCALING_TITLE = "Speed-up over the fewest threads (same case and mode):"
PRECISION_TITLE = "pyrnn's reduced-precision inference, geometric means over the fwd rows (every thread count):"
RATIO_TITLES = {"vs_best_fp32": "best fp32 peer/{p}", "vs_torch_int8": "torch-int8/{p}"}
GROUP_TITLES = {"small_batch": f"at B <= {SMALL_BATCH}", "all": "over all", "lstm": "on LSTM rows"}

Row = dict[str, Any]
Column = Tuple[str, Callable[[Row], str]]  # (header, row -> cell text)


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _first_columns() -> list[Column]:
    return [
        ("case", lambda r: r["case"]),
        ("mode", lambda r: r["mode"]),
        ("thr", lambda r: _fmt(r["threads"], "d")),
        ("pyrnn ms", lambda r: _fmt(r["pyrnn_ms"], ".3f")),
    ]


def show_best(peers: Sequence[str]) -> bool:
    """The best-peer column: where more than one fp32 peer was asked for (with one, it is that peer's ratio)."""
    return sum(p in FP32_PEERS for p in peers) > 1


def best_cell(r: Row) -> str:
    """"0.97x ort": the fastest fp32 peer's ms over pyrnn's, and which peer it was."""
    if r.get("best_peer_ratio") is None:
        return "-"
    return f"{r['best_peer_ratio']:.2f}x {PEER_SHORT[r['best_peer']]}"


WHH = "W_hh GB/s (bound)"


def _whh(r: Row) -> str:
    if r.get("whh_gbs") is None:
        return ""
    return f"{r['whh_gbs']:.0f} ({r['bound_level']} {r['bound_gbs']:.0f})"


def low_precisions(meta: dict) -> list[str]:
    """The reduced precisions of pyrnn's inference that were asked for (--precision int8,bf16)."""
    return [p for p in meta.get("precisions", ()) if p != "fp32"]


def _best_low(p: str) -> Callable[[Row], str]:
    """"2.31x ort": the fastest fp32 peer's ms over pyrnn's in precision p, and which peer it was."""

    def cell(r: Row) -> str:
        ratio = r.get(f"{p}_vs_best_fp32")
        return "-" if ratio is None else f"{ratio:.2f}x {PEER_SHORT[r['best_peer']]}"

    return cell


def _cell(key: str, spec: str, suffix: str = "") -> Callable[[Row], str]:
    """A column's cell: the row's ``key`` formatted ("-" where it is None or absent)."""
    return lambda r: _fmt(r.get(key), spec, suffix)


def precision_columns(peers: Sequence[str], precisions: Sequence[str]) -> list[Column]:
    """Per reduced precision p: pyrnn's ms in it, pyrnn fp32/p, best fp32 peer/p (with an fp32 peer),
    torch-int8/int8 (with torch-int8), and the max and mean error of y against pyrnn's fp32 y."""
    columns: list[Column] = []
    for p in precisions:
        columns += [(f"{p} ms", _cell(f"pyrnn_{p}_ms", ".3f")), (f"pyrnn/{p}", _cell(f"{p}_vs_pyrnn_fp32", ".2f", "x"))]
        if any(peer in FP32_PEERS for peer in peers):
            columns.append((f"best fp32/{p}", _best_low(p)))
        if p == "int8" and "torch-int8" in peers:
            columns.append(("torch-int8/int8", _cell("int8_vs_torch_int8", ".2f", "x")))
        columns += [(f"{p} max err", _cell(f"{p}_max_err", ".1e")), (f"{p} mean err", _cell(f"{p}_mean_err", ".1e"))]
    return columns


def table_columns(peers: Sequence[str], rows: Sequence[Row] = (), precisions: Sequence[str] = ()) -> list[Column]:
    """The table's columns; peer columns only for the peers that ran; the W_hh
    bandwidth column only when a row has it; those of the reduced ``precisions`` asked for."""
    columns = _first_columns() + [
        ("GFLOP/s", lambda r: _fmt(r["pyrnn_gflops"], ".1f")),
        ("% peak", lambda r: _fmt(r["pct_peak"], ".1f", "%")),
    ]
    if any(r.get("whh_gbs") is not None for r in rows):
        columns.append((WHH, _whh))
    for peer in peers:
        columns += [(f"{PEER_SHORT[peer]} ms", lambda r, p=peer: _fmt(r[field(p, "ms")], ".3f")),
                    (f"{PEER_SHORT[peer]}/pyrnn", lambda r, p=peer: _fmt(r[field(p, "ratio")], ".2f", "x"))]
    if show_best(peers):
        columns.append((BEST, best_cell))
    columns += precision_columns(peers, precisions)
    columns.append(("check", lambda r: r["check"] if r["status"] == "ok" else r["status"]))
    return columns


def scaling_columns(peers: Sequence[str], base: dict[tuple, float]) -> list[Column]:
    """Columns of the speed-up table; base[(case, mode, framework)] is the time at the fewest threads."""

    def speedup(r: Row, fw: str) -> Optional[float]:
        b = base.get((r["case"], r["mode"], fw))
        return None if b is None or r[field(fw, "ms")] is None else b / r[field(fw, "ms")]

    columns = _first_columns() + [
        ("pyrnn speed-up", lambda r: _fmt(speedup(r, "pyrnn"), ".2f", "x")),
        ("% peak", lambda r: _fmt(r["pct_peak"], ".1f", "%")),
    ]
    for peer in peers:
        columns += [(f"{PEER_SHORT[peer]} ms", lambda r, p=peer: _fmt(r[field(p, "ms")], ".3f")),
                    (f"{PEER_SHORT[peer]} speed-up", lambda r, p=peer: _fmt(speedup(r, p), ".2f", "x")),
                    (f"{PEER_SHORT[peer]}/pyrnn", lambda r, p=peer: _fmt(r[field(p, "ratio")], ".2f", "x"))]
    return columns


def scaling_table(rows: Sequence[Row], peers: Sequence[str], markdown: bool = False) -> str:
    """Rows grouped by case and mode, thread counts ascending, with speed-ups."""
    timed = [r for r in rows if r["status"] == "ok" and r["pyrnn_ms"] is not None]
    first: dict[str, int] = {}
    for r in timed:
        first.setdefault(r["case"], len(first))
    timed.sort(key=lambda r: (first[r["case"]], MODES.index(r["mode"]), r["threads"]))
    base: dict[tuple, float] = {}
    for r in timed:  # fewest threads first
        for fw in ("pyrnn",) + tuple(peers):
            if r[field(fw, "ms")] is not None:
                base.setdefault((r["case"], r["mode"], fw), r[field(fw, "ms")])
    return format_table(timed, peers, markdown, scaling_columns(peers, base))


def format_table(rows: Sequence[Row], peers: Sequence[str], markdown: bool = False,
                 columns: Optional[list[Column]] = None, precisions: Sequence[str] = ()) -> str:
    columns = table_columns(peers, rows, precisions) if columns is None else columns
    cells = [[h for h, _ in columns]] + [[fn(r) for _, fn in columns] for r in rows]
    left = {i for i, (h, _) in enumerate(columns) if h in LEFT_COLUMNS}
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in cells]
        align = [":---" if i in left else "---:" for i in range(len(columns))]
        lines.insert(1, "|" + "|".join(align) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def peer_lines(meta: dict) -> list[str]:
    """The peers' versions, then one line per peer that could not be imported."""
    versions, unavailable = meta.get("versions", {}), meta.get("unavailable", {})
    ran = [f"{PEER_TITLES[p]} {versions[p]}" for p in meta["peers"] if versions.get(p)]
    numpy_own = "reference" in meta["peers"] and versions.get("reference")  # (NumPy's BLAS keeps its own threads)
    lines = [", ".join(ran) + " (same inputs and weights; the same thread count"
             + (", but for the NumPy reference, on NumPy's own threads)" if numpy_own else ")")] if ran else []
    for peer in meta["peers"]:
        why = unavailable.get(peer)
        if why is None:
            continue
        if why.endswith(" not importable"):
            why = why[:-len(" not importable")]
            lines.append(f"{PEER_TITLES[peer]} not importable ({why}): its columns show '-' "
                         f"(pip install \"pyrnn[bench]\" installs the peers)")
        else:
            lines.append(f"{PEER_TITLES[peer]} not run ({why}): its columns show '-'")
    return lines


def header_lines(meta: dict) -> list[str]:
    peaks = ", ".join(f"{t} thread{'s' if t > 1 else ''} {p:.1f} GFLOP/s" for t, p in meta["peak_gflops"].items())
    return [
        f"pyrnn {meta['pyrnn']['version']} benchmark, {meta['suite']}",
        f"machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores (load average "
        f"{meta['machine']['load_average_at_start']} at start); ISA {meta['pyrnn']['isa_selected']}; fp32"
        f"{''.join(f', pyrnn {p} inference' for p in low_precisions(meta))}; "
        f"threads {','.join(map(str, meta['threads']))}; {meta['date']}",
        *peer_lines(meta),
        f"measured FMA peak: {peaks}",
        f"command: {meta['command']}",
    ]


def _where(pairs: list[Tuple[str, str]], rows: Sequence[Row]) -> str:
    """Which rows a note is about: "every row", "all fwdbwd rows", or the cases with their modes."""
    everything = {(r["case"], r["mode"]) for r in rows}
    if set(pairs) == everything:
        return "every row"
    modes = sorted({m for _, m in pairs}, key=MODES.index)
    if set(pairs) == {(c, m) for c, m in everything if m in modes}:
        return f"all {'/'.join(modes)} rows"
    by_case: dict[str, list[str]] = {}
    for case, mode in pairs:
        by_case.setdefault(case, []).append(mode)
    return "; ".join(f"{case} ({', '.join(ms)})" for case, ms in by_case.items())


def not_run_notes(rows: Sequence[Row], meta: dict) -> list[str]:
    """One note per peer and reason it did not run on some rows (peers not importable are in the header),
    and per reduced precision of pyrnn's and reason."""
    timed = [r for r in rows if r["status"] == "ok"]
    notes = []
    for p in low_precisions(meta):
        why: dict[str, list[Tuple[str, str]]] = {}
        for r in timed:
            note = r.get(field(f"pyrnn-{p}", "note"))
            if note and (r["case"], r["mode"]) not in why.get(note, []):
                why.setdefault(note, []).append((r["case"], r["mode"]))
        notes += [f"pyrnn {p} not run ({note}): {_where(pairs, timed)}." for note, pairs in why.items()]
    for peer in meta["peers"]:
        if peer in meta.get("unavailable", {}):
            continue
        reasons: dict[str, list[Tuple[str, str]]] = {}
        for r in timed:
            note = r[field(peer, "note")]
            if note and (r["case"], r["mode"]) not in reasons.get(note, []):
                reasons.setdefault(note, []).append((r["case"], r["mode"]))
        for note, pairs in reasons.items():
            notes.append(f"{PEER_TITLES[peer]} not run ({note}): {_where(pairs, timed)}.")
    return notes


def method_notes(meta: dict) -> list[str]:
    """How each peer beyond PyTorch ran."""
    peers, isolated = meta["peers"], meta.get("isolated", True)
    notes = []
    if "ort" in peers:
        notes.append("ort = ONNX Runtime: the torch.nn layer with the case's weights exported by torch.onnx.export "
                     "(TorchScript exporter, dynamo=False), run by an InferenceSession (CPU provider, "
                     "intra_op_num_threads = the thread count, inter_op_num_threads = 1); inference only, so its "
                     "fwdbwd rows show '-'.")
    if "jax" in peers:
        threads = ("XLA's CPU backend has no per-call thread count: the JAX worker was pinned to the first N "
                   "cores for N threads and started with XLA_FLAGS=" + JAX_XLA_FLAGS.format(n="N") + "."
                   if isolated else "JAX ran in this process (--in-process) with its default threads.")
        notes.append("jax = JAX: jax.jit of one lax.scan per layer and direction over a jax.numpy cell with "
                     "PyTorch's equations, gate order and weights (the input projection one GEMM over all steps); "
                     "fwdbwd = jax.vjp of y with cotangent dy (the gradient of sum(y*dy)) with respect to x and "
                     f"every weight. {threads}")
    if "torch-int8" in peers:
        notes.append("torch-int8 = torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.GRU}, "
                     "dtype=torch.qint8): INT8 weights, activations quantized per call, so not an fp32 peer; "
                     "inference of LSTM and GRU only, and left out of the best peer.")
    if "reference" in peers:
        notes.append("reference = pyrnn.reference (NumPy, fp32); its BLAS threads are NumPy's own, not --threads.")
    low = low_precisions(meta)
    if low:
        kinds = {"int8": "int8 = W_ih and W_hh as int8 with a scale per row, the activations they multiply (x, h) "
                         "quantized per row at each call and step, sums in int32 (as torch's quantize_dynamic)",
                 "bf16": "bf16 = W_ih and W_hh as bfloat16, activations and sums in fp32"}
        ratios = [f"pyrnn/{p} = pyrnn's fp32 ms over its {p} ms" for p in low]
        if any(p in FP32_PEERS for p in peers):
            ratios.append("best fp32/X = the fastest fp32 peer's ms on the row over pyrnn's in precision X (and "
                          "which peer)")
        if "int8" in low and "torch-int8" in peers:
            ratios.append("torch-int8/int8 = torch-int8 ms over pyrnn int8's")
        notes.append(f"{', '.join(low)} (--precision): pyrnn's inference with its weights packed once in reduced "
                     "precision (layer.freeze(precision=...), functional.pack_weights(precision=...)), timed in "
                     "pyrnn's worker, its calls interleaved with the fp32 ones on the same inputs; "
                     + "; ".join(kinds[p] for p in low) + "; biases and the gates' math stay fp32. "
                     + "; ".join(ratios) + ". max err, mean err: |y - y fp32| against pyrnn's own fp32 output "
                     "for the same inputs (the mean over the valid steps); they differ by the weights' "
                     "(and for int8 the activations') rounding. Inference only (fwdbwd rows show '-'), float32 "
                     "weights only (float64 cases show '-').")
    return notes


def footnotes(rows: Sequence[Row], meta: dict) -> list[str]:
    peers = meta["peers"]
    if meta.get("isolated", True):
        processes = ("Each framework ran in a process of its own, one per framework and thread count (all cases), "
                     "one after another, pinned with sched_setaffinity to the first N cores for N threads, so that "
                     "no framework's idle threads spin beside another's calls"
                     + (" (the NumPy reference ran in the parent process)." if "reference" in peers else "."))
    else:
        processes = "All frameworks ran in this process (--in-process), unpinned, one after another."
    tol = f"< {CHECK_TOL:g}"
    if "torch-int8" in peers:
        tol += f" (torch-int8, being int8: < {check_tol('torch-int8'):g})"
    notes = [
        "GFLOP/s counts 2*N*G*H*(I+H) per layer and direction (G = 4 LSTM, 3 GRU, 1 RNN; N = B*T), "
        "x3 for fwdbwd; % peak is of the measured FMA peak at that thread count.",
        "fwd = inference (training=False, pyrnn's recurrent weights packed once: layer.freeze() or "
        "functional.pack_weights, as an ONNX Runtime session packs once; torch under no_grad); "
        "fwdbwd = forward(training=True) + backward "
        "with dy = ones (torch: y.backward(dy), x requiring grad). Times are medians after warm-up; the FMA peak "
        "is the best of 5 measurements.",
        processes,
        "X/pyrnn = X ms / pyrnn ms: above 1 means pyrnn is faster."
        + (f" {BEST}: the fastest fp32 peer's ms on the row ({', '.join(p for p in FP32_PEERS if p in peers)}) "
           "over pyrnn's, and which peer it was." if show_best(peers) else ""),
        f"check: each peer's y (and dx for fwdbwd) vs pyrnn's, max abs diff / max(1, max|peer|) {tol}.",
    ]
    if any(r.get("whh_gbs") is not None for r in rows):
        bw = "; ".join(f"{t} thread{'s' if int(t) > 1 else ''}: " + ", ".join(f"{k} {v['gbs']:.0f}" for k, v in lv.items())
                       for t, lv in meta.get("bandwidth_gbs", {}).items())
        notes.append(f"{WHH} (inference, B <= 8, where a step reads all of W_hh for few FLOPs): the GB/s at which "
                     "pyrnn's calls read the recurrent weights (G*H*H*4 bytes per layer, direction and step, over "
                     "the whole call's time), and the bound: the measured read bandwidth (pyrnn.memory_bandwidth) "
                     f"of the level one thread's share of W_hh fits in. Measured GB/s: {bw}.")
    if any(r["lengths"] for r in rows):
        given = ["torch gets a PackedSequence (pack_padded_sequence(enforce_sorted=False), padded back with "
                 "pad_packed_sequence)"]
        if "torch-int8" in peers:
            given.append("torch-int8 the same")
        if "ort" in peers:
            given.append("ort the lengths as the ONNX sequence_lens input")
        if "jax" in peers:
            given.append("jax a mask (all T steps computed, the state held and y zeroed past each length)")
        notes.append("* variable lengths: N = sum of lengths (valid steps only); " + "; ".join(given) + ".")
    notes += method_notes(meta)
    for case, impl in sorted({(r["case"], r["impl"]) for r in rows if r["layers"] > 1 or r["bidirectional"]}):
        how = ("pyrnn.LSTM/GRU/RNN layer" if impl == "layer"
               else "chained pyrnn.functional calls (one per layer and direction)")
        notes.append(f"{case}: pyrnn runs {how}.")
    load, cores = meta["machine"].get("load_average_at_end"), meta["machine"]["cores"]
    if load is not None and load > cores + 1:
        notes.append(f"WARNING: the machine was busy (1-min load average {load} at the end on {cores} cores, this "
                     f"run using at most {max(meta['threads'])}): other processes competed; timings are unreliable.")
    mem = meta.get("memory")
    if mem:
        fmt = lambda v: "failed" if v is None else f"{v:.0f} MiB"
        notes.append(f"memory, one training step of {mem['shape']} (peak RSS growth in a fresh process): pyrnn "
                     f"{fmt(mem.get('pyrnn'))}, PyTorch {fmt(mem.get('torch')) if 'torch' in mem else '-'}; "
                     f"x, y, 4 gates and c per step alone are {mem['saved_activations_mib']:.0f} MiB.")
    return notes + not_run_notes(rows, meta)


def _geo(d: dict) -> str:
    n = d["rows"]
    return f"{'-' if d['geomean'] is None else format(d['geomean'], '.2f') + 'x'} ({n} row{'' if n == 1 else 's'})"


def precision_lines(meta: dict) -> list[str]:
    """One line per reduced precision: geometric means of its speed ratios at B <= 8 and over all fwd rows
    (meta["precision_summary"], runner.precision_summary), and whether its targets are met."""
    lines = []
    for p, summary in meta.get("precision_summary", {}).items():
        parts = []
        for ratio, groups in summary.items():
            if ratio == "targets":
                continue
            title = RATIO_TITLES[ratio].format(p=p)
            if ratio == "vs_torch_int8" and "torch-int8" not in meta["peers"]:
                parts.append(f"{title} - (torch-int8 not in --peers)")
                continue
            if ratio == "vs_best_fp32" and not any(peer in FP32_PEERS for peer in meta["peers"]):
                parts.append(f"{title} - (no fp32 peer in --peers)")
                continue
            parts.append(f"{title} " + ", ".join(f"{_geo(d)} {GROUP_TITLES[g]}" for g, d in groups.items()))
        targets = [f"{RATIO_TITLES[t['ratio']].format(p=p)} >= {t['target']:g}x {GROUP_TITLES[t['rows']]}: "
                   + ("not measured" if t["met"] is None else "met" if t["met"] else "NOT met")
                   for t in summary["targets"]]
        lines.append(f"{p}: " + "; ".join(parts) + (f" (targets: {', '.join(targets)})" if targets else ""))
    return lines


def show_scaling(meta: dict) -> bool:
    return meta["suite"].startswith("scaling") or len(meta["threads"]) > 2


def render_text(rows: Sequence[Row], meta: dict) -> str:
    notes = [textwrap.fill(n, 110, initial_indent="  ", subsequent_indent="    ") for n in footnotes(rows, meta)]
    scaling = ["", SCALING_TITLE, scaling_table(rows, meta["peers"])] if show_scaling(meta) else []
    summary = precision_lines(meta)
    if summary:
        summary = ["", PRECISION_TITLE] + [textwrap.fill(line, 110, initial_indent="  ", subsequent_indent="    ")
                                           for line in summary]
    table = format_table(rows, meta["peers"], precisions=low_precisions(meta))
    return "\n".join(header_lines(meta) + ["", table] + scaling + summary + [""] + notes)


def render_markdown(rows: Sequence[Row], meta: dict) -> str:
    head = header_lines(meta)
    scaling = (["", SCALING_TITLE, "", scaling_table(rows, meta["peers"], markdown=True)]
               if show_scaling(meta) else [])
    summary = precision_lines(meta)
    if summary:
        summary = ["", PRECISION_TITLE, "", *(f"- {line}" for line in summary)]
    return "\n".join([f"## {head[0]}", "", *(f"- {line}" for line in head[1:]), "",
                      format_table(rows, meta["peers"], markdown=True, precisions=low_precisions(meta)), *scaling,
                      *summary, "", *(f"- {n}" for n in footnotes(rows, meta))]) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: str, title: str) -> None:
    # (wrapped to the figure's width: one thread panel clipped the title at both edges)
    fig.suptitle("\n".join(textwrap.wrap(title, max(40, int(fig.get_figwidth() * 12)))), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_best_peer_plot(path: str, rows: Sequence[Row], meta: dict) -> None:
    """With several fp32 peers: the fastest peer's time over pyrnn's per case and mode (above 1:
    pyrnn is faster), a panel per thread count, each bar labelled with that peer."""
    plt = _pyplot()
    threads = meta["threads"]
    per_thread = {t: [r for r in rows if r["threads"] == t and r.get("best_peer_ratio") is not None]
                  for t in threads}
    n = max([len(sub) for sub in per_thread.values()] + [1])
    fig, axes = plt.subplots(1, len(threads), figsize=(4.2 * len(threads) + 3.0, 0.32 * n + 1.6),
                             sharey=True, squeeze=False)
    for ax, t in zip(axes[0], threads):
        sub = per_thread[t]
        ys = np.arange(len(sub))[::-1]
        vals = [r["best_peer_ratio"] for r in sub]
        ax.barh(ys, vals, color=["tab:green" if v >= 1 else "tab:red" for v in vals])
        for y, v, r in zip(ys, vals, sub):
            ax.text(v, y, f" {v:.2f}x {PEER_SHORT[r['best_peer']]}", va="center", fontsize=7)
        ax.axvline(1.0, color="k", linewidth=0.8)
        ax.set_xlim(0, max(vals + [1.0]) * 1.35)
        ax.set_xlabel("fastest fp32 peer's time / pyrnn's")
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}")
        if ax is axes[0][0]:
            ax.set_yticks(ys)
            ax.set_yticklabels([f"{r['case']} {r['mode']}" for r in sub], fontsize=7)
    unavailable = meta.get("unavailable", {})
    peers = ", ".join(PEER_TITLES.get(p, p) for p in meta["peers"] if p in FP32_PEERS and p not in unavailable)
    _save(plt, fig, path, f"pyrnn {meta['pyrnn']['version']} fp32 against {peers}, "
          f"{meta['machine']['cpu']} ({meta['suite']})")


def write_scaling_plot(path: str, rows: Sequence[Row], meta: dict) -> None:
    """GFLOP/s against threads, one panel per case and mode, a line per framework."""
    plt = _pyplot()
    frameworks = ["pyrnn"] + list(meta["peers"])
    rows = [r for r in rows if r["status"] == "ok" and r["pyrnn_gflops"] is not None]
    panels = list(dict.fromkeys((r["case"], r["mode"]) for r in rows))
    threads = sorted(meta["peak_gflops"])
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 4), squeeze=False)
    for ax, (case, mode) in zip(axes[0], panels):
        sub = sorted((r for r in rows if (r["case"], r["mode"]) == (case, mode)), key=lambda r: r["threads"])
        for fw in frameworks:
            pts = [(r["threads"], r[field(fw, "gflops")]) for r in sub if r[field(fw, "gflops")] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=PEER_TITLES.get(fw, fw))
        ax.plot(threads, [meta["peak_gflops"][t] for t in threads], "k--", label="FMA peak")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(threads)
        ax.set_xticklabels([str(t) for t in threads])
        ax.set_xlabel("threads")
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"{case} {mode}", fontsize=9)
        ax.legend(fontsize=7)
    _save(plt, fig, path, f"pyrnn {meta['pyrnn']['version']} fp32 scaling, {meta['machine']['cpu']}")


def write_plot(path: str, rows: Sequence[Row], meta: dict) -> None:
    """A bar chart of GFLOP/s per case and mode, a panel per thread count (the scaling suite: GFLOP/s
    against threads)."""
    if meta["suite"].startswith("scaling"):
        return write_scaling_plot(path, rows, meta)
    if show_best(meta["peers"]):
        return write_best_peer_plot(path, rows, meta)
    plt = _pyplot()
    frameworks = ["pyrnn"] + list(meta["peers"])
    threads = meta["threads"]
    per_thread = {t: [r for r in rows if r["threads"] == t and r["pyrnn_gflops"] is not None] for t in threads}
    width_in = max(8.0, 0.45 * len(frameworks) * max(len(sub) for sub in per_thread.values()))
    fig, axes = plt.subplots(len(threads), 1, figsize=(width_in, 5 * len(threads)), squeeze=False)
    for ax, t in zip(axes[:, 0], threads):
        sub = per_thread[t]
        xs = np.arange(len(sub))
        width = 0.8 / len(frameworks)
        for k, fw in enumerate(frameworks):
            vals = [r[field(fw, "gflops")] or 0.0 for r in sub]
            ax.bar(xs + (k - (len(frameworks) - 1) / 2) * width, vals, width, label=PEER_TITLES.get(fw, fw))
        ax.axhline(meta["peak_gflops"][t], color="k", linestyle="--", label=f"FMA peak ({t} thr)")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{r['case']}\n{r['mode']}" for r in sub], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}")
        ax.legend(fontsize=8)
    _save(plt, fig, path, f"pyrnn {meta['pyrnn']['version']} fp32, {meta['machine']['cpu']} ({meta['suite']})")
