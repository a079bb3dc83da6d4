"""Learning without Forgetting."""
from __future__ import annotations

from torch import Tensor

from mmcl import losses
from mmcl.methods.base import Method
from mmcl.registry import register_method


@register_method("lwf")
class LearningWithoutForgetting(Method):
    """Learning without Forgetting: cross-entropy plus distillation of the previous model's old-class outputs on the current data (Li & Hoiem, 2016).

    At the start of task t > 1 the model (as trained on the previous tasks) computes, once and
    in eval mode, its logits over the old classes for every training sample of task t; these
    are the distillation targets, so the previous model never runs during training. Each step:
    cross-entropy over all seen classes + method.lwf_alpha * T^2 KL(softmax(old/T) ||
    softmax(new/T)) on the old classes' logits (T = method.lwf_T). No memory. In
    domain-incremental streams the "old classes" are all classes (the head does not grow).
    """

    def __init__(self, cfg, model, data, scenario, device):
        super().__init__(cfg, model, data, scenario, device)
        self.old_logits: Tensor | None = None  # (len(data), C_old) targets, rows of task t's samples

    def begin_task(self, t: int) -> None:
        super().begin_task(t)
        self.old_logits = self.old_outputs_of_task(t)

    def training_step(self, idx: Tensor) -> dict[str, Tensor]:
        out, target = self.forward_batch(idx)
        terms = {"cls": losses.classification(out.logits, target)}
        if self.old_logits is not None and self.cfg.method.lwf_alpha:
            old = self.old_logits[idx].to(self.device)
            terms["distil"] = self.cfg.method.lwf_alpha * losses.distillation(
                out.logits[:, :old.shape[1]], old, self.cfg.method.lwf_T)
        return {**terms, **self.balance_term(out)}

    def state(self):
        meta, tensors = super().state()
        if self.old_logits is not None:
            tensors["lwf.old_logits"] = self.old_logits
        return meta, tensors

    def load_state(self, meta, tensors):
        super().load_state(meta, tensors)
        self.old_logits = tensors.get("lwf.old_logits")
