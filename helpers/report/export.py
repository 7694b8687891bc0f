"""Run the notebook series with papermill and export the report.

    python -m helpers.report                           # everything (preset mini), then HTML report + slides
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
import re
import sys
import time
from pathlib import Path

from helpers.report.assets import SLIDE_SIZE, AssetsMissing, copy_slide_assets, find_slide_assets
from helpers.report.series import (
    HIDDEN_TAGS,
    NOTEBOOK_DIR,
    NotebookFailed,
    kernel_env,
    list_notebooks,
    manifest_base,
    run_notebook,
    select,
)
from helpers.study.config import DEFAULT_PRESET, PRESET_HELP, Config, add_set_argument, load_config, parse_overrides
from helpers.study.files import paths, save_json, shown_paths

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


def run(preset: str = DEFAULT_PRESET, only: str | None = None, start: str | None = None, overrides: dict | None = None,
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
    kernel_env()
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
    ap.add_argument("--preset", default=DEFAULT_PRESET, help=PRESET_HELP)
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
