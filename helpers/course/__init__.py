"""The algorithms the course teaches, one file per notebook, each readable top to bottom.

Every function here also appears as an exact copy in a code cell of the notebook that teaches it
(the cell is tagged ``taught``); ``make notebooks`` writes the copies and
``tests/test_taught_code.py`` fails when a cell and this package differ."""
from __future__ import annotations

from helpers import lazy_submodules

_MODULES = ("masks", "diffusion", "checks", "ddpm_inpainting", "sd_inpainting", "peft_variants", "metrics")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
