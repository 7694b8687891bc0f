"""Authoring notebooks from Python (used by contributors, not by the notebooks themselves).

    from tools.nbtools import md, code, params, write
    write("notebooks/07_x.ipynb", [md("# Title", slide="slide"), code("import helpers as H"),
                                   params('preset = "smoke"  # smoke | full\\noverrides = {}'), ...])

Every cell gets ``slideshow.slide_type`` metadata (default ``-``: continues the slide);
the parameters cell is tagged ``parameters`` (papermill) and hidden from slides (``skip``).
Notebooks are written without outputs.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

IMPORT_LINE = "import helpers as H"
PARAMETERS = '''preset = "smoke"  # smoke | full: the configs/<preset>.yaml every helper reads
overrides = {}  # dotted keys to change for this run only, e.g. {"ddpm.max_steps": 3}'''
LOAD_CONFIG = "cfg = H.load_config(preset, overrides)\nP = H.common.paths(cfg)"


def md(source: str, slide: str = "-"):
    return nbformat.v4.new_markdown_cell(source.strip("\n"), metadata={"slideshow": {"slide_type": slide}})


def code(source: str, slide: str = "-", tags: list[str] | None = None):
    meta = {"slideshow": {"slide_type": slide}}
    if tags:
        meta["tags"] = tags
    return nbformat.v4.new_code_cell(source.strip("\n"), metadata=meta)


def params(source: str = PARAMETERS):
    return code(source, slide="skip", tags=["parameters"])


def header(title_md: str) -> list:
    """Title slide, the one import line, the parameters cell, and the config load."""
    return [md(title_md, slide="slide"), code(IMPORT_LINE, slide="skip"), params(), code(LOAD_CONFIG, slide="skip")]


def write(path: str | Path, cells: list) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}, "celltoolbar": "Slideshow"}
    nbformat.validate(nb)
    path = Path(path)
    if not path.is_absolute():  # relative to the repository root, wherever the script runs from
        path = Path(__file__).resolve().parent.parent / path
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
