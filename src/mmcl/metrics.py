"""Continual-learning metrics computed from an accuracy matrix.

``R[t][i]`` is the accuracy (a fraction in [0, 1]) on the test set of task ``i`` measured
after training task ``t`` (both 0-indexed). Only the lower triangle (``i <= t``) is used;
entries above the diagonal are ignored and may be ``None`` or NaN.

Every function here is pure: no I/O, no torch. ``DEFINITIONS`` holds the written definition
of each metric; reports print it next to the value.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np

# Scalar metrics in the order reports show them.
SCALAR_METRICS = ("acc_last", "acc_avg_incremental", "acc_mean_final", "forgetting", "bwt")

DEFINITIONS: dict[str, str] = {
    "acc_last": (
        "Accuracy on all seen test data after training the last task: the per-task accuracies "
        "of the final row weighted by test-set size, sum_i n_i R[T-1][i] / sum_i n_i."
    ),
    "acc_avg_incremental": (
        "Average incremental accuracy: the mean over tasks t of the accuracy on all test data "
        "seen so far after training task t (tasks i <= t, weighted by test-set size)."
    ),
    "acc_mean_final": (
        "Unweighted mean over tasks of the final accuracy on each task, mean_i R[T-1][i]."
    ),
    "forgetting": (
        "Average forgetting (Chaudhry et al., 2018): for each task but the last, the best "
        "accuracy it had before the final task (max over l in [i, T-2] of R[l][i]) minus its "
        "final accuracy R[T-1][i], averaged over those tasks. Lower is better; n/a for one task."
    ),
    "bwt": (
        "Backward transfer: mean over tasks i < T-1 of R[T-1][i] - R[i][i], the change in a "
        "task's accuracy from just after learning it to the end. Negative means forgetting; "
        "n/a for one task."
    ),
    "acc_seen_per_task": (
        "Accuracy on all seen test data after each task t (tasks i <= t, weighted by "
        "test-set size)."
    ),
    "num_tasks": "Number of tasks T in the stream.",
}

_TOL = 1e-9  # slack for the [0, 1] range check (float round-off in upstream averages)


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, Real) and math.isnan(float(v)))


def _validate_matrix(R: Any) -> np.ndarray:
    """Return R as a float T x T array with NaN above the diagonal, or raise ValueError."""
    if isinstance(R, np.ndarray):
        if R.ndim != 2:
            raise ValueError(f"accuracy matrix must be 2-D (T x T), got shape {R.shape}")
        rows = [list(r) for r in R]
    else:
        try:
            rows = [list(r) for r in R]
        except TypeError as e:
            raise ValueError("accuracy matrix must be a T x T list of lists or array") from e
    T = len(rows)
    if T == 0:
        raise ValueError("accuracy matrix is empty (need at least one task)")
    out = np.full((T, T), np.nan)
    for t, row in enumerate(rows):
        if len(row) != T:
            raise ValueError(
                f"accuracy matrix is not square: row {t} has {len(row)} entries, expected {T}")
        for i in range(t + 1):  # lower triangle only; the rest is ignored
            v = row[i]
            if _is_missing(v):
                raise ValueError(
                    f"accuracy matrix entry R[{t}][{i}] (task {i} after training task {t}) "
                    f"is missing")
            if isinstance(v, bool) or not isinstance(v, Real):
                raise ValueError(f"accuracy matrix entry R[{t}][{i}] = {v!r} is not a number")
            v = float(v)
            if not (-_TOL <= v <= 1 + _TOL):
                raise ValueError(
                    f"accuracy matrix entry R[{t}][{i}] = {v} is not a fraction in [0, 1]")
            out[t, i] = v
    return out


def _validate_sizes(task_sizes: Sequence[Any] | None, T: int) -> np.ndarray:
    if task_sizes is None:
        return np.ones(T)
    sizes = list(task_sizes)
    if len(sizes) != T:
        raise ValueError(f"task_sizes has {len(sizes)} entries, expected {T} (one per task)")
    for i, n in enumerate(sizes):
        if isinstance(n, bool) or not isinstance(n, Real) or not math.isfinite(n) or n <= 0:
            raise ValueError(f"task_sizes[{i}] = {n!r} must be a positive number")
    return np.asarray(sizes, dtype=float)


def summarize(R: Any, task_sizes: Sequence[Any] | None = None) -> dict[str, Any]:
    """Compute the continual-learning metrics of accuracy matrix ``R`` (see ``DEFINITIONS``).

    ``task_sizes[i]`` is the number of test samples of task i, used to weight accuracy on
    all seen test data; ``None`` weights tasks equally. Values are plain Python floats
    (fractions, not percentages); ``forgetting`` and ``bwt`` are ``None`` when T == 1.
    """
    A = _validate_matrix(R)
    T = A.shape[0]
    n = _validate_sizes(task_sizes, T)

    # Seen-data accuracy after task t: tasks 0..t weighted by their test-set sizes.
    seen = [float(np.dot(n[: t + 1], A[t, : t + 1]) / n[: t + 1].sum()) for t in range(T)]

    forgetting_per_task: list[float] = []
    bwt_per_task: list[float] = []
    for i in range(T - 1):  # the last task is excluded from both
        best_before_end = A[i : T - 1, i].max()  # rows i .. T-2, not the final row
        forgetting_per_task.append(float(best_before_end - A[T - 1, i]))
        bwt_per_task.append(float(A[T - 1, i] - A[i, i]))

    return {
        "num_tasks": T,
        "acc_last": seen[-1],
        "acc_avg_incremental": float(np.mean(seen)),
        "acc_mean_final": float(A[T - 1].mean()),
        "forgetting": float(np.mean(forgetting_per_task)) if T > 1 else None,
        "bwt": float(np.mean(bwt_per_task)) if T > 1 else None,
        "acc_seen_per_task": seen,
        "forgetting_per_task": forgetting_per_task,
        "bwt_per_task": bwt_per_task,
    }


def accuracy_matrix_from_counts(correct: Any, total: Any) -> list[list[float | None]]:
    """Turn correct-prediction counts into an accuracy matrix (JSON-friendly lists).

    ``correct[t][i]``: correct predictions on task i's test set after training task t (entries
    above the diagonal ignored). ``total``: test-set size per task (length T), or a T x T
    matrix of evaluated counts. Entries above the diagonal of the result are ``None``.
    """
    rows = [list(r) for r in correct]
    T = len(rows)
    tot = np.asarray(total, dtype=float)
    if tot.ndim == 1:
        if tot.shape[0] != T:
            raise ValueError(f"total has {tot.shape[0]} entries, expected {T}")
        tot = np.tile(tot, (T, 1))
    elif tot.shape != (T, T):
        raise ValueError(f"total must have length {T} or shape ({T}, {T}), got {tot.shape}")
    out: list[list[float | None]] = []
    for t, row in enumerate(rows):
        if len(row) != T:
            raise ValueError(f"correct is not square: row {t} has {len(row)} entries, expected {T}")
        out_row: list[float | None] = [None] * T
        for i in range(t + 1):
            c, m = row[i], tot[t, i]
            if _is_missing(c):
                raise ValueError(f"correct[{t}][{i}] is missing")
            if not m > 0:
                raise ValueError(f"total for R[{t}][{i}] is {m}; must be positive")
            if not 0 <= c <= m:
                raise ValueError(f"correct[{t}][{i}] = {c} is outside [0, {m:g}]")
            out_row[i] = float(c) / float(m)
        out.append(out_row)
    return out
