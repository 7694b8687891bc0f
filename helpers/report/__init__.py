"""The report: tables, figures, human-preference statistics, and the export of the notebook series."""
from __future__ import annotations

import importlib

_MODULES = ("findings", "figures", "preference", "export",)

__all__ = list(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
