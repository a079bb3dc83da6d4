"""Discovery of the plug-ins (data sets, encoders, methods): the one place that imports them.

Built-in plug-ins are the modules of the packages ``mmcl.data``, ``mmcl.encoders`` and
``mmcl.methods``, every one imported here (a new method is one new file in ``methods/``: no
list to extend).
Third-party ones are found two ways, both imported once, after the built-ins:

- the ``mmcl.plugins`` entry-point group of installed packages
  (``[project.entry-points."mmcl.plugins"] mymethod = "mypackage.mymethod"``);
- ``$MMCL_PLUGINS``: module names separated by commas (``MMCL_PLUGINS=my_method`` with
  ``my_method.py`` on ``PYTHONPATH``), for a method under development that is not a package.

A plug-in module registers its classes with the decorators of mmcl.registry when imported.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from importlib import metadata

ENV = "MMCL_PLUGINS"
BUILT_IN = ("mmcl.data", "mmcl.encoders", "mmcl.methods")
_loaded: set[str] = set()


def _import(name: str, origin: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"cannot import the mmcl plug-in '{name}' ({origin}): {e}") from e
    _loaded.add(name)


def load_all() -> None:
    """Import the built-in plug-ins, then the installed and $MMCL_PLUGINS ones not yet imported."""
    for package in BUILT_IN:
        if package in _loaded:
            continue
        path = importlib.import_module(package).__path__
        for info in pkgutil.iter_modules(path, package + "."):
            importlib.import_module(info.name)  # each import registers its classes
        _loaded.add(package)
    for ep in metadata.entry_points(group="mmcl.plugins"):
        if ep.value not in _loaded:
            _import(ep.value, f"entry point '{ep.name}' of group mmcl.plugins")
    for name in filter(None, (s.strip() for s in os.environ.get(ENV, "").split(","))):
        if name not in _loaded:
            _import(name, f"${ENV}")
