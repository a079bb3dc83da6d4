"""MMEncoder: frozen encoders + cross-modality adapters, projections, fusion and classifier.

A data-parallel step (mmcl.parallel) runs a share of a batch's rows through the same model,
with three calls: ``draw_routing_noise(rows)`` draws the gate noise of the whole batch (every
rank draws it, so the RNG stays in step), ``forward(batch, noise=noise_rows(noise, rows),
count_usage=False)`` routes the rank's rows with their slice of it and leaves the usage
counts to the caller, and ``add_usage(counts, routings)`` adds the counts once summed over ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mmcl.data.batches import presence
from mmcl.encoders.base import BlockEncoder, length_groups, masked_mean, valid_lengths
from mmcl.model.adapter import CrossModalityAdapter, balance_from_stats
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

    @torch.no_grad()
    def align_weights(self) -> float | None:
        """WA (Zhao et al., CVPR 2020): scale the last head's rows by gamma = mean norm of the
        older heads' weight rows / mean norm of the last head's, so new and old classes' rows
        have the same mean norm. The bias is scaled too: every new-class logit is multiplied
        by gamma (the paper's head has no bias). Returns gamma, or None with one head."""
        if len(self.heads) < 2:
            return None
        old = torch.cat([h.weight for h in self.heads[:-1]]).norm(dim=1).mean()
        new = self.heads[-1].weight.norm(dim=1).mean()
        gamma = float(old / new.clamp_min(1e-12))
        self.heads[-1].weight.mul_(gamma)
        if self.heads[-1].bias is not None:
            self.heads[-1].bias.mul_(gamma)
        return gamma


@dataclass
class Output:
    logits: Tensor
    z_mod: dict[str, Tensor]
    z_joint: Tensor
    balance: Tensor | float = 0.0
    usage: list = field(default_factory=list)  # per block: expert choice counts of this call
    routings: list = field(default_factory=list)  # per block: routed (sample, modality) pairs
    stats: Tensor | None = None  # (blocks, modalities, 2, E) gate importance / load sums
    scales: list = field(default_factory=list)  # eval only, per block: (2,) clean logit std, noise std
    # {modality: bool (rows,)} modality masks, None when every row has every modality. A masked
    # modality's z_mod rows are NaN: nothing may read them (losses select the present rows).
    present: dict | None = None


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
                    context_tokens=a.context_tokens, noisy_gating=a.noisy_gating, dense=a.dense,
                    gate_init_std=a.gate_init_std, noise_scale=a.noise_scale, freeze_scope=cfg.freeze.scope))
        mc = cfg.model
        self.proj = nn.ModuleDict({m: mlp(encoders[m].dims[-1], mc.head_hidden, mc.dim_z, mc.input_norm)
                                   for m in self.modalities})
        self.fusion = mlp(len(self.modalities) * mc.dim_z, mc.head_hidden, mc.dim_z, mc.input_norm)
        self.classifier = GrowingClassifier(mc.dim_z)
        self.prompter: nn.Module | None = None  # set by the prompt methods (mmcl.model.prompts)
        self.length_chunks = int(mc.length_chunks)

    @property
    def frozen_features(self) -> bool:
        """No cross-modality adapters and no prompter: each sample's pooled features are a fixed
        function of the sample, so they can be computed once (model.cached_features) and a
        batch may carry them as {modality: {"pooled": (b, D)}}."""
        return not self.adapters and self.prompter is None

    def pooled_features(self, batch: dict) -> dict[str, Tensor]:
        """Each modality's pooled frozen features (b, D) of a batch: the served ones
        ("pooled"), else the frozen blocks run here (no adapters, no prompts)."""
        if all("pooled" in batch[m] for m in self.modalities):
            return {m: batch[m]["pooled"].float() for m in self.modalities}
        return {m: self.encoders[m].pooled(batch[m], self.length_chunks).float() for m in self.modalities}

    def learned_state_dict(self) -> dict[str, Tensor]:
        """Everything but the frozen encoders (re-loaded from their source on resume)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoders.")}

    # -- routing, for data-parallel steps (mmcl.parallel) ----------------------------------------
    def draw_routing_noise(self, rows: int) -> list | None:
        """Gate noise of a ``rows``-row batch for every adapter and modality, drawn in the order
        the adapters use it (one (rows, E) draw each), or None when no adapter draws noise
        (eval, dense, off). ``forward`` draws it itself unless given; drawing it without a
        forward advances the RNG exactly as a forward over ``rows`` rows would."""
        if not any(a.draws_noise for a in self.adapters):
            return None
        device = next(self.parameters()).device
        return [a.draw_noise(rows, device) if a.draws_noise else None for a in self.adapters]

    def routing_stats_shape(self) -> tuple[int, ...]:
        """Shape of ``Output.stats``: (blocks, modalities, 2, experts)."""
        a = self.adapters[0]
        return (len(self.adapters), len(a.modalities), 2, a.num_experts)

    def add_usage(self, counts, routings) -> None:
        """Add expert-usage counts to the adapters: per block, the (E,) choice counts and the
        number of routings (what a ``count_usage=False`` forward left to its caller)."""
        for a, c, r in zip(self.adapters, counts, routings):
            a.add_usage(c, float(r))

    def encode(self, batch: dict, noise: list | None = None, count_usage: bool = True,
               present: dict[str, Tensor] | None = None) -> tuple[dict[str, Tensor], list]:
        """Run the frozen blocks with adapters; returns each modality's last-block tokens
        averaged over its valid tokens (B, D) and each block's Routing. The last adapter
        returns that average directly (CrossModalityAdapter pool=True). ``noise`` (per block,
        these rows' gate noise), ``count_usage`` and ``present`` (the modality masks) go to the
        adapters (see forward). A batch of served pooled features (``frozen_features``) is
        returned as it is. A masked modality's rows are computed like any (each row on its
        own) and never read."""
        if any("pooled" in batch[m] for m in self.modalities):
            if not self.frozen_features:
                raise ValueError("this batch holds cached pooled features, but the model has cross-modality "
                                 "adapters or prompts, which need the encoders' tokens")
            return {m: batch[m]["pooled"].float() for m in self.modalities}, []
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
                        tokens[m], masks[m] = self.encoders[m].run_block(b, tokens[m], masks[m],
                                                                        self.length_chunks)
                    else:
                        tokens[m], masks[m], carried[m] = inject(self.encoders[m], b, p, tokens[m], masks[m],
                                                                 carried[m], persist)
            if self.adapters:
                if any(carried.values()):
                    raise ValueError("persistent prompts and cross-modality adapters cannot be combined")
                last = b == self.num_blocks - 1
                tokens, r = self.adapters[b](tokens, masks, pool=last, noise=None if noise is None else noise[b],
                                             count_usage=count_usage, present=present)
                routing.append(r)
                if last:
                    return tokens, routing
        pooled = {}
        for m in self.modalities:
            pooled[m] = masked_mean(*strip(tokens[m], masks[m], carried[m]))
        return pooled, routing

    def forward(self, batch: dict, noise: list | None = None, count_usage: bool = True) -> Output:
        """Logits and representations of a batch. Rows are run in up to ``model.length_chunks``
        groups of similar length (exact: every sample is computed on its own; see
        length_chunks), with the gate noise drawn once for the whole batch.

        ``noise``: the gate noise of this batch's rows (``noise_rows`` of a
        ``draw_routing_noise`` of the whole data-parallel batch); None draws it here.
        ``count_usage=False``: the adapters do not add this call's expert-usage counts (in
        ``Output.usage`` / ``Output.routings``); the caller adds them with ``add_usage``.

        A batch's modality masks (``batch[m]["present"]``) reach the adapters (context tokens,
        gate inputs, routing), the projections and the fusion (``fuse``): a masked modality's
        content changes no output. A row with no modality at all is an error naming it."""
        rows = batch_rows(batch, self.modalities)
        present = presence(batch, self.modalities)
        device = next(self.parameters()).device
        if self.adapters and noise is None:
            noise = self.draw_routing_noise(rows)
        parts = (length_chunks(batch, self.modalities, self.length_chunks)
                 if self.prompter is None else None)  # prompters keep per-call state: one call
        if parts is None:
            out = self._forward_rows(batch, noise, count_usage)
            out.present = present
            return out
        outs, order = [], []
        for idx, sub in parts:
            outs.append(self._forward_rows(sub, noise_rows(noise, idx), count_usage))
            order.append(idx)
        inv = torch.argsort(torch.cat(order).to(device))
        logits = torch.cat([o.logits for o in outs])[inv]
        z_mod = {m: torch.cat([o.z_mod[m] for o in outs])[inv] for m in self.modalities}
        z_joint = torch.cat([o.z_joint for o in outs])[inv]
        if not self.adapters:
            return Output(logits, z_mod, z_joint, present=present)
        stats = torch.stack([o.stats for o in outs]).sum(0)
        usage = [sum(o.usage[b] for o in outs) for b in range(len(self.adapters))]
        routings = [sum(o.routings[b] for o in outs) for b in range(len(self.adapters))]
        scales = [torch.stack([o.scales[b] for o in outs]).mean(0) for b in range(len(self.adapters))] \
            if all(o.scales for o in outs) else []
        return Output(logits, z_mod, z_joint, balance_from_stats(stats), usage, routings, stats, scales, present)

    def fuse(self, z_mod: dict[str, Tensor], present: dict[str, Tensor] | None, index: Tensor | None = None
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """-> (z_joint, z_mod with a masked modality's rows NaN). z_joint = F([z_1; ...; z_K]); with
        modality masks (model.missing_fusion=present_mean), a masked modality's slot holds the
        mean of the row's present z_k, so z_joint is a function of the present modalities only
        (and F's weights are the ones complete rows train). ``index``: the rows' sample indices,
        for the error on a row without any modality."""
        mods = self.modalities
        if present is None:
            return self.fusion(torch.cat([z_mod[m] for m in mods], dim=-1)), z_mod
        n = torch.stack([present[m] for m in mods]).sum(0)
        if bool((n == 0).any()):
            bad = torch.nonzero(n == 0).flatten()
            names = (index.cpu()[bad.cpu()] if index is not None else bad).tolist()
            raise ValueError(f"sample(s) {', '.join(str(i) for i in names[:10])} have no modality: every one of "
                             f"{', '.join(mods)} is masked; a sample needs at least one")
        keep = {m: present[m][:, None] for m in mods}
        total = sum(torch.where(keep[m], z_mod[m], torch.zeros_like(z_mod[m])) for m in mods)
        mean = total / n[:, None].to(total.dtype)
        z_joint = self.fusion(torch.cat([torch.where(keep[m], z_mod[m], mean) for m in mods], dim=-1))
        return z_joint, {m: torch.where(keep[m], z_mod[m], torch.full_like(z_mod[m], float("nan"))) for m in mods}

    def _forward_rows(self, batch: dict, noise: list | None, count_usage: bool) -> Output:
        present = presence(batch, self.modalities)
        pooled, routing = self.encode(batch, noise, count_usage, present)
        balance = 0.0
        for r in routing:
            balance = balance + r.balance
        z_mod = {m: self.proj[m](pooled[m]) for m in self.modalities}
        z_joint, z_mod = self.fuse(z_mod, present, batch.get("index"))
        return Output(self.classifier(z_joint), z_mod, z_joint, balance, [r.counts for r in routing],
                      [r.routings for r in routing], torch.stack([r.stats for r in routing]) if routing else None,
                      [r.scales for r in routing] if routing and routing[0].scales is not None else [], present)


def mute_noise(noise: list | None, start: int) -> list | None:
    """The pre-drawn gate noise with rows ``start:`` set to zero (those rows route noise-free)."""
    if noise is None:
        return None
    return [None if n is None else {m: torch.cat([v[:start], torch.zeros_like(v[start:])]) for m, v in n.items()}
            for n in noise]


def noise_rows(noise: list | None, rows) -> list | None:
    """The rows ``rows`` (slice or index tensor) of pre-drawn gate noise (MMModel.draw_routing_noise)."""
    if noise is None:
        return None
    return [None if n is None else {m: v[rows] for m, v in n.items()} for n in noise]


def batch_rows(batch: dict, modalities) -> int:
    return next(iter(batch[modalities[0]].values())).shape[0]


def length_chunks(batch: dict, modalities, k: int) -> list[tuple[Tensor, dict]] | None:
    """Split a batch into up to ``k`` groups of rows of similar length, each trimmed to its own
    longest sample, so padding is not computed: -> [(row indices, sub-batch)], or None when
    nothing would be saved (k <= 1, no padded token sequence, or one row).

    Rows are sorted by the valid length of the modality with the most padded token positions
    (tuxpaint: speech, 44 % of its positions are real in a random batch) and cut where the
    padded work is least (length_groups); every masked modality of a group is then trimmed to
    the group's longest sample. Exact whenever each sample's result does not depend on the other rows or
    on padding (frozen encoders in eval mode with masks, per-sample routing): the adapters'
    batch statistics are sums over rows, added up by the caller."""
    if k <= 1:
        return None
    padded = {}
    for m in modalities:
        x = batch[m]
        if "tokens" in x and x.get("mask") is not None:
            padded[m] = x["mask"].numel() - int(x["mask"].sum())
    rows = batch_rows(batch, modalities)
    if rows < 2 or not padded or max(padded.values()) == 0:
        return None
    _, groups = length_groups(batch[max(padded, key=padded.get)]["mask"], k)
    if len(groups) == 1:
        return None
    out = []
    for idx in groups:
        sub = {}
        for name, item in batch.items():
            if name in modalities:
                sub[name] = {kk: (v.index_select(0, idx) if isinstance(v, Tensor) else v) for kk, v in item.items()}
                mask = sub[name].get("mask") if "tokens" in sub[name] else None
                if mask is not None:
                    n = max(int(valid_lengths(mask).max()), 1)
                    sub[name]["tokens"], sub[name]["mask"] = sub[name]["tokens"][:, :n], mask[:, :n]
            elif isinstance(item, Tensor) and item.dim() and item.shape[0] == rows:
                sub[name] = item.index_select(0, idx)
            else:
                sub[name] = item
        out.append((idx, sub))
    return out

