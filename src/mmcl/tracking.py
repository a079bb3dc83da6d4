"""Experiment tracking: TensorBoard event files in the run folder (``RUN_DIR/tb``) and, when
asked for and installed, Weights & Biases.

The engine calls a ``Tracker`` with what it sees -- the loss terms of every step and the
learning rate, the evaluation record of every task, the run's metrics, the method's
``summary()`` -- and knows nothing of a method. Only the main process writes. Tags:

    train/loss/<term>, train/loss_total, train/lr      every log.every steps
    routing/block<b>                                   histogram of the adapters' expert usage so far
                                                       in the task (per epoch; runs with adapters)
    eval/accuracy/task<i>, eval/seen_accuracy,         after each task (step: the global training step
    eval/val_accuracy, task/train_loss/<term>,         at the task's end)
    task/time_s, task/number
    experts/block<b>/usage (histogram over expert       after each task, from summary()["expert_usage"]
    numbers), experts/block<b>/frozen (count)          and ["frozen_experts"]
    method/<key>                                       every number in summary()
    metrics/<name>                                     at the run's end (acc_last, forgetting, ...)
    config (text)                                      at the start

Tasks, blocks and experts are numbered from 1 in tags, as everywhere people read them. A
resumed run purges the events past its checkpoint's step, so no step is shown twice.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("mmcl")

TB_DIR = "tb"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Tracker:
    """TensorBoard (``log.tensorboard``) and W&B (``log.wandb``) writers of one run; every call
    is a no-op when neither is on. ``seconds`` is the time spent in its calls (the overhead)."""

    def __init__(self, log_cfg: Any, run_dir: Path, run_name: str, config: dict, enabled: bool = True,
                 purge_step: int | None = None):
        self.every = int(getattr(log_cfg, "every", 1))
        self.seconds = 0.0
        self.tb = None
        self.wandb = None
        if not enabled:
            return
        t0 = time.perf_counter()
        if getattr(log_cfg, "tensorboard", False):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # (torch's module imports the tensorboard package)
                log.warning("log.tensorboard=true, but TensorBoard cannot be imported (%s): pip install tensorboard, "
                            "or set log.tensorboard=false; no event files are written", e)
            else:
                self.tb = SummaryWriter(str(Path(run_dir) / TB_DIR), purge_step=purge_step or None,
                                        flush_secs=30)
        if getattr(log_cfg, "wandb", False):
            if importlib.util.find_spec("wandb") is None:
                log.warning("log.wandb=true, but the wandb package is not installed (pip install 'mmcl[wandb]'); "
                            "not logging to W&B")
            else:
                import wandb
                self.wandb = wandb.init(project=getattr(log_cfg, "wandb_project", "mmcl"), name=run_name,
                                        id=run_name, resume="allow", dir=str(run_dir), config=config)
        self.seconds += time.perf_counter() - t0

    @property
    def active(self) -> bool:
        return self.tb is not None or self.wandb is not None

    # -- writers --------------------------------------------------------------------------------
    def _scalars(self, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for tag, v in values.items():
                self.tb.add_scalar(tag, v, step)
        if self.wandb is not None:
            self.wandb.log(dict(values), step=step)

    def _usage_histogram(self, tag: str, shares: list, step: int) -> None:
        """Usage shares of experts 1..E as a histogram over expert numbers (one bucket each)."""
        vals = np.array([0.0 if v is None else float(v) for v in shares])
        if not len(vals):
            return
        experts = np.arange(1, len(vals) + 1, dtype=float)
        if self.tb is not None:
            total = float(vals.sum())
            self.tb.add_histogram_raw(
                tag, min=1.0, max=float(len(vals)), num=total, sum=float((vals * experts).sum()),
                sum_squares=float((vals * experts ** 2).sum()), bucket_limits=(experts + 0.5).tolist(),
                bucket_counts=vals.tolist(), global_step=step)
        if self.wandb is not None:
            import wandb
            self.wandb.log({tag: wandb.Histogram(np_histogram=(vals, np.arange(0.5, len(vals) + 1.0)))},
                           step=step)

    # -- what the engine reports ----------------------------------------------------------------
    def start(self, config_yaml: str) -> None:
        if self.tb is None:
            return
        t0 = time.perf_counter()
        self.tb.add_text("config", "```\n" + config_yaml + "\n```", 0)
        self.seconds += time.perf_counter() - t0

    def step(self, step: int, terms: dict[str, float], lr: float) -> None:
        """One training step's loss terms (floats) and learning rate; ``step`` counts from 1."""
        if not self.active or step % self.every:
            return
        t0 = time.perf_counter()
        values = {f"train/loss/{k}": float(v) for k, v in terms.items()}
        values["train/loss_total"] = float(sum(terms.values()))
        values["train/lr"] = float(lr)
        self._scalars(values, step)
        self.seconds += time.perf_counter() - t0

    def routing(self, step: int, shares: list[list[float]]) -> None:
        """The adapters' expert-usage shares so far in the task, per block."""
        if not self.active:
            return
        t0 = time.perf_counter()
        for b, s in enumerate(shares):
            self._usage_histogram(f"routing/block{b + 1}", s, step)
        self.seconds += time.perf_counter() - t0

    def task_end(self, step: int, record: dict, summary: dict) -> None:
        """A task's evaluation record (engine's metrics.jsonl line) and the method's summary()."""
        if not self.active:
            return
        t0 = time.perf_counter()
        values = {f"eval/accuracy/task{i + 1}": a for i, a in enumerate(record.get("accuracy") or [])}
        values.update({"eval/seen_accuracy": record.get("seen_accuracy"),
                       "eval/val_accuracy": record.get("val_accuracy"),
                       "task/time_s": record.get("task_time_s"), "task/number": record.get("task")})
        values.update({f"task/train_loss/{k}": v for k, v in (record.get("train_losses") or {}).items()})
        values.update({f"task/grad_norm/{k}": v for k, v in (record.get("grad_norms") or {}).items()})
        values.update({f"method/{k}": v for k, v in summary.items() if _is_number(v)})
        self._scalars({k: float(v) for k, v in values.items() if _is_number(v)}, step)
        usage = summary.get("expert_usage") or []
        frozen = summary.get("frozen_experts") or []
        if usage and isinstance(usage[-1], list):
            for b, shares in enumerate(usage[-1]):
                self._usage_histogram(f"experts/block{b + 1}/usage", shares, step)
        if frozen and isinstance(frozen[-1], list):
            self._scalars({f"experts/block{b + 1}/frozen": float(len(ids)) for b, ids in enumerate(frozen[-1])},
                          step)
        self.seconds += time.perf_counter() - t0

    def finish(self, step: int, metrics: dict, train_s: float) -> None:
        """The run's metrics; logs the time the tracker took against ``train_s`` of training."""
        if not self.active:
            return
        t0 = time.perf_counter()
        self._scalars({f"metrics/{k}": float(v) for k, v in metrics.items() if _is_number(v)}, step)
        if self.tb is not None:
            self.tb.flush()
        self.seconds += time.perf_counter() - t0
        log.info("tracking took %.2f s of %.1f s of training (%.2f%%)", self.seconds, train_s,
                 100 * self.seconds / max(train_s, 1e-9))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
