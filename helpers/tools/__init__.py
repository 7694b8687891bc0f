"""Tools: the benchmark of the heavy steps and the notebook-sync of the taught code."""
from __future__ import annotations

from helpers.course import lazy_submodules

_MODULES = ("bench", "taught")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
