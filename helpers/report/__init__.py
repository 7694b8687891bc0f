"""The report: formatting only. Tables (``tables``), statements in words (``text``), figures
(``figures``), the published numbers it cites (``published``), human-preference statistics
(``preference``), the export of the notebook series (``export``) and the course as a website (``site``)."""
from __future__ import annotations

from helpers.course import lazy_submodules

_MODULES = ("tables", "text", "figures", "published", "preference", "export", "site")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
