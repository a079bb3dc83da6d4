"""Joint training: the upper bound of continual learning."""
from __future__ import annotations

import torch
from torch import Tensor

from mmcl import losses
from mmcl.methods.base import ADAPTER_FREE, Method
from mmcl.registry import register_method


@register_method("joint", defaults=ADAPTER_FREE)
class Joint(Method):
    """Joint training, upper bound: at task t, trains on the union of tasks 1..t's training data (e.g. De Lange et al., TPAMI 2021).

    The simplest correct form of the upper bound in a task stream: the engine iterates over
    ``train_indices(t)`` = every training sample of tasks 0..t (shuffled together), for
    train.epochs epochs, continuing from the model of task t-1; each step is the
    cross-entropy over every class seen so far. Evaluation after each task is therefore the
    accuracy of a model trained jointly on all data seen so far. It costs (t+1) times the
    steps of a single task at task t. No memory limit applies (memory.size is unused).
    """

    def train_indices(self, t: int) -> Tensor:
        return torch.cat([self.scenario.tasks[i].train for i in range(t + 1)])

    def training_step(self, idx: Tensor) -> dict[str, Tensor]:
        out, target = self.forward_batch(idx)
        return {"cls": losses.classification(out.logits, target), **self.balance_term(out)}
