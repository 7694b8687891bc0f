"""The report: formatting only. Tables (``tables``), statements in words (``text``), figures
(``figures``), the published numbers it cites (``published``), human-preference statistics
(``preference``), text fit to publish (``public``), the series run with papermill (``series``), the slides'
offline JavaScript (``assets``), the export of the series (``export``) and the course as a website (``site``)."""
from __future__ import annotations

from helpers.course import lazy_submodules

_MODULES = ("tables", "text", "figures", "published", "preference", "public", "series", "assets", "export", "site")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
