"""The paper's claims checked against a paired comparison (``mmcl compare --reference cma``).

Each claim compares the reference (the paper's method, normally the group ``cma``) with other
groups on one metric, through the paired differences of mmcl.paired shown as
reference − other. A claim *holds* when the 95 % interval lies entirely on the claimed side of 0,
*does not hold* when it lies entirely on the other side, and is *inconclusive* when it contains
0 (or fewer than two seeds are shared); *not measured* when the comparison has no such group.
"Above every baseline" holds when it holds against each baseline, does not hold when it fails
against one, and is inconclusive otherwise. Baselines are the groups of another method than
the reference's, except ``joint`` (trained on all data so far: an upper bound, not a rival).
Ablations are found by their config (results.json), not their names: the group of the
reference's method whose runs all have the ablation's value of the key and whose config differs
least from the reference's (so a combined ablation does not stand in for the single one).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .paired import paired_differences
from .report import render_markdown, write_text

__all__ = ["CLAIMS", "CLAIMS_CSV_COLUMNS", "Claim", "check_claims", "format_claims_markdown", "write_claims"]

UPPER_BOUNDS = {"joint"}
# PREFIX.claims.csv: reference − other in percentage points (4 decimals), empty where not measured.
CLAIMS_CSV_COLUMNS = ("preset", "claim", "other", "n_seeds", "mean", "ci_low", "ci_high", "verdict")


@dataclass(frozen=True)
class Claim:
    text: str
    metric: str
    better: str                      # "higher": the reference above the other; "lower": below
    against: str = "baselines"       # "baselines" or "variant"
    variant: dict = field(default_factory=dict)   # config key -> value of the ablation


CLAIMS = (
    Claim("the method above every baseline in acc_last", "acc_last", "higher"),
    Claim("the method forgets less than every baseline", "forgetting", "lower"),
    Claim("joint-representation alignment above pairwise contrastive (acc_last)", "acc_last", "higher",
          "variant", {"loss.align_kind": "pairwise_infonce"}),
    Claim("expert freezing lowers forgetting", "forgetting", "lower", "variant", {"freeze.enabled": False}),
    Claim("adapters above no adapters (acc_last)", "acc_last", "higher", "variant", {"model.adapters": False}),
)


def _get(config: dict, dotted: str) -> Any:
    cur: Any = config
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _verdict(row: dict, better: str) -> tuple[str, float | None, float | None, float | None]:
    """(verdict, mean, low, high) of reference − other for one paired row (other − reference)."""
    mean = None if row["mean_diff"] is None else -row["mean_diff"]
    if row["ci_low"] is None:
        return "inconclusive", mean, None, None
    lo, hi = -row["ci_high"], -row["ci_low"]
    claimed, against = (lo > 0, hi < 0) if better == "higher" else (hi < 0, lo > 0)
    return ("holds" if claimed else "does not hold" if against else "inconclusive"), mean, lo, hi


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _distance(a: dict, b: dict) -> int:
    """How many config keys (run.* aside: seed, name, folders) two runs' configs differ in."""
    fa, fb = _flat(a), _flat(b)
    return sum(fa.get(k) != fb.get(k) for k in set(fa) | set(fb) if not k.startswith("run."))


def _others(claim: Claim, groups: dict, preset: str, reference: str) -> list[str]:
    """The groups a claim compares the reference with: for a baseline claim every group of another
    method (not an upper bound); for an ablation the group(s) of the reference's method with the
    ablation's values that differ least from the reference's config, so that a combined ablation
    (no adapters and no alignment) does not stand in for the single one."""
    ref_runs = groups[(preset, reference)]
    ref_method = next(iter(ref_runs.values()))["method"]
    labels, distance = [], {}
    for (p, label), runs in groups.items():
        if p != preset or label == reference:
            continue
        methods = {r["method"] for r in runs.values()}
        if claim.against == "baselines":
            if ref_method not in methods and not methods & UPPER_BOUNDS:
                labels.append(label)
        elif methods == {ref_method} and all(
                all(_get(r["config"], k) == v for k, v in claim.variant.items()) for r in runs.values()) and any(
                any(_get(r["config"], k) != v for k, v in claim.variant.items()) for r in ref_runs.values()):
            labels.append(label)
            distance[label] = _distance(next(iter(runs.values()))["config"], next(iter(ref_runs.values()))["config"])
    if distance:
        labels = [label for label in labels if distance[label] == min(distance.values())]
    return labels


def check_claims(groups: dict, reference: str, claims: Sequence[Claim] = CLAIMS) -> list[dict]:
    """One row per claim and compared group, then for baseline claims one summary row ("every
    baseline"). Keys: preset, claim, other, n_seeds, mean, ci_low, ci_high (reference − other,
    fractions), verdict."""
    rows = paired_differences(groups, reference, metrics=sorted({c.metric for c in claims}))
    by = {(r["preset"], r["metric"], r["method"]): r for r in rows}
    out = []
    for preset in dict.fromkeys(r["preset"] for r in rows) or [p for p, label in groups if label == reference]:
        for claim in claims:
            others = _others(claim, groups, preset, reference)
            verdicts = []
            for other in others:
                v, mean, lo, hi = _verdict(by[(preset, claim.metric, other)], claim.better)
                verdicts.append(v)
                out.append({"preset": preset, "claim": claim.text, "other": other,
                            "n_seeds": by[(preset, claim.metric, other)]["n_seeds"],
                            "mean": mean, "ci_low": lo, "ci_high": hi, "verdict": v})
            if claim.against == "baselines" or not others:
                verdict = ("not measured" if not others else "does not hold" if "does not hold" in verdicts
                           else "holds" if all(v == "holds" for v in verdicts) else "inconclusive")
                out.append({"preset": preset, "claim": claim.text,
                            "other": "every baseline" if claim.against == "baselines" else "(no such variant)",
                            "n_seeds": min((r["n_seeds"] for r in out[len(out) - len(others):]), default=0),
                            "mean": None, "ci_low": None, "ci_high": None, "verdict": verdict})
    return out


def _pp(v: float | None) -> str:
    return "" if v is None else f"{100.0 * v:+.2f}"


def format_claims_markdown(rows: Sequence[dict], reference: str) -> str:
    header = ["claim", "preset", f"{reference} vs", "seeds", f"{reference} − other (pp)", "95 % CI (pp)", "verdict"]
    table = [[r["claim"], r["preset"], r["other"], str(r["n_seeds"]), _pp(r["mean"]),
              "" if r["ci_low"] is None else f"[{_pp(r['ci_low'])}, {_pp(r['ci_high'])}]",
              f"**{r['verdict']}**" if r["other"] in ("every baseline",) else r["verdict"]] for r in rows]
    note = ("Each claim of the paper against this comparison: holds when the 95 % interval of the paired "
            f"difference ({reference} − other) lies on the claimed side of 0, does not hold when it lies on the "
            "other side, inconclusive when it contains 0. For forgetting the claimed side is negative.")
    return render_markdown([("p", note), ("table", header, table)]).rstrip() + "\n"


def write_claims(rows: Sequence[dict], prefix: str | Path, reference: str) -> list[Path]:
    """``PREFIX.claims.md`` and ``PREFIX.claims.csv`` (CLAIMS_CSV_COLUMNS), so that tables built
    from a comparison (benchmarks/readme_comparison.py) need the committed files only, not the runs."""
    import csv
    import io

    prefix = Path(prefix)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CLAIMS_CSV_COLUMNS)
    for r in rows:
        w.writerow(["" if r[c] is None else f"{100.0 * r[c]:.4f}" if c in ("mean", "ci_low", "ci_high")
                    else str(r[c]) for c in CLAIMS_CSV_COLUMNS])
    return [write_text(prefix.with_name(prefix.name + ".claims.md"), format_claims_markdown(rows, reference)),
            write_text(prefix.with_name(prefix.name + ".claims.csv"), buf.getvalue())]
