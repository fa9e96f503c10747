"""Guard: the import graph of compress/, export/ and runtimes/ stays layered.

- No cycle between the modules of one package (lazy imports inside functions count: they only hide a
  cycle until the day someone moves them to the top). Imports under ``if TYPE_CHECKING:`` do not
  count: with postponed annotations they never run.
- No private name (``_x``) of another package, imported or read off a module
  (``models._ARTIFACT_LOADERS``): what another package needs is public API, or the code is in the
  wrong place.

The graph is read from the source with ast, so the test imports nothing and takes well under a second.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compress", "export", "runtimes")


def _modules() -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        for p in sorted((ROOT / top).rglob("*.py")):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


MODULES = _modules()


def _package(mod: str) -> str:
    return mod if MODULES[mod].name == "__init__.py" else mod.rsplit(".", 1)[0]


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def _imports(mod: str) -> list[tuple[str, str | None, ast.AST]]:
    """(module imported from, name imported or None, node) for every runtime import of ``mod``."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text())
    here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    out: list[tuple[str, str | None, ast.AST]] = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            out += [(target, a.name, node) for a in node.names]
    return out


def _target_module(target: str, name: str | None) -> str | None:
    if name and f"{target}.{name}" in MODULES:
        return f"{target}.{name}"
    return target if target in MODULES else None


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod in MODULES:
        for target, name, _ in _imports(mod):
            t = _target_module(target, name)
            if t and t != mod and MODULES[t].name != "__init__.py" and _package(t) == _package(mod):
                g[mod].add(t)
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_package_imports_itself_in_a_circle():
    g = _graph()
    cycles = _cycles(g)
    detail = ["; ".join(f"{m} -> {', '.join(sorted(g[m] & set(c)))}" for m in c) for c in cycles]
    assert not cycles, "import cycles: " + " | ".join(detail)


def test_no_private_name_is_taken_from_another_package():
    bad = []
    for mod, path in MODULES.items():
        aliases: dict[str, str] = {}  # local name -> first-party module it is bound to
        for target, name, node in _imports(mod):
            t = _target_module(target, name)
            if name is not None and _private(name) and f"{target}.{name}" not in MODULES \
                    and target in MODULES and _package(target) != _package(mod):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {target} import {name}")
            if t is not None and (name is None or t == f"{target}.{name}"):
                alias = next(a.asname or a.name for a in node.names if a.name == (name or target))
                aliases[alias.split(".")[0] if name is None else alias] = t
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name):
                t = aliases.get(node.value.id)
                if t is not None and _package(t) != _package(mod) and t != mod:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "private names used across packages:\n" + "\n".join(sorted(set(bad)))


def test_the_guard_sees_a_cycle_and_a_private_import():
    """The checks themselves work: a made-up graph with a cycle is caught."""
    assert _cycles({"a.x": {"a.y"}, "a.y": {"a.x"}, "a.z": set()}) == [["a.x", "a.y"]]
    assert _private("_ARTIFACT_LOADERS") and not _private("__version__")
