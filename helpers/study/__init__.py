"""The reproducible run: its base at the top (presets: config, devices and logs: runtime, the run's
folders: files, the method registry: methods and method_functions, the preference study's vote store:
votes, the CLI: __main__) and one subpackage per role: data (ingestion, splits, masks, captions), models
(the methods and their training), evaluation (prediction, cost, metrics, statistics)."""
from __future__ import annotations

from helpers.course import lazy_submodules

_MODULES = ("config", "runtime", "files", "methods", "method_functions", "votes", "data", "models", "evaluation")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
