"""What TensorBoard logging (log.tensorboard, on by default) costs a run.

    .venv/bin/python benchmarks/tracking_cost.py                 # 3 pairs, small tuxpaint config
    .venv/bin/python benchmarks/tracking_cost.py --pairs 2 --off-first run.threads=1

In ONE process, the same small run (the real tuxpaint encoders, train.epochs=1,
data.tuxpaint.max_stamps_per_class=6, the paper's method) is trained --pairs times with
TensorBoard on and as often with it off, in the order on/off, off/on, on/off, ... (so drifts of
a shared machine's load fall on both sides), each from scratch in a temporary folder. Printed
and written as JSON: every run's training time, the ratio of the median times on/off, and the
tracker's own time (the time spent inside its calls, measured by the tracker) as a fraction of
the training time of the runs with it on. The second is the figure that counts on a shared
machine; the first also covers the event writer's background thread.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import mmcl
from mmcl.config import build_config
from mmcl.engine import Experiment

SMALL = {"train.epochs": 1, "data.tuxpaint.max_stamps_per_class": 6, "run.progress": "never",
         "report.tsne": False}


def one_run(on: bool, folder: Path, extra: list[str]) -> dict:
    cfg = build_config("tuxpaint", [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in SMALL.items()]
                       + extra + [f"log.tensorboard={'true' if on else 'false'}"])
    exp = Experiment(cfg, folder / ("on" if on else "off"))
    cpu = time.process_time()
    results = exp.run(fresh=True)
    return {"tensorboard": on, "train_time_s": results["train_time_s"], "tracker_s": round(exp.tracker.seconds, 4),
            "process_cpu_s": round(time.process_time() - cpu, 2),
            "acc_last": results["metrics"]["acc_last"],
            "event_bytes": sum(p.stat().st_size for p in (exp.run_dir / "tb").glob("*")) if on else 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--off-first", action="store_true", help="start with a run without TensorBoard")
    ap.add_argument("--out", default="benchmarks/results/tracking_cost.json")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="extra config overrides (both sides)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    extra = list(args.overrides)
    runs = []
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="mmcl-tracking-") as tmp:
        for i in range(args.pairs):
            for on in ((True, False) if (i + args.off_first) % 2 == 0 else (False, True)):
                runs.append(one_run(on, Path(tmp), extra))
                print(json.dumps(runs[-1]), flush=True)
    on_t = [r["train_time_s"] for r in runs if r["tensorboard"]]
    off_t = [r["train_time_s"] for r in runs if not r["tensorboard"]]
    summary = {
        "command": "python benchmarks/tracking_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {**SMALL, **dict(o.split("=", 1) for o in extra)},
        "ratio_median_on_over_off": round(statistics.median(on_t) / statistics.median(off_t), 4),
        "ratio_median_cpu_on_over_off": round(
            statistics.median(r["process_cpu_s"] for r in runs if r["tensorboard"])
            / statistics.median(r["process_cpu_s"] for r in runs if not r["tensorboard"]), 4),
        "tracker_share_of_training": round(sum(r["tracker_s"] for r in runs if r["tensorboard"]) / sum(on_t), 5),
        "runs": runs, "wall_s": round(time.time() - t0, 1),
        "environment": {"mmcl": mmcl.__version__, "torch": torch.__version__, "python": platform.python_version(),
                        "threads": torch.get_num_threads(), "machine": "2-core shared CPU, others running"},
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
