"""The course's notebook sources (jupytext MyST Markdown, notebooks/NN_name.md) follow the house
layout, and every committed .ipynb is exactly the notebook its source describes, without outputs.
No kernel needed."""
import ast
import json
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
SOURCES = sorted(NB_DIR.glob("[0-9][0-9]_*.md"))
SERIES = ["01_data", "02_ddpm_theory", "03_ddpm_inpainting", "04_sd_lora", "05_evaluation", "06_comparison"]
SLIDE_TYPES = {"slide", "subslide", "fragment", "-", "skip", "notes"}
ids = lambda p: p.stem  # noqa: E731


def _slide_type(cell) -> str:
    return cell.metadata.get("slideshow", {}).get("slide_type", "-")   # nbconvert's default: '-'


def test_the_series_is_complete():
    assert [p.stem for p in SOURCES][:len(SERIES)] == SERIES
    assert sorted(p.stem for p in NB_DIR.glob("[0-9][0-9]_*.ipynb")) == [p.stem for p in SOURCES], \
        "every source NN_name.md has its paired NN_name.ipynb and vice versa (run `make notebooks`)"


def test_pairing_is_configured():
    """jupytext pairs every notebook in notebooks/ with its MyST Markdown source."""
    text = (NB_DIR / "jupytext.toml").read_text()
    assert 'formats = "ipynb,md:myst"' in text


@pytest.mark.parametrize("path", SOURCES, ids=ids)
def test_source_layout(path):
    text = path.read_text()
    nb = jupytext.reads(text, fmt="md:myst")
    cells = nb.cells
    code = [c for c in cells if c.cell_type == "code"]
    # title slide, then the one import line, then the parameters cell
    assert cells[0].cell_type == "markdown" and _slide_type(cells[0]) == "slide"
    assert code[0].source.strip() == "import helpers as H"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is code[1], "one cell tagged parameters, right after the import"
    assert _slide_type(params[0]) == "skip", "the parameters cell is hidden from the slides"
    # parameters: plain literals only (papermill injects after this cell; derived values go below)
    for node in ast.parse(params[0].source).body:
        assert isinstance(node, ast.Assign), "only assignments in the parameters cell"
        ast.literal_eval(node.value)
    assert "preset" in params[0].source
    for c in cells:
        assert _slide_type(c) in SLIDE_TYPES
    # formulas are written as LaTeX, with single backslashes (no Python string escaping)
    assert "\\\\epsilon" not in text and "\\\\alpha" not in text and "\\\\text" not in text


@pytest.mark.parametrize("path", SOURCES, ids=ids)
def test_cells_stay_short(path):
    """Notebooks teach; helpers/ does the work: no code cell grows past a screen."""
    for c in jupytext.read(path).cells:
        if c.cell_type == "code":
            lines = [l for l in c.source.splitlines() if l.strip() and not l.strip().startswith("#")]
            assert len(lines) <= 25, f"{path.name}: a code cell of {len(lines)} lines belongs in helpers/"


@pytest.mark.parametrize("path", SOURCES, ids=ids)
def test_code_cells_are_closed(path):
    """Every code cell of the source ends with its fence: a missing closing fence silently swallows the
    markdown below into the code cell (jupytext reads on to the next fence), which then fails to parse."""
    for c in jupytext.read(path).cells:
        if c.cell_type == "code":
            for marker in ("+++", "```{code-cell}", "```{raw-cell}"):
                assert not any(l.startswith(marker) for l in c.source.splitlines()), \
                    f"{path.name}: a code cell runs into the next cell's marker {marker!r}: close its fence"
            ast.parse(c.source)                     # and it is Python (no magics in the course)


@pytest.mark.parametrize("path", SOURCES, ids=ids)
def test_ipynb_matches_its_source(path):
    """The committed .ipynb holds exactly the source's cells (type, text, tags, slide metadata) and
    no outputs. Fails when one side was edited without syncing the other."""
    ipynb = path.with_suffix(".ipynb")
    committed = json.loads(ipynb.read_text())
    for c in committed["cells"]:
        if c["cell_type"] == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, f"{ipynb.name}: strip outputs"
    derived = jupytext.read(path)
    got = nbformat.reads(json.dumps(committed), as_version=4)
    assert len(got.cells) == len(derived.cells), f"{ipynb.name} and {path.name} differ: run `make notebooks`"
    for i, (a, b) in enumerate(zip(got.cells, derived.cells)):
        where = f"{ipynb.name} cell {i} differs from {path.name}: run `make notebooks`"
        assert a.cell_type == b.cell_type, where
        assert a.source == b.source, where
        assert a.metadata.get("tags", []) == b.metadata.get("tags", []), where
        assert _slide_type(a) == _slide_type(b), where
    assert got.metadata.get("kernelspec", {}).get("name") == "python3"
