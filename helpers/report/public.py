"""Text fit to publish: no machine paths, reasons without instructions (the tables, the text of the
slides, the site and the export read it)."""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from helpers.study.config import ROOT


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
