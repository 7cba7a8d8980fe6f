"""The layers of docs/architecture.md, enforced: no import points up a layer, and the import
graph of adapterkit/ has no circle.

Every module of ``adapterkit/`` is parsed with ``ast`` (nothing is imported).  An arrow is any
``import`` / ``from ... import`` naming an adapterkit module, at module top or inside a function;
importing ``a.b.c`` from outside the package ``a.b`` is an arrow to ``a.b`` too (its
``__init__`` runs).  Imports under ``if TYPE_CHECKING:`` are exempt: they are never executed
(type hints only).  The table ``LAYERS`` mirrors docs/architecture.md; a module it does not
place fails the test, so a new module gets a layer when it is written.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "adapterkit"

# lowest first; a module may import its own layer and the layers below it.  Entries are module
# names or package prefixes (the longest match wins; "adapterkit" is the package's __init__ alone).  Keep in step with docs/architecture.md.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("adapterkit.errors", "adapterkit._version", "adapterkit.devices", "adapterkit.progress",
                "adapterkit.arguments", "adapterkit.differences", "adapterkit.threads", "adapterkit.lazy", "adapterkit.linalg")),
    ("value", ("adapterkit.adapter", "adapterkit.dtypes", "adapterkit.arrays")),
    ("kinds", ("adapterkit.kinds",)),
    ("io", ("adapterkit.io", "adapterkit.checkpoint", "adapterkit.quant")),
    ("operations", ("adapterkit.validation", "adapterkit.summary", "adapterkit.ops", "adapterkit.inject",
                    "adapterkit.inspect", "adapterkit.testing")),
    ("hub", ("adapterkit.hub",)),
    ("api", ("adapterkit", "adapterkit.api")),
    ("cli", ("adapterkit.cli", "adapterkit.__main__")),
]
LEVEL = {name: i for i, (name, _) in enumerate(LAYERS)}


def modules() -> dict[str, tuple[Path, bool]]:
    """module name -> (file, is a package's __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts.pop()
        found[".".join(parts)] = (path, package)
    return found


def layer_of(module: str) -> str | None:
    best, layer = -1, None
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            inside = module.startswith(prefix + ".") and prefix != "adapterkit"  # the root package: its __init__ only
            if (module == prefix or inside) and len(prefix) > best:
                best, layer = len(prefix), name
    return layer


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def imports() -> dict[str, dict[str, int]]:
    """importing module -> {imported module: line of the first such import}."""
    mods = modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for module, (path, is_package) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        skip = _type_checking_nodes(tree)
        package = module if is_package else module.rpartition(".")[0]
        arrows = graph.setdefault(module, {})
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in mods else stem for a in node.names]
            for name in names:
                if not (name == "adapterkit" or name.startswith("adapterkit.")):
                    continue
                target = known(name)
                if target is None or target == module:
                    continue
                arrows.setdefault(target, node.lineno)
                # the packages above the target run first, unless the importer is inside them
                # (the root package's __init__ has always run first)
                chain = target.split(".")
                for i in range(2, len(chain)):
                    above = ".".join(chain[:i])
                    if above in mods and above != module and not module.startswith(above + "."):
                        arrows.setdefault(above, node.lineno)
    return graph


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in modules() if layer_of(m) is None)
    assert not missing, f"modules not in the layer table (tests/test_layers.py and docs/architecture.md): {missing}"


def test_no_import_points_up_a_layer() -> None:
    wrong = []
    for module, arrows in sorted(imports().items()):
        for target, line in sorted(arrows.items()):
            here, there = layer_of(module), layer_of(target)
            if here is not None and there is not None and LEVEL[there] > LEVEL[here]:
                wrong.append(f"{module} (layer {here}) imports {target} (layer {there}), line {line}")
    assert not wrong, "imports pointing up a layer:\n  " + "\n  ".join(wrong)


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one
    circle through it found by a search inside the component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_circle_through(graph, component) for component in components]


def _circle_through(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A circle from the component's first module back to it, inside the component."""
    start, inside = component[0], set(component)
    path, seen = [start], {start}

    def walk(v: str) -> bool:
        for w in sorted(graph.get(v, {})):
            if w == start:
                return True
            if w in inside and w not in seen:
                seen.add(w)
                path.append(w)
                if walk(w):
                    return True
                path.pop()
        return False

    walk(start)
    return [*path, start]


def test_no_import_circle() -> None:
    graph = imports()
    circles = _cycles(graph)
    text = []
    for circle in circles:
        steps = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)}), line {graph[a][b]}"
                 for a, b in itertools.pairwise(circle)]
        text.append("\n    ".join(steps))
    assert not circles, "import circles:\n  " + "\n  ".join(text)


def _bound_names(path: Path) -> set[str]:
    """The names a package's ``__init__`` binds at module level (imports, defs, assignments)
    and, for adapterkit's own, the keys of its lazy table ``_LAZY``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name != "__getattr__":
            names.add(node.name)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            names.update(k.value for k in node.value.keys if isinstance(k, ast.Constant))  # type: ignore[union-attr]
    for node in ast.walk(tree):  # names a module-level __getattr__ returns (hub's push/pull were)
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            for sub in ast.walk(node):
                if isinstance(sub, ast.Compare) and isinstance(sub.comparators[0], ast.Constant):
                    names.add(sub.comparators[0].value)
    return names


@pytest.mark.parametrize("package", sorted(m for m, (_, is_package) in modules().items() if is_package))
def test_no_module_is_shadowed_by_a_name_of_its_package(package: str) -> None:
    """A package's ``__init__`` binds no name that is also one of its submodules: else the
    attribute is the function or the module depending on what was imported first (as
    ``adapterkit.inspect.diff`` was before the module became ``inspect.compare``)."""
    path, _ = modules()[package]
    submodules = {m.rpartition(".")[2] for m in modules() if m.rpartition(".")[0] == package}
    clash = sorted(_bound_names(path) & submodules - {"__main__"})
    # a submodule imported by name (``from . import lora``) is the module itself, not a shadow
    tree = ast.parse(path.read_text(encoding="utf-8"))
    as_modules = {a.asname or a.name for node in tree.body if isinstance(node, ast.ImportFrom)
                  and node.level == 1 and node.module is None for a in node.names}
    clash = [c for c in clash if c not in as_modules]
    assert not clash, f"{package}: names bound in its __init__ that are also its submodules: {clash}"
