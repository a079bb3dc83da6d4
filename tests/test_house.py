"""The shape of the package: no import cycle among mmcl's modules (imports inside functions
counted too), no source file over 400 lines, no private name imported from another module."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "mmcl"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported_names(module: str, path: Path, mods: dict[str, Path]):
    """(module imported, name imported from it or None) for every import statement anywhere in
    the file, relative imports resolved."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                yield (sub, None) if sub in mods else (base, a.name)


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for target, _ in imported_names(m, path, mods):
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                t = owner(target)
                if t and t != m:
                    graph[m].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_counts_imports_inside_functions(tmp_path):
    pkg = tmp_path / "mmcl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from mmcl import b\n")
    (pkg / "b.py").write_text("from .a import f\n")
    mods = {"mmcl": pkg / "__init__.py", "mmcl.a": pkg / "a.py", "mmcl.b": pkg / "b.py"}
    graph = import_graph(mods)
    assert graph["mmcl.a"] == {"mmcl.b"} and graph["mmcl.b"] == {"mmcl.a"}
    assert find_cycle(graph) is not None


def test_no_import_cycle():
    cycle = find_cycle(import_graph(modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_source_file_over_the_limit():
    long = {str(p.relative_to(SRC)): n for p in modules().values()
            if (n := p.read_text(encoding="utf-8").count("\n")) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_no_private_name_imported_from_another_module():
    mods = modules()
    crossing = [f"{m} imports {name} from {target}" for m, path in mods.items()
                for target, name in imported_names(m, path, mods)
                if name and name.startswith("_") and not name.startswith("__") and target.startswith(PACKAGE)]
    assert not crossing, crossing


def test_the_settings_schema_and_the_registry_import_nothing_from_mmcl():
    mods = modules()
    graph = import_graph(mods)
    for leaf in ("mmcl.settings", "mmcl.registry"):
        assert graph[leaf] == set(), f"{leaf} imports {graph[leaf]}"
