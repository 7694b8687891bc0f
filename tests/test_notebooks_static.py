"""Every notebook is committed clean and follows the house layout (no kernel needed)."""
import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SERIES = ["01_data", "02_ddpm_theory", "03_ddpm_inpainting", "04_sd_lora", "05_evaluation", "06_comparison"]
SLIDE_TYPES = {"slide", "subslide", "fragment", "-", "skip", "notes"}


def test_the_series_is_complete():
    assert [p.stem for p in NOTEBOOKS] == SERIES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_layout(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    # committed without outputs
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip outputs"
    # title slide, then the one import line, then the parameters cell
    assert cells[0]["cell_type"] == "markdown" and cells[0]["metadata"]["slideshow"]["slide_type"] == "slide"
    assert "".join(code[0]["source"]).strip() == "import helpers as H"
    params = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1 and params[0] is code[1]
    # parameters: plain literals only (papermill injects after this cell; derived values go below)
    for node in ast.parse("".join(params[0]["source"])).body:
        assert isinstance(node, ast.Assign), "only assignments in the parameters cell"
        ast.literal_eval(node.value)
    assert "preset" in "".join(params[0]["source"])
    # every cell has slideshow metadata
    for c in cells:
        assert c["metadata"].get("slideshow", {}).get("slide_type") in SLIDE_TYPES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_cells_stay_short(path):
    """Notebooks teach; helpers/ does the work: no code cell grows past a screen."""
    nb = json.loads(path.read_text())
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            lines = [l for l in "".join(c["source"]).splitlines() if l.strip() and not l.strip().startswith("#")]
            assert len(lines) <= 25, f"{path.name}: a code cell of {len(lines)} lines belongs in helpers/"
