"""The weak-encoder table of docs/weak_encoder.md (issue 17): acc_last of each method with the
pre-trained image encoder and with a frozen random one, on the seeds both sweeps share, with
paired 95 % intervals, and how much each method leans on the image (its modality robustness).

    python benchmarks/weak_encoder_table.py runs/tuxpaint-paired runs/weak-encoder-tuxpaint \
        --out benchmarks/results/weak_encoder_tuxpaint.md

Both folders hold runs named <preset>-<variant>-s<seed> (mmcl sweep); the variants compared are
those the random-encoder folder has. Differences are in percentage points; an interval that
contains 0 is inconclusive at these seeds.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mmcl.compare import robustness_means
from mmcl.paired import load_groups, mean_ci


def load(folder: Path) -> dict[str, dict[int, dict]]:
    """{variant: {seed: entry}} of the finished runs under ``folder`` (mmcl.paired.load_groups:
    runs grouped by name across seeds, the preset prefix dropped)."""
    return {label: seeds for (_, label), seeds in load_groups([folder]).items()}


def acc(entry: dict) -> float:
    return 100.0 * entry["metrics"]["acc_last"]


def robust(entries: list[dict], kind: str, modality: str) -> str:
    """Mean over the entries of the accuracy (%) ``kind`` ('without' / 'alone') ``modality``."""
    means = robustness_means([e["results"].get("modality_robustness") for e in entries])
    value = None if means is None else means[kind].get(modality)
    return "n/a" if value is None else f"{100.0 * value:.2f}"


def fmt_ci(diffs: list[float]) -> str:
    mean, lo, hi = mean_ci(diffs)
    if mean is None:
        return "n/a"
    if lo is None:
        return f"{mean:+.2f} (one seed)"
    mark = " *" if lo > 0 or hi < 0 else ""
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]{mark}"


def table(pretrained: dict, weak: dict, modality: str, reference: str = "cma") -> str:
    rows = ["| method/variant | seeds | acc_last, pre-trained (%) | acc_last, random (%) | random - pre-trained (pp) "
            f"| - {reference}, random (pp) | without {modality}, random (%) | {modality} alone, random (%) |",
            "|---|---|---|---|---|---|---|---|"]
    for variant in sorted(weak, key=lambda v: (v != reference, v)):
        seeds = sorted(set(weak[variant]) & set(pretrained.get(variant, {})))
        ref = sorted(set(seeds) & set(weak.get(reference, {})))
        if not seeds:
            continue
        w = [acc(weak[variant][s]) for s in seeds]
        p = [acc(pretrained[variant][s]) for s in seeds]
        vs_ref = "" if variant == reference else fmt_ci([acc(weak[variant][s]) - acc(weak[reference][s]) for s in ref])
        rows.append(f"| {variant} | {' '.join(map(str, seeds))} | {sum(p) / len(p):.2f} | {sum(w) / len(w):.2f} "
                    f"| {fmt_ci([a - b for a, b in zip(w, p)])} | {vs_ref} "
                    f"| {robust([weak[variant][s] for s in seeds], 'without', modality)} "
                    f"| {robust([weak[variant][s] for s in seeds], 'alone', modality)} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pretrained", type=Path)
    ap.add_argument("weak", type=Path)
    ap.add_argument("--modality", default="image")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    text = table(load(args.pretrained), load(args.weak), args.modality)
    print(text, end="")
    if args.out:
        args.out.write_text(f"Made by `python benchmarks/weak_encoder_table.py {args.pretrained} {args.weak} "
                            f"--out {args.out}`; * = the 95 % interval excludes 0.\n\n" + text)


if __name__ == "__main__":
    main()
