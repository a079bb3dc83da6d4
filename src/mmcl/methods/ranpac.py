"""RanPAC: random projection and ridge-regression class prototypes on frozen features."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmcl.methods.frozen import FROZEN_DEFAULTS, FrozenFeatureMethod
from mmcl.registry import register_method
from mmcl.settings import setting

# Ridge strengths tried on the validation samples when method.ranpac.ridge is 0.
RIDGE_GRID = tuple(10.0 ** k for k in range(-6, 7))


@dataclass
class RanPACSettings:
    proj_dim: int = setting("M, width of the frozen random projection (the paper: 10000)", 2048, minimum=1)
    ridge: float = setting("ridge strength lambda; 0: chosen after every task from 1e-6 .. 1e6 by the accuracy "
                           "on the seen tasks' validation samples", 0.0, minimum=0.0)


def ridge_solution(G: Tensor, Q: Tensor, lam: float) -> Tensor:
    """W_o = (G + lam I)^-1 Q: the ridge-regression readout from the Gram matrix G = H^T H
    (M, M) and Q = H^T Y (M, C) of projected features H and one-hot targets Y."""
    eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    return torch.linalg.solve(G + lam * eye, Q)


@register_method("ranpac", settings=RanPACSettings, defaults=FROZEN_DEFAULTS)
class RanPAC(FrozenFeatureMethod):
    """RanPAC: frozen random projection with ReLU, then ridge-regression class prototypes from accumulated Gram statistics (McDonnell et al., NeurIPS 2023).

    Features x (each modality's pooled frozen features, L2-normalised and concatenated:
    mmcl.methods.frozen) are projected once by a frozen Gaussian matrix W (D x M,
    method.ranpac.proj_dim) with a ReLU, h = relu(x W). At the end of every task its training
    samples add G += H^T H and Q += H^T Y (one-hot targets over all outputs), so the
    statistics are those of every sample seen, without storing any; the readout is
    W_o = (G + lambda I)^-1 Q, and the scores are h W_o. lambda is method.ranpac.ridge, or
    (0, default) chosen after every task on the seen tasks' validation samples. Class- and
    domain-incremental alike (Q's columns are classes; a domain adds rows to G and Q). No
    gradient step, no memory, no adapters; the paper's first-session adaptation of the
    backbone (phase 1) does not apply to frozen encoders and is not done.
    """

    def __init__(self, cfg, model, data, scenario, device):
        super().__init__(cfg, model, data, scenario, device)
        self.W: Tensor | None = None    # (D, M) frozen random projection
        self.G: Tensor | None = None    # (M, M) float64
        self.Q: Tensor | None = None    # (M, C) float64
        self.Wo: Tensor | None = None   # (M, C) readout
        self.lam = float(self.settings.ridge)

    def project(self, f: Tensor) -> Tensor:
        return torch.relu(f @ self.W.to(f.device))

    def end_task(self, t: int) -> None:
        idx = self.scenario.tasks[t].train
        f = self.features(idx)
        if self.W is None:
            self.W = torch.randn(f.shape[1], self.settings.proj_dim, generator=self.generator)
            M = self.settings.proj_dim
            self.G = torch.zeros(M, M, dtype=torch.float64)
            self.Q = torch.zeros(M, self.num_outputs, dtype=torch.float64)
        h = self.project(f).double()
        y = torch.nn.functional.one_hot(self.targets(idx).cpu(), self.num_outputs).double()
        self.G += h.T @ h
        self.Q += h.T @ y
        self.lam = self.settings.ridge or self.select_ridge(t)
        self.Wo = ridge_solution(self.G, self.Q, self.lam).float()

    def select_ridge(self, t: int) -> float:
        """The grid's lambda with the best accuracy on tasks 0..t's validation samples (ties:
        the larger lambda); 1.0 when there are none."""
        val = torch.cat([self.scenario.tasks[i].val for i in range(t + 1)])
        if not len(val):
            return 1.0
        h = self.project(self.features(val)).double()
        y = self.targets(val).cpu()
        C = self.seen_outputs()
        best, best_acc = 1.0, -1.0
        for lam in RIDGE_GRID:
            acc = float(((h @ ridge_solution(self.G, self.Q, lam))[:, :C].argmax(1) == y).double().mean())
            if acc >= best_acc:
                best, best_acc = lam, acc
        return best

    @torch.no_grad()
    def predict(self, batch: dict) -> Tensor:
        f = self.batch_features(batch)
        C = self.seen_outputs()
        if self.Wo is None:
            return torch.zeros(len(f), C, device=f.device)
        return (self.project(f) @ self.Wo.to(f.device))[:, :C]

    def state(self):
        meta, tensors = super().state()
        meta["ranpac_lambda"] = self.lam
        for name in ("W", "G", "Q", "Wo"):
            if getattr(self, name) is not None:
                tensors[f"ranpac.{name}"] = getattr(self, name)
        return meta, tensors

    def load_state(self, meta, tensors):
        super().load_state(meta, tensors)
        self.lam = meta.get("ranpac_lambda", self.lam)
        for name in ("W", "G", "Q", "Wo"):
            setattr(self, name, tensors.get(f"ranpac.{name}"))

    def summary(self) -> dict:
        return {"ridge_lambda": self.lam}
