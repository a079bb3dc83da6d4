"""Run names derived from what makes a run different: preset, method or variant, the config
overrides that change results, and the seed (``mmcl run``'s default run folder, ``mmcl sweep``).

``tuxpaint`` with ``method.name=cma model.adapters=false run.seed=2`` is named
``tuxpaint-cma-model.adapters=false-s2``. Keys that do not change results (the run.* keys, data
root and cache; ``RESUMABLE_DIFFERENCES``) are left out, so ``run.threads=1`` resumes the same
folder. The name ends with ``-s<seed>`` so that ``mmcl compare`` groups the seeds of one
configuration into one row.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["RESUMABLE_DIFFERENCES", "format_value", "overrides_slug", "parse_override_list", "run_name"]

# Config keys that may differ between a run and its resumption (they do not change results,
# or name where things are). Everything else must match the checkpoint's config.
RESUMABLE_DIFFERENCES = frozenset({"run.progress", "run.threads", "run.device", "run.out_dir", "run.name",
                                   "run.save_checkpoint", "data.root", "data.cache_dir", "log.tensorboard",
                                   "log.every", "log.wandb", "log.wandb_project", "report.tsne",
                                   "report.tsne_after"})
# Left out of run names: they do not change results, or have their own place in the name.
NAME_IGNORED = RESUMABLE_DIFFERENCES | {"run.seed", "method.name"}
MAX_NAME = 120


def format_value(v: Any) -> str:
    """A value as `mmcl run` reads it (YAML): lists as [a,b], booleans as true/false."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    if v is None:
        return "null"
    return str(v)


def parse_override_list(overrides: Iterable[str]) -> dict[str, str]:
    """``["a.b=1", "c=x"]`` as {"a.b": "1", "c": "x"} (values as written; later ones win)."""
    out: dict[str, str] = {}
    for o in overrides:
        key, sep, value = str(o).partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def overrides_slug(overrides: Mapping[str, Any]) -> str:
    """The overrides that change results as one file-name-safe string, keys sorted:
    ``model.adapters=false-train.epochs=1``; empty when there are none."""
    parts = []
    for key in sorted(overrides):
        if key in NAME_IGNORED:
            continue
        v = overrides[key]
        value = v if isinstance(v, str) else format_value(v)
        value = re.sub(r"[^A-Za-z0-9._,=+\-\[\]]", "_", value.strip("[]") if value.startswith("[") else value)
        parts.append(f"{key}={value}")
    return "-".join(parts)


def run_name(preset: str, label: str, seed: int, overrides: Mapping[str, Any] | None = None) -> str:
    """``<preset>-<label>[-<overrides slug>]-s<seed>``; a slug that would make the name longer than
    MAX_NAME characters is cut and ended with a hash of the whole, so names stay unique."""
    slug = overrides_slug(overrides or {})
    stem = f"{preset or 'custom'}-{label}"
    tail = f"-s{seed}"
    if slug:
        full = f"{stem}-{slug}"
        if len(full) + len(tail) > MAX_NAME:
            digest = hashlib.sha1(slug.encode()).hexdigest()[:10]
            full = full[:MAX_NAME - len(tail) - 11] + "-" + digest
        stem = full
    return stem + tail
