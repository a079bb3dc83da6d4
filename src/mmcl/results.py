"""A finished run's ``results.json`` and the numbers every view of it shows (mmcl.report: one
run's report; mmcl.plots: its figures; mmcl.compare: several runs side by side).

Metrics are recomputed from the accuracy matrix where possible (``run_metrics``), so a report
of an old run shows today's definitions; missing values (None, NaN) print as 'n/a'.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .metrics import summarize

RESULTS_FILE = "results.json"


def load_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {RESULTS_FILE} in {Path(run_dir)} (is this a run folder?)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def accuracy_matrix(results: dict) -> list[list[float | None]] | None:
    """The accuracy matrix with NaN turned into None, or None when the run has none."""
    R = results.get("accuracy_matrix")
    if not R:
        return None
    return [[None if is_missing(v) else float(v) for v in row] for row in R]


def is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def run_metrics(results: dict) -> tuple[dict, str | None]:
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


def freeze_threshold(results: dict) -> float | None:
    freeze = (results.get("config") or {}).get("freeze") or {}
    th = freeze.get("threshold") if isinstance(freeze, dict) else None
    return float(th) if isinstance(th, (int, float)) else None


def pct(v: Any) -> str:
    """A fraction as a percentage with two decimals; 'n/a' for missing values."""
    if is_missing(v) or not isinstance(v, (int, float)):
        return "n/a"
    return f"{100.0 * v:.2f}%"


def run_title(results: dict) -> str:
    return str(results.get("name") or
               f"{results.get('preset', '?')}-{results.get('method', '?')}-s{results.get('seed', '?')}")



def routing_table(results: dict) -> tuple[list[str], list[list[str]]] | None:
    """The routing diagnostics of a run with adapters (mmcl.routing_stats) as a table: one row
    per task and block; None when the run has none."""
    diag = results.get("routing_diagnostics") or []
    scales = results.get("gate_scales") or []
    if not diag:
        return None

    def p(v):
        return "n/a" if v is None else f"{v:.2g}"

    rows = []
    for t, blocks in enumerate(diag):
        for b, d in enumerate(blocks):
            s = scales[t][b] if t < len(scales) and b < len(scales[t]) else None
            mi = "n/a" if d.get("class_mi") is None else f"{d['class_mi']:.4f} ({d['class_mi_random']:.4f})"
            share = d.get("frozen_share")
            rows.append([str(t + 1), str(b + 1), f"{d['uniform_chi2']:.1f}" if d.get("uniform_chi2") is not None
                         else "n/a", p(d.get("uniform_p")), p(d.get("class_p")), mi,
                         "n/a" if share is None else f"{100 * share:.1f}",
                         "n/a" if not s else f"{s[0]:.3f} / {s[1]:.3f}"])
    header = ["task", "block", "chi2 vs uniform", "p (uniform)", "p (class-independent)",
              "MI class;expert, nats (random)", "% to experts frozen before", "gate logit std / noise std"]
    return header, rows


def training_table(results: dict) -> tuple[list[str], list[list[str]]] | None:
    """Per task: the mean (weighted) loss terms and the mean gradient norm of each parameter
    group over its steps (mmcl.optim), so a reader sees which term dominates and whether the
    experts and gates get any gradient; None for results without them."""
    losses, norms = results.get("train_losses") or [], results.get("grad_norms") or []
    if not any(losses) and not any(norms):
        return None
    terms = sorted({k for d in losses if d for k in d})
    groups = list(dict.fromkeys(g for d in norms if d for g in d))  # in mmcl.optim.GROUPS order
    rows = []
    for t in range(max(len(losses), len(norms))):
        lt = losses[t] if t < len(losses) and losses[t] else {}
        gt = norms[t] if t < len(norms) and norms[t] else {}
        rows.append([str(t + 1)] + [f"{lt[k]:.4f}" if k in lt else "" for k in terms]
                    + [f"{gt[g]:.4g}" if g in gt else "" for g in groups])
    return ["task"] + [f"loss: {k}" for k in terms] + [f"grad norm: {g}" for g in groups], rows


def robustness_table(results: dict) -> tuple[list[str], list[list[str]]] | None:
    """The run's modality robustness (results.json's ``modality_robustness``: after the last
    task, accuracy on every task's test data) as a table: one row per modality, the accuracy
    with it masked and with it alone (and the samples each counts); None when the run has none."""
    rob = results.get("modality_robustness")
    if not isinstance(rob, dict) or not rob.get("without"):
        return None

    def cell(c: Any) -> str:
        if not isinstance(c, dict):
            return "n/a"
        n = c.get("samples")
        return pct(c.get("accuracy")) + ("" if n == rob.get("samples") else f" ({n} samples)")

    rows = [["all (as the samples have them)", pct(rob.get("accuracy")), "", str(rob.get("samples", "n/a"))]]
    for m in rob["without"]:
        rows.append([m, cell(rob["without"].get(m)), cell((rob.get("alone") or {}).get(m)), ""])
    header = ["modality", "accuracy without it", "accuracy with it alone", "test samples"]
    return header, rows
