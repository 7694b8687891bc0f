"""The slides' and the site's JavaScript offline: reveal.js, require.js, jQuery and MathJax from
installed packages (or the npm cache), copied beside the exported HTML."""
from __future__ import annotations

from pathlib import Path

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
