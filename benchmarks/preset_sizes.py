"""Sizes of the Tux Paint presets from the installed stamps, without encoders: classes, stamps,
samples and images, and the train / val / test samples of a seed (split by stamp), per domain
for the domain-incremental presets. Walks the tree and reads the NAME.txt files only.

    .venv/bin/python benchmarks/preset_sizes.py [PRESET ...] [--seed N]
"""
from __future__ import annotations

import argparse
import json
from collections import Counter

from mmcl.config import build_config
from mmcl.data import TuxPaint, split_samples

PRESETS = ["tuxpaint", "tuxpaint-dil", "tuxpaint-large", "tuxpaint-large-12x2", "tuxpaint-shift"]


def sizes(preset: str, seed: int) -> dict:
    cfg = build_config(preset, {"run.seed": seed})
    ds = TuxPaint(cfg.data)
    records, sources = ds.index()
    split = split_samples(records, cfg.data.split, seed)
    stamps = {r["stamp"] for r in records}
    per_class = Counter(r["class_name"] for r in records)
    stamps_per_class = Counter(s["class_name"] for s in {r["stamp"]: r for r in records}.values())
    out = {"preset": preset, "seed": seed, "classes": len(ds.classes), "tasks": cfg.scenario.num_tasks,
           "kind": cfg.scenario.kind, "stamps": len(stamps), "samples": len(records),
           "image_rows": len(sources["image"]), "domains": ds.domains,
           "split": {k: len(v) for k, v in split.items()},
           "stamps_per_class": dict(sorted(stamps_per_class.items())),
           "samples_per_class": dict(sorted(per_class.items()))}
    if cfg.scenario.kind == "domain":
        dom = {i: Counter() for i in range(len(ds.domains))}
        for k, idx in split.items():
            for i in idx:
                dom[records[i]["domain"]][k] += 1
        out["per_domain"] = {ds.domains[d]: dict(c) for d, c in dom.items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("presets", nargs="*", default=PRESETS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for preset in args.presets:
        s = sizes(preset, args.seed)
        print(f"{preset}: {s['classes']} classes, {s['tasks']} tasks ({s['kind']}), {s['stamps']} stamps, "
              f"{s['samples']} samples, {s['image_rows']} image rows; seed {s['seed']}: "
              f"{s['split']['train']} / {s['split']['val']} / {s['split']['test']} train / val / test")
        print(json.dumps(s))


if __name__ == "__main__":
    main()
