"""SLCA's classifier alignment: the head retrained on features sampled from stored class statistics."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcl import losses
from mmcl.methods.base import Method
from mmcl.methods.frozen import FROZEN_DEFAULTS
from mmcl.registry import register_method
from mmcl.settings import setting


@dataclass
class SLCASettings:
    ca_epochs: int = setting("epochs of classifier alignment after every task from task 2 on (the paper: 5)", 5,
                             minimum=0)
    ca_samples: int = setting("features sampled per stored class (and domain) in every alignment epoch "
                              "(the paper: 256)", 256, minimum=1)
    ca_lr: float = setting("SGD learning rate of the alignment (momentum 0.9, cosine; the paper: 0.01)", 0.01,
                           above=0.0)
    ca_batch_size: int = setting("sampled features per alignment step", 128, minimum=1)
    logit_norm: float = setting("temperature of the logit normalisation in the alignment loss (the paper: 0.1); "
                                "0 disables it", 0.1, minimum=0.0)
    train_mask: bool = setting("in class-incremental tasks, train on the current task's classes only (old-class "
                               "logits masked)", True)
    slow_lr_scale: float = setting("the slow learner: from task 2 on, the learning rate of the projection and "
                                   "fusion MLPs (what trains before the head) as a multiple of train.lr; 1: "
                                   "as fast as the head, 0: frozen after task 1 (the paper: 0.01, its backbone's rate "
                                   "against its head's)", 0.01, minimum=0.0)


def class_statistics(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per class present in y: (classes (K,), means (K, D), covariances (K, D, D)), float64;
    a class with one sample gets a zero covariance."""
    classes = y.unique()
    means, covs = [], []
    for c in classes.tolist():
        zc = z[y == c].double()
        means.append(zc.mean(0))
        covs.append(torch.cov(zc.T).reshape(z.shape[1], z.shape[1]) if len(zc) > 1
                    else torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64))
    return classes, torch.stack(means), torch.stack(covs)


def sample_gaussian(mean: Tensor, cov: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n draws of N(mean, cov), float32: mean + e diag(sqrt(eigenvalues)) V^T, so a singular
    (positive semi-definite) covariance, as with fewer samples than dimensions, is sampled as
    it is, without a ridge."""
    vals, vecs = torch.linalg.eigh(cov.double())
    factor = vecs * vals.clamp_min(0).sqrt()  # (D, D): factor @ factor.T == cov
    e = torch.randn(n, len(mean), generator=generator, dtype=torch.float64)
    return (mean.double() + e @ factor.T).float()


@register_method("slca", settings=SLCASettings, defaults=FROZEN_DEFAULTS)
class SLCA(Method):
    """SLCA (classifier alignment): per-class Gaussian statistics of z_joint, sampled to retrain the head after each task (Zhang et al., ICCV 2023).

    Training: cross-entropy on the current task's samples (old-class logits masked in
    class-incremental tasks, method.slca.train_mask), the projections, fusion and head at
    train.lr. At the end of every task the mean and covariance of the joint representation
    z_joint of its training samples are stored per class (per class and domain in
    domain-incremental streams, where every task holds every class). From task 2 on,
    classifier alignment: the head alone (the growing classifier's rows of every seen
    class) is retrained for method.slca.ca_epochs epochs on method.slca.ca_samples features
    per stored Gaussian, with logit normalisation (method.slca.logit_norm), SGD at
    method.slca.ca_lr. No memory of samples. The paper's other half, the slow learner (the
    backbone fine-tuned at a learning rate 100x smaller than the head): the encoders here are
    frozen, and what trains before the head is the projection and fusion MLPs; they train at
    the full rate on task 1 (they start random) and at method.slca.slow_lr_scale x train.lr
    from task 2 on. The statistics are taken on z_joint, the head's input, as in the paper;
    the old classes' statistics, computed when their task ended, go stale as far as the MLPs
    move. Measured on tuxpaint, seed 0 (docs/baselines.md): at the full rate (scale 1) the
    alignment on stale statistics halves the accuracy against no alignment at all.
    """

    def __init__(self, cfg, model, data, scenario, device):
        super().__init__(cfg, model, data, scenario, device)
        self.stat_classes: Tensor | None = None   # (K,) output class of each stored Gaussian
        self.means: Tensor | None = None          # (K, dim_z)
        self.covs: Tensor | None = None           # (K, dim_z, dim_z)

    def lr_scales(self) -> dict[str, float]:
        # Task 1 trains the randomly initialised MLPs at the full rate; later tasks slow them so
        # that the stored statistics of old classes stay valid (the paper's slow learner).
        scales = super().lr_scales()
        return {**scales, "projections": self.settings.slow_lr_scale} if self.task > 0 else scales

    def training_step(self, idx: Tensor) -> dict[str, Tensor]:
        out, target = self.forward_batch(idx)
        logits = self.current_task_logits(out.logits) if self.settings.train_mask else out.logits
        return {"cls": losses.classification(logits, target), **self.balance_term(out)}

    def end_task(self, t: int) -> None:
        idx = self.scenario.tasks[t].train
        _, z = self.infer(idx)
        classes, means, covs = class_statistics(z, self.targets(idx).cpu())
        if self.means is None:
            self.stat_classes, self.means, self.covs = classes, means, covs
        else:
            self.stat_classes = torch.cat([self.stat_classes, classes])
            self.means, self.covs = torch.cat([self.means, means]), torch.cat([self.covs, covs])
        if t > 0 and self.settings.ca_epochs:
            self.align_classifier()

    def sampled_features(self) -> tuple[Tensor, Tensor]:
        """method.slca.ca_samples features of every stored Gaussian and their classes, shuffled."""
        n = self.settings.ca_samples
        z = torch.cat([sample_gaussian(m, c, n, self.generator) for m, c in zip(self.means, self.covs)])
        y = self.stat_classes.repeat_interleave(n)
        order = torch.randperm(len(y), generator=self.generator)
        return z[order], y[order]

    def align_classifier(self) -> None:
        s = self.settings
        head = self.model.classifier
        params = list(head.parameters())
        steps_per_epoch = math.ceil(len(self.stat_classes) * s.ca_samples / s.ca_batch_size)
        opt = torch.optim.SGD(params, lr=s.ca_lr, momentum=0.9, weight_decay=self.cfg.train.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, s.ca_epochs * steps_per_epoch))
        with torch.enable_grad():
            for _ in range(s.ca_epochs):
                z, y = self.sampled_features()
                for b in range(0, len(y), s.ca_batch_size):
                    logits = head(z[b:b + s.ca_batch_size].to(self.device))
                    if s.logit_norm:
                        logits = logits / (logits.norm(dim=1, keepdim=True) + 1e-7) / s.logit_norm
                    loss = F.cross_entropy(logits, y[b:b + s.ca_batch_size].to(self.device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()

    def state(self):
        meta, tensors = super().state()
        if self.means is not None:
            tensors.update({"slca.classes": self.stat_classes, "slca.means": self.means, "slca.covs": self.covs})
        return meta, tensors

    def load_state(self, meta, tensors):
        super().load_state(meta, tensors)
        self.stat_classes, self.means, self.covs = (tensors.get(f"slca.{k}") for k in ("classes", "means", "covs"))
