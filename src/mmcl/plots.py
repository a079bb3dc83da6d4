"""The figures of a run's report: the accuracy matrix and the expert usage per task.

Each function builds a matplotlib Figure from ``results.json``'s contents and returns it
(mmcl.report saves it). Figures use matplotlib's Agg canvas directly (no pyplot), so the
caller's backend and global state are left alone. Tasks, blocks and experts are numbered from
1, as in the log and the report (results.json stores them as 0-based list positions).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .results import accuracy_matrix, freeze_threshold, pct, run_metrics, run_title

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# ---------------------------------------------------------------------------------------------
# Figures
def accuracy_matrix_figure(results: dict) -> Figure:
    """Heatmap of R: rows = after training task t, columns = task i, upper triangle grey."""
    import matplotlib

    R = accuracy_matrix(results) or []
    T = max(len(R), max((len(r) for r in R), default=0))
    A = np.full((len(R), T), np.nan)
    for t, row in enumerate(R):
        for i, v in enumerate(row[: t + 1]):  # above the diagonal stays blank
            if v is not None:
                A[t, i] = v

    size = min(max(4.5, 0.6 * T + 2.5), 14)
    fig = _new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e0e0e0")
    im = ax.imshow(np.ma.masked_invalid(A), cmap=cmap, vmin=0.0, vmax=1.0)
    fontsize = max(5, min(10, 90 // max(T, 1)))
    for t in range(A.shape[0]):
        for i in range(T):
            if not np.isnan(A[t, i]):
                ax.text(i, t, f"{100 * A[t, i]:.1f}", ha="center", va="center", fontsize=fontsize,
                        color="white" if A[t, i] < 0.55 else "black")
    labels = [str(i + 1) for i in range(T)]
    ax.set_xticks(range(T), labels)
    ax.set_yticks(range(A.shape[0]), labels[: A.shape[0]])
    ax.set_xlabel("evaluated on task i")
    ax.set_ylabel("after training task t")
    metrics, _ = run_metrics(results)
    ax.set_title(f"{results.get('preset', '?')} / {results.get('method', '?')} / "
                 f"seed {results.get('seed', '?')}\nacc_last = {pct(metrics.get('acc_last'))}",
                 fontsize=11)
    cbar = fig.colorbar(im, ax=ax, shrink=0.8)
    cbar.set_label("accuracy")
    cbar.set_ticks([0, 0.25, 0.5, 0.75, 1.0], labels=["0%", "25%", "50%", "75%", "100%"])
    return fig


def expert_usage_figure(results: dict) -> Figure:
    """One panel per adapter block: usage share of each expert, one bar per task.

    Bars of experts frozen after that task are hatched with a black edge; the dashed red
    line is the freezing threshold from the config (when recorded).
    """
    import matplotlib

    usage = results["expert_usage"]
    frozen = results.get("frozen_experts") or []
    T = len(usage)
    B = max(len(u) for u in usage)
    E = max((len(b) for u in usage for b in u), default=0)
    threshold = freeze_threshold(results)

    width = min(max(7.0, 0.2 * E * T + 3.0), 18.0)
    fig = _new_figure(width, 2.4 * B + 1.0)
    axes = fig.subplots(B, 1, sharex=True, squeeze=False)[:, 0]
    colors = matplotlib.colormaps["viridis"](np.linspace(0.05, 0.9, max(T, 1)))
    bar_w = 0.8 / max(T, 1)
    x = np.arange(E)
    ymax = max([threshold or 0.0] + [v for u in usage for b in u for v in b if v is not None])
    for b, ax in enumerate(axes):
        for t in range(T):
            shares = usage[t][b] if b < len(usage[t]) else []
            vals = [v if v is not None else 0.0 for v in shares] + [0.0] * (E - len(shares))
            frozen_now = set(frozen[t][b]) if t < len(frozen) and b < len(frozen[t]) else set()
            pos = x - 0.4 + bar_w * (t + 0.5)
            bars = ax.bar(pos, vals, width=bar_w, color=colors[t])
            for e, bar in enumerate(bars):
                if e in frozen_now:
                    bar.set_hatch("///")
                    bar.set_edgecolor("black")
                    bar.set_linewidth(0.8)
        if threshold is not None:
            ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1.2)
        ax.set_ylim(0, ymax * 1.15 if ymax > 0 else 1.0)
        ax.set_ylabel(f"block {b + 1}\nusage share")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(x, [str(e + 1) for e in range(E)])
    axes[-1].set_xlabel("expert")

    # Legend: tasks, then the meaning of hatching and of the dashed line.
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list = [Patch(facecolor=colors[t], label=f"task {t + 1}") for t in range(T)]
    if frozen:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="///",
                             label="frozen after this task"))
    if threshold is not None:
        handles.append(Line2D([], [], color="tab:red", linestyle="--",
                              label=f"freeze threshold {threshold:g}"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    fig.suptitle(f"Expert usage per task: {run_title(results)}", fontsize=11)
    return fig




_MARKERS = "os^Dv<>PX*hp"


def _class_colors(n: int):
    import matplotlib
    if n <= 10:
        return matplotlib.colormaps["tab10"](np.arange(n))
    if n <= 20:
        return matplotlib.colormaps["tab20"](np.arange(n))
    return matplotlib.colormaps["hsv"](np.linspace(0, 1, n, endpoint=False))


def tsne_figure(rows: list[dict], title: str) -> Figure:
    """t-SNE of the test samples' representations (mmcl.representations.tsne_panels): one row
    per stored task; left z_joint, coloured by class and marked by the task the sample belongs
    to; right every modality's z_k embedded together, coloured by class, marked by modality."""
    from matplotlib.lines import Line2D

    n_classes = max([len(r["classes"]) for r in rows] + [int(r["label"].max()) + 1 for r in rows])
    colors = _class_colors(n_classes)
    fig = _new_figure(13.0, 5.2 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for r, (ax_j, ax_m) in zip(rows, axes):
        tasks = sorted({int(x) for x in r["task"]})
        for k, t in enumerate(tasks):
            sel = r["task"] == t
            ax_j.scatter(r["joint"][sel, 0], r["joint"][sel, 1], c=colors[r["label"][sel]], s=14,
                         marker=_MARKERS[k % len(_MARKERS)], linewidths=0.2, edgecolors="black", alpha=0.85)
        ax_j.set_title(f"z_joint after task {r['after']} (marker: task)", fontsize=10)
        if r["mod_xy"] is not None:
            for k in range(len(r["modalities"])):
                sel = r["mod_index"] == k
                ax_m.scatter(r["mod_xy"][sel, 0], r["mod_xy"][sel, 1], c=colors[r["mod_label"][sel]], s=12,
                             marker=_MARKERS[k % len(_MARKERS)], linewidths=0.2, edgecolors="black", alpha=0.8)
        ax_m.set_title(f"per-modality z_k after task {r['after']} (marker: modality)", fontsize=10)
        for ax in (ax_j, ax_m):
            ax.set_xticks([])
            ax.set_yticks([])
        handles = [Line2D([], [], linestyle="", marker=_MARKERS[k % len(_MARKERS)], color="grey",
                          label=f"task {t}") for k, t in enumerate(tasks)]
        ax_j.legend(handles=handles, fontsize=7, loc="best", framealpha=0.7)
        handles = [Line2D([], [], linestyle="", marker=_MARKERS[k % len(_MARKERS)], color="grey", label=m)
                   for k, m in enumerate(r["modalities"])]
        ax_m.legend(handles=handles, fontsize=7, loc="best", framealpha=0.7)
    names = rows[0]["classes"] or [str(c) for c in range(n_classes)]
    handles = [Line2D([], [], linestyle="", marker="o", color=colors[c], label=names[c] if c < len(names) else c)
               for c in range(n_classes)]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7, title="class", title_fontsize=8)
    fig.suptitle(f"t-SNE of the test samples' representations: {title}", fontsize=11)
    return fig
