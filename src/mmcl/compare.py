"""Comparison of several runs (``mmcl compare``, benchmarks/compare_tuxpaint.py): their metrics
as mean and standard deviation over seeds, as a Markdown table and a CSV file.

``expand_run_dirs`` names the run folders, ``skipped_runs`` the unfinished ones,
``compare_runs`` groups the finished ones, ``format_comparison_markdown`` and
``write_comparison`` render the rows (a second table holds the modality robustness of the runs
that measured it). Files are written atomically (mmcl.report.write_text).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import render_markdown, write_text
from .results import RESULTS_FILE, is_missing, load_results, run_metrics

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


def group_of(results: dict, run_dir: Path, group_by: str) -> tuple[str, str]:
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


def _mean_std(values: Sequence[Any]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) of the values present; std None below 2."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and not is_missing(v)]
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
        groups.setdefault(group_of(results, p, group_by), []).append((p, results))
    rows = []
    for (preset, label), runs in groups.items():
        methods = list(dict.fromkeys(str(r.get("method") or "?") for _, r in runs))
        row: dict[str, Any] = {"variant": label, "preset": preset, "method": "/".join(methods),
                               "n_seeds": len(runs), "seeds": [r.get("seed") for _, r in runs],
                               "runs": [str(p) for p, _ in runs]}
        all_metrics = [run_metrics(r)[0] for _, r in runs]
        for key in COMPARE_METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([m.get(key) for m in all_metrics])
        row["train_time_s_mean"] = _mean_std([r.get("train_time_s") for _, r in runs])[0]
        row["robustness"] = robustness_means([r.get("modality_robustness") for _, r in runs])
        rows.append(row)
    return rows


def robustness_means(tables: Sequence[dict | None]) -> dict | None:
    """Mean over runs of results.json's ``modality_robustness`` (mmcl.evaluation): {"n": runs
    that have one, "accuracy": all present, "without": {m: acc}, "alone": {m: acc}}, fractions;
    None when no run has one. A condition no sample of a run counts under (accuracy None) is
    left out of that run's share of the mean."""
    present = [t for t in tables if t]
    if not present:
        return None
    mods = list(dict.fromkeys(m for t in present for kind in ("without", "alone") for m in t.get(kind, {})))
    out: dict[str, Any] = {"n": len(present), "accuracy": _mean_std([t.get("accuracy") for t in present])[0]}
    for kind in ("without", "alone"):
        out[kind] = {m: _mean_std([(t.get(kind, {}).get(m) or {}).get("accuracy") for t in present])[0]
                     for m in mods}
    return out


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100.0 * v:.2f}"


def format_robustness_markdown(rows: Sequence[dict]) -> str:
    """Table of the rows' modality robustness (mean over the seeds that measured it, percent):
    accuracy with every modality, without each one, and with each one alone; '' if none has it."""
    have = [r for r in rows if r.get("robustness")]
    if not have:
        return ""
    mods = list(dict.fromkeys(m for r in have for m in r["robustness"]["without"]))
    header = ["method/variant", "preset", "seeds", "all"] + [f"without {m}" for m in mods] + \
        [f"{m} alone" for m in mods]
    table = [[r["variant"], r["preset"], str(r["robustness"]["n"]), _pct(r["robustness"]["accuracy"])]
             + [_pct(r["robustness"]["without"].get(m)) for m in mods]
             + [_pct(r["robustness"]["alone"].get(m)) for m in mods] for r in have]
    return render_markdown([("p", "Modality robustness after the last task: accuracy (%) on every task's "
                                  "test data, mean over the seeds that measured it:"),
                            ("table", header, table)])


def _pm(mean: float | None, std: float | None) -> str:
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
    robustness = format_robustness_markdown(rows)
    return render_markdown(blocks).rstrip() + "\n" + ("\n" + robustness.rstrip() + "\n" if robustness else "")


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
    return [write_text(md_path, md), write_text(csv_path, buf.getvalue())]
