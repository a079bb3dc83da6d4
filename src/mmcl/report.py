"""Human-readable reports of a finished run.

``write_report(run_dir)`` reads ``run_dir/results.json`` (written by the training engine) and
writes, next to it, ``accuracy_matrix.png``, ``expert_usage.png`` (when the run recorded
expert usage), ``report.md`` and ``report.html``. Every file is written atomically
(temporary file in the same folder, then ``os.replace``), so a reader never sees half a file.

``format_metrics_table(results)`` renders the accuracy matrix and the metrics as plain text
for the terminal.

Figures use matplotlib's Agg canvas directly (no pyplot), so the caller's backend and global
state are left alone. Tasks are numbered from 1 in everything shown to people; expert ids
and blocks keep their 0-based ids as recorded.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .metrics import DEFINITIONS, SCALAR_METRICS, summarize

RESULTS_FILE = "results.json"
ACC_PNG = "accuracy_matrix.png"
USAGE_PNG = "expert_usage.png"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

METRIC_LABELS = {
    "acc_last": "Accuracy on all seen data (last task)",
    "acc_avg_incremental": "Average incremental accuracy",
    "acc_mean_final": "Mean final per-task accuracy",
    "forgetting": "Average forgetting",
    "bwt": "Backward transfer",
}


# ---------------------------------------------------------------------------------------------
# Reading results
def load_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {RESULTS_FILE} in {Path(run_dir)} (is this a run folder?)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _matrix(results: dict) -> Optional[list[list[Optional[float]]]]:
    """The accuracy matrix with NaN turned into None, or None when the run has none."""
    R = results.get("accuracy_matrix")
    if not R:
        return None
    return [[None if _missing(v) else float(v) for v in row] for row in R]


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _metrics(results: dict) -> tuple[dict, Optional[str]]:
    """Metrics of the run: recomputed from the matrix where possible, stored values filling in.

    Returns (metrics, error): error is a sentence when the matrix could not be summarized.
    """
    stored = dict(results.get("metrics") or {})
    R = results.get("accuracy_matrix")
    if not R:
        return stored, None if stored else "no accuracy matrix recorded"
    try:
        computed = summarize(R, results.get("task_sizes"))
    except ValueError as e:
        return stored, str(e)
    return {**stored, **computed}, None


def _freeze_threshold(results: dict) -> Optional[float]:
    freeze = (results.get("config") or {}).get("freeze") or {}
    th = freeze.get("threshold") if isinstance(freeze, dict) else None
    return float(th) if isinstance(th, (int, float)) else None


# ---------------------------------------------------------------------------------------------
# Formatting helpers
def _pct(v: Any) -> str:
    """A fraction as a percentage with two decimals; 'n/a' for missing values."""
    if _missing(v) or not isinstance(v, (int, float)):
        return "n/a"
    return f"{100.0 * v:.2f}%"


def _cell(v: Any) -> str:
    """A matrix cell as a percentage number without the sign (tables say '%' in the header)."""
    return "" if _missing(v) else f"{100.0 * v:.2f}"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or _missing(seconds):
        return "n/a"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    return f"{s:.1f} s ({_dt.timedelta(seconds=round(s))})"


def _task_label(task: Any) -> str:
    """What a task contains: its domain (domain scenario) or its classes."""
    if not isinstance(task, dict):
        return ""
    if task.get("domain"):
        return f"domain {task['domain']}"
    classes = task.get("classes") or []
    return ", ".join(str(c) for c in classes)


def _run_title(results: dict) -> str:
    return str(results.get("name") or
               f"{results.get('preset', '?')}-{results.get('method', '?')}-s{results.get('seed', '?')}")


def _frozen_text(ids: Any) -> str:
    return ", ".join(str(e) for e in ids) if ids else "none"


def _align(rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    """Align a plain-text table: one string per row, columns padded to equal width."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [s.rjust(w) if right[c] else s.ljust(w) for c, (s, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
    return out


# ---------------------------------------------------------------------------------------------
# Terminal table
def format_metrics_table(results: dict) -> str:
    """Plain-text accuracy matrix (percent) and metrics table, for the end of ``mmcl run``."""
    lines: list[str] = []
    metrics, error = _metrics(results)
    R = _matrix(results)
    if R:
        ncol = max(len(row) for row in R)
        seen = metrics.get("acc_seen_per_task") or []
        header = ["after task"] + [f"T{i + 1}" for i in range(ncol)] + ["seen"]
        rows = [header]
        for t, row in enumerate(R):
            cells = [_cell(row[i]) if i < len(row) and i <= t else "" for i in range(ncol)]
            rows.append([f"T{t + 1}"] + cells + [_cell(seen[t]) if t < len(seen) else ""])
        lines.append("Accuracy (%) on task i (columns) after training task t (rows); "
                     "seen = all seen test data:")
        lines += _align(rows, [False] + [True] * (ncol + 1))
        lines.append("")
    if error:
        lines.append(f"metrics unavailable: {error}")
    rows = [["metric", "value"]]
    for key in SCALAR_METRICS:
        if key in metrics or not error:
            rows.append([key, _pct(metrics.get(key))])
    if len(rows) > 1:
        lines += _align(rows, [False, True])
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# Atomic writes
def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> Path:
    """Write through ``write(file)`` atomically (mmcl.io.atomic_write): the file gets the
    permissions open() gives (0o666 & ~umask); a failed write raises WriteError naming the
    file and keeps its previous version."""
    from .io import atomic_write
    return atomic_write(path, write, mode)


def _save_figure(fig: Any, path: Path) -> Path:
    return _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), mode="wb")


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# ---------------------------------------------------------------------------------------------
# Figures
def plot_accuracy_matrix(results: dict, path: Path) -> Path:
    """Heatmap of R: rows = after training task t, columns = task i, upper triangle grey."""
    import matplotlib

    R = _matrix(results) or []
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
    metrics, _ = _metrics(results)
    ax.set_title(f"{results.get('preset', '?')} / {results.get('method', '?')} / "
                 f"seed {results.get('seed', '?')}\nacc_last = {_pct(metrics.get('acc_last'))}",
                 fontsize=11)
    cbar = fig.colorbar(im, ax=ax, shrink=0.8)
    cbar.set_label("accuracy")
    cbar.set_ticks([0, 0.25, 0.5, 0.75, 1.0], labels=["0%", "25%", "50%", "75%", "100%"])
    return _save_figure(fig, path)


def plot_expert_usage(results: dict, path: Path) -> Path:
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
    threshold = _freeze_threshold(results)

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
        ax.set_ylabel(f"block {b}\nusage share")
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(x, [str(e) for e in range(E)])
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
    fig.suptitle(f"Expert usage per task: {_run_title(results)}", fontsize=11)
    return _save_figure(fig, path)


def _has_expert_usage(results: dict) -> bool:
    u = results.get("expert_usage")
    return bool(u) and all(isinstance(t, list) and t for t in u) and \
        any(isinstance(b, list) and b for t in u for b in t)


# ---------------------------------------------------------------------------------------------
# Report document: a small list of blocks rendered to both Markdown and HTML.
# Blocks: ("h1"|"h2"|"p", text), ("table", header, rows), ("img", src, alt).
def _report_blocks(results: dict, images: dict[str, str]) -> list[tuple]:
    metrics, error = _metrics(results)
    R = _matrix(results)
    tasks = results.get("tasks") or []
    T = max(len(R or []), len(tasks), metrics.get("num_tasks") or 0)
    blocks: list[tuple] = [("h1", f"Run report: {_run_title(results)}")]

    cfg_epochs = ((results.get("config") or {}).get("train") or {}).get("epochs")
    summary = [
        ("Run name", _run_title(results)),
        ("Preset", results.get("preset", "n/a")),
        ("Method", results.get("method", "n/a")),
        ("Seed", results.get("seed", "n/a")),
        ("Scenario", results.get("scenario", "n/a")),
        ("Tasks", T),
        ("Epochs per task", cfg_epochs if cfg_epochs is not None else "n/a"),
        ("Finished", results.get("finished", "n/a")),
        ("Total training time", _duration(results.get("train_time_s",
                                                      _sum_or_none(results.get("task_time_s"))))),
    ]
    blocks.append(("table", ["", "value"], [[k, str(v)] for k, v in summary]))

    blocks.append(("h2", "Metrics"))
    if error:
        blocks.append(("p", f"Metrics could not be computed from the accuracy matrix: {error}"))
    rows = [[METRIC_LABELS.get(k, k) + f" ({k})", _pct(metrics.get(k)), DEFINITIONS[k]]
            for k in SCALAR_METRICS if k in metrics or not error]
    if rows:
        blocks.append(("table", ["metric", "value", "definition"], rows))
    blocks.append(("p", "Accuracies are percentages of test samples. R[t][i] is the accuracy on "
                        "task i's test set after training task t; tasks are numbered from 1 here."))

    if R:
        blocks.append(("h2", "Accuracy matrix"))
        blocks.append(("p", "Rows: after training task t. Columns: accuracy (%) on the test set "
                            "of task i. 'seen' is the accuracy on all test data seen so far."))
        ncol = max(len(r) for r in R)
        seen = metrics.get("acc_seen_per_task") or []
        rows = [[f"after task {t + 1}"]
                + [_cell(r[i]) if i < len(r) and i <= t else "" for i in range(ncol)]
                + [_cell(seen[t]) if t < len(seen) else ""] for t, r in enumerate(R)]
        blocks.append(("table", [""] + [f"task {i + 1}" for i in range(ncol)] + ["seen"], rows))
    if ACC_PNG in images:
        blocks.append(("img", images[ACC_PNG], "Accuracy matrix heatmap"))

    blocks.append(("h2", "Tasks"))
    blocks.append(("table", *_task_table(results, T)))

    if results.get("frozen_experts") or USAGE_PNG in images:
        blocks.append(("h2", "Expert usage and freezing"))
        th = _freeze_threshold(results)
        if th is not None:
            blocks.append(("p", f"Experts whose usage share exceeds the threshold {th:g} "
                                "are frozen after a task. Expert and block ids start at 0."))
        frozen = results.get("frozen_experts") or []
        if frozen:
            nb = max(len(f) for f in frozen)
            rows = [[str(t + 1)] + [_frozen_text(f[b]) if b < len(f) else "" for b in range(nb)]
                    for t, f in enumerate(frozen)]
            blocks.append(("table", ["after task"] + [f"block {b}: frozen experts"
                                                      for b in range(nb)], rows))
        if USAGE_PNG in images:
            blocks.append(("img", images[USAGE_PNG], "Expert usage per task and block"))
    return blocks


def _sum_or_none(xs: Any) -> Optional[float]:
    try:
        return float(sum(xs)) if xs else None
    except TypeError:
        return None


def _task_table(results: dict, T: int) -> tuple[list[str], list[list[str]]]:
    tasks = results.get("tasks") or []
    sizes = results.get("task_sizes") or []
    times = results.get("task_time_s") or []
    val = results.get("val_accuracy") or []
    frozen = results.get("frozen_experts") or []
    header = ["task", "contents", "test samples", "training time", "val accuracy (seen)"]
    if frozen:
        header.append("frozen experts after task (per block)")
    rows = []
    for t in range(T):
        row = [str(t + 1),
               _task_label(tasks[t]) if t < len(tasks) else "",
               str(sizes[t]) if t < len(sizes) else "n/a",
               _duration(times[t]) if t < len(times) else "n/a",
               _pct(val[t]) if t < len(val) else "n/a"]
        if frozen:
            row.append("; ".join(f"b{b}: {_frozen_text(ids)}" for b, ids in enumerate(frozen[t]))
                       if t < len(frozen) else "")
        rows.append(row)
    return header, rows


def _render_md(blocks: list[tuple]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}")
        elif kind == "h2":
            out.append(f"## {b[1]}")
        elif kind == "p":
            out.append(b[1])
        elif kind == "table":
            header, rows = b[1], b[2]
            out.append("| " + " | ".join(esc(h) for h in header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})")
        out.append("")
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; vertical-align: top; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5rem 0; }
""".strip()


def _render_html(blocks: list[tuple], title: str) -> str:
    def is_num(s: str) -> bool:
        return s.rstrip("%").replace(".", "", 1).lstrip("-").isdigit()

    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{e(title)}</title>", f"<style>\n{_CSS}\n</style>", "</head>", "<body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{e(str(b[1]))}</{kind}>")
        elif kind == "table":
            header, rows = b[1], b[2]
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>")
            for r in rows:
                cells = "".join(f'<td class="num">{e(c)}</td>' if is_num(c) else f"<td>{e(c)}</td>"
                                for c in r)
                out.append(f"<tr>{cells}</tr>")
            out.append("</table>")
        elif kind == "img":
            out.append(f'<p><img src="{e(b[1])}" alt="{e(b[2])}"></p>')
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
def write_report(run_dir: str | Path) -> list[Path]:
    """Write the figures and report.md / report.html of ``run_dir``; return the paths written."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    written: list[Path] = []
    images: dict[str, str] = {}
    if _matrix(results):
        written.append(plot_accuracy_matrix(results, run_dir / ACC_PNG))
        images[ACC_PNG] = ACC_PNG
    if _has_expert_usage(results):
        written.append(plot_expert_usage(results, run_dir / USAGE_PNG))
        images[USAGE_PNG] = USAGE_PNG

    blocks = _report_blocks(results, images)
    md = _render_md(blocks)
    page = _render_html(blocks, f"Run report: {_run_title(results)}")
    written.append(_atomic_write(run_dir / REPORT_MD, lambda f: f.write(md)))
    written.append(_atomic_write(run_dir / REPORT_HTML, lambda f: f.write(page)))
    return written


# ---------------------------------------------------------------------------------------------
# Comparison of several runs (`mmcl compare`)
#
# Runs are grouped across seeds. With group_by="name" (the default) the group of a run is its
# preset plus its run name with a trailing "-s<seed>" removed, so "tuxpaint-no-freeze-s0",
# "-s1", "-s2" form one row labelled "no-freeze" (a leading "<preset>-" is dropped from the
# label). Name runs "<preset>-<variant>-s<seed>" to compare variants of one method (the default
# run name, "<preset>-<method>-s<seed>", groups by method). With group_by="method" the group is
# (preset, method) whatever the run names.
COMPARE_METRICS = ("acc_last", "acc_avg_incremental", "forgetting", "bwt")
COMPARE_CSV_COLUMNS = (["variant", "preset", "method", "n_seeds", "seeds"]
                       + [f"{k}_{s}" for k in COMPARE_METRICS for s in ("mean", "std")]
                       + ["train_time_s_mean", "runs"])
_SEED_SUFFIX = r"-s\d+$"


def _is_run_folder(path: Path) -> bool:
    return (path / RESULTS_FILE).is_file() or (path / "config.yaml").is_file() or \
        (path / "metrics.jsonl").is_file() or (path / "checkpoints").is_dir()


def expand_run_dirs(run_dirs: Sequence[str | Path]) -> list[Path]:
    """Run folders named by ``run_dirs``: a folder that is not itself a run folder (no
    results.json, config.yaml, metrics.jsonl or checkpoints/) but holds folders stands for
    its sub-folders (sorted), so ``mmcl compare runs/compare`` takes every run in it."""
    out: list[Path] = []
    for d in run_dirs:
        p = Path(d)
        if p.is_dir() and not _is_run_folder(p):
            subs = sorted(q for q in p.iterdir() if q.is_dir() and not q.name.startswith("."))
            if subs:
                out.extend(subs)
                continue
        out.append(p)
    return out


def skipped_runs(run_dirs: Sequence[str | Path]) -> list[Path]:
    """The run folders (after ``expand_run_dirs``) without results.json: unfinished or missing."""
    return [p for p in expand_run_dirs(run_dirs) if not (p / RESULTS_FILE).is_file()]


def _group_of(results: dict, run_dir: Path, group_by: str) -> tuple[str, str]:
    import re
    preset = str(results.get("preset") or "custom")
    if group_by == "method":
        return preset, str(results.get("method") or "?")
    if group_by != "name":
        raise ValueError(f"group_by must be 'name' or 'method', got {group_by!r}")
    stem = re.sub(_SEED_SUFFIX, "", str(results.get("name") or run_dir.name))
    if stem.startswith(preset + "-") and len(stem) > len(preset) + 1:
        stem = stem[len(preset) + 1:]
    return preset, stem


def _mean_std(values: Sequence[Any]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (ddof=1) of the values present; std None below 2."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and not _missing(v)]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def compare_runs(run_dirs: Sequence[str | Path], group_by: str = "name") -> list[dict]:
    """One dict per group of finished runs (see the comment above for the grouping), in order of
    first appearance. Keys: variant, preset, method (methods joined by '/' if a group mixes
    them), n_seeds, seeds, runs (folders), <metric>_mean / <metric>_std for COMPARE_METRICS as
    fractions (std None for one run) and train_time_s_mean (seconds). Runs without results.json
    are left out: ``skipped_runs`` lists them."""
    groups: dict[tuple[str, str], list[tuple[Path, dict]]] = {}
    for p in expand_run_dirs(run_dirs):
        if not (p / RESULTS_FILE).is_file():
            continue
        results = load_results(p)
        groups.setdefault(_group_of(results, p, group_by), []).append((p, results))
    rows = []
    for (preset, label), runs in groups.items():
        methods = list(dict.fromkeys(str(r.get("method") or "?") for _, r in runs))
        row: dict[str, Any] = {"variant": label, "preset": preset, "method": "/".join(methods),
                               "n_seeds": len(runs), "seeds": [r.get("seed") for _, r in runs],
                               "runs": [str(p) for p, _ in runs]}
        all_metrics = [_metrics(r)[0] for _, r in runs]
        for key in COMPARE_METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([m.get(key) for m in all_metrics])
        row["train_time_s_mean"] = _mean_std([r.get("train_time_s") for _, r in runs])[0]
        rows.append(row)
    return rows


def _pm(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return "n/a"
    return f"{100.0 * mean:.2f} ± " + ("n/a" if std is None else f"{100.0 * std:.2f}")


def format_comparison_markdown(rows: Sequence[dict], skipped: Sequence[str | Path] = ()) -> str:
    """Markdown table of ``compare_runs`` rows: metrics as mean ± std over seeds in percent
    (std with ddof=1, 'n/a' for one seed), mean training time in seconds; then the skipped runs."""
    header = ["method/variant", "preset", "seeds"] + [f"{k} (%)" for k in COMPARE_METRICS] + \
        ["train time (s, mean)"]
    table = [[r["variant"], r["preset"], str(r["n_seeds"])]
             + [_pm(r[f"{k}_mean"], r[f"{k}_std"]) for k in COMPARE_METRICS]
             + ["n/a" if r["train_time_s_mean"] is None else f"{r['train_time_s_mean']:.1f}"]
             for r in rows]
    blocks: list[tuple] = [("table", header, table)] if table else [("p", "No finished runs.")]
    if skipped:
        blocks.append(("p", "Skipped (no results.json: unfinished or not run):"))
        blocks.append(("p", "\n".join(f"- {p}" for p in skipped)))
    return _render_md(blocks).rstrip() + "\n"


_PCT_COLUMNS = {f"{k}_{s}" for k in COMPARE_METRICS for s in ("mean", "std")}


def _csv_value(v: Any, key: str) -> str:
    if key in ("seeds", "runs"):
        return " ".join(str(x) for x in v)
    if v is None:
        return ""
    if key in _PCT_COLUMNS:
        return f"{100.0 * v:.2f}"
    if key == "train_time_s_mean":
        return f"{v:.1f}"
    return str(v)


def write_comparison(rows: Sequence[dict], prefix: str | Path, skipped: Sequence[str | Path] = (),
                     header: str = "") -> list[Path]:
    """Write ``PREFIX.md`` (``header``, then the table) and ``PREFIX.csv`` (COMPARE_CSV_COLUMNS;
    metrics in percent with 2 decimals, empty std for one seed, seeds and runs space-separated)."""
    import csv
    import io

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    md = (header.rstrip() + "\n\n" if header else "") + format_comparison_markdown(rows, skipped)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COMPARE_CSV_COLUMNS)
    for r in rows:
        w.writerow([_csv_value(r[c], c) for c in COMPARE_CSV_COLUMNS])
    md_path = prefix.with_name(prefix.name + ".md")
    csv_path = prefix.with_name(prefix.name + ".csv")
    return [_atomic_write(md_path, lambda f: f.write(md)),
            _atomic_write(csv_path, lambda f: f.write(buf.getvalue()))]
