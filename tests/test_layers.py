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
