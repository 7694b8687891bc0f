"""Speed switches from the preset's ``perf`` section, applied in one place.

Every switch is a field of ``cfg.perf`` (default on where it is a pure win) so the benchmark can
time each variant against the plain one in the same run (``python -m helpers.tools.bench``).
"""
from __future__ import annotations

import torch

from helpers.study.config import Config


def set_attention(model: torch.nn.Module, sdpa: bool) -> int:
    """Use PyTorch's fused scaled-dot-product attention (``sdpa=True``) or the plain
    softmax(QK^T / sqrt(d)) V processor in every diffusers ``Attention`` of ``model``.
    Returns the number of attention modules touched."""
    from diffusers.models.attention_processor import (
        Attention,
        AttnProcessor,
        AttnProcessor2_0,
    )

    n = 0
    for m in model.modules():
        if isinstance(m, Attention):
            m.set_processor(AttnProcessor2_0() if sdpa else AttnProcessor())
            n += 1
    return n


def optimize_model(model: torch.nn.Module, perf: Config, device: torch.device, compile_mode: str | None = None):
    """Apply ``perf.sdpa`` and ``perf.channels_last`` in place; return the model, compiled with
    ``torch.compile`` when ``perf.torch_compile`` is on (CUDA only: on the CPU it only costs time).
    ``perf.cuda_graphs`` picks the compile mode that replays CUDA graphs ("reduce-overhead"):
    it removes the per-kernel launch cost that dominates small batches."""
    set_attention(model, perf.get("sdpa", True))
    # one matmul for Q, K and V (self-attention) / K and V (cross-attention) instead of three / two;
    # not with LoRA adapters attached (they sit on the separate projections)
    if (perf.get("fused_qkv", False) and hasattr(model, "fuse_qkv_projections")
            and not getattr(model, "peft_config", None)):
        model.fuse_qkv_projections()
    if perf.get("channels_last", False):
        model.to(memory_format=torch.channels_last)
    if perf.get("torch_compile", False) and device.type == "cuda":
        mode = compile_mode or ("reduce-overhead" if perf.get("cuda_graphs", False) else "default")
        model = torch.compile(model, mode=mode)
    return model


def make_sampler(kind: str, scheduler_config: dict):
    """A sampling scheduler from a training scheduler's config: ``ddim`` (Song et al. 2021,
    deterministic with eta = 0) or ``dpm`` (DPM-Solver++ 2M, Lu et al. 2022: good images in
    fewer steps)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if kind == "ddim":
        return DDIMScheduler.from_config(scheduler_config)
    if kind == "dpm":
        return DPMSolverMultistepScheduler.from_config(scheduler_config, algorithm_type="dpmsolver++",
                                                       solver_order=2)
    raise ValueError(f"perf.sampler must be 'ddim' or 'dpm', got {kind!r}")
