"""Linear probes on frozen features: a reference point for the continual-learning numbers.

Trains a softmax classifier on mean-pooled features of each frozen encoder (no adapters), on
all classes at once (joint, not incremental), and prints test accuracy per modality and for
the concatenation. Same preparation and split as `mmcl run PRESET` with the same seed.

A preset with several domains (languages; tuxpaint-shift: languages with image shifts) also
gets, per modality, the all-at-once probe's test accuracy on each domain, and the probe trained
on the first domain only tested on each domain (how much the domains differ: a modality that
does not shift scores on every domain as on the first).

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


def fit(xtr, ytr, n_classes: int, epochs: int = 300, wd: float = 1e-3):
    """A softmax classifier on standardised features -> predict(x) giving class ids."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    torch.manual_seed(0)
    lin = torch.nn.Linear(xtr.shape[1], n_classes)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2, weight_decay=wd)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(lin((xtr - mu) / sd), ytr).backward()
        opt.step()
    return lambda x: lin((x - mu) / sd).argmax(1)


def probe(xtr, ytr, xte, yte, n_classes: int, epochs: int = 300, wd: float = 1e-3) -> float:
    return float((fit(xtr, ytr, n_classes, epochs, wd)(xte) == yte).float().mean())


def per_domain(feats, ytr, yte, dtr, dte, names, n_classes) -> dict:
    """{modality: {"all_at_once": {domain: acc}, "first_domain_only": {domain: acc}}} on the test set."""
    out = {}
    for m, (a, b) in feats.items():
        joint = fit(a, ytr, n_classes)(b) == yte
        first = dtr == int(dtr.min())
        only = fit(a[first], ytr[first], n_classes)(b) == yte
        out[m] = {kind: {names[d]: float(hit[dte == d].float().mean()) for d in sorted(set(dte.tolist()))}
                  for kind, hit in (("all_at_once", joint), ("first_domain_only", only))}
    return out


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
    domains = None
    if len(set(data.domain_ids.tolist())) > 1:
        domains = per_domain(feats, ytr, yte, data.domain_ids[tr], data.domain_ids[te], data.domains,
                             data.num_classes)
    print(f"linear probe, {preset}, seed {cfg.run.seed}: {len(tr)} train / {len(te)} test samples, "
          f"{data.num_classes} classes, all at once ({time.perf_counter() - t0:.0f}s)")
    print(f"{'features':28s} test accuracy")
    for k, v in rows.items():
        print(f"{k:28s} {100 * v:6.2f}%")
    print(f"{'majority class':28s} {100 * majority:6.2f}%")
    for m, kinds in (domains or {}).items():
        for kind, accs in kinds.items():
            print(f"{m} {kind:18s} " + "  ".join(f"{d} {100 * a:.1f}" for d, a in accs.items()))
    print(json.dumps({"preset": preset, "seed": cfg.run.seed, "probe": rows, "majority": majority,
                      "train": len(tr), "test": len(te), "per_domain": domains}))


if __name__ == "__main__":
    main(sys.argv[1:])
