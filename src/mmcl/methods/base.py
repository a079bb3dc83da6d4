"""The method contract. The engine owns optimisers, devices, precision, loops and checkpoints;
a method owns its losses and its memory.

    begin_task(t)            before training task t (0-indexed): grow heads, prepare targets
    training_step(idx)       -> dict of named, already weighted scalar loss terms; the engine
                             sums, checks and back-propagates them. ``idx`` are the sample
                             indices of the current-task batch (the method fetches them, with
                             any memory samples, in one batch).
    end_task(t)              after training task t: freeze, update memory, store old outputs
    predict(batch)           -> logits over the classes seen so far
    trainable_parameters()   what the optimiser of the current task updates
    state() / load_state()   JSON metadata + tensors for checkpoints (no pickle)
"""
from __future__ import annotations

import torch
from torch import Tensor

from mmcl.model.mmencoder import MMModel


def to_device(batch, device):
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


class Method:
    """Base class; subclasses register with @register_method(name)."""

    def __init__(self, cfg, model: MMModel, data, scenario, device: torch.device):
        self.cfg, self.model, self.data, self.scenario = cfg, model, data, scenario
        self.device = device
        self.task = -1
        # Separate generator for the method's own sampling (memory batches, random selection).
        self.generator = torch.Generator().manual_seed(cfg.run.seed + 7919)

    # -- data -----------------------------------------------------------------------------------
    def fetch(self, idx: Tensor) -> dict:
        batch = self.data.batch(idx)
        batch["target"] = self.scenario.label_to_output[batch["label"]]
        return to_device(batch, self.device)

    @torch.no_grad()
    def infer(self, idx: Tensor, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        """Eval-mode logits and joint representations of samples (chunked), on the CPU."""
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

    def training_step(self, idx: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def end_task(self, t: int) -> None:
        pass

    @torch.no_grad()
    def predict(self, batch: dict) -> Tensor:
        return self.model(batch).logits

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def state(self) -> tuple[dict, dict[str, Tensor]]:
        return {"task": self.task}, {}

    def load_state(self, meta: dict, tensors: dict[str, Tensor]) -> None:
        self.task = meta["task"]

    def summary(self) -> dict:
        """Method-specific results for results.json (e.g. expert usage)."""
        return {}

