"""Paired comparison of runs on shared seeds (``mmcl compare --reference NAME``) and the paper's
claims checked against it (mmcl.claims).

For a reference group R (a method or variant, grouped as in mmcl.compare) and every other group
M of the same preset: the per-seed differences d_s = metric(M, s) - metric(R, s) on the seeds
both have, their mean and a 95 % Student-t interval, mean ± t(0.975, n-1) · sd / sqrt(n) with sd
the sample standard deviation (ddof=1). Why t and not a bootstrap: with the 3-10 seeds a
comparison can afford, a bootstrap over seeds resamples too few distinct sets (5 seeds: 126) and
its percentile interval is too narrow (it ignores the uncertainty of sd, so its coverage falls
well below 95 % at small n), while the t-interval is exact for normal differences and robust
enough to mild skew. One shared seed gives a difference but no interval.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .compare import COMPARE_METRICS, expand_run_dirs, group_of
from .report import render_markdown, write_text
from .results import RESULTS_FILE, is_missing, load_results, run_metrics

__all__ = ["PAIRED_CSV_COLUMNS", "format_paired_markdown", "load_groups", "paired_differences",
           "t_quantile", "write_paired"]

PAIRED_CSV_COLUMNS = ("preset", "metric", "method", "reference", "n_seeds", "mean_diff", "ci_low", "ci_high")
# Metrics where lower is better (a negative difference is an improvement).
LOWER_IS_BETTER = {"forgetting"}


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on t_cdf; ``t_quantile(0.975, 4)`` = 2.7764)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mean_ci(diffs: Sequence[float], level: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high) of the t-interval of ``diffs``; low/high None below two values."""
    n = len(diffs)
    if n == 0:
        return None, None, None
    mean = sum(diffs) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def load_groups(run_dirs: Sequence[str | Path], group_by: str = "name") -> dict[tuple[str, str], dict[int, dict]]:
    """{(preset, group label): {seed: {"metrics": ..., "config": ..., "method": ..., "run": path,
    "results": the whole results.json}}} of the finished runs. Two runs of one group with the
    same seed are an error (which to pair?)."""
    groups: dict[tuple[str, str], dict[int, dict]] = {}
    for p in expand_run_dirs(run_dirs):
        if not (p / RESULTS_FILE).is_file():
            continue
        res = load_results(p)
        key = group_of(res, p, group_by)
        seed = int(res.get("seed", 0))
        if seed in groups.setdefault(key, {}):
            raise ValueError(f"{p} and {groups[key][seed]['run']} are both seed {seed} of '{key[1]}' "
                             f"(preset {key[0]}): name runs so that each group has one run per seed")
        groups[key][seed] = {"metrics": run_metrics(res)[0], "config": res.get("config") or {},
                             "method": str(res.get("method") or "?"), "run": str(p),
                             "results": res}
    return groups


def paired_differences(groups: dict, reference: str, metrics: Sequence[str] = COMPARE_METRICS) -> list[dict]:
    """One row per (preset, metric, other group): keys of PAIRED_CSV_COLUMNS plus preset,
    seeds and diffs (fractions). ``reference`` is a group label; a preset without it is skipped."""
    presets = [p for p, label in groups if label == reference]
    if not presets:
        labels = sorted({label for _, label in groups})
        raise ValueError(f"--reference {reference!r} is not among the compared methods/variants: "
                         f"{', '.join(labels) or 'none'}")
    rows = []
    for preset in presets:
        ref = groups[(preset, reference)]
        for metric in metrics:
            for (p, label), runs in groups.items():
                if p != preset or label == reference:
                    continue
                seeds, diffs = [], []
                for s in sorted(set(runs) & set(ref)):
                    a, b = runs[s]["metrics"].get(metric), ref[s]["metrics"].get(metric)
                    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not is_missing(a) \
                            and not is_missing(b):
                        seeds.append(s)
                        diffs.append(float(a) - float(b))
                mean, lo, hi = mean_ci(diffs)
                rows.append({"preset": preset, "metric": metric, "method": label, "reference": reference,
                             "n_seeds": len(diffs), "mean_diff": mean, "ci_low": lo, "ci_high": hi,
                             "seeds": seeds, "diffs": diffs})
    return rows


def excludes_zero(row: dict) -> bool:
    return row["ci_low"] is not None and (row["ci_low"] > 0 or row["ci_high"] < 0)


def _pp(v: float | None) -> str:
    return "n/a" if v is None else f"{100.0 * v:+.2f}"


def format_paired_markdown(rows: Sequence[dict]) -> str:
    """Markdown table of ``paired_differences`` rows in percentage points; differences whose 95 %
    interval excludes 0 are in bold and marked with *."""
    header = ["metric", "method/variant", "reference", "preset", "seeds", "mean diff (pp)", "95 % CI (pp)"]
    table = []
    for r in rows:
        ci = "n/a" if r["ci_low"] is None else f"[{_pp(r['ci_low'])}, {_pp(r['ci_high'])}]"
        mean = _pp(r["mean_diff"])
        if excludes_zero(r):
            mean, ci = f"**{mean}** *", f"**{ci}**"
        table.append([r["metric"] + (" (lower is better)" if r["metric"] in LOWER_IS_BETTER else ""),
                      r["method"], r["reference"], r["preset"], str(r["n_seeds"]), mean, ci])
    note = ("Paired differences (method − reference) on the seeds both have: mean and 95 % Student-t "
            "interval over seeds, in percentage points. * (bold): the interval excludes 0; otherwise "
            "the difference is inconclusive at these seeds.")
    blocks: list[tuple] = [("p", note), ("table", header, table)] if table else [("p", "No paired rows.")]
    return render_markdown(blocks).rstrip() + "\n"


def _csv(v: Any, key: str) -> str:
    if v is None:
        return ""
    if key in ("mean_diff", "ci_low", "ci_high"):
        return f"{100.0 * v:.4f}"
    return str(v)


def write_paired(rows: Sequence[dict], prefix: str | Path, header: str = "") -> list[Path]:
    """``PREFIX.paired.md`` and ``PREFIX.paired.csv`` (PAIRED_CSV_COLUMNS; differences in
    percentage points, 4 decimals; interval empty below two shared seeds)."""
    import csv
    import io

    prefix = Path(prefix)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PAIRED_CSV_COLUMNS)
    for r in rows:
        w.writerow([_csv(r[c], c) for c in PAIRED_CSV_COLUMNS])
    md = (header.rstrip() + "\n\n" if header else "") + format_paired_markdown(rows)
    return [write_text(prefix.with_name(prefix.name + ".paired.md"), md),
            write_text(prefix.with_name(prefix.name + ".paired.csv"), buf.getvalue())]
