"""Rehearsal memory: balanced sample references plus the previous model's stored outputs.

The memory never copies media: it holds indices into the prepared data set. With each index it
stores the old model's logits and joint representation, computed once at the end of the task
that precedes their use, so the previous model never runs during training.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def herding(features: Tensor, m: int) -> list[int]:
    """iCaRL herding: greedily choose m rows whose running mean best approximates the mean of
    all (L2-normalised) rows. Returns row positions in selection order."""
    n = features.shape[0]
    m = min(m, n)
    if m == 0:
        return []
    f = F.normalize(features.double(), dim=1)
    mu = f.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool)
    for k in range(1, m + 1):
        # distance of the mean after adding each candidate
        cand = (running[None, :] + f) / k
        dist = (cand - mu[None, :]).norm(dim=1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running += f[i]
    return chosen


def quotas(keys: list, size: int, capacity: dict | None = None) -> dict:
    """Split ``size`` slots over group keys as evenly as possible. With ``capacity`` (samples
    available per group), slots a small group cannot use go to the others, so the memory is
    filled whenever there are enough samples; groups that are not capped differ by <= 1."""
    keys = sorted(keys)
    q = {k: 0 for k in keys}
    cap = capacity or {k: size for k in keys}
    open_keys = [k for k in keys if cap[k] > 0]
    left = size
    while left > 0 and open_keys:
        open_keys.sort(key=lambda k: (q[k], k))  # remainders go to the smallest groups first
        base, rem = divmod(left, len(open_keys))
        for i, k in enumerate(open_keys):
            add = min(base + (1 if i < rem else 0), cap[k] - q[k])
            q[k] += add
            left -= add
        open_keys = [k for k in open_keys if q[k] < cap[k]]
    return q


class RehearsalMemory:
    """Groups are classes (class-incremental) or (domain, class) pairs (domain-incremental).
    Each group keeps its samples in selection order, so shrinking keeps the best ones."""

    def __init__(self, size: int = 200, selection: str = "herding"):
        self.size = size
        self.selection = selection
        self.groups: dict[tuple, list[int]] = {}
        self.old_logits: Tensor | None = None   # (len, C_old), aligned with indices()
        self.old_z: Tensor | None = None        # (len, dim_z)

    def __len__(self) -> int:
        return sum(len(v) for v in self.groups.values())

    def indices(self) -> Tensor:
        return torch.tensor([i for k in sorted(self.groups) for i in self.groups[k]], dtype=torch.long)

    def update(self, new_groups: dict[tuple, Tensor], features: dict[tuple, Tensor] | None,
               generator: torch.Generator | None = None) -> None:
        """Add groups of candidate sample indices (with their features for herding), then
        shrink every group to its quota. Stored outputs are invalidated (call set_outputs)."""
        capacity = {k: len(v) for k, v in self.groups.items()}
        capacity.update({k: len(v) for k, v in new_groups.items()})
        q = quotas(list(capacity), self.size, capacity)
        for key, idx in new_groups.items():
            if self.selection == "herding":
                order = herding(features[key], q[key])
            else:
                order = torch.randperm(len(idx), generator=generator)[: q[key]].tolist()
            self.groups[key] = [int(idx[i]) for i in order]
        for key in list(self.groups):
            self.groups[key] = self.groups[key][: q[key]]
            if not self.groups[key]:
                del self.groups[key]
        self.old_logits = self.old_z = None

    def set_outputs(self, logits: Tensor, z: Tensor) -> None:
        if len(logits) != len(self) or len(z) != len(self):
            raise ValueError("stored outputs must align with the memory's indices")
        self.old_logits, self.old_z = logits.detach().cpu(), z.detach().cpu()

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """-> (sample indices, positions in the memory) of n draws without replacement."""
        total = len(self)
        pos = torch.randperm(total, generator=generator)[: min(n, total)]
        return self.indices()[pos], pos

    def state(self) -> tuple[dict, dict[str, Tensor]]:
        """JSON-able metadata and tensors (for safetensors checkpoints)."""
        meta = {"size": self.size, "selection": self.selection,
                "groups": [[list(k), v] for k, v in sorted(self.groups.items())]}
        tensors = {}
        if self.old_logits is not None:
            tensors = {"memory.old_logits": self.old_logits, "memory.old_z": self.old_z}
        return meta, tensors

    def load(self, meta: dict, tensors: dict[str, Tensor]) -> None:
        self.size, self.selection = meta["size"], meta["selection"]
        self.groups = {tuple(k): list(v) for k, v in meta["groups"]}
        self.old_logits = tensors.get("memory.old_logits")
        self.old_z = tensors.get("memory.old_z")
