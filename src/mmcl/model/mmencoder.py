"""MMEncoder: frozen encoders + cross-modality adapters, projections, fusion and classifier."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mmcl.encoders.base import BlockEncoder, masked_mean
from mmcl.model.adapter import CrossModalityAdapter


def mlp(d_in: int, hidden: int, d_out: int, input_norm: bool = True) -> nn.Sequential:
    # LayerNorm on the input: pooled frozen features differ in scale by orders of magnitude
    # between encoders (MiniLM tokens vs. GE2E's ReLU outputs); without it the heads barely
    # train in a few epochs (tuxpaint-dil task 1: 24% -> 46% test accuracy, 3 epochs).
    layers = [nn.LayerNorm(d_in)] if input_norm else []
    return nn.Sequential(*layers, nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class GrowingClassifier(nn.Module):
    """One linear head per group of classes; logits are their concatenation. Growing adds a
    head and leaves the old rows untouched (class-incremental); a domain-incremental run adds
    one head for all classes at the start."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.heads = nn.ModuleList()

    @property
    def num_classes(self) -> int:
        return sum(h.out_features for h in self.heads)

    def grow(self, n: int) -> None:
        ref = next(self.parameters(), None)
        head = nn.Linear(self.dim, n)
        if ref is not None:
            head = head.to(ref.device)
        self.heads.append(head)

    def forward(self, z: Tensor) -> Tensor:
        if not self.heads:
            raise RuntimeError("classifier has no classes yet: call grow() at the start of a task")
        return torch.cat([h(z) for h in self.heads], dim=1)


@dataclass
class Output:
    logits: Tensor
    z_mod: dict[str, Tensor]
    z_joint: Tensor
    balance: Tensor | float = 0.0
    usage: list = field(default_factory=list)  # per block: expert choice counts of this call


class MMModel(nn.Module):
    def __init__(self, encoders: dict[str, BlockEncoder], cfg):
        super().__init__()
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(encoders)
        blocks = {e.num_blocks for e in encoders.values()}
        if len(blocks) != 1:
            raise ValueError(f"all encoders must have the same number of blocks, got {blocks}")
        self.num_blocks = blocks.pop()
        a = cfg.adapter
        self.adapters = nn.ModuleList()
        if cfg.model.adapters:
            for b in range(self.num_blocks):
                widths = {m: encoders[m].dims[b] for m in self.modalities}
                self.adapters.append(CrossModalityAdapter(
                    widths, num_experts=a.num_experts, top_k=a.top_k, dim=a.dim, expert=a.expert,
                    context_tokens=a.context_tokens, noisy_gating=a.noisy_gating, dense=a.dense))
        mc = cfg.model
        self.proj = nn.ModuleDict({m: mlp(encoders[m].dims[-1], mc.head_hidden, mc.dim_z, mc.input_norm)
                                   for m in self.modalities})
        self.fusion = mlp(len(self.modalities) * mc.dim_z, mc.head_hidden, mc.dim_z, mc.input_norm)
        self.classifier = GrowingClassifier(mc.dim_z)

    def learned_state_dict(self) -> dict[str, Tensor]:
        """Everything but the frozen encoders (re-loaded from their source on resume)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoders.")}

    def encode(self, batch: dict) -> tuple[dict[str, Tensor], dict[str, Tensor | None], Tensor | float, list]:
        """Run the frozen blocks with adapters; returns the last tokens and masks per modality."""
        tokens, masks = {}, {}
        for m in self.modalities:
            x = batch[m]
            if "tokens" in x:  # prefix cached at preparation time
                tokens[m], masks[m] = x["tokens"], x.get("mask")
            else:
                tokens[m], masks[m] = self.encoders[m].prefix(x)
        balance, usage = 0.0, []
        for b in range(self.num_blocks):
            if b > 0:
                for m in self.modalities:
                    tokens[m], masks[m] = self.encoders[m].forward_block(b, tokens[m], masks[m])
            if self.adapters:
                tokens, routing = self.adapters[b](tokens, masks)
                balance = balance + routing.balance
                usage.append(routing.counts)
        return tokens, masks, balance, usage

    def forward(self, batch: dict) -> Output:
        tokens, masks, balance, usage = self.encode(batch)
        z_mod = {m: self.proj[m](masked_mean(tokens[m], masks[m])) for m in self.modalities}
        z_joint = self.fusion(torch.cat([z_mod[m] for m in self.modalities], dim=-1))
        return Output(self.classifier(z_joint), z_mod, z_joint, balance, usage)
