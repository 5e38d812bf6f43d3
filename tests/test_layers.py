"""Arrows point down: the library (everything in rootedgan/ but commands/ and the console script) never
imports the command-line layer, at module level or inside a function."""

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


def test_library_modules_do_not_import_the_commands():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "commands" or str(rel) in TOP_LAYER:
            continue
        for line, name in _imports(path):
            if (
                name == "rootedgan.commands"
                or name.startswith("rootedgan.commands.")
                or name == "rootedgan.cli"
            ):
                offenders.append(f"rootedgan/{rel}:{line} imports {name}")
    assert not offenders, "library code imports the CLI layer:\n" + "\n".join(offenders)


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
