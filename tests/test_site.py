"""The course as a website (helpers.report.site): built from a tiny executed notebook in seconds, and
the smoke run's site as a reader sees it in headless Chromium: every page loads offline with its
formulas typeset and its figures, search finds the notebooks that teach DDIM and LoRA, the next
links reach every page, solutions stay closed until opened."""
import base64
import io
import re
import sys
import sysconfig
import time
from pathlib import Path

import nbformat
import pytest

from helpers.report import site as S
from helpers.study.config import ROOT

TINY_MD = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# 01 · Tiny: the forward process
The closed form $q(x_t \\mid x_0) = \\mathcal{N}(\\sqrt{\\bar\\alpha_t} x_0, (1 - \\bar\\alpha_t) I)$, and

$$\\bar\\alpha_t = \\prod_{s=1}^t (1 - \\beta_s)$$

## Exercises
1. Change $T$.
"""


def _png() -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _tiny_course(tmp: Path, root: Path) -> tuple[Path, Path]:
    """notebooks/01_tiny.{md,ipynb}, its executed copy in reports/smoke/notebooks, docs/ with notes."""
    nbs, docs = tmp / "notebooks", tmp / "docs"
    nbs.mkdir()
    docs.mkdir()
    (nbs / "01_tiny.md").write_text(TINY_MD)
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_markdown_cell(TINY_MD.split("---\n", 2)[2]),
                nbformat.v4.new_code_cell("print(P.figures)")]
    nbformat.write(nb, nbs / "01_tiny.ipynb")
    ran = root / "reports" / "smoke" / "notebooks"
    ran.mkdir(parents=True)
    nb.cells[1].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text=f"{root}/reports/smoke/figures\n"),
        nbformat.v4.new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"})]
    nbformat.write(nb, ran / "01_tiny.ipynb")
    (docs / "teacher_notes.md").write_text("# Teacher's notes\n\nIntro.\n\n## 01 · Tiny\n1. **T**: fewer steps.\n")
    (docs / "benchmarks.md").write_text("# Benchmark results\n\nNone yet.\n")
    return nbs, docs


def test_site_from_a_tiny_executed_notebook(tmp_path, tmp_root):
    nbs, docs = _tiny_course(tmp_path, tmp_root)
    t0 = time.perf_counter()
    index = S.build("smoke", notebook_dir=nbs, docs_dir=docs)
    seconds = time.perf_counter() - t0
    out = index.parent
    assert index == tmp_root / "reports" / "smoke" / "site" / "index.html"
    page = (out / "01_tiny.html").read_text()
    # the outputs of the run, the figure written once as a file, the formulas left for MathJax
    assert "reports/smoke/figures" in page and str(tmp_root) not in page
    assert len(list((out / "_images").glob("*.png"))) == 1
    assert page.count('class="math notranslate nohighlight"') >= 3
    assert "_static/mathjax/MathJax.js" in page and (out / "_static/mathjax/MathJax.js").is_file()
    # downloads of both files of the notebook, the solutions in a closed dropdown, the preset stamp
    assert re.search(r'href="_downloads/[0-9a-f]+/01_tiny\.ipynb"', page)
    assert re.search(r'href="_downloads/[0-9a-f]+/01_tiny\.md"', page)
    details = re.search(r"<details[^>]*solutions[^>]*>", page)
    assert details and " open" not in details.group(0) and "fewer steps" in page
    for html in out.glob("*.html"):
        text = html.read_text()
        assert "pipeline check" in text, f"{html.name} has no smoke stamp"
        assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']https?://""", text), html.name
    landing = index.read_text()
    assert "Image Completion: DDPM vs. Stable Diffusion" in landing and "01_tiny.html" in landing
    # one search field, the sidebar's (no header bar with a second one)
    assert len(re.findall(r'class="[^"]*\bsearch-button-field\b', landing)) == 1
    assert "bd-header__inner" not in landing
    assert not list(out.rglob("*.map")) and not (out / "_sources").exists()
    assert seconds < 60


# ---------------------------------------------------------------- the smoke run's site in Chromium
def _site(smoke_run) -> Path:
    manifest, _ = smoke_run
    return Path(manifest["exports"]["site"]).parent


def _pages(site: Path) -> list[Path]:
    return sorted(p for p in site.glob("*.html") if p.name not in ("genindex.html", "search.html"))


def _open(browser, url: str):
    """A page on ``url`` recording every request that leaves the file system and every failed one."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    external, failed = [], []
    page.on("request", lambda r: external.append(r.url) if r.url.startswith(("http:", "https:")) else None)
    # MathJax 2 tests web-font support with an empty font at about:blank: no file, nothing leaves the machine
    page.on("requestfailed", lambda r: failed.append(r.url) if r.url != "about:blank" else None)
    page.goto(url)
    return page, external, failed


TYPESET = """() => new Promise(res => {
  if (!document.querySelector('.math.notranslate')) return res();
  const wait = () => (window.MathJax && MathJax.Hub) ? MathJax.Hub.Queue(res) : setTimeout(wait, 50);
  wait();
})"""


FORMULAS = """() => {
  const math = [...document.querySelectorAll('.math.notranslate')];
  const raw = math.filter(m => !m.querySelector('script[type^="math/tex"]'));
  return {n: math.length, untypeset: raw.map(m => m.innerText.slice(0, 60)),
          errors: document.querySelectorAll('.MathJax_Error, merror').length,
          broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)};
}"""


@pytest.mark.notebooks
@pytest.mark.slow
def test_every_page_loads_offline_typeset_with_its_figures(smoke_run, browser):
    site = _site(smoke_run)
    pages = _pages(site)
    assert {p.stem for p in pages} >= {"index", "benchmarks", "01_data", "02_ddpm_theory", "06_comparison"}
    formulas = 0
    for html in pages:
        page, external, failed = _open(browser, html.as_uri())
        try:
            page.wait_for_load_state("load")
            page.evaluate(TYPESET)
            r = page.evaluate(FORMULAS)
            text = page.inner_text("body")
        finally:
            page.close()
        assert not external, f"{html.name} reached for the network: {external}"
        assert not failed, f"{html.name}: failed requests {failed}"
        assert not r["untypeset"] and not r["errors"], f"{html.name}: formulas left raw {r['untypeset']}"
        assert not r["broken"], f"{html.name}: images that did not load {r['broken']}"
        assert "pipeline check" in text, f"{html.name} does not say that smoke is a pipeline check"
        formulas += r["n"]
    assert formulas > 50


@pytest.mark.notebooks
@pytest.mark.slow
def test_no_page_scrolls_sideways_on_a_phone(smoke_run, browser):
    """At 480 px wide every page fits its width once typeset: a long inline path or call breaks instead of
    widening the page (code blocks and tables scroll inside their own boxes)."""
    wide = {}
    for html in _pages(_site(smoke_run)):
        page = browser.new_page(viewport={"width": 480, "height": 800})
        try:
            page.goto(html.as_uri())
            page.wait_for_load_state("load")
            page.evaluate(TYPESET)
            width = page.evaluate("document.documentElement.scrollWidth")
        finally:
            page.close()
        if width > 482:
            wide[html.name] = width
    assert not wide, f"pages wider than a 480 px screen: {wide}"


@pytest.mark.notebooks
@pytest.mark.slow
def test_slides_and_report_in_the_site_load_offline(smoke_run, browser):
    site = _site(smoke_run)
    decks = sorted((site / "slides").glob("06_comparison.*.html"))
    assert len(decks) == 2
    for html in decks:
        page, external, failed = _open(browser, html.as_uri())
        try:
            page.wait_for_function("window.MathJax && MathJax.Hub", timeout=60_000)
            page.evaluate("() => new Promise(res => MathJax.Hub.Queue(res))")
            n = page.evaluate("document.querySelectorAll('.MathJax, .MathJax_Display').length")
        finally:
            page.close()
        assert n > 0 and not external and not failed, (html.name, n, external, failed)


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("word, teaches", [("DDIM", "02_ddpm_theory"), ("LoRA", "04_sd_lora")])
def test_search_finds_the_notebook_that_teaches(smoke_run, browser, word, teaches):
    site = _site(smoke_run)
    page, external, failed = _open(browser, (site / "search.html").as_uri() + f"?q={word}")
    try:
        page.wait_for_selector("#search-results ul li a", timeout=30_000)
        page.wait_for_function("document.querySelector('#search-results').innerText.includes('Search finished')"
                               " || document.querySelectorAll('#search-results li').length > 2", timeout=30_000)
        hits = page.eval_on_selector_all("#search-results li a", "els => els.map(e => e.getAttribute('href'))")
    finally:
        page.close()
    assert any(h.split("#")[0].startswith(teaches) for h in hits), f"search {word!r} found {hits}"
    assert not external and not failed, (external, failed)


@pytest.mark.notebooks
@pytest.mark.slow
def test_next_links_and_navigation_reach_every_page(smoke_run, browser):
    site = _site(smoke_run)
    pages = {p.name for p in _pages(site)}
    page, _, _ = _open(browser, (site / "index.html").as_uri())
    try:
        nav = page.eval_on_selector_all("nav.bd-links a.reference.internal",
                                        "els => els.map(e => e.getAttribute('href').split('#')[0])")
        seen = ["index.html"]
        while page.query_selector("a.right-next"):
            page.click("a.right-next")
            page.wait_for_load_state("load")
            seen.append(page.url.rsplit("/", 1)[-1].split("#")[0])
            assert len(seen) <= len(pages) + 1
    finally:
        page.close()
    assert set(seen) == pages, f"next links went {seen}; pages {sorted(pages)}"
    notebooks = [s for s in seen if re.match(r"\d\d_", s)]
    assert notebooks == sorted(notebooks)
    assert pages - {"index.html"} <= set(nav), f"left navigation lacks {pages - set(nav)}"


@pytest.mark.notebooks
@pytest.mark.slow
def test_solutions_are_hidden_until_opened(smoke_run, browser):
    site = _site(smoke_run)
    checked = 0
    for name in ("01_data", "02_ddpm_theory", "06_comparison"):
        page, _, _ = _open(browser, (site / f"{name}.html").as_uri())
        try:
            box = page.locator("details.solutions")
            assert box.count() == 1, f"{name} has no solutions block"
            body = box.locator(".sd-summary-content")
            assert not body.is_visible(), f"{name}: the solutions show before they are opened"
            box.locator("summary").click()
            body.wait_for(state="visible", timeout=5_000)
            checked += 1
        finally:
            page.close()
    assert checked == 3


def _machine_strings(root: Path) -> list[str]:
    home = str(Path.home())
    site = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")} | {p for p in sys.path if "site-packages" in p}
    return sorted({str(ROOT), str(ROOT.resolve()), str(root), str(root.resolve()), *site} |
                  ({home} if len(home) > 1 else set()))


@pytest.mark.notebooks
@pytest.mark.slow
def test_site_carries_no_machine_path(smoke_run):
    _, P = smoke_run
    site = _site(smoke_run)
    for f in [*site.glob("*.html"), site / "searchindex.js", *site.glob("slides/*.html")]:
        text = f.read_text()
        for s in _machine_strings(P.root):
            hits = [m.start() for m in re.finditer(re.escape(s) + r"(?=[/\"'<\s,;)]|$)", text)]
            assert not hits, f"{f.name} contains {s!r}: ...{text[hits[0] - 80:hits[0] + 80]}..."
