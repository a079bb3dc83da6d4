"""A full run of an adapter-free method with and without the cached pooled features (issue 15).

    .venv/bin/python benchmarks/cached_features.py                 # tuxpaint, method er, seed 0
    .venv/bin/python benchmarks/cached_features.py --method ewc --out benchmarks/results/x.json

In ONE process, one after the other and on the same prepared cache: ``uncached`` (a full
``mmcl run <preset> method.name=<m> model.cached_features=false``: the frozen blocks 2..B run
in every training and evaluation step), ``cold`` (model.cached_features=true after the
pooled-feature files were removed: the run computes and writes them once) and ``warm`` (the
same again: the files are read, memory-mapped). Printed and written to --out: each run's wall
time, acc_last and forgetting, and the ratios uncached/cold and uncached/warm. On a shared
machine times are noisy: the ratios of one run are the figures that count.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

import mmcl
from mmcl.config import build_config
from mmcl.data.prepared import cache_folder
from mmcl.encoders import build_encoder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tuxpaint")
    ap.add_argument("--method", default="er")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/cached_features.json")
    args = ap.parse_args(argv)
    out_dir = Path(tempfile.mkdtemp(prefix="mmcl-cached-"))
    base = [f"method.name={args.method}", f"run.seed={args.seed}", f"run.out_dir={out_dir}",
            "run.progress=never", "run.save_checkpoint=false"]
    cfg = build_config(args.preset, base)
    folder = cache_folder(cfg, {m: build_encoder(m, cfg) for m in cfg.data.modalities})
    runs = {}
    for name, cached in (("uncached", False), ("cold", True), ("warm", True)):
        if name == "cold":
            for f in folder.glob("pooled_*.safetensors"):
                f.unlink()
        t0 = time.perf_counter()
        res = mmcl.run(args.preset, base + [f"model.cached_features={str(cached).lower()}", f"run.name={name}"])
        wall = time.perf_counter() - t0
        runs[name] = {"wall_s": round(wall, 2), "acc_last": res["metrics"]["acc_last"],
                      "forgetting": res["metrics"]["forgetting"], "accuracy_matrix": res["accuracy_matrix"]}
        print(f"{name:9s} {wall:8.1f} s  acc_last {res['metrics']['acc_last']:.6f}  "
              f"forgetting {res['metrics']['forgetting']:.6f}", flush=True)
    ratios = {"uncached_over_cold": runs["uncached"]["wall_s"] / runs["cold"]["wall_s"],
              "uncached_over_warm": runs["uncached"]["wall_s"] / runs["warm"]["wall_s"]}
    print(" ".join(f"{k} {v:.1f}x" for k, v in ratios.items()))
    report = {"command": f"benchmarks/cached_features.py --preset {args.preset} --method {args.method} "
                         f"--seed {args.seed}", "runs": runs, "ratios": ratios,
              "same_accuracy_matrix": runs["uncached"]["accuracy_matrix"] == runs["warm"]["accuracy_matrix"]
              == runs["cold"]["accuracy_matrix"],
              "environment": {"torch": torch.__version__, "python": platform.python_version(),
                              "threads": torch.get_num_threads()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
