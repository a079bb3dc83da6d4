"""acc_last and forgetting of the baselines on frozen features (issue 15) beside er, on the full
``tuxpaint`` preset, seeds 0-2, each method with its defaults.

    .venv/bin/python benchmarks/new_baselines_tuxpaint.py                # run what is missing, then tabulate
    .venv/bin/python benchmarks/new_baselines_tuxpaint.py --methods er simplecil --seeds 0 1

Runs ``mmcl run tuxpaint method.name=M run.seed=S`` (variants: extra overrides) one at a time
into --runs/<name>-s<seed>, skipping runs whose results.json exists (resumable: an
interrupted run resumes from its checkpoint), then writes --out (Markdown): per seed,
mean ± std, and each method's paired difference to er over the same seeds with a 95 %
t-interval ("inconclusive" when it contains 0).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS = {  # name -> overrides
    "er": ["method.name=er"],
    "simplecil": ["method.name=simplecil"],
    "ranpac": ["method.name=ranpac"],
    "slca": ["method.name=slca"],
    "er+wa": ["method.name=er", "model.weight_align=true"],
    "lwf+wa": ["method.name=lwf", "model.weight_align=true"],
    "lwf": ["method.name=lwf"],
    "cma": ["method.name=cma"],
}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def run(name: str, seed: int, runs: Path) -> dict | None:
    folder = runs / f"{name}-s{seed}"
    res = folder / "results.json"
    if not res.exists():
        cmd = [sys.executable, "-m", "mmcl", "run", "tuxpaint", *VARIANTS[name], f"run.seed={seed}",
               f"run.name={folder.name}", f"run.out_dir={runs}", "run.progress=never"]
        print(" ".join(cmd[1:]), flush=True)
        if subprocess.call(cmd) != 0:
            return None
    return json.loads(res.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["er", "simplecil", "ranpac", "slca", "er+wa"],
                    choices=sorted(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--runs", default="runs/issue15")
    ap.add_argument("--out", default="benchmarks/results/new_baselines_tuxpaint.md")
    ap.add_argument("--table-only", action="store_true", help="tabulate the finished runs, start none")
    args = ap.parse_args(argv)
    runs = Path(args.runs)
    table: dict[str, dict[int, dict]] = {}
    for name in args.methods:
        for seed in args.seeds:
            if args.table_only and not (runs / f"{name}-s{seed}" / "results.json").exists():
                continue
            r = run(name, seed, runs)
            if r is not None:
                table.setdefault(name, {})[seed] = {"acc_last": 100 * r["metrics"]["acc_last"],
                                                    "forgetting": 100 * r["metrics"]["forgetting"],
                                                    "train_time_s": r["train_time_s"]}
    lines = ["# Baselines on frozen features on the full tuxpaint preset (issue 15)", "",
             f"Command: `.venv/bin/python benchmarks/new_baselines_tuxpaint.py --methods {' '.join(args.methods)} "
             f"--seeds {' '.join(map(str, args.seeds))}` (each method with its defaults; 2 shared CPU cores, "
             "training times noisy).", "",
             "| method | seeds | acc_last per seed (%) | acc_last (%) | forgetting per seed (%) | forgetting (%) | "
             "train time (s, mean) |", "|---|---|---|---|---|---|---|"]

    def ms(v):
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"

    for name, by_seed in table.items():
        seeds = sorted(by_seed)
        acc = [by_seed[s]["acc_last"] for s in seeds]
        fg = [by_seed[s]["forgetting"] for s in seeds]
        lines.append(f"| {name} | {','.join(map(str, seeds))} | {' / '.join(f'{a:.2f}' for a in acc)} | {ms(acc)} | "
                     f"{' / '.join(f'{f:.2f}' for f in fg)} | {ms(fg)} | "
                     f"{statistics.mean(by_seed[s]['train_time_s'] for s in seeds):.1f} |")
    if "er" in table:
        lines += ["", "Paired difference to er over the same seeds (mean, 95 % t-interval):", "",
                  "| method | seeds | acc_last - er (points) | forgetting - er (points) |", "|---|---|---|---|"]
        for name, by_seed in table.items():
            if name == "er":
                continue
            seeds = sorted(set(by_seed) & set(table["er"]))
            if len(seeds) < 2:
                continue
            cells = []
            for key in ("acc_last", "forgetting"):
                d = [by_seed[s][key] - table["er"][s][key] for s in seeds]
                m, h = statistics.mean(d), T95[len(d) - 1] * statistics.stdev(d) / math.sqrt(len(d))
                verdict = " (inconclusive)" if m - h <= 0 <= m + h else ""
                cells.append(f"{m:+.2f} [{m - h:+.2f}, {m + h:+.2f}]{verdict}")
            lines.append(f"| {name} | {','.join(map(str, seeds))} | {cells[0]} | {cells[1]} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
