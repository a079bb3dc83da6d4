"""Checks of config keys and values, with messages that name the key, the expected value and
an example: unknown or renamed keys, values of the wrong type, values outside a field's limits
(``mmcl.settings.setting`` metadata), names that must be registered, and the checks a plug-in
adds with a ``check_config(cfg)`` class method (encoders: ``check_config(cfg, slot)``)."""
from __future__ import annotations

import difflib
import numbers
import os
import re
from typing import Any

from mmcl import registry, schema
from mmcl.settings import MODALITY_TYPES, ConfigError, check_names

_TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string",
               "list[str]": "a list of strings", "list[float]": "a list of numbers"}
_BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


def key_type(key: str) -> str | None:
    k = schema.keys().get(key)
    return k.type if k else None


def example(key: str) -> str:
    """A valid command-line value for key (from its default), for error messages."""
    k = schema.keys()[key]
    default, typ = k.default, k.type
    if typ.startswith("list"):
        items = list(default)[:2] if typ == "list[str]" else list(default)
        items = items or (["a", "b"] if typ == "list[str]" else [0.5, 0.5])
        return "[" + ",".join(str(x) for x in items) + "]"
    if typ == "bool":
        return str(default).lower()
    if typ == "str" and key == "data.root":
        return "/path/to/stamps"
    if typ == "str" and key == "data.cache_dir":
        return "/path/to/cache"
    return str(default) if default != "" else "NAME"


def _scalar_ok(typ: str, v: Any) -> bool:
    """Whether OmegaConf can take v for a key of type typ (Python API values included:
    numpy numbers, paths, numeric strings)."""
    if isinstance(v, bool):
        return typ in ("bool",)
    if typ == "int":
        if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral):
            return float(v).is_integer()
        if isinstance(v, str):
            return re.fullmatch(r"\s*[-+]?\d+\s*", v) is not None
        return isinstance(v, numbers.Integral)
    if typ == "float":
        if isinstance(v, str):
            try:
                float(v)
                return True
            except ValueError:
                return False
        return isinstance(v, numbers.Real)
    if typ == "bool":
        return (isinstance(v, str) and v.strip().lower() in _BOOL_WORDS) or (
            isinstance(v, numbers.Integral) and v in (0, 1))
    if typ == "str":  # (a YAML boolean for a string key is almost always an unquoted 'off'/'no')
        return isinstance(v, (str, numbers.Real, os.PathLike))
    return True


def check_value(key: str, v: Any, where: str = "") -> None:
    """Raise ConfigError naming key, the expected type and an example when v cannot be one."""
    typ = key_type(key)
    if typ is None:
        return
    if typ.startswith("list["):
        inner = typ[5:-1]
        ok = isinstance(v, (list, tuple)) and all(_scalar_ok(inner, x) for x in v)
    else:
        ok = _scalar_ok(typ, v)
    if ok:
        return
    got = "nothing" if v is None else f"{v!r} ({type(v).__name__})"
    src = f" in {where}" if where else ""
    hint = ""
    if typ == "str" and isinstance(v, bool):
        hint = " (YAML reads unquoted yes/no/on/off as booleans: quote the value)"
    elif typ.startswith("list[") and not isinstance(v, (list, tuple)):
        hint = " (write lists in brackets, without spaces on the command line)"
    raise ConfigError(f"config key '{key}' expects {_TYPE_WORDS.get(typ, typ)}, got {got}{src}{hint}. "
                      f"Example: {key}={example(key)}")


def group_error(key: str, where: str = "") -> ConfigError:
    members = [k for k in schema.keys() if k.startswith(key + ".")]
    first = members[0]
    return ConfigError(f"'{key}' is a group of config keys, not a key{where}: set its keys one by one, "
                       f"e.g. {first}={example(first)} (its keys: {', '.join(members)})")


def unknown_key_error(key: str, where: str = "") -> ConfigError:
    renamed = schema.renamed_error(key, where)
    if renamed is not None:
        return renamed
    return ConfigError(f"unknown config key '{key}'{f' in {where}' if where else ''}.{schema.closest(key)}")


def check_keys(d: dict, where: str, prefix: str = "", check_values: bool = False) -> None:
    """Reject unknown keys with the closest valid key named (before OmegaConf's terser error);
    with check_values, also values of the wrong type (naming the key and the expected type)."""
    keys, groups = schema.keys(), schema.groups()
    for k, v in d.items():
        full = f"{prefix}{k}"
        if full in groups:
            if not isinstance(v, dict):
                raise group_error(full, f" (in {where})")
            check_keys(v, where, full + ".", check_values)
        elif full not in keys:
            raise unknown_key_error(full, where)
        elif check_values:
            check_value(full, v, where)


def get_key(cfg, key: str):
    cur = cfg
    for p in key.split("."):
        cur = getattr(cur, p)
    return cur


def did_you_mean(value: str, choices) -> str:
    near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{near[0]}'?" if near else ""


def _check_limits(cfg) -> None:
    """Every key's limits from its field metadata: choices, minimum, maximum, above."""
    for k in schema.keys().values():
        if not k.limits:
            continue
        v = get_key(cfg, k.key)
        choices = k.limits.get("choices")
        if choices is not None and v not in choices:
            raise ConfigError(f"config key '{k.key}' = {v!r} is not one of {', '.join(map(str, choices))}."
                              f"{did_you_mean(v, choices)}")
        if "minimum" in k.limits and v < k.limits["minimum"]:
            raise ConfigError(f"config key '{k.key}' must be at least {k.limits['minimum']}, got {v}")
        if "maximum" in k.limits and v > k.limits["maximum"]:
            raise ConfigError(f"config key '{k.key}' must be at most {k.limits['maximum']}, got {v}")
        if "above" in k.limits and not v > k.limits["above"]:
            raise ConfigError(f"config key '{k.key}' must be greater than {k.limits['above']}, got {v}")


def _check_registered(cfg) -> list[tuple[type, tuple]]:
    """Names that must be registered (method, data set, encoders): fail before any data work.
    Returns the plug-ins in use with the arguments of their check_config."""
    used = []
    checks = [("method.name", "method", cfg.method.name), ("data.dataset", "dataset", cfg.data.dataset)]
    checks += [(f"encoders.{m}.kind", "encoder", getattr(cfg.encoders, m).kind) for m in cfg.data.modalities]
    for key, kind, name in checks:
        table = registry.REGISTRIES[kind]
        if name not in table:
            raise ConfigError(f"config key {key}='{name}' is not a registered {kind}."
                              f"{did_you_mean(name, table)} Known: {', '.join(sorted(table))} "
                              f"(`mmcl list` describes them)")
        slot = key.split(".")[1]
        takes = getattr(table[name], "modality", None)
        if kind == "encoder" and takes and takes != MODALITY_TYPES[slot]:
            fits = sorted(n for n, c in table.items() if getattr(c, "modality", None) == MODALITY_TYPES[slot])
            raise ConfigError(f"config key {key}='{name}': encoder '{name}' takes {takes} input, and "
                              f"modality '{slot}' is {MODALITY_TYPES[slot]}. Use one of: {', '.join(fits)}")
        used.append((table[name], (cfg, slot) if kind == "encoder" else (cfg,)))
    return used


def validate(cfg) -> None:
    _check_limits(cfg)
    check_names("data.modalities", cfg.data.modalities, tuple(MODALITY_TYPES), example("data.modalities"))
    if not cfg.adapter.top_k <= cfg.adapter.num_experts:
        raise ConfigError(f"adapter.top_k={cfg.adapter.top_k} must be between 1 and adapter.num_experts="
                          f"{cfg.adapter.num_experts}")
    if len(cfg.data.split) != 3 or abs(sum(cfg.data.split) - 1) > 1e-6 or min(cfg.data.split) < 0:
        raise ConfigError(f"data.split={cfg.data.split} must be three non-negative fractions summing to 1")
    for cls, args in _check_registered(cfg):
        hook = getattr(cls, "check_config", None)
        if hook is not None:
            hook(*args)
