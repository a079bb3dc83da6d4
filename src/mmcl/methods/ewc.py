"""Online Elastic Weight Consolidation."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmcl import losses
from mmcl.methods.base import ADAPTER_FREE, Method
from mmcl.registry import register_method
from mmcl.settings import setting


@dataclass
class EWCSettings:
    penalty: float = setting("the penalty weight lambda in lambda/2 * sum F (theta - theta*)^2", 100.0, minimum=0.0)
    gamma: float = setting("online-EWC decay of the accumulated Fisher (1: plain sum over tasks)", 1.0, minimum=0.0)


@register_method("ewc", settings=EWCSettings, defaults=ADAPTER_FREE,
                 former_keys={"ewc_lambda": "penalty", "ewc_gamma": "gamma"})
class OnlineEWC(Method):
    """Online EWC: quadratic penalty weighted by the accumulated diagonal Fisher information (Kirkpatrick et al., 2017; Schwarz et al., 2018).

    At the end of task t the diagonal empirical Fisher of every trainable parameter is
    computed from task t's training samples (per sample: the squared gradient of the
    cross-entropy of its label, model in eval mode; averaged over the samples), accumulated as
    F <- method.ewc.gamma * F + F_t, and the parameters are stored as anchors theta*. Each
    later step adds method.ewc.penalty / 2 * sum F (theta - theta*)^2 over the parameters
    that have a Fisher (classifier heads added later have none). No memory.
    """

    # mmcl tune: searched beside train.lr (mmcl.tune.COMMON_SPACE), the same number of trials for every method.
    search_space = {"method.ewc.penalty": {"low": 1.0, "high": 1e6, "log": True}, "method.ewc.gamma": {"low": 0.5, "high": 1.0}}

    def __init__(self, cfg, model, data, scenario, device):
        super().__init__(cfg, model, data, scenario, device)
        self.fisher: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}

    def _named_trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def penalty(self) -> Tensor:
        """method.ewc.penalty / 2 * sum F (theta - theta*)^2 over the anchored parameters."""
        params = self._named_trainable()
        total = torch.zeros((), device=self.device)
        for name, f in self.fisher.items():
            p = params.get(name)
            if p is None:
                continue
            total = total + (f.to(p.device) * (p - self.anchor[name].to(p.device)) ** 2).sum()
        return self.settings.penalty / 2 * total

    def training_step(self, idx: Tensor) -> dict[str, Tensor]:
        out, target = self.forward_batch(idx)
        terms = {"cls": losses.classification(out.logits, target)}
        if self.fisher and self.settings.penalty:
            terms["ewc"] = self.penalty()
        return {**terms, **self.balance_term(out)}

    def fisher_diagonal(self, idx: Tensor) -> dict[str, Tensor]:
        """Empirical diagonal Fisher over samples idx: mean of per-sample squared gradients."""
        params = self._named_trainable()
        names, tensors = list(params), list(params.values())
        fisher = [torch.zeros_like(p, dtype=torch.float32) for p in tensors]
        was = self.model.training
        self.model.eval()
        with torch.enable_grad():
            for i in idx.tolist():
                batch = self.fetch(torch.tensor([i]))
                loss = losses.classification(self.model(batch).logits.float(), batch["target"])
                grads = torch.autograd.grad(loss, tensors, allow_unused=True)
                for f, g in zip(fisher, grads):
                    if g is not None:
                        f += g.detach().float() ** 2
        self.model.train(was)
        n = max(1, len(idx))
        return {name: (f / n).cpu() for name, f in zip(names, fisher)}

    def end_task(self, t: int) -> None:
        new = self.fisher_diagonal(self.scenario.tasks[t].train)
        gamma = self.settings.gamma
        for name, f in new.items():
            old = self.fisher.get(name)
            self.fisher[name] = f if old is None or old.shape != f.shape else gamma * old + f
        params = self._named_trainable()
        self.anchor = {name: params[name].detach().float().cpu().clone() for name in self.fisher if name in params}
        self.fisher = {name: f for name, f in self.fisher.items() if name in self.anchor}

    def state(self):
        meta, tensors = super().state()
        meta["ewc_params"] = sorted(self.fisher)
        for name in self.fisher:
            tensors[f"ewc.fisher.{name}"] = self.fisher[name]
            tensors[f"ewc.anchor.{name}"] = self.anchor[name]
        return meta, tensors

    def load_state(self, meta, tensors):
        super().load_state(meta, tensors)
        names = meta.get("ewc_params", [])
        self.fisher = {n: tensors[f"ewc.fisher.{n}"] for n in names}
        self.anchor = {n: tensors[f"ewc.anchor.{n}"] for n in names}
