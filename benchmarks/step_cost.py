"""What one training step of the method costs beside its frozen encoders (issue: performance).

    .venv/bin/python benchmarks/step_cost.py                       # tuxpaint + ViT-S/AST-S scale, CPU
    .venv/bin/python benchmarks/step_cost.py --scales tuxpaint vit-b --precision bf16 --device cuda
    .venv/bin/python benchmarks/step_cost.py --stream              # 10-task synthetic stream

In ONE process, per scale and with the same rows (a task-2 batch: train.batch_size current
samples + memory.batch_size memory samples), the median over --reps warmed-up repetitions of

- ``forward``  frozen encoders forward only, no adapters (the inference floor);
- ``floor``    forward + backward through the frozen encoders with identity adapters (a zero
               trainable bias after every block), no method logic;
- ``method``   one full training step of the paper's method (cma) at task 2: current + memory
               rows, all four losses, backward, AdamW step;
- ``predict``  inference with adapters (eval mode);
- ``dense``    the method with all experts computed (adapter.dense=true), for comparison;
- ``prefix``   the encoders' block 1 (tokenizer / patch embedding + first layers) on the raw
               inputs: the per-sample cost the on-disk prefix cache saves on every pass;
- ``load``     gathering the prepared rows of the batch (``PreparedData.batch``).

Scales: ``tuxpaint`` (the real MobileNetV2 + MiniLM + GE2E on the prepared Tux Paint cache),
``vit-s`` (ViT-S/16 on 224 px + AST-small on 128 x 1024 fbank, random weights, 4 blocks) and
``vit-b`` (ViT-B/16 + AST-base). Printed: per-sample milliseconds, the ratios method/floor,
predict/forward, dense/method, load/method, and peak memory; written as JSON to --out.
Times on a shared machine are noisy: the ratios of one run are the figures that count.

``--stream``: a 10-task class-incremental stream on small random encoders; per task the time
of a fixed number of training steps plus the task's end (expert freezing, memory update) and
the process's peak memory, to show both stay flat as tasks accumulate.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from mmcl import registry  # noqa: E402
from mmcl.config import build_config  # noqa: E402
from mmcl.data.batches import to_device  # noqa: E402
from mmcl.data.prepared_data import PreparedData  # noqa: E402
from mmcl.encoders.base import masked_mean  # noqa: E402
from mmcl.model.mmencoder import MMModel, length_chunks  # noqa: E402
from mmcl.scenarios import build_scenario  # noqa: E402

# scale -> (ViT width, layers, AST width, layers, image px, fbank frames)
SYNTHETIC = {"vit-s": (384, 12, 384, 12, 224, 1024), "vit-b": (768, 12, 768, 12, 224, 1024),
             "tiny": (64, 4, 64, 4, 64, 128)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, reps: int, warmup: int, device) -> tuple[float, float]:
    """Median seconds of fn() over reps runs after warmup runs; peak CUDA MiB (0 on CPU)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0
    return statistics.median(times), peak


# -- building a method at task 2 ---------------------------------------------------------------
def synthetic_data(encoders: dict, n_per_class: int, n_classes: int, raw_inputs: dict) -> PreparedData:
    """Random prefix tokens (what preparation would cache) for n_classes x n_per_class samples."""
    n = n_per_class * n_classes
    g = torch.Generator().manual_seed(0)
    tensors = {}
    with torch.no_grad():
        for m, enc in encoders.items():
            one, _ = enc.prefix({k: v[:1] for k, v in raw_inputs[m].items()})
            tensors[m] = {"tokens": torch.randn(n, *one.shape[1:], generator=g)}
    records = [{"index": i, "label": i // n_per_class, "domain": 0, "rows": {m: i for m in encoders}}
               for i in range(n)]
    meta = {"records": records, "classes": [f"c{i}" for i in range(n_classes)], "domains": ["d0"]}

    def split(records, fractions, seed):
        idx = np.arange(len(records))
        return {"train": idx[idx % 4 != 3], "val": idx[:0], "test": idx[idx % 4 == 3]}

    return PreparedData(meta, tensors, True, split)


def synthetic_encoders(scale: str, blocks: int):
    from mmcl.encoders.hf_vision import ASTEncoder, ViTEncoder
    vw, vl, aw, al, px, frames = SYNTHETIC[scale]
    data_cfg = types.SimpleNamespace(image_size=px, max_speech_seconds=frames / 100, sample_rate=16000)
    vit = ViTEncoder(types.SimpleNamespace(source="random", width=vw, layers=vl), blocks, data_cfg).freeze()
    ast = ASTEncoder(types.SimpleNamespace(source="random", width=aw, layers=al), blocks, data_cfg).freeze()
    raw = {"image": {"pixels": torch.randint(0, 256, (1, 3, px, px), dtype=torch.uint8)},
           "speech": {"fbank": torch.randn(1, frames, 128)}}
    return {"image": vit, "speech": ast}, raw


def build(scale: str, overrides: dict, device, n_tasks: int = 2, n_classes: int = 4):
    """(cfg, model, data, scenario, method, raw inputs for the prefix timing)."""
    if scale == "tuxpaint":
        from mmcl.engine import Experiment
        exp = Experiment(build_config("tuxpaint", {"run.progress": "never", "run.device": device.type, **overrides}),
                         tempfile.mkdtemp(prefix="step_cost-"))
        raw = PreparedData.from_folder(exp.data.folder, exp.data.modalities, False, exp.data._split_fn)
        return exp.cfg, exp.model, exp.data, exp.scenario, exp.method, raw
    blocks = int(overrides.get("model.blocks", 4))
    encoders, raw = synthetic_encoders(scale, blocks)
    cfg = build_config("tuxpaint", {"data.modalities": ["image", "speech"], "model.blocks": blocks,
                                    "scenario.num_tasks": n_tasks, "run.device": device.type, **overrides})
    data = synthetic_data(encoders, max(4, cfg.train.batch_size), n_classes, raw)
    splits = data.split(cfg.run.seed, cfg.data.split)
    scenario = build_scenario(cfg, data.labels, data.domain_ids, splits, data.classes, data.domains)
    torch.manual_seed(cfg.run.seed)
    model = MMModel(encoders, cfg).to(device)
    method = registry.get("method", cfg.method.name)(cfg, model, data, scenario, device)
    return cfg, model, data, scenario, method, raw


def at_task_two(method) -> None:
    """Task 1 ends (usage counted from a few routings, experts frozen, memory filled), task 2 begins."""
    method.begin_task(0)
    method.model.train()
    idx = method.scenario.tasks[0].train
    with torch.no_grad():
        for s in range(0, len(idx), method.cfg.train.batch_size):
            method.forward_batch(idx[s:s + method.cfg.train.batch_size])  # counts expert usage
    method.end_task(0)
    method.begin_task(1)


def step_rows(method) -> tuple[torch.Tensor, torch.Tensor]:
    """A task-2 batch drawn as training draws it: random current rows and the memory rows the
    method's generator picks next (the generator is rewound before every timed step, so the
    method, the floor and the forward all see these rows)."""
    cfg = method.cfg
    train = torch.as_tensor(method.scenario.tasks[1].train)
    cur = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:cfg.train.batch_size]]
    if not len(getattr(method, "memory", [])):
        return cur, cur
    state = method.generator.get_state()
    mem, _ = method.memory.sample(cfg.memory.batch_size, method.generator)
    method.generator.set_state(state)
    return cur, torch.cat([cur, mem])


# -- the modes ---------------------------------------------------------------------------------
def row_groups(model, batch) -> list[dict]:
    """The batch as the model runs it: length-sorted groups (model.length_chunks), so the floor
    and the forward skip the same padding the method does."""
    parts = length_chunks(batch, model.modalities, model.length_chunks)
    return [batch] if parts is None else [sub for _, sub in parts]


def encoders_forward(model, batch):
    return [model.encoders[m].pooled(sub[m], model.length_chunks) for sub in row_groups(model, batch)
            for m in model.modalities]


def floor_step(model, batch, biases):
    """Forward + backward through the frozen blocks with an identity adapter (zero bias) after
    every block: the least any adapter method must compute."""
    total = 0.0
    for sub in row_groups(model, batch):
        for m in model.modalities:
            enc, x = model.encoders[m], sub[m]
            tokens, mask = x["tokens"], x.get("mask")
            for b in range(enc.num_blocks):
                if b > 0:
                    tokens, mask = enc.run_block(b, tokens, mask, model.length_chunks)
                tokens = tokens + biases[m][b]
            total = total + masked_mean(tokens, mask).float().square().mean()
    total.backward()


def measure(scale: str, args, device) -> dict:
    overrides = dict(kv.split("=", 1) for kv in args.set)
    if scale != "tuxpaint":
        overrides.update({"train.batch_size": args.batch, "memory.batch_size": args.batch, "memory.size": 16})
    if args.precision == "bf16":
        overrides["train.precision"] = "bf16"
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else torch.autocast(device_type=device.type, enabled=False))
    out = {"scale": scale, "precision": args.precision, "device": str(device), "overrides": args.set}
    for dense in (False, True):
        cfg, model, data, scenario, method, raw = build(scale, {**overrides, "adapter.dense": dense}, device)
        at_task_two(method)
        cur, rows = step_rows(method)
        n = len(rows)
        out["rows"], out["current_rows"] = n, len(cur)
        batch = method.fetch(rows)
        params = method.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=cfg.train.lr)
        model.train()

        generator_state = method.generator.get_state()

        def method_step():
            method.generator.set_state(generator_state)  # the same memory rows every time
            with autocast:
                loss = sum(method.training_step(cur).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        if dense:
            out["dense"], out["dense_peak_mb"] = timed(method_step, args.reps, args.warmup, device)
            break
        out["method"], out["method_peak_mb"] = timed(method_step, args.reps, args.warmup, device)
        # FLOPs of one step (matmuls, convolutions, attention: what torch's FlopCounterMode
        # counts; recurrent layers are not counted) -> achieved TFLOP/s and share of a peak.
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as counter:
            method_step()
        out["method_flops"] = float(counter.get_total_flops())
        biases = {m: [torch.zeros(d, device=device, requires_grad=True) for d in model.encoders[m].dims]
                  for m in model.modalities}

        def floor():
            with autocast:
                floor_step(model, batch, biases)

        def forward():
            with torch.no_grad(), autocast:
                encoders_forward(model, batch)

        def predict():
            model.eval()
            with torch.no_grad(), autocast:
                method.predict(batch)
            model.train()

        raw_rows = to_device(raw.batch(rows), device) if isinstance(raw, PreparedData) else \
            {m: {k: v.expand(n, *v.shape[1:]).contiguous().to(device) for k, v in x.items()} for m, x in raw.items()}

        def prefix():
            with torch.no_grad(), autocast:
                for m in model.modalities:
                    model.encoders[m].prefix(raw_rows[m])

        out["floor"], out["floor_peak_mb"] = timed(floor, args.reps, args.warmup, device)
        out["forward"], out["forward_peak_mb"] = timed(forward, args.reps, args.warmup, device)
        out["predict"], out["predict_peak_mb"] = timed(predict, args.reps, args.warmup, device)
        out["prefix"], _ = timed(prefix, max(1, args.reps // 2), 1, device)
        out["load"], _ = timed(lambda: method.fetch(rows), args.reps, args.warmup, device)
        # free the memory before the next variant (not del: the closures above name them)
        del data
        method = model = batch = opt = None
    for k in ("forward", "floor", "method", "predict", "dense", "prefix", "load"):
        out[f"{k}_ms_per_sample"] = 1000 * out[k] / out["rows"]
    out["method/floor"] = out["method"] / out["floor"]
    out["predict/forward"] = out["predict"] / out["forward"]
    out["dense/method"] = out["dense"] / out["method"]
    out["load/method"] = out["load"] / out["method"]
    out["prefix/(prefix+forward)"] = out["prefix"] / (out["prefix"] + out["forward"])
    out["peak_rss_mb"] = peak_rss_mb()
    out["method_samples_per_s"] = out["current_rows"] / out["method"]  # current-task samples trained per second
    out["method_tflop_per_s"] = out["method_flops"] / out["method"] / 1e12
    if args.peak_tflops:
        out["method_share_of_peak"] = out["method_tflop_per_s"] / args.peak_tflops
    return out


def stream(args, device) -> dict:
    """10 tasks on the 'tiny' random ViT/AST pair: per-task time of a fixed number of steps +
    the task end, and peak memory after each task."""
    n_tasks = 10
    cfg, model, data, scenario, method, _ = build(
        "tiny", {"train.batch_size": 16, "memory.batch_size": 16, "memory.size": 200,
                 "scenario.class_order": "given"}, device, n_tasks=n_tasks, n_classes=2 * n_tasks)
    rows = []
    for t in range(n_tasks):
        t0 = time.perf_counter()
        method.begin_task(t)
        model.train()
        params = method.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=cfg.train.lr)
        idx = scenario.tasks[t].train
        for s in range(args.stream_steps):
            sel = idx[torch.randint(len(idx), (cfg.train.batch_size,), generator=torch.Generator().manual_seed(s))]
            loss = sum(method.training_step(sel).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        t_train = time.perf_counter() - t0
        method.end_task(t)
        rows.append({"task": t + 1, "train_s": t_train, "task_s": time.perf_counter() - t0,
                     "memory": len(method.memory), "peak_rss_mb": peak_rss_mb(),
                     "cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0.0})
        print(f"task {t + 1:2d}: train {t_train:6.2f} s, with task end {rows[-1]['task_s']:6.2f} s, "
              f"memory {rows[-1]['memory']:3d}, peak RSS {rows[-1]['peak_rss_mb']:7.0f} MB", flush=True)
    ts = [r["train_s"] for r in rows[1:]]
    return {"tasks": rows, "train_s_last_over_second": rows[-1]["train_s"] / rows[1]["train_s"],
            "train_s_max_over_min_tasks_2_to_10": max(ts) / min(ts)}


def table(results: list[dict]) -> str:
    head = ("| scale | precision | rows | forward | floor | method | predict | dense | prefix | load "
            "| method/floor | predict/forward | dense/method | load/method | peak RSS MB |")
    lines = [head, "|" + "---|" * 15]
    for r in results:
        ms = [f"{r[f'{k}_ms_per_sample']:.2f}"
              for k in ("forward", "floor", "method", "predict", "dense", "prefix", "load")]
        lines.append(f"| {r['scale']} | {r['precision']} | {r['rows']} | " + " | ".join(ms)
                     + f" | {r['method/floor']:.3f} | {r['predict/forward']:.3f} | {r['dense/method']:.3f} "
                     f"| {r['load/method']:.4f} | {r['peak_rss_mb']:.0f} |")
    lines.append("(times: ms per sample, median)\n")
    for r in results:
        share = (f", {100 * r['method_share_of_peak']:.1f} % of the given peak"
                 if "method_share_of_peak" in r else " (pass --peak-tflops for the share of peak)")
        lines.append(f"{r['scale']} {r['precision']}: method step {r['method_flops'] / 1e9:.1f} GFLOP counted, "
                     f"{r['method_tflop_per_s']:.3f} TFLOP/s{share}, {r['method_samples_per_s']:.1f} "
                     "current samples/s (plus as many memory rows)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", nargs="+", default=["tuxpaint", "vit-s"], choices=["tuxpaint", *SYNTHETIC])
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="current (and memory) rows at the synthetic scales")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for every scale, e.g. adapter.dim=64")
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="the device's peak TFLOP/s at this precision (e.g. 989 for an H100 SXM in bf16 "
                         "dense): report the method step's share of it")
    ap.add_argument("--stream", action="store_true", help="only the 10-task synthetic stream")
    ap.add_argument("--stream-steps", type=int, default=20)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "step_cost.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "device": str(device),
           "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
           "date": time.strftime("%Y-%m-%d %H:%M")}
    if args.stream:
        result = {"env": env, "stream": stream(args, device)}
        print(json.dumps({k: v for k, v in result["stream"].items() if k != "tasks"}, indent=1))
    else:
        results = []
        for scale in args.scales:
            print(f"measuring {scale} ({args.precision}, {device}) ...", flush=True)
            results.append(measure(scale, args, device))
            print(table(results[-1:]), flush=True)
        print("\n" + table(results))
        result = {"env": env, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
