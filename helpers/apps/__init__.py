"""The apps: the live Gradio demo and the pair scheduler of its blind preference study (the votes
themselves are stored by :mod:`helpers.study.votes`)."""
from __future__ import annotations

from helpers.course import lazy_submodules

_MODULES = ("demo", "demo_ui", "votes")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
