"""Run the notebook series with papermill and export the report.

    python -m helpers.report --preset smoke            # everything, then HTML report + slides
    python -m helpers.report --preset full --from 04   # resume the series at notebook 04
    python -m helpers.report --preset smoke --only 01  # one notebook

Executed notebooks go to reports/<preset>/notebooks/, each notebook's cell output to
reports/<preset>/logs/<name>.log, and a run manifest (preset, config, seeds, package versions,
git commit, device, per-notebook status and time) to reports/<preset>/manifest.json, written
after every notebook so a crash loses nothing. The first failing notebook stops the run with its
name, the failing cell and the error. Finally the last notebook is exported as a static HTML
report (code hidden) and reveal.js slides (parameter cells removed, code hidden), with the
JavaScript and MathJax they need copied beside them (reports/<preset>/slides_js/): the folder
presents offline (``--cdn`` loads them from the internet instead). Last, the whole course is built
as a static website from the executed notebooks, reports/<preset>/site/ (helpers.report.site;
``--no-site`` skips it).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from helpers.study.config import ROOT, Config, add_set_argument, load_config, parse_overrides
from helpers.study.files import paths, save_json, shown_path, shown_paths

NOTEBOOK_DIR = ROOT / "notebooks"


HIDDEN_TAGS = {"parameters", "injected-parameters"}


PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "torchmetrics",
            "torch-fidelity", "lpips", "scikit-image", "opencv-python-headless", "numpy", "papermill",
            "nbconvert")


# ---------------------------------------------------------------- text fit to publish
def public_text(text, roots: Sequence[Path] = ()) -> str:
    """``text`` without this machine's paths: a path inside the project (or one of ``roots``)
    becomes relative to it, a file inside an installed package is named by its package, the home
    folder becomes ``~``. Exported slides and reports carry no machine's paths or user names."""
    import sysconfig

    if not isinstance(text, str):
        return "" if text is None or (text != text) else str(text)
    site = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    site |= {p for p in sys.path if p.rstrip("/").endswith("site-packages")}
    for d in sorted(site, key=len, reverse=True):
        text = text.replace(d.rstrip("/") + "/", "package ")
    bases = [Path(r) for r in roots] + [ROOT]
    if os.environ.get("INPAINT_ROOT"):
        bases.append(Path(os.environ["INPAINT_ROOT"]))
    for base in sorted({str(b.resolve()).rstrip("/") for b in bases}, key=len, reverse=True):
        text = re.sub(re.escape(base) + r"/?", "", text)
    # outputs written from another checkout (a moved or copied project): cut at its reports/ or data/
    text = re.sub(r"(?:/[^\s/;,()]+)+/(?=(?:reports|data)/)", "", text)
    home = str(Path.home()).rstrip("/")
    if len(home) > 1:
        text = text.replace(home + "/", "~/").replace(home, "~")
    return text


def first_sentence(text: str) -> str:
    """The statement of a reason without the instructions after it."""
    text = (text or "").strip()
    cut = text.find(". ")
    return (text[:cut] if cut > 0 else text).rstrip(".")


class NotebookFailed(RuntimeError):
    """A notebook of the series raised: carries the notebook, the cell and the error."""


# Notebooks that serve an interactive app and never run unattended (papermill would start a server
# that nobody uses): 07_demo opens the Gradio demo (helpers.apps.demo); `make demo` serves the same app.
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


def ipc_kernel_manager():
    """The kernel manager of the runner: the kernel talks to it over local IPC sockets, not TCP (no
    port opened on the machine, and ipykernel's "running over TCP without encryption" warning, once
    per notebook on the terminal, has nothing to warn about)."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        transport = "ipc"

    return IPCKernelManager


def shown_papermill_paths(path: Path) -> None:
    """papermill records the notebook's input and output paths in its metadata: shown as
    :func:`helpers.study.files.shown_path` shows them, so an executed notebook names no machine path."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            meta[key] = shown_path(meta[key])
    nbformat.write(nb, path)


def run_notebook(src: Path, dst: Path, log_path: Path, preset: str, overrides: dict | None) -> None:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    dst.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        try:
            pm.execute_notebook(str(src), str(dst), parameters={"preset": preset, "overrides": overrides or {}},
                                kernel_name="python3", progress_bar=False, stdout_file=log, stderr_file=log,
                                cwd=str(src.parent), request_save_on_cell_execute=True,
                                kernel_manager_class=ipc_kernel_manager())
        except PapermillExecutionError as e:
            shown_papermill_paths(dst)
            cell_src = (e.source or "").strip().splitlines()
            first = cell_src[0] if cell_src else ""
            raise NotebookFailed(
                f"notebook {src.name} failed in cell {e.cell_index} (execution count {e.exec_count}, "
                f"starting {first!r}): {e.ename}: {e.evalue}\n"
                f"  executed notebook with the traceback: {dst}\n  cell output log: {log_path}") from None
    shown_papermill_paths(dst)


# ---------------------------------------------------------------- presenting without a network
# The slides and the report load reveal.js, require.js, jQuery and MathJax. By default they come
# from files that pip packages of the normal install ship (requirements-nodeps.txt installs the
# first two with --no-deps, only for these files), copied into reports/<preset>/slides_js/ beside
# the exported HTML: the folder can be zipped and presented anywhere, with no network.
#   reveal.js 5.2 (MIT)   <- sphinx-revealjs (Apache-2.0): sphinx_revealjs/_static/revealjs
#   require.js 2.3 (MIT), jQuery (MIT) <- nbclassic (BSD-3-Clause): nbclassic/static/components
#   MathJax 2.7 (Apache-2.0) <- jupyter-server-mathjax (BSD-3-Clause): jupyter_server_mathjax/static
# `make slides-offline` (npm) fills data/cache/slides_js with the same layout: used for any piece
# the packages do not provide. CDNs only when asked for (``--cdn``).
PACKAGED = {  # name in slides_js/ -> (package, path inside it)
    "reveal.js": ("sphinx_revealjs", "_static/revealjs"),
    "require.js": ("nbclassic", "static/components/requirejs/require.js"),
    "jquery.min.js": ("nbclassic", "static/components/jquery/jquery.min.js"),
    "mathjax": ("jupyter_server_mathjax", "static"),
}


REVEAL_PARTS = ("dist/reveal.js", "dist/reveal.css", "dist/theme", "plugin/notes", "LICENSE")


SLIDE_ASSETS = {"reveal.js": "reveal_url_prefix", "require.js": "require_js_url", "jquery.min.js": "jquery_url"}


MATHJAX = "mathjax/MathJax.js"


# MathJax's own configuration file for these slides: jupyter-server-mathjax ships only the STIX-Web
# fonts of the HTML-CSS output (no TeX fonts, no image fonts), so MathJax is told to use them.
MATHJAX_LOCAL_CONFIG = "course"


MATHJAX_LOCAL = """MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web",
  imageFont: null, linebreaks: {automatic: true}}});
MathJax.Ajax.loadComplete("[MathJax]/config/%s.js");
""" % MATHJAX_LOCAL_CONFIG  # noqa: UP031 (a JavaScript template: braces would need escaping in a format string)


SLIDE_SIZE = (1280, 720)     # the slide's logical size; reveal.js scales it to the screen


class AssetsMissing(RuntimeError):
    """A file the offline slides need is neither in an installed package nor in the npm cache."""


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    from importlib.util import find_spec
    try:
        spec = find_spec(package)
    except (ImportError, ValueError):
        return None
    locs = list(spec.submodule_search_locations or []) if spec else []
    return Path(locs[0]) if locs else None


def find_slide_assets(cache: Path) -> dict[str, Path]:
    """Where each piece comes from: the installed package's copy, else the npm cache
    (data/cache/slides_js). Raises :class:`AssetsMissing`, saying how to get what is missing."""
    found, missing = {}, []
    for name, (package, rel) in PACKAGED.items():
        pkg = _package_dir(package)
        candidates = ([pkg / rel] if pkg else []) + [Path(cache) / "slides_js" / name]
        hit = next((c for c in candidates if c.exists()), None)
        if hit is None:
            missing.append(f"{name} (package {package})")
        else:
            found[name] = hit
    if missing:
        raise AssetsMissing(
            "the offline slides need " + ", ".join(missing) + ": install them with "
            "`pip install --no-deps -r requirements-nodeps.txt` (what `make venv` does), or fetch them "
            "from npm with `make slides-offline`; or export with --cdn to load them from the internet")
    return found


def mathjax_config(mathjax_dir: Path) -> str:
    """The MathJax combined configuration present in a copy (the packaged one or npm's)."""
    for name in ("TeX-AMS-MML_HTMLorMML-full", "TeX-AMS_CHTML-full"):
        if (mathjax_dir / "config" / f"{name}.js").is_file():
            extra = f",{MATHJAX_LOCAL_CONFIG}" if (mathjax_dir / "fonts" / "HTML-CSS" / "STIX-Web").is_dir() else ""
            return f"?config={name},Safe{extra}"
    raise AssetsMissing(f"no MathJax configuration TeX-AMS-MML_HTMLorMML-full or TeX-AMS_CHTML-full in {mathjax_dir}")


def copy_slide_assets(out_dir: Path, cache: Path) -> dict:
    """Copy reveal.js, require.js, jQuery and MathJax into ``out_dir``/slides_js and return the
    exporter settings that point at the copies (relative URLs: the folder moves as a whole)."""
    import shutil

    src = find_slide_assets(cache)
    dst = Path(out_dir) / "slides_js"
    dst.mkdir(parents=True, exist_ok=True)
    for name, path in src.items():
        target = dst / name
        if path.is_file():
            shutil.copy2(path, target)
        elif name == "reveal.js":          # only what the deck loads: the dist files, themes, notes plugin
            for part in REVEAL_PARTS:
                p = path / part
                if p.is_dir():
                    shutil.copytree(p, target / part, dirs_exist_ok=True)
                elif p.is_file():
                    (target / part).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(p, target / part)
        else:                              # MathJax: everything but its 40 other interface languages
            def ignore(folder, names):
                return [n for n in names if Path(folder).name == "localization" and n != "en"]
            shutil.copytree(path, target, ignore=ignore, dirs_exist_ok=True)
    (dst / "mathjax" / "config" / f"{MATHJAX_LOCAL_CONFIG}.js").write_text(MATHJAX_LOCAL)
    assets = {trait: f"slides_js/{name}" for name, trait in SLIDE_ASSETS.items()}
    assets["mathjax_url"] = f"slides_js/{MATHJAX}{mathjax_config(dst / 'mathjax')}"
    return assets


# nbconvert's reveal template re-typesets a slide's formulas only on 'slidechanged', so a deck opened
# directly on a formula slide (a #/N link, a reload) shows them half laid out. Also after 'ready',
# queued behind MathJax's first typeset. The deck object is also kept as window.Reveal (the template
# gets it from require.js only), so that a browser test or a console can drive it.
_SLIDE_HOOK = "Reveal.addEventListener('slidechanged', update);"


READY_RERENDER = ("\n        window.Reveal = Reveal;"
                   "\n        Reveal.addEventListener('ready', function () {\n"
                   "          MathJax.Hub.Queue(['Rerender', MathJax.Hub, Reveal.getCurrentSlide()]);\n        });")


# nbconvert's reveal template imports mermaid.js from a CDN on every deck; these notebooks draw no
# mermaid diagrams, so the import (a network request) is removed.
_MERMAID_IMPORT = re.compile(r"<script type=\"module\">\s*import mermaid from '[^']*';\s*"
                             r"mermaid\.initialize\(\{[^}]*\}\);\s*</script>")


# Slide-sized type for tables and text: nbconvert's defaults (20 px text, tables at 12 px with
# ellipsis-free wide cells) are written for a notebook, not for a 1280x720 slide.
_DECK_CSS = """<style type="text/css">
.reveal .slides section { text-align: left; }
.reveal h1, .reveal h2, .reveal h3 { text-transform: none; text-align: left; }
.reveal .jp-RenderedHTMLCommon { font-size: 22px; line-height: 1.35; }
.reveal .jp-RenderedHTMLCommon h1 { font-size: 40px; margin-bottom: 12px; }
.reveal .jp-RenderedHTMLCommon h2 { font-size: 32px; margin: 0 0 10px 0; }
.reveal .jp-RenderedHTMLCommon table { font-size: 17px; margin: 4px 0; }
.reveal .jp-RenderedHTMLCommon td, .reveal .jp-RenderedHTMLCommon th { padding: 3px 8px; }
.reveal .jp-RenderedHTMLCommon li { margin-bottom: 4px; }
.reveal .jp-RenderedHTMLCommon p { margin-bottom: 8px; }
.reveal .jp-OutputArea-output img { max-height: 560px; width: auto; max-width: 100%; }
.reveal .jp-Cell { padding: 0; }
.reveal .jp-InputPrompt, .reveal .jp-OutputPrompt { display: none; }
.reveal .jp-RenderedHTMLCommon td, .reveal .jp-RenderedHTMLCommon th { text-align: left; }
</style>
"""


# MathJax keeps a hidden MathML copy of each formula for screen readers, styled with TeX fonts
# (MathJax_AMS, MathJax_Script) that the packaged MathJax does not ship: without this rule the browser
# asks for the missing files (local requests that fail). The copy is never seen.
ASSISTIVE_MATHML_CSS = """<style type="text/css">
.MJX_Assistive_MathML, .MJX_Assistive_MathML * { font-family: serif !important; }
</style>
"""


def export(executed: Path, out_dir: Path, slide_assets: dict | None = None) -> dict[str, Path]:
    """HTML report and reveal.js slides of an executed notebook, parameter cells removed, code hidden.
    ``slide_assets``: exporter settings for local reveal.js/require.js/jQuery/MathJax (from
    :func:`copy_slide_assets`); None loads them from their CDNs (``--cdn``)."""
    import nbformat
    from nbconvert import HTMLExporter, SlidesExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = nbformat.read(str(executed), as_version=4)
    nb.metadata.pop("widgets", None)      # widget state would load the widget manager from a CDN
    remove = TagRemovePreprocessor(remove_cell_tags=HIDDEN_TAGS, enabled=True)
    out = {}
    slides = SlidesExporter(exclude_input=True, exclude_output_prompt=True, reveal_scroll=False, reveal_theme="white",
                            reveal_width=str(SLIDE_SIZE[0]), reveal_height=str(SLIDE_SIZE[1]))
    report = HTMLExporter(exclude_input=True, exclude_output_prompt=True)
    for trait, url in (slide_assets or {}).items():
        setattr(slides, trait, url)
        if trait in ("mathjax_url", "require_js_url", "jquery_url"):
            setattr(report, trait, url)      # the report sits beside the slides: the same copies serve both
    for kind, exporter in (("report", report), ("slides", slides)):
        exporter.register_preprocessor(remove, enabled=True)
        body, _ = exporter.from_notebook_node(nb)
        if kind == "slides":
            body = body.replace(_SLIDE_HOOK, _SLIDE_HOOK + READY_RERENDER, 1)
            body = _MERMAID_IMPORT.sub("", body, count=1)
            body = body.replace("</head>", _DECK_CSS + "</head>", 1)
        body = body.replace("</head>", ASSISTIVE_MATHML_CSS + "</head>", 1)
        path = out_dir / (f"{executed.stem}.{kind}.html")
        path.write_text(body, encoding="utf-8")
        out[kind] = path
    return out


def run(preset: str = "smoke", only: str | None = None, start: str | None = None, overrides: dict | None = None,
        do_export: bool = True, notebook_dir: Path = NOTEBOOK_DIR, cdn: bool = False,
        cfg: Config | None = None, do_site: bool = True) -> dict:
    """Execute the selected notebooks in order; return the manifest (also saved as manifest.json).
    The export uses local copies of the slides' JavaScript (checked before anything runs); ``cdn``
    loads it from the internet instead. ``cfg``: ``preset`` with ``overrides`` when the caller has
    loaded it already (:func:`main`), else loaded here. After the export, ``do_site`` builds the
    course's website from the executed notebooks (reports/<preset>/site/, :mod:`helpers.report.site`)."""
    from tqdm.auto import tqdm

    cfg = cfg if cfg is not None else load_config(preset, overrides)
    P = paths(cfg)
    _kernel_env()
    nbs = select(list_notebooks(notebook_dir), only, start)
    will_export = do_export and nbs and nbs[-1] == list_notebooks(notebook_dir)[-1]
    if will_export and not cdn:
        find_slide_assets(P.cache)       # fail now, not after an hour of notebooks
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
        save_json(shown_paths(manifest, P.root), manifest_path)
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
            save_json(shown_paths(manifest, P.root), manifest_path)
    if will_export:
        assets = None if cdn else copy_slide_assets(P.reports, P.cache)
        files = export(P.reports / "notebooks" / nbs[-1].name, P.reports, assets)
        manifest["exports"] = {k: str(v) for k, v in files.items()}
        save_json(shown_paths(manifest, P.root), manifest_path)
        if do_site:                      # the last step: the whole course as a website (helpers.report.site)
            from helpers.report.site import build as build_site
            t0 = time.perf_counter()
            manifest["exports"]["site"] = str(build_site(preset, cdn=cdn, notebook_dir=notebook_dir))
            manifest["site_seconds"] = round(time.perf_counter() - t0, 1)
            save_json(shown_paths(manifest, P.root), manifest_path)  # the returned one keeps full paths
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="smoke", help="smoke | full | path/to/preset.yaml")
    ap.add_argument("--only", help="run just this notebook (number, name or unique part of it)")
    ap.add_argument("--from", dest="start", help="run from this notebook to the end")
    add_set_argument(ap)
    ap.add_argument("--no-export", action="store_true", help="skip the HTML report and slides")
    ap.add_argument("--no-site", action="store_true", help="skip the website of the course (reports/<preset>/site)")
    ap.add_argument("--cdn", action="store_true",
                    help="slides and report load reveal.js and MathJax from the internet instead of local copies")
    args = ap.parse_args(argv)
    overrides = parse_overrides(args.overrides)
    cfg = load_config(args.preset, overrides)           # loaded once: the run and the summary below share it
    try:
        manifest = run(args.preset, args.only, args.start, overrides, not args.no_export, cdn=args.cdn, cfg=cfg,
                       do_site=not args.no_site)
    except (NotebookFailed, AssetsMissing) as e:
        print(f"\nFAILED: {e}", file=sys.stderr)
        return 1
    P = paths(cfg)
    print(f"\nDone: {len(manifest['notebooks'])} notebook(s) in {P.reports}")
    for kind, path in manifest.get("exports", {}).items():
        print(f"  {kind}: {path}")
    return 0
