"""The algorithms the course teaches, one file per notebook, each readable top to bottom.

Every function here also appears as an exact copy in a code cell of the notebook that teaches it
(the cell is tagged ``taught``); ``make notebooks`` writes the copies and
``tests/test_taught_code.py`` fails when a cell and this package differ."""
from __future__ import annotations

import importlib

_MODULES = ("diffusion", "checks", "ddpm_inpainting", "sd_inpainting", "peft_variants", "metrics",)

__all__ = list(_MODULES)


def __getattr__(name: str):
    if name in _MODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
