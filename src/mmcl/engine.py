"""The training loop: tasks -> epochs -> steps, evaluation after every task, the run folder."""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmcl import __version__, metrics, registry
from mmcl.config import Config, to_dict, to_yaml
from mmcl.io import append_jsonl, atomic_write_text, save_checkpoint, write_json
from mmcl.methods.base import Method
from mmcl.model.mmencoder import MMModel
from mmcl.scenarios import Scenario, build_scenario

log = logging.getLogger("mmcl")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a loss became NaN); names the step and the term."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"run.device={name}, but no CUDA device is available (use run.device=cpu)")
    return dev


def default_run_name(cfg: Config) -> str:
    return f"{cfg.preset or 'custom'}-{cfg.method.name}-s{cfg.run.seed}"


class Experiment:
    """Everything one run needs, built from a Config; ``run()`` trains and evaluates."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None):
        from mmcl.data.prepared import prepare
        from mmcl.encoders import build_encoder

        self.cfg = cfg
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        seed_everything(cfg.run.seed)
        self.device = resolve_device(cfg.run.device)
        self.run_dir = Path(run_dir) if run_dir else Path(cfg.run.out_dir) / (cfg.run.name or default_run_name(cfg))
        self.show_progress = cfg.run.progress == "always" or (cfg.run.progress == "auto" and sys.stderr.isatty())
        t0 = time.perf_counter()
        encoders = {m: build_encoder(m, cfg) for m in cfg.data.modalities}
        self.data = prepare(cfg, encoders, progress=self.show_progress)
        self.prepare_time_s = time.perf_counter() - t0
        splits = self.data.split(cfg.run.seed, cfg.data.split)
        self.scenario: Scenario = build_scenario(cfg, self.data.labels, self.data.domain_ids, splits,
                                                 self.data.classes, self.data.domains)
        seed_everything(cfg.run.seed)  # initialisation independent of preparation work
        self.model = MMModel(encoders, cfg).to(self.device)
        method_cls = registry.get("method", cfg.method.name)
        self.method: Method = method_cls(cfg, self.model, self.data, self.scenario, self.device)
        self.loader_generator = torch.Generator().manual_seed(cfg.run.seed + 104729)

    # -- helpers --------------------------------------------------------------------------------
    def autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batches(self, idx: torch.Tensor, batch_size: int, shuffle: bool):
        order = idx[torch.randperm(len(idx), generator=self.loader_generator)] if shuffle else idx
        for s in range(0, len(order), batch_size):
            yield order[s:s + batch_size]

    @torch.no_grad()
    def accuracy(self, idx: torch.Tensor) -> float:
        if len(idx) == 0:
            return float("nan")
        self.model.eval()
        correct = 0
        for b in self.batches(idx, self.cfg.eval.batch_size, shuffle=False):
            batch = self.method.fetch(b)
            with self.autocast():
                logits = self.method.predict(batch)
            correct += int((logits.argmax(1) == batch["target"]).sum())
        return correct / len(idx)

    def make_optimizer(self, steps: int):
        params = self.method.trainable_parameters()
        tc = self.cfg.train
        opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        if tc.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        return opt, sched

    # -- the loop -------------------------------------------------------------------------------
    def train_task(self, t: int) -> dict:
        cfg, task = self.cfg, self.scenario.tasks[t]
        self.method.begin_task(t)
        steps_per_epoch = math.ceil(len(task.train) / cfg.train.batch_size)
        opt, sched = self.make_optimizer(cfg.train.epochs * steps_per_epoch)
        sums: dict[str, float] = {}
        step = 0
        for epoch in range(cfg.train.epochs):
            self.model.train()
            bar = tqdm(self.batches(task.train, cfg.train.batch_size, shuffle=True), total=steps_per_epoch,
                       desc=f"task {t + 1}/{len(self.scenario.tasks)} epoch {epoch + 1}/{cfg.train.epochs}",
                       disable=not self.show_progress, leave=False)
            for idx in bar:
                with self.autocast():
                    terms = self.method.training_step(idx)
                loss = sum(terms.values())
                if not torch.isfinite(loss):
                    bad = [k for k, v in terms.items() if not torch.isfinite(v)]
                    raise TrainingError(
                        f"loss became non-finite at task {t + 1}, epoch {epoch + 1}, step {step + 1}: "
                        f"term(s) {', '.join(bad) or 'total'} = "
                        + ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
                        + ". Lower train.lr or check the input data; results of finished tasks are kept in "
                        f"{self.run_dir}.")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.train.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.method.trainable_parameters(), cfg.train.grad_clip)
                opt.step()
                sched.step()
                step += 1
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        self.model.eval()
        self.method.end_task(t)
        return {k: v / max(1, step) for k, v in sums.items()}

    def run(self) -> dict:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", to_yaml(cfg))
        metrics_path = self.run_dir / "metrics.jsonl"
        metrics_path.write_text("")
        T = len(self.scenario.tasks)
        R = [[None] * T for _ in range(T)]
        val_acc, task_times = [], []
        log.info("run %s: %d tasks, %s-incremental, modalities %s, %d/%d/%d samples (prepared in %.1fs)",
                 self.run_dir, T, self.scenario.kind, ",".join(cfg.data.modalities),
                 *(sum(len(getattr(task, s)) for task in self.scenario.tasks) for s in ("train", "val", "test")),
                 self.prepare_time_s)
        t_start = time.perf_counter()
        for t in range(T):
            t0 = time.perf_counter()
            train_losses = self.train_task(t)
            train_time = time.perf_counter() - t0
            for i in range(t + 1):
                R[t][i] = self.accuracy(self.scenario.tasks[i].test)
            seen_val = torch.cat([self.scenario.tasks[i].val for i in range(t + 1)])
            val_acc.append(self.accuracy(seen_val) if len(seen_val) else None)
            task_times.append(time.perf_counter() - t0)
            sizes = [len(self.scenario.tasks[i].test) for i in range(t + 1)]
            seen = sum(R[t][i] * sizes[i] for i in range(t + 1)) / sum(sizes)
            record = {"task": t + 1, "accuracy": R[t][: t + 1], "seen_accuracy": seen, "val_accuracy": val_acc[-1],
                      "train_losses": train_losses, "train_time_s": round(train_time, 3),
                      "task_time_s": round(task_times[-1], 3)}
            record.update({k: v[-1] for k, v in self.method.summary().items()
                           if isinstance(v, list) and v and k in ("expert_usage", "frozen_experts")})
            append_jsonl(metrics_path, record)
            log.info("task %d/%d: seen-data test accuracy %.2f%% (per task %s) in %.1fs", t + 1, T, 100 * seen,
                     " ".join(f"{100 * a:.1f}" for a in R[t][: t + 1]), task_times[-1])
        task_sizes = [len(task.test) for task in self.scenario.tasks]
        results = {
            "name": self.run_dir.name, "preset": cfg.preset, "method": cfg.method.name, "seed": cfg.run.seed,
            "scenario": self.scenario.kind, "tasks": self.scenario.describe(),
            "accuracy_matrix": R, "task_sizes": task_sizes, "val_accuracy": val_acc,
            "metrics": metrics.summarize(R, task_sizes), "metric_definitions": metrics.DEFINITIONS,
            **self.method.summary(),
            "task_time_s": [round(x, 3) for x in task_times],
            "train_time_s": round(time.perf_counter() - t_start, 3),
            "prepare_time_s": round(self.prepare_time_s, 3),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "environment": {"mmcl": __version__, "torch": torch.__version__, "python": platform.python_version(),
                            "device": str(self.device), "threads": torch.get_num_threads()},
            "config": to_dict(cfg),
        }
        if cfg.run.save_checkpoint:
            self.save(self.run_dir / "checkpoints" / "final")
        write_json(self.run_dir / "results.json", results)
        try:
            from mmcl.report import write_report
            write_report(self.run_dir)
        except Exception as e:  # a plotting failure must not lose the results written above
            log.warning("could not write the report of %s: %s", self.run_dir, e)
        return results

    def save(self, stem: Path) -> None:
        meta, tensors = self.method.state()
        model_state = {f"model.{k}": v for k, v in self.model.learned_state_dict().items()}
        heads = [h.out_features for h in self.model.classifier.heads]
        save_checkpoint(stem, {**model_state, **{f"method.{k}": v for k, v in tensors.items()}},
                        {"format": "mmcl-checkpoint-1", "method": meta, "classifier_heads": heads,
                         "config": to_dict(self.cfg)})


def run(cfg: Config, run_dir: str | Path | None = None) -> dict:
    return Experiment(cfg, run_dir).run()
