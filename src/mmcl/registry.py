"""Name -> class registries for data sets, encoders and methods (`mmcl list` prints them)."""
from __future__ import annotations

from typing import Callable

REGISTRIES: dict[str, dict[str, type]] = {"dataset": {}, "encoder": {}, "method": {}}


def _register(kind: str, name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in REGISTRIES[kind]:
            raise ValueError(f"{kind} '{name}' registered twice")
        REGISTRIES[kind][name] = cls
        cls.registered_name = name
        return cls
    return deco


def register_dataset(name: str):
    return _register("dataset", name)


def register_encoder(name: str):
    return _register("encoder", name)


def register_method(name: str):
    return _register("method", name)


def get(kind: str, name: str) -> type:
    """The class registered as name; KeyError naming the closest registered name otherwise."""
    load_all()
    table = REGISTRIES[kind]
    if name not in table:
        import difflib
        near = difflib.get_close_matches(str(name), list(table), n=1)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        raise KeyError(f"unknown {kind} '{name}'.{hint} Known: {', '.join(sorted(table))} "
                       "(`mmcl list` describes them)")
    return table[name]


def describe(kind: str) -> list[tuple[str, str]]:
    load_all()
    out = []
    for name, cls in sorted(REGISTRIES[kind].items()):
        text = (cls.__doc__ or "").strip().splitlines()
        out.append((name, text[0] if text else ""))
    return out


def load_all() -> None:
    """Import the built-in data sets, encoders and methods (their @register_* decorators run)."""
    import mmcl.data  # noqa: F401
    import mmcl.encoders  # noqa: F401
    import mmcl.methods  # noqa: F401


_load_all = load_all  # the former private name
