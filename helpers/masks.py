"""Hole masks: boxes and LaMa-style free-form brush strokes. 1 = hole (see helpers/__init__.py).

The stroke generators follow the *settings* of LaMa's training masks (Suvorov et al. 2022,
configs at 256 px) and scale every length with the image side:

=========  ===================================================  =========================
kind       strokes                                              boxes
=========  ===================================================  =========================
thin       4-50 strokes, width <= 10, segment length <= 50      none
medium     4-5 strokes, width <= 50, segment length <= 100     1-5 boxes of side 10-50
thick      1-5 strokes, width <= 100, segment length <= 200    1-4 boxes of side 30-150
box        none                                                 1-3 boxes of side 30-128
center     none                                                 one centred square, side/2
=========  ===================================================  =========================

Every mask's hole fraction is kept within [min_hole, max_hole] (LaMa caps at 50%): a shape
that would push the area past ``max_hole`` is left out, and shapes are added while the area is
under ``min_hole``. Everything is drawn from a ``numpy.random.Generator``, so one seed gives one
mask. Taught in notebook 01.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("thin", "medium", "thick", "box", "center")
REFERENCE_SIZE = 256  # LaMa's settings are given for 256x256 images


@dataclass(frozen=True)
class StrokeSpec:
    min_strokes: int
    max_strokes: int
    max_width: float
    max_len: float
    min_boxes: int = 0
    max_boxes: int = 0
    box_min: float = 0
    box_max: float = 0
    max_vertices: int = 4
    max_angle: float = 4.0


SPECS = {
    "thin": StrokeSpec(4, 50, max_width=10, max_len=50),
    "medium": StrokeSpec(4, 5, max_width=50, max_len=100, min_boxes=1, max_boxes=5, box_min=10, box_max=50),
    "thick": StrokeSpec(1, 5, max_width=100, max_len=200, min_boxes=1, max_boxes=4, box_min=30, box_max=150),
    "box": StrokeSpec(0, 0, max_width=0, max_len=0, min_boxes=1, max_boxes=3, box_min=30, box_max=128),
}


def _stroke(size: int, spec: StrokeSpec, scale: float, rng: np.random.Generator) -> np.ndarray:
    """One brush stroke: a polyline of random-angle segments drawn with a round brush."""
    canvas = np.zeros((size, size), np.uint8)
    x, y = rng.integers(0, size, 2)
    width = max(1, int(round((1 + rng.random() * (spec.max_width - 1)) * scale)))
    for i in range(int(rng.integers(1, spec.max_vertices + 1))):
        angle = 0.01 + rng.random() * spec.max_angle
        if i % 2 == 0:
            angle = 2 * np.pi - angle
        length = (5 + rng.random() * (spec.max_len - 5)) * scale
        nx = int(np.clip(x + length * np.sin(angle), 0, size - 1))
        ny = int(np.clip(y + length * np.cos(angle), 0, size - 1))
        cv2.line(canvas, (int(x), int(y)), (nx, ny), 1, width)
        cv2.circle(canvas, (nx, ny), max(1, width // 2), 1, -1)
        x, y = nx, ny
    return canvas


def _box(size: int, spec: StrokeSpec, scale: float, rng: np.random.Generator) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    lo = max(1, int(spec.box_min * scale))
    hi = max(lo + 1, min(size, int(spec.box_max * scale)))
    h, w = rng.integers(lo, hi + 1, 2)
    h, w = min(h, size), min(w, size)
    top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    canvas[top:top + h, left:left + w] = 1
    return canvas


def generate_mask(size: int, kind: str, rng: np.random.Generator,
                  min_hole: float = 0.01, max_hole: float = 0.5) -> np.ndarray:
    """A float32 (size, size) mask in {0, 1} (1 = hole) of the given kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {KINDS}")
    if not 0 <= min_hole < max_hole <= 1:
        raise ValueError(f"need 0 <= min_hole < max_hole <= 1, got {min_hole}, {max_hole}")
    if kind == "center":
        mask = np.zeros((size, size), np.float32)
        q = size // 4
        mask[q:size - q, q:size - q] = 1
        return mask

    spec, scale = SPECS[kind], size / REFERENCE_SIZE
    n_strokes = int(rng.integers(spec.min_strokes, spec.max_strokes + 1)) if spec.max_strokes else 0
    n_boxes = int(rng.integers(spec.min_boxes, spec.max_boxes + 1)) if spec.max_boxes else 0
    plan = ["stroke"] * n_strokes + ["box"] * n_boxes
    mask = np.zeros((size, size), np.uint8)
    # 1. draw the planned shapes, leaving out any that would push the hole past max_hole
    # 2. then keep adding shapes while the hole is smaller than min_hole (bounded tries)
    for attempt in range(len(plan) + 200):
        if attempt >= len(plan) and mask.mean() >= min_hole:
            break
        what = plan[attempt] if attempt < len(plan) else plan[attempt % len(plan)] if plan else "box"
        shape = _stroke(size, spec, scale, rng) if what == "stroke" else _box(size, spec, scale, rng)
        candidate = mask | shape
        if candidate.mean() <= max_hole:
            mask = candidate
    if mask.mean() == 0:  # pathological limits; never return an empty mask
        mask[size // 2, size // 2] = 1
    return mask.astype(np.float32)


def random_mask(size: int, rng: np.random.Generator, kinds=("thin", "medium", "thick", "box"),
                min_hole: float = 0.01, max_hole: float = 0.5) -> tuple[np.ndarray, str]:
    """Draw a kind uniformly from ``kinds``, then a mask of that kind. Returns (mask, kind)."""
    kind = str(kinds[int(rng.integers(len(kinds)))])
    return generate_mask(size, kind, rng, min_hole, max_hole), kind


def hole_fraction(mask) -> float:
    """Fraction of pixels in the hole."""
    return float(np.asarray(mask, dtype=np.float64).mean())


def validate_mask(mask: np.ndarray, image_shape: tuple[int, int] | None = None, name: str = "mask") -> np.ndarray:
    """Check a mask read from a file and return it as float32 {0, 1} (H, W).

    Accepts {0, 1} or {0, 255} single-channel arrays. Raises ``ValueError`` naming ``name`` for
    a size that differs from its image, non-binary values, an empty mask or an all-hole mask.
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
    values = np.unique(m)
    if set(values.tolist()) <= {0, 255} and m.dtype == np.uint8:
        m = (m == 255)
    elif not set(values.tolist()) <= {0, 1}:
        shown = values[:6].tolist()
        raise ValueError(f"{name}: mask is not binary (values {shown}{'...' if len(values) > 6 else ''}); "
                         "expected {0, 1} or {0, 255} with 1/255 = hole")
    m = m.astype(np.float32)
    if m.max() == 0:
        raise ValueError(f"{name}: mask is empty (no hole pixel); nothing to inpaint")
    if m.min() == 1:
        raise ValueError(f"{name}: mask is all hole; there is no known context to condition on")
    return m


def sample_fractions(size: int, kinds, n: int, seed: int, min_hole: float = 0.01, max_hole: float = 0.5) -> dict:
    """Hole fractions of ``n`` masks per kind (for the histogram in notebook 01)."""
    out = {}
    for k, kind in enumerate(kinds):
        rng = np.random.default_rng([seed, 9, k])
        out[kind] = [hole_fraction(generate_mask(size, kind, rng, min_hole, max_hole)) for _ in range(n)]
    return out
