"""Data-parallel forwards: a batch's rows shared among the ranks of a run (mmcl.distributed).

    forward_batch(model, dist, idx, fetch, targets, device)
        the training forward of samples ``idx`` -> (Output of every row, targets of every row)
    infer(model, dist, idx, fetch, batch_size, device)
        eval-mode (logits, z_joint) of every row, on the CPU
    infer_rows(model, idx, fetch, batch_size)
        the same in this process only (chunked, no collective)

In one process they run the model on the whole batch. Under torchrun each rank runs its own
contiguous slice of the rows (``shard_bounds``) and every rank ends with what one process
would have computed on the whole batch, so a method's loss code is the same in one process
and in many:

- logits, z_mod and z_joint of every rank are gathered (``Dist.gather_rows``; the backward
  pass sends each rank the gradient of its own rows);
- the gate statistics are summed over ranks (``Dist.sum_across``) before the load-balance
  term is computed from them, since cv^2 is not a sum over rows;
- the expert-usage counts are summed over ranks (``Dist.all_sum_``) and then added to the
  adapters (``MMModel.add_usage``), so every rank freezes the same experts;
- the routing noise is drawn for the whole batch on every rank (``MMModel.draw_routing_noise``,
  identical RNG states) and each rank routes its rows with its slice of it; a rank with no
  rows in a step (fewer rows than ranks) still draws it, to stay in step.

Every collective is a method of ``Dist``; this module only decides what is gathered or summed.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mmcl.data.batches import keep_modalities, presence
from mmcl.distributed import Dist, shard_bounds, shard_sizes
from mmcl.model.adapter import balance_from_stats
from mmcl.model.mmencoder import MMModel, Output, mute_noise, noise_rows


def forward_batch(model: MMModel, dist: Dist, idx: Tensor, fetch: Callable[[Tensor], dict],
                  targets: Callable[[Tensor], Tensor], device: torch.device,
                  noise_free_from: int | None = None, keep: Tensor | None = None) -> tuple[Output, Tensor]:
    """Training forward over the samples ``idx`` -> (outputs of every row, targets).
    ``fetch(idx)``: the batch of those samples on ``device``, with its "target";
    ``targets(idx)``: their targets only. In a data-parallel run each rank computes its slice
    of the rows and the outputs, the gate statistics and the expert-usage counts of the whole
    batch are combined across ranks (see the module docstring). ``noise_free_from``: rows from
    this position on are routed without gate noise (the noise is still drawn for every row, so
    the RNG advances as it would otherwise). ``keep``: (rows, modalities) bool, False masks
    that row's modality (modality dropout, drawn for the whole batch by the caller)."""
    if not dist.enabled:
        batch = fetch(idx)
        if keep is not None:
            keep_modalities(batch, model.modalities, keep)
        if noise_free_from is None:
            return model(batch), batch["target"]
        noise = mute_noise(model.draw_routing_noise(len(idx)), noise_free_from)
        return model(batch, noise=noise), batch["target"]
    n = len(idx)
    sizes = shard_sizes(n, dist.world_size)
    start, end = shard_bounds(n, dist.world_size, dist.rank)
    if end > start:
        batch = fetch(idx[start:end])
        if keep is not None:
            keep_modalities(batch, model.modalities, keep[start:end])
        noise = model.draw_routing_noise(n)
        if noise_free_from is not None:
            noise = mute_noise(noise, noise_free_from)
        noise = noise_rows(noise, slice(start, end))
        out = model(batch, noise=noise, count_usage=False)
    else:  # fewer rows than ranks: nothing to run, but keep the RNG in step
        out = None
        model.draw_routing_noise(n)
    mods, C, dz = model.modalities, model.classifier.num_classes, model.classifier.dim
    K = len(mods)
    if out is not None:
        has = torch.stack([out.present[m] if out.present is not None else
                           torch.ones(len(out.logits), dtype=torch.bool, device=device) for m in mods], 1)
        local = torch.cat([out.logits.float()] + [out.z_mod[m].float() for m in mods] + [out.z_joint.float(),
                                                                                            has.float()], 1)
    else:
        local = torch.zeros(0, C + (K + 1) * dz + K, device=device)
    full = dist.gather_rows(local, sizes)
    z_mod = {m: full[:, C + i * dz:C + (i + 1) * dz] for i, m in enumerate(mods)}
    present = presence({m: {"present": full[:, C + (K + 1) * dz + i] > 0.5} for i, m in enumerate(mods)}, mods)
    balance, usage = 0.0, []
    if model.adapters:
        shape = model.routing_stats_shape()
        stats = out.stats.float() if out is not None else torch.zeros(shape, device=device)
        balance = balance_from_stats(dist.sum_across(stats))
        E = shape[-1]
        counts = torch.zeros(shape[0], E + 1, dtype=torch.float64, device=device)
        if out is not None:
            counts[:, :E] = torch.stack(out.usage).double()
            counts[:, E] = torch.tensor(out.routings, dtype=torch.float64)
        dist.all_sum_(counts)
        if model.training:
            model.add_usage(counts[:, :E], counts[:, E].tolist())
        usage = list(counts[:, :E])
    output = Output(full[:, :C], z_mod, full[:, C + K * dz:C + (K + 1) * dz], balance, usage, present=present)
    return output, targets(idx)


@torch.no_grad()
def infer(model: MMModel, dist: Dist, idx: Tensor, fetch: Callable[[Tensor], dict], batch_size: int,
          device: torch.device) -> tuple[Tensor, Tensor]:
    """Eval-mode logits and joint representations of the samples ``idx`` (in chunks of
    ``batch_size``), on the CPU. In a data-parallel run each rank infers its share and every
    rank gets all rows."""
    if not dist.enabled:
        return infer_rows(model, idx, fetch, batch_size)
    sizes = shard_sizes(len(idx), dist.world_size)
    start, end = shard_bounds(len(idx), dist.world_size, dist.rank)
    logits, z = infer_rows(model, idx[start:end], fetch, batch_size)
    both = dist.gather_rows_nograd(torch.cat([logits, z], 1).to(device), sizes).cpu()
    return both[:, :logits.shape[1]], both[:, logits.shape[1]:]


@torch.no_grad()
def infer_rows(model: MMModel, idx: Tensor, fetch: Callable[[Tensor], dict], batch_size: int
               ) -> tuple[Tensor, Tensor]:
    """``infer`` in this process only: every row of ``idx`` here, the model's mode restored."""
    was = model.training
    model.eval()
    logits, zs = [], []
    for s in range(0, len(idx), batch_size):
        out = model(fetch(idx[s:s + batch_size]))
        logits.append(out.logits.float().cpu())
        zs.append(out.z_joint.float().cpu())
    model.train(was)
    if not logits:
        return torch.zeros(0, model.classifier.num_classes), torch.zeros(0, model.classifier.dim)
    return torch.cat(logits), torch.cat(zs)
