"""The size and shape of the package, measured the same way before and after a consolidation.

    python bench/house.py [--json OUT] [--repo DIR]

Prints one table: package lines (``rootedgan/`` + ``stylegan_ops/``, every ``.py`` line), ``commands/`` lines,
function-level imports (all, and of package modules), functions over 100 lines, the longest function in
``commands/``, ruff's C901 complexity > 10, ``FinetuneModule.__init__`` parameters and the ``duplicates``
pairs with both places in the package (when that tool is on the PATH).
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ("rootedgan", "stylegan_ops")


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _internal(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] in PACKAGES
    return any(alias.name.split(".")[0] in PACKAGES for alias in node.names)


def measure(repo: Path) -> dict:
    files = sorted(p for package in PACKAGES for p in (repo / package).rglob("*.py"))
    out: dict = {
        "package_lines": 0,
        "commands_lines": 0,
        "function_imports": 0,
        "function_imports_internal": 0,
    }
    long_functions, command_functions = [], []
    for path in files:
        text = path.read_text()
        rel = path.relative_to(repo).as_posix()
        out["package_lines"] += len(text.splitlines())
        in_commands = rel.startswith("rootedgan/commands/")
        if in_commands:
            out["commands_lines"] += len(text.splitlines())
        tree = ast.parse(text)
        seen: set[int] = set()
        for fn in _functions(tree):
            length = fn.end_lineno - fn.lineno + 1
            if length > 100:
                long_functions.append(f"{rel}:{fn.name} ({length})")
            if in_commands:
                command_functions.append((length, f"{rel}:{fn.name}"))
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in seen:
                    seen.add(id(node))
                    out["function_imports"] += 1
                    out["function_imports_internal"] += _internal(node)
        if rel.endswith("training/module.py") or rel == "rootedgan/module.py":
            for cls in (
                n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "FinetuneModule"
            ):
                init = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
                out["finetune_module_init_params"] = len(init.args.args) - 1 + len(init.args.kwonlyargs)
    out["functions_over_100_lines"] = long_functions
    out["longest_command_function"] = max(command_functions, default=(0, ""))[1:] + (
        max(command_functions, default=(0, ""))[0],
    )
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run(
        [ruff, "check", "--select", "C901", "--config", "lint.mccabe.max-complexity=10", "--output-format",
         "concise", "--no-cache", *PACKAGES],
        cwd=repo, capture_output=True, text=True,
    )  # fmt: skip
    out["c901_over_10"] = sum(" C901 " in line for line in result.stdout.splitlines())
    if shutil.which("duplicates"):
        rows = subprocess.run(
            ["duplicates", "--repo", str(repo), "--most", "200", "--seconds", "120"],
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        pairs = [r.split()[1:4:2] for r in rows if r.startswith("D") and " ~ " in r]
        out["duplicate_pairs_in_package"] = sum(
            all(side.split("/")[0] in PACKAGES for side in pair) for pair in pairs
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    numbers = measure(Path(args.repo))
    for key, value in numbers.items():
        shown = len(value) if isinstance(value, list) and key != "longest_command_function" else value
        print(f"{key:<32} {shown}")
    for name in numbers["functions_over_100_lines"]:
        print(f"  over 100 lines: {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
