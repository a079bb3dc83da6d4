"""Choose among the variants of a sweep on VALIDATION accuracy only (issue 13).

Reads ``val_accuracy[-1]`` (the validation accuracy on every class seen after the last task) of
each run's results.json under a sweep folder, groups the runs by variant (the run name without
its ``-s<seed>``), and ranks the variants by their mean over the seeds every variant has (paired).
Test accuracy is never read here; compare the chosen settings on test afterwards with
``mmcl compare``. With ``--runs`` it also counts, per run with adapters, the (task, block) cells
that reject uniform routing and class-independent routing at p < 0.001 (issue 13's acceptance).

    python benchmarks/select_on_validation.py runs/cma-defaults-search --out benchmarks/results/cma_defaults_search
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from mmcl.paired import load_groups


def load_runs(folder: Path) -> dict[str, dict[int, dict]]:
    """{variant: {seed: results}} of the finished runs under ``folder``, grouped as mmcl compare
    groups them (mmcl.paired.load_groups: the run name less its seed; the preset is named only
    when the folder holds several)."""
    groups = load_groups([folder])
    several = len({preset for preset, _ in groups}) > 1
    return {f"{preset}-{label}" if several else label: {s: e["results"] for s, e in by_seed.items()}
            for (preset, label), by_seed in groups.items()}


def routing_cells(res: dict, alpha: float = 1e-3) -> tuple[int, int] | None:
    """(cells rejecting both uniform and class-independent routing at ``alpha``, all cells)."""
    diag = res.get("routing_diagnostics") or []
    cells = [d for task in diag for d in task]
    if not cells:
        return None
    both = sum(1 for d in cells if d["uniform_p"] < alpha and d["class_p"] is not None and d["class_p"] < alpha)
    return both, len(cells)


def rank(runs: dict[str, dict[int, dict]]) -> tuple[list[int], list[dict]]:
    """The seeds every variant finished, and the variants sorted by mean validation accuracy on them."""
    # Variants cut early (fewer seeds than the most any has) are ranked on their own seeds and
    # marked, so that they do not shrink the paired comparison of the others.
    most = max((len(v) for v in runs.values()), default=0)
    full = [set(v) for v in runs.values() if len(v) == most]
    seeds = sorted(set.intersection(*full)) if full else []
    rows = []
    for variant, by_seed in runs.items():
        own = seeds if len(by_seed) == most else sorted(by_seed)
        vals = [by_seed[s]["val_accuracy"][-1] for s in own]
        cells = [routing_cells(by_seed[s]) for s in own]
        rows.append({"variant": variant, "val": vals, "mean": statistics.fmean(vals) if vals else float("nan"),
                     "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                     "routing_cells": [c for c in cells if c is not None], "seeds": own,
                     "train_time_s": statistics.fmean(by_seed[s]["train_time_s"] for s in own) if own else None})
    rows.sort(key=lambda r: (r["seeds"] != seeds, -r["mean"]))
    return seeds, rows


def markdown(seeds: list[int], rows: list[dict], folder: str) -> str:
    lines = [f"Validation accuracy after the last task (all seen classes), seeds {', '.join(map(str, seeds))}, "
             f"runs in `{folder}`; sorted by the mean. Test accuracy is not used for this choice.", "",
             "| variant | mean val % | sd | per seed | cells both p<0.001 (of all) | train time s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cells = ", ".join(f"{a}/{b}" for a, b in r["routing_cells"]) or "n/a"
        name = r["variant"] if r["seeds"] == seeds else f"{r['variant']} (cut: seeds {r['seeds']} only)"
        lines.append(f"| {name} | {100 * r['mean']:.2f} | {100 * r['sd']:.2f} | "
                     + " ".join(f"{100 * v:.2f}" for v in r["val"]) + f" | {cells} | "
                     + (f"{r['train_time_s']:.0f}" if r["train_time_s"] is not None else "n/a") + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--out", help="write PREFIX.md and PREFIX.json")
    args = ap.parse_args(argv)
    seeds, rows = rank(load_runs(Path(args.folder)))
    text = markdown(seeds, rows, args.folder)
    print(text)
    if args.out:
        Path(args.out + ".md").write_text(text)
        Path(args.out + ".json").write_text(json.dumps({"seeds": seeds, "variants": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
