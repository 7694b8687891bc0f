"""The papermill report runner: selection, failure reporting, manifest."""
import json
import re
from pathlib import Path

import nbformat
import pytest

import helpers as H


def _nbs(names):
    return [Path(f"/x/{n}.ipynb") for n in names]


def test_select_by_number_name_and_from():
    nbs = _nbs(["01_data", "02_ddpm_theory", "03_ddpm_inpainting", "04_sd_lora"])
    assert H.report.series.select(nbs, only="03") == [nbs[2]]
    assert H.report.series.select(nbs, only="3") == [nbs[2]]
    assert H.report.series.select(nbs, only="sd_lora") == [nbs[3]]
    assert H.report.series.select(nbs, start="02") == nbs[1:]
    assert H.report.series.select(nbs) == nbs
    with pytest.raises(ValueError, match="several"):
        H.report.series.select(nbs, only="ddpm")
    with pytest.raises(ValueError, match="no"):
        H.report.series.select(nbs, only="09")
    with pytest.raises(ValueError, match="not both"):
        H.report.series.select(nbs, only="01", start="02")


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
    with pytest.raises(H.report.series.NotebookFailed,
                       match=r"02_bad.ipynb failed in cell \d+ .*ValueError: boom in cell"):
        H.report.export.run("smoke", notebook_dir=nbdir)
    P = H.study.files.paths(H.load_config("smoke"))
    manifest = json.loads((P.reports / "manifest.json").read_text())
    assert [n["status"] for n in manifest["notebooks"]] == ["ok", "failed"]
    assert manifest["preset"] == "smoke" and manifest["packages"]["torch"]
    assert "commit" in manifest["git"] and "cuda" in manifest["device"]
    executed = nbformat.read(P.reports / "notebooks" / "01_ok.ipynb", as_version=4)
    assert any(c.get("outputs") is not None for c in executed.cells if c.cell_type == "code")
    assert (P.reports / "logs" / "02_bad.log").is_file()


@pytest.mark.slow
def test_the_runner_prints_no_kernel_transport_warning(tmp_root, capfd):
    """The kernels talk to the runner over IPC: ipykernel's "running over TCP without encryption"
    warning no longer reaches the terminal once per notebook."""
    nbdir = tmp_root / "nbs"
    _write(nbdir / "01_ok.ipynb", "x = 1")
    H.report.export.run("smoke", notebook_dir=nbdir, do_export=False)
    out, err = capfd.readouterr()
    assert "without encryption" not in out + err


@pytest.mark.slow
def test_two_runs_at_once_keep_their_kernels_apart(tmp_root, monkeypatch):
    """Two runners started together from the same notebooks folder (a test session beside `make report`):
    each kernel's IPC sockets live in a folder of its own, so neither gets the other's messages
    (jupyter_client's default, kernel-ipc-N in the working directory, failed with "Invalid Signature"),
    and the folder goes when the kernel shuts down (hundreds of them had piled up in /tmp)."""
    import concurrent.futures
    import tempfile

    sockets = tmp_root / "tmp"
    sockets.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(sockets))

    nbdir = tmp_root / "nbs"
    _write(nbdir / "01_a.ipynb", "import time\ntime.sleep(2)\nx = 1")
    jobs = [(nbdir / "01_a.ipynb", tmp_root / f"out{i}" / "01_a.ipynb", tmp_root / f"out{i}" / "01_a.log")
            for i in range(2)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        done = [pool.submit(H.report.series.run_notebook, src, dst, log, "smoke", {}) for src, dst, log in jobs]
        for f in done:
            f.result()
    for _, dst, _ in jobs:
        executed = nbformat.read(dst, as_version=4)
        assert all(o.get("output_type") != "error" for c in executed.cells for o in c.get("outputs", []))
    assert not list(nbdir.glob("kernel-ipc*"))
    assert not list(sockets.iterdir())


@pytest.mark.slow
def test_partial_run_keeps_earlier_entries(tmp_root):
    nbdir = tmp_root / "nbs"
    _write(nbdir / "01_a.ipynb", "x = 1")
    _write(nbdir / "02_b.ipynb", "y = 2")
    H.report.export.run("smoke", notebook_dir=nbdir, do_export=False)
    manifest = H.report.export.run("smoke", start="02", notebook_dir=nbdir, do_export=False)
    assert [(n["notebook"], n["status"]) for n in manifest["notebooks"]] == [("01_a.ipynb", "ok"), ("02_b.ipynb", "ok")]


def test_slide_assets_come_from_installed_packages(tmp_path):
    """reveal.js, require.js, jQuery and MathJax are copied from the packages of the normal install
    beside the HTML; both exports load them from there, nothing from the internet."""
    out = tmp_path / "out"
    assets = H.report.assets.copy_slide_assets(out, tmp_path / "empty_cache")
    js = out / "slides_js"
    for f in ("reveal.js/dist/reveal.js", "reveal.js/dist/reveal.css", "reveal.js/dist/theme/white.css",
              "reveal.js/plugin/notes/notes.js", "require.js", "jquery.min.js", "mathjax/MathJax.js",
              f"mathjax/config/{H.report.assets.MATHJAX_LOCAL_CONFIG}.js"):
        assert (js / f).is_file() and (js / f).stat().st_size > 0, f
    assert "reveal.js 5" in (js / "reveal.js/dist/reveal.js").read_text()[:200]
    assert not (js / "mathjax/localization/de").exists()             # interface languages other than en left out
    nb_path = tmp_path / "nb.ipynb"
    _write(nb_path, "from IPython.display import Markdown\nMarkdown('$$a^2 + b^2$$')")
    files = H.report.export.export(nb_path, out, assets)
    slides, report = files["slides"].read_text(), files["report"].read_text()
    assert 'src="slides_js/require.js"' in slides and "slides_js/reveal.js/dist/reveal.js" in slides
    for html in (slides, report):                                      # every script and style sheet is local
        assert f'src="{assets["mathjax_url"]}"' in html
        assert not re.search(r'<script[^>]*src="https?:|<link[^>]*href="https?:', html)
    assert "import mermaid" not in slides                              # the template's CDN import is removed
    assert "preset = " not in slides
    assert H.report.export.READY_RERENDER in slides and H.report.export.READY_RERENDER not in report
    assert f"width: {H.report.assets.SLIDE_SIZE[0]}" in slides and f"height: {H.report.assets.SLIDE_SIZE[1]}" in slides


def test_missing_assets_are_named_with_the_way_to_get_them(tmp_path, monkeypatch):
    # as if the --no-deps packages were absent
    monkeypatch.setattr(H.report.assets, "_package_dir", lambda package: None)
    with pytest.raises(H.report.assets.AssetsMissing,
                       match=r"reveal\.js.*requirements-nodeps\.txt.*slides-offline.*--cdn"):
        H.report.assets.find_slide_assets(tmp_path)
    # npm's copies (make slides-offline) stand in for the packages
    cache = tmp_path / "cache"
    for f in ("reveal.js/dist/reveal.js", "require.js", "jquery.min.js", "mathjax/MathJax.js",
              "mathjax/config/TeX-AMS_CHTML-full.js"):
        (cache / "slides_js" / f).parent.mkdir(parents=True, exist_ok=True)
        (cache / "slides_js" / f).write_text("//")
    assets = H.report.assets.copy_slide_assets(tmp_path / "out", cache)
    assert assets["mathjax_url"] == "slides_js/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe"


def test_cdn_only_when_asked(tmp_path):
    nb_path = tmp_path / "nb.ipynb"
    _write(nb_path, "x = 1")
    html = H.report.export.export(nb_path, tmp_path, None)["slides"].read_text()
    assert "slides_js/" not in html and "https://" in html


def test_main_loads_the_preset_once_and_passes_it_on(tmp_root, monkeypatch, capsys):
    loads, seen = [], {}
    real = H.report.export.load_config

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    def fake_run(preset, *args, cfg=None, **kwargs):
        seen["cfg"] = cfg
        return {"notebooks": []}

    monkeypatch.setattr(H.report.export, "load_config", counting_load)
    monkeypatch.setattr(H.report.export, "run", fake_run)
    assert H.report.export.main(["--preset", "smoke", "--no-export", "--set", "seed=7"]) == 0
    assert len(loads) == 1 and seen["cfg"].seed == 7
