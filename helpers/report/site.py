"""The course as a website: every notebook with the outputs of the last run, offline.

    python -m helpers.report.site --preset smoke        # reports/smoke/site/index.html (`make site`)

Sphinx (myst-nb, sphinx-book-theme) builds a static site from the executed notebooks of
``reports/<preset>/notebooks/`` (nothing is executed again: ``nb_execution_mode = "off"``); a
notebook the runner never executes (``07_demo``) is shown from its source without outputs. Pages:
a landing page (the course, the study it reproduces, this run's comparison table and key figure,
how to run it, what the preset's numbers mean), one page per notebook in order, the teacher's
notes of each notebook as a closed dropdown under its exercises, the benchmark results, and links
to the slides and the one-page report (copied into the site). Every page carries the preset's
stamp (the smoke preset's numbers are a pipeline check, not a result).

Offline: MathJax 2.7 is copied from ``jupyter-server-mathjax`` (as for the slides), the theme's
scripts and fonts come from its package, nothing loads from a network (``cdn=True``: MathJax
from its CDN). No machine path: outputs pass through :func:`helpers.report.public.public_text`.
The folder is self-contained: zip it and open ``index.html`` anywhere.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from helpers.report import published
from helpers.report.assets import MATHJAX_LOCAL, MATHJAX_LOCAL_CONFIG, find_slide_assets, mathjax_config
from helpers.report.public import public_text
from helpers.report.series import INTERACTIVE, NOTEBOOK_DIR
from helpers.study.config import DEFAULT_PRESET, PRESET_HELP, ROOT, load_config
from helpers.study.files import paths

DOCS_DIR = ROOT / "docs"


SITE_TITLE = "Image completion with diffusion models"


# MathJax 2.7 pieces the site needs: its loader, the combined TeX configuration, the TeX input and
# HTML-CSS output with the STIX-Web fonts jupyter-server-mathjax ships (not the 3 MB SVG output, not
# the 40 other interface languages).
MATHJAX_SKIP = ("jax/output/SVG",)


MATHJAX_CDN = "https://cdnjs.cloudflare.com/ajax/libs/mathjax/2.7.7/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"


# Sphinx writes inline math as \( \) and display math as \[ \] inside elements of class "math";
# MathJax 2 typesets those only (code cells and their outputs keep their dollar signs). The fonts are
# set here, read before MathJax's combined configuration: jupyter-server-mathjax ships only the
# STIX-Web fonts, and set later MathJax would first ask for TeX font files that are not there.
MATHJAX2_CONFIG = {"tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]],
                               "processEscapes": True, "processClass": "math|output_area",
                               "ignoreClass": "tex2jax_ignore|bd-page-width"},
                   "HTML-CSS": {"availableFonts": [], "preferredFont": None, "webFont": "STIX-Web",
                                "imageFont": None, "linebreaks": {"automatic": True}}}


# MathJax keeps a hidden MathML copy of every formula for screen readers; its styles name TeX fonts
# (MathJax_AMS, MathJax_Script) that jupyter-server-mathjax does not ship, and Chromium would ask for
# the missing files. The copy is never seen: it keeps the page's serif font. Last rule: a long inline path or call
# (``reports/<preset>/models/...``) breaks where it must on a narrow screen instead of widening the whole page
# (Sphinx keeps ``span.pre`` on one line).
SITE_CSS = """.MJX_Assistive_MathML, .MJX_Assistive_MathML * { font-family: serif !important; }
.bd-header-announcement { font-size: 0.9rem; }
.cell_output img { max-width: 100%; height: auto; }
code.literal, code.literal span.pre { overflow-wrap: anywhere; white-space: pre-wrap; }
"""


# output types that need a widget manager or a CDN in a browser: kept as their text/plain form
WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")


def _copy_mathjax(src: Path, dst: Path) -> str:
    """Copy MathJax from ``src`` into ``dst``; return the query string of its configuration."""
    def ignore(folder, names):
        rel = Path(folder).relative_to(src).as_posix()
        out = [n for n in names if f"{rel}/{n}".lstrip("./") in MATHJAX_SKIP or (rel == "." and n in MATHJAX_SKIP)]
        if Path(folder).name == "localization":
            out += [n for n in names if n != "en"]
        return out
    shutil.copytree(src, dst, ignore=ignore, dirs_exist_ok=True)
    (dst / "config" / f"{MATHJAX_LOCAL_CONFIG}.js").write_text(MATHJAX_LOCAL)
    return mathjax_config(dst)


# ---------------------------------------------------------------- texts of the pages
def stamp(cfg, manifest: dict | None = None) -> str:
    """The preset's stamp every page carries: which preset made the outputs, and for smoke that its
    numbers are a pipeline check."""
    from helpers.report.text import smoke_warning

    when = (manifest or {}).get("finished") or (manifest or {}).get("started")
    made = f"Outputs of the last `{cfg.preset}` run" + (f" ({when[:10]})" if when else "")
    warning = smoke_warning(cfg)
    if warning and cfg.preset == "smoke":
        return f"{made}, a pipeline check, not a result. {warning.strip('*')}"
    if warning:
        return f"{made}: {warning.replace('**', '')}"
    return f"{made}: preset **{cfg.preset}**."


def _stamp_html(text: str) -> str:
    """The stamp as the theme's announcement banner (plain HTML)."""
    import html
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def teacher_sections(notes: str) -> tuple[str, dict[str, str]]:
    """docs/teacher_notes.md split into its introduction and one section per notebook number."""
    parts = re.split(r"^## (\d\d) [^\n]*\n", notes, flags=re.M)
    intro = re.sub(r"^# [^\n]*\n", "", parts[0]).strip()
    return intro, {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def _md_table(df) -> str:
    """A pandas table as a MyST (pipe) table, its index as the first column."""
    import pandas as pd

    df = df.reset_index() if df.index.name or not df.index.equals(pd.RangeIndex(len(df))) else df

    def cell(v) -> str:
        if isinstance(v, float):
            return "" if v != v else f"{v:.4g}"
        return public_text(str(v)).replace("|", "\\|").replace("\n", " ")
    rows = [" | ".join(str(c) for c in df.columns), " | ".join("---" for _ in df.columns)]
    rows += [" | ".join(cell(v) for v in r) for r in df.itertuples(index=False)]
    return "\n".join(f"| {r} |" for r in rows)


def landing_page(cfg, reports: Path, pages: list[tuple[str, str]], manifest: dict, has_slides: bool,
                 figure: str | None) -> str:
    """index.md: what the course is, the study, this run's table and figure, how to run it."""
    import pandas as pd

    from helpers.report.text import smoke_warning

    readme = (ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").is_file() else ""
    m = re.search(r"^# [^\n]*\n(.*?)^## ", readme, flags=re.S | re.M)
    about = m.group(1).strip() if m else ""
    lines = [f"# {SITE_TITLE}: DDPM vs Stable Diffusion 1.5 + LoRA", ""]
    lines += [f":::{{admonition}} Preset {cfg.preset}", ":class: warning" if cfg.preset == "smoke" else
              ":class: note", "", smoke_warning(cfg) or
              f"These pages show the outputs of the `{cfg.preset}` preset's last run.", ":::", ""]
    lines += ["## The course", "", about, ""]
    lines += ["## The study it reproduces", "",
              f"{published.STUDY_CITATION}. Its own numbers, on {published.STUDY_PROTOCOL}:", "",
              _md_table(pd.DataFrame(published.STUDY).drop(columns=["id"]).rename(columns={
                  "psnr": "PSNR ↑ (dB)", "ssim": "SSIM ↑", "lpips": "LPIPS ↓", "fid": "FID ↓"})), ""]
    table = reports / "tables" / "06_comparison.csv"
    lines += ["## This run", ""]
    if table.is_file():
        lines += ["The comparison table of notebook 06 (`tables/06_comparison.csv`), measured by the "
                  f"`{cfg.preset}` run:", "", _md_table(pd.read_csv(table)), ""]
    else:
        lines += ["No comparison table yet: notebook 06 has not run with this preset.", ""]
    if figure:
        lines += [f":::{{figure}} {figure}", ":width: 100%", "",
                  f"Completions of the test images by every method (notebook 06, preset `{cfg.preset}`).", ":::", ""]
    nbs = manifest.get("notebooks", [])
    if nbs:
        lines += ["Notebooks of this run: " + ", ".join(f"{e['notebook'].removesuffix('.ipynb')} "
                                                         f"({e.get('status')}, {e.get('seconds', '?')} s)"
                                                         for e in nbs) + ".", ""]
    lines += ["## The pages", "", "Every notebook ends with a summary and 2-4 exercises; the outcome to expect "
              "from each (the teacher's notes, `docs/teacher_notes.md`) is under them in a closed *Solutions* block: "
              "try first, then open it.", "", *[f"* [{title}]({name}.ipynb)" for name, title in pages],
              "* [Benchmark results](benchmarks.md)", ""]
    if has_slides:
        lines += ["The talk of notebook 06, offline: <a href=\"slides/06_comparison.slides.html\">the slides</a> "
                  "(arrow keys; `s` opens the speaker view) and <a href=\"slides/06_comparison.report.html\">"
                  "the one-page report</a>.", ""]
    lines += ["## Run it yourself", "", "```bash",
              "make lab       # JupyterLab on notebooks/: take the course cell by cell",
              f"make report PRESET={cfg.preset}   # run every notebook, export the slides, the report and this site",
              f"make demo PRESET={cfg.preset}     # the live demo on http://127.0.0.1:7860 (Gradio, offline)",
              f"make site PRESET={cfg.preset}     # this site again from the last run (no notebook re-executed)",
              "```", "", "`smoke` runs on any CPU in minutes with tiny random models (a pipeline check); `full` "
              "runs the real study on a GPU. Each notebook page offers its `.ipynb` and its MyST `.md` to download.",
              ""]
    lines += ["```{toctree}", ":hidden:", ":maxdepth: 1", "", *[f"{n}.ipynb" for n, _ in pages],
              "benchmarks.md", "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- the notebook pages
def _clean_output(out: dict) -> dict:
    """An output without machine paths and without widget views (their text form stays)."""
    if out.get("output_type") == "stream":
        out["text"] = public_text("".join(out.get("text", "")))
    elif out.get("output_type") in ("display_data", "execute_result"):
        data = out.get("data", {})
        for mime in WIDGET_MIMES:
            data.pop(mime, None)
        for mime, value in list(data.items()):
            if mime.startswith("text/") or mime.endswith(("json", "javascript")):
                data[mime] = public_text(value if isinstance(value, str) else "".join(value)) \
                    if not isinstance(value, dict) else value
    elif out.get("output_type") == "error":
        out["traceback"] = [public_text(t) for t in out.get("traceback", [])]
        out["evalue"] = public_text(out.get("evalue", ""))
    return out


def notebook_page(nb, name: str, executed: bool, cfg, solutions: str | None, downloads: list[str] | None = None):
    """The notebook ``nb`` as a page: outputs cleaned, download links and the preset stamp under its
    title, the teacher's notes in a closed dropdown at the end."""
    import nbformat

    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [_clean_output(o) for o in cell.get("outputs", [])]
    label = {".ipynb": "Download {}", ".md": "{} (MyST source)"}
    head = [" · ".join(f"{{download}}`{label[Path(f).suffix].format(f)} <files/{f}>`"
                       for f in (downloads if downloads is not None else [f"{name}.ipynb", f"{name}.md"]))]
    if executed:
        head.append(f"Outputs of the last `{cfg.preset}` run" +
                    (": a pipeline check with tiny random models, not a result." if cfg.preset == "smoke" else "."))
    else:
        head.append("This notebook is not run by `make report` (it serves an interactive app): shown without outputs.")
    first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), -1)
    nb.cells.insert(first + 1, nbformat.v4.new_markdown_cell("\n\n".join(head)))
    if solutions:
        fence = ":" * max(4, 1 + max((len(m) for m in re.findall(r"^:+", solutions, flags=re.M)), default=0))
        nb.cells.append(nbformat.v4.new_markdown_cell(
            f"## Solutions\n\n{fence}{{dropdown}} Expected outcomes of the exercises (teacher's notes)\n"
            f":class-container: solutions\n\n{solutions}\n{fence}\n"))
    return nb


def _title(nb, fallback: str) -> str:
    for c in nb.cells:
        if c.cell_type == "markdown":
            m = re.search(r"^# (.+)$", c.source, flags=re.M)
            if m:
                return m.group(1).strip()
    return fallback


# ---------------------------------------------------------------- the build
def sphinx_conf(cfg, stamp_text: str, mathjax_path: str) -> dict:
    return {
        "project": SITE_TITLE, "author": published.STUDY_AUTHORS, "copyright": "the course's authors",
        "extensions": ["myst_nb", "sphinx_design", "sphinx_copybutton", "sphinx.ext.mathjax"],
        "nb_execution_mode": "off", "nb_ipywidgets_js": {}, "nb_render_markdown_format": "myst",
        "nb_merge_streams": True,
        "myst_enable_extensions": ["dollarmath", "amsmath", "colon_fence"],
        "myst_update_mathjax": False, "myst_heading_anchors": 3,
        "mathjax_path": mathjax_path, "mathjax2_config": MATHJAX2_CONFIG, "mathjax3_config": None,
        "exclude_patterns": ["files/**", "_build", "**.ipynb_checkpoints"],
        "html_theme": "sphinx_book_theme", "html_title": SITE_TITLE,
        "html_static_path": ["_static"], "html_css_files": ["course.css"],
        "html_copy_source": False, "html_show_sourcelink": False, "html_show_sphinx": False,
        "html_last_updated_fmt": None, "html_search_language": "en",
        "html_show_search_summary": False,   # summaries are fetched page by page: refused from file://
        "html_theme_options": {"announcement": _stamp_html(stamp_text), "show_prev_next": True,
                               "home_page_in_toc": True, "use_download_button": False,
                               "use_fullscreen_button": False, "show_toc_level": 2,
                               "navigation_with_keys": False,
                               # the sidebar's search field only: pydata-sphinx-theme 0.20 adds a second one in a
                               # header bar of its own unless this is set
                               "navbar_persistent": []},
        "suppress_warnings": ["myst.xref_missing", "myst.header", "mystnb.unknown_mime_type",
                              "misc.highlighting_failure"],
        "copybutton_exclude": ".linenos, .gp, .go",
    }


class SiteFailed(RuntimeError):
    """Sphinx could not build the site."""


def write_pages(src: Path, reports: Path, notebook_dir: Path, docs_dir: Path, cfg) -> list[tuple[str, str]]:
    """The notebook pages, their downloads and the benchmark page in the Sphinx source folder ``src``:
    [(name, title)] in order."""
    import nbformat

    notes = Path(docs_dir) / "teacher_notes.md"
    _, solutions = teacher_sections(notes.read_text(encoding="utf-8")) if notes.is_file() else ("", {})
    pages = []
    names = sorted({p.stem for p in Path(notebook_dir).glob("[0-9][0-9]_*.*") if p.suffix in (".md", ".ipynb")})
    for name in names:
        md = Path(notebook_dir) / f"{name}.md"
        ran = reports / "notebooks" / f"{name}.ipynb"
        plain = md.with_suffix(".ipynb")
        executed = ran.is_file() and name not in INTERACTIVE
        source = ran if executed else plain
        if not source.is_file():
            continue
        nb = nbformat.read(str(source), as_version=4)
        downloads = [f for f in (plain, md) if f.is_file()]
        nbformat.write(notebook_page(nb, name, executed, cfg, solutions.get(name[:2]), [f.name for f in downloads]),
                       str(src / f"{name}.ipynb"))
        for f in downloads:
            shutil.copy2(f, src / "files" / f.name)
        pages.append((name, _title(nb, name)))
    if not pages:
        raise SiteFailed(f"no notebooks NN_*.md or NN_*.ipynb in {notebook_dir}")
    bench = Path(docs_dir) / "benchmarks.md"
    if bench.is_file():
        shutil.copy2(bench, src / "benchmarks.md")
    else:
        (src / "benchmarks.md").write_text("# Benchmark results\n\nNo benchmark document.\n")
    return pages


def key_figure(src: Path, reports: Path) -> str | None:
    """The run's key figure (notebook 06's completions) copied into ``src``; its path there."""
    for fig in ("06_qualitative.png", "06_metrics_bars.png"):
        if (reports / "figures" / fig).is_file():
            (src / "figures").mkdir(exist_ok=True)
            shutil.copy2(reports / "figures" / fig, src / "figures" / fig)
            return f"figures/{fig}"
    return None


def run_sphinx(src: Path, html: Path, doctrees: Path, quiet: bool = True) -> None:
    from sphinx.application import Sphinx

    warnings = io.StringIO()
    try:
        app = Sphinx(str(src), str(src), str(html), str(doctrees), "html",
                     status=None if quiet else sys.stdout, warning=warnings, freshenv=True, parallel=0)
        app.build()
    except Exception as e:
        raise SiteFailed(f"Sphinx could not build the site: {e}\n{warnings.getvalue()}") from e
    if app.statuscode:
        raise SiteFailed(f"Sphinx failed:\n{warnings.getvalue()}")


def build(preset: str = "smoke", cdn: bool = False, notebook_dir: Path = NOTEBOOK_DIR, docs_dir: Path = DOCS_DIR,
          out: Path | None = None, quiet: bool = True) -> Path:
    """Build ``reports/<preset>/site/`` (or ``out``) from the last run; return its index.html."""
    cfg = load_config(preset)
    P = paths(cfg)
    reports = P.reports
    out = Path(out or reports / "site")
    manifest_path = reports / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    has_slides = all((reports / f"06_comparison.{k}.html").is_file() for k in ("slides", "report"))
    with tempfile.TemporaryDirectory(prefix="site_") as tmp:
        src = Path(tmp) / "src"
        (src / "files").mkdir(parents=True)
        (src / "_static").mkdir()
        (src / "_static" / "course.css").write_text(SITE_CSS)
        pages = write_pages(src, reports, notebook_dir, docs_dir, cfg)
        figure = key_figure(src, reports)
        (src / "index.md").write_text(landing_page(cfg, reports, pages, manifest, has_slides, figure), encoding="utf-8")
        if cdn:
            mathjax_path = MATHJAX_CDN
        else:
            query = _copy_mathjax(find_slide_assets(P.cache)["mathjax"], src / "_static" / "mathjax")
            mathjax_path = "mathjax/MathJax.js" + query
        conf = sphinx_conf(cfg, stamp(cfg, manifest), mathjax_path)
        (src / "conf.py").write_text("\n".join(f"{k} = {v!r}" for k, v in conf.items()) + "\n")
        html = Path(tmp) / "html"            # myst-nb writes beside it (jupyter_execute/): kept in tmp
        run_sphinx(src, html, Path(tmp) / "doctrees", quiet)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(html), str(out))
    _trim(out)
    if has_slides:
        _copy_slides(reports, out, cdn)
    return out / "index.html"


def _trim(out: Path) -> None:
    """Leave out what a reader never loads: source maps of the theme's scripts, its translations
    (used while building), Sphinx's build records and the empty source folder."""
    for junk in (".buildinfo", ".buildinfo.bak", "objects.inv"):
        (out / junk).unlink(missing_ok=True)
    for f in (out / "_static").rglob("*.map"):
        f.unlink()
    for d in (out / "_static" / "locales", out / "_sources"):
        shutil.rmtree(d, ignore_errors=True)


def _copy_slides(reports: Path, out: Path, cdn: bool) -> None:
    """The slides and the report beside the site (out/slides/), their MathJax the site's own copy."""
    dst = out / "slides"
    dst.mkdir(exist_ok=True)
    js = reports / "slides_js"
    if js.is_dir():
        shutil.copytree(js, dst / "slides_js", ignore=lambda d, n: ["mathjax"] if Path(d) == js else [],
                        dirs_exist_ok=True)
    for kind in ("slides", "report"):
        html = (reports / f"06_comparison.{kind}.html").read_text(encoding="utf-8")
        if cdn:          # an export made offline: its MathJax from the CDN like the site's
            html = re.sub(r"slides_js/mathjax/MathJax\.js\?config=[^\"']*", MATHJAX_CDN, html)
        else:
            html = html.replace("slides_js/mathjax/", "../_static/mathjax/")
        html = html.replace("</head>", f"<style>{SITE_CSS.splitlines()[0]}</style>\n</head>", 1)
        (dst / f"06_comparison.{kind}.html").write_text(html, encoding="utf-8")


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helpers.report.site", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=DEFAULT_PRESET, help=PRESET_HELP)
    ap.add_argument("--cdn", action="store_true", help="load MathJax from its CDN instead of a local copy")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        index = build(args.preset, cdn=args.cdn)
    except SiteFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    size = folder_size(index.parent) / 1e6
    print(f"site: {index} ({size:.1f} MB, {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
