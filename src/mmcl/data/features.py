"""Pooled frozen features: each row's last-block features of the frozen encoder, averaged over
its valid tokens, computed once per data set and encoder configuration.

A model without cross-modality adapters and prompts (``MMModel.frozen_features``) sees a
sample only through these features, which are a fixed function of the sample (frozen
encoders in eval mode, no augmentation). With ``model.cached_features`` the engine computes
them once and serves batches of them (``PreparedData.serve_features``), so training and
evaluation skip the frozen blocks 2..B. The file sits in the prepared cache folder, whose key
already hashes the data settings and the encoders' identities::

    pooled_<source>_<mod>.safetensors   {"pooled": float32 (rows, D)}; source: prefix (the
                                        cached block-1 tokens, data.cache_prefix) or inputs

and is memory-mapped when it is read back. An encoder fitted on task 1 in this run
(encoders.<m>.<kind>.fit) is not what the cache key names: its features are computed in
memory and not written.
"""
from __future__ import annotations

import logging
import time

import torch

from mmcl.data.batches import to_device
from mmcl.data.cache import load_tensors, save_cache_tensors
from mmcl.data.prepared_data import PreparedData

log = logging.getLogger(__name__)


@torch.no_grad()
def compute_pooled(data: PreparedData, m: str, encoder, device: torch.device, batch_size: int = 256,
                   groups: int = 2) -> torch.Tensor:
    """Modality m's pooled frozen features of every row of its cached tensors -> float32 (rows, D), on the CPU."""
    n, out = data.num_rows(m), []
    for s in range(0, n, batch_size):
        item = to_device(data.row_item(m, torch.arange(s, min(n, s + batch_size))), device)
        out.append(encoder.pooled(item, groups).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def pooled_features(data: PreparedData, encoders: dict, device: torch.device, batch_size: int = 256,
                    groups: int = 2, fitted: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """{modality: (rows, D)} pooled features of ``data`` with ``encoders``: read from the cache
    folder (memory-mapped) when there, else computed and written (modalities in ``fitted``:
    computed, never written)."""
    source = "prefix" if data.use_prefix else "inputs"
    table = {}
    for m in data.modalities:
        path = None if data.folder is None or m in fitted else data.folder / f"pooled_{source}_{m}.safetensors"
        if path is not None and path.exists():
            table[m] = load_tensors(path)["pooled"]
            continue
        t0 = time.perf_counter()
        table[m] = compute_pooled(data, m, encoders[m], device, batch_size, groups)
        if path is not None:
            save_cache_tensors(path, {"pooled": table[m].contiguous()})
        log.info("pooled %s features of %d rows computed in %.1f s", m, len(table[m]), time.perf_counter() - t0)
    return table


def serve_features(cfg, model, data: PreparedData, dist, device: torch.device) -> float:
    """With model.cached_features, a model that sees the samples only through their pooled
    frozen features (MMModel.frozen_features: no adapters, no prompter) is served those,
    computed once per data set and encoder configuration. Returns the seconds it took. In a
    data-parallel run one process per machine computes and writes the file, the others wait."""
    if not (cfg.model.cached_features and model.frozen_features):
        return 0.0
    t0 = time.perf_counter()
    fitted = frozenset(m for m, e in model.encoders.items() if e.fit_on_first_task)
    if dist.local_rank != 0:
        dist.barrier()
    table = pooled_features(data, model.encoders, device, cfg.eval.batch_size, model.length_chunks, fitted)
    if dist.enabled and dist.local_rank == 0:
        dist.barrier()
    data.serve_features(table)
    return time.perf_counter() - t0
