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
import json
import re
from pathlib import Path

from mmcl.paired import mean_ci


def load(folder: Path) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for path in sorted(folder.glob("*/results.json")):
        res = json.loads(path.read_text())
        variant = re.sub(r"-s\d+$", "", path.parent.name).removeprefix(f"{res.get('preset')}-")
        out.setdefault(variant, {})[int(res["seed"])] = res
    return out


def acc(res: dict) -> float:
    return 100.0 * res["metrics"]["acc_last"]


def robust(res: dict, kind: str, modality: str) -> float | None:
    cell = (res.get("modality_robustness") or {}).get(kind, {}).get(modality) or {}
    return None if cell.get("accuracy") is None else 100.0 * cell["accuracy"]


def fmt_ci(diffs: list[float]) -> str:
    mean, lo, hi = mean_ci(diffs)
    if mean is None:
        return "n/a"
    if lo is None:
        return f"{mean:+.2f} (one seed)"
    mark = " *" if lo > 0 or hi < 0 else ""
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]{mark}"


def mean_of(xs: list[float | None]) -> str:
    xs = [x for x in xs if x is not None]
    return "n/a" if not xs else f"{sum(xs) / len(xs):.2f}"


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
                    f"| {mean_of([robust(weak[variant][s], 'without', modality) for s in seeds])} "
                    f"| {mean_of([robust(weak[variant][s], 'alone', modality) for s in seeds])} |")
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
