"""The package's layout rules (issue 17): no function over 60 lines in helpers/ (long procedures are
split into staged helpers), no module imports another module's private name, no import cycle, and the
role folders depend one way (course <- study <- report <- apps <- tools); issue 28: no folder of more than
12 modules, no module over 500 lines without a stated reason."""
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


TESTS = HELPERS.parent / "tests"


# private names the tests still read, each with its reason (empty this list when it is fixed)
KNOWN_PRIVATE: dict = {}   # (file, name) -> why a private name is read there; none today


PROJECT = ("helpers", "tests")


def _imported(tree, ours: bool) -> set[str]:
    """The names a module binds by import to this project's code (``import helpers as H``,
    ``from helpers.x import y``) when ``ours``, else to other packages'."""
    names = set()
    top = lambda module: ((module or "").split(".")[0] in PROJECT) == ours
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if top(a.name)}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and top(node.module):
            names |= {a.asname or a.name for a in node.names}
    return names


def _private_reads(path: Path, tree) -> list[str]:
    """Private names of this project read from outside their module: ``from helpers.x import _y``
    (or from tests' fixtures), and ``<name>._y`` where the name is not ``self``/``cls`` nor a third-party
    module or name (``torch.utils._pytree`` is torch's business): a module's ``H.x._y``, an object's
    ``demo.models._loaded``."""
    project = _imported(tree, ours=True)
    third_party = _imported(tree, ours=False) - project
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PROJECT:
            found += [f"{path}:{node.lineno} from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            name = root.id if isinstance(root, ast.Name) else None
            if name in ("self", "cls") or (name in third_party and name not in project):
                continue
            if (path.as_posix(), ast.unparse(node)) not in KNOWN_PRIVATE:
                found.append(f"{path}:{node.lineno} {ast.unparse(node)}")
    return found


def test_no_private_name_read_across_modules_or_from_tests():
    """No module reads another's private name (``from x import _y``, ``x._y``, ``obj._y``), and the tests
    use the public names only (what they need is made public, or tested through public functions)."""
    tests = [(p.relative_to(TESTS.parent), ast.parse(p.read_text(), filename=str(p)))
             for p in sorted(TESTS.rglob("*.py"))]
    found = [f for path, tree in [*_trees(), *tests] for f in _private_reads(path, tree)]
    assert not found, "private names read from outside their module:\n" + "\n".join(found)
    stale = [k for k in KNOWN_PRIVATE
             if not (TESTS.parent / k[0]).is_file() or k[1] not in (TESTS.parent / k[0]).read_text()]
    assert not stale, f"fixed: remove from KNOWN_PRIVATE {stale}"


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
    study (the plumbing) on course; report and apps on both; tools on all; nothing on tools.
    Any import counts, at module level or inside a function. None is deliberate any more: the vote
    store lives in the study, and the DDPM's training validator is handed the report's image_grid by
    notebook 03 instead of importing it."""
    allowed = {"course": {"course"}, "study": {"course", "study"}, "report": {"course", "study", "report"},
               "apps": {"course", "study", "report", "apps"}, "tools": {"course", "study", "report", "apps", "tools"}}
    deliberate = set()
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


def test_course_modules_import_each_other_one_way():
    """Inside helpers/course, imports at any level (inside functions too) form no circle: the maths of
    notebook 02 (diffusion.py) does not reach back into notebook 03's module, which builds on it."""
    course = {p.stem: t for p, t in _trees() if p.parts[1] == "course" and p.name != "__init__.py"}
    edges = {m: set() for m in course}
    for m, tree in course.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helpers.course."):
                edges[m].add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                edges[m] |= {a.name.split(".")[2] for a in node.names if a.name.startswith("helpers.course.")}
    circles = [f"{a} <-> {b}" for a in edges for b in edges[a] if b != a and a in edges.get(b, set())]
    assert not circles, "course modules importing each other: " + ", ".join(circles)


# ---------------------------------------------------------------- issue 28: layers that only point down
FLOORS = ("course", "study", "report", "apps", "tools")      # lowest first: each may import only its own and lower
# cycles being removed on another branch of issue 28: each must still exist here (a stale entry fails)
PENDING_CYCLES: set = set()


def _all_modules() -> dict[str, ast.Module]:
    return {_module_name(p): t for p, t in _trees()}


def _imported_modules(tree: ast.Module, modules) -> set[str]:
    """Every helpers module ``tree`` imports, at module level or inside a function (a lazy import is an
    arrow too): ``from a.b import c`` names ``a.b.c`` when that is a module, else ``a.b``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in modules else node.module)
    return {m for m in out if m in modules}


def _import_graph() -> dict[str, set[str]]:
    modules = _all_modules()
    return {m: _imported_modules(t, modules) - {m} for m, t in modules.items()}


def _cycles(edges: dict[str, set[str]]) -> list[frozenset]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v), on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w), comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_even_through_function_level_imports():
    """No circle among helpers' modules, counting imports inside functions and the package faces."""
    cycles = set(_cycles(_import_graph()))
    assert not cycles - PENDING_CYCLES, "import circles: " + "; ".join(
        " <-> ".join(sorted(c)) for c in cycles - PENDING_CYCLES)
    stale = PENDING_CYCLES - cycles
    assert not stale, f"gone, delete from PENDING_CYCLES: {[sorted(c) for c in stale]}"


def test_the_cycle_finder_sees_a_lazy_back_edge():
    edges = {"a": {"b"}, "b": set(), "c": {"d"}, "d": {"c"}}
    assert _cycles(edges) == [frozenset({"c", "d"})]
    tree = ast.parse("def f():\n    from helpers.study import sd\n")
    assert _imported_modules(tree, {"helpers.study", "helpers.study.sd"}) == {"helpers.study.sd"}


def _floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 1 and parts[1] in FLOORS else None


def test_no_floor_imports_a_higher_floor_or_the_package_face():
    """course <- study <- report <- apps <- tools: a module imports its own floor or lower ones, and no
    module of a floor imports ``helpers`` itself (the face above every floor; what the floors share,
    like lazy_submodules, lives on the lowest floor that uses it). Function-level imports count."""
    deliberate: set = set()
    wrong = []
    for m, targets in _import_graph().items():
        here = _floor(m)
        if here is None:
            continue
        for t in sorted(targets):
            there = _floor(t)
            if ((there is None and t == "helpers") or (there is not None and there > here)) \
                    and (m, t) not in deliberate:
                wrong.append(f"{m} ({FLOORS[here]}) imports {t}")
    assert not wrong, "imports that run back up:\n" + "\n".join(wrong)


def test_no_public_global_rebound_inside_a_function():
    """No hidden second route between modules (issue 28: files.paths() wrote ACTIVE_PRESET, which the
    figures read): a module-level name that a function rebinds with ``global`` is private to its
    module, and no other module names it."""
    modules = _all_modules()
    wrong = []
    for m, tree in modules.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Global):
                continue
            for name in node.names:
                if not name.startswith("_"):
                    wrong.append(f"{m}:{node.lineno} rebinds public global {name}")
                readers = [o for o, t in modules.items() if o != m and any(
                    (isinstance(n, ast.Name) and n.id == name) or (isinstance(n, ast.Attribute) and n.attr == name)
                    or (isinstance(n, ast.alias) and n.name == name) for n in ast.walk(t))]
                wrong += [f"{o} reads {m}.{name}" for o in readers]
    assert not wrong, "module globals set at run time and shared:\n" + "\n".join(wrong)


MAX_MODULES = 12
MAX_MODULE_LINES = 500
# modules over 500 lines, each with its reason (remove an entry when the module is split)
LONG_MODULES = {
    "helpers/study/evaluation/metrics.py": "one role (LPIPS, FID, KID: loading, features, statistics)",
    "helpers/study/evaluation/evaluate.py": "one role (the scores and statistics over methods)",
    "helpers/report/figures.py": "one role (every figure of the series)",
    "helpers/tools/taught.py": "one role (the notebook-sync of the taught cells: extract, write, check, CLI)",
}


def test_folders_hold_at_most_12_modules():
    """No folder of helpers/ holds more than 12 modules (package __init__ files not counted): a folder
    that grows past that is split by role, as study/ is into data/, models/ and evaluation/."""
    folders = {p.parent for p in HELPERS.rglob("*.py")}
    crowded = {f"{d.relative_to(HELPERS.parent)}: {n} modules"
               for d in folders if (n := sum(1 for p in d.glob("*.py") if p.name != "__init__.py")) > MAX_MODULES}
    assert not crowded, f"folders over {MAX_MODULES} modules (split them by role): {sorted(crowded)}"


def test_no_module_over_500_lines_without_a_reason():
    """A module over 500 lines has several roles more often than not: each one is split or listed in
    LONG_MODULES with its reason; an entry that is no longer needed is removed."""
    lines = {p.relative_to(HELPERS.parent).as_posix(): len(p.read_text().splitlines()) for p in HELPERS.rglob("*.py")}
    long = [f"{p} ({n} lines)" for p, n in sorted(lines.items()) if n > MAX_MODULE_LINES and p not in LONG_MODULES]
    assert not long, (f"modules over {MAX_MODULE_LINES} lines (split, or give the reason in LONG_MODULES):\n"
                      + "\n".join(long))
    stale = [p for p in LONG_MODULES if lines.get(p, 0) <= MAX_MODULE_LINES]
    assert not stale, f"no longer over {MAX_MODULE_LINES} lines (or gone): remove from LONG_MODULES {stale}"
