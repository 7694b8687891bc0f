"""The package's layout rules (issue 17): no function over 60 lines in helpers/ (long procedures are
split into staged helpers), and no module imports another module's private name."""
from __future__ import annotations

import ast
from pathlib import Path

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
MAX_LINES = 60


def _trees():
    for path in sorted(HELPERS.rglob("*.py")):
        yield path.relative_to(HELPERS.parent), ast.parse(path.read_text(), filename=str(path))


def test_no_function_over_60_lines():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in _trees() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long, "functions over 60 lines (split them into staged helpers):\n" + "\n".join(long)


def test_no_private_import_across_modules():
    found = [f"{path}:{node.lineno} from {node.module} import {a.name}"
             for path, tree in _trees() for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helpers")
             for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "private names imported from another module:\n" + "\n".join(found)
