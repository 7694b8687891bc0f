"""The reproducible run: presets, data, captions, models, the training loop, prediction, evaluation, CLI."""
from __future__ import annotations

from helpers import lazy_submodules

_MODULES = ("config", "runtime", "files", "masks", "methods", "data", "captions", "ddpm", "sd", "peft_variants",
            "training", "predict", "perf", "metrics", "evaluate", "digits")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
