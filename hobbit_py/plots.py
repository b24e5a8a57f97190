"""Pictures: the speed/quality Pareto plot of `hobbit bench` and the trace heat map of `hobbit plot`.

matplotlib is an optional dependency (`pip install 'hobbit[plot]'`), imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hobbit_py._lib import HobbitError
from hobbit_py.trace import OUTCOMES, Trace

OUTCOME_COLOURS = {
    "hit_hi": "#1b7837", "hit_lo": "#7fbf7b", "load_hi": "#c51b7d", "load_lo": "#f1a6c9",
    "skip": "#404040", "prefetch_hi": "#2166ac", "prefetch_lo": "#92c5de",
    "cpu_hi": "#e08214", "cpu_lo": "#fdb863",
}
OUTCOME_LABELS = {
    "hit_hi": "hit hi", "hit_lo": "hit lo", "load_hi": "load hi", "load_lo": "load lo",
    "skip": "skipped", "prefetch_hi": "prefetched hi", "prefetch_lo": "prefetched lo",
    "cpu_hi": "CPU hi", "cpu_lo": "CPU lo",
}
MARKERS = {"B-mmap": "s", "B-lru": "^", "B-lru + prefetch": "v", "HOBBIT no prefetch": "P",
           "HOBBIT": "*", "eviction": "x", "B-static": "D", "B-resident": "o"}
COLOURS = {"B-mmap": "#1f77b4", "B-lru": "#ff7f0e", "B-lru + prefetch": "#bcbd22",
           "HOBBIT no prefetch": "#17becf", "HOBBIT": "#2ca02c", "eviction": "#9467bd",
           "B-static": "#d62728", "B-resident": "grey"}


def require_matplotlib() -> Any:
    """pyplot on the Agg backend, or a one-line error saying how to install it."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise HobbitError("plots need matplotlib: pip install 'hobbit[plot]' "
                          "(or pass --no-plot)") from None
    return plt


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower x, higher y), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _kind(variant: str) -> str:
    """The legend entry of a row: B-static and the eviction ablations share one each."""
    for prefix in ("B-static", "eviction"):
        if variant.startswith(prefix):
            return prefix
    return variant


def pareto_plot(result: Any, png: Path) -> Path:
    """Decode tok/s against KL vs all-hi, one panel per budget, the front of the variants that
    fit that budget's memory drawn; B-resident (more memory) is shown for reference only."""
    plt = require_matplotlib()
    labels = list(dict.fromkeys(r.budget for r in result.rows if r.budget is not None))
    top = max(r.decode_tok_s for r in result.rows) * 1.15
    ncols = min(len(labels), 2)
    nrows = (len(labels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.4 * nrows + 0.8), sharey=True,
                             squeeze=False)
    kls = [r.kl_mean for r in result.rows if r.kl_mean]
    linthresh = 10.0 ** np.floor(np.log10(min(kls))) if kls else 1e-4
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(labels):]:
        ax.set_visible(False)
    for ax, label in zip(flat, labels):
        rows = [r for r in result.rows if r.budget == label]
        rows += [r for r in result.rows if r.variant.startswith("B-static") and r.fits.get(label)]
        points = [(r.kl_mean or 0.0, r.decode_tok_s) for r in rows]
        for i, (r, (x, y)) in enumerate(zip(rows, points)):
            kind = _kind(r.variant)
            ax.scatter([x], [y], marker=MARKERS[kind], color=COLOURS[kind], zorder=3,
                       s=180 if kind == "HOBBIT" else 60,
                       label=kind if kind != "B-static" else "B-static (uniform low-bit, fits)")
            if kind != "eviction":  # the ablations crowd HOBBIT's point; the legend names them
                name = r.variant.removeprefix("B-static ") if kind == "B-static" else r.variant
                ax.annotate(name, (x, y), textcoords="offset points", fontsize=8,
                            xytext=(6, 6 if i % 2 == 0 else -12))  # neighbours alternate
        front = pareto_front(points)
        if front:
            xs = [points[i][0] for i in front]
            ys = [points[i][1] for i in front]
            ax.step(xs, ys, where="post", color="black", lw=1, ls="--", zorder=2,
                    label="Pareto front (variants that fit)")
        ref = next((r for r in result.rows if r.variant == "B-resident"), None)
        if ref is not None:
            ax.scatter([0.0], [ref.decode_tok_s], marker="o", facecolors="none",
                       edgecolors=COLOURS["B-resident"], s=60, zorder=3,
                       label="B-resident (all in RAM: more memory, reference)")
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_xlim(left=-0.2 * linthresh, right=max(kls) * 4 if kls else 10 * linthresh)
        ax.set_ylim(0, top)
        cap = result.caps[label].split(" at ")[0]
        ax.set_title(f"expert budget {label} (memory cap {cap})", fontsize=10)
        ax.set_xlabel("KL divergence vs all-hi, nats/token (symlog)")
        ax.set_ylabel("decode tokens/s (median)")
        ax.grid(True, alpha=0.3)
    unique: dict[str, Any] = {}
    for ax in flat[:len(labels)]:
        handles, names = ax.get_legend_handles_labels()
        unique.update({n: h for n, h in zip(names, handles) if n not in unique})
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=3, fontsize=8,
               frameon=False)
    fig.suptitle(f"{Path(result.model).name}: decode speed against quality\n{result.date}, "
                 f"{result.machine.split(':')[0]}; up and left is better", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 0.94))
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def trace_heatmap(trace: Trace, png: Path, title: str = "") -> Path:
    """Heat map of what each route got (rows: layer x expert, columns: tokens), with the
    outcome counts per token below."""
    plt = require_matplotlib()
    from matplotlib.colors import ListedColormap  # noqa: PLC0415

    n_layer, n_expert, n_tokens = trace.n_layer, trace.n_expert, trace.n_tokens
    grid = np.full((n_layer * n_expert, n_tokens), np.nan)
    counts = np.zeros((len(OUTCOMES), n_tokens))
    code = {o: i for i, o in enumerate(OUTCOMES)}
    for e in trace.events:
        grid[e.layer * n_expert + e.expert, e.token] = code[e.outcome]
        counts[code[e.outcome], e.token] += 1
    cmap = ListedColormap([OUTCOME_COLOURS[o] for o in OUTCOMES])
    cmap.set_bad("white")
    width = min(max(6.0, n_tokens * 0.12 + 2.5), 24.0)
    height = min(max(3.5, n_layer * n_expert * 0.09 + 2.5), 16.0)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(width, height), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.imshow(np.ma.masked_invalid(grid), aspect="auto", interpolation="nearest", cmap=cmap,
               vmin=-0.5, vmax=len(OUTCOMES) - 0.5, extent=(-0.5, n_tokens - 0.5,
                                                            n_layer * n_expert - 0.5, -0.5))
    for layer in range(1, n_layer):
        top.axhline(layer * n_expert - 0.5, color="black", lw=0.6)
    top.set_yticks([layer * n_expert + (n_expert - 1) / 2 for layer in range(n_layer)])
    top.set_yticklabels([f"layer {layer}" for layer in range(n_layer)])
    top.set_ylabel(f"expert (0-{n_expert - 1} within each layer)")
    decode = [e.token for e in trace.events if e.phase == "decode"]
    if decode:
        for ax in (top, bottom):
            ax.axvline(min(decode) - 0.5, color="black", lw=1, ls=":")
        top.annotate("decode →", (min(decode) - 0.5, -0.5), xytext=(4, 4),
                     textcoords="offset points", fontsize=8, va="bottom")
    tokens = np.arange(n_tokens)
    base = np.zeros(n_tokens)
    for i, outcome in enumerate(OUTCOMES):
        if counts[i].any():
            bottom.bar(tokens, counts[i], bottom=base, width=1.0, color=OUTCOME_COLOURS[outcome],
                       label=OUTCOME_LABELS[outcome])
            base += counts[i]
    bottom.set_xlabel("token position")
    bottom.set_ylabel("routes")
    bottom.set_xlim(-0.5, n_tokens - 0.5)
    # the outcomes of the cache's tier (the CPU ones exist only on the GPU tier), and any present
    shown = [o for i, o in enumerate(OUTCOMES) if counts[i].any() or not o.startswith("cpu_")]
    handles = [plt.Rectangle((0, 0), 1, 1, color=OUTCOME_COLOURS[o]) for o in shown]
    fig.legend(handles, [OUTCOME_LABELS[o] for o in shown], loc="lower center", fontsize=8,
               ncol=len(shown), frameon=False)
    fig.suptitle(f"what each route got from the expert cache{': ' + title if title else ''}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
