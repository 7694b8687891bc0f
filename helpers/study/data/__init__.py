"""The study's data: ingestion, splits and the test masks (splits), mask helpers (masks), captions."""
from __future__ import annotations

from helpers import lazy_submodules

_MODULES = ("masks", "splits", "captions")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
