"""The algorithms the course teaches, one file per notebook, each readable top to bottom.

Every function here also appears as an exact copy in a code cell of the notebook that teaches it
(the cell is tagged ``taught``); ``make notebooks`` writes the copies and
``tests/test_taught_code.py`` fails when a cell and this package differ.

It also holds :func:`lazy_submodules`, the loader every floor's face uses: course is the lowest
floor, so the higher ones (and ``helpers`` itself) import it downwards."""
from __future__ import annotations

import importlib
import sys


def lazy_submodules(package: str, names):
    """The module ``__getattr__`` of a package whose modules load on first use (``H.study.data``):
    one definition for ``helpers`` and each of its subpackages."""
    def __getattr__(name: str):
        if name in names:
            module = importlib.import_module(f".{name}", package)
            setattr(sys.modules[package], name, module)
            return module
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__


_MODULES = ("masks", "diffusion", "checks", "ddpm_inpainting", "sd_inpainting", "peft_variants", "metrics")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
