"""Summarise the routing and training diagnostics of a sweep's runs with adapters, per task,
over seeds: the evidence behind the README's explanations of the claims (issue 19).

For every variant (grouped as ``mmcl compare`` groups runs) whose runs recorded routing
diagnostics, one row per task with the range over seeds (min-max) of:
- frozen experts per block after the task (``frozen_experts``; the fewest and most of any block);
- ``frozen_share``: the share of the task's own clean routing that goes to experts frozen
  after earlier tasks (``routing_diagnostics``; range over blocks and seeds);
- the clean gate-logit std and the gate-noise std (``gate_scales``);
- the loss terms (``train_losses``) and the gradient norms of experts, gates and projections
  (``grad_norms``), means over seeds.

Then, for every variant (with adapters or not), the accuracy on each task's classes after the
last task and just after learning it (the accuracy matrix's last row and diagonal), means over
seeds: which tasks a method loses, and whether it learnt them as well in the first place.

    python benchmarks/cma_diagnostics.py runs/tuxpaint-large-paired --out OUT.md
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from mmcl.paired import load_groups

LOSS_TERMS = ("cls", "align", "distil", "preserve")
GRAD_GROUPS = ("experts", "gates", "projections", "heads")


def span(values: list[float], fmt: str = "{:.2f}") -> str:
    """'lo-hi' (or one value when they agree) of the values, '' without any."""
    if not values:
        return ""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def at_task(results: dict, key: str, t: int, empty):
    """``results[key][t]``, or ``empty`` where the run did not record it."""
    recorded = results.get(key) or []
    return recorded[t] if t < len(recorded) else empty


def task_rows(runs: dict[int, dict]) -> list[dict]:
    """One row per task of the diagnostics of ``runs`` ({seed: results.json})."""
    results = list(runs.values())
    tasks = min(len(r.get("frozen_experts") or []) for r in results)
    rows = []
    for t in range(tasks):
        frozen = [len(block) for r in results for block in r["frozen_experts"][t]]
        shares = [cell["frozen_share"] for r in results for cell in at_task(r, "routing_diagnostics", t, [])
                  if cell.get("frozen_share") is not None] if t > 0 else []
        scales = [s for r in results for s in at_task(r, "gate_scales", t, [])]
        losses = {k: [d[k] for d in (at_task(r, "train_losses", t, {}) for r in results) if k in d] for k in LOSS_TERMS}
        grads = {k: [d[k] for d in (at_task(r, "grad_norms", t, {}) for r in results) if k in d] for k in GRAD_GROUPS}
        rows.append({"task": t + 1, "frozen": span(frozen, "{:d}"), "frozen_share": span(shares),
                     "clean_std": span([s[0] for s in scales]), "noise_std": span([s[1] for s in scales]),
                     **{f"loss_{k}": f"{statistics.fmean(v):.2f}" if v else "" for k, v in losses.items()},
                     **{f"grad_{k}": f"{statistics.fmean(v):.2f}" if v else "" for k, v in grads.items()}})
    return rows


def per_task_accuracy(runs: dict[int, dict]) -> tuple[list[float], list[float]]:
    """(final, just learnt) accuracy per task in %, means over the seeds of ``runs``."""
    matrices = [r["accuracy_matrix"] for r in runs.values()]
    tasks = min(len(m) for m in matrices)
    final = [100 * statistics.fmean(m[tasks - 1][t] for m in matrices) for t in range(tasks)]
    learnt = [100 * statistics.fmean(m[t][t] for m in matrices) for t in range(tasks)]
    return final, learnt


def accuracy_section(groups: dict) -> list[str]:
    out = ["## Accuracy per task (%, means over seeds): after the last task / just after learning it", ""]
    for (preset, label), runs in sorted(groups.items()):
        final, learnt = per_task_accuracy({s: e["results"] for s, e in runs.items()})
        out.append(f"- {label} ({preset}, {len(runs)} seeds): final {', '.join(f'{a:.1f}' for a in final)}"
                   f" / just learnt {', '.join(f'{a:.1f}' for a in learnt)}")
    return out + [""]


COLUMNS = [("task", "task"), ("frozen", "frozen experts per block"), ("frozen_share", "frozen_share"),
           ("clean_std", "clean gate std"), ("noise_std", "noise std"),
           *((f"loss_{k}", f"L_{k}") for k in LOSS_TERMS), *((f"grad_{k}", f"|g| {k}") for k in GRAD_GROUPS)]


def markdown(folder: str) -> str:
    groups = load_groups([folder])
    out = [f"# Routing and training diagnostics of `{folder}`", "",
           f"`python benchmarks/cma_diagnostics.py {folder}`. Ranges are min-max over seeds (and blocks);",
           "losses and gradient norms are means over seeds of each task's mean over its steps.", ""]
    for (preset, label), runs in sorted(groups.items()):
        with_adapters = {s: e["results"] for s, e in runs.items() if e["results"].get("frozen_experts")}
        if not with_adapters:
            continue
        out += [f"## {label} ({preset}, seeds {', '.join(map(str, sorted(with_adapters)))})", "",
                "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        out += ["| " + " | ".join(str(row[k]) for k, _ in COLUMNS) + " |" for row in task_rows(with_adapters)]
        out.append("")
    return "\n".join(out + accuracy_section(groups))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--out", help="write the markdown to this file")
    args = ap.parse_args()
    text = markdown(args.folder)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
