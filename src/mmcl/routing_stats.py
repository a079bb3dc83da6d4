"""Statistics of expert routing, as pure functions of count tables: is the routing of a block
distinguishable from uniform, does it depend on the sample's class, and how much of it still
goes to experts frozen earlier. The methods fill the tables (mmcl.methods.cma); the report
and results.json show the numbers.

Counts are of (sample, modality) routings' top-k choices: with top_k=2 every routing adds 2.
The tests treat each choice as one observation; the two choices of one routing are not
independent (they are distinct experts), so the p-values are approximate; with 10 experts
and thousands of choices the approximation is not what decides a p < 0.001.
"""
from __future__ import annotations

import math

import torch


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for X ~ chi-square(df): the regularized upper incomplete gamma Q(df/2, x/2)."""
    if df <= 0:
        return float("nan")
    if x <= 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(x / 2, dtype=torch.float64)))


def uniformity(counts) -> dict:
    """Pearson's chi-square test of ``counts`` (E,) against uniform routing over the E experts:
    {"chi2", "df", "p"} (p is NaN without counts)."""
    c = torch.as_tensor(counts, dtype=torch.float64).flatten()
    n, e = float(c.sum()), c.numel()
    if n <= 0 or e < 2:
        return {"chi2": float("nan"), "df": e - 1, "p": float("nan")}
    expected = n / e
    chi2 = float(((c - expected) ** 2 / expected).sum())
    return {"chi2": chi2, "df": e - 1, "p": chi2_sf(chi2, e - 1)}


def class_dependence(table) -> dict:
    """G-test of independence between the class (rows) and the chosen expert (columns) of a
    (C, E) count table, and their mutual information in nats. {"g", "df", "p", "mi",
    "mi_random"}: ``mi_random`` is the mutual information expected under routing that ignores
    the class at the same counts (the G statistic's mean df under independence, divided by 2N:
    the plug-in estimate is biased upwards by that much). Rows and columns without counts are
    left out (a class absent from the task, an expert never chosen)."""
    t = torch.as_tensor(table, dtype=torch.float64)
    t = t[t.sum(1) > 0][:, t.sum(0) > 0] if t.numel() else t
    n = float(t.sum()) if t.numel() else 0.0
    if n <= 0 or t.shape[0] < 2 or t.shape[1] < 2:
        return {"g": float("nan"), "df": 0, "p": float("nan"), "mi": float("nan"), "mi_random": float("nan")}
    expected = t.sum(1, keepdim=True) * t.sum(0, keepdim=True) / n
    nz = t > 0
    g = float(2 * (t[nz] * torch.log(t[nz] / expected[nz])).sum())
    df = (t.shape[0] - 1) * (t.shape[1] - 1)
    return {"g": g, "df": df, "p": chi2_sf(g, df), "mi": g / (2 * n), "mi_random": df / (2 * n)}


def frozen_choice_share(table, frozen: list[int]) -> dict:
    """How much of the routing still goes to the experts in ``frozen``: the share of all choices
    and the share per class row of a (C, E) count table ({"all": s, "by_class": [s_c or None]})."""
    t = torch.as_tensor(table, dtype=torch.float64)
    if not frozen or t.numel() == 0:
        return {"all": 0.0 if t.numel() else None, "by_class": [0.0] * t.shape[0] if t.numel() else []}
    f = t[:, list(frozen)].sum(1)
    rows = t.sum(1)
    total = float(rows.sum())
    by_class = [float(a / b) if b > 0 else None for a, b in zip(f.tolist(), rows.tolist())]
    return {"all": float(f.sum() / total) if total > 0 else None, "by_class": by_class}


def summarize_block(counts, table, frozen_before: list[int]) -> dict:
    """The per-(task, block) diagnostics results.json stores: uniformity of ``counts`` (the
    counts the freezing rule used), class dependence of ``table`` (clean routing by class) and
    the share of that routing still going to experts frozen before the task."""
    u, d = uniformity(counts), class_dependence(table)
    share = frozen_choice_share(table, frozen_before)

    def clean(v):  # NaN (no counts) is written as null in JSON
        return None if isinstance(v, float) and math.isnan(v) else v
    return {"uniform_chi2": clean(round(u["chi2"], 4)), "uniform_p": clean(u["p"]),
            "class_g": clean(round(d["g"], 4)), "class_df": d["df"], "class_p": clean(d["p"]),
            "class_mi": clean(round(d["mi"], 6)), "class_mi_random": clean(round(d["mi_random"], 6)),
            "frozen_share": share["all"], "frozen_share_by_class": share["by_class"]}
