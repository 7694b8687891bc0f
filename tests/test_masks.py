"""Mask generators: polarity, determinism by seed, hole area in range, LaMa's statistics; mask validation."""
import dataclasses

import cv2
import numpy as np
import pytest

import helpers as H


@pytest.mark.parametrize("kind", H.course.masks.KINDS)
@pytest.mark.parametrize("size", [32, 64, 256])
def test_masks_binary_in_range_and_deterministic(kind, size):
    for seed in range(15):
        a = H.course.masks.generate_mask(size, kind, np.random.default_rng(seed), 0.01, 0.5)
        b = H.course.masks.generate_mask(size, kind, np.random.default_rng(seed), 0.01, 0.5)
        assert a.shape == (size, size) and a.dtype == np.float32
        assert set(np.unique(a).tolist()) <= {0.0, 1.0}
        assert np.array_equal(a, b), "same seed must give the same mask"
        assert 0.01 <= H.study.data.masks.hole_fraction(a) <= 0.5


def test_different_seeds_differ():
    masks = [H.course.masks.generate_mask(64, "medium", np.random.default_rng(s)) for s in range(5)]
    assert len({m.tobytes() for m in masks}) == 5


def test_polarity_one_is_hole():
    m = H.course.masks.generate_mask(64, "center", np.random.default_rng(0))
    assert m[32, 32] == 1.0 and m[0, 0] == 0.0          # centre is the hole, border is context
    assert H.study.data.masks.hole_fraction(m) == pytest.approx(0.25)


def test_area_limits_are_respected_for_tight_ranges():
    for seed in range(20):
        m = H.course.masks.generate_mask(128, "thick", np.random.default_rng(seed), min_hole=0.2, max_hole=0.3)
        assert 0.2 <= H.study.data.masks.hole_fraction(m) <= 0.3


# ---------------------------------------------------------------- LaMa's protocol
# Mean hole area of LaMa's generators at 256 px with masks over 50 % rejected (configs/data_gen/
# random_{thin,medium,thick}_256.yaml), as measured in issue #12 on 2,000 masks per kind with a port
# of LaMa's code.
LAMA_MEAN_HOLE = {"thin": 0.288, "medium": 0.225, "thick": 0.269}
N_STATS = 2000
# Tolerance on the mean: the sampling error of a 2,000-mask mean is about 0.003 (std ~0.13), and
# LaMa's RandomIrregularMaskGenerator draws up to max_times + 1 strokes (cur_max_times adds 1),
# which the issue's port did not: worth +0.015 on medium, < 0.003 on thin and thick (checked below).
MEAN_TOL = 0.02


@pytest.fixture(scope="module")
def lama_fractions():
    fractions = H.study.data.masks.sample_fractions(256, list(LAMA_MEAN_HOLE), N_STATS, seed=0)
    return {k: np.array(v) for k, v in fractions.items()}


@pytest.mark.parametrize("kind", list(LAMA_MEAN_HOLE))
def test_lama_kinds_match_lamas_mean_spread_and_cap(kind, lama_fractions):
    f = lama_fractions[kind]
    # mean: LaMa's figure
    assert f.mean() == pytest.approx(LAMA_MEAN_HOLE[kind], abs=MEAN_TOL)
    # cap: never above 50 %, never empty
    assert f.max() <= 0.5 and f.min() > 0
    # spread: redrawing above the cap keeps the generator's shape; truncation piled 46.8 % of thick
    # masks into 45-50 %. The 45-50 % band holds no more than 1.5x the 40-45 % band and < 15 % of masks,
    # and the areas spread over the range (standard deviation 0.08-0.18, the 10-90 % range > 0.25).
    top, below = ((f > 0.45) & (f <= 0.5)).mean(), ((f > 0.40) & (f <= 0.45)).mean()
    assert top <= 1.5 * below and top < 0.15
    assert 0.08 < f.std() < 0.18
    assert np.quantile(f, 0.9) - np.quantile(f, 0.1) > 0.25


def test_the_issue_figures_are_lamas_generator_without_the_extra_stroke(monkeypatch):
    """Where the means differ from the issue's figures: with max_times strokes at most (the issue's
    port) instead of LaMa's max_times + 1, every kind lands within 0.01 (3 sampling errors)."""
    for kind in LAMA_MEAN_HOLE:
        spec = H.course.masks.SPECS[kind]
        monkeypatch.setitem(H.course.masks.SPECS, kind, dataclasses.replace(
            spec, strokes=dataclasses.replace(spec.strokes, max_times=spec.strokes.max_times - 1)))
    f = H.study.data.masks.sample_fractions(256, list(LAMA_MEAN_HOLE), N_STATS, seed=1)
    for kind, figure in LAMA_MEAN_HOLE.items():
        assert np.mean(f[kind]) == pytest.approx(figure, abs=0.01), kind


@pytest.mark.parametrize("kind, p_strokes", [("thin", 1.0), ("medium", 1 / 1.3), ("thick", 1 / 1.3), ("box", 0.0)])
def test_one_generator_per_mask_picked_with_lamas_weights(kind, p_strokes):
    rng = np.random.default_rng(5)
    picks = [H.course.masks.draw_once(64, kind, rng)[1] for _ in range(600)]
    share = picks.count("strokes") / len(picks)
    # binomial standard error at n = 600 is <= 0.018: 0.06 is more than 3 of them
    assert share == pytest.approx(p_strokes, abs=0.06)


def test_thin_strokes_are_at_least_5_px_wide_at_256():
    """LaMa's brush is 5 + randint(max_width) px: every thin stroke survives an erosion that removes
    2 px from each side (a stroke narrower than 5 px would vanish)."""
    rng = np.random.default_rng(3)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    for _ in range(10):
        mask, _ = H.course.masks.draw_once(256, "thin", rng)
        n, labels = cv2.connectedComponents(mask)
        eroded = cv2.erode(mask, kernel)
        for c in range(1, n):
            assert eroded[labels == c].any()


def test_masks_at_other_sizes_scale_from_256():
    """Lengths scale with the side, so the hole-area distribution is about the same at 64 px."""
    f64 = H.study.data.masks.sample_fractions(64, ["thick"], 500, seed=2)["thick"]
    f256 = H.study.data.masks.sample_fractions(256, ["thick"], 500, seed=2)["thick"]
    assert np.mean(f64) == pytest.approx(np.mean(f256), abs=0.03)


def test_random_mask_draws_every_kind():
    rng = np.random.default_rng(0)
    kinds = {H.study.data.masks.random_mask(32, rng)[1] for _ in range(60)}
    assert kinds == {"thin", "medium", "thick", "box"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mask kind"):
        H.course.masks.generate_mask(32, "blob", np.random.default_rng(0))
    with pytest.raises(ValueError, match="min_hole"):
        H.course.masks.generate_mask(32, "box", np.random.default_rng(0), 0.6, 0.5)


class TestValidateMask:
    def test_accepts_0_1_and_0_255(self):
        m = np.zeros((8, 8), np.uint8)
        m[2:4, 2:4] = 255
        out = H.study.data.masks.validate_mask(m, (8, 8))
        assert out.dtype == np.float32 and out.sum() == 4 and set(np.unique(out)) == {0.0, 1.0}
        assert H.study.data.masks.validate_mask(m // 255, (8, 8)).sum() == 4
        assert H.study.data.masks.validate_mask(np.dstack([m, m, m]), (8, 8)).sum() == 4   # RGB-saved grey mask

    def test_accepts_a_binary_16_bit_mask(self, tmp_path):
        """A 16-bit PNG mask ({0, 65535}, white = hole) is binary, read as Pillow reads it."""
        from PIL import Image
        m = np.zeros((8, 8), np.uint16)
        m[2:4, 2:5] = 65535
        Image.fromarray(m).save(tmp_path / "m16.png")
        with Image.open(tmp_path / "m16.png") as im:
            arr = np.asarray(im)
        assert arr.dtype == np.uint16
        out = H.study.data.masks.validate_mask(arr, (8, 8))
        assert out.dtype == np.float32 and out.sum() == 6 and out[2, 2] == 1 and out[0, 0] == 0
        assert H.study.data.masks.validate_mask(m.astype(np.int32), (8, 8)).sum() == 6       # Pillow's "I" mode
        grey = m.copy()
        grey[0, 0] = 255                                                   # dark grey in 16 bits
        with pytest.raises(ValueError, match="not binary"):
            H.study.data.masks.validate_mask(grey, (8, 8))

    def test_rejects_size_mismatch(self):
        with pytest.raises(ValueError, match="differs from its image"):
            H.study.data.masks.validate_mask(np.eye(8), (16, 16), name="m.png")

    def test_rejects_non_binary(self):
        with pytest.raises(ValueError, match="not binary"):
            H.study.data.masks.validate_mask(np.eye(8) * 0.5, (8, 8))
        soft = np.zeros((8, 8), np.uint8)
        soft[0, 0], soft[1, 1] = 128, 255
        with pytest.raises(ValueError, match="not binary"):
            H.study.data.masks.validate_mask(soft, (8, 8))

    def test_rejects_empty_and_full(self):
        with pytest.raises(ValueError, match="empty"):
            H.study.data.masks.validate_mask(np.zeros((8, 8)), (8, 8))
        with pytest.raises(ValueError, match="all hole"):
            H.study.data.masks.validate_mask(np.ones((8, 8)), (8, 8))

    def test_names_the_file(self):
        with pytest.raises(ValueError, match="masks/x.png"):
            H.study.data.masks.validate_mask(np.zeros((8, 8)), name="masks/x.png")
