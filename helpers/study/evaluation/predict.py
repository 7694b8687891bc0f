"""Prediction of the frozen test set: one loop and one meta schema for all five methods.

Every method (``ddpm_finetuned``, ``ddpm_repaint``, ``sd_zeroshot``, ``sd_lora``, ``telea``) is a
function ``fn(images, masks, seeds, names) -> completions`` (images in [-1, 1], masks 1 = hole, at
the data resolution). :func:`predict_test_set` runs it over the test set in batches with a progress
bar, times it, measures peak GPU memory, pastes the known pixels back, and writes PNGs plus a
``meta.json`` whose keys are the same for every method (:func:`method_meta`). The notebooks, the
demo and the benchmark call the same functions.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from helpers.study.config import Config
from helpers.study.runtime import image_seeds, peak_memory_bytes, progress, reset_peak_memory, timed

log = logging.getLogger(__name__)

# the keys every meta.json holds (None where a method has no such number: Telea has no GPU memory)
META_KEYS = ("method", "weights", "device", "n_images", "subset", "images_per_s", "sample_seconds_per_image",
             "sample_seconds", "peak_memory_bytes", "trainable_params", "total_params", "train_steps",
             "train_seconds", "train_images_per_s", "train_peak_memory_bytes", "seeds", "note")


def predict_images(fn: Callable, images: torch.Tensor, masks: torch.Tensor, seeds: Sequence[int],
                   names: Sequence[str], batch_size: int, device: torch.device, desc: str) -> tuple[torch.Tensor, dict]:
    """``fn(images, masks, seeds, names)`` over a set in batches with a progress bar. Returns the
    predictions (on the CPU) and {images_per_s, sample_seconds_per_image, sample_seconds, peak_memory_bytes}."""
    out = []
    reset_peak_memory(device)
    with timed(device) as tm:
        for i in progress(range(0, len(images), batch_size), desc=desc):
            sl = slice(i, i + batch_size)
            out.append(fn(images[sl], masks[sl], list(seeds[sl]), list(names[sl])).cpu())
    n = len(images)
    return torch.cat(out), {"images_per_s": n / tm["seconds"], "sample_seconds_per_image": tm["seconds"] / n,
                            "sample_seconds": tm["seconds"], "peak_memory_bytes": peak_memory_bytes(device)}


def method_meta(method: str, weights: str, device, stats: dict, trainable_params: int, total_params: int,
                train_stats: dict | None = None, note: str = "", **settings) -> dict:
    """The meta.json of a method's predictions: :data:`META_KEYS` plus the method's own settings."""
    t = train_stats or {"steps": 0, "seconds": 0}          # no training: zero steps, zero seconds
    meta = {"method": method, "weights": weights, "device": str(device), **stats,
            "trainable_params": trainable_params, "total_params": total_params,
            "train_steps": t.get("steps"), "train_seconds": t.get("seconds"),
            "train_images_per_s": t.get("images_per_s"), "train_peak_memory_bytes": t.get("peak_memory_bytes"),
            "seeds": "one per image: seed * 1000003 + crc32(name)", "note": note, **settings}
    return {k: meta.get(k) for k in META_KEYS} | {k: v for k, v in meta.items() if k not in META_KEYS}


def predict_test_set(cfg: Config, method: str, fn: Callable, batch_size: int, device, meta: dict,
                     max_images: int | None = None, root: Path | None = None,
                     desc: str | None = None) -> tuple[torch.Tensor, dict, dict]:
    """Complete the frozen test set (its first ``max_images``) with ``fn`` and write it as ``method``.
    ``meta`` is :func:`method_meta` without the timing (filled in here). Returns (predictions, test set, meta)."""
    from helpers.study.data.dataset import composite, load_test_set
    from helpers.study.data.predictions import write_predictions

    test = load_test_set(cfg, root)
    n_all = len(test["name"])
    n = n_all if max_images is None else min(max_images, n_all)
    test = {k: v[:n] for k, v in test.items()}
    preds, stats = predict_images(fn, test["image"], test["mask"], image_seeds(cfg.seed, test["name"]), test["name"],
                                  batch_size, device, desc or method)
    # x_hat = m * prediction + (1 - m) * x: the known pixels exactly, whatever the method did with them
    preds = composite(preds, test["image"], test["mask"])
    meta = {**meta, **stats, "n_images": n,
            "subset": None if n == n_all else f"first {n} of {n_all} test images"}
    write_predictions(cfg, method, test["name"], preds, meta, root)
    return preds, test, meta


# ---------------------------------------------------------------- the classical baseline
def telea_inpaint(images: torch.Tensor, masks: torch.Tensor, radius: int) -> torch.Tensor:
    """OpenCV Telea (2004): each hole pixel, in order of distance to the boundary, is extrapolated
    from the known pixels around it (a weighted first-order estimate: value plus gradient times
    offset, weighted by distance, level-set direction and proximity). Non-learned, one CPU thread."""
    import cv2

    out = []
    for x, m in zip(images, masks):
        img = np.ascontiguousarray(((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
        # cv2.inpaint: 8-bit 3-channel image, 8-bit mask (non-zero = hole), radius in pixels
        filled = cv2.inpaint(img, (m[0].numpy() > 0.5).astype(np.uint8) * 255, int(radius), cv2.INPAINT_TELEA)
        out.append(torch.from_numpy(filled).permute(2, 0, 1).float().div(127.5).sub(1.0))
    return torch.stack(out)
