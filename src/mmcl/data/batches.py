"""Moving a batch (``PreparedData.batch``: nested dicts of tensors, None for absent masks) to
the device; the methods' one way to do it."""
from __future__ import annotations

import torch


def to_device(batch, device, non_blocking: bool = True):
    """``batch`` with every tensor moved to ``device`` (nested dicts followed, other values such
    as a None mask kept). Non-blocking by default: a copy from pinned memory overlaps compute."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    return batch
