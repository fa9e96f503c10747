"""Guard: the import graph of compress/, export/ and runtimes/ stays layered.

Every import statement counts: at the top of a module, inside a function (lazy imports only hide a
cycle until the day someone moves them to the top) and under ``if TYPE_CHECKING:``. Imports by string
(``importlib``, a lazy table of module names, a ``"module:attr"`` reference) count for the layers and
the pipeline's order; a cycle is a loop of import statements (a registry that names its implementations
by string, as runtimes.base names torch_runtime, is how a lower module avoids one). What is checked:

- No cycle between the modules of one package; compress.pipeline imports in the order data flows.
- No layer imports a layer above it (:func:`layer`): model loading does not know the quantize stage,
  an exporter does not know bench. compress.kinds is the one table that names code of every layer; its
  ``"module:attr"`` references are what lower layers read instead of importing upward, so the layer
  rule does not follow them.
- No private name (``_x``) of another package, imported or read off a module
  (``models._ARTIFACT_LOADERS``), and no name taken from another package through a module that only
  imports it itself: what another package needs is public API of the module that defines it.
- Chat runs artifacts through runtimes/, never through an exporter's internals; nothing outside tests/
  imports from tests/ or puts it on ``sys.path``.

The graph is read from the source with ast, so the test imports nothing and takes well under a second.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compress", "export", "runtimes")
# compress.pipeline's modules, each importing only those before it (recipe <- context <- checks <- ...)
PIPELINE_ORDER = ("recipe", "context", "checks", "stages", "runner", "cli")
KINDS_TABLE = "compress.kinds"


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


def layer(mod: str) -> int:
    """0 the core (manifests, configs, model loading, data, the kinds table), 1 runtimes, 2 the stages that
    make artifacts, 3 the exporters, 4 measuring (bench, diagnose, chat), 5 commands and the pipeline."""
    parts = mod.split(".")
    if parts[-1] == "cli" or parts[:2] == ["compress", "pipeline"]:
        return 5
    if parts[0] == "runtimes":
        return 1
    if parts[0] == "export":
        return 3
    sub = parts[1] if len(parts) > 1 else ""
    return {"quantize": 2, "prune": 2, "distill": 2, "harness": 4, "diagnose": 4, "chat": 4}.get(sub, 0)


def _package(mod: str) -> str:
    return mod if MODULES[mod].name == "__init__.py" else mod.rsplit(".", 1)[0]


def _here(mod: str) -> list[str]:
    """The package a module's relative imports start from."""
    return mod.split(".") if MODULES[mod].name == "__init__.py" else mod.split(".")[:-1]


def _target_module(target: str, name: str | None) -> str | None:
    if name and f"{target}.{name}" in MODULES:
        return f"{target}.{name}"
    return target if target in MODULES else None


def _statement_imports(mod: str, tree: ast.AST) -> list[tuple[str, str | None, ast.AST]]:
    """(module imported from, name imported or None, node) for every import statement."""
    here = _here(mod)
    out: list[tuple[str, str | None, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            out += [(target, a.name, node) for a in node.names]
    return out


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}


def _string_imports(mod: str, tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """First-party modules named by a string: ``"compress.quantize.artifact"``, ``"export.gguf.cli:run"``,
    or ``".artifact"`` in a module that calls ``importlib.import_module`` (a lazy table of its package)."""
    relative = any(isinstance(n, ast.Attribute) and n.attr == "import_module" for n in ast.walk(tree))
    skip = _docstrings(tree)
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        name = node.value.partition(":")[0]
        if relative and name.startswith(".") and len(name) > 1:
            dots = len(name) - len(name.lstrip("."))
            here = _here(mod)
            name = ".".join(here[: len(here) - dots + 1] + [name.lstrip(".")])
        if name in MODULES:
            out.append((name, node))
    return out


def _all_imports(mod: str, source: str | None = None) -> list[tuple[str, int, str]]:
    """(first-party module, line, "statement" or "string") for every import of ``mod``."""
    tree = ast.parse(MODULES[mod].read_text() if source is None else source)
    out = []
    for target, name, node in _statement_imports(mod, tree):
        t = _target_module(target, name)
        if t is not None:
            out.append((t, node.lineno, "statement"))
    out += [(t, node.lineno, "string") for t, node in _string_imports(mod, tree)]
    return out


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod in MODULES:
        for t, _, how in _all_imports(mod):
            if how == "statement" and t != mod and MODULES[t].name != "__init__.py" and _package(t) == _package(mod):
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


def _upward(mod: str, source: str | None = None) -> list[str]:
    """The imports of ``mod`` that reach a higher layer (the kinds table's references excepted)."""
    return [f"{MODULES[mod].relative_to(ROOT)}:{line}: {how} import of {t} (layer {layer(t)} > {layer(mod)})"
            for t, line, how in _all_imports(mod, source)
            if layer(t) > layer(mod) and not (mod == KINDS_TABLE and how == "string")]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined(mod: str) -> set[str]:
    """Names a module defines itself (functions, classes, assignments) or declares public (``__all__``)."""
    tree = ast.parse(MODULES[mod].read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in getattr(node, "targets", [])):
                names |= {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant)}
    return names


def test_no_package_imports_itself_in_a_circle():
    g = _graph()
    cycles = _cycles(g)
    detail = ["; ".join(f"{m} -> {', '.join(sorted(g[m] & set(c)))}" for m in c) for c in cycles]
    assert not cycles, "import cycles: " + " | ".join(detail)


def test_the_pipeline_imports_in_the_order_data_flows():
    """recipe <- context <- checks <- stages <- runner <- cli: each module only imports those before it, and
    a new module of the package takes its place in PIPELINE_ORDER."""
    pipeline = {m.rsplit(".", 1)[1] for m in MODULES if m.startswith("compress.pipeline.")}
    assert pipeline == set(PIPELINE_ORDER), f"place every module of compress.pipeline in PIPELINE_ORDER: {pipeline}"
    bad = []
    for i, name in enumerate(PIPELINE_ORDER):
        mod = f"compress.pipeline.{name}"
        for t, line, how in _all_imports(mod):
            if t.startswith("compress.pipeline.") and t.rsplit(".", 1)[1] not in PIPELINE_ORDER[:i]:
                bad.append(f"{MODULES[mod].relative_to(ROOT)}:{line}: {name} imports {t.rsplit('.', 1)[1]} ({how})")
    assert not bad, "compress.pipeline imports against the flow:\n" + "\n".join(bad)


def test_no_layer_imports_a_layer_above_it():
    bad = [b for mod in MODULES for b in _upward(mod)]
    assert not bad, "imports that reach up a layer:\n" + "\n".join(bad)


def test_no_private_name_is_taken_from_another_package():
    bad = []
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}  # local name -> first-party module it is bound to
        for target, name, node in _statement_imports(mod, tree):
            t = _target_module(target, name)
            if name is not None and _private(name) and f"{target}.{name}" not in MODULES \
                    and target in MODULES and _package(target) != _package(mod):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {target} import {name}")
            if t is not None and (name is None or t == f"{target}.{name}"):
                alias = next(a.asname or a.name for a in node.names if a.name == (name or target))
                aliases[alias.split(".")[0] if name is None else alias] = t
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name):
                t = aliases.get(node.value.id)
                if t is not None and _package(t) != _package(mod) and t != mod:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
        for t, node in _string_imports(mod, tree):
            attr = node.value.partition(":")[2]
            if attr and _private(attr):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not bad, "private names used across packages:\n" + "\n".join(sorted(set(bad)))


def test_no_name_is_taken_from_another_package_through_a_module_that_only_imports_it():
    """``from compress.gguf_import import check_ids`` worked while gguf_import imported it from
    compress.data; an exporter then depended on the GGUF importer for its token ids."""
    defined = {m: _defined(m) for m in MODULES}
    bad = []
    for mod, path in MODULES.items():
        for target, name, node in _statement_imports(mod, ast.parse(path.read_text())):
            if name in (None, "*") or target not in MODULES or MODULES[target].name == "__init__.py" \
                    or f"{target}.{name}" in MODULES or _package(target) == _package(mod):
                continue
            if name not in defined[target]:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {target} import {name}")
    assert not bad, "names taken through a module that does not define them:\n" + "\n".join(bad)


def test_chat_runs_artifacts_through_runtimes_not_through_an_exporter():
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line}: {t}" for m in MODULES if m.startswith("compress.chat")
           for t, line, _ in _all_imports(m) if t.split(".")[0] == "export"]
    assert not bad, "chat imports export code:\n" + "\n".join(bad)


def test_nothing_outside_tests_imports_from_tests():
    """benchmarks/gate.py once put tests/ on sys.path for the tiny models: they live in compress.tiny."""
    test_modules = {p.stem for p in (ROOT / "tests").rglob("*.py")} - {"__init__"}
    files = [*MODULES.values(), *(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "examples").rglob("*.py")]
    bad = []
    for path in files:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module.split(".")[0]]
            bad += [f"{path.relative_to(ROOT)}:{node.lineno}: import {n}" for n in names if n in test_modules]
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("insert", "append") and "sys.path" in ast.unparse(node.func.value) and \
                    "tests" in ast.unparse(node):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not bad, "reaching into tests/:\n" + "\n".join(bad)


def test_the_guard_sees_cycles_string_imports_and_upward_imports():
    """The checks themselves work, on made-up graphs and sources."""
    assert _cycles({"a.x": {"a.y"}, "a.y": {"a.x"}, "a.z": set()}) == [["a.x", "a.y"]]
    assert _private("_ARTIFACT_LOADERS") and not _private("__version__")
    stage_by_string = ('_STAGE_MODULES = {"quantize": "compress.quantize.artifact"}\n'
                       "def f(stage):\n    import importlib\n    importlib.import_module(_STAGE_MODULES[stage])\n")
    assert _upward("compress.models", stage_by_string) == [
        "compress/models.py:1: string import of compress.quantize.artifact (layer 2 > 0)"]
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .pipeline.runner import Context\n"
    assert [t for t, _, _ in _all_imports("compress.models", typing_only)] == ["compress.pipeline.runner"]
    lazy_table = '_LAZY = {"run_quantize": ".run"}\nimport importlib\nimportlib.import_module(_LAZY["x"], __name__)\n'
    assert ("compress.quantize.run", 1, "string") in _all_imports("compress.quantize", lazy_table)
    assert _upward("compress.kinds", 'X = "export.gguf.cli:run"\n') == []  # the table's references
    # runtimes.base names its own modules by string (its registry); one naming a layer above it is caught
    registry = '_RUNTIMES = {"x": ("runtimes.torch_runtime", "T", "torch", ("compress.harness.targets",))}\n'
    assert _upward("runtimes.base", registry) == [
        "runtimes/base.py:1: string import of compress.harness.targets (layer 4 > 1)"]
    assert layer("compress.models") < layer("compress.quantize.run") < layer("export.gguf.validate") \
        < layer("compress.harness.targets") < layer("compress.pipeline.runner")
