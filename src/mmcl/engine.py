"""The training loop: tasks -> epochs -> steps, evaluation after every task, the run folder.

Runs survive: a checkpoint is written at the end of every epoch and of every task (and when
SIGINT / SIGTERM asks the run to stop), and running the same command on the same run folder
resumes from the newest good one. A resumed run ends with the same numbers as an
uninterrupted one, bit for bit on the same CPU / thread count, because a checkpoint holds
everything that shapes what comes next:

- the model's learned tensors (adapters with their expert-usage counters and frozen set,
  projections, fusion, every classifier head), the optimiser state and the scheduler;
- the method's state: memory with its stored old outputs, expert usage / frozen history, its
  sampling generator, the old logits of the current task (distil.on_current); for the
  baselines, the DER++ reservoir with its logits, EWC's Fisher and anchors, iCaRL's class means;
- the torch / numpy / python RNG states, the engine's loader generator and, for a checkpoint
  taken inside an epoch, the loader state at that epoch's start (its order is replayed and
  the finished steps skipped);
- the position (task, epoch, step), the loss sums of the task so far, and every metric so far
  (metrics.jsonl is rewritten from them, so a resumed run never duplicates a line).

Under torchrun the loop is data-parallel (mmcl.distributed); only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import platform
import random
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmcl import __version__, metrics, registry
from mmcl.config import Config, to_dict, to_yaml
from mmcl.distributed import Dist, from_env, shard_bounds
from mmcl.io import (CheckpointError, CheckpointStore, CheckpointWriteError, WriteError, atomic_write_bytes,
                     atomic_write_text,
                     parse_checkpoint, save_checkpoint, write_json, write_jsonl)
from mmcl.methods.base import Method
from mmcl.model.mmencoder import MMModel
from mmcl.scenarios import Scenario, build_scenario

log = logging.getLogger("mmcl")

KILL_ENV = "MMCL_KILL_AT"
# Config keys that may differ between a run and its resumption (they do not change results,
# or name where things are). Everything else must match the checkpoint's config.
RESUMABLE_DIFFERENCES = {"run.progress", "run.threads", "run.device", "run.out_dir", "run.name",
                         "run.save_checkpoint", "data.root", "data.cache_dir"}


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a loss became NaN); names the step and the term."""


class Interrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM stopped the run after a checkpoint was written."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.message = message


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


def _kill_point(point: str, rank: int = 0, **where) -> None:
    """Test hook: ``MMCL_KILL_AT="point=step,task=2,epoch=1,step=3"`` sends SIGKILL to this
    process when it reaches that point (points: step, epoch_end, end_task, eval (key after=i:
    after the i-th task's accuracy), task_end, checkpoint (key kind: after the new files are
    written and verified, before latest.json names them); keys not given match anything;
    ``rank`` defaults to 0; ``signal=TERM`` or ``signal=INT`` sends that signal instead)."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    want = dict(kv.split("=", 1) for kv in spec.split(",") if "=" in kv)
    if want.get("point") != point or int(want.get("rank", 0)) != rank:
        return
    if all(str(where.get(k)) == v for k, v in want.items() if k not in ("point", "rank", "signal")):
        sig = getattr(signal, "SIG" + want.get("signal", "KILL"))
        log.warning("%s: %s at %s %s", KILL_ENV, sig.name, point, where)
        os.kill(os.getpid(), sig)


@dataclasses.dataclass
class Progress:
    """Where the run stands; saved in every checkpoint (JSON)."""
    task: int = 0                    # the task in progress, or the next one to begin
    begun: bool = False              # begin_task(task) ran and its optimiser exists
    epoch: int = 0                   # finished epochs of the task
    step: int = 0                    # finished steps of epoch `epoch` (checkpoint inside an epoch)
    task_steps: int = 0              # finished steps of the task
    loss_sums: dict = dataclasses.field(default_factory=dict)
    task_elapsed_s: float = 0.0      # time spent on the current task so far (all sessions)
    task_train_s: float = 0.0        # of which training (until end_task finished)
    train_elapsed_s: float = 0.0     # time spent on tasks so far (all sessions)
    records: list = dataclasses.field(default_factory=list)   # metrics.jsonl lines
    R: list = dataclasses.field(default_factory=list)         # accuracy matrix rows so far
    val_acc: list = dataclasses.field(default_factory=list)
    task_times: list = dataclasses.field(default_factory=list)


def _rng_meta() -> dict:
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(state), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _set_rng_meta(meta: dict) -> None:
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(current)):
        key = f"{prefix}{k}"
        a, b = saved.get(k), current.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_differences(a, b, key + ".")
        elif a != b and key not in RESUMABLE_DIFFERENCES:
            out.append(f"{key}: {a!r} in the checkpoint, {b!r} now")
    return out


class Experiment:
    """Everything one run needs, built from a Config; ``run()`` trains and evaluates."""

    def __init__(self, cfg: Config, run_dir: str | Path | None = None):
        from mmcl.data.prepared import prepare
        from mmcl.encoders import build_encoder

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
        self.data = prepare(cfg, encoders, progress=self.show_progress)
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
        self.epoch_loader_state: torch.Tensor | None = None
        self.opt = self.sched = None
        self.last_checkpoint: str | None = None
        self._stop_signal: int | None = None
        self._saved_at: tuple | None = None
        self._session_start = time.perf_counter()

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
        """Accuracy on samples idx; each rank of a data-parallel run scores its share."""
        if len(idx) == 0:
            return float("nan")
        self.model.eval()
        start, end = shard_bounds(len(idx), self.dist.world_size, self.dist.rank)
        correct = torch.zeros(1, dtype=torch.long, device=self.device)
        for b in self.batches(idx[start:end], self.cfg.eval.batch_size, shuffle=False):
            batch = self.method.fetch(b)
            with self.autocast():
                logits = self.method.predict(batch)
            correct += (logits.argmax(1) == batch["target"]).sum()
        return int(self.dist.all_sum_(correct).item()) / len(idx)

    def make_optimizer(self, steps: int):
        params = self.method.trainable_parameters()
        tc = self.cfg.train
        opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        if tc.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        return opt, sched

    def steps_per_epoch(self, t: int) -> int:
        return math.ceil(len(self.method.train_indices(t)) / self.cfg.train.batch_size)

    def _on_main(self, what: str, fn):
        """Run a file write on rank 0 only; every rank learns whether it worked (a rank that
        goes on alone would wait for the others forever)."""
        error = None
        if self.dist.is_main:
            try:
                fn()
            except WriteError as e:  # disk full: say what is kept and how to go on
                kept = (f"the newest good checkpoint {self.last_checkpoint} is kept"
                        if self.last_checkpoint and not isinstance(e, CheckpointWriteError) else "")
                error = type(e)(e.errno, f"{e.strerror}. The run stopped ({self._where()}){'; ' + kept if kept else ''}"
                                         f"; metrics already written are in {self.run_dir / 'metrics.jsonl'}. Free "
                                         "some space and run the same command again to resume.")
                error.__cause__ = e
            except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
                error = e
        if not self.dist.all_ok(error is None, self.device):
            if error is not None:
                raise error
            raise TrainingError(f"rank 0 could not {what}; stopping (see rank 0's error)")

    # -- signals --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _signals(self):
        """SIGINT / SIGTERM: finish the current step, write a checkpoint, stop. A second SIGINT
        stops at once (the newest checkpoint stays usable)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):  # noqa: ARG001
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signum
            log.warning("%s received: stopping after a checkpoint at the end of this step "
                        "(press Ctrl-C again to stop at once)", signal.Signals(signum).name)

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _check_stop(self) -> None:
        stop = self.dist.all_max_int(self._stop_signal or 0, self.device) if self.dist.enabled \
            else (self._stop_signal or 0)
        if not stop:
            return
        p = self.progress
        if self._saved_at != self._position():
            self.checkpoint("interrupt")
        raise Interrupted(stop, f"interrupted by {signal.Signals(stop).name}; checkpoint saved ({self._where()}) in "
                                f"{self.store.folder}. Run the same command again to resume.")

    # -- checkpoints ----------------------------------------------------------------------------
    def state(self, kind: str) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything a resumed run needs: (tensors, JSON metadata)."""
        mmeta, mtensors = self.method.state()
        tensors = {f"model.{k}": v for k, v in self.model.learned_state_dict().items()}
        tensors.update({f"method.{k}": v for k, v in mtensors.items()})
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        tensors["rng.loader"] = self.loader_generator.get_state()
        if self.epoch_loader_state is not None:
            tensors["rng.epoch_loader"] = self.epoch_loader_state
        meta = {"kind": kind, "progress": dataclasses.asdict(self.progress), "method": mmeta,
                "classifier_heads": [h.out_features for h in self.model.classifier.heads],
                "rng": _rng_meta(), "config": self.cfg_dict, "mmcl": __version__,
                "world_size": self.dist.world_size}
        if self.progress.begun and self.opt is not None:
            sd = self.opt.state_dict()
            for i, st in sd["state"].items():
                for name, v in st.items():
                    tensors[f"optim.{i}.{name}"] = v if torch.is_tensor(v) else torch.tensor(v)
            meta["optimizer"] = {"param_groups": sd["param_groups"],
                                 "num_params": len(self.opt.param_groups[0]["params"])}
            meta["scheduler"] = self.sched.state_dict()
        return tensors, meta

    def _where(self) -> str:
        p, T = self.progress, len(self.scenario.tasks)
        if p.task >= T:
            return "all tasks done"
        if not p.begun:
            return f"before task {p.task + 1}"
        if p.epoch >= self.cfg.train.epochs:
            return f"task {p.task + 1} trained, before its evaluation"
        if p.step == 0:
            return f"task {p.task + 1}, start of epoch {p.epoch + 1}"
        return f"task {p.task + 1}, epoch {p.epoch + 1}, after step {p.step}"

    def _position(self) -> tuple:
        p = self.progress
        return p.task, p.begun, p.epoch, p.step

    def checkpoint(self, kind: str) -> None:
        p = self.progress
        tensors, meta = self.state(kind)
        self._saved_at = self._position()

        def write():
            self.last_checkpoint = self.store.save(
                tensors, meta, before_switch=lambda name: _kill_point("checkpoint", kind=kind, task=p.task + 1,
                                                                      epoch=p.epoch))
        self._on_main("write a checkpoint", write)

    def _read_checkpoint(self) -> tuple[dict, dict, str] | None:
        """The newest good checkpoint of the run folder, read by rank 0 and sent to the
        others as bytes (no shared file system needed, no pickle)."""
        raw, error = None, None
        if self.dist.is_main:
            try:
                raw = self.store.read_latest()
            except CheckpointError as e:
                error = e
        if not self.dist.all_ok(error is None, self.device):
            raise error if error is not None else CheckpointError("rank 0 could not read the checkpoint")
        has = self.dist.all_max_int(int(raw is not None), self.device)
        if not has:
            return None
        meta_bytes = self.dist.broadcast_bytes(raw[0] if raw else None, self.device)
        blob = self.dist.broadcast_bytes(raw[1] if raw else None, self.device)
        name = self.dist.broadcast_bytes(raw[2].encode() if raw else None, self.device).decode()
        tensors, meta = parse_checkpoint(meta_bytes, blob, self.store.folder / name)
        return tensors, meta, name

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict, where: str = "checkpoint") -> None:
        """Load a resume checkpoint into this freshly built experiment."""
        if meta.get("format") != "mmcl-checkpoint-2" or "progress" not in meta:
            raise CheckpointError(f"{where} is not an mmcl resume checkpoint (format {meta.get('format')!r})")
        diffs = _config_differences(meta.get("config", {}), self.cfg_dict)
        if diffs:
            raise CheckpointError(f"the run folder {self.run_dir} holds a run with a different config:\n  "
                                  + "\n  ".join(diffs) + "\nRun with --fresh to start over there, or choose "
                                  "another run.name.")
        try:
            self.progress = Progress(**meta["progress"])
            heads = meta["classifier_heads"]
            have = [h.out_features for h in self.model.classifier.heads]
            if heads[:len(have)] != have:
                raise CheckpointError(f"{where}: classifier heads {heads} do not fit this model ({have})")
            for n in heads[len(have):]:
                self.model.classifier.grow(n)
            model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
            expected = set(self.model.learned_state_dict())
            if set(model_state) != expected:
                missing, extra = sorted(expected - set(model_state)), sorted(set(model_state) - expected)
                raise CheckpointError(f"{where} does not fit this model: missing {missing[:5]}, "
                                      f"unexpected {extra[:5]}")
            self.model.load_state_dict(model_state, strict=False)
            for adapter in self.model.adapters:  # the loaded frozen set decides what trains
                adapter.apply_frozen()
            self.method.load_state(meta["method"], {k[len("method."):]: v for k, v in tensors.items()
                                                    if k.startswith("method.")})
            self.opt = self.sched = None
            if self.progress.begun:
                t = self.progress.task
                self.opt, self.sched = self.make_optimizer(self.cfg.train.epochs * self.steps_per_epoch(t))
                om = meta["optimizer"]
                if om["num_params"] != len(self.opt.param_groups[0]["params"]):
                    raise CheckpointError(f"{where}: the optimiser had {om['num_params']} parameters, "
                                          f"this model trains {len(self.opt.param_groups[0]['params'])}")
                state: dict = {}
                for k, v in tensors.items():
                    if k.startswith("optim."):
                        _, i, name = k.split(".", 2)
                        state.setdefault(int(i), {})[name] = v.to(self.device) if name != "step" else v
                groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in om["param_groups"]]
                self.opt.load_state_dict({"state": state, "param_groups": groups})
                self.sched.load_state_dict(meta["scheduler"])
            torch.set_rng_state(tensors["rng.torch"])
            if "rng.cuda" in tensors and self.device.type == "cuda":
                torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
            self.loader_generator.set_state(tensors["rng.loader"])
            self.epoch_loader_state = tensors.get("rng.epoch_loader")
            _set_rng_meta(meta["rng"])
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{where} does not fit this run: {type(e).__name__}: {e}") from None

    # -- the loop -------------------------------------------------------------------------------
    def train_task(self, t: int) -> dict:
        """Train task t from where the progress stands (the start, or a resumed position),
        then end it (freeze, memory). Returns the mean loss terms of its steps."""
        cfg, p = self.cfg, self.progress
        if not (p.begun and p.task == t):
            self.method.begin_task(t)
            self.opt, self.sched = self.make_optimizer(cfg.train.epochs * self.steps_per_epoch(t))
            self._account_time()
            p.task, p.begun, p.epoch, p.step, p.task_steps, p.loss_sums = t, True, 0, 0, 0, {}
            p.task_elapsed_s = p.task_train_s = 0.0
            self.epoch_loader_state = None
        while p.epoch < cfg.train.epochs:
            self._train_epoch(t)
            p.epoch, p.step = p.epoch + 1, 0
            self.epoch_loader_state = None
            self._account_time()
            self.checkpoint("epoch")
            _kill_point("epoch_end", self.dist.rank, task=t + 1, epoch=p.epoch)
            self._check_stop()
        self.model.eval()
        self.method.end_task(t)
        self._account_time()
        p.task_train_s = p.task_elapsed_s
        _kill_point("end_task", self.dist.rank, task=t + 1)
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
            self.opt.zero_grad(set_to_none=True)
            if loss.requires_grad:  # a data-parallel rank with no rows in this step has no graph
                loss.backward()
            self.dist.sync_gradients(params)
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            self.opt.step()
            self.sched.step()
            p.step += 1
            p.task_steps += 1
            for k, v in terms.items():
                p.loss_sums[k] = p.loss_sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            _kill_point("step", self.dist.rank, task=t + 1, epoch=p.epoch + 1, step=p.step)
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
            _kill_point("eval", self.dist.rank, task=t + 1, after=i + 1)
        seen_val = torch.cat([self.scenario.tasks[i].val for i in range(t + 1)])
        val = self.accuracy(seen_val) if len(seen_val) else None
        self._account_time()
        sizes = [len(self.scenario.tasks[i].test) for i in range(t + 1)]
        seen = sum(row[i] * sizes[i] for i in range(t + 1)) / sum(sizes)
        record = {"task": t + 1, "accuracy": row[: t + 1], "seen_accuracy": seen, "val_accuracy": val,
                  "train_losses": train_losses, "train_time_s": round(p.task_train_s, 3),
                  "task_time_s": round(p.task_elapsed_s, 3)}
        record.update({k: v[-1] for k, v in self.method.summary().items()
                       if isinstance(v, list) and v and k in ("expert_usage", "frozen_experts")})
        p.R.append(row)
        p.val_acc.append(val)
        p.task_times.append(p.task_elapsed_s)
        p.records.append(record)
        return record

    def run(self, fresh: bool = False) -> dict:
        try:
            with self._signals():
                results = self._run(fresh)
            # Every rank leaves together: gloo aborted now and then ("terminate called without an
            # active exception") when one rank tore the group down while the other was still
            # writing the run's reports. Not on errors: a failed rank would leave the others waiting.
            self.dist.barrier()
            return results
        finally:
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
                for f in self.run_dir.glob("fitted_*.safetensors"):  # encoders.<m>.fit: fit again
                    f.unlink(missing_ok=True)
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
        self._on_main("write metrics.jsonl", lambda: write_jsonl(metrics_path, p.records))
        log.info("run %s: %d tasks, %s-incremental, modalities %s, %d/%d/%d samples (prepared in %.1fs)%s",
                 self.run_dir, T, self.scenario.kind, ",".join(cfg.data.modalities),
                 *(sum(len(getattr(task, s)) for task in self.scenario.tasks) for s in ("train", "val", "test")),
                 self.prepare_time_s, f", {self.dist.world_size} processes" if self.dist.enabled else "")
        # rank 0 decides: other machines need not see the run folder
        if p.task >= T and self.dist.all_max_int(int(self.dist.is_main and results_path.exists()), self.device):
            log.info("run %s is already complete (use --fresh to start over)", self.run_dir)
            if not self.dist.is_main:
                return self._results()
            results = json.loads(results_path.read_text(encoding="utf-8"))
            if not (self.run_dir / "report.html").exists():
                self._write_report()
            return results
        self._session_start = time.perf_counter()
        while p.task < T:
            t = p.task
            train_losses = self.train_task(t)
            record = self.evaluate_task(t, train_losses)
            self._on_main("write metrics.jsonl", lambda: write_jsonl(metrics_path, p.records))
            self._check_replicas(t)
            p.task, p.begun, p.epoch, p.step = t + 1, False, 0, 0
            self.opt = self.sched = None
            self.checkpoint("task")
            _kill_point("task_end", self.dist.rank, task=t + 1)
            log.info("task %d/%d: seen-data test accuracy %.2f%% (per task %s) in %.1fs", t + 1, T,
                     100 * record["seen_accuracy"], " ".join(f"{100 * a:.1f}" for a in p.R[t][: t + 1]),
                     p.task_times[-1])
            self._check_stop()
        results = self._results()
        if cfg.run.save_checkpoint:
            self._on_main("write the final checkpoint", lambda: self.save(self.run_dir / "checkpoints" / "final"))
        self._on_main("write results.json", lambda: write_json(results_path, results))
        if self.dist.is_main:
            self._write_report()
        return results

    def _fit_encoders(self) -> None:
        """encoders.<m>.fit=first_task: train that encoder on task 1 before the method starts (or
        reload the weights this run folder saved), then serve the data with the fitted encoder."""
        from safetensors.torch import load as load_bytes, save
        from mmcl.encoders.fit import fit_first_task, fit_key
        task = self.scenario.tasks[0]
        for m in self.cfg.data.modalities:
            if getattr(self.cfg.encoders, m).fit != "first_task":
                continue
            enc = self.model.encoders[m]
            key = fit_key(enc, self.cfg, m, self.data, task.train)
            path = self.run_dir / f"fitted_{m}.safetensors"
            blob = None

            def fit_or_load():  # rank 0 only; _on_main shares its success or failure with every rank
                nonlocal blob
                if path.exists() and _safetensors_meta(path).get("fit_key") == key:
                    blob = path.read_bytes()
                    enc.load_state_dict(load_bytes(blob))
                    log.info("loaded the %s encoder fitted on task 1 from %s", m, path)
                    return
                idx = torch.as_tensor(task.train, dtype=torch.long)
                rows = self.data.rows[m].index_select(0, idx)
                inputs = {k: v.index_select(0, rows) for k, v in self.data.inputs(m).items()}
                fit_first_task(enc, inputs, self.data.labels.index_select(0, idx), self.cfg, m, self.device)
                blob = save({k: v.detach().cpu().contiguous() for k, v in enc.state_dict().items()},
                            metadata={"fit_key": key})
                atomic_write_bytes(path, blob)
            self._on_main(f"fit the {m} encoder on task 1", fit_or_load)
            if self.dist.enabled:  # every rank serves the data with rank 0's weights
                enc.load_state_dict(load_bytes(self.dist.broadcast_bytes(blob, self.device)))
            enc.to(self.device)
            self.data.reencode(m, enc)
            if hasattr(self.method, "_table"):
                self.method._table = None  # prompt queries come from the encoders: recompute

    def _write_report(self) -> None:
        try:
            from mmcl.report import write_report
            write_report(self.run_dir)
        except Exception as e:  # a plotting failure must not lose the results written above
            log.warning("could not write the report of %s: %s", self.run_dir, e)

    def _results(self) -> dict:
        cfg, p = self.cfg, self.progress
        task_sizes = [len(task.test) for task in self.scenario.tasks]
        return {
            "name": self.run_dir.name, "preset": cfg.preset, "method": cfg.method.name, "seed": cfg.run.seed,
            "scenario": self.scenario.kind, "tasks": self.scenario.describe(),
            "accuracy_matrix": p.R, "task_sizes": task_sizes, "val_accuracy": p.val_acc,
            "metrics": metrics.summarize(p.R, task_sizes), "metric_definitions": metrics.DEFINITIONS,
            **self.method.summary(),
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

    def save(self, stem: Path) -> None:
        meta, tensors = self.method.state()
        model_state = {f"model.{k}": v for k, v in self.model.learned_state_dict().items()}
        heads = [h.out_features for h in self.model.classifier.heads]
        save_checkpoint(stem, {**model_state, **{f"method.{k}": v for k, v in tensors.items()}},
                        {"format": "mmcl-checkpoint-1", "method": meta, "classifier_heads": heads,
                         "config": self.cfg_dict})


def _safetensors_meta(path: Path) -> dict:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # a damaged file is refitted
        return {}


def run(cfg: Config, run_dir: str | Path | None = None, fresh: bool = False) -> dict:
    return Experiment(cfg, run_dir).run(fresh=fresh)
