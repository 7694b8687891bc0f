"""Run the notebook series with papermill and export the report.

    python -m helpers.report --preset smoke            # everything, then HTML report + slides
    python -m helpers.report --preset full --from 04   # resume the series at notebook 04
    python -m helpers.report --preset smoke --only 01  # one notebook

Executed notebooks go to reports/<preset>/notebooks/, each notebook's cell output to
reports/<preset>/logs/<name>.log, and a run manifest (preset, config, seeds, package versions,
git commit, device, per-notebook status and time) to reports/<preset>/manifest.json, written
after every notebook so a crash loses nothing. The first failing notebook stops the run with its
name, the failing cell and the error. Finally the last notebook is exported as a static HTML
report (code hidden) and reveal.js slides (parameter cells removed, code hidden).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .common import paths, save_json
from .config import ROOT, add_set_argument, load_config, parse_overrides

NOTEBOOK_DIR = ROOT / "notebooks"
HIDDEN_TAGS = {"parameters", "injected-parameters"}
PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "torchmetrics",
            "torch-fidelity", "lpips", "scikit-image", "opencv-python-headless", "numpy", "papermill",
            "nbconvert")


class NotebookFailed(RuntimeError):
    """A notebook of the series raised: carries the notebook, the cell and the error."""


# Notebooks that serve an interactive app and never run unattended (papermill would start a server
# that nobody uses): 07_demo opens the Gradio demo (helpers.demo); `make demo` serves the same app.
INTERACTIVE = ("07_demo",)


def list_notebooks(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The series, in order: notebooks/NN_*.ipynb sorted by name, without the INTERACTIVE ones."""
    nbs = sorted(p for p in Path(notebook_dir).glob("[0-9][0-9]_*.ipynb") if p.stem not in INTERACTIVE)
    if not nbs:
        raise FileNotFoundError(f"no notebooks NN_*.ipynb in {notebook_dir}")
    return nbs


def _match(nbs: list[Path], key: str) -> int:
    """Index of the notebook named by ``key``: its number ("03"), its stem, or a unique substring."""
    hits = [i for i, p in enumerate(nbs) if p.stem == key or p.stem.split("_", 1)[0] == key.zfill(2)]
    hits = hits or [i for i, p in enumerate(nbs) if key in p.stem]
    if len(hits) != 1:
        raise ValueError(f"{key!r} names {'no' if not hits else 'several'} notebooks; "
                         f"choose from {[p.stem for p in nbs]}")
    return hits[0]


def select(nbs: list[Path], only: str | None = None, start: str | None = None) -> list[Path]:
    if only and start:
        raise ValueError("give --only or --from, not both")
    if only:
        return [nbs[_match(nbs, only)]]
    if start:
        return nbs[_match(nbs, start):]
    return nbs


def manifest_base(cfg) -> dict:
    """What reproduces a run: preset and config, seeds, versions, git commit, device."""
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except Exception:
            return None

    import torch
    device = {"cuda": torch.cuda.is_available(), "cpu": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        device["gpu"] = torch.cuda.get_device_name(0)
        device["gpu_count"] = torch.cuda.device_count()
    return {"preset": cfg.preset, "config": cfg.to_dict(), "seeds": {"seed": cfg.seed},
            "packages": {p: version(p) for p in PACKAGES}, "python": sys.version.split()[0],
            "platform": platform.platform(),
            "git": {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))},
            "device": device, "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "notebooks": []}


def _kernel_env() -> None:
    """Kernels start with this interpreter: put its bin folder first on PATH."""
    os.environ["INPAINT_TEXT_PROGRESS"] = "1"      # progress bars as text: they land in the logs
    # kernels import the helpers of the checkout that runs them (not another editable install)
    parts = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    bindir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bindir):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def run_notebook(src: Path, dst: Path, log_path: Path, preset: str, overrides: dict | None) -> None:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    dst.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        try:
            pm.execute_notebook(str(src), str(dst), parameters={"preset": preset, "overrides": overrides or {}},
                                kernel_name="python3", progress_bar=False, stdout_file=log, stderr_file=log,
                                cwd=str(src.parent), request_save_on_cell_execute=True)
        except PapermillExecutionError as e:
            cell_src = (e.source or "").strip().splitlines()
            first = cell_src[0] if cell_src else ""
            raise NotebookFailed(
                f"notebook {src.name} failed in cell {e.cell_index} (execution count {e.exec_count}, "
                f"starting {first!r}): {e.ename}: {e.evalue}\n"
                f"  executed notebook with the traceback: {dst}\n  cell output log: {log_path}") from None


SLIDE_ASSETS = {"reveal_url_prefix": "reveal.js", "require_js_url": "require.js", "jquery_url": "jquery.min.js"}
# MathJax 2.7 with the configuration nbconvert's templates load from their CDN
MATHJAX = "mathjax/MathJax.js"
MATHJAX_CONFIG = "?config=TeX-AMS_CHTML-full,Safe"


def offline_slide_assets(out_dir: Path, cache: Path) -> dict | None:
    """Copy local reveal.js, require.js, jQuery and MathJax (``make slides-offline`` puts them in
    data/cache/slides_js) beside the slides so they present without internet. Returns the exporter
    settings pointing at the copies, or None: the slides then load them from their CDNs. MathJax
    is optional (an older ``slides_js`` without it keeps loading MathJax from its CDN)."""
    import shutil

    src = Path(cache) / "slides_js"
    if not all((src / f).exists() for f in ("reveal.js/dist/reveal.js", "require.js", "jquery.min.js")):
        return None
    dst = Path(out_dir) / "slides_js"
    shutil.copytree(src, dst, dirs_exist_ok=True)
    assets = {trait: f"slides_js/{name}" for trait, name in SLIDE_ASSETS.items()}
    if (src / MATHJAX).is_file():
        assets["mathjax_url"] = f"slides_js/{MATHJAX}{MATHJAX_CONFIG}"
    return assets


# nbconvert's reveal template re-typesets a slide's formulas only on 'slidechanged', so a deck opened
# directly on a formula slide (a #/N link, a reload) shows them half laid out. Also after 'ready',
# queued behind MathJax's first typeset:
_SLIDE_HOOK = "Reveal.addEventListener('slidechanged', update);"
_READY_RERENDER = ("\n        Reveal.addEventListener('ready', function () {\n"
                   "          MathJax.Hub.Queue(['Rerender', MathJax.Hub, Reveal.getCurrentSlide()]);\n        });")


def export(executed: Path, out_dir: Path, slide_assets: dict | None = None) -> dict[str, Path]:
    """HTML report and reveal.js slides of an executed notebook, parameter cells removed, code hidden.
    ``slide_assets``: exporter settings for local reveal.js/require.js/jQuery/MathJax (default: their CDNs)."""
    import nbformat
    from nbconvert import HTMLExporter, SlidesExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = nbformat.read(str(executed), as_version=4)
    remove = TagRemovePreprocessor(remove_cell_tags=HIDDEN_TAGS, enabled=True)
    out = {}
    slides = SlidesExporter(exclude_input=True, exclude_output_prompt=True, reveal_scroll=True)
    report = HTMLExporter(exclude_input=True, exclude_output_prompt=True)
    for trait, url in (slide_assets or {}).items():
        setattr(slides, trait, url)
        if trait == "mathjax_url":
            report.mathjax_url = url            # the report sits beside the slides: the same copy serves both
    for kind, exporter in (("report", report), ("slides", slides)):
        exporter.register_preprocessor(remove, enabled=True)
        body, _ = exporter.from_notebook_node(nb)
        if kind == "slides":
            body = body.replace(_SLIDE_HOOK, _SLIDE_HOOK + _READY_RERENDER, 1)
        path = out_dir / (f"{executed.stem}.{kind}.html")
        path.write_text(body, encoding="utf-8")
        out[kind] = path
    return out


def run(preset: str = "smoke", only: str | None = None, start: str | None = None, overrides: dict | None = None,
        do_export: bool = True, notebook_dir: Path = NOTEBOOK_DIR) -> dict:
    """Execute the selected notebooks in order; return the manifest (also saved as manifest.json)."""
    from tqdm.auto import tqdm

    cfg = load_config(preset, overrides)
    P = paths(cfg)
    _kernel_env()
    nbs = select(list_notebooks(notebook_dir), only, start)
    manifest = manifest_base(cfg)
    manifest["overrides"] = overrides or {}
    manifest_path = P.reports / "manifest.json"
    if (only or start) and manifest_path.is_file():
        # a partial run keeps the entries of the notebooks it does not run again
        earlier = json.loads(manifest_path.read_text()).get("notebooks", [])
        rerun = {nb.name for nb in nbs}
        manifest["notebooks"] = [e for e in earlier if e["notebook"] not in rerun]
    bar = tqdm(nbs, desc=f"notebooks ({preset})", unit="nb", dynamic_ncols=True)
    for nb in bar:
        bar.set_postfix_str(nb.stem)
        entry = {"notebook": nb.name, "status": "running"}
        manifest["notebooks"].append(entry)
        manifest["notebooks"].sort(key=lambda e: e["notebook"])
        save_json(manifest, manifest_path)
        t0 = time.perf_counter()
        try:
            run_notebook(nb, P.reports / "notebooks" / nb.name, P.reports / "logs" / f"{nb.stem}.log",
                         preset, overrides)
            entry["status"] = "ok"
        except Exception as e:
            entry["status"], entry["error"] = "failed", str(e)
            raise
        finally:
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            manifest["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            save_json(manifest, manifest_path)
    if do_export and nbs and nbs[-1] == list_notebooks(notebook_dir)[-1]:
        files = export(P.reports / "notebooks" / nbs[-1].name, P.reports, offline_slide_assets(P.reports, P.cache))
        manifest["exports"] = {k: str(v) for k, v in files.items()}
        save_json(manifest, manifest_path)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="smoke", help="smoke | full | path/to/preset.yaml")
    ap.add_argument("--only", help="run just this notebook (number, name or unique part of it)")
    ap.add_argument("--from", dest="start", help="run from this notebook to the end")
    add_set_argument(ap)
    ap.add_argument("--no-export", action="store_true", help="skip the HTML report and slides")
    args = ap.parse_args(argv)
    try:
        manifest = run(args.preset, args.only, args.start, parse_overrides(args.overrides), not args.no_export)
    except NotebookFailed as e:
        print(f"\nFAILED: {e}", file=sys.stderr)
        return 1
    P = paths(load_config(args.preset))
    print(f"\nDone: {len(manifest['notebooks'])} notebook(s) in {P.reports}")
    for kind, path in manifest.get("exports", {}).items():
        print(f"  {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
