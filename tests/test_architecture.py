"""The layering of ``src/lorentz_rag`` (docs/architecture.md), checked by reading every module's imports.

geometry <- nn, data <- models <- training, eval <- integrations <- quickstart, cli (and the ``lorentz_rag``
facade). A module may import its own layer or a lower one, never a higher one, and no set of modules may
import each other in a cycle. lorentz_rag's own modules are imported at the top of a module: a function-local
import of one hides a dependency (and, often, a cycle), so only the modules in LOCAL_IMPORTS_ALLOWED do it,
for the reason given there.
Imports under ``if TYPE_CHECKING:`` are for annotations only and are not counted.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Layer of each top-level part of the package; a higher number may import a lower one.
LAYERS = {
    "lorentz_rag._version": 0,
    "lorentz_rag.errors": 0,
    "lorentz_rag.atomic_files": 0,
    "lorentz_rag.store_specs": 0,
    "lorentz_rag.folder_lock": 0,
    "lorentz_rag.geometry": 1,
    "lorentz_rag.nn": 2,
    "lorentz_rag.data": 2,
    "lorentz_rag.models": 3,
    "lorentz_rag.search": 3,
    "lorentz_rag.training": 4,
    "lorentz_rag.eval": 4,
    "lorentz_rag.integrations": 5,
    "lorentz_rag.stores": 5,
    "lorentz_rag.quickstart": 6,
    "lorentz_rag.quickstart_data": 6,
    "lorentz_rag.quickstart_eval": 6,
    "lorentz_rag.quickstart_report": 6,
    "lorentz_rag.cli": 6,
    "lorentz_rag": 7,  # the package facade: lazily re-exports build_model / load_model
}

#: The only modules that may import lorentz_rag modules inside a function, and why (docs/architecture.md).
LOCAL_IMPORTS_ALLOWED = {
    "lorentz_rag": "the facade re-exports build_model / load_model lazily, so `import lorentz_rag` stays light",
    "lorentz_rag.eval.rag.command": "the RAG flags, read by `lorentz-rag --help` without torch; the handler imports "
    "the pipeline when it runs",
    "lorentz_rag.eval.rag": "the package re-exports the RAG pipeline lazily (by name), so the RAG flags and "
    "`lorentz-rag --help` do not import its dependencies",
    "lorentz_rag.models.st_export": "sentence-transformers loads a saved folder through this module, which finds "
    "the loader (models.factory, above it) by name: see ALLOWED_CYCLES",
    "lorentz_rag.models.io": "saving writes the sentence-transformers files; st_export subclasses their modules, "
    "whose import takes seconds, so building or loading a model does not pay for it",
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "lorentz_rag").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer_of(module: str) -> int:
    """The layer of ``module``: that of its longest prefix in :data:`LAYERS`."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"{module} has no layer: add it (or its package) to LAYERS and docs/architecture.md")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """lorentz_rag modules an import statement loads (``from pkg import submodule`` counts as the submodule)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in MODULES]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source not in MODULES:
        return []
    submodules = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in MODULES]
    names_from_source = [alias for alias in node.names if f"{source}.{alias.name}" not in MODULES]
    return submodules + ([source] if names_from_source else [])


def _import_by_name(node: ast.AST) -> str | None:
    """The module named by ``importlib.import_module("...")`` / ``import_module("...")`` with a literal string,
    else None (a computed name, like the facade's lazy table, cannot be read statically)."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    arg = node.args[0]
    if name == "import_module" and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    return None


def imports_of(module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(lorentz_rag modules ``module`` imports at run time, [(line, target)] of those imported inside a function)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    local: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)) or _import_by_name(node) is not None:
            if isinstance(node, ast.Call):  # importlib.import_module("lorentz_rag....") is an import too
                targets = [t for t in [_import_by_name(node)] if t in MODULES and t != module]
            else:
                targets = [t for t in _targets(node, module, is_package) if t != module]
            found.update(targets)
            if in_function:
                local.extend((node.lineno, t) for t in targets)
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found, local


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, (targets, _) in GRAPH.items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


#: The import cycles that are allowed, each with its reason; every other cycle fails the test below.
ALLOWED_CYCLES = {
    (
        "lorentz_rag.models.base",
        "lorentz_rag.models.euclidean",
        "lorentz_rag.models.factory",
        "lorentz_rag.models.hyte_fh_encoder",
        "lorentz_rag.models.hyte_h",
        "lorentz_rag.models.io",
        "lorentz_rag.models.st_export",
    ): "(the model classes are in it because they import base, and factory imports them) a saved folder is also a sentence-transformers model: saving (base -> io) writes st_export's module files, "
    "and sentence-transformers loads a folder by calling st_export, which must reach the loader (factory) that "
    "knows every model class. Both edges into st_export / factory are function-local, so importing any of "
    "these modules imports none of the others in a loop",
}


def test_no_import_cycles() -> None:
    cycles = _cycles({module: targets for module, (targets, _) in GRAPH.items()})
    unexpected = [c for c in cycles if tuple(c) not in ALLOWED_CYCLES]
    assert not unexpected, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in unexpected)


def test_every_allowed_cycle_still_exists() -> None:
    cycles = {tuple(c) for c in _cycles({module: targets for module, (targets, _) in GRAPH.items()})}
    stale = [c for c in ALLOWED_CYCLES if c not in cycles]
    assert not stale, f"these cycles are gone: remove them from ALLOWED_CYCLES: {stale}"


def test_imports_by_name_are_seen() -> None:
    tree = ast.parse('import importlib\nimportlib.import_module("lorentz_rag.models.factory")\n')
    calls = [n for n in ast.walk(tree) if _import_by_name(n) is not None]
    assert [_import_by_name(n) for n in calls] == ["lorentz_rag.models.factory"]


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_lorentz_rag_modules_are_imported_at_the_top() -> None:
    local = [
        f"{MODULES[module].relative_to(SRC)}:{line} imports {target} inside a function"
        for module, (_, imports) in GRAPH.items()
        if module not in LOCAL_IMPORTS_ALLOWED
        for line, target in imports
    ]
    assert not local, "function-local imports of lorentz_rag modules:\n" + "\n".join(local)


@pytest.mark.parametrize("module", ["lorentz_rag", "lorentz_rag.cli", "lorentz_rag.geometry.similarity"])
def test_light_entry_points_do_not_import_heavy_packages(module: str) -> None:
    """``lorentz-rag --help`` and ``lorentz-rag train --help`` answer without torch; the geometry needs only torch."""
    heavy = ["transformers", "sentence_transformers", "faiss", "mteb", "deepspeed", "datasets"]
    if module != "lorentz_rag.geometry.similarity":
        heavy.append("torch")
    code = f"import sys, {module}; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {module} loads {out.strip()}"


def test_every_allowed_local_import_is_still_needed() -> None:
    stale = [module for module in LOCAL_IMPORTS_ALLOWED if not GRAPH[module][1]]
    assert not stale, f"no function-local import left in {stale}: remove them from LOCAL_IMPORTS_ALLOWED"
