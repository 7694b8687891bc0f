"""The papermill report runner: selection, failure reporting, manifest."""
import json
from pathlib import Path

import nbformat
import pytest

import helpers as H
from helpers import report as R


def _nbs(names):
    return [Path(f"/x/{n}.ipynb") for n in names]


def test_select_by_number_name_and_from():
    nbs = _nbs(["01_data", "02_ddpm_theory", "03_ddpm_inpainting", "04_sd_lora"])
    assert R.select(nbs, only="03") == [nbs[2]]
    assert R.select(nbs, only="3") == [nbs[2]]
    assert R.select(nbs, only="sd_lora") == [nbs[3]]
    assert R.select(nbs, start="02") == nbs[1:]
    assert R.select(nbs) == nbs
    with pytest.raises(ValueError, match="several"):
        R.select(nbs, only="ddpm")
    with pytest.raises(ValueError, match="no"):
        R.select(nbs, only="09")
    with pytest.raises(ValueError, match="not both"):
        R.select(nbs, only="01", start="02")


def _write(path, *sources):
    """A notebook of the series' layout: title, import line, parameters cell, then ``sources``."""
    nb = nbformat.v4.new_notebook()
    params = 'preset = "smoke"\noverrides = {}'
    nb.cells = [nbformat.v4.new_markdown_cell("# test", metadata={"slideshow": {"slide_type": "slide"}}),
                nbformat.v4.new_code_cell("import helpers as H"),
                nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"],
                                                            "slideshow": {"slide_type": "skip"}}),
                *[nbformat.v4.new_code_cell(s) for s in sources]]
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


@pytest.mark.slow
def test_failing_notebook_is_named_with_its_cell(tmp_root):
    nbdir = tmp_root / "nbs"
    _write(nbdir / "01_ok.ipynb", "x = 1")
    _write(nbdir / "02_bad.ipynb", "y = 2", "raise ValueError('boom in cell')")
    _write(nbdir / "03_never.ipynb", "z = 3")
    with pytest.raises(R.NotebookFailed, match=r"02_bad.ipynb failed in cell \d+ .*ValueError: boom in cell"):
        R.run("smoke", notebook_dir=nbdir)
    P = H.common.paths(H.load_config("smoke"))
    manifest = json.loads((P.reports / "manifest.json").read_text())
    assert [n["status"] for n in manifest["notebooks"]] == ["ok", "failed"]
    assert manifest["preset"] == "smoke" and manifest["packages"]["torch"]
    assert "commit" in manifest["git"] and "cuda" in manifest["device"]
    executed = nbformat.read(P.reports / "notebooks" / "01_ok.ipynb", as_version=4)
    assert any(c.get("outputs") is not None for c in executed.cells if c.cell_type == "code")
    assert (P.reports / "logs" / "02_bad.log").is_file()


@pytest.mark.slow
def test_partial_run_keeps_earlier_entries(tmp_root):
    nbdir = tmp_root / "nbs"
    _write(nbdir / "01_a.ipynb", "x = 1")
    _write(nbdir / "02_b.ipynb", "y = 2")
    R.run("smoke", notebook_dir=nbdir, do_export=False)
    manifest = R.run("smoke", start="02", notebook_dir=nbdir, do_export=False)
    assert [(n["notebook"], n["status"]) for n in manifest["notebooks"]] == [("01_a.ipynb", "ok"), ("02_b.ipynb", "ok")]


def test_offline_slide_assets_are_copied_and_used(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    assert R.offline_slide_assets(out, cache) is None             # nothing placed: CDN
    (cache / "slides_js" / "reveal.js" / "dist").mkdir(parents=True)
    for f in ("reveal.js/dist/reveal.js", "require.js", "jquery.min.js"):
        (cache / "slides_js" / f).write_text("//")
    assets = R.offline_slide_assets(out, cache)
    assert assets["require_js_url"] == "slides_js/require.js" and (out / "slides_js" / "require.js").is_file()
    nb_path = tmp_path / "nb.ipynb"
    _write(nb_path, "x = 1")
    nb = nbformat.read(nb_path, as_version=4)
    nbformat.write(nb, tmp_path / "executed.ipynb")
    html = R.export(tmp_path / "executed.ipynb", out, assets)["slides"].read_text()
    assert 'src="slides_js/require.js"' in html and "slides_js/reveal.js/dist/reveal.js" in html
    assert "preset = " not in html and "cdnjs.cloudflare.com/ajax/libs/mathjax" in html   # no local MathJax yet
    # with MathJax placed too, both the slides and the report load it from the copy
    (cache / "slides_js" / "mathjax").mkdir()
    (cache / "slides_js" / R.MATHJAX).write_text("//")
    assets = R.offline_slide_assets(out, cache)
    files = R.export(tmp_path / "executed.ipynb", out, assets)
    for kind in ("slides", "report"):
        html = files[kind].read_text()
        assert f"slides_js/{R.MATHJAX}{R.MATHJAX_CONFIG}" in html and "cdnjs.cloudflare.com/ajax/libs/mathjax" not in html
    assert (out / "slides_js" / R.MATHJAX).is_file()
    # formulas are laid out again once reveal.js is ready (a deck opened on a formula slide)
    assert R._READY_RERENDER in files["slides"].read_text() and R._READY_RERENDER not in files["report"].read_text()
