"""MMEncoder: frozen encoders + cross-modality adapters, projections, fusion and classifier."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mmcl.encoders.base import BlockEncoder, masked_mean
from mmcl.model.adapter import CrossModalityAdapter
from mmcl.model.prompts import inject, strip


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
        self.register_buffer("device_ref", torch.zeros(0), persistent=False)

    @property
    def num_classes(self) -> int:
        return sum(h.out_features for h in self.heads)

    def grow(self, n: int) -> None:
        # The buffer follows model.to(device), so the first head lands there too.
        self.heads.append(nn.Linear(self.dim, n).to(self.device_ref.device))

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
    routings: list = field(default_factory=list)  # per block: routed (sample, modality) pairs
    stats: Tensor | None = None  # (blocks, modalities, 2, E) gate importance / load sums


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
        self.prompter: nn.Module | None = None  # set by the prompt methods (mmcl.model.prompts)

    def learned_state_dict(self) -> dict[str, Tensor]:
        """Everything but the frozen encoders (re-loaded from their source on resume)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoders.")}

    @contextlib.contextmanager
    def sharded(self, rows: int, start: int, end: int):
        """While active, this process runs rows [start, end) of a ``rows``-row data-parallel
        batch: routing noise is drawn for all rows and sliced, and the adapters leave usage
        counting to the caller (which sums the counts over ranks first)."""
        for a in self.adapters:
            a.shard = (rows, start, end)
        try:
            yield
        finally:
            for a in self.adapters:
                a.shard = None

    def skip_routing_noise(self, rows: int) -> None:
        """Advance the RNG exactly as a forward over ``rows`` rows would (a rank with no rows
        in a step must stay in step with the others)."""
        device = next(self.parameters()).device
        for a in self.adapters:
            if a.draws_noise:
                for _ in a.modalities:
                    torch.randn(rows, a.num_experts, device=device)  # as CrossModalityAdapter.draw_noise

    def routing_stats_shape(self) -> tuple[int, ...]:
        a = self.adapters[0]
        return (len(self.adapters), len(a.modalities), 2, a.num_experts)

    def encode(self, batch: dict) -> tuple[dict[str, Tensor], dict[str, Tensor | None], list]:
        """Run the frozen blocks with adapters; returns the last tokens and masks per modality
        and each block's Routing."""
        tokens, masks = {}, {}
        for m in self.modalities:
            x = batch[m]
            if "tokens" in x:  # prefix cached at preparation time
                tokens[m], masks[m] = x["tokens"], x.get("mask")
            else:
                tokens[m], masks[m] = self.encoders[m].prefix(x)
        prompts = self.prompter(batch) if self.prompter is not None else {}
        persist = bool(getattr(self.prompter, "persist", False))
        carried = dict.fromkeys(self.modalities, 0)  # prompt tokens leading the sequence
        routing = []
        for b in range(self.num_blocks):
            if b > 0:
                for m in self.modalities:
                    p = prompts.get(m, {}).get(b)
                    if p is None and not carried[m]:
                        tokens[m], masks[m] = self.encoders[m].forward_block(b, tokens[m], masks[m])
                    else:
                        tokens[m], masks[m], carried[m] = inject(self.encoders[m], b, p, tokens[m], masks[m],
                                                                 carried[m], persist)
            if self.adapters:
                if any(carried.values()):
                    raise ValueError("persistent prompts and cross-modality adapters cannot be combined")
                tokens, r = self.adapters[b](tokens, masks)
                routing.append(r)
        for m in self.modalities:
            tokens[m], masks[m] = strip(tokens[m], masks[m], carried[m])
        return tokens, masks, routing

    def forward(self, batch: dict) -> Output:
        tokens, masks, routing = self.encode(batch)
        balance = 0.0
        for r in routing:
            balance = balance + r.balance
        z_mod = {m: self.proj[m](masked_mean(tokens[m], masks[m])) for m in self.modalities}
        z_joint = self.fusion(torch.cat([z_mod[m] for m in self.modalities], dim=-1))
        return Output(self.classifier(z_joint), z_mod, z_joint, balance, [r.counts for r in routing],
                      [r.routings for r in routing], torch.stack([r.stats for r in routing]) if routing else None)
