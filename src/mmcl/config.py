"""Building a run's configuration: defaults, method defaults, presets and overrides, layered
and validated. Layers, later ones winning:

    built-in defaults (mmcl.settings, plus every registered plug-in's settings section)
    <- the method's defaults (``@register_method(name, defaults=...)``; e.g. the baselines
       run without cross-modality adapters: ``{"model": {"adapters": False}}``)
    <- the preset (``presets/*.yaml`` or a YAML file)
    <- ``key=value`` overrides (command line or Python API)

``method.name`` is resolved first (overrides, else the preset, else the default 'cma') to pick
the method's defaults. Unknown keys and wrong types fail with a message that names the key
and suggests the closest valid one; a key of an earlier release names its replacement.
"""
from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mmcl import registry, schema, validation
from mmcl.schema import config_reference
from mmcl.settings import MODALITY_TYPES, Config, ConfigError, MethodConfig

__all__ = ["Config", "ConfigError", "MODALITY_TYPES", "build_config", "config_reference", "from_dict",
           "iter_keys", "load_preset", "method_defaults", "parse_overrides", "preset_names", "to_dict",
           "to_yaml", "valid_keys"]


def iter_keys():
    """Yield (dotted key, type name, default, doc) for every leaf key of the config."""
    for k in schema.keys().values():
        yield k.key, k.type, k.default, k.doc


def valid_keys() -> list[str]:
    return list(schema.keys())


def preset_names() -> list[str]:
    files = resources.files("mmcl.presets")
    return sorted(p.name[:-5].replace("_", "-") for p in files.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict:
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist. Pass an existing YAML file, or one "
                              f"of the built-in presets: {', '.join(preset_names())}.")
        try:
            text, where = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read preset file {path}: {e}") from None
    else:
        fname = name.replace("-", "_") + ".yaml"
        res = resources.files("mmcl.presets") / fname
        if not res.is_file():
            near = difflib.get_close_matches(name, preset_names(), n=1)
            hint = f" Did you mean '{near[0]}'?" if near else ""
            raise ConfigError(f"unknown preset '{name}'.{hint} Available: {', '.join(preset_names())} "
                              "(or pass a path to a YAML file).")
        text, where = res.read_text(), f"preset '{name}'"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(e).split())}. Fix the file "
                          "(indent nested keys, e.g. 'train:' then '  epochs: 3').") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a YAML mapping of config keys (e.g. 'train:' then "
                          f"'  epochs: 3'), not a {type(data).__name__}")
    data.pop("description", None)
    validation.check_keys(data, where, check_values=True)
    return data


def _plain(v: Any) -> Any:
    """Python API values -> what OmegaConf accepts: numpy scalars, paths and tuples converted."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:  # numpy / torch scalar
        return v.item()
    return v


def parse_overrides(items: list[str] | dict | None) -> dict:
    """'a.b=1' strings (or a {'a.b': 1} dict) -> nested dict, values parsed as YAML."""
    if not items:
        return {}
    if isinstance(items, dict):
        pairs = [(str(k), _plain(v)) for k, v in items.items()]
    else:
        pairs = []
        for item in items:
            if "=" not in item:
                raise ConfigError(f"override '{item}' is not of the form key=value")
            k, v = item.split("=", 1)
            k = k.strip()
            if validation.key_type(k) == "str":  # keep strings raw: YAML would read 'off' as False
                value = v[1:-1] if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"" else v
            elif v == "":
                value = None  # 'key=' : reported below as "expects ..., got nothing"
            else:
                try:
                    value = yaml.safe_load(v)
                except yaml.YAMLError as e:
                    first = getattr(e, "problem", None) or str(e).strip().split("\n")[0] or type(e).__name__
                    hint = f" Example: {k}={validation.example(k)}" if validation.key_type(k) else ""
                    raise ConfigError(f"cannot read the value of '{k}' in '{item}': {first} "
                                      f"(values are read as YAML: lists as [a,b], quote strings "
                                      f"that contain ':' or '#').{hint}") from None
            pairs.append((k, value))
    nested: dict = {}
    keys, groups = schema.keys(), schema.groups()
    for k, v in pairs:
        if k in groups:
            raise validation.group_error(k)
        if k not in keys:
            raise validation.unknown_key_error(k)
        validation.check_value(k, v, "the overrides")
        cur = nested
        parts = k.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = v
    return nested


def method_defaults(name: str) -> dict:
    """The method's own defaults ({} when it has none or is not registered: validate() reports
    an unknown method), e.g. the baselines' ``{"model": {"adapters": False}}``."""
    schema.config_class()  # (loads the plug-ins)
    cls = registry.REGISTRIES["method"].get(str(name))
    if cls is None or not cls.config_defaults:
        return {}
    validation.check_keys(cls.config_defaults, f"the defaults of method '{name}'", check_values=True)
    return cls.config_defaults


def build_config(preset: str | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Defaults <- method defaults <- preset <- overrides, type-checked. The method's name is
    resolved first (overrides, else preset, else the default) so that its defaults can sit
    between the built-in defaults and the preset. Returns a plain Config dataclass."""
    base = OmegaConf.structured(schema.config_class())
    preset_layer = load_preset(preset) if preset else {}
    override_layer = parse_overrides(overrides)
    name = (override_layer.get("method", {}).get("name") or preset_layer.get("method", {}).get("name")
            or MethodConfig.name)
    layers = [base, OmegaConf.create(method_defaults(str(name)))]
    if preset:
        layers.append(OmegaConf.create(preset_layer))
    layers.append(OmegaConf.create(override_layer))
    try:
        merged = OmegaConf.merge(*layers)
    except (ValidationError, ConfigKeyError, OmegaConfBaseException) as e:
        key = getattr(e, "full_key", None) or ""
        msg = str(getattr(e, "msg", e)).strip().splitlines()[0]
        hint = f" Example: {key}={validation.example(key)}" if validation.key_type(key) else ""
        raise ConfigError(f"invalid value for config key '{key}': {msg}.{hint}") from None
    if preset:
        merged.preset = Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset
    cfg: Config = OmegaConf.to_object(merged)
    validation.validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def from_dict(d: dict) -> Config:
    """A saved config (config.yaml, a checkpoint's or results.json's) as a Config; keys of an
    earlier release are moved to their new places first, missing keys take their defaults."""
    d = schema.migrate(d)
    validation.check_keys(d, "saved config")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema.config_class()), OmegaConf.create(d)))
