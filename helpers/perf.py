"""Speed switches from the preset's ``perf`` section, applied in one place.

Every switch is a field of ``cfg.perf`` (default on where it is a pure win) so the benchmark can
time each variant against the plain one in the same run (``python -m helpers.bench``).
"""
from __future__ import annotations

import torch

from .config import Config


def set_attention(model: torch.nn.Module, sdpa: bool) -> int:
    """Use PyTorch's fused scaled-dot-product attention (``sdpa=True``) or the plain
    softmax(QK^T / sqrt(d)) V processor in every diffusers ``Attention`` of ``model``.
    Returns the number of attention modules touched."""
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

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
    if perf.get("fused_qkv", False) and hasattr(model, "fuse_qkv_projections") and not getattr(model, "peft_config", None):
        model.fuse_qkv_projections()
    if perf.get("channels_last", False):
        model.to(memory_format=torch.channels_last)
    if perf.get("torch_compile", False) and device.type == "cuda":
        mode = compile_mode or ("reduce-overhead" if perf.get("cuda_graphs", False) else "default")
        model = torch.compile(model, mode=mode)
    return model


def sampling_timesteps(scheduler, num_inference_steps: int, device: torch.device) -> list[tuple[torch.Tensor, int]]:
    """Set the sampler's timesteps; return one ``(t_device, t_int)`` pair per step: ``t_device`` (a view
    into one tensor copied to ``device`` once) for the network, ``t_int`` for ``scheduler.step``.

    The schedulers keep their tables (alphas_cumprod, sigmas) on the CPU. Indexing them with a CUDA
    timestep, or comparing one (``if t >= 0``), copies it back to the host and makes the CPU wait for
    the GPU at every step; with a Python int nothing waits, and the CPU can queue the next U-Net call
    while the GPU still runs this one. The multistep solvers are told they start at index 0, so they
    need not search the timestep (a ``nonzero`` on the device) on their first step."""
    scheduler.set_timesteps(num_inference_steps)          # on the CPU
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    host = [int(t) for t in scheduler.timesteps]
    from .common import to_device_nowait
    return list(zip(to_device_nowait(scheduler.timesteps, device).unbind(), host))


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
