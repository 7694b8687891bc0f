"""The apps: the live Gradio demo and the vote store of its blind preference study."""
from __future__ import annotations

from helpers import lazy_submodules

_MODULES = ("demo", "demo_ui", "votes")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
