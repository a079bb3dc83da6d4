"""The run folder's checkpoints and resumption, and the signals that stop a run cleanly.

Runs survive: a checkpoint is written at the end of every epoch and of every task (and when
SIGINT / SIGTERM asks the run to stop), and running the same command on the same run folder
resumes from the newest good one. A resumed run ends with the same numbers as an
uninterrupted one, bit for bit on the same CPU / thread count, because a checkpoint holds
everything that shapes what comes next:

- the model's learned tensors (adapters with their expert-usage counters and frozen set,
  projections, fusion, every classifier head), the optimiser state and the scheduler;
- the method's state (``Method.state``): memory with its stored old outputs, expert usage /
  frozen history, its sampling generator, the old logits of the current task; for the
  baselines, the DER++ reservoir with its logits, EWC's Fisher and anchors, iCaRL's class means;
- the torch / numpy / python RNG states, the engine's loader generator and, for a checkpoint
  taken inside an epoch, the loader state at that epoch's start (its order is replayed and
  the finished steps skipped);
- the position (task, epoch, step), the loss sums of the task so far, and every metric so far
  (metrics.jsonl is rewritten from them, so a resumed run never duplicates a line).

A run folder of an earlier release resumes when its config, with the keys since renamed moved
to their new places (mmcl.schema.migrate), equals this run's; otherwise it stops with a message
naming the keys that differ.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from mmcl.config import from_dict, to_dict
from mmcl.encoders.fit import fit_first_task, fit_key
from mmcl.io import (
    CheckpointError,
    CheckpointWriteError,
    WriteError,
    atomic_write_bytes,
    parse_checkpoint,
    save_checkpoint,
)
from mmcl.naming import RESUMABLE_DIFFERENCES
from mmcl.version import __version__

log = logging.getLogger("mmcl")

KILL_ENV = "MMCL_KILL_AT"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a loss became NaN); names the step and the term."""


class Interrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM stopped the run after a checkpoint was written."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.message = message



def kill_point(point: str, rank: int = 0, **where) -> None:
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
    grad_sums: dict = dataclasses.field(default_factory=dict)   # per parameter group (mmcl.optim)
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


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(current)):
        key = f"{prefix}{k}"
        a, b = saved.get(k), current.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, key + ".")
        elif a != b and key not in RESUMABLE_DIFFERENCES:
            out.append(f"{key}: {a!r} in the checkpoint, {b!r} now")
    return out



def saved_config(d: dict) -> dict:
    """A checkpoint's config as this release writes it: renamed keys moved, keys added since
    at their defaults; unchanged when it does not read (the comparison then names the keys)."""
    try:
        return to_dict(from_dict(d))
    except ValueError:
        return d


class ResumableRun:
    """The checkpoint, resume and signal half of a run (mmcl.engine.Experiment is the other).

    Expects of the subclass: cfg, cfg_dict, run_dir, dist, device, model, method, scenario,
    store (CheckpointStore), progress (Progress), opt / sched, loader_generator,
    epoch_loader_state, last_checkpoint, make_optimizer(steps) and steps_per_epoch(t)."""

    _stop_signal: int | None = None
    _saved_at: tuple | None = None

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
                                 "num_params": sum(len(g["params"]) for g in self.opt.param_groups)}
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
                tensors, meta, before_switch=lambda name: kill_point("checkpoint", kind=kind, task=p.task + 1,
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
        diffs = config_differences(saved_config(meta.get("config", {})), self.cfg_dict)
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
                trains = sum(len(g["params"]) for g in self.opt.param_groups)
                if om["num_params"] != trains:
                    raise CheckpointError(f"{where}: the optimiser had {om['num_params']} parameters, "
                                          f"this model trains {trains}")
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

    def save(self, stem: Path) -> None:
        meta, tensors = self.method.state()
        model_state = {f"model.{k}": v for k, v in self.model.learned_state_dict().items()}
        heads = [h.out_features for h in self.model.classifier.heads]
        save_checkpoint(stem, {**model_state, **{f"method.{k}": v for k, v in tensors.items()}},
                        {"format": "mmcl-checkpoint-1", "method": meta, "classifier_heads": heads,
                         "config": self.cfg_dict})

    # -- encoders fitted on task 1: their weights are part of the run folder ------------------
    def _fit_encoders(self) -> None:
        """encoders.<m>.<kind>.fit=first_task (BlockEncoder.fit_on_first_task): train that encoder
        on task 1 before the method starts (or reload the weights this run folder saved), then
        serve the data with the fitted encoder."""
        task = self.scenario.tasks[0]
        for m in self.cfg.data.modalities:
            enc = self.model.encoders[m]
            if not enc.fit_on_first_task:
                continue
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
                blob = save_bytes({k: v.detach().cpu().contiguous() for k, v in enc.state_dict().items()},
                            metadata={"fit_key": key})
                atomic_write_bytes(path, blob)
            self._on_main(f"fit the {m} encoder on task 1", fit_or_load)
            if self.dist.enabled:  # every rank serves the data with rank 0's weights
                enc.load_state_dict(load_bytes(self.dist.broadcast_bytes(blob, self.device)))
            enc.to(self.device)
            self.data.reencode(m, enc)
            self.method.on_encoders_changed()


def _safetensors_meta(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # a damaged file is refitted
        return {}

