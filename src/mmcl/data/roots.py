"""Where a data set's files are: ``data.root``, else its environment variable, else the folder
last given to ``mmcl prepare <dataset> --root`` (recorded in ``<data.cache_dir>/roots.json``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from mmcl.data.cache import write_cache_json

ROOTS_FILE = "roots.json"  # in data.cache_dir: the root each data set was prepared from


def _roots(cache_dir: str) -> dict:
    """{data set: root} recorded by ``mmcl prepare --root`` ({} when none or unreadable)."""
    try:
        roots = json.loads((Path(os.path.expanduser(cache_dir)) / ROOTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return roots if isinstance(roots, dict) else {}


def dataset_root(data, dataset: str, env: str) -> str:
    """data.root, else $env, else the folder last given to ``mmcl prepare <dataset> --root``;
    "" when none is set."""
    return data.root or os.environ.get(env, "") or str(_roots(data.cache_dir).get(dataset, ""))


def remember_root(cache_dir: str, dataset: str, root: str) -> None:
    """``mmcl prepare <preset> --root DIR`` records DIR, so ``mmcl run <preset>`` finds it."""
    folder = Path(os.path.expanduser(cache_dir))
    folder.mkdir(parents=True, exist_ok=True)
    roots = _roots(cache_dir)
    roots[dataset] = str(Path(os.path.expanduser(root)).resolve())
    write_cache_json(folder / ROOTS_FILE, roots)
