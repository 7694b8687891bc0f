"""The report: formatting only. Tables (``tables``), statements in words (``text``), figures
(``figures``), the published numbers it cites (``published``), human-preference statistics
(``preference``) and the export of the notebook series (``export``)."""
from __future__ import annotations

import importlib

_MODULES = ("tables", "text", "figures", "published", "preference", "export")

__all__ = list(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
