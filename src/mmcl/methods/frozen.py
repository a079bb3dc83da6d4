"""What the classifiers built on frozen features share (simplecil, ranpac): the features they
work on, and a task loop without gradient steps.

Features: each modality's pooled frozen encoder features (``MMModel.pooled_features``: served
from the cache with model.cached_features, else computed), each L2-normalised, then
concatenated. The per-modality concatenation, not the joint representation z_joint: z_joint
comes out of the projection and fusion MLPs, which these methods never train (randomly
initialised, they would only scramble the pre-trained features). Normalising each modality
first gives every modality the same weight: the encoders' pooled features differ in scale by
orders of magnitude (MiniLM tokens vs. GE2E's ReLU outputs). A sample's masked modality
(``batch[m]["present"]``) contributes a zero-weight block: it takes no part in any dot product,
projection or sum, so the scores are computed from the present modalities only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcl.data.batches import presence
from mmcl.methods.base import ADAPTER_FREE, Method

# Rehearsal-free, adapter-free.
FROZEN_DEFAULTS = {**ADAPTER_FREE, "memory": {"size": 0}}


def concat_features(pooled: dict[str, Tensor], modalities, present: dict[str, Tensor] | None = None) -> Tensor:
    """{modality: (b, D_m)} -> (b, sum D_m): each modality L2-normalised, then concatenated;
    with ``present``, a masked modality's block has weight zero (it is left out of every use)."""
    parts = []
    for m in modalities:
        f = F.normalize(pooled[m].float(), dim=1)
        if present is not None:
            f = torch.where(present[m][:, None], f, torch.zeros_like(f))
        parts.append(f)
    return torch.cat(parts, dim=1)


class FrozenFeatureMethod(Method):
    """Base class of methods that classify frozen features with statistics gathered at each
    task's end (``end_task``) and take no gradient steps: the engine's epochs have no batches."""

    predicts_with_head = False

    def __init__(self, cfg, model, data, scenario, device):
        super().__init__(cfg, model, data, scenario, device)
        if model.adapters:
            raise ValueError(f"method.name={cfg.method.name} classifies the frozen encoders' features and trains "
                             "no adapters: set model.adapters=false")
        self.num_outputs = int(scenario.label_to_output.max()) + 1

    def train_indices(self, t: int) -> Tensor:
        return torch.zeros(0, dtype=torch.long)  # no gradient steps

    def training_step(self, idx: Tensor) -> dict[str, Tensor]:
        raise RuntimeError(f"method.name={self.cfg.method.name} takes no training steps")

    def batch_features(self, batch: dict) -> Tensor:
        mods = self.model.modalities
        return concat_features(self.model.pooled_features(batch), mods, presence(batch, mods))

    def block_widths(self) -> list[int]:
        """The width of each modality's block of the features, in model.modalities order."""
        return [self.model.encoders[m].dims[-1] for m in self.model.modalities]

    @torch.no_grad()
    def features(self, idx: Tensor) -> Tensor:
        """Features of samples idx (chunked), float32 on the CPU."""
        out = [self.batch_features(self.fetch(idx[s:s + self.cfg.eval.batch_size])).cpu()
               for s in range(0, len(idx), self.cfg.eval.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 0)

    def seen_outputs(self) -> int:
        return self.model.classifier.num_classes
