"""Hole masks: LaMa's free-form masks (thin, medium, thick), boxes and a centre square. 1 = hole.

**thin / medium / thick** are LaMa's evaluation masks (Suvorov et al. 2022), with the generator
parameters of LaMa's configs ``configs/data_gen/random_{thin,medium,thick}_256.yaml`` (repository
advimman/lama) and the drawing rules of its ``saicinpainting/training/data/masks.py``
(``make_random_irregular_mask``, ``make_random_rectangle_mask``, ``MixedMaskGenerator``), as
``bin/gen_mask_dataset.py`` runs them. Per mask, LaMa picks **one** generator: strokes with weight
``irregular_proba`` = 1, boxes with weight ``box_proba`` (0 thin, 0.3 medium and thick), so 1/1.3 of
medium/thick masks are strokes and 0.3/1.3 are boxes. Values at 256 px:

=========  ================================================  ====================================
kind       strokes (``irregular_kwargs``)                    boxes (``box_kwargs``), P = 0.3/1.3
=========  ================================================  ====================================
thin       4-50 times, max_width 10, max_len 40, max_angle 4  never
medium     4-5 times, max_width 50, max_len 100               1-5 boxes, side 10-50, margin 0
thick      1-5 times, max_width 100, max_len 200              1-3 boxes, side 30-150, margin 10
=========  ================================================  ====================================

LaMa's code turns these into (no ramp, ``coef`` = 1): ``max_times + 1`` as the upper end of the
number of strokes (``cur_max_times = min_times + 1 + (max_times - min_times)``), 1-5 segments per
stroke, segment length ``10 + randint(max_len)``, brush width ``5 + randint(max_width)`` (so thin
strokes are 5-14 px wide), angle ``0.01 + randint(max_angle)`` radians mirrored to ``2 pi - angle``
on every other stroke; box sides ``bbox_min_size..bbox_max_size`` inclusive. A mask whose hole
fraction is above ``max_tamper_area`` = 0.5 is **dropped and a new one drawn** (never truncated).

Two kinds of this project, kept separate: **box** (1-3 boxes, side 30-128 px at 256 px: one
rectangle generator, margin 0) and **center** (the centred square of half the side, 25 % of the
image).

Other sizes scale every length (stroke length and width, box side and margin) by size / 256, with
at least 1 px. ``min_hole`` / ``max_hole`` bound the hole fraction by redrawing the whole mask.
Everything is drawn from a ``numpy.random.Generator``: one seed gives one mask. Taught in notebook 01
(the drawing functions as code cells); reading and validating mask files is the study's
(:mod:`helpers.study.data.masks`).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("thin", "medium", "thick", "box", "center")


REFERENCE_SIZE = 256        # LaMa's settings are given for 256x256 images


LAMA_MAX_HOLE = 0.5         # max_tamper_area of LaMa's data_gen configs


MAX_TRIES = 1000            # redraws before the hole-area limits are declared unreachable


# Changes whenever a kind draws different masks from the same seed (prepared test masks depend on it).
GENERATOR_VERSION = "lama-data_gen-256-v2"


@dataclass(frozen=True)
class Strokes:
    """``irregular_kwargs`` of a LaMa config (256 px)."""
    min_times: int
    max_times: int
    max_width: int
    max_len: int
    max_angle: int = 4


@dataclass(frozen=True)
class Boxes:
    """``box_kwargs`` of a LaMa config (256 px)."""
    min_times: int
    max_times: int
    bbox_min_size: int
    bbox_max_size: int
    margin: int = 0


@dataclass(frozen=True)
class KindSpec:
    """One kind: its generators and the weight LaMa's MixedMaskGenerator gives each."""
    strokes: Strokes | None = None
    boxes: Boxes | None = None
    irregular_proba: float = 1.0
    box_proba: float = 0.0


# Source: advimman/lama, configs/data_gen/random_thin_256.yaml, random_medium_256.yaml, random_thick_256.yaml
SPECS = {
    "thin": KindSpec(Strokes(min_times=4, max_times=50, max_width=10, max_len=40)),
    "medium": KindSpec(Strokes(min_times=4, max_times=5, max_width=50, max_len=100),
                       Boxes(min_times=1, max_times=5, bbox_min_size=10, bbox_max_size=50, margin=0),
                       box_proba=0.3),
    "thick": KindSpec(Strokes(min_times=1, max_times=5, max_width=100, max_len=200),
                      Boxes(min_times=1, max_times=3, bbox_min_size=30, bbox_max_size=150, margin=10),
                      box_proba=0.3),
    # this project's own kind: boxes only
    "box": KindSpec(boxes=Boxes(min_times=1, max_times=3, bbox_min_size=30, bbox_max_size=128), irregular_proba=0.0,
                    box_proba=1.0),
}


def px_at(length: float, scale: float) -> int:
    """A length given at 256 px, at this image size (at least 1 px)."""
    return max(1, int(round(length * scale)))


def draw_strokes(size: int, s: Strokes, scale: float, rng: np.random.Generator) -> np.ndarray:
    """LaMa's irregular mask: ``times`` polylines of 1-5 straight segments drawn with a round-capped
    brush (cv2.line), each segment starting where the previous one ended."""
    canvas = np.zeros((size, size), np.uint8)
    # LaMa: cur_max_times = min_times + 1 + (max_times - min_times); times = randint(min_times, cur_max_times + 1)
    times = int(rng.integers(s.min_times, s.max_times + 2))
    for i in range(times):
        x, y = int(rng.integers(size)), int(rng.integers(size))
        for _ in range(1 + int(rng.integers(5))):
            angle = 0.01 + int(rng.integers(s.max_angle))           # radians: 0.01, 1.01, 2.01, 3.01
            if i % 2 == 0:
                angle = 2 * np.pi - angle                            # every other stroke turns the other way
            length = (10 + int(rng.integers(s.max_len))) * scale     # 10 .. max_len + 9 px at 256
            width = px_at(5 + int(rng.integers(s.max_width)), scale)   # 5 .. max_width + 4 px at 256
            nx = int(np.clip(x + length * np.sin(angle), 0, size))
            ny = int(np.clip(y + length * np.cos(angle), 0, size))
            cv2.line(canvas, (x, y), (nx, ny), 1, width)
            x, y = nx, ny
    return canvas


def draw_boxes(size: int, b: Boxes, scale: float, rng: np.random.Generator) -> np.ndarray:
    """LaMa's rectangle mask: 1..max_times axis-aligned boxes, sides bbox_min..bbox_max (inclusive,
    capped by the image minus the margins), placed inside the margin."""
    canvas = np.zeros((size, size), np.uint8)
    margin = int(round(b.margin * scale))
    hi = min(px_at(b.bbox_max_size, scale), size - 2 * margin - 1)   # LaMa: randint(min, min(max + 1, size - 2 margin))
    lo = min(px_at(b.bbox_min_size, scale), hi)
    for _ in range(int(rng.integers(b.min_times, b.max_times + 1))):
        w, h = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        left = int(rng.integers(margin, size - margin - w + 1))
        top = int(rng.integers(margin, size - margin - h + 1))
        canvas[top:top + h, left:left + w] = 1
    return canvas


def draw_once(size: int, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One draw of a LaMa-style kind, before any hole-area limit: (uint8 {0, 1} mask, "strokes" or
    "boxes"). Like LaMa's MixedMaskGenerator: one generator per mask, picked with its weight."""
    spec, scale = SPECS[kind], size / REFERENCE_SIZE
    p_strokes = spec.irregular_proba / (spec.irregular_proba + spec.box_proba)
    if spec.strokes is not None and (spec.boxes is None or rng.random() < p_strokes):
        return draw_strokes(size, spec.strokes, scale, rng), "strokes"
    return draw_boxes(size, spec.boxes, scale, rng), "boxes"


def generate_mask(size: int, kind: str, rng: np.random.Generator,
                  min_hole: float = 0.01, max_hole: float = LAMA_MAX_HOLE) -> np.ndarray:
    """A float32 (size, size) mask in {0, 1} (1 = hole) of the given kind, redrawn until its hole
    fraction is in [min_hole, max_hole] (LaMa drops masks above 50 %)."""
    if kind not in KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {KINDS}")
    if not 0 <= min_hole < max_hole <= 1:
        raise ValueError(f"need 0 <= min_hole < max_hole <= 1, got {min_hole}, {max_hole}")
    if kind == "center":
        mask = np.zeros((size, size), np.float32)
        q = size // 4
        mask[q:size - q, q:size - q] = 1
        return mask
    fractions = []
    for _ in range(MAX_TRIES):
        mask, _ = draw_once(size, kind, rng)
        fraction = float(mask.mean())
        if min_hole <= fraction <= max_hole and fraction > 0:
            return mask.astype(np.float32)
        fractions.append(fraction)
    raise ValueError(f"{kind} masks at {size} px: no draw in {MAX_TRIES} had a hole fraction in "
                     f"[{min_hole}, {max_hole}] (drawn: {min(fractions):.3f}..{max(fractions):.3f}); "
                     "widen data.masks.min_hole / max_hole")
