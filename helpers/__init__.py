"""helpers: the code behind the notebooks, written once, one role per folder.

* ``helpers.course``: the algorithms the course teaches, each file readable top to bottom. Their
  functions also appear, as exact copies, in the code cells of the notebook that teaches them
  (``make notebooks`` writes them there; ``tests/test_taught_code.py`` checks they are equal).
* ``helpers.study``: the reproducible run: presets, data, captions, model loading, the training
  loop with resume, prediction of the test set for every method, evaluation statistics, the vote
  store of the preference study, the CLI.
* ``helpers.report``: tables, figures, human-preference statistics and the export of the series.
* ``helpers.apps``: the live demo (Gradio) and its preference study's pair scheduler.
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

from helpers.course import lazy_submodules
from helpers.study.config import Config, load_config

_SUBPACKAGES = ("course", "study", "report", "apps", "tools")

__all__ = ["Config", "load_config", *_SUBPACKAGES]

__getattr__ = lazy_submodules(__name__, _SUBPACKAGES)
