"""Arrows point down: every import in the package (module level or inside a function) goes to a module of
the same layer or a lower one, in the order the README's Architecture section states; and there are no
import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rootedgan"
TOP_LAYER = {"cli.py", "__main__.py"}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


#: The README's layer table, top to bottom: (layer, module prefixes). A module may import its own layer and
#: those below it. ``rootedgan`` itself (the public API in ``__init__``) is outside the order.
LAYERS = [
    ("CLI", ("rootedgan.cli", "rootedgan.__main__", "rootedgan.commands")),
    ("studies and tools", ("rootedgan.compare", "rootedgan.digits", "rootedgan.tools")),
    ("training", ("rootedgan.training",)),
    ("evaluation", ("rootedgan.metrics",)),
    ("data and files", ("rootedgan.data", "rootedgan.checkpoints", "rootedgan.runs", "rootedgan.fileio",
                        "rootedgan.imaging", "rootedgan.sampling", "rootedgan.distributed",
                        "rootedgan.errors")),
    ("networks", ("rootedgan.networks",)),
    ("ops", ("stylegan_ops",)),
]  # fmt: skip


def layer_of(module: str) -> int | None:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points to a higher layer, as ``a (layer) -> b (layer)``."""
    found = []
    for module, targets in sorted(graph.items()):
        here = layer_of(module)
        for target in sorted(targets):
            there = layer_of(target)
            if here is not None and there is not None and there < here:
                found.append(f"{module} ({LAYERS[here][0]}) -> {target} ({LAYERS[there][0]})")
    return found


def test_every_package_module_has_a_layer():
    unplaced = [m for m in import_graph() if m != "rootedgan" and layer_of(m) is None]
    assert not unplaced, f"modules outside the README's layer table: {unplaced}"


def test_imports_point_down_the_layers():
    found = upward_imports(import_graph())
    assert not found, "imports against the layer order (README, Architecture):\n" + "\n".join(found)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    pkg = tmp_path / "rootedgan"
    (pkg / "networks").mkdir(parents=True)
    (tmp_path / "stylegan_ops").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "networks" / "__init__.py").write_text("")
    (pkg / "runs.py").write_text("X = 1\n")
    (pkg / "networks" / "g.py").write_text("def f():\n    from rootedgan.runs import X\n")
    assert upward_imports(import_graph(tmp_path)) == [
        "rootedgan.networks.g (networks) -> rootedgan.runs (data and files)"
    ]


def test_the_check_sees_function_level_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from rootedgan.commands.generate import parse_seeds\n")
    assert (2, "rootedgan.commands.generate") in _imports(sample)


# -- no import cycles --------------------------------------------------------------------------------------

REPO = PACKAGE.parent
PACKAGES = ("rootedgan", "stylegan_ops")


def _module_names(root: Path = REPO) -> dict[str, Path]:
    names = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (module level or in a function), not ``if TYPE_CHECKING:``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skip]


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from pkg import name`` counts as ``pkg.name`` when that
    is a module, else as ``pkg``, the ``__init__`` that defines ``name``)."""
    modules = _module_names(root)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _runtime_imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = module.split(".") if is_package else module.split(".")[:-1]
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                found = known(target)
                if found and found != module:
                    graph[module].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_even_through_function_level_imports():
    found = cycles(import_graph())
    listed = "\n".join(" <-> ".join(c) for c in found)
    assert not found, f"import cycles (a function-level import hides one, it does not break it):\n{listed}"


def test_the_cycle_check_finds_a_hidden_cycle_and_ignores_type_checking(tmp_path):
    pkg = tmp_path / "rootedgan"
    pkg.mkdir()
    (tmp_path / "stylegan_ops").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from rootedgan.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from rootedgan import a\n")
    guarded = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rootedgan.d import X\n"
    (pkg / "c.py").write_text(guarded)
    (pkg / "d.py").write_text("from rootedgan.c import Y\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["rootedgan.a", "rootedgan.b"]]
    assert graph["rootedgan.c"] == set()
