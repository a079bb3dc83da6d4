"""Experience replay with a class-balanced rehearsal memory."""
from __future__ import annotations

import torch
from torch import Tensor

from mmcl.memory import RehearsalMemory
from mmcl.methods.base import ADAPTER_FREE, Method
from mmcl.registry import register_method


@register_method("er", defaults=ADAPTER_FREE)
class ExperienceReplay(Method):
    """Experience replay: cross-entropy on the current batch plus a batch from a class-balanced memory (Chaudhry et al., 2019).

    The memory is the same as cma's: memory.size samples (200), class-balanced (class-IL) or
    (domain, class)-balanced (domain-IL), selected by herding on z_joint or at random
    (memory.selection), updated at the end of every task. From task 2 on each step draws
    memory.batch_size memory samples and trains on the cross-entropy of the current and
    memory rows together (one forward pass).
    """

    def __init__(self, cfg, model, data, scenario, device):
        super().__init__(cfg, model, data, scenario, device)
        self.memory = RehearsalMemory(cfg.memory.size, cfg.memory.selection)

    def end_task(self, t: int) -> None:
        if self.cfg.memory.size > 0:
            self.update_balanced_memory(self.memory, t)

    def training_step(self, idx: Tensor) -> dict[str, Tensor]:
        n = len(idx)
        if self.task > 0 and len(self.memory) > 0:
            mem_idx, _ = self.memory.sample(self.cfg.memory.batch_size, self.generator)
            idx = torch.cat([idx, mem_idx])
        out, target = self.forward_batch(idx, n)
        return {"cls": self.replay_classification(out.logits, target, n), **self.balance_term(out)}

    def stores(self):
        return {"memory": self.memory}

    def summary(self) -> dict:
        return {"memory_size": len(self.memory)}
