"""Keep the taught code of the notebooks and the package one source of truth.

A notebook shows an algorithm where it teaches it, as a code cell tagged ``taught`` whose first
line names the module it belongs to, followed by exact copies of functions of that module::

    # helpers/course/diffusion.py
    def q_sample(x0, t, eps, alphas_cumprod):
        ...

Running the cell defines the function in the notebook; the cells after it call that definition, so
a learner who edits it and runs on sees the effect. The module is the source (it is also what
``make report``, the demo and the benchmark run, what ruff lints and the unit tests check):

    python -m helpers.tools.taught check          # every taught cell equals its module (what the tests run)
    python -m helpers.tools.taught notebooks      # what ``make notebooks`` runs: pairs, then sync, then pairs
    python -m helpers.tools.taught sync           # module edits -> notebooks; refuses on a cell edit
    python -m helpers.tools.taught pull 03        # a notebook's edited taught cells -> their modules
    python -m helpers.tools.taught reset 03       # module -> cells, dropping the cells' edits

``sync`` never overwrites a cell edit. It compares each function three ways: the cell, the module,
and the baseline (what was last in sync: the function in the module's last commit, ``git show
HEAD:helpers/course/...``, and the text recorded by the last sync or pull in this checkout,
``data/cache/taught_synced.json``). A cell at the baseline takes the module's edit; a cell that
moved away from it (an author's or learner's edit, a new function) makes ``sync`` refuse, naming
the cell and the command that keeps the edit (``pull``) or drops it (``reset``); when both sides
moved, it refuses naming both. A refusal writes nothing.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from helpers.study.config import ROOT

TAG = "taught"
NOTEBOOKS = ROOT / "notebooks"
DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
CMD = "python -m helpers.tools.taught"


class TaughtError(Exception):
    """A sync or pull that would lose an edit or write broken code: nothing was written."""

    def __init__(self, problems: list[str]):
        super().__init__("\n\n".join(problems))
        self.problems = problems


@dataclass
class TaughtCell:
    notebook: Path
    index: int              # position among the notebook's cells
    module: Path            # the file the functions live in (repository-relative in the cell's first line)
    names: list[str]        # the functions (or classes) the cell defines, in order
    source: str             # the cell as it is
    defs: dict[str, str] = field(default_factory=dict)   # name -> the function's text in the cell
    error: str | None = None                             # why the cell cannot be read (bad first line, syntax)

    @property
    def where(self) -> str:
        return f"{self.notebook.name} cell {self.index} ({', '.join(self.names) or 'no function'})"

    @property
    def rel(self) -> str:
        return _rel(self.module)

    @property
    def key(self) -> str:
        """The notebook's short name for the commands (``02``)."""
        return self.notebook.stem[:2]

    def outside(self) -> list[str]:
        """Non-blank lines of the cell outside its functions (a module cannot hold them)."""
        body = self.source.partition("\n")[2].splitlines()
        inside = set()
        for start, end in _spans(self.source.partition("\n")[2]).values():
            inside.update(range(start, end))
        return [ln for i, ln in enumerate(body) if i not in inside and ln.strip()]


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _spans(text: str) -> dict[str, tuple[int, int]]:
    """Top-level functions and classes of a text -> their lines [start, end) (decorators included)."""
    return {n.name: (min([n.lineno] + [d.lineno for d in n.decorator_list]) - 1, n.end_lineno)
            for n in ast.parse(text).body if isinstance(n, DEFS)}


def _defs_of(text: str) -> dict[str, str]:
    lines = text.splitlines()
    return {name: "\n".join(lines[s:e]) for name, (s, e) in _spans(text).items()}


def definitions(path: Path) -> dict[str, str]:
    """Top-level functions and classes of a module -> their source text (decorators included)."""
    return _defs_of(path.read_text())


def taught_cells(notebook: Path) -> list[TaughtCell]:
    """The cells of a MyST notebook tagged ``taught`` (a cell that cannot be read carries ``error``)."""
    import jupytext

    cells = []
    for i, c in enumerate(jupytext.read(notebook).cells):
        if c.cell_type != "code" or TAG not in c.metadata.get("tags", []):
            continue
        first, _, body = c.source.partition("\n")
        cell = TaughtCell(notebook, i, ROOT / first[2:].strip(), [], c.source)
        if not first.startswith("# helpers/"):
            cell.error = f"a taught cell starts with '# helpers/<module>.py', got {first!r}"
        else:
            try:
                cell.defs = _defs_of(body)
                cell.names = list(cell.defs)
            except SyntaxError as e:
                cell.error = f"the cell does not parse (line {(e.lineno or 0) + 1} of the cell): {e.msg}"
        cells.append(cell)
    return cells


def expected(cell: TaughtCell) -> str:
    """What the cell must hold: its first line, then each function's source from the module."""
    defs = definitions(cell.module)
    missing = [n for n in cell.names if n not in defs]
    if missing:
        raise TaughtError([f"{cell.where}: {', '.join(missing)} not defined in {cell.rel}"])
    return _layout(cell, [defs[n] for n in cell.names])


def _layout(cell: TaughtCell, texts: list[str]) -> str:
    return cell.source.partition("\n")[0] + "\n" + "\n\n\n".join(texts)


def notebooks(select: str | None = None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.md"))
    return [p for p in paths if select is None or p.stem.startswith(select) or p.stem == select]


# --- the baseline: what was last in sync -------------------------------------------------------------

def _record_path() -> Path:
    return ROOT / "data" / "cache" / "taught_synced.json"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Baseline:
    """Per function, the digests of its last synced texts: the module's last commit and this
    checkout's record of the last sync or pull."""

    def __init__(self):
        path = _record_path()
        self.record: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
        self._committed: dict[str, dict[str, str] | None] = {}

    def committed(self, module: Path) -> dict[str, str] | None:
        rel = _rel(module)
        if rel not in self._committed:
            try:
                out = subprocess.run(["git", "-C", str(ROOT), "show", f"HEAD:{rel}"],
                                     capture_output=True, text=True, timeout=30)
                self._committed[rel] = _defs_of(out.stdout) if out.returncode == 0 else None
            except (OSError, subprocess.SubprocessError, SyntaxError):
                self._committed[rel] = None
        return self._committed[rel]

    def digests(self, module: Path, name: str) -> set[str]:
        out = set()
        head = self.committed(module)
        if head and name in head:
            out.add(digest(head[name]))
        if f"{_rel(module)}::{name}" in self.record:
            out.add(self.record[f"{_rel(module)}::{name}"])
        return out

    def remember(self, module: Path, name: str, text: str):
        self.record[f"{_rel(module)}::{name}"] = digest(text)

    def save(self):
        path = _record_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(sorted(self.record.items())), indent=1) + "\n")


def classify(cell_text: str | None, module_text: str | None, base: set[str]) -> str:
    """Which side of a function changed since the baseline: 'same' (cell = module), 'module' (the
    cell is at the baseline, the module moved: sync), 'cell' (the module is at the baseline or lacks
    the function, the cell moved: pull or reset), 'both' (neither is at the baseline), 'removed' (the
    cell is at the baseline and the module no longer has the function), or 'unknown' (they differ and
    there is no baseline, or both are at one: the last commit and the last sync here disagree)."""
    if cell_text == module_text:
        return "same"
    cell_same = cell_text is not None and digest(cell_text) in base
    if module_text is None:
        return "removed" if cell_same else "cell"
    if not base:
        return "unknown"
    module_same = digest(module_text) in base
    if cell_same and not module_same:
        return "module"
    if module_same and not cell_same:
        return "cell"
    return "both" if not cell_same else "unknown"     # both at a baseline (the commit and the record disagree)


def _diff(a: str, b: str, name_a: str, name_b: str) -> str:
    return "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(), name_a, name_b, lineterm=""))


def _keep_or_drop(cell: TaughtCell) -> str:
    return (f"keep the cell's version: `{CMD} pull {cell.key}`; drop it (the module's version goes into "
            f"the cell): `{CMD} reset {cell.key}`")


# --- check, sync, reset, pull ------------------------------------------------------------------------

def check(select: str | None = None) -> list[str]:
    """One message (with a diff) per taught cell that differs from its module; empty when all agree.
    Never raises on a cell's content: a broken cell or a function missing from the module is a message."""
    problems = []
    for nb in notebooks(select):
        for cell in taught_cells(nb):
            if cell.error:
                problems.append(f"{cell.where}: {cell.error}")
                continue
            if not cell.module.is_file():
                problems.append(f"{cell.where}: its module {cell.rel} does not exist")
                continue
            defs = definitions(cell.module)
            missing = [n for n in cell.names if n not in defs]
            for n in missing:
                problems.append(f"{cell.where}: function {n} is in the cell but not in the module {cell.rel}: "
                                f"run `{CMD} pull {cell.key}` to add it")
            want = _layout(cell, [defs.get(n, cell.defs[n]) for n in cell.names])
            if cell.source != want:
                problems.append(f"{cell.where} differs from {cell.rel}:\n"
                                f"{_diff(want, cell.source, cell.rel, cell.where)}")
    return problems


def usable_cells(select: str | None, problems: list[str], hint: str = ""):
    """The taught cells that parse and name an existing module; the others go to ``problems``."""
    for nb in notebooks(select):
        for cell in taught_cells(nb):
            if cell.error:
                problems.append(f"{cell.where}: {cell.error}{hint}")
            elif not cell.module.is_file():
                problems.append(f"{cell.where}: its module {cell.rel} does not exist")
            else:
                yield cell


def plan_sync(select: str | None = None,
              baseline: Baseline | None = None) -> tuple[dict[Path, dict[int, str]], list[str]]:
    """The cells sync would rewrite (notebook -> cell index -> new source) and every reason to refuse."""
    baseline = baseline or Baseline()
    writes, problems = {}, []
    for cell in usable_cells(select, problems, "; fix the cell (nothing was synced)"):
        defs = definitions(cell.module)
        cell_problems, texts = [], []
        for name in cell.names:
            c, m = cell.defs[name], defs.get(name)
            kind = classify(c, m, baseline.digests(cell.module, name))
            texts.append(c if m is None else m)
            if kind == "cell" and m is None:
                cell_problems.append(f"function {name} is in the cell but not in the module {cell.rel}")
            elif kind == "cell":
                cell_problems.append(f"{name} was edited in the cell (the module has not changed):\n"
                                     f"{_diff(m, c, cell.rel, cell.where)}")
            elif kind == "both":
                cell_problems.append(f"{name} was edited both in the cell and in the module {cell.rel}; the "
                                     f"module's version against the cell's:\n{_diff(m, c, cell.rel, cell.where)}")
            elif kind == "unknown":
                cell_problems.append(f"{name} differs between the cell and the module {cell.rel}, and the "
                                     f"baseline (the last commit, the last sync here) does not tell which side "
                                     f"changed:\n{_diff(m, c, cell.rel, cell.where)}")
            elif kind == "removed":
                cell_problems.append(f"{name} is no longer in the module {cell.rel} but the cell still shows it: "
                                     f"remove it from the cell, or put it back with `{CMD} pull {cell.key}`")
        extra = cell.outside()
        if extra:
            cell_problems.append("the cell holds lines outside its functions, which a module cannot hold "
                                 "(move them into a function or remove them): " + "; ".join(map(repr, extra)))
        if cell_problems:
            problems.append(f"{cell.where}, module {cell.rel}: refusing to overwrite the cell.\n"
                            + "\n".join(f"- {p}" for p in cell_problems) + "\n" + _keep_or_drop(cell))
            continue
        new = _layout(cell, texts)
        if new != cell.source:
            writes.setdefault(cell.notebook, {})[cell.index] = new
    return writes, problems


def _rewrite_notebook(nb_path: Path, new_sources: dict[int, str]) -> bool:
    import jupytext

    nb = jupytext.read(nb_path)
    changed = False
    for i, src in new_sources.items():
        if nb.cells[i].source != src:
            nb.cells[i].source, changed = src, True
    if changed:
        jupytext.write(nb, nb_path, fmt="md:myst")
    return changed


def _remember_in_sync(select: str | None, baseline: Baseline):
    """Record every function whose cell equals its module as the new baseline."""
    for nb in notebooks(select):
        for cell in taught_cells(nb):
            if cell.error or not cell.module.is_file():
                continue
            defs = definitions(cell.module)
            for name, text in cell.defs.items():
                if defs.get(name) == text:
                    baseline.remember(cell.module, name, text)
    baseline.save()


def sync(select: str | None = None) -> list[Path]:
    """Module edits -> notebooks, never over a cell edit: either every cell that needs it is rewritten
    from its module, or nothing is written and TaughtError lists each refused cell (see the module
    docstring). Returns the notebooks changed."""
    baseline = Baseline()
    writes, problems = plan_sync(select, baseline)
    if problems:
        raise TaughtError(problems)
    changed = [nb for nb, new in writes.items() if _rewrite_notebook(nb, new)]
    _remember_in_sync(select, baseline)
    return changed


def reset(select: str) -> list[Path]:
    """Module -> cells, dropping the cells' edits (a function the module lacks leaves the cell)."""
    writes, problems = {}, []
    for nb in notebooks(select):
        for cell in taught_cells(nb):
            if cell.error or not cell.module.is_file():
                problems.append(f"{cell.where}: {cell.error or f'its module {cell.rel} does not exist'}; fix the "
                                f"cell by hand or restore the notebook from git")
                continue
            defs = definitions(cell.module)
            kept = [defs[n] for n in cell.names if n in defs]
            if not kept:
                problems.append(f"{cell.where}: none of its functions is in {cell.rel}: remove the cell or "
                                f"pull it with `{CMD} pull {cell.key}`")
                continue
            writes.setdefault(nb, {})[cell.index] = _layout(cell, kept)
    if problems:
        raise TaughtError(problems)
    changed = [nb for nb, new in writes.items() if _rewrite_notebook(nb, new)]
    _remember_in_sync(select, Baseline())
    return changed


def _insert(text: str, name: str, src: str, after: str | None) -> str:
    """The module's text with a new top-level function after ``after`` (or at the end), two blank
    lines on each side (the module's convention)."""
    lines = text.splitlines()
    spans = _spans(text)
    if after in spans:
        end = spans[after][1]
        rest = lines[end:]
        while rest and not rest[0].strip():
            rest = rest[1:]
        new = lines[:end] + ["", ""] + src.splitlines() + (["", ""] + rest if rest else [])
        return "\n".join(new) + "\n"
    return text.rstrip("\n") + "\n\n\n" + src + "\n"


def pull(select: str) -> list[Path]:
    """Notebook -> modules: each edited function of the notebook's taught cells replaces its
    definition in the module; a function new in a cell is added after the cell's previous function
    (or at the end). A function removed from a cell stays in the module, and a function the module
    changed while the cell did not is left as it is (``sync`` brings it into the cell). All or
    nothing: every module's new text is computed and parsed first, and on any problem TaughtError
    is raised with nothing written. Returns the modules changed."""
    baseline = Baseline()
    texts: dict[Path, str] = {}          # module -> its new text
    pulled: dict[tuple[Path, str], str] = {}
    problems = []
    for cell in usable_cells(select, problems):
        extra = cell.outside()
        if extra:
            problems.append(f"{cell.where}: lines outside its functions cannot go into {cell.rel} (move them "
                            f"into a function or remove them): " + "; ".join(map(repr, extra)))
            continue
        text = texts.get(cell.module, cell.module.read_text())
        previous = None
        for name in cell.names:
            src = cell.defs[name]
            done = pulled.get((cell.module, name))
            if done is not None and done != src:
                problems.append(f"{cell.where}: {name} is also in another taught cell with different code; "
                                f"make the cells agree")
            defs = _defs_of(text)
            if classify(src, defs.get(name), baseline.digests(cell.module, name)) == "module":
                previous = name     # the module's edit, not the cell's: sync brings it into the cell
                continue
            if name not in defs:
                text = _insert(text, name, src, previous)
            elif defs[name] != src:
                s, e = _spans(text)[name]
                lines = text.splitlines()
                text = "\n".join(lines[:s] + src.splitlines() + lines[e:]) + "\n"
            pulled[(cell.module, name)] = src
            previous = name
        texts[cell.module] = text
    for module, text in texts.items():
        try:
            ast.parse(text)
        except SyntaxError as e:
            problems.append(f"{_rel(module)} would not parse after the pull (line {e.lineno}): {e.msg}")
    if problems:
        raise TaughtError(problems)
    changed = sorted(m for m, t in texts.items() if t != m.read_text())
    for module in changed:
        module.write_text(texts[module])
    for (module, name), src in pulled.items():
        baseline.remember(module, name, src)
    baseline.save()
    return changed


# --- make notebooks ----------------------------------------------------------------------------------

def _pair_sync(mds: list[Path]):
    """jupytext --sync on each pair: the newer file of NN_name.md / NN_name.ipynb is the source."""
    from jupytext.cli import jupytext as jupytext_cli

    if mds:
        jupytext_cli(["--sync", "--quiet", *map(str, mds)])


def _clear_outputs(ipynbs: list[Path]):
    """What ``jupyter nbconvert --clear-output --inplace`` does, writing only notebooks that had outputs."""
    import nbformat
    from nbconvert.preprocessors import ClearOutputPreprocessor

    for path in ipynbs:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        if any(c.get("outputs") or c.get("execution_count") is not None for c in code):
            nb, _ = ClearOutputPreprocessor().preprocess(nb, {})
            nbformat.write(nb, path)


def make_notebooks(select: str | None = None) -> list[Path]:
    """``make notebooks``: (1) sync each pair (the newer side wins, so an edit of either file reaches
    the .md), (2) ``sync`` the taught cells (refusing, with nothing written, on a cell edit),
    (3) sync the pairs again, clear the .ipynb outputs and leave each .md the newer side."""
    mds = notebooks(select)
    _pair_sync(mds)
    changed = sync(select)
    _pair_sync(mds)
    ipynbs = [p.with_suffix(".ipynb") for p in mds if p.with_suffix(".ipynb").is_file()]
    _clear_outputs(ipynbs)
    for md in mds:
        os.utime(md)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=CMD, description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["check", "sync", "pull", "reset", "notebooks"])
    ap.add_argument("notebook", nargs="?", default=None, help="e.g. 03 or 03_ddpm_inpainting (default: all)")
    args = ap.parse_args(argv)
    if args.command == "check":
        problems = check(args.notebook)
        print("\n\n".join(problems) if problems else "every taught cell equals its module")
        return 1 if problems else 0
    if args.command in ("pull", "reset") and not args.notebook:
        ap.error(f"{args.command} needs the notebook whose cells it takes (e.g. 03)")
    run = {"sync": sync, "pull": pull, "reset": reset, "notebooks": make_notebooks}[args.command]
    try:
        done = run(args.notebook)
    except TaughtError as e:
        what = ("no taught cell or module written (each .md/.ipynb pair was synced, so both files keep the "
                "edits)" if args.command == "notebooks" else "nothing written")
        print(f"taught {args.command}: {what}.\n\n" + "\n\n".join(e.problems), file=sys.stderr)
        return 1
    for p in done:
        print(f"updated {_rel(p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
