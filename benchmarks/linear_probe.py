"""Linear probes on frozen features: a reference point for the continual-learning numbers.

Trains a softmax classifier on mean-pooled features of each frozen encoder (no adapters), on
all classes at once (joint, not incremental), and prints test accuracy per modality and for
the concatenation. Same preparation and split as `mmcl run PRESET` with the same seed.

    .venv/bin/python benchmarks/linear_probe.py tuxpaint [key=value ...]
"""
from __future__ import annotations

import json
import sys
import time

import torch
import torch.nn.functional as F

from mmcl.config import build_config
from mmcl.data.prepared import prepare
from mmcl.encoders import build_encoder


@torch.no_grad()
def features(enc, data, modality: str, idx: torch.Tensor, bs: int = 256) -> torch.Tensor:
    out = []
    for s in range(0, len(idx), bs):
        out.append(enc.pooled(data.batch(idx[s:s + bs])[modality]))
    return torch.cat(out)


def probe(xtr, ytr, xte, yte, n_classes: int, epochs: int = 300, wd: float = 1e-3) -> float:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(xtr.shape[1], n_classes)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2, weight_decay=wd)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(lin(xtr), ytr).backward()
        opt.step()
    return float((lin(xte).argmax(1) == yte).float().mean())


def main(argv: list[str]) -> None:
    preset = argv[0] if argv else "tuxpaint"
    cfg = build_config(preset, argv[1:])
    encoders = {m: build_encoder(m, cfg) for m in cfg.data.modalities}
    data = prepare(cfg, encoders, progress=False)
    split = data.split(cfg.run.seed, cfg.data.split)
    tr, te = torch.as_tensor(split["train"]), torch.as_tensor(split["test"])
    ytr, yte = data.labels[tr], data.labels[te]
    t0 = time.perf_counter()
    feats = {m: (features(encoders[m], data, m, tr), features(encoders[m], data, m, te)) for m in encoders}
    rows = {}
    for m, (a, b) in feats.items():
        rows[m] = probe(a, ytr, b, yte, data.num_classes)
    if len(feats) > 1:
        rows["+".join(feats)] = probe(torch.cat([a for a, _ in feats.values()], 1), ytr,
                                      torch.cat([b for _, b in feats.values()], 1), yte, data.num_classes)
    majority = float((yte == torch.bincount(ytr).argmax()).float().mean())
    print(f"linear probe, {preset}, seed {cfg.run.seed}: {len(tr)} train / {len(te)} test samples, "
          f"{data.num_classes} classes, all at once ({time.perf_counter() - t0:.0f}s)")
    print(f"{'features':28s} test accuracy")
    for k, v in rows.items():
        print(f"{k:28s} {100 * v:6.2f}%")
    print(f"{'majority class':28s} {100 * majority:6.2f}%")
    print(json.dumps({"preset": preset, "seed": cfg.run.seed, "probe": rows, "majority": majority}))


if __name__ == "__main__":
    main(sys.argv[1:])
