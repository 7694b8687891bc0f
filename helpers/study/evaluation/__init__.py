"""The study's evaluation: prediction of the test set (predict), cost (perf), image metrics (metrics),
the statistics over methods (evaluate) and the digit accuracy of a labelled run (digit_accuracy)."""
from __future__ import annotations

from helpers.course import lazy_submodules

_MODULES = ("predict", "perf", "metrics", "evaluate", "digit_accuracy")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
