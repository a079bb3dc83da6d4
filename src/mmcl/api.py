"""Python API mirroring the command line: ``mmcl.run("tuxpaint", overrides={...})``."""
from __future__ import annotations

from pathlib import Path


def run(preset: str, overrides: dict | list[str] | None = None, run_dir: str | Path | None = None,
        fresh: bool = False) -> dict:
    """Train and evaluate ``preset`` with ``overrides`` ({"train.epochs": 2} or ["train.epochs=2"]);
    returns the results dict also written to the run folder's results.json. A run folder that
    holds checkpoints of the same config is resumed from the newest one; ``fresh=True`` starts
    over."""
    from mmcl.config import build_config
    from mmcl.engine import Experiment
    return Experiment(build_config(preset, overrides), run_dir).run(fresh=fresh)
