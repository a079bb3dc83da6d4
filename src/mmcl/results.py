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

