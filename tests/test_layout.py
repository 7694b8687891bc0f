"""The package's layout rules (issue 17): no function over 60 lines in helpers/ (long procedures are
split into staged helpers), no module imports another module's private name, no import cycle, and the
role folders depend one way (course <- study <- report <- apps <- tools)."""
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


def _module_name(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle_between_modules():
    """Module-level imports between helpers' modules form no cycle (the vote store and the preference
    statistics, for one, do not import each other). Package __init__ files are left out: they only
    make their modules load on first use."""
    modules = {_module_name(p): t for p, t in _trees() if p.name != "__init__.py"}
    edges = {m: set() for m in modules}
    for m, tree in modules.items():
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) and node.module else [])
            edges[m] |= {n for n in names if n in modules and n != m}

    def cycle_from(start, node, seen):
        for nxt in edges[node]:
            if nxt == start:
                return [node, nxt]
            if nxt not in seen:
                seen.add(nxt)
                found = cycle_from(start, nxt, seen)
                if found:
                    return [node] + found
        return None

    cycles = [c for m in modules if (c := cycle_from(m, m, {m}))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert "helpers.report.preference" not in edges["helpers.apps.votes"]


def test_roles_depend_one_way():
    """The role folders depend one way: course (what the notebooks teach) on nothing of the package;
    study (the plumbing) on course; report and apps on both; tools on all; nothing on tools, except
    Any import counts, at module level or inside a function. One read across is deliberate: the
    DDPM's training validator draws its grid with the report's image_grid."""
    allowed = {"course": {"course"}, "study": {"course", "study"}, "report": {"course", "study", "report"},
               "apps": {"course", "study", "report", "apps"}, "tools": {"course", "study", "report", "apps", "tools"}}
    deliberate = {("helpers/study/ddpm.py", "helpers.report.figures")}
    wrong = []
    for path, tree in _trees():
        role = path.parts[1] if len(path.parts) > 2 else None
        if role not in allowed:
            continue
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for mod in mods:
                parts = mod.split(".")
                if (parts[0] == "helpers" and len(parts) > 1 and parts[1] in allowed and parts[1] not in allowed[role]
                        and (path.as_posix(), mod) not in deliberate):
                    wrong.append(f"{path}:{node.lineno} ({role}) imports {mod}")
    assert not wrong, "imports against the roles' direction:\n" + "\n".join(wrong)
