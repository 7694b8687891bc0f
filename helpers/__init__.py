"""helpers: the code behind the notebooks, written once, one role per folder.

* ``helpers.course``: the algorithms the course teaches, each file readable top to bottom. Their
  functions also appear, as exact copies, in the code cells of the notebook that teaches them
  (``make notebooks`` writes them there; ``tests/test_taught_code.py`` checks they are equal).
* ``helpers.study``: the reproducible run: presets, data, captions, model loading, the training
  loop with resume, prediction of the test set for every method, evaluation statistics, the CLI.
* ``helpers.report``: tables, figures, human-preference statistics and the export of the series.
* ``helpers.apps``: the live demo (Gradio) and its vote store.
* ``helpers.tools``: the benchmark and the notebook-sync tool.

Conventions (the only place they are defined; every module follows them):

* Images are float tensors in [-1, 1], shape (N, C, H, W), RGB. Files on disk are 8-bit RGB PNG.
* Masks are float tensors in {0, 1}, shape (N, 1, H, W), same H, W as their image.
  **1 = the hole to fill (unknown pixels), 0 = known context.** The masked input is
  ``x_masked = x * (1 - mask)`` (holes set to 0, i.e. mid-grey in [-1, 1]). Mask files are
  8-bit PNG with 255 = hole.
* Every notebook opens with ``import helpers as H`` and reads its preset with
  ``cfg = H.load_config(preset, overrides)``. Subpackages and their modules load on first use
  (``H.course.diffusion``, ``H.study.data.splits``...).
"""
from __future__ import annotations

import importlib
import sys


def lazy_submodules(package: str, names):
    """The module ``__getattr__`` of a package whose modules load on first use (``H.study.data.splits``):
    one definition for ``helpers`` and each of its subpackages (defined before they are imported)."""
    def __getattr__(name: str):
        if name in names:
            module = importlib.import_module(f".{name}", package)
            setattr(sys.modules[package], name, module)
            return module
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__


from helpers.study.config import Config, load_config  # noqa: E402  (after lazy_submodules: study uses it)

_SUBPACKAGES = ("course", "study", "report", "apps", "tools")

__all__ = ["Config", "load_config", *_SUBPACKAGES]

__getattr__ = lazy_submodules(__name__, _SUBPACKAGES)
