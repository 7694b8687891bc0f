"""The reproducible run: presets, data, captions, models, the training loop, prediction, evaluation, the
vote store of the preference study, CLI."""
from __future__ import annotations

from helpers.course import lazy_submodules

_MODULES = ("config", "runtime", "files", "masks", "methods", "method_functions", "data", "captions", "ddpm", "sd",
            "peft_variants", "training", "predict", "perf", "metrics", "evaluate", "digits", "votes")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
