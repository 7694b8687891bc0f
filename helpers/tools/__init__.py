"""Tools: the benchmark of the heavy steps and the notebook-sync of the taught code."""
from __future__ import annotations

import importlib

_MODULES = ("bench",)

__all__ = list(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
