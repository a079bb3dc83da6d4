"""Atomic file writes and pickle-free checkpoints (safetensors for tensors, JSON for the rest)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``: readers
    see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def append_jsonl(path: str | Path, obj) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(stem: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """``stem``.safetensors + ``stem``.json; the JSON is written last and names the tensor
    file's size, so a checkpoint is complete exactly when its JSON exists and matches."""
    stem = Path(stem)
    blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(stem.with_suffix(".safetensors"), blob)
    write_json(stem.with_suffix(".json"), {**meta, "tensor_bytes": len(blob)})


class CheckpointError(ValueError):
    pass


def load_checkpoint(stem: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    stem = Path(stem)
    jpath, tpath = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    try:
        meta = json.loads(jpath.read_text(encoding="utf-8"))
        blob = tpath.read_bytes()
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {stem} is unreadable: {e}") from None
    if meta.get("tensor_bytes") != len(blob):
        raise CheckpointError(f"checkpoint {tpath} has {len(blob)} bytes, its JSON says "
                              f"{meta.get('tensor_bytes')}: truncated or replaced")
    try:
        tensors = st_load(blob)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"checkpoint {tpath} is corrupt: {e}") from None
    return tensors, meta
