"""Every method and ablation on both Tux Paint presets, 3 seeds, then one comparison table.

    .venv/bin/python benchmarks/compare_tuxpaint.py --dry-run     # commands and time estimate
    .venv/bin/python benchmarks/compare_tuxpaint.py               # run what is missing, compare

Runs go to ``runs/compare/<preset>-<variant>-s<seed>/`` (``runs/compare-full/`` with
``--full``). A run whose results.json exists is skipped, and an unfinished one resumes from its
last checkpoint through ``mmcl run``'s own resume, so the script can be stopped and started
again across sessions. Each run is its own ``python -m mmcl run`` process; a failing run is
reported and the others go on. A method that is not registered (yet) is listed as missing and
skipped. At the end ``mmcl compare``'s table (mean ± std over seeds) is written to
``benchmarks/results/compare_tuxpaint.{md,csv}``.

By default every run uses the same smaller variant of the presets (``QUICK`` below: 1 epoch per
task, at most 10 stamps per class, 3 languages for tuxpaint-dil), so that the ~114 runs fit about
90 minutes on a 2-core CPU; ``--full`` uses the presets as they are (~10 hours there).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRESETS = ("tuxpaint", "tuxpaint-dil")
SEEDS = (0, 1, 2)

# variant -> (registered method, config overrides). Ablations are of the paper's method, cma.
VARIANTS: dict[str, tuple[str, dict]] = {
    "cma": ("cma", {}),
    "finetune": ("finetune", {}),
    "joint": ("joint", {}),
    "er": ("er", {}),
    "lwf": ("lwf", {}),
    "ewc": ("ewc", {}),
    "icarl": ("icarl", {}),
    "derpp": ("derpp", {}),
    "l2p": ("l2p", {}),
    "dualprompt": ("dualprompt", {}),
    "codaprompt": ("codaprompt", {}),
    "no_adapter": ("cma", {"model.adapters": False}),
    "no-freeze": ("cma", {"freeze.enabled": False}),
    "dense": ("cma", {"adapter.dense": True}),
    "pairwise-contrastive": ("cma", {"loss.align_kind": "pairwise_infonce"}),
    "no-align": ("cma", {"loss.align": 0}),
    "no-preserve": ("cma", {"loss.preserve": 0}),
    "no-distil": ("cma", {"loss.distil": 0}),
    "random-memory": ("cma", {"memory.selection": "random"}),
}

# The smaller variant used for every method alike (default; --full turns it off).
QUICK: dict[str, dict] = {
    "tuxpaint": {"train.epochs": 1, "data.tuxpaint.max_stamps_per_class": 10},
    "tuxpaint-dil": {"train.epochs": 1, "data.tuxpaint.max_stamps_per_class": 10,
                     "data.tuxpaint.languages": ["fr", "ru", "es"], "scenario.num_tasks": 3},
}

# Estimated seconds per run on the 2-core CPU of README "Measured results" (full presets: 372 s
# and 357 s measured; quick: ~20 s of start-up and evaluation plus the training time scaled by
# epochs 1/3, stamps 10/23 and, for tuxpaint-dil, languages 3/6). Uncalibrated for quick runs
# and for methods other than cma (joint trains on all data seen so far: slower).
EST_S = {("tuxpaint", True): 70, ("tuxpaint-dil", True): 45,
         ("tuxpaint", False): 372, ("tuxpaint-dil", False): 357}


def fmt_value(v) -> str:
    """A value as `mmcl run` reads it (YAML): lists as [a,b], booleans as true/false."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(fmt_value(x) for x in v) + "]"
    return str(v)


def quick_text() -> str:
    return "; ".join(f"{p}: " + " ".join(f"{k}={fmt_value(v)}" for k, v in o.items()) for p, o in QUICK.items())


@dataclass
class Job:
    preset: str
    variant: str
    method: str
    seed: int
    run_dir: Path
    overrides: list[str] = field(default_factory=list)
    status: str = "todo"   # todo | done (results.json exists) | missing (method not registered)
                           # | ran | failed

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "mmcl", "run", self.preset, *self.overrides, "--run-dir", str(self.run_dir)]


def method_registered(name: str) -> bool:
    from mmcl import registry
    try:
        registry.get("method", name)
    except KeyError:
        return False
    return True


def plan(presets, variants, seeds, runs_dir: Path, quick: bool = True, extra: list[str] = (),
         threads: int | None = None, registered=method_registered) -> list[Job]:
    """The runs to make, seed-major (all variants of seed 0 first), each with its status."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    have = {}
    jobs = []
    for seed in seeds:
        for preset in presets:
            for variant in variants:
                method, over = VARIANTS[variant]
                if method not in have:
                    have[method] = registered(method)
                o = {"method.name": method, "run.seed": seed, "run.progress": "never",
                     **(QUICK.get(preset, {}) if quick else {}), **over}
                if threads:
                    o["run.threads"] = threads
                args = [f"{k}={fmt_value(v)}" for k, v in o.items()] + list(extra)
                run_dir = runs_dir / f"{preset}-{variant}-s{seed}"
                status = ("missing" if not have[method] else
                          "done" if (run_dir / "results.json").is_file() else "todo")
                jobs.append(Job(preset, variant, method, seed, run_dir, args, status))
    return jobs


def estimate_s(jobs: list[Job], quick: bool, n_jobs: int = 1) -> float:
    return sum(EST_S.get((j.preset, quick), 120) for j in jobs if j.status == "todo") / max(1, n_jobs)


def _hm(seconds: float) -> str:
    m = round(seconds / 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def run_job(job: Job) -> Job:
    log = job.run_dir.parent / f".{job.run_dir.name}.log"
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        rc = subprocess.call(job.command, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    job.wall_s = time.perf_counter() - t0
    job.status = "ran" if rc == 0 and (job.run_dir / "results.json").is_file() else "failed"
    job.log = log
    return job


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="VARIANT",
                    help=f"default: all of {', '.join(VARIANTS)}")
    ap.add_argument("--full", action="store_true", help="the presets as they are instead of the smaller "
                                                        f"variant ({quick_text()})")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and the estimate; run nothing")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1; each gets cores/jobs threads)")
    ap.add_argument("--runs-dir", type=Path, help="default: runs/compare (runs/compare-full with --full)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "compare_tuxpaint",
                    help="output prefix of the .md and .csv (default: benchmarks/results/compare_tuxpaint)")
    ap.add_argument("--extra", action="append", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    quick = not args.full
    runs_dir = args.runs_dir or REPO / "runs" / ("compare" if quick else "compare-full")
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    if any(e.startswith("run.threads=") for e in args.extra):
        threads = None
    jobs = plan(args.presets, args.variants, args.seeds, runs_dir, quick, args.extra, threads)
    todo = [j for j in jobs if j.status == "todo"]
    missing = sorted({j.variant + (f" (method '{j.method}')" if j.method != j.variant else "")
                      for j in jobs if j.status == "missing"})
    print(f"{len(jobs)} runs: {len(todo)} to run, {sum(j.status == 'done' for j in jobs)} already done, "
          f"{sum(j.status == 'missing' for j in jobs)} of methods not registered yet"
          + (f" ({', '.join(missing)})" if missing else ""))
    print(f"{'smaller variant: ' + quick_text() if quick else 'full presets'}; used for every method alike")
    est = estimate_s(jobs, quick, args.jobs)
    todo_all = [Job(j.preset, j.variant, j.method, j.seed, j.run_dir, status='todo') for j in jobs]
    print(f"estimated time: {_hm(est)} for the {len(todo)} runs to make "
          f"({_hm(estimate_s(todo_all, quick, args.jobs))} "
          f"for all {len(jobs)}; {args.jobs} at a time, estimates of a 2-core CPU)", flush=True)
    if args.dry_run:
        for j in jobs:
            print(f"[{j.status}] " + " ".join(shlex.quote(str(c)) for c in j.command))
        return 0

    t0 = time.perf_counter()
    done_n = 0
    with cf.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for job in pool.map(run_job, todo):
            done_n += 1
            elapsed = time.perf_counter() - t0
            left = elapsed / done_n * (len(todo) - done_n)
            print(f"[{done_n}/{len(todo)}] {job.run_dir.name}: {job.status} in {job.wall_s:.0f} s"
                  + (f" (log: {job.log})" if job.status == "failed" else f"; about {_hm(left)} left"),
                  flush=True)

    from mmcl.compare import compare_runs, skipped_runs, write_comparison
    dirs = [j.run_dir for j in jobs if j.status != "missing"]
    rows = compare_runs(dirs)
    skipped = skipped_runs(dirs)
    failed = [j for j in jobs if j.status == "failed"]
    cmd = " ".join(shlex.quote(a) for a in ["python", "benchmarks/compare_tuxpaint.py", *(argv if argv is not None
                                                                                         else sys.argv[1:])])
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Tux Paint: methods and ablations compared",
        "",
        f"Command: `{cmd}`  ",
        f"Date: {now}  ",
        f"Presets: {', '.join(args.presets)}; seeds: {', '.join(map(str, args.seeds))}.  ",
        ("Smaller variant: " + quick_text() + " -- used for every method alike." if quick else
         "Full presets, used for every method alike."),
        "",
        "Variants: " + "; ".join(f"{v} = {VARIANTS[v][0]}"
                                 + ("".join(f" {k}={fmt_value(x)}" for k, x in VARIANTS[v][1].items()))
                                 for v in args.variants) + ".",
        "",
        "Metrics: mean ± standard deviation over seeds (ddof=1; n/a for one seed), in percent; "
        "training time: mean seconds per run.",
    ]
    if missing:
        lines += ["", "Missing (method not registered when this ran): " + ", ".join(missing) + "."]
    if failed:
        lines += ["", "Failed runs (see their logs): " + ", ".join(j.run_dir.name for j in failed) + "."]
    for p in write_comparison(rows, args.out, skipped, header="\n".join(lines)):
        print(p)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
