"""One smoke execution of the whole notebook series through the report runner (papermill), in a
temporary root, then the exported HTML report and reveal.js slides of the final notebook."""
import json
import re
from pathlib import Path

import nbformat
import pytest

import helpers as H

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


# smoke_run: the session's one smoke execution of the series (tests/conftest.py)


def test_every_notebook_ran(smoke_run):
    manifest, P = smoke_run
    names = [p.name for p in H.report.series.list_notebooks()]
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
    for method in H.study.methods.METHODS:
        meta = json.loads((P.predictions(method) / "meta.json").read_text())
        assert meta["n_images"] >= 1 and meta.get("weights"), method


def test_slides_hold_every_slide(smoke_run):
    manifest, P = smoke_run
    last = H.report.series.list_notebooks()[-1]
    nb = nbformat.read(last, as_version=4)
    # a cell without slideshow metadata continues the slide before it (nbconvert's "-")
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


STDERR_HANDFUL = 8      # a few lines a learner should read (a bar per long step, a real warning; 04 trains
                        # the study's LoRA and the PEFT variants)


def _streams(nb, name: str | None = None):
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream" and (name is None or o.get("name") == name):
                yield i, c, o


def test_executed_notebooks_read_clean(smoke_run):
    """A handful of stderr outputs at most; progress as whole text lines (no carriage returns, no
    ANSI cursor codes, no widgets that a static view shows at 0 %); no library noise."""
    _, P = smoke_run
    for path in H.report.series.list_notebooks():
        nb = nbformat.read(P.reports / "notebooks" / path.name, as_version=4)
        stderr = list(_streams(nb, "stderr"))
        # notebook 04 also trains and runs each PEFT variant of the ablation: a training and a prediction line each
        variants = len(H.load_config("smoke").ablation.variants)
        allowed = STDERR_HANDFUL + (2 * variants if path.stem == "04_sd_lora" else 0)
        assert len(stderr) <= allowed, (path.name, [o["text"][:80] for _, _, o in stderr])
        for i, _, o in _streams(nb):
            assert "\r" not in o["text"] and "\x1b[" not in o["text"], (path.name, i, o["text"][:120])
            assert "No LoRA keys associated" not in o["text"] and "open an issue" not in o["text"], path.name
        widgets = [c for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert not widgets, path.name


def test_executed_notebooks_print_no_machine_path(smoke_run):
    """The helpers name files relative to the run's root (or by their package): an executed notebook
    holds neither the root's absolute path nor the project's nor the interpreter's site-packages."""
    import sys

    from helpers.study.config import ROOT

    _, P = smoke_run
    machine = {str(P.root.resolve()), str(ROOT.resolve())}
    machine |= {p for p in sys.path if p.rstrip("/").endswith("site-packages")}
    for path in H.report.series.list_notebooks():
        nb = nbformat.read(P.reports / "notebooks" / path.name, as_version=4)
        for i, c in enumerate(nb.cells):
            if c.cell_type != "code":
                continue
            text = json.dumps(c.get("outputs", []))
            found = [m for m in machine if m in text]
            assert not found, (path.name, i, found, text[max(0, text.find(found[0]) - 80):][:240])
        meta = json.dumps(nb.metadata)                        # papermill records its input and output paths
        assert not [m for m in machine if m in meta], (path.name, meta[:400])
    # the tables and the manifest people read: no machine path either (home shown as ~)
    machine.add(str(Path.home().resolve()))
    for path in [*P.tables.glob("*.json"), P.reports / "manifest.json"]:
        text = path.read_text()
        found = [m for m in machine if m in text]
        assert not found, (path.name, found, text[max(0, text.find(found[0]) - 80):][:240])


def test_evaluation_cell_shows_at_most_one_progress_line_per_method(smoke_run):
    _, P = smoke_run
    nb = nbformat.read(P.reports / "notebooks" / "05_evaluation.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "evaluate_all(" in c.source)
    lines = [line for o in cell.get("outputs", []) if o.get("name") == "stderr" for line in o["text"].splitlines()
             if line.strip()]
    assert len(lines) <= len(H.study.methods.METHODS), lines


# figures of data, schedules or exact computations: as true in smoke as in full, so never stamped (issue 21)
MODEL_FREE_FIGURES = {"01_mask_kinds.png", "01_test_samples.png", "01_hole_fractions.png", "02_schedules.png",
                      "02_noised.png", "02_vlb_weights.png", "02_ddim_toy.png", "03_inputs.png"}
# the digits DDPM trained from scratch in notebook 02 (issue 18): a real result in every preset
REAL_RESULT_FIGURES = {"02_digits_grid.png", "02_digits_loss.png", "02_digits_curve.png", "06_digits.png"}


def test_the_smoke_stamp_is_on_every_model_dependent_figure_only(smoke_run):
    _, P = smoke_run
    figures = sorted(P.figures.glob("*.png"))
    assert len(figures) >= 10
    assert MODEL_FREE_FIGURES <= {f.name for f in figures}
    unstamped = MODEL_FREE_FIGURES | REAL_RESULT_FIGURES
    wrong = [f.name for f in figures if H.report.figures.png_is_stamped(f) == (f.name in unstamped)]
    assert not wrong
