"""``encoders.<modality>.<kind>.fit=first_task``: train an encoder without public pre-trained weights
(``imu``) on task 1, then freeze it for the rest of the stream.

The encoder and a linear head over its mean-pooled last-block tokens are trained with
cross-entropy on task 1's training samples (AdamW, ``train.lr``, ``train.batch_size``,
``fit_epochs`` epochs, batches drawn with a generator seeded by ``run.seed``), before the
method sees task 1. The encoder is then frozen again like every other one; the head is
discarded. Only task-1 data are used, so later tasks see a fixed encoder (no forgetting in it).
"""
from __future__ import annotations

import hashlib
import json
import logging

import torch
from torch import nn

from mmcl.encoders.base import masked_mean

log = logging.getLogger(__name__)


def fit_key(enc, cfg, modality: str, data, train_idx) -> str:
    """Everything that changes the fitted weights: the encoder, the prepared data (its cache
    folder), the exact training samples and labels, the optimisation settings. The saved file
    is reused only on a match."""
    idx = torch.as_tensor(train_idx, dtype=torch.long)
    samples = hashlib.sha256(idx.numpy().tobytes() + data.labels.index_select(0, idx).numpy().tobytes()).hexdigest()
    blob = json.dumps({"identity": enc.identity(), "seed": cfg.run.seed, "dataset": cfg.data.dataset,
                       "data": getattr(data.folder, "name", ""), "samples": samples,
                       "epochs": enc.fit_epochs, "lr": cfg.train.lr, "batch": cfg.train.batch_size,
                       "weight_decay": cfg.train.weight_decay}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fit_first_task(enc, inputs: dict[str, torch.Tensor], labels: torch.Tensor, cfg, modality: str,
                   device) -> list[float]:
    """Train enc (in place) on (inputs, labels); returns the mean loss per epoch. Leaves enc frozen."""
    classes = torch.unique(labels)
    target = torch.searchsorted(classes, labels)
    head = nn.Linear(enc.dims[-1], len(classes)).to(device)
    params = list(enc.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params + list(head.parameters()), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    gen = torch.Generator().manual_seed(cfg.run.seed + 7919)
    n, bs, losses = len(target), cfg.train.batch_size, []
    try:
        for epoch in range(enc.fit_epochs):
            order, total = torch.randperm(n, generator=gen), 0.0
            for s in range(0, n, bs):
                idx = order[s:s + bs]
                batch = {k: v.index_select(0, idx).to(device) for k, v in inputs.items()}
                tokens, mask = enc(batch)
                loss = nn.functional.cross_entropy(head(masked_mean(tokens, mask)), target[idx].to(device))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"encoders.{modality}.fit=first_task: the loss became {float(loss)} "
                                             f"in epoch {epoch + 1}; lower train.lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / n)
    finally:
        enc.freeze()
    log.info("fitted the %s encoder on task 1 (%d samples, %d classes): loss per epoch %s", modality, n,
             len(classes), " ".join(f"{x:.3f}" for x in losses))
    return losses
