"""mmcl: multi-modal continual learning.

``mmcl.run(preset, overrides)`` trains and evaluates (mmcl.api.run); it is imported on first
use, so that ``import mmcl.settings`` and the command line's help stay light.
"""
from mmcl.version import __version__

__all__ = ["__version__", "run"]


def __getattr__(name: str):
    if name == "run":
        from mmcl.api import run
        return run
    raise AttributeError(f"module 'mmcl' has no attribute '{name}'")
