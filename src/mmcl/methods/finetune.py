"""Fine-tuning: the lower bound of continual learning."""
from __future__ import annotations

from torch import Tensor

from mmcl import losses
from mmcl.methods.base import ADAPTER_FREE, Method
from mmcl.registry import register_method


@register_method("finetune", defaults=ADAPTER_FREE)
class Finetune(Method):
    """Fine-tuning, lower bound: cross-entropy on the current task only, no protection against forgetting (e.g. De Lange et al., TPAMI 2021).

    Each step is the cross-entropy of the current batch over every class seen so far; no
    memory, no regularisation. Runs without cross-modality adapters by default (finetune.yaml).
    """

    def training_step(self, idx: Tensor) -> dict[str, Tensor]:
        out, target = self.forward_batch(idx)
        return {"cls": losses.classification(out.logits, target), **self.balance_term(out)}
