"""Human-readable reports of a finished run.

``write_report(run_dir)`` reads ``run_dir/results.json`` (written by the training engine) and
writes, next to it, ``accuracy_matrix.png``, ``expert_usage.png`` (when the run recorded
expert usage), ``report.md`` and ``report.html``. Every file is written atomically
(temporary file in the same folder, then ``os.replace``), so a reader never sees half a file.

``format_metrics_table(results)`` renders the accuracy matrix and the metrics as plain text
for the terminal.

Reading results.json and the shared numbers live in mmcl.results, the figures in mmcl.plots,
the comparison of several runs (``mmcl compare``) in mmcl.compare, which renders with
``render_markdown`` and writes with ``write_text`` from here. Tasks, blocks and experts are
numbered from 1 in everything shown to people, as in the log (results.json keeps 0-based list
positions: ``frozen_experts[t][b]`` lists expert ids from 0).
"""
from __future__ import annotations

import datetime as _dt
import html
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .metrics import DEFINITIONS, SCALAR_METRICS
from .plots import accuracy_matrix_figure, expert_usage_figure, tsne_figure
from .representations import REPRESENTATIONS_FILE, load_representations, tsne_available, tsne_panels
from .results import (
    accuracy_matrix,
    freeze_threshold,
    is_missing,
    load_results,
    pct,
    robustness_table,
    routing_table,
    run_metrics,
    run_title,
    training_table,
)

ACC_PNG = "accuracy_matrix.png"
USAGE_PNG = "expert_usage.png"
TSNE_PNG = "tsne.png"
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
# Formatting helpers
def _cell(v: Any) -> str:
    """A matrix cell as a percentage number without the sign (tables say '%' in the header)."""
    return "" if is_missing(v) else f"{100.0 * v:.2f}"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or is_missing(seconds):
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



def _frozen_text(ids: Any) -> str:
    return ", ".join(str(e + 1) for e in ids) if ids else "none"


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
    metrics, error = run_metrics(results)
    R = accuracy_matrix(results)
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
            rows.append([key, pct(metrics.get(key))])
    if len(rows) > 1:
        lines += _align(rows, [False, True])
    robustness = robustness_table(results)
    if robustness:
        lines += ["", "Modality robustness (accuracy on all test data after the last task):"]
        lines += _align([robustness[0][:3]] + [r[:3] for r in robustness[1]], [False, True, True])
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


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically (see ``_atomic_write``)."""
    return _atomic_write(path, lambda f: f.write(text))


def _has_expert_usage(results: dict) -> bool:
    u = results.get("expert_usage")
    return bool(u) and all(isinstance(t, list) and t for t in u) and \
        any(isinstance(b, list) and b for t in u for b in t)


# ---------------------------------------------------------------------------------------------
# Report document: a small list of blocks rendered to both Markdown and HTML.
# Blocks: ("h1"|"h2"|"p", text), ("table", header, rows), ("img", src, alt).
def _report_blocks(results: dict, images: dict[str, str]) -> list[tuple]:
    metrics, error = run_metrics(results)
    R = accuracy_matrix(results)
    tasks = results.get("tasks") or []
    T = max(len(R or []), len(tasks), metrics.get("num_tasks") or 0)
    blocks: list[tuple] = [("h1", f"Run report: {run_title(results)}")]

    cfg_epochs = ((results.get("config") or {}).get("train") or {}).get("epochs")
    summary = [
        ("Run name", run_title(results)),
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
    rows = [[METRIC_LABELS.get(k, k) + f" ({k})", pct(metrics.get(k)), DEFINITIONS[k]]
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

    robustness = robustness_table(results)
    if robustness:
        blocks.append(("h2", "Modality robustness"))
        blocks.append(("p", "After the last task, the accuracy on the test data of every task with one modality "
                            "masked in every sample (without it) and with every other modality masked (alone); a "
                            "condition counts the samples left with a modality under it."))
        blocks.append(("table", *robustness))

    if results.get("frozen_experts") or USAGE_PNG in images:
        blocks.append(("h2", "Expert usage and freezing"))
        th = freeze_threshold(results)
        if th is not None:
            blocks.append(("p", f"Experts whose usage share exceeds the threshold {th:g} "
                                "are frozen after a task. Tasks, blocks and experts are numbered from 1."))
        frozen = results.get("frozen_experts") or []
        if frozen:
            nb = max(len(f) for f in frozen)
            rows = [[str(t + 1)] + [_frozen_text(f[b]) if b < len(f) else "" for b in range(nb)]
                    for t, f in enumerate(frozen)]
            blocks.append(("table", ["after task"] + [f"block {b + 1}: frozen experts"
                                                      for b in range(nb)], rows))
        if USAGE_PNG in images:
            blocks.append(("img", images[USAGE_PNG], "Expert usage per task and block"))
    training = training_table(results)
    if training:
        blocks.append(("h2", "Loss terms and gradients"))
        blocks.append(("p", "Per task, the mean of each weighted loss term over its training steps and the mean "
                            "L2 norm of each parameter group's gradient (before clipping)."))
        blocks.append(("table", *training))
    routing = routing_table(results)
    if routing:
        blocks.append(("h2", "Routing diagnostics"))
        blocks.append(("p", "After each task its training rows are routed again without noise, one class at a "
                            "time. Chi-square tests the counts the freezing rule used against uniform routing; "
                            "the G-test asks whether the chosen expert depends on the class (small p: it does), "
                            "with the mutual information and, in brackets, its value expected without any "
                            "dependence at these counts. Blocks and tasks are numbered from 1."))
        blocks.append(("table", *routing))
    if TSNE_PNG in images or images.get("tsne_note"):
        blocks.append(("h2", "Representations (t-SNE)"))
        blocks.append(("p", images.get("tsne_note") or
                       "2-D t-SNE (scikit-learn) of the test samples of the tasks seen so far, after the "
                       "tasks in report.tsne_after. Left: the joint representation z_joint, coloured by "
                       "class, marked by the task the sample belongs to. Right: every modality's z_k "
                       "embedded together, coloured by class, marked by modality; L_align pulls a "
                       "sample's z_k towards its z_joint."))
        if TSNE_PNG in images:
            blocks.append(("img", images[TSNE_PNG], "t-SNE of z_joint and of the per-modality z_k"))
    return blocks


def _sum_or_none(xs: Any) -> float | None:
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
               pct(val[t]) if t < len(val) else "n/a"]
        if frozen:
            row.append("; ".join(f"b{b + 1}: {_frozen_text(ids)}" for b, ids in enumerate(frozen[t]))
                       if t < len(frozen) else "")
        rows.append(row)
    return header, rows


def render_markdown(blocks: list[tuple]) -> str:
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
def _tsne(run_dir: Path, results: dict, tsne: bool | None, images: dict[str, str]) -> list[Path]:
    """tsne.png from representations.npz: always when ``tsne`` (errors say what is missing),
    never when False, and when None as the run's report.tsne says, if scikit-learn is there."""
    wanted = tsne if tsne is not None else bool(((results.get("config") or {}).get("report") or {}).get("tsne"))
    arrays = load_representations(run_dir) if wanted else None
    if not wanted or (arrays is None and tsne is None):
        return []
    if arrays is None:
        raise FileNotFoundError(f"no {REPRESENTATIONS_FILE} in {run_dir}: the run stored no representations "
                                "(report.tsne_after was empty, or the run predates them); run it again with "
                                "report.tsne_after=[-1] --fresh")
    if tsne is None and not tsne_available():
        images["tsne_note"] = ("No t-SNE figure: scikit-learn is not installed (pip install 'mmcl[tsne]', then "
                               f"`mmcl report {run_dir} --tsne`).")
        return []
    t0 = time.perf_counter()
    fig = tsne_figure(tsne_panels(arrays, int(results.get("seed") or 0)), run_title(results))
    images[TSNE_PNG] = TSNE_PNG
    path = _save_figure(fig, run_dir / TSNE_PNG)
    logging.getLogger("mmcl").info("t-SNE figure of %s in %.1f s", run_dir, time.perf_counter() - t0)
    return [path]


def write_report(run_dir: str | Path, tsne: bool | None = None) -> list[Path]:
    """Write the figures and report.md / report.html of ``run_dir``; return the paths written.
    ``tsne``: draw tsne.png (True), not (False), or as the run's report.tsne says (None)."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    written: list[Path] = []
    images: dict[str, str] = {}
    if accuracy_matrix(results):
        written.append(_save_figure(accuracy_matrix_figure(results), run_dir / ACC_PNG))
        images[ACC_PNG] = ACC_PNG
    if _has_expert_usage(results):
        written.append(_save_figure(expert_usage_figure(results), run_dir / USAGE_PNG))
        images[USAGE_PNG] = USAGE_PNG
    written += _tsne(run_dir, results, tsne, images)

    blocks = _report_blocks(results, images)
    md = render_markdown(blocks)
    page = _render_html(blocks, f"Run report: {run_title(results)}")
    written.append(_atomic_write(run_dir / REPORT_MD, lambda f: f.write(md)))
    written.append(_atomic_write(run_dir / REPORT_HTML, lambda f: f.write(page)))
    return written
