"""Cross-modality adapter: a mixture of experts after every frozen encoder block.

For modality k at block b (docs/method.md; specified in METHOD.md section 2):
  x_k = down_k(h_k)                                   per-modality projection to width d
  c_k = [pool(down_j(h_j)) for j != k]                 the other modalities' tokens (context)
  g_k = top-k(softmax(W_g^k [mean(x_k); mean_j mean(x_j)] + noise))   per sample
  h_k <- h_k + up_k( sum_{chosen e} g_k^e expert_e(x_k, c_k) )        up_k starts at zero

Experts are shared by the modalities of a block; projections and gates are per modality.
A masked modality (``present``) takes no part: j ranges over the present modalities only, and
a masked (sample, k) is not routed.
Only the chosen experts are computed: the (sample, slot) pairs are grouped by expert and each
chosen expert runs once over its samples (one matrix product per weight; no dense mask, no
per-sample copy of expert weights).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcl.encoders.base import masked_mean
from mmcl.losses import load_balance


def pool_tokens(x: Tensor, mask: Tensor | None, max_tokens: int) -> tuple[Tensor, Tensor | None]:
    """Mean-pool the valid tokens of each sample into at most ``max_tokens`` contiguous
    segments. Returns (B, S, D) and a (B, S) mask of non-empty segments (None if all are)."""
    B, N, _ = x.shape
    if N <= max_tokens:
        return x, mask
    S = max_tokens
    pos = torch.arange(N, device=x.device)
    if mask is None:
        seg = (pos * S) // N                                   # (N,)
        assign = F.one_hot(seg, S).t().to(x.dtype)             # (S, N)
        assign = assign / assign.sum(1, keepdim=True)
        return assign @ x, None
    length = mask.sum(1).clamp_min(1)                          # (B,)
    seg = (pos[None, :] * S) // length[:, None]                # (B, N), valid tokens only
    seg = torch.where(mask, seg, torch.full_like(seg, S))      # padding -> a dropped bucket
    assign = F.one_hot(seg, S + 1)[..., :S].transpose(1, 2).to(x.dtype)  # (B, S, N)
    counts = assign.sum(2, keepdim=True)
    pooled = (assign @ x) / counts.clamp_min(1)
    return pooled, counts.squeeze(-1) > 0


@dataclass
class Routing:
    """What one adapter call routed, for the balance loss and expert-usage counting."""
    balance: Tensor          # cv^2(importance) + cv^2(load), summed over modalities
    counts: Tensor           # (E,) how often each expert was chosen
    routings: int            # routed (sample, modality) pairs
    stats: Tensor | None = None  # (modalities, 2, E): importance and load sums (differentiable)
    scales: Tensor | None = None  # (2,) eval only: mean std of the clean gate logits, mean noise std


def balance_from_stats(stats: Tensor) -> Tensor | float:
    """Sum over modalities of cv^2(importance) + cv^2(load), from ``Routing.stats``-shaped
    (..., 2, E) sums (a sharded step sums them over ranks first)."""
    balance = 0.0
    for pair in stats.reshape(-1, 2, stats.shape[-1]):
        balance = balance + load_balance(pair[0], pair[1])
    return balance


class CrossModalityAdapter(nn.Module):
    def __init__(self, widths: dict[str, int], num_experts: int = 10, top_k: int = 2, dim: int = 128,
                 expert: str = "cross_attention", context_tokens: int = 32, noisy_gating: bool = True,
                 dense: bool = False, gate_init_std: float = 0.0, noise_scale: float = 1.0,
                 freeze_scope: str = "expert"):
        super().__init__()
        self.modalities = list(widths)
        self.num_experts, self.top_k, self.dim = num_experts, top_k, dim
        self.expert_kind, self.context_tokens = expert, context_tokens
        self.noisy_gating, self.dense, self.noise_scale = noisy_gating, dense, float(noise_scale)
        self.freeze_scope = freeze_scope
        # freeze_scope=expert_gate: (frozen expert ids, {modality: (clean rows, noise rows)})
        self._frozen_gate_rows: tuple[Tensor, dict[str, tuple[Tensor, Tensor]]] | None = None
        self.down = nn.ModuleDict({m: nn.Linear(w, dim) for m, w in widths.items()})
        self.up = nn.ModuleDict({m: nn.Linear(dim, w) for m, w in widths.items()})
        for lin in self.up.values():  # identity at initialisation
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        # Noisy top-k gating (Shazeer et al., 2017): zero-initialised clean and noise weights.
        self.gate = nn.ModuleDict({m: nn.Linear(2 * dim, num_experts, bias=False) for m in widths})
        self.gate_noise = nn.ModuleDict({m: nn.Linear(2 * dim, num_experts, bias=False) for m in widths})
        for m in widths:
            if gate_init_std > 0:  # (drawn from the global RNG, seeded by run.seed)
                nn.init.normal_(self.gate[m].weight, std=gate_init_std)
            else:
                nn.init.zeros_(self.gate[m].weight)
            nn.init.zeros_(self.gate_noise[m].weight)
        # Expert e owns one slice of each parameter list: separate Parameters so that freezing
        # an expert is requires_grad=False on exactly its tensors.
        names = ("q", "k", "v") if expert == "cross_attention" else ("c", "t")
        self.expert_param_names = names
        self.experts = nn.ModuleList()
        for _ in range(num_experts):
            e = nn.Module()
            for n in names:
                shape = (2 * dim, dim) if n == "c" else (dim, dim)
                p = nn.Parameter(torch.empty(shape))
                nn.init.normal_(p, std=1.0 / math.sqrt(shape[0]))
                e.register_parameter(n, p)
            self.experts.append(e)
        # Usage counted over a task's training routings; the frozen set survives checkpoints.
        self.register_buffer("usage_count", torch.zeros(num_experts, dtype=torch.float64))
        self.register_buffer("routing_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("frozen", torch.zeros(num_experts, dtype=torch.bool))

    # -- freezing -------------------------------------------------------------------------------
    def add_usage(self, counts: Tensor, routings: float) -> None:
        self.usage_count += counts.to(self.usage_count)
        self.routing_count += routings

    def reset_usage(self) -> None:
        self.usage_count.zero_()
        self.routing_count.zero_()

    def usage_share(self) -> Tensor:
        """f_e = count_e / (top_k * routings): shares that sum to 1 over experts."""
        # Dense routing counts gate weight mass (each routing sums to 1) instead of choices.
        slots = self.routing_count * (1 if self.dense else self.top_k)
        return (self.usage_count / slots.clamp_min(1)).float()

    def freeze_experts(self, ids) -> None:
        for e in ids:
            self.frozen[int(e)] = True
        self.apply_frozen()

    def apply_frozen(self) -> None:
        for e, expert in enumerate(self.experts):
            for p in expert.parameters():
                p.requires_grad_(not bool(self.frozen[e]))
        # expert_gate: the frozen experts' gate rows (clean and noise, every modality) as they are
        # now; restore_frozen_gates puts them back after every optimiser step. The gate matrices
        # stay one Parameter each (their other rows train), so requires_grad cannot do this, and
        # AdamW's weight decay would move a row whose gradient is masked.
        rows = torch.nonzero(self.frozen).flatten()
        self._frozen_gate_rows = None if self.freeze_scope != "expert_gate" or not len(rows) else (rows, {
            m: (self.gate[m].weight.detach()[rows].clone(), self.gate_noise[m].weight.detach()[rows].clone())
            for m in self.modalities})

    @torch.no_grad()
    def restore_frozen_gates(self) -> None:
        if self._frozen_gate_rows is None:
            return
        rows, saved = self._frozen_gate_rows  # (ids taken with the rows: no lookup per step)
        for m, (clean, noise) in saved.items():
            self.gate[m].weight[rows] = clean
            self.gate_noise[m].weight[rows] = noise

    # -- routing --------------------------------------------------------------------------------
    @property
    def draws_noise(self) -> bool:
        return self.noisy_gating and self.training and not self.dense and self.noise_scale > 0

    def draw_noise(self, rows: int, device) -> dict[str, Tensor]:
        """Standard normal gate noise, (rows, E) per modality, in the order forward uses it."""
        return {m: torch.randn(rows, self.num_experts, device=device, dtype=torch.float32) for m in self.modalities}

    @torch.no_grad()
    def gate_scales(self, m: str, gate_in: Tensor) -> Tensor:
        """(2,): the clean gate logits' std over experts and the learned noise std, each averaged
        over the rows (noise std 0 without noisy gating): which of the two decides the top k."""
        logits = self.gate[m](gate_in).float()
        clean = logits.std(-1).mean() if logits.shape[-1] > 1 else logits.new_zeros(())
        if self.noisy_gating and not self.dense:
            noise = self.noise_scale * (F.softplus(self.gate_noise[m](gate_in).float()) + 1e-2).mean()
        else:
            noise = logits.new_zeros(())
        return torch.stack([clean, noise])

    def _route(self, m: str, gate_in: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> (chosen expert ids (B, k), their weights (B, k), importance (E,), load (E,)).
        ``noise``: pre-drawn (B, E) standard normal gate noise (drawn here when None)."""
        logits = self.gate[m](gate_in)
        E, k = self.num_experts, self.top_k
        if self.dense:
            w = logits.softmax(-1)
            idx = torch.arange(E, device=logits.device).expand(logits.shape[0], E)
            importance = w.sum(0)
            return idx, w, importance, importance
        noisy = self.draws_noise
        if noisy:
            noise_std = self.noise_scale * (F.softplus(self.gate_noise[m](gate_in)) + 1e-2)
            if noise is None:
                noise = torch.randn(logits.shape[0], E, device=logits.device, dtype=torch.float32)
            noisy_logits = logits + noise.to(logits.dtype) * noise_std
        else:
            noisy_logits = logits
        top_val, top_idx = noisy_logits.topk(min(k + 1, E), dim=-1)
        idx, val = top_idx[:, :k], top_val[:, :k]
        w = val.softmax(-1)  # renormalised over the chosen experts
        gates = torch.zeros_like(logits).scatter(1, idx, w)
        importance = gates.sum(0)
        if noisy and k < E:
            # Smooth load: P(expert e stays in the top k under fresh noise), differentiable.
            thr_in = top_val[:, k:k + 1]      # the (k+1)-th value: threshold for those inside
            thr_out = top_val[:, k - 1:k]     # the k-th value: threshold for those outside
            normal = torch.distributions.Normal(0.0, 1.0)
            inside = noisy_logits > thr_in
            p_in = normal.cdf((logits - thr_in) / noise_std)
            p_out = normal.cdf((logits - thr_out) / noise_std)
            load = torch.where(inside, p_in, p_out).sum(0)
        else:
            load = (gates > 0).float().sum(0)
        return idx, w, importance, load

    # -- experts --------------------------------------------------------------------------------
    def _run_experts(self, x: Tensor, ctx: Tensor, ctx_mask: Tensor | None, idx: Tensor, w: Tensor,
                     pool_w: Tensor | None = None, qk: Tensor | None = None, x_mask: Tensor | None = None) -> Tensor:
        """Sparse dispatch: x (B,N,d), ctx (B,M,d), idx/w (B,k) -> sum_k w * expert_idx(x) (B,N,d),
        or with ``pool_w`` (B,N) token weights its weighted sum over tokens (B,d). ``qk``: the
        experts' W_q W_k^T / sqrt(d), (E,d,d) (qk_products; computed here when not given).

        The (sample, slot) pairs are grouped by expert; each chosen expert runs once on all of
        its samples (one matrix product per weight over n_e x N rows), experts nobody chose
        are not computed, and the results are scattered back to their (sample, slot)."""
        B, N, d = x.shape
        k = idx.shape[1]
        if qk is None:
            qk = self.qk_products()
        flat = idx.reshape(-1)                                   # (B*k,) chosen expert per slot
        order = torch.argsort(flat, stable=True)
        sample = torch.div(order, k, rounding_mode="floor")      # sample of each sorted slot
        sizes = torch.bincount(flat, minlength=self.num_experts).tolist()
        parts, start = [], 0
        for e, n in enumerate(sizes):
            if n == 0:
                continue
            rows = sample[start:start + n]
            start += n
            parts.append(self._expert(e, x.index_select(0, rows), ctx.index_select(0, rows),
                                      None if ctx_mask is None else ctx_mask.index_select(0, rows),
                                      None if qk is None else qk[e],
                                      None if pool_w is None else pool_w.index_select(0, rows),
                                      None if x_mask is None else x_mask.index_select(0, rows)))
        sorted_out = torch.cat(parts) if len(parts) > 1 else parts[0]
        out = torch.empty_like(sorted_out).index_copy_(0, order, sorted_out)   # back to (sample, slot)
        out = out * w.reshape(-1, *([1] * (out.dim() - 1))).to(out.dtype)
        return out.view(B, k, *out.shape[1:]).sum(1)

    def qk_products(self) -> Tensor | None:
        """W_q W_k^T / sqrt(d) of every expert (E, d, d) in one product, shared by the modalities
        of a forward call (cross-attention experts only)."""
        if self.expert_kind != "cross_attention":
            return None
        return torch.bmm(torch.stack([ex.q for ex in self.experts]),
                         torch.stack([ex.k for ex in self.experts]).transpose(1, 2)) / math.sqrt(self.dim)

    def _expert(self, e: int, x: Tensor, ctx: Tensor, ctx_mask: Tensor | None, qk: Tensor | None = None,
                pool_w: Tensor | None = None, x_mask: Tensor | None = None) -> Tensor:
        """Expert e on its samples: x (n,N,d), ctx (n,M,d) -> (n,N,d), or with ``pool_w`` (n,N)
        the token-weighted sum of that output (n,d), computed without the per-token output
        (the attention map is pooled before it meets the values). ``qk``: this expert's
        W_q W_k^T / sqrt(d) (a row of qk_products; cross-attention experts only)."""
        ex, d = self.experts[e], x.shape[-1]
        if self.expert_kind == "cross_attention":
            # softmax((x Wq)(ctx Wk)^T / sqrt d) (ctx Wv), with A = Wq Wk^T / sqrt d multiplied
            # first and each product ordered by the smaller of N (tokens) and M (context):
            # logits = x (ctx A^T)^T or (x A) ctx^T, output = att (ctx Wv) or (att ctx) Wv,
            # min(N, M) d^2 + N M d multiply-adds each instead of (N + 2M) d^2 + 2 N M d in all.
            small_n = x.shape[1] < ctx.shape[1]
            att = torch.bmm(x @ qk, ctx.transpose(1, 2)) if small_n else torch.bmm(x, (ctx @ qk.t()).transpose(1, 2))
            if ctx_mask is not None:
                att = att.masked_fill(~ctx_mask[:, None, :], float("-inf"))
            att = att.softmax(-1)                                            # (n, N, M)
            if pool_w is not None:                                           # (n, 1, M) @ ctx Wv
                return (torch.bmm(pool_w[:, None, :].to(att.dtype), att) @ ctx).squeeze(1) @ ex.v
            return torch.bmm(att, ctx) @ ex.v if small_n else torch.bmm(att, ctx @ ex.v)
        # channel_token_map (DG-SCT style): sigmoid channel map x sigmoid token map
        cpool = masked_mean(ctx, ctx_mask)                                   # (n, d)
        # the channel map sees the mean of the real tokens only (padding must not change it)
        chan = torch.sigmoid(torch.cat([masked_mean(x, x_mask), cpool], -1) @ ex.c)  # (n, d)
        tok = torch.sigmoid(torch.bmm(x @ ex.t, cpool[:, :, None]) / math.sqrt(d))  # (n, N, 1)
        if pool_w is not None:
            return chan * torch.bmm((pool_w[:, :, None].to(tok.dtype) * tok).transpose(1, 2), x).squeeze(1)
        return chan[:, None, :] * tok * x

    def forward(self, tokens: dict[str, Tensor], masks: dict[str, Tensor | None], pool: bool = False,
                noise: dict[str, Tensor] | None = None, count_usage: bool = True,
                present: dict[str, Tensor] | None = None) -> tuple[dict[str, Tensor], Routing]:
        """-> (new tokens per modality (B,N,D), routing). ``pool=True`` (the last block, whose
        tokens are only ever averaged) returns the mean of the new tokens over valid tokens
        (B,D) instead, computed as mean(tokens) + up(mean(mixed)): the up projection and the
        experts' value products then run once per sample, not once per token.

        ``noise``: the gate noise of these rows per modality (draw_noise, drawn once for the
        whole batch by MMModel and sliced, so neither data-parallel sharding nor length-sorted
        chunking changes any sample's noise); None draws it here. ``count_usage=False`` leaves
        adding the expert-usage counts (``Routing.counts``) to the caller (a data-parallel step
        adds them once summed over ranks).

        ``present``: {modality: bool (B,)} modality masks (None: every row has every modality).
        A masked (row, modality) is not routed (no usage count, no gate statistics) and its
        output is its input, never read; it is no other modality's context and no part of any
        gate input. A row whose other modalities are all masked takes its own tokens as context,
        as a one-modality model does (docs/method.md, "Missing modalities")."""
        down = {m: self.down[m](tokens[m]) for m in self.modalities}
        pooled = {m: masked_mean(down[m], masks.get(m)) for m in self.modalities}
        ctx_tokens = {m: pool_tokens(down[m], masks.get(m), self.context_tokens) for m in self.modalities}
        out, balance, stats, scales = {}, 0.0, [], []
        qk = self.qk_products()
        counts = torch.zeros(self.num_experts, device=next(iter(down.values())).device)
        routings = 0
        for m in self.modalities:
            gate_in, ctx, cmask = gate_and_context(m, self.modalities, pooled, ctx_tokens, present)
            rows = None if present is None or bool(present[m].all()) else torch.nonzero(present[m]).flatten()
            mask = masks.get(m)
            if rows is not None and rows.numel() == 0:  # m is masked in every row: nothing to route
                out[m] = masked_mean(tokens[m], mask) if pool else tokens[m]
                stats.append(gate_in.new_zeros(2, self.num_experts))
                continue

            def sel(t, rows=rows):
                return t if rows is None or t is None else t.index_select(0, rows)

            g_in = sel(gate_in)
            idx, w, importance, load = self._route(m, g_in, None if noise is None else sel(noise[m]))
            if not self.training:
                scales.append(self.gate_scales(m, g_in))
            stats.append(torch.stack([importance, load.to(importance.dtype)]))
            bal = load_balance(importance, load)
            if pool:
                if mask is None:
                    mask = torch.ones(down[m].shape[:2], dtype=torch.bool, device=down[m].device)
                n_valid = mask.sum(1, keepdim=True)
                pool_w = mask.to(down[m].dtype) / n_valid.clamp_min(1)
                has_tokens = (n_valid > 0).to(down[m].dtype)  # an empty sample's mean is 0
                mean_tokens = masked_mean(tokens[m], mask)
                mixed = scatter_rows(self._run_experts(sel(down[m]), sel(ctx), sel(cmask), idx, w, sel(pool_w), qk,
                                                       sel(masks.get(m))), rows, len(gate_in))  # (B, d)
                up = self.up[m]
                out[m] = mean_tokens + F.linear(mixed, up.weight) + up.bias * has_tokens
            else:
                mixed = scatter_rows(self._run_experts(sel(down[m]), sel(ctx), sel(cmask), idx, w, qk=qk,
                                                       x_mask=sel(mask)), rows, len(gate_in))
                out[m] = tokens[m] + self.up[m](mixed)
            balance = balance + bal
            if self.dense:
                counts += w.detach().sum(0).to(counts.dtype)
            else:
                counts += torch.bincount(idx.reshape(-1), minlength=self.num_experts).to(counts.dtype)
            routings += idx.shape[0]
        if self.training and count_usage:
            self.add_usage(counts.double(), routings)
        stats = [s.float() for s in stats] if len({s.dtype for s in stats}) > 1 else stats
        return out, Routing(balance=balance, counts=counts, routings=routings, stats=torch.stack(stats),
                            scales=torch.stack(scales).mean(0) if scales else None)


def scatter_rows(x: Tensor, rows: Tensor | None, n: int) -> Tensor:
    """The rows ``rows`` of an n-row tensor given as x (the others zero: masked rows, never read)."""
    if rows is None:
        return x
    return x.new_zeros((n, *x.shape[1:])).index_copy(0, rows, x)


def gate_and_context(m: str, modalities: list[str], pooled: dict[str, Tensor],
                     ctx_tokens: dict[str, tuple[Tensor, Tensor | None]], present: dict[str, Tensor] | None
                     ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Modality m's gate input [pool(x_m); mean over the other present modalities j of pool(x_j)]
    (B, 2d), its context (the other modalities' pooled tokens, (B, M, d)) and the context mask
    (B, M) (None: every context token is real). With one modality, its own tokens are the
    context; with ``present``, a masked modality is left out of both, and a row whose others
    are all masked takes its own pooled features and tokens instead."""
    others = [j for j in modalities if j != m] or [m]
    if present is None:
        other_pool = torch.stack([pooled[j] for j in others]).mean(0)
        ctx = torch.cat([ctx_tokens[j][0] for j in others], 1)
        cmasks = [ctx_tokens[j][1] for j in others]
        if all(c is None for c in cmasks):
            return torch.cat([pooled[m], other_pool], -1), ctx, None
        cmask = torch.cat([c if c is not None else _all_real(ctx_tokens[j][0]) for c, j in zip(cmasks, others)], 1)
        return torch.cat([pooled[m], other_pool], -1), ctx, cmask
    n_other = torch.stack([present[j] for j in others]).sum(0)                  # (B,)
    total = sum(torch.where(present[j][:, None], pooled[j], torch.zeros_like(pooled[j])) for j in others)
    lonely = n_other == 0
    other_pool = torch.where(lonely[:, None], pooled[m], total / n_other.clamp_min(1)[:, None].to(total.dtype))
    parts = [(ctx_tokens[j], present[j]) for j in others]
    if others != [m] and bool(lonely.any()):
        parts.append((ctx_tokens[m], lonely))  # own tokens, real only where no other modality is present
    ctx = torch.cat([t for (t, _), _ in parts], 1)
    cmask = torch.cat([(c if c is not None else _all_real(t)) & p[:, None] for (t, c), p in parts], 1)
    return torch.cat([pooled[m], other_pool], -1), ctx, cmask


def _all_real(t: Tensor) -> Tensor:
    return torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
