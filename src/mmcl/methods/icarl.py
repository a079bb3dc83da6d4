"""iCaRL: incremental classifier and representation learning."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcl.memory import RehearsalMemory
from mmcl.methods.base import ADAPTER_FREE, Method
from mmcl.registry import register_method


@register_method("icarl", defaults={**ADAPTER_FREE, "memory": {"selection": "herding"}})
class ICaRL(Method):
    """iCaRL: herding exemplar memory, sigmoid/BCE distillation on old classes, nearest-mean-of-exemplars prediction (Rebuffi et al., CVPR 2017).

    Training: the current batch plus (from task 2 on) memory.batch_size exemplars; binary
    cross-entropy with logits over all seen classes, whose targets are one-hot for the
    classes new in this task ("cls") and the previous model's sigmoid outputs for the old
    classes ("distil"). The old outputs are computed once: for the current task's samples at
    the task's start, for exemplars at the end of the previous task (stored with the memory),
    so the previous model never runs during training. In domain-incremental streams no class
    is new after task 1: there, "cls" is the one-hot BCE over all classes and "distil" the
    BCE against the old sigmoid outputs, summed.

    Memory: memory.size exemplars, class-balanced, herding on L2-normalised z_joint
    (icarl.yaml sets memory.selection=herding). Prediction: the class whose exemplar mean
    of L2-normalised z_joint (recomputed from the memory at every task's end, then
    normalised) is nearest to the sample's normalised z_joint; the returned scores are
    negative squared distances. Classes without exemplars (memory.size 0 or smaller than
    the number of classes) score -inf; with no exemplars at all, the classifier's logits
    are used.
    """

    def __init__(self, cfg, model, data, scenario, device):
        super().__init__(cfg, model, data, scenario, device)
        self.memory = RehearsalMemory(cfg.memory.size, cfg.memory.selection)
        self.current_old_logits: Tensor | None = None   # old-class logits of task t's samples
        self.class_means: Tensor | None = None          # (C_seen, dim_z), NaN rows: no exemplars

    def begin_task(self, t: int) -> None:
        super().begin_task(t)
        self.current_old_logits = self.old_outputs_of_task(t)

    def end_task(self, t: int) -> None:
        if self.cfg.memory.size > 0:
            self.update_balanced_memory(self.memory, t)
        self.class_means = self.compute_class_means()

    def compute_class_means(self) -> Tensor | None:
        """Mean of the exemplars' L2-normalised z_joint per output class, L2-normalised."""
        if len(self.memory) == 0 or self.memory.old_z is None:
            return None
        C = self.model.classifier.num_classes
        z = F.normalize(self.memory.old_z.float(), dim=1)
        out = self.targets(self.memory.indices()).cpu()
        means = torch.full((C, z.shape[1]), float("nan"))
        for c in out.unique().tolist():
            means[c] = F.normalize(z[out == c].mean(0), dim=0)
        return means

    def training_step(self, idx: Tensor) -> dict[str, Tensor]:
        C_old = self.old_classes()
        old_parts = []
        all_idx = idx
        if self.current_old_logits is not None:
            old_parts.append(self.current_old_logits[idx])
        if self.task > 0 and len(self.memory) > 0:
            mem_idx, mem_pos = self.memory.sample(self.cfg.memory.batch_size, self.generator)
            all_idx = torch.cat([idx, mem_idx])
            old_parts.append(self.memory.old_logits[mem_pos][:, :C_old])
        out, target = self.forward_batch(all_idx)
        logits = out.logits.float()
        onehot = F.one_hot(target, logits.shape[1]).float()
        rows = logits.shape[0]
        if C_old:  # old_parts: one row of old logits per row of the batch
            old_targets = torch.sigmoid(torch.cat(old_parts).to(self.device))
            distil = F.binary_cross_entropy_with_logits(logits[:, :C_old], old_targets, reduction="sum") / rows
            if self.scenario.kind == "class":
                new = F.binary_cross_entropy_with_logits(logits[:, C_old:], onehot[:, C_old:], reduction="sum") / rows
            else:
                new = F.binary_cross_entropy_with_logits(logits, onehot, reduction="sum") / rows
            terms = {"cls": new, "distil": distil}
        else:
            terms = {"cls": F.binary_cross_entropy_with_logits(logits, onehot, reduction="sum") / rows}
        return {**terms, **self.balance_term(out)}

    @torch.no_grad()
    def predict(self, batch: dict) -> Tensor:
        out = self.model(batch)
        if self.class_means is None:
            return out.logits
        z = F.normalize(out.z_joint.float(), dim=1)
        means = self.class_means.to(z.device)
        scores = -torch.cdist(z, torch.nan_to_num(means, nan=0.0)) ** 2
        scores[:, torch.isnan(means).any(1)] = float("-inf")
        if scores.shape[1] < out.logits.shape[1]:  # classes added since the means were computed
            scores = torch.cat([scores, torch.full((len(z), out.logits.shape[1] - scores.shape[1]), float("-inf"),
                                                   device=z.device)], 1)
        return scores

    def stores(self):
        return {"memory": self.memory}

    def state(self):
        meta, tensors = super().state()
        if self.current_old_logits is not None:
            tensors["icarl.current_old_logits"] = self.current_old_logits
        if self.class_means is not None:
            tensors["icarl.class_means"] = self.class_means
        return meta, tensors

    def load_state(self, meta, tensors):
        super().load_state(meta, tensors)
        self.current_old_logits = tensors.get("icarl.current_old_logits")
        self.class_means = tensors.get("icarl.class_means")

    def summary(self) -> dict:
        return {"memory_size": len(self.memory)}
