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
    python -m helpers.tools.taught sync           # module -> notebooks (``make notebooks`` runs it first)
    python -m helpers.tools.taught pull 03        # a notebook's edited taught cells -> their modules
"""
from __future__ import annotations

import argparse
import ast
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers.study.config import ROOT

TAG = "taught"
NOTEBOOKS = ROOT / "notebooks"


@dataclass
class TaughtCell:
    notebook: Path
    index: int              # position among the notebook's cells
    module: Path            # the file the functions live in (repository-relative in the cell's first line)
    names: list[str]        # the functions (or classes) the cell defines, in order
    source: str             # the cell as it is

    @property
    def where(self) -> str:
        return f"{self.notebook.name} cell {self.index} ({', '.join(self.names)})"


def definitions(path: Path) -> dict[str, str]:
    """Top-level functions and classes of a module -> their source text (decorators included)."""
    text = path.read_text()
    lines = text.splitlines()
    out = {}
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            out[node.name] = "\n".join(lines[start:node.end_lineno])
    return out


def taught_cells(notebook: Path) -> list[TaughtCell]:
    """The cells of a MyST notebook tagged ``taught``."""
    import jupytext

    cells = []
    for i, c in enumerate(jupytext.read(notebook).cells):
        if c.cell_type != "code" or TAG not in c.metadata.get("tags", []):
            continue
        first, _, body = c.source.partition("\n")
        if not first.startswith("# helpers/"):
            raise ValueError(f"{notebook.name} cell {i}: a taught cell starts with '# helpers/<module>.py', "
                             f"got {first!r}")
        names = [n.name for n in ast.parse(body).body
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        cells.append(TaughtCell(notebook, i, ROOT / first[2:].strip(), names, c.source))
    return cells


def expected(cell: TaughtCell) -> str:
    """What the cell must hold: its first line, then each function's source from the module."""
    defs = definitions(cell.module)
    missing = [n for n in cell.names if n not in defs]
    if missing:
        raise KeyError(f"{cell.where}: {', '.join(missing)} not defined in {cell.module.relative_to(ROOT)}")
    return cell.source.partition("\n")[0] + "\n" + "\n\n\n".join(defs[n] for n in cell.names)


def notebooks(select: str | None = None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.md"))
    return [p for p in paths if select is None or p.stem.startswith(select) or p.stem == select]


def check(select: str | None = None) -> list[str]:
    """One message (with a diff) per taught cell that differs from its module; empty when all agree."""
    problems = []
    for nb in notebooks(select):
        for cell in taught_cells(nb):
            want = expected(cell)
            if cell.source != want:
                diff = "\n".join(difflib.unified_diff(want.splitlines(), cell.source.splitlines(),
                                                      str(cell.module.relative_to(ROOT)), cell.where, lineterm=""))
                problems.append(f"{cell.where} differs from {cell.module.relative_to(ROOT)}:\n{diff}")
    return problems


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


def sync(select: str | None = None) -> list[Path]:
    """Module -> notebooks: every taught cell rewritten from its module. Returns the notebooks changed."""
    changed = []
    for nb in notebooks(select):
        if _rewrite_notebook(nb, {c.index: expected(c) for c in taught_cells(nb)}):
            changed.append(nb)
    return changed


def pull(select: str) -> list[Path]:
    """Notebook -> modules: each function of the notebook's taught cells replaces its definition in
    the module (for an edit made in JupyterLab that should become the course's code)."""
    changed = set()
    for nb in notebooks(select):
        for cell in taught_cells(nb):
            body = cell.source.partition("\n")[2]
            mine = {n.name: "\n".join(body.splitlines()[min([n.lineno] + [d.lineno for d in n.decorator_list]) - 1:
                                                         n.end_lineno])
                    for n in ast.parse(body).body
                    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
            text = cell.module.read_text()
            for name, src in mine.items():
                old = definitions(cell.module)[name]
                if old != src:
                    text = text.replace(old, src, 1)
                    cell.module.write_text(text)
                    changed.add(cell.module)
    return sorted(changed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.tools.taught", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["check", "sync", "pull"])
    ap.add_argument("notebook", nargs="?", default=None, help="e.g. 03 or 03_ddpm_inpainting (default: all)")
    args = ap.parse_args(argv)
    if args.command == "check":
        problems = check(args.notebook)
        print("\n\n".join(problems) if problems else "every taught cell equals its module")
        return 1 if problems else 0
    if args.command == "pull" and not args.notebook:
        ap.error("pull needs the notebook whose edited cells go back to the package (e.g. 03)")
    done = sync(args.notebook) if args.command == "sync" else pull(args.notebook)
    for p in done:
        print(f"updated {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
