"""Dark Experience Replay++."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcl import losses
from mmcl.methods.base import ADAPTER_FREE, Method
from mmcl.registry import register_method
from mmcl.settings import setting


class ReservoirLogitBuffer:
    """Reservoir sampling over the stream of training samples (Vitter's algorithm R): holds up
    to ``size`` sample indices with the logits the model gave them when they were inserted.
    Logits are stored at the width of the classifier at that time (``widths``); the table is
    zero-padded when the classifier grows."""

    def __init__(self, size: int):
        self.size = size
        self.seen = 0                                    # stream samples offered so far
        self.indices = torch.zeros(0, dtype=torch.long)  # sample index per filled slot
        self.logits = torch.zeros(0, 0)                  # (filled, C) logits at insertion
        self.widths = torch.zeros(0, dtype=torch.long)   # classes the stored logits cover

    def __len__(self) -> int:
        return len(self.indices)

    def add(self, idx: Tensor, logits: Tensor, generator: torch.Generator) -> None:
        logits = logits.detach().float().cpu()
        C = max(logits.shape[1], self.logits.shape[1])
        if self.logits.shape[1] < C:
            self.logits = F.pad(self.logits, (0, C - self.logits.shape[1]))
        row = F.pad(logits, (0, C - logits.shape[1]))
        for i, sample in enumerate(idx.tolist()):
            if len(self) < self.size:
                self.indices = torch.cat([self.indices, torch.tensor([sample])])
                self.logits = torch.cat([self.logits, row[i:i + 1]])
                self.widths = torch.cat([self.widths, torch.tensor([logits.shape[1]])])
            else:
                j = int(torch.randint(0, self.seen + 1, (1,), generator=generator))
                if j < self.size:
                    self.indices[j] = sample
                    self.logits[j] = row[i]
                    self.widths[j] = logits.shape[1]
            self.seen += 1

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Positions of n slots drawn without replacement."""
        return torch.randperm(len(self), generator=generator)[: min(n, len(self))]

    def state(self) -> tuple[dict, dict[str, Tensor]]:
        return ({"size": self.size, "seen": self.seen},
                {"derpp.indices": self.indices, "derpp.logits": self.logits, "derpp.widths": self.widths})

    def load(self, meta: dict, tensors: dict[str, Tensor]) -> None:
        self.size, self.seen = meta["size"], meta["seen"]
        self.indices, self.logits, self.widths = (tensors["derpp.indices"], tensors["derpp.logits"],
                                                  tensors["derpp.widths"])


def masked_logit_mse(new: Tensor, stored: Tensor, widths: Tensor) -> Tensor:
    """Mean squared error between logits and stored logits over the classes each stored row
    covers (a row stored before the classifier grew covers fewer classes)."""
    C = min(new.shape[1], stored.shape[1])
    mask = (torch.arange(C, device=new.device)[None, :] < widths.to(new.device)[:, None]).float()
    diff = (new[:, :C] - stored[:, :C].to(new.device)) ** 2
    return (diff * mask).sum() / mask.sum().clamp_min(1.0)


@dataclass
class DERppSettings:
    alpha: float = setting("weight of the MSE between logits and stored logits (DER term)", 0.1, minimum=0.0)
    beta: float = setting("weight of the cross-entropy on a second memory batch (++ term)", 0.5, minimum=0.0)


@register_method("derpp", settings=DERppSettings, defaults=ADAPTER_FREE,
                 former_keys={"derpp_alpha": "alpha", "derpp_beta": "beta"})
class DarkExperienceReplayPP(Method):
    """DER++: replay with logit matching (MSE to logits stored at insertion) plus cross-entropy on memory samples (Buzzega et al., NeurIPS 2020).

    The memory (memory.size samples) is filled by reservoir sampling over every training
    sample of the stream, each stored with the logits the model gave it in the step that
    inserted it (training-mode outputs, as in the paper). Each step, once the memory holds
    samples (from the second step of the first task on), draws two independent memory
    batches of memory.batch_size: loss = CE(current) + method.derpp.alpha * MSE(logits,
    stored logits) on the first + method.derpp.beta * CE on the second. The three parts run
    as one forward pass; the current batch is then offered to the reservoir. With the growing
    class-incremental head, rows stored before a head was added are matched on the classes
    they cover only (the paper's fixed head also stores the future classes' logits).
    """

    # mmcl tune: searched beside train.lr (mmcl.tune.COMMON_SPACE), the same number of trials for every method.
    search_space = {"method.derpp.alpha": {"low": 0.01, "high": 1.0, "log": True}, "method.derpp.beta": {"low": 0.1, "high": 1.0}}

    def __init__(self, cfg, model, data, scenario, device):
        super().__init__(cfg, model, data, scenario, device)
        self.buffer = ReservoirLogitBuffer(cfg.memory.size)

    def training_step(self, idx: Tensor) -> dict[str, Tensor]:
        mc = self.settings
        n, parts = len(idx), [idx]
        pos_a = pos_b = None
        if len(self.buffer) > 0:
            pos_a = self.buffer.sample(self.cfg.memory.batch_size, self.generator)
            pos_b = self.buffer.sample(self.cfg.memory.batch_size, self.generator)
            parts += [self.buffer.indices[pos_a], self.buffer.indices[pos_b]]
        out, target = self.forward_batch(torch.cat(parts))
        terms = {"cls": losses.classification(out.logits[:n], target[:n])}
        if pos_a is not None:
            na = len(pos_a)
            if mc.alpha:
                terms["der"] = mc.alpha * masked_logit_mse(
                    out.logits[n:n + na], self.buffer.logits[pos_a], self.buffer.widths[pos_a])
            if mc.beta:
                terms["der_cls"] = mc.beta * losses.classification(out.logits[n + na:], target[n + na:])
        if self.buffer.size > 0:
            self.buffer.add(idx, out.logits[:n], self.generator)
        return {**terms, **self.balance_term(out)}

    def stores(self):
        return {"buffer": self.buffer}

    def summary(self) -> dict:
        return {"memory_size": len(self.buffer)}
