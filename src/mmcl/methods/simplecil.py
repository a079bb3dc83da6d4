"""SimpleCIL: a prototype classifier on frozen features."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcl.methods.frozen import FROZEN_DEFAULTS, FrozenFeatureMethod
from mmcl.registry import register_method


@register_method("simplecil", defaults=FROZEN_DEFAULTS)
class SimpleCIL(FrozenFeatureMethod):
    """SimpleCIL: cosine nearest class mean on frozen pre-trained features, no training (Zhou et al., IJCV 2024).

    At the end of every task the features of its training samples (each modality's pooled
    frozen features, L2-normalised and concatenated: mmcl.methods.frozen) are added to per
    class sums; a class's prototype is the mean of all its training features so far (block by
    block: a modality's block averages the samples that have that modality).
    Prediction: the cosine similarity of the sample's features to every seen class's
    prototype; the nearest wins (classes without a sample score -inf). No gradient step, no
    memory, no adapters. Class-incremental (each task adds its classes' prototypes) and
    domain-incremental (a class's mean gathers every domain seen so far) alike.
    """

    def __init__(self, cfg, model, data, scenario, device):
        super().__init__(cfg, model, data, scenario, device)
        self.sums: Tensor | None = None    # (C, D) float64 feature sums per output class
        self.counts = torch.zeros(self.num_outputs, dtype=torch.float64)
        # (C, modalities) samples per class that have each modality: each block's mean divides by its own
        self.block_counts = torch.zeros(self.num_outputs, len(model.modalities), dtype=torch.float64)

    def end_task(self, t: int) -> None:
        idx = self.scenario.tasks[t].train
        f = self.features(idx).double()
        if self.sums is None:
            self.sums = torch.zeros(self.num_outputs, f.shape[1], dtype=torch.float64)
        y = self.targets(idx).cpu()
        self.sums.index_add_(0, y, f)
        self.counts += torch.bincount(y, minlength=self.num_outputs).double()
        self.block_counts.index_add_(0, y, self.data.present_matrix(idx).double())

    def prototypes(self) -> Tensor:
        """(C, D) class means, each modality's block over the samples that have it (rows of
        classes without samples: zero)."""
        per_column = torch.repeat_interleave(self.block_counts, torch.tensor(self.block_widths()), dim=1)
        return (self.sums / per_column.clamp_min(1)).float()

    @torch.no_grad()
    def predict(self, batch: dict) -> Tensor:
        f = F.normalize(self.batch_features(batch), dim=1)
        C = self.seen_outputs()
        if self.sums is None:
            return torch.zeros(len(f), C, device=f.device)
        protos = F.normalize(self.prototypes()[:C].to(f.device), dim=1)
        scores = f @ protos.T
        scores[:, self.counts[:C].to(f.device) == 0] = float("-inf")
        return scores

    def state(self):
        meta, tensors = super().state()
        tensors["simplecil.counts"] = self.counts
        tensors["simplecil.block_counts"] = self.block_counts
        if self.sums is not None:
            tensors["simplecil.sums"] = self.sums
        return meta, tensors

    def load_state(self, meta, tensors):
        super().load_state(meta, tensors)
        self.counts = tensors["simplecil.counts"]
        # (checkpoints of earlier releases: every sample had every modality)
        self.block_counts = tensors.get("simplecil.block_counts",
                                        self.counts[:, None].repeat(1, len(self.model.modalities)))
        self.sums = tensors.get("simplecil.sums")
