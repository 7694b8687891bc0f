"""helpers: the code behind the notebooks, written once.

Conventions (the only place they are defined; every module follows them):

* Images are float tensors in [-1, 1], shape (N, C, H, W), RGB. Files on disk are 8-bit RGB PNG.
* Masks are float tensors in {0, 1}, shape (N, 1, H, W), same H, W as their image.
  **1 = the hole to fill (unknown pixels), 0 = known context.** The masked input is
  ``x_masked = x * (1 - mask)`` (holes set to 0, i.e. mid-grey in [-1, 1]). Mask files are
  8-bit PNG with 255 = hole.
* Every notebook opens with ``import helpers as H`` and reads its preset with
  ``cfg = H.load_config(preset, overrides)``. Submodules load on first use (``H.ddpm``...).
"""
from __future__ import annotations

import importlib

from .config import Config, load_config

_SUBMODULES = ("common", "config", "masks", "data", "captions", "ddpm", "train", "sd", "perf",
               "metrics", "evaluate", "findings", "plots", "report", "bench", "repaint", "human_eval", "demo")

__all__ = ["Config", "load_config", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'helpers' has no attribute {name!r}")
