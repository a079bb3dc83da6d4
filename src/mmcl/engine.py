"""The training loop: tasks -> epochs -> steps, evaluation after every task, the run's results.

mmcl.resume holds the other half of a run (checkpoints, resumption, stopping on a signal).
Under torchrun the loop is data-parallel (mmcl.distributed); only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import platform
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmcl import evaluation, metrics, optim, registry
from mmcl.config import Config, to_dict, to_yaml
from mmcl.data.features import serve_features
from mmcl.data.prepared import PreparedData, prepare
from mmcl.distributed import from_env
from mmcl.encoders import build_encoder
from mmcl.io import CheckpointStore, atomic_write_text, write_json, write_jsonl
from mmcl.methods.base import Method
from mmcl.model.mmencoder import MMModel
from mmcl.representations import REPRESENTATIONS_FILE, store_test_representations, tasks_to_store
from mmcl.resume import Interrupted, Progress, ResumableRun, TrainingError, kill_point
from mmcl.scenarios import Scenario, build_scenario
from mmcl.tracking import TB_DIR, Tracker
from mmcl.version import __version__

__all__ = ["Experiment", "Interrupted", "TrainingError", "default_run_name", "resolve_device"]

log = logging.getLogger("mmcl")

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


class Experiment(ResumableRun):
    """Everything one run needs, built from a Config; ``run()`` trains and evaluates."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None):
        self.cfg = cfg
        self.cfg_dict = to_dict(cfg)  # (omegaconf is slow; this is saved with every checkpoint)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.dist, device_name = from_env(cfg.run.device)
        seed_everything(cfg.run.seed)
        self.device = resolve_device(device_name)
        self.run_dir = Path(run_dir) if run_dir else Path(cfg.run.out_dir) / (cfg.run.name or default_run_name(cfg))
        self.show_progress = self.dist.is_main and (
            cfg.run.progress == "always" or (cfg.run.progress == "auto" and sys.stderr.isatty()))
        t0 = time.perf_counter()
        encoders = {m: build_encoder(m, cfg) for m in cfg.data.modalities}
        # One process per machine prepares the cache; the others then load it.
        if self.dist.local_rank != 0:
            self.dist.barrier()
        self.data: PreparedData = prepare(cfg, encoders, progress=self.show_progress)
        if self.dist.enabled and self.dist.local_rank == 0:
            self.dist.barrier()
        self.prepare_time_s = time.perf_counter() - t0
        splits = self.data.split(cfg.run.seed, cfg.data.split)
        self.scenario: Scenario = build_scenario(cfg, self.data.labels, self.data.domain_ids, splits,
                                                 self.data.classes, self.data.domains)
        seed_everything(cfg.run.seed)  # initialisation independent of preparation work
        self.model = MMModel(encoders, cfg).to(self.device)
        method_cls = registry.get("method", cfg.method.name)
        self.method: Method = method_cls(cfg, self.model, self.data, self.scenario, self.device)
        self.method.dist = self.dist
        self.loader_generator = torch.Generator().manual_seed(cfg.run.seed + 104729)
        self.store = CheckpointStore(self.run_dir / "checkpoints")
        self.progress = Progress()
        self.param_groups: dict = {}     # optim.named_groups of this task's trainable parameters
        self.task_grad_norms: dict = {}  # mean gradient norm per group over the last task's steps
        self.epoch_loader_state: torch.Tensor | None = None
        self.opt = self.sched = None
        self.last_checkpoint: str | None = None
        self._stop_signal: int | None = None
        self._saved_at: tuple | None = None
        self._session_start = time.perf_counter()
        self.tracker = Tracker(cfg.log, self.run_dir, self.run_dir.name, self.cfg_dict, enabled=False)
        self._step_offsets: dict[int, int] = {}
        self.tsne_tasks = tasks_to_store(cfg.report.tsne_after, len(self.scenario.tasks))

    # -- helpers --------------------------------------------------------------------------------
    def autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batches(self, idx: torch.Tensor, batch_size: int, shuffle: bool):
        order = idx[torch.randperm(len(idx), generator=self.loader_generator)] if shuffle else idx
        for s in range(0, len(order), batch_size):
            yield order[s:s + batch_size]

    def accuracy(self, idx: torch.Tensor, absent=()) -> float:
        """Accuracy on samples idx with the modalities ``absent`` masked (mmcl.evaluation); each
        rank of a data-parallel run scores its share."""
        return evaluation.accuracy(self.method, self.dist, idx, self.cfg.eval.batch_size, self.autocast, absent)

    def modality_robustness(self) -> dict | None:
        """After the last task: accuracy on every task's test data with each modality masked and
        with each alone (eval.modality_robustness; mmcl.evaluation)."""
        if not self.cfg.eval.modality_robustness:
            return None
        test = torch.cat([task.test for task in self.scenario.tasks])
        return evaluation.modality_robustness(self.accuracy, self.data.present, test, self.model.modalities)

    def make_optimizer(self, steps: int):
        params = self.method.trainable_parameters()
        self.param_groups = optim.named_groups(self.model, params)
        return optim.make_optimizer(params, self.param_groups, self.cfg.train, self.method.lr_scales(),
                                    self.cfg.adapter.warmup, steps)

    def steps_per_epoch(self, t: int) -> int:
        return math.ceil(len(self.method.train_indices(t)) / self.cfg.train.batch_size)

    def global_step(self) -> int:
        """Training steps finished in the whole run (the x axis of the tracker's curves)."""
        p = self.progress
        t = min(p.task, len(self.scenario.tasks))
        if t not in self._step_offsets:
            self._step_offsets[t] = sum(self.cfg.train.epochs * self.steps_per_epoch(i) for i in range(t))
        return self._step_offsets[t] + (p.task_steps if p.begun and p.task == t else 0)

    # -- the loop -------------------------------------------------------------------------------
    def train_task(self, t: int) -> dict:
        """Train task t from where the progress stands (the start, or a resumed position),
        then end it (freeze, memory). Returns the mean loss terms of its steps."""
        cfg, p = self.cfg, self.progress
        if not (p.begun and p.task == t):
            self.method.begin_task(t)
            self.opt, self.sched = self.make_optimizer(cfg.train.epochs * self.steps_per_epoch(t))
            self._account_time()
            p.task, p.begun, p.epoch, p.step, p.task_steps, p.loss_sums, p.grad_sums = t, True, 0, 0, 0, {}, {}
            p.task_elapsed_s = p.task_train_s = 0.0
            self.epoch_loader_state = None
        while p.epoch < cfg.train.epochs:
            self._train_epoch(t)
            if self.model.adapters:
                self.tracker.routing(self.global_step(), [a.usage_share().tolist() for a in self.model.adapters])
            p.epoch, p.step = p.epoch + 1, 0
            self.epoch_loader_state = None
            self._account_time()
            self.checkpoint("epoch")
            kill_point("epoch_end", self.dist.rank, task=t + 1, epoch=p.epoch)
            self._check_stop()
        self.model.eval()
        self.method.finish_task(t)
        self._account_time()
        p.task_train_s = p.task_elapsed_s
        kill_point("end_task", self.dist.rank, task=t + 1)
        self.task_grad_norms = {k: round(v / max(1, p.task_steps), 6) for k, v in p.grad_sums.items()}
        return {k: v / max(1, p.task_steps) for k, v in p.loss_sums.items()}

    def _train_epoch(self, t: int) -> None:
        cfg, p = self.cfg, self.progress
        if p.step == 0:
            self.epoch_loader_state = self.loader_generator.get_state()
        else:  # resumed inside this epoch: replay its order, skip the finished steps
            self.loader_generator.set_state(self.epoch_loader_state)
        self.model.train()
        params = self.method.trainable_parameters()
        batches = list(self.batches(self.method.train_indices(t), cfg.train.batch_size, shuffle=True))
        bar = tqdm(batches[p.step:], total=len(batches), initial=p.step,
                   desc=f"task {t + 1}/{len(self.scenario.tasks)} epoch {p.epoch + 1}/{cfg.train.epochs}",
                   disable=not self.show_progress, leave=False)
        for idx in bar:
            with self.autocast():
                terms = self.method.training_step(idx)
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                bad = [k for k, v in terms.items() if not torch.isfinite(v)]
                kept = (f"the last good checkpoint ({self.last_checkpoint}) is kept in {self.store.folder}"
                        if self.last_checkpoint else f"no checkpoint was written yet in {self.store.folder}")
                raise TrainingError(
                    f"loss became non-finite at task {t + 1}, epoch {p.epoch + 1}, step {p.step + 1}: "
                    f"term(s) {', '.join(bad) or 'total'} = "
                    + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                    + f". Lower train.lr or check the input data; {kept}, and results of finished tasks "
                    f"in {self.run_dir / 'metrics.jsonl'}. Resuming with the same config repeats this "
                    "step; start over with --fresh after a change.")
            lr = self.opt.param_groups[0]["lr"]
            self.opt.zero_grad(set_to_none=True)
            if loss.requires_grad:  # a data-parallel rank with no rows in this step has no graph
                loss.backward()
            self.dist.sync_gradients(params)
            for k, v in optim.group_grad_norms(self.param_groups).items():  # before clipping
                p.grad_sums[k] = p.grad_sums.get(k, 0.0) + v
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            self.opt.step()
            self.method.after_step()
            self.sched.step()
            p.step += 1
            p.task_steps += 1
            values = {k: float(v.detach()) for k, v in terms.items()}
            for k, v in values.items():
                p.loss_sums[k] = p.loss_sums.get(k, 0.0) + v
            self.tracker.step(self.global_step(), values, lr)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            kill_point("step", self.dist.rank, task=t + 1, epoch=p.epoch + 1, step=p.step)
            if p.step < len(batches):  # the epoch's end writes its own checkpoint
                self._check_stop_in_epoch()
        bar.close()

    def _check_stop_in_epoch(self) -> None:
        if self._stop_signal is not None or self.dist.enabled:
            self._account_time()
            self._check_stop()

    def _account_time(self) -> None:
        now = time.perf_counter()
        dt_s = now - self._session_start
        self._session_start = now
        self.progress.task_elapsed_s += dt_s
        self.progress.train_elapsed_s += dt_s

    def evaluate_task(self, t: int, train_losses: dict) -> dict:
        p = self.progress
        T = len(self.scenario.tasks)
        row = [None] * T
        for i in range(t + 1):
            row[i] = self.accuracy(self.scenario.tasks[i].test)
            kill_point("eval", self.dist.rank, task=t + 1, after=i + 1)
        seen_val = torch.cat([self.scenario.tasks[i].val for i in range(t + 1)])
        val = self.accuracy(seen_val) if len(seen_val) else None
        self._account_time()
        sizes = [len(self.scenario.tasks[i].test) for i in range(t + 1)]
        seen = sum(row[i] * sizes[i] for i in range(t + 1)) / sum(sizes)
        record = {"task": t + 1, "accuracy": row[: t + 1], "seen_accuracy": seen, "val_accuracy": val,
                  "train_losses": train_losses, "grad_norms": self.task_grad_norms,
                  "train_time_s": round(p.task_train_s, 3),
                  "task_time_s": round(p.task_elapsed_s, 3)}
        record.update(self.method.task_record())
        p.R.append(row)
        p.val_acc.append(val)
        p.task_times.append(p.task_elapsed_s)
        p.records.append(record)
        return record

    def run(self, fresh: bool = False) -> dict:
        try:
            with self._signals():
                results = self._run(fresh)
            self.tracker.close()
            # Every rank leaves together: gloo aborted now and then ("terminate called without an
            # active exception") when one rank tore the group down while the other was still
            # writing the run's reports. Not on errors: a failed rank would leave the others waiting.
            self.dist.barrier()
            return results
        finally:
            self.tracker.close()
            self.dist.destroy()

    def _run(self, fresh: bool) -> dict:
        cfg = self.cfg
        T = len(self.scenario.tasks)
        metrics_path = self.run_dir / "metrics.jsonl"
        results_path = self.run_dir / "results.json"
        loaded = None
        if fresh:
            def clear():
                self.store.clear()
                for f in self.run_dir.glob("fitted_*.safetensors"):  # encoders.<m>.<kind>.fit: fit again
                    f.unlink(missing_ok=True)
                shutil.rmtree(self.run_dir / TB_DIR, ignore_errors=True)  # the tracker's and t-SNE's files
                (self.run_dir / REPRESENTATIONS_FILE).unlink(missing_ok=True)
            self._on_main("clear the run folder's checkpoints", clear)
        else:
            loaded = self._read_checkpoint()
        if loaded is not None:
            tensors, meta, name = loaded
            self.restore(tensors, meta, self.store.folder / name)
            self.last_checkpoint = name
            p = self.progress
            log.info("resuming %s from checkpoint %s (%s)", self.run_dir, name, self._where())
        else:
            def start():
                self.run_dir.mkdir(parents=True, exist_ok=True)
                results_path.unlink(missing_ok=True)
                atomic_write_text(self.run_dir / "config.yaml", to_yaml(cfg))
            self._on_main("write the run folder", start)
        p = self.progress
        self._fit_encoders()
        self.prepare_time_s += serve_features(self.cfg, self.model, self.data, self.dist, self.device)
        self._on_main("write metrics.jsonl", lambda: write_jsonl(metrics_path, p.records))
        log.info("run %s: %d tasks, %s-incremental, modalities %s, %d/%d/%d samples (prepared in %.1fs)%s",
                 self.run_dir, T, self.scenario.kind, ",".join(cfg.data.modalities),
                 *(sum(len(getattr(task, s)) for task in self.scenario.tasks) for s in ("train", "val", "test")),
                 self.prepare_time_s, f", {self.dist.world_size} processes" if self.dist.enabled else "")
        # rank 0 decides: other machines need not see the run folder
        if p.task >= T and self.dist.all_max_int(int(self.dist.is_main and results_path.exists()), self.device):
            if not self.dist.is_main:
                return self._results()
            results = json.loads(results_path.read_text(encoding="utf-8"))
            if not (self.run_dir / "report.html").exists():
                self._write_report()
            log.info("run %s is already complete (finished %s; use --fresh to start over); its results "
                     "follow, its report is %s", self.run_dir, results.get("finished", "?"),
                     self.run_dir / "report.html")
            return results
        self.tracker = Tracker(cfg.log, self.run_dir, self.run_dir.name, self.cfg_dict, enabled=self.dist.is_main,
                               purge_step=self.global_step() + 1 if loaded is not None else None)
        if loaded is None:
            self.tracker.start(to_yaml(cfg))
        self._session_start = time.perf_counter()
        while p.task < T:
            t = p.task
            train_losses = self.train_task(t)
            record = self.evaluate_task(t, train_losses)
            self.tracker.task_end(self.global_step(), record, self.method.summary())
            if t + 1 in self.tsne_tasks:
                self._on_main("write representations.npz", lambda: store_test_representations(
                    self.run_dir, self.method, self.scenario.tasks, self.data, t))
            self._on_main("write metrics.jsonl", lambda: write_jsonl(metrics_path, p.records))
            self._check_replicas(t)
            p.task, p.begun, p.epoch, p.step = t + 1, False, 0, 0
            self.opt = self.sched = None
            self.checkpoint("task")
            kill_point("task_end", self.dist.rank, task=t + 1)
            log.info("task %d/%d: seen-data test accuracy %.2f%% (per task %s) in %.1fs", t + 1, T,
                     100 * record["seen_accuracy"], " ".join(f"{100 * a:.1f}" for a in p.R[t][: t + 1]),
                     p.task_times[-1])
            self._check_stop()
        results = self._results(self.modality_robustness())
        if cfg.run.save_checkpoint:
            self._on_main("write the final checkpoint", lambda: self.save(self.run_dir / "checkpoints" / "final"))
        self._on_main("write results.json", lambda: write_json(results_path, results))
        self.tracker.finish(self.global_step(), results["metrics"], p.train_elapsed_s)
        if self.dist.is_main:
            self._write_report()
        return results

    def _write_report(self) -> None:
        try:
            from mmcl.report import write_report
            write_report(self.run_dir)
        except Exception as e:  # a plotting failure must not lose the results written above
            log.warning("could not write the report of %s: %s", self.run_dir, e)

    def _results(self, robustness: dict | None = None) -> dict:
        cfg, p = self.cfg, self.progress
        task_sizes = [len(task.test) for task in self.scenario.tasks]
        return {
            "name": self.run_dir.name, "preset": cfg.preset, "method": cfg.method.name, "seed": cfg.run.seed,
            "scenario": self.scenario.kind, "tasks": self.scenario.describe(),
            "accuracy_matrix": p.R, "task_sizes": task_sizes, "val_accuracy": p.val_acc,
            "metrics": metrics.summarize(p.R, task_sizes), "metric_definitions": metrics.DEFINITIONS,
            **({"modality_robustness": robustness} if robustness is not None else {}),
            **self.method.summary(),
            "train_losses": [r.get("train_losses") for r in p.records],   # mean weighted terms per task
            "grad_norms": [r.get("grad_norms") for r in p.records],       # mean per parameter group per task
            "task_time_s": [round(x, 3) for x in p.task_times],
            "train_time_s": round(p.train_elapsed_s, 3),
            "prepare_time_s": round(self.prepare_time_s, 3),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "environment": {"mmcl": __version__, "torch": torch.__version__, "python": platform.python_version(),
                            "device": str(self.device), "threads": torch.get_num_threads(),
                            "processes": self.dist.world_size},
            "config": self.cfg_dict,
        }

    def _check_replicas(self, t: int) -> None:
        """Data-parallel ranks must hold the same model; a cheap checksum after every task."""
        if not self.dist.enabled:
            return
        with torch.no_grad():
            total = sum(v.double().sum() for v in self.model.learned_state_dict().values()
                        if v.is_floating_point()).reshape(1).to(self.device)
            lo, hi = self.dist.min_max(total)
        if not torch.equal(lo, hi):
            log.warning("after task %d the ranks' models differ (parameter sums %.10g .. %.10g)",
                        t + 1, float(lo), float(hi))

