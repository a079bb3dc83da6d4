"""The files of a data cache folder (layout: mmcl.data.prepared): its key, and reading and
writing them. Every file is written atomically (mmcl.io), so a file that exists is complete;
a failed write is a DataError that names the file and says what to do."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcl.data.errors import DataError
from mmcl.io import WriteError, atomic_save_tensors, write_json

FORMAT_VERSION = 1  # bump when the layout or content of cache files changes


def cache_key(dataset: str, settings: dict, identities: dict[str, str]) -> str:
    blob = json.dumps({"version": FORMAT_VERSION, "dataset": dataset, "settings": settings,
                       "encoders": identities}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write_error(path: Path, e: BaseException) -> DataError:
    return DataError(f"cannot write the data cache file {path}: {e}. Free some space or make the "
                     "folder writable, or set data.cache_dir (or MMCL_CACHE) to another folder; "
                     "cache files already written are complete and are kept.")


def write_cache_json(path: Path, obj: Any) -> None:
    """``obj`` as one line of JSON, atomically; DataError when it cannot be written (disk full,
    read-only, permissions: the complete files stay)."""
    try:
        write_json(path, obj, compact=True)
    except WriteError as e:
        raise _write_error(path, e.__cause__ or e) from e


def save_cache_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors cache file, atomically; DataError when it cannot be written."""
    try:
        atomic_save_tensors(path, tensors)
    except WriteError as e:
        raise _write_error(path, e.__cause__ or e) from e


def write_unreadable(path: Path, bad: dict[int, str]) -> None:
    """{row: message} of the files that could not be read; no file when there are none (a
    stale list from an interrupted attempt is removed)."""
    if bad:
        write_cache_json(path, {str(r): msg for r, msg in sorted(bad.items())})
    else:
        path.unlink(missing_ok=True)


def read_unreadable(path: Path) -> dict[int, str]:
    """The list ``write_unreadable`` wrote ({} when there is none)."""
    if not path.exists():
        return {}
    try:
        return {int(r): msg for r, msg in json.loads(path.read_text(encoding="utf-8")).items()}
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"cannot read {path}: {e}. Delete the folder {path.parent} and prepare again.") from e


def read_records(path: Path) -> dict:
    """A cache folder's records.json (samples, sources, classes, domains); DataError naming
    the file when it is unreadable or not one."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not {"records", "sources", "classes", "domains"} <= set(meta):
            raise ValueError("not an mmcl records file")
    except (OSError, ValueError) as e:  # json's errors are ValueErrors
        raise DataError(f"cannot read the prepared index {path}: {e}. Delete the folder {path.parent} "
                        "and prepare again.") from e
    return meta


_NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BOOL": np.bool_, "U8": np.uint8,
                 "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64}


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A cache file's tensors, memory-mapped (copy-on-write): a cache larger than RAM (video
    data sets: tens of GB of prefix tokens) is paged in by the OS as batches touch its rows,
    and several runs on one machine share the pages. Falls back to reading the whole file for
    dtypes NumPy lacks (bf16)."""
    from safetensors.torch import load_file
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        if any(h["dtype"] not in _NUMPY_DTYPES for h in header.values()):
            return load_file(str(path))
        out = {}
        for name, h in header.items():
            begin, end = h["data_offsets"]
            dtype, shape = _NUMPY_DTYPES[h["dtype"]], tuple(h["shape"])
            if end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
                raise ValueError(f"tensor {name}: {end - begin} bytes for shape {shape}")
            if end == begin:
                out[name] = torch.from_numpy(np.zeros(shape, dtype=dtype))
                continue
            arr = np.memmap(path, dtype=dtype, mode="c", offset=8 + n + begin, shape=shape)
            out[name] = torch.from_numpy(arr)
        return out
    except Exception as e:  # damaged header, truncated file, ...
        raise DataError(f"cannot read cached file {path}: {e}. Delete the folder {path.parent} "
                        "and prepare again.") from e
