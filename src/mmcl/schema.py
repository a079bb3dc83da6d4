"""The full config schema: mmcl.settings' core sections plus one section per registered plug-in
that declares settings, and the table of every key (type, default, doc, limits).

    method.<name>.*            a method's settings     (@register_method(name, settings=...))
    data.<name>.*              a data set's settings   (@register_dataset(name, settings=...))
    encoders.<slot>.<kind>.*   an encoder's settings, in every slot of its modality

The schema is rebuilt whenever the registry changes (a plug-in registered later, a test's toy
method), so ``mmcl run --help`` and docs/config.md list plug-in keys like every other key.
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import field, fields, is_dataclass, make_dataclass
from typing import Any, NamedTuple

from mmcl import plugins, registry, settings
from mmcl.settings import ConfigError


class Key(NamedTuple):
    key: str
    type: str
    default: Any
    doc: str
    limits: dict  # minimum / maximum / above / choices, as given to settings.setting


_cache: dict[str, Any] = {"version": None}


def _section(name: str, cls: type, doc: str):
    return (name, cls, field(default_factory=cls, metadata={"doc": doc}))


def _extend(base: type, parent: str, kind: str, names: list[str], *, slot_default=None) -> type:
    """A subclass of ``base`` with one section field per plug-in in ``names`` that has settings."""
    taken = {f.name for f in fields(base)}
    extra = []
    for name in names:
        cls = registry.REGISTRIES[kind][name]
        if cls.settings_class is None:
            continue
        if name in taken:
            raise ValueError(f"{kind} '{name}' has settings, but '{parent}.{name}' is already a config key: "
                             "rename the plug-in")
        extra.append(_section(name, cls.settings_class, f"settings of the {kind} '{name}'"))
    if not extra:
        return base
    new = make_dataclass(base.__name__, extra, bases=(base,))
    new.__module__ = base.__module__
    new.__doc__ = base.__doc__
    return new


def _encoders_class() -> type:
    """EncodersConfig whose slots carry the settings of the encoder kinds of their modality."""
    base_default = settings.EncodersConfig()
    slots = []
    for f in fields(settings.EncodersConfig):
        modality = settings.MODALITY_TYPES[f.name]
        kinds = [n for n, c in registry.REGISTRIES["encoder"].items() if getattr(c, "modality", None) == modality]
        slot_cls = _extend(settings.EncoderConfig, f"encoders.{f.name}", "encoder", sorted(kinds))
        default = getattr(base_default, f.name)
        values = {g.name: getattr(default, g.name) for g in fields(settings.EncoderConfig)}
        slots.append((f.name, slot_cls, field(default_factory=lambda c=slot_cls, v=values: c(**copy.deepcopy(v)),
                                              metadata=dict(f.metadata))))
    new = make_dataclass("EncodersConfig", slots, bases=(settings.EncodersConfig,))
    new.__module__ = settings.__name__
    return new


def config_class() -> type:
    """The Config dataclass of the plug-ins registered now (built-in ones loaded first)."""
    plugins.load_all()
    if _cache["version"] != registry.version():
        data = _extend(settings.DataConfig, "data", "dataset", sorted(registry.REGISTRIES["dataset"]))
        method = _extend(settings.MethodConfig, "method", "method", sorted(registry.REGISTRIES["method"]))
        encoders = _encoders_class()
        top = {f.name: f for f in fields(settings.Config)}
        cls = make_dataclass("Config", [
            (name, section, field(default_factory=section, metadata=dict(top[name].metadata)))
            for name, section in (("data", data), ("encoders", encoders), ("method", method))],
            bases=(settings.Config,))
        cls.__module__ = settings.__name__
        _cache.update(version=registry.version(), cls=cls, keys=None)
    return _cache["cls"]


def _iter(inst, prefix: str):
    for f in fields(inst):
        key, value = f"{prefix}{f.name}", getattr(inst, f.name)
        if is_dataclass(value):
            yield from _iter(value, key + ".")
        else:
            limits = {k: v for k, v in f.metadata.items() if k != "doc"}
            yield Key(key, _type_name(f.type), value, f.metadata.get("doc", ""), limits)


def _type_name(t) -> str:
    if isinstance(t, str):  # (modules with `from __future__ import annotations`)
        return t
    return str(t) if getattr(t, "__args__", None) else getattr(t, "__name__", str(t))


def keys() -> dict[str, Key]:
    """Every leaf key of the config, in order."""
    cls = config_class()
    if _cache.get("keys") is None:
        _cache["keys"] = {k.key: k for k in _iter(cls(), "")}
        _cache["groups"] = {k.rsplit(".", i)[0] for k in _cache["keys"] for i in range(1, k.count(".") + 1)}
        _cache["former"] = _former_keys()
    return _cache["keys"]


def groups() -> set[str]:
    """Every section of the config ('data', 'method.ewc', ...)."""
    keys()
    return _cache["groups"]


def _former_keys() -> dict[str, list[str]]:
    """Keys of an earlier release -> the key(s) that replaced them (none: retired)."""
    out: dict[str, list[str]] = {}
    for kind, parents in (("method", ["method"]), ("dataset", ["data"]),
                          ("encoder", [f"encoders.{f.name}" for f in fields(settings.EncodersConfig)])):
        for name, cls in registry.REGISTRIES[kind].items():
            for parent in parents:
                section = f"{parent}.{name}"
                for old, new in cls.former_keys.items():
                    # A former key with a dot is a whole key (data.sensor_length -> every slot's
                    # imu.length); one without sat in the section's parent. An encoder's former
                    # keys also sat in the slots of other modalities, where they had to keep their
                    # defaults: they are retired there, with no new key.
                    targets = out.setdefault(old if "." in old else f"{parent}.{old}", [])
                    if section in _cache["groups"]:
                        targets.append(f"{section}.{new}")
    return out


def former_keys() -> dict[str, list[str]]:
    keys()
    return _cache["former"]


def renamed_error(key: str, where: str = "") -> ConfigError | None:
    """The error for a key of an earlier release, naming the key(s) that replaced it; else None."""
    new = former_keys().get(key)
    if not new:
        return None
    src = f" (in {where})" if where else ""
    return ConfigError(f"config key '{key}'{src} was renamed: use {' or '.join(repr(n) for n in new)} "
                       "(each method, data set and encoder now keeps its settings in its own section)")


def closest(key: str) -> str:
    """' Did you mean ...?' for an unknown key, or a pointer to the list of keys."""
    names = list(keys())
    match = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
    if not match:  # also try the last component alone (e.g. 'epochs' -> 'train.epochs')
        tails = {k.split(".")[-1]: k for k in names}
        m = difflib.get_close_matches(key.split(".")[-1], list(tails), n=1, cutoff=0.6)
        match = [tails[m[0]]] if m else []
    return f" Did you mean '{match[0]}'?" if match else " Run 'mmcl run --help' for the list of keys."


def _limits_text(limits: dict) -> str:
    parts = []
    if "choices" in limits:
        parts.append("one of " + ", ".join(str(c) for c in limits["choices"]))
    if "minimum" in limits:
        parts.append(f">= {limits['minimum']}")
    if "above" in limits:
        parts.append(f"> {limits['above']}")
    if "maximum" in limits:
        parts.append(f"<= {limits['maximum']}")
    return "; ".join(parts)


def config_reference() -> str:
    """Markdown table of every config key (docs/config.md is generated from this)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for k in keys().values():
        default = "$MMCL_CACHE or ~/.cache/mmcl" if k.key == "data.cache_dir" else k.default
        allowed = _limits_text(k.limits)
        lines.append(f"| `{k.key}` | {k.type} | `{default}` | {k.doc}{f' (allowed: {allowed})' if allowed else ''} |")
    return "\n".join(lines) + "\n"


def migrate(d: dict) -> dict:
    """A saved config (an earlier release's run folder) with its former keys moved to their new
    places and retired ones dropped; a copy, the input is not changed."""
    out = copy.deepcopy(d)
    for old, new in former_keys().items():
        parts = old.split(".")
        cur = out
        for p in parts[:-1]:
            cur = cur.get(p) if isinstance(cur, dict) else None
            if cur is None:
                break
        if not isinstance(cur, dict) or parts[-1] not in cur:
            continue
        value = cur.pop(parts[-1])
        for key in new:
            target = out
            for p in key.split(".")[:-1]:
                target = target.setdefault(p, {})
            target.setdefault(key.split(".")[-1], copy.deepcopy(value))
    return out
