"""Atomic file writes and pickle-free checkpoints (safetensors for tensors, JSON for the rest).

A run folder's ``checkpoints/`` holds numbered resume checkpoints and a pointer::

    ckpt-000007.safetensors   tensors (model, optimiser state, memory, RNG states)
    ckpt-000007.json          everything else; names the tensor file's size and SHA-256
    latest.json               {"latest": {name, sha256 of both files}, "previous": {...}}

A new checkpoint is written next to the old ones, read back and verified, and only then does
``latest.json`` (replaced atomically) point at it; the previous one is kept until a newer one
has been verified. Loading never unpickles: safetensors parses a JSON header and raw bytes.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:  # torch and safetensors are imported where tensors are saved or loaded:
    import torch  # writing a report or a JSON file does not need them

log = logging.getLogger("mmcl")

FORMAT = "mmcl-checkpoint-2"
_UMASK = os.umask(0)  # read the process umask (it can only be read by setting it), restore it
os.umask(_UMASK)


class WriteError(OSError):
    """A file of the run folder could not be written (e.g. the disk is full). The file's
    previous version, if any, is untouched."""


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, tampered with or does not fit this run."""


class CheckpointWriteError(WriteError):
    """A checkpoint could not be written; the previous good one is kept."""


def _describe_os_error(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on device (the disk is full)"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return e.strerror or str(e)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(f, data: bytes) -> None:
    """The one place file contents are written (tests simulate a full disk here)."""
    f.write(data)


def _atomic_replace(path: str | Path, fill: Callable[[str], None]) -> Path:
    """The atomic writers' common core: ``fill(tmp)`` writes the whole new content to ``tmp``
    (an empty temporary file in the same folder) and makes it durable (fsync); ``tmp`` then
    gets the mode open() would give (0o666 & ~umask; mkstemp makes 0600) and is renamed over
    ``path``. A failed write (disk full) raises WriteError naming ``path`` and the cause, and
    leaves the old file as it was; no temporary file is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fill(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the mode open() would
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        _unlink_quietly(tmp)
        if isinstance(e, WriteError):
            raise
        raise WriteError(e.errno, f"cannot write {path}: {_describe_os_error(e)}; "
                                  f"its previous version (if any) is kept") from e
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


def atomic_write(path: str | Path, write: Callable[[IO], None], mode: str = "wb") -> Path:
    """Write a file through ``write(f)`` (``f`` opened with ``mode``: "wb", or "w" for UTF-8
    text) atomically: to a temporary file in the same folder, fsync, then rename over
    ``path``. Readers see the old file or the new one, never a partial one; the file gets the
    permissions an ordinary open() gives (0o666 & ~umask). A failed write (disk full) raises
    WriteError and leaves the old file as it was. Returns ``path``."""
    def fill(tmp: str) -> None:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    return _atomic_replace(path, fill)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """``data`` as the whole content of ``path``, atomically (see atomic_write)."""
    atomic_write(path, lambda f: _write_file(f, data), "wb")


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file of ``tensors`` (made contiguous), atomically (see atomic_write).
    safetensors writes the file itself: the tensors are not copied into one bytes object
    first (the data cache holds files of many GB)."""
    import safetensors.torch

    def fill(tmp: str) -> None:
        safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _atomic_replace(path, fill)


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def write_json(path: str | Path, obj, compact: bool = False) -> None:
    """``obj`` as JSON, atomically: indented with a final newline (run folders, checkpoints),
    or with ``compact`` on one line as ``json.dumps`` writes it (the data cache's files)."""
    atomic_write_bytes(path, json.dumps(obj, ensure_ascii=False).encode("utf-8") if compact
                       else json_bytes(obj))


def write_jsonl(path: str | Path, records: list) -> None:
    """The whole file at once, atomically: a crash or a full disk never leaves half a line,
    and a resumed run rewrites exactly the records it has (no duplicates)."""
    text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records)
    atomic_write_text(path, text)


def append_jsonl(path: str | Path, obj) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- single checkpoints -------------------------------------------------------------------------
def _tensor_blob(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save as st_save
    # clone: safetensors refuses tensors that share storage (views of one buffer)
    return st_save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})


def save_checkpoint(stem: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, str]:
    """``stem``.safetensors + ``stem``.json; the JSON is written last and names the tensor
    file's size and SHA-256, so a checkpoint is complete exactly when its JSON exists and
    matches. Returns the SHA-256 of both files."""
    stem = Path(stem)
    blob = _tensor_blob(tensors)
    meta_bytes = json_bytes({**meta, "tensor_bytes": len(blob), "tensor_sha256": sha256(blob)})
    atomic_write_bytes(stem.with_suffix(".safetensors"), blob)
    atomic_write_bytes(stem.with_suffix(".json"), meta_bytes)
    return {"json": sha256(meta_bytes), "safetensors": sha256(blob)}


def read_checkpoint_bytes(stem: str | Path, digests: dict | None = None) -> tuple[bytes, bytes]:
    """The raw JSON and tensor bytes of a checkpoint, verified (sizes, SHA-256 named by its
    JSON, and ``digests`` of both files when given). Raises CheckpointError."""
    stem = Path(stem)
    jpath, tpath = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    try:
        meta_bytes = jpath.read_bytes()
        blob = tpath.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {stem} is unreadable: {e}") from None
    if digests and digests.get("json") and sha256(meta_bytes) != digests["json"]:
        raise CheckpointError(f"checkpoint {jpath} does not match the SHA-256 recorded when it was "
                              "written: modified or damaged after saving")
    meta = _parse_meta(meta_bytes, jpath)
    if meta.get("tensor_bytes") != len(blob):
        raise CheckpointError(f"checkpoint {tpath} has {len(blob)} bytes, its JSON says "
                              f"{meta.get('tensor_bytes')}: truncated or replaced")
    want = (digests or {}).get("safetensors") or meta.get("tensor_sha256")
    if want and sha256(blob) != want:
        raise CheckpointError(f"checkpoint {tpath} does not match its recorded SHA-256: "
                              "modified or damaged after saving")
    return meta_bytes, blob


def _parse_meta(meta_bytes: bytes, where) -> dict:
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {where} is not valid JSON ({e}): truncated or damaged") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {where} is not a JSON object")
    return meta


def parse_checkpoint(meta_bytes: bytes, blob: bytes, where="checkpoint") -> tuple[dict[str, torch.Tensor], dict]:
    """Verified bytes -> (tensors, meta). Pickle-free: safetensors and JSON only."""
    from safetensors.torch import load as st_load
    meta = _parse_meta(meta_bytes, where)
    try:
        tensors = st_load(blob)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{where}: tensor file is corrupt: {e}") from None
    return tensors, meta


def load_checkpoint(stem: str | Path, digests: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    meta_bytes, blob = read_checkpoint_bytes(stem, digests)
    return parse_checkpoint(meta_bytes, blob, Path(stem).with_suffix(".safetensors"))


# -- the resume checkpoints of a run folder -----------------------------------------------------
_NAME = re.compile(r"^ckpt-(\d{6,})\.json$")


class CheckpointStore:
    """Numbered checkpoints in ``folder`` and the ``latest.json`` pointer (see module doc)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.pointer = self.folder / "latest.json"

    def _read_pointer(self) -> dict | None:
        try:
            data = json.loads(self.pointer.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            log.warning("checkpoint pointer %s is unreadable (%s); looking for checkpoints by name",
                        self.pointer, e)
            return None
        return data if isinstance(data, dict) else None

    def _serials(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name)))

    def exists(self) -> bool:
        return self.pointer.exists() or bool(self._serials())

    def candidates(self) -> list[tuple[str, dict | None]]:
        """(name, digests) to try, newest first: the pointer's latest and previous, then
        (without a readable pointer) every numbered checkpoint."""
        ptr = self._read_pointer()
        out = []
        if ptr:
            for key in ("latest", "previous"):
                entry = ptr.get(key)
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    out.append((entry["name"], entry.get("sha256")))
        if not out:
            out = [(f"ckpt-{s:06d}", None) for s in reversed(self._serials())]
        return out

    def read_latest(self) -> tuple[bytes, bytes, str] | None:
        """Raw verified bytes of the newest good checkpoint: (json, tensors, name); None if the
        folder has none. A damaged newest checkpoint is reported and the previous one used;
        CheckpointError when none is usable."""
        cands = self.candidates()
        if not cands:
            return None
        problems = []
        for i, (name, digests) in enumerate(cands):
            try:
                if not re.fullmatch(r"ckpt-\d{6,}", name):
                    raise CheckpointError(f"{self.pointer} names {name!r}, not a checkpoint")
                meta_bytes, blob = read_checkpoint_bytes(self.folder / name, digests)
            except CheckpointError as e:
                problems.append(str(e))
                if i + 1 < len(cands):
                    log.warning("%s; trying the previous checkpoint", e)
                continue
            return meta_bytes, blob, name
        raise CheckpointError(f"no usable checkpoint in {self.folder}:\n  " + "\n  ".join(problems)
                              + "\nStart over with --fresh (or delete the folder).")

    def save(self, tensors: dict[str, torch.Tensor], meta: dict, before_switch=None) -> str:
        """Write a new checkpoint, verify it, then point latest.json at it; returns its name.
        On a failed write (disk full) the new files are removed, the pointer still names the
        previous good checkpoint, and CheckpointWriteError says so."""
        self.folder.mkdir(parents=True, exist_ok=True)
        ptr = self._read_pointer() or {}
        serials = self._serials()
        serial = max([int(ptr.get("serial", 0))] + serials) + 1
        name = f"ckpt-{serial:06d}"
        stem = self.folder / name
        prev = ptr.get("latest")
        try:
            digests = save_checkpoint(stem, tensors, {**meta, "format": FORMAT, "name": name})
            read_checkpoint_bytes(stem, digests)  # verify what reached the disk
            if before_switch is not None:
                before_switch(name)
            write_json(self.pointer, {"format": FORMAT, "serial": serial,
                                      "latest": {"name": name, "sha256": digests},
                                      "previous": prev})
        except (OSError, CheckpointError) as e:
            for suffix in (".safetensors", ".json"):
                _unlink_quietly(stem.with_suffix(suffix))
            kept = f"the previous checkpoint {prev['name']} is kept" if isinstance(prev, dict) \
                else "there is no earlier checkpoint"
            reason = _describe_os_error(e) if isinstance(e, OSError) and not isinstance(e, WriteError) else str(e)
            raise CheckpointWriteError(getattr(e, "errno", None) or errno.EIO,
                                       f"could not write checkpoint {stem}: {reason}; {kept} "
                                       f"({self.pointer})") from e
        self._prune(keep={name, prev["name"] if isinstance(prev, dict) else None})
        return name

    def _prune(self, keep: set) -> None:
        for p in self.folder.glob(".*.tmp"):  # left by a write that was killed
            _unlink_quietly(p)
        for s in self._serials():
            name = f"ckpt-{s:06d}"
            if name not in keep:
                for suffix in (".json", ".safetensors"):  # JSON first: never a JSON without tensors
                    _unlink_quietly(self.folder / f"{name}{suffix}")

    def clear(self) -> None:
        """Remove every resume checkpoint (``--fresh``)."""
        _unlink_quietly(self.pointer)
        for s in self._serials():
            for suffix in (".json", ".safetensors"):
                _unlink_quietly(self.folder / f"ckpt-{s:06d}{suffix}")
