"""The method contract. The engine owns optimisers, devices, precision, loops and checkpoints;
a method owns its losses and its memory.

    begin_task(t)            before training task t (0-indexed): grow heads, prepare targets
    train_indices(t)         the sample indices the engine iterates over in task t (default:
                             task t's training samples; `joint` returns tasks 0..t's)
    training_step(idx)       -> dict of named, already weighted scalar loss terms; the engine
                             sums, checks and back-propagates them. ``idx`` are the sample
                             indices of the current-task batch (the method fetches them, with
                             any memory samples, in one batch).
    end_task(t)              after training task t: freeze, update memory, store old outputs
                             (the engine calls finish_task(t): the head corrections every
                             method shares, model.weight_align, then end_task(t))
    after_step()             after every optimiser step (default: put back what freezing keeps
                             fixed and the optimiser cannot skip, the frozen experts' gate rows)
    predict(batch)           -> logits over the classes seen so far
    trainable_parameters()   what the optimiser of the current task updates
    stores()                 named memories / buffers that state() and load_state() include
    on_encoders_changed()    the engine replaced a frozen encoder (encoders.<m>.imu.fit): drop
                             whatever was computed from the old one
    state() / load_state()   JSON metadata + tensors for checkpoints (no pickle). A checkpoint
                             may be taken in the middle of a task, so the state includes what
                             begin_task set up; a resumed task does not call begin_task again.

Training forwards go through ``forward_batch(idx)`` and eval-mode passes over samples through
``infer(idx)``: thin calls into mmcl.parallel, which in a data-parallel run (torchrun) runs this
rank's share of the rows and combines the outputs of the whole batch across ranks, so a
method's loss code is the same in one process and in many. ``self.dist`` (set by the engine)
is the run's process group (mmcl.distributed).
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from mmcl import losses, optim, parallel
from mmcl.data.batches import to_device
from mmcl.data.prepared_data import PreparedData
from mmcl.distributed import Dist
from mmcl.model.mmencoder import MMModel, Output
from mmcl.scenarios import Scenario
from mmcl.settings import Config

log = logging.getLogger(__name__)

# The config defaults of the methods that run on frozen features only (no cross-modality adapters).
ADAPTER_FREE = {"model": {"adapters": False}}


class Method:
    """Base class; subclasses register with @register_method(name, settings=..., defaults=...).
    ``self.settings`` is the method's own config section (``cfg.method.<name>``; None when the
    method declares no settings). ``predicts_with_head``: the method's predictions are the
    growing classifier's logits (False for prototype and ridge classifiers: a head correction
    such as model.weight_align would change nothing, and is refused)."""

    predicts_with_head = True

    # What `mmcl tune` searches besides mmcl.tune.COMMON_SPACE: {config key: {"low", "high"[, "log"]}
    # or {"choices": [...]}}; declared beside each method's code, documented in docs/tuning.md.
    search_space: dict = {}

    def __init__(self, cfg: Config, model: MMModel, data: PreparedData, scenario: Scenario, device: torch.device):
        # cfg: the run's whole config (its type is assembled from the plug-ins at run time:
        # mmcl.settings.Config plus the plug-in sections); model: the frozen encoders with
        # adapters, projections, fusion and the growing classifier; data: every sample's prepared
        # tensors, indexed by sample (data.batch(idx)); scenario: the tasks' sample indices and
        # the label -> output-unit map.
        self.cfg, self.model, self.data, self.scenario = cfg, model, data, scenario
        self.settings = getattr(cfg.method, getattr(type(self), "registered_name", ""), None)
        self.device = device
        self.task = -1
        # Separate generator for the method's own sampling (memory batches, random selection).
        self.generator = torch.Generator().manual_seed(cfg.run.seed + 7919)
        self.dist = Dist()  # the engine sets the process group's view in a data-parallel run
        if cfg.model.weight_align:
            name = cfg.method.name
            if scenario.kind != "class":
                raise ValueError(f"model.weight_align=true needs a class-incremental stream (scenario.kind=class): "
                                 f"with scenario.kind={scenario.kind} the head does not grow")
            if not self.predicts_with_head:
                raise ValueError(f"model.weight_align=true: method.name={name} does not predict with the growing "
                                 "classifier, so weight aligning would change nothing; set model.weight_align=false")

    # -- data -----------------------------------------------------------------------------------
    def fetch(self, idx: Tensor) -> dict[str, Tensor]:
        """The prepared batch of samples idx on the device, with each sample's output unit as
        "target" (PreparedData.batch: one entry per modality input plus "label")."""
        batch = self.data.batch(idx)
        batch["target"] = self.scenario.label_to_output[batch["label"]]
        return to_device(batch, self.device)

    def targets(self, idx: Tensor) -> Tensor:
        return self.scenario.label_to_output[self.data.labels[idx]].to(self.device)

    def forward_batch(self, idx: Tensor, n_current: int | None = None) -> tuple[Output, Tensor]:
        """Training forward over the samples ``idx`` -> (outputs of every row, targets). In a
        data-parallel run each rank computes its slice of the rows and the outputs, the gate
        statistics and the expert-usage counts of the whole batch are combined across ranks
        (mmcl.parallel.forward_batch). ``n_current``: the first rows are the current task's,
        the rest memory rows, which route noise-free when adapter.memory_noise is false."""
        quiet = None
        if n_current is not None and n_current < len(idx) and not self.cfg.adapter.memory_noise:
            quiet = n_current
        return parallel.forward_batch(self.model, self.dist, idx, self.fetch, self.targets, self.device, quiet,
                                      self.modality_dropout(idx))

    def modality_dropout(self, idx: Tensor) -> Tensor | None:
        """(rows, modalities) bool: which modality of each row of a training step stays
        (train.modality_dropout.<m>: the probability that it is masked), drawn with the method's
        generator for the whole batch; a row that would lose every modality it has keeps one of
        them, chosen uniformly. None when no probability is set (nothing drawn)."""
        mods = self.model.modalities
        p = torch.tensor([float(getattr(self.cfg.train.modality_dropout, m, 0.0)) for m in mods])
        if not bool((p > 0).any()):
            return None
        keep = torch.rand(len(idx), len(mods), generator=self.generator) >= p
        has = self.data.present_matrix(idx)
        lost = ~(keep & has).any(1)
        if bool(lost.any()):
            pick = torch.multinomial(has[lost].float(), 1, generator=self.generator).flatten()
            keep[torch.nonzero(lost).flatten(), pick] = True
        return keep

    def old_classes(self) -> int:
        """Output units of the classes seen before the current task (0 in the first task)."""
        return self.scenario.seen_classes(self.task - 1) if self.task > 0 else 0

    def current_task_logits(self, logits: Tensor) -> Tensor:
        """In a class-incremental run after task 1, the logits with the earlier tasks' classes
        masked (a cross-entropy over them covers the current task's classes only); else as given."""
        old = self.old_classes()
        if self.scenario.kind != "class" or not old:
            return logits
        logits = logits.clone()
        logits[:, :old] = float("-inf")
        return logits

    def replay_classification(self, logits: Tensor, target: Tensor, n_current: int) -> Tensor:
        """L_cls of a batch whose first ``n_current`` rows are the current task's and the rest
        memory rows; with loss.cls_current in a class-incremental run after task 1, the current
        rows' cross-entropy covers only the current task's classes (a counter of the bias
        toward new classes), else it is the plain cross-entropy over all seen classes."""
        first = self.old_classes()
        if not (self.cfg.loss.cls_current and self.scenario.kind == "class" and first):
            return losses.classification(logits, target)
        return losses.split_classification(logits, target, n_current, first)

    @torch.no_grad()
    def infer(self, idx: Tensor, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        """Eval-mode logits and joint representations of samples (chunked), on the CPU. In a
        data-parallel run each rank infers its share and every rank gets all rows
        (mmcl.parallel.infer)."""
        return parallel.infer(self.model, self.dist, idx, self.fetch, batch_size or self.cfg.eval.batch_size,
                              self.device)

    # -- the contract ---------------------------------------------------------------------------
    def begin_task(self, t: int) -> None:
        self.task = t
        n_new = self.scenario.new_classes(t)
        if n_new:
            self.model.classifier.grow(n_new)

    def train_indices(self, t: int) -> Tensor:
        return self.scenario.tasks[t].train

    def training_step(self, idx: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def balance_term(self, out: Output) -> dict[str, Tensor]:
        """The adapters' load-balancing term when the model has adapters (baselines run
        without them by default), else nothing."""
        if self.model.adapters and self.cfg.adapter.balance_weight:
            return {"balance": self.cfg.adapter.balance_weight * out.balance}
        return {}

    def update_balanced_memory(self, memory, t: int) -> None:
        """Add task t's training samples to a class-balanced (class-IL) or (domain, class)-
        balanced (domain-IL) RehearsalMemory, herding on z_joint or random per
        memory.selection, then store the just-trained model's logits and z_joint of the memory."""
        idx = self.scenario.tasks[t].train
        labels = self.data.labels[idx]
        keys = labels.tolist() if self.scenario.kind == "class" else list(zip(self.data.domain_ids[idx].tolist(),
                                                                              labels.tolist()))
        keys = [k if isinstance(k, tuple) else (k,) for k in keys]
        groups: dict[tuple, list[int]] = {}
        for i, k in zip(idx.tolist(), keys):
            groups.setdefault(k, []).append(i)
        new_groups = {k: torch.tensor(v) for k, v in groups.items()}
        features = None
        if memory.selection == "herding":
            _, z = self.infer(idx)
            pos = {int(i): p for p, i in enumerate(idx.tolist())}
            features = {k: z[[pos[i] for i in v.tolist()]] for k, v in new_groups.items()}
        memory.update(new_groups, features, self.generator)
        # The previous model's outputs on the memory, stored now so it never runs again.
        logits, z = self.infer(memory.indices())
        memory.set_outputs(logits, z)

    def old_outputs_of_task(self, t: int) -> Tensor | None:
        """Logits over the classes seen before task t of task t's training samples, computed
        once with the current (= previous task's) model in eval mode, as a table indexed by
        sample index (rows of other samples are zero); None at task 0."""
        old_classes = self.scenario.seen_classes(t - 1) if t > 0 else 0
        if not old_classes:
            return None
        train = self.scenario.tasks[t].train
        logits, _ = self.infer(train)
        table = torch.zeros(len(self.data), old_classes)
        table[train] = logits[:, :old_classes]
        return table

    def finish_task(self, t: int) -> None:
        """What the engine calls after training task t: the head corrections every method shares
        (model.weight_align: GrowingClassifier.align_weights, once a task added classes), then
        the method's end_task (so memories store the corrected outputs)."""
        if self.cfg.model.weight_align and t > 0 and self.scenario.new_classes(t):
            gamma = self.model.classifier.align_weights()
            if gamma is not None:
                log.info("task %d: weight aligning scaled the new classes' rows by %.4f", t + 1, gamma)
        self.end_task(t)

    def end_task(self, t: int) -> None:
        pass

    def after_step(self) -> None:
        for adapter in self.model.adapters:
            adapter.restore_frozen_gates()

    @torch.no_grad()
    def predict(self, batch: dict) -> Tensor:
        return self.model(batch).logits

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def lr_scales(self) -> dict[str, float]:
        """The current task's learning rate of each parameter group (mmcl.optim.GROUPS) as a
        multiple of train.lr; groups left out train at train.lr."""
        return {g: self.cfg.adapter.lr_scale for g in optim.ADAPTER_GROUPS}

    def on_encoders_changed(self) -> None:
        """Called after the engine replaced a frozen encoder (fitted on task 1)."""

    def stores(self) -> dict:
        """Named parts with ``state() -> (meta, tensors)`` and ``load(meta, tensors)`` (memories,
        buffers) that ``state`` / ``load_state`` save and restore under their names."""
        return {}

    def state(self) -> tuple[dict, dict[str, Tensor]]:
        meta, tensors = {"task": self.task}, {"generator": self.generator.get_state()}
        for name, store in self.stores().items():
            meta[name], part = store.state()
            tensors.update(part)
        return meta, tensors

    def load_state(self, meta: dict, tensors: dict[str, Tensor]) -> None:
        self.task = meta["task"]
        if "generator" in tensors:
            self.generator.set_state(tensors["generator"])
        for name, store in self.stores().items():
            store.load(meta[name], tensors)

    def task_record(self) -> dict:
        """Method-specific entries of the metrics.jsonl line of the task just evaluated."""
        return {}

    def summary(self) -> dict:
        """Method-specific results for results.json (e.g. expert usage)."""
        return {}

    @torch.no_grad()
    def representations(self, idx: Tensor) -> dict[str, Tensor]:
        """Eval-mode representations of samples ``idx`` on the CPU, in this process only:
        "joint" (z_joint) and one z_k per modality, each (len(idx), dim_z). The report's t-SNE
        draws them; a method whose representations are not the model's overrides this."""
        was = self.model.training
        self.model.eval()
        parts: dict[str, list[Tensor]] = {}
        for s in range(0, len(idx), self.cfg.eval.batch_size):
            out = self.model(self.fetch(idx[s:s + self.cfg.eval.batch_size]))
            for name, z in {"joint": out.z_joint, **out.z_mod}.items():
                parts.setdefault(name, []).append(z.float().cpu())
        self.model.train(was)
        return {k: torch.cat(v) for k, v in parts.items()}

