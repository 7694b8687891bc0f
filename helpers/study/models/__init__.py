"""The study's models and their training: the DDPM (ddpm), SD 1.5 + LoRA (sd), the PEFT variants,
the digits model of notebook 02 (digits), the shared training loop (training) and
which run a training call is (runs)."""
from __future__ import annotations

from helpers.course import lazy_submodules

_MODULES = ("ddpm", "sd", "sd_pipeline", "peft_variants", "digits", "training", "runs")

__all__ = list(_MODULES)

__getattr__ = lazy_submodules(__name__, _MODULES)
