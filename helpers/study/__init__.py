"""The reproducible run: presets, data, captions, models, the training loop, prediction, evaluation, CLI."""
from __future__ import annotations

import importlib

_MODULES = ("config", "runtime", "files", "masks", "data", "captions", "ddpm", "sd", "training", "predict", "perf", "metrics", "evaluate", "digits",)

__all__ = list(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
