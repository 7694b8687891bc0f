"""Walking an exported reveal.js deck in a real headless Chromium, slide by slide, as a presenter would show it:
shared by the smoke deck's test (tests/test_slides.py) and the mini deck's (tests/test_mini.py)."""
from pathlib import Path

VIEWPORT = {"width": 1280, "height": 720}

# Walks every slide (reveal.js's own list, in order), waits for MathJax, and reports per slide what
# a presenter would see wrong. Sizes are in the slide's own pixels (reveal.js scales the whole
# 1280x720 slide to the window, so a slide that fits here fits any screen of that shape).
WALK = """async () => {
  const R = window.Reveal, cfg = R.getConfig(), out = [];
  const typeset = () => new Promise(res => MathJax.Hub.Queue(() => setTimeout(res, 50)));
  const slides = R.getSlides();
  for (let i = 0; i < slides.length; i++) {
    const s = slides[i], ix = R.getIndices(s);
    R.slide(ix.h, ix.v);
    await new Promise(r => setTimeout(r, 80));
    await typeset();
    const problems = [];
    if (s.scrollHeight > cfg.height + 2) problems.push(`taller than the slide: ${s.scrollHeight} > ${cfg.height} px`);
    if (s.scrollWidth > cfg.width + 2) problems.push(`wider than the slide: ${s.scrollWidth} > ${cfg.width} px`);
    for (const el of s.querySelectorAll("*")) {
      const st = getComputedStyle(el), tag = el.tagName.toLowerCase();
      if (["auto", "scroll", "hidden"].includes(st.overflowX) && el.scrollWidth > el.clientWidth + 2)
        problems.push(`cut or scrolled sideways: <${tag}> ${el.scrollWidth} > ${el.clientWidth} px`);
      if (["auto", "scroll", "hidden"].includes(st.overflowY) && el.scrollHeight > el.clientHeight + 2)
        problems.push(`cut or scrolled vertically: <${tag}> ${el.scrollHeight} > ${el.clientHeight} px`);
    }
    const text = s.innerText;
    for (const raw of ["$$", "\\\\(", "\\\\[", "\\\\begin", "\\\\frac", "\\\\mathcal"])
      if (text.includes(raw)) problems.push(`formula left untypeset: ${raw} in the text`);
    if (s.querySelector(".MathJax_Error, merror, .mjx-merror")) problems.push("MathJax error in a formula");
    for (const img of s.querySelectorAll("img"))
      if (!img.complete || img.naturalWidth === 0) problems.push(`figure failed to load: ${img.src.slice(0, 60)}`);
    const h = s.querySelector("h1, h2");
    out.push({slide: `#/${ix.h}/${ix.v} ${h ? h.innerText.trim().slice(0, 60) : ""}`, problems});
  }
  return {slides: out, formulas: document.querySelectorAll(".MathJax, .MathJax_Display").length};
}"""


def open_page(browser, html: Path):
    """A page at 1280x720 on ``html``, recording every request that leaves the file system or fails."""
    page = browser.new_page(viewport=VIEWPORT)
    network = []
    page.on("request", lambda r: network.append(r.url) if r.url.startswith(("http:", "https:")) else None)
    # a local file the page asks for and does not find (MathJax 2 probes web fonts with about:blank)
    page.on("requestfailed", lambda r: None if r.url.startswith("about:") else network.append(f"failed: {r.url}"))
    page.goto(html.as_uri())
    return page, network


def walk_deck(browser, slides: Path) -> tuple[dict, list[str]]:
    """Every slide of ``slides`` with what a presenter would see wrong (:data:`WALK`), and every request
    that left the file system or failed."""
    page, network = open_page(browser, slides)
    try:
        page.wait_for_function("window.Reveal && window.Reveal.isReady() && window.MathJax && MathJax.Hub",
                               timeout=60_000)
        result = page.evaluate(WALK)
    finally:
        page.close()
    return result, network


def problems(result: dict) -> dict[str, list[str]]:
    """{slide: its problems} for the slides that have any."""
    return {s["slide"]: s["problems"] for s in result["slides"] if s["problems"]}
