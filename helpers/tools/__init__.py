"""Tools: the benchmark of the heavy steps (bench: the command line and the FLOP budget; bench_harness;
bench_workloads) and the notebook-sync of the taught code (taught)."""
from __future__ import annotations

from helpers.course import lazy_submodules

_MODULES = ("bench", "bench_harness", "bench_workloads", "taught")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
