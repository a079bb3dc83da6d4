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
    predict(batch)           -> logits over the classes seen so far
    trainable_parameters()   what the optimiser of the current task updates
    stores()                 named memories / buffers that state() and load_state() include
    state() / load_state()   JSON metadata + tensors for checkpoints (no pickle). A checkpoint
                             may be taken in the middle of a task, so the state includes what
                             begin_task set up; a resumed task does not call begin_task again.

Training forwards go through ``forward_batch(idx)``: in a data-parallel run (torchrun) it runs
this rank's share of the rows and gathers the outputs of the whole batch, so a method's loss
code is the same in one process and in many (see mmcl.distributed).
"""
from __future__ import annotations

import torch
from torch import Tensor

from mmcl.data.batches import to_device
from mmcl.distributed import Dist, shard_bounds, shard_sizes
from mmcl.model.adapter import balance_from_stats
from mmcl.model.mmencoder import MMModel, Output


class Method:
    """Base class; subclasses register with @register_method(name)."""

    def __init__(self, cfg, model: MMModel, data, scenario, device: torch.device):
        self.cfg, self.model, self.data, self.scenario = cfg, model, data, scenario
        self.device = device
        self.task = -1
        # Separate generator for the method's own sampling (memory batches, random selection).
        self.generator = torch.Generator().manual_seed(cfg.run.seed + 7919)
        self.dist = Dist()  # the engine sets the process group's view in a data-parallel run

    # -- data -----------------------------------------------------------------------------------
    def fetch(self, idx: Tensor) -> dict:
        batch = self.data.batch(idx)
        batch["target"] = self.scenario.label_to_output[batch["label"]]
        return to_device(batch, self.device)

    def targets(self, idx: Tensor) -> Tensor:
        return self.scenario.label_to_output[self.data.labels[idx]].to(self.device)

    def forward_batch(self, idx: Tensor) -> tuple[Output, Tensor]:
        """Training forward over the samples ``idx`` -> (outputs of every row, targets). In a
        data-parallel run each rank computes its slice of the rows and the outputs, the gate
        statistics and the expert-usage counts of the whole batch are combined across ranks."""
        if not self.dist.enabled:
            batch = self.fetch(idx)
            return self.model(batch), batch["target"]
        d, model, n = self.dist, self.model, len(idx)
        sizes = shard_sizes(n, d.world_size)
        start, end = shard_bounds(n, d.world_size, d.rank)
        with model.sharded(n, start, end):
            if end > start:
                out = model(self.fetch(idx[start:end]))
            else:  # fewer rows than ranks: nothing to run, but keep the RNG in step
                out = None
                model.skip_routing_noise(n)
        mods, C, dz = model.modalities, model.classifier.num_classes, model.classifier.dim
        if out is not None:
            local = torch.cat([out.logits.float()] + [out.z_mod[m].float() for m in mods] + [out.z_joint.float()], 1)
        else:
            local = torch.zeros(0, C + (len(mods) + 1) * dz, device=self.device)
        full = d.gather_rows(local, sizes)
        z_mod = {m: full[:, C + i * dz:C + (i + 1) * dz] for i, m in enumerate(mods)}
        balance, usage = 0.0, []
        if model.adapters:
            stats = out.stats.float() if out is not None else torch.zeros(model.routing_stats_shape(),
                                                                             device=self.device)
            balance = balance_from_stats(d.sum_across(stats))
            E = model.adapters[0].num_experts
            counts = torch.zeros(len(model.adapters), E + 1, dtype=torch.float64, device=self.device)
            if out is not None:
                counts[:, :E] = torch.stack(out.usage).double()
                counts[:, E] = torch.tensor(out.routings, dtype=torch.float64)
            d.all_sum_(counts)
            if model.training:
                for a, c in zip(model.adapters, counts):
                    a.add_usage(c[:E], float(c[E]))
            usage = list(counts[:, :E])
        output = Output(full[:, :C], z_mod, full[:, C + len(mods) * dz:], balance, usage)
        return output, self.targets(idx)

    @torch.no_grad()
    def infer(self, idx: Tensor, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        """Eval-mode logits and joint representations of samples (chunked), on the CPU. In a
        data-parallel run each rank infers its share and every rank gets all rows."""
        if self.dist.enabled:
            d = self.dist
            sizes = shard_sizes(len(idx), d.world_size)
            start, end = shard_bounds(len(idx), d.world_size, d.rank)
            logits, z = self._infer_local(idx[start:end], batch_size)
            both = d.gather_rows_nograd(torch.cat([logits, z], 1).to(self.device), sizes).cpu()
            return both[:, :logits.shape[1]], both[:, logits.shape[1]:]
        return self._infer_local(idx, batch_size)

    @torch.no_grad()
    def _infer_local(self, idx: Tensor, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        was = self.model.training
        self.model.eval()
        bs = batch_size or self.cfg.eval.batch_size
        logits, zs = [], []
        for s in range(0, len(idx), bs):
            out = self.model(self.fetch(idx[s:s + bs]))
            logits.append(out.logits.float().cpu())
            zs.append(out.z_joint.float().cpu())
        self.model.train(was)
        if not logits:
            return torch.zeros(0, self.model.classifier.num_classes), torch.zeros(0, self.model.classifier.dim)
        return torch.cat(logits), torch.cat(zs)

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

    def end_task(self, t: int) -> None:
        pass

    @torch.no_grad()
    def predict(self, batch: dict) -> Tensor:
        return self.model(batch).logits

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

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

    def summary(self) -> dict:
        """Method-specific results for results.json (e.g. expert usage)."""
        return {}

