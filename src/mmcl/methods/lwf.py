"""Learning without Forgetting."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mmcl import losses
from mmcl.methods.base import ADAPTER_FREE, Method
from mmcl.registry import register_method
from mmcl.settings import setting


@dataclass
class LwFSettings:
    alpha: float = setting("weight of the distillation term", 1.0, minimum=0.0)
    temperature: float = setting("distillation temperature T", 2.0, above=0.0)


@register_method("lwf", settings=LwFSettings, defaults=ADAPTER_FREE,
                 former_keys={"lwf_alpha": "alpha", "lwf_T": "temperature"})
class LearningWithoutForgetting(Method):
    """Learning without Forgetting: cross-entropy plus distillation of the previous model's old-class outputs on the current data (Li & Hoiem, 2016).

    At the start of task t > 1 the model (as trained on the previous tasks) computes, once and
    in eval mode, its logits over the old classes for every training sample of task t; these
    are the distillation targets, so the previous model never runs during training. Each step:
    cross-entropy over all seen classes + method.lwf.alpha * T^2 KL(softmax(old/T) ||
    softmax(new/T)) on the old classes' logits (T = method.lwf.temperature). No memory. In
    domain-incremental streams the "old classes" are all classes (the head does not grow).
    """

    # mmcl tune: searched beside train.lr (mmcl.tune.COMMON_SPACE), the same number of trials for every method.
    search_space = {"method.lwf.alpha": {"low": 0.1, "high": 10.0, "log": True}, "method.lwf.temperature": {"low": 1.0, "high": 4.0}}

    def __init__(self, cfg, model, data, scenario, device):
        super().__init__(cfg, model, data, scenario, device)
        self.old_logits: Tensor | None = None  # (len(data), C_old) targets, rows of task t's samples

    def begin_task(self, t: int) -> None:
        super().begin_task(t)
        self.old_logits = self.old_outputs_of_task(t)

    def training_step(self, idx: Tensor) -> dict[str, Tensor]:
        out, target = self.forward_batch(idx)
        terms = {"cls": losses.classification(out.logits, target)}
        if self.old_logits is not None and self.settings.alpha:
            old = self.old_logits[idx].to(self.device)
            terms["distil"] = self.settings.alpha * losses.distillation(
                out.logits[:, :old.shape[1]], old, self.settings.temperature)
        return {**terms, **self.balance_term(out)}

    def state(self):
        meta, tensors = super().state()
        if self.old_logits is not None:
            tensors["lwf.old_logits"] = self.old_logits
        return meta, tensors

    def load_state(self, meta, tensors):
        super().load_state(meta, tensors)
        self.old_logits = tensors.get("lwf.old_logits")
