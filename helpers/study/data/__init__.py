"""The study's data: reading inputs and their sources (sources), the prepared split and frozen test masks
(splits), the torch Dataset and the test set (dataset), prediction files (predictions), sample bad
inputs (samples), mask files (masks), captions."""
from __future__ import annotations

from helpers.course import lazy_submodules

_MODULES = ("sources", "splits", "dataset", "predictions", "samples", "masks", "captions")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
