"""RePaint (Lugmayr et al. 2022): inpainting with an unconditional DDPM, no training.

At every reverse step the unknown region comes from the model and the known region from the
forward process applied to the known pixels:

    x_{t-1} = mask * x_{t-1}^unknown + (1 - mask) * x_{t-1}^known
    x_{t-1}^unknown ~ p_theta(x_{t-1} | x_t)          (an ordinary DDPM step)
    x_{t-1}^known   ~ q(x_{t-1} | x_0)                (the ground truth's known pixels, re-noised)

and, to let the two regions agree, the sampler repeatedly jumps back up: x_{t-1} -> x_t with
q(x_t | x_{t-1}) ("resampling", ``jump_length`` steps up, ``jump_n_sample`` passes). Taught in
notebook 03 as the training-free baseline; shares q_sample / p_sample with :mod:`helpers.ddpm`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .common import count_parameters, progress, resolve_dtype
from .config import Config
from .common import image_seeds
from .ddpm import SeededNoise, _autocast, p_sample, predict_images, weights_description


def repaint_schedule(num_steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The order in which RePaint visits the step indices n-1 .. 0 (and -1 = x_0).

    Going down one index is a denoising step; going up one is a re-noising step. After reaching
    index j (for j = 0, jump_length, 2 jump_length, ...), the sampler jumps up ``jump_length``
    indices and comes down again, ``jump_n_sample - 1`` times. With no jumps (jump_n_sample = 1)
    it is the plain sequence n-1, ..., 0, -1."""
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError("jump_length and jump_n_sample must be >= 1")
    jumps_left = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    t, order = num_steps - 1, [num_steps - 1]
    while t >= 0:
        # 1. one step down
        t -= 1
        order.append(t)
        # 2. at a jump point with passes left: go back up jump_length steps
        if jumps_left.get(t, 0) > 0:
            jumps_left[t] -= 1
            for _ in range(jump_length):
                t += 1
                order.append(t)
    return order


@torch.no_grad()
def repaint_inpaint(unet, alphas_cumprod: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, seeds: Sequence[int],
                    num_inference_steps: int, jump_length: int, jump_n_sample: int,
                    autocast_dtype: torch.dtype = torch.float32, show_progress: bool = False) -> torch.Tensor:
    """Inpaint ``image`` (only its known pixels are used) with the unconditional 3-channel ``unet``.
    The ``num_inference_steps`` levels are the strided timesteps tau_i = i * (T // n); one
    denoising step between levels uses the DDPM posterior between them. Output in [-1, 1] with the
    known pixels exactly those of ``image``."""
    device = next(unet.parameters()).device
    mask = mask.to(device, torch.float32)
    x0_known = (image.to(device, torch.float32) * (1 - mask))
    T = len(alphas_cumprod)
    tau = [i * (T // num_inference_steps) for i in range(num_inference_steps)]
    # alpha_bar of level i; level -1 (the last entry) is x_0 itself (alpha_bar = 1). Both tables go to
    # the device once: indexing them with Python ints inside the loop never makes the CPU wait for the GPU
    ab_levels = torch.cat([alphas_cumprod.float()[tau], torch.ones(1)]).to(device)
    tau_dev = torch.tensor(tau, device=device)
    ab = lambda i: ab_levels[i]
    noise = SeededNoise(seeds)
    shape = x0_known.shape[1:]
    order = repaint_schedule(num_inference_steps, jump_length, jump_n_sample)

    # 1. start from pure noise at the top level
    x = noise(shape, device)
    for cur, nxt in progress(list(zip(order[:-1], order[1:])), desc="RePaint", leave=False, disable=not show_progress):
        if nxt < cur:
            # 2. down: unknown region from the model, x^unknown ~ p_theta(x_nxt | x_cur)
            with _autocast(device, autocast_dtype):
                eps = unet(x, tau_dev[cur]).sample.float()
            x_unknown = p_sample(x, eps, ab(cur), ab(nxt), noise(shape, device) if nxt >= 0 else None)
            # 3. known region from the data: x^known ~ q(x_nxt | x_0) = N(sqrt(ab) x_0, (1 - ab) I)
            x_known = ab(nxt).sqrt() * x0_known + (1 - ab(nxt)).sqrt() * noise(shape, device) if nxt >= 0 else x0_known
            # x_nxt = mask * x^unknown + (1 - mask) * x^known
            x = mask * x_unknown + (1 - mask) * x_known
        else:
            # 4. up (resampling): x_nxt ~ q(x_nxt | x_cur) = N(sqrt(ab_nxt / ab_cur) x_cur, (1 - ab_nxt / ab_cur) I)
            a = ab(nxt) / ab(cur)
            x = a.sqrt() * x + (1 - a).sqrt() * noise(shape, device)
    # 5. the known pixels are already exact; clamp the rest to [-1, 1]
    return (mask * x.clamp(-1, 1) + (1 - mask) * x0_known).clamp(-1, 1)


def count_model_calls(num_steps: int, jump_length: int, jump_n_sample: int) -> int:
    """How many U-Net evaluations one RePaint run costs (one per denoising step)."""
    order = repaint_schedule(num_steps, jump_length, jump_n_sample)
    return sum(1 for a, b in zip(order[:-1], order[1:]) if b < a)


def save_repaint_predictions(cfg: Config, P, unet, noise_scheduler, device: torch.device) -> tuple[torch.Tensor, dict, dict]:
    """RePaint on the first ``ddpm.repaint.max_images`` test images with the pretrained
    unconditional model; written as method ``ddpm_repaint``. Returns (preds, test subset, meta)."""
    from .data import load_test_set, write_predictions

    r = cfg.ddpm.repaint
    test = load_test_set(cfg)
    n_all = len(test["name"])
    n = n_all if r.max_images is None else min(r.max_images, n_all)
    test = {k: v[:n] for k, v in test.items()}
    dtype = resolve_dtype(cfg.ddpm.mixed_precision, device)
    fn = lambda x, m, seeds: repaint_inpaint(unet, noise_scheduler.alphas_cumprod, x, m, seeds, r.num_inference_steps,
                                             r.jump_length, r.jump_n_sample, dtype)
    preds, stats = predict_images(fn, test["image"], test["mask"], image_seeds(cfg.seed, test["name"]),
                                  cfg.ddpm.sample_batch_size, device, "RePaint")
    _, total = count_parameters(unet)
    meta = {"weights": f"{weights_description(cfg, P)} (unconditional, 3 channels, not fine-tuned)",
            "device": str(device), **stats, "trainable_params": 0, "total_params": total,
            "num_inference_steps": r.num_inference_steps, "jump_length": r.jump_length,
            "jump_n_sample": r.jump_n_sample,
            "model_calls_per_image": count_model_calls(r.num_inference_steps, r.jump_length, r.jump_n_sample),
            "subset": f"first {n} of {n_all} test images (ddpm.repaint.max_images = {r.max_images})",
            "note": (f"training-free RePaint baseline on a SUBSET: the first {n} of {n_all} test images; "
                     "compare with other methods on these images only"
                     + ("" if cfg.ddpm.pretrained_id else "; SMOKE: tiny random model, outputs are noise-like"))}
    meta["n_images"] = len(preds)
    write_predictions(cfg, "ddpm_repaint", test["name"], preds, meta)
    return preds, test, meta
