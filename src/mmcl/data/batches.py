"""Moving a batch (``PreparedData.batch``: nested dicts of tensors, None for absent masks) to
the device; the methods' one way to do it. And a batch's modality masks: ``batch[m]["present"]``
(bool, one per row; False: the row misses modality m, whose tensors there are never read)."""
from __future__ import annotations

from collections.abc import Iterable

import torch


def to_device(batch, device, non_blocking: bool = True):
    """``batch`` with every tensor moved to ``device`` (nested dicts followed, other values such
    as a None mask kept). Non-blocking by default: a copy from pinned memory overlaps compute."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    return batch


def presence(batch: dict, modalities: Iterable[str]) -> dict[str, torch.Tensor] | None:
    """{modality: bool (rows,)} of the batch's modality masks, or None when every row has every
    modality (a batch without "present" entries has them all)."""
    out, complete = {}, True
    for m in modalities:
        p = batch[m].get("present")
        if p is None:
            p = torch.ones(_rows(batch[m]), dtype=torch.bool, device=_device(batch[m]))
        else:
            complete = complete and bool(p.all())
        out[m] = p.bool()
    return None if complete else out


def drop_modalities(batch: dict, names: Iterable[str]) -> dict:
    """The batch with modalities ``names`` masked in every row (a test-time removal), in place."""
    for m in names:
        item = batch[m]
        item["present"] = torch.zeros(_rows(item), dtype=torch.bool, device=_device(item))
    return batch


def keep_modalities(batch: dict, modalities: list[str], keep: torch.Tensor) -> dict:
    """The batch with ``keep`` (rows, len(modalities)) bool applied to its modality masks: a
    False masks that row's modality (modality dropout), in place."""
    for k, m in enumerate(modalities):
        item = batch[m]
        present = item.get("present")
        col = keep[:, k].to(_device(item))
        item["present"] = col if present is None else present & col
    return batch


def _rows(item: dict) -> int:
    return next(v for v in item.values() if isinstance(v, torch.Tensor)).shape[0]


def _device(item: dict) -> torch.device:
    return next(v for v in item.values() if isinstance(v, torch.Tensor)).device
