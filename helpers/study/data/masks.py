"""Masks as the study handles them: mask files read and validated, random kinds for training, hole
fractions. The generator itself (LaMa's thin / medium / thick, boxes, centre; 1 = hole) is taught in
notebook 01 and lives in :mod:`helpers.course.masks`."""
from __future__ import annotations

import numpy as np

from helpers.course.masks import LAMA_MAX_HOLE, generate_mask


def random_mask(size: int, rng: np.random.Generator, kinds=("thin", "medium", "thick", "box"),
                min_hole: float = 0.01, max_hole: float = LAMA_MAX_HOLE) -> tuple[np.ndarray, str]:
    """Draw a kind uniformly from ``kinds``, then a mask of that kind. Returns (mask, kind)."""
    kind = str(kinds[int(rng.integers(len(kinds)))])
    return generate_mask(size, kind, rng, min_hole, max_hole), kind


def hole_fraction(mask) -> float:
    """Fraction of pixels in the hole."""
    return float(np.asarray(mask, dtype=np.float64).mean())


def validate_mask(mask: np.ndarray, image_shape: tuple[int, int] | None = None, name: str = "mask") -> np.ndarray:
    """Check a mask read from a file and return it as float32 {0, 1} (H, W).

    Accepts single-channel {0, 1}, or {0, max} where max is the white of its integer type (255 for
    8-bit, 65535 for 16-bit PNGs). Raises ``ValueError`` naming ``name`` for a size that differs from
    its image, non-binary values, an empty mask or an all-hole mask.
    """
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] in (1, 3, 4):
        if m.shape[2] > 1 and not all(np.array_equal(m[..., 0], m[..., c]) for c in range(1, min(3, m.shape[2]))):
            raise ValueError(f"{name}: mask has differing colour channels; expected a single-channel binary mask")
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D mask, got shape {m.shape}")
    if image_shape is not None and tuple(m.shape) != tuple(image_shape[:2]):
        raise ValueError(f"{name}: mask size {m.shape[1]}x{m.shape[0]} differs from its image "
                         f"{image_shape[1]}x{image_shape[0]}")
    values = set(np.unique(m).tolist())
    # white of the file's bit depth: 8-bit PNGs read as uint8; 16-bit ones as uint16 (Pillow "I;16")
    # or int32 (Pillow "I")
    white = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535, np.dtype(np.int32): 65535}.get(m.dtype)
    if white is not None and values <= {0, white}:
        m = m == white
    elif not values <= {0, 1}:
        shown = sorted(values)[:6]
        raise ValueError(f"{name}: mask is not binary (values {shown}{'...' if len(values) > 6 else ''}); "
                         "expected {0, 1}, or black/white {0, 255} (8-bit) / {0, 65535} (16-bit) with white = hole")
    m = m.astype(np.float32)
    if m.max() == 0:
        raise ValueError(f"{name}: mask is empty (no hole pixel); nothing to inpaint")
    if m.min() == 1:
        raise ValueError(f"{name}: mask is all hole; there is no known context to condition on")
    return m


def sample_fractions(size: int, kinds, n: int, seed: int, min_hole: float = 0.01,
                     max_hole: float = LAMA_MAX_HOLE, mask_fn=generate_mask) -> dict:
    """Hole fractions of ``n`` masks per kind drawn by ``mask_fn`` (notebook 01 passes its own
    ``generate_mask``), for the histogram of notebook 01 and the statistics test."""
    out = {}
    for k, kind in enumerate(kinds):
        rng = np.random.default_rng([seed, 9, k])
        out[kind] = [hole_fraction(mask_fn(size, kind, rng, min_hole, max_hole)) for _ in range(n)]
    return out
