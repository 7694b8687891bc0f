"""One smoke execution of the whole notebook series through the report runner (papermill), in a
temporary root, then the exported HTML report and reveal.js slides of the final notebook."""
import json
import re
from pathlib import Path

import nbformat
import pytest

import helpers as H
from helpers import report as R

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


# smoke_run: the session's one smoke execution of the series (tests/conftest.py)


def test_every_notebook_ran(smoke_run):
    manifest, P = smoke_run
    names = [p.name for p in R.list_notebooks()]
    assert [n["notebook"] for n in manifest["notebooks"]] == names
    assert all(n["status"] == "ok" for n in manifest["notebooks"])
    for name in names:
        nb = nbformat.read(P.reports / "notebooks" / name, as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors
        assert (P.reports / "logs" / name.replace(".ipynb", ".log")).is_file()
    saved = json.loads((P.reports / "manifest.json").read_text())
    assert saved["preset"] == "smoke" and saved["seeds"]["seed"] == 0 and saved["packages"]["diffusers"]


def test_data_figures_and_predictions_exist(smoke_run):
    _, P = smoke_run
    assert (P.data / "index.json").is_file() and (P.data / "captions.json").is_file()
    for fig in ("01_mask_kinds.png", "01_hole_fractions.png", "01_test_samples.png"):
        assert (P.figures / fig).stat().st_size > 1000
    for method in H.data.METHODS:
        meta = json.loads((P.predictions(method) / "meta.json").read_text())
        assert meta["n_images"] >= 1 and meta.get("weights"), method


def test_slides_hold_every_slide(smoke_run):
    manifest, P = smoke_run
    last = R.list_notebooks()[-1]
    nb = nbformat.read(last, as_version=4)
    # a cell without slideshow metadata continues the current slide
    kinds = [c.metadata.get("slideshow", {}).get("slide_type", "-") for c in nb.cells
             if "parameters" not in c.metadata.get("tags", [])]
    html = Path(manifest["exports"]["slides"]).read_text()
    # nbconvert's reveal template: a slide is <section><section>...</section></section>, a subslide one more
    assert html.count("<section") == 2 * kinds.count("slide") + kinds.count("subslide")
    for c in nb.cells:
        if c.cell_type == "markdown" and c.metadata.get("slideshow", {}).get("slide_type") == "slide":
            heading = c.source.strip().splitlines()[0].lstrip("#").strip()
            words = [w for w in re.findall(r"[A-Za-z]{4,}", heading)]
            assert all(w in html for w in words), heading
    assert "preset = " not in html                       # parameters cells are hidden
    assert Path(manifest["exports"]["report"]).stat().st_size > 10_000
