"""Test-time evaluation: the accuracy on a set of samples, optionally with modalities masked, and
the modality-robustness table of a finished run.

``accuracy(method, dist, idx, ...)`` fetches the samples in batches through the method
(``Method.fetch``), masks the modalities ``absent`` in every row (``data.batches.drop_modalities``:
the same explicit mask a sample missing a modality carries) and scores ``Method.predict``; each
rank of a data-parallel run scores its share. Nothing here knows a method: every method
predicts from the present modalities only (the model's masks, or its own features' masks).

``modality_robustness`` is what the engine writes to results.json after the last task
(eval.modality_robustness), on the test samples of every task::

    {"samples": n, "accuracy": all modalities as the samples have them,
     "without": {m: {"accuracy", "samples"}},   m masked in every sample
     "alone":   {m: {"accuracy", "samples"}}}   every modality but m masked

A condition counts only the samples left with a modality under it: "without m" leaves out
the samples that have m alone, "alone m" those that miss m ("samples" says how many count;
the accuracy is None when none does).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mmcl.data.batches import drop_modalities
from mmcl.distributed import shard_bounds


@torch.no_grad()
def accuracy(method, dist, idx: Tensor, batch_size: int, autocast: Callable = contextlib.nullcontext,
             absent: Sequence[str] = ()) -> float:
    """Accuracy of ``method`` on samples idx with the modalities ``absent`` masked in every row."""
    if len(idx) == 0:
        return float("nan")
    method.model.eval()
    start, end = shard_bounds(len(idx), dist.world_size, dist.rank)
    correct = torch.zeros(1, dtype=torch.long, device=method.device)
    mine = idx[start:end]
    for s in range(0, len(mine), batch_size):
        batch = drop_modalities(method.fetch(mine[s:s + batch_size]), absent)
        with autocast():
            logits = method.predict(batch)
        correct += (logits.argmax(1) == batch["target"]).sum()
    return int(dist.all_sum_(correct).item()) / len(idx)


def modality_robustness(score: Callable[[Tensor, Sequence[str]], float], present: dict[str, Tensor],
                        idx: Tensor, modalities: Sequence[str]) -> dict:
    """The table above: ``score(idx, absent)`` is the accuracy on samples idx with ``absent``
    masked; ``present`` the data's {modality: bool per sample}."""
    mods = list(modalities)

    def condition(rows: Tensor, absent: Sequence[str]) -> dict:
        sel = idx[rows]
        return {"accuracy": score(sel, absent) if len(sel) else None, "samples": len(sel)}

    has = {m: present[m][idx] for m in mods}
    out = {"samples": len(idx), "accuracy": score(idx, ()), "without": {}, "alone": {}}
    for m in mods:
        others = [j for j in mods if j != m]
        left = torch.stack([has[j] for j in others]).any(0) if others else torch.zeros(len(idx), dtype=torch.bool)
        out["without"][m] = condition(left, [m])
        out["alone"][m] = condition(has[m], others)
    return out
