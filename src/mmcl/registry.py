"""Name -> class tables for data sets, encoders and methods, filled by decorators.

A plug-in registers itself with its settings beside it::

    @dataclass
    class EWCSettings:
        penalty: float = setting("lambda of the quadratic penalty", 100.0, minimum=0.0)

    @register_method("ewc", settings=EWCSettings, defaults={"model": {"adapters": False}})
    class OnlineEWC(Method): ...

``settings`` (a dataclass of ``mmcl.settings.setting`` fields) becomes the config section
``method.ewc.*`` (data sets: ``data.<name>.*``; encoders: ``encoders.<slot>.<name>.*`` for the
slots of the encoder's modality); ``defaults`` are config values the method wants unless a
preset or an override says otherwise; ``former_keys`` maps keys of an earlier release (relative
to the section's parent: ``{"ewc_lambda": "penalty"}`` for ``method.ewc_lambda``; a whole
dotted key such as ``data.sensor_length`` for a key that sat elsewhere) to the new field, so
that an old key fails with the new name and an old run folder's config still reads.

This module imports nothing from mmcl and imports no plug-in: ``mmcl.plugins`` discovers the
built-in and third-party plug-ins, in one place above the tables.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable

REGISTRIES: dict[str, dict[str, type]] = {"dataset": {}, "encoder": {}, "method": {}}
_changes = [0]  # bumped on every registration: mmcl.config rebuilds its schema when it moves


def _register(kind: str, name: str, settings: type | None, defaults: dict | None,
              former_keys: dict | None) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in REGISTRIES[kind]:
            raise ValueError(f"{kind} '{name}' registered twice")
        REGISTRIES[kind][name] = cls
        cls.registered_name = name
        cls.settings_class = settings
        cls.config_defaults = dict(defaults or {})
        cls.former_keys = dict(former_keys or {})
        _changes[0] += 1
        return cls
    return deco


def register_dataset(name: str, settings: type | None = None, former_keys: dict | None = None):
    return _register("dataset", name, settings, None, former_keys)


def register_encoder(name: str, settings: type | None = None, former_keys: dict | None = None):
    return _register("encoder", name, settings, None, former_keys)


def register_method(name: str, settings: type | None = None, defaults: dict | None = None,
                    former_keys: dict | None = None):
    return _register("method", name, settings, defaults, former_keys)


def unregister(kind: str, name: str) -> None:
    """Remove a registration (tests that register a toy plug-in clean up with it)."""
    if REGISTRIES[kind].pop(name, None) is not None:
        _changes[0] += 1


def version() -> int:
    """A number that changes whenever a table changes."""
    return _changes[0]


def get(kind: str, name: str) -> type:
    """The class registered as name; KeyError naming the closest registered name otherwise."""
    table = REGISTRIES[kind]
    if name not in table:
        near = difflib.get_close_matches(str(name), list(table), n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise KeyError(f"unknown {kind} '{name}'.{hint} Known: {', '.join(sorted(table))} "
                       "(`mmcl list` describes them)")
    return table[name]


def describe(kind: str) -> list[tuple[str, str]]:
    """(name, first line of the docstring) of every registered class of a kind."""
    out = []
    for name, cls in sorted(REGISTRIES[kind].items()):
        text = (cls.__doc__ or "").strip().splitlines()
        out.append((name, text[0] if text else ""))
    return out
