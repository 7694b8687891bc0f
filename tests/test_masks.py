"""Mask generators: polarity, determinism by seed, hole area in range, scaling; mask validation."""
import numpy as np
import pytest

from helpers import masks as M


@pytest.mark.parametrize("kind", M.KINDS)
@pytest.mark.parametrize("size", [32, 64, 256])
def test_masks_binary_in_range_and_deterministic(kind, size):
    for seed in range(15):
        a = M.generate_mask(size, kind, np.random.default_rng(seed), 0.01, 0.5)
        b = M.generate_mask(size, kind, np.random.default_rng(seed), 0.01, 0.5)
        assert a.shape == (size, size) and a.dtype == np.float32
        assert set(np.unique(a).tolist()) <= {0.0, 1.0}
        assert np.array_equal(a, b), "same seed must give the same mask"
        assert 0.01 <= M.hole_fraction(a) <= 0.5


def test_different_seeds_differ():
    masks = [M.generate_mask(64, "medium", np.random.default_rng(s)) for s in range(5)]
    assert len({m.tobytes() for m in masks}) == 5


def test_polarity_one_is_hole():
    m = M.generate_mask(64, "center", np.random.default_rng(0))
    assert m[32, 32] == 1.0 and m[0, 0] == 0.0          # centre is the hole, border is context
    assert M.hole_fraction(m) == pytest.approx(0.25)


def test_area_limits_are_respected_for_tight_ranges():
    for seed in range(20):
        m = M.generate_mask(128, "thick", np.random.default_rng(seed), min_hole=0.2, max_hole=0.3)
        assert 0.2 <= M.hole_fraction(m) <= 0.3


def test_stroke_width_scales_with_image_size():
    """thin strokes are <= 10 px wide at 256 px: at 256 the masks are sparse lines, not blobs."""
    f256 = np.mean([M.hole_fraction(M.generate_mask(256, "thin", np.random.default_rng(s))) for s in range(20)])
    f_thick = np.mean([M.hole_fraction(M.generate_mask(256, "thick", np.random.default_rng(s))) for s in range(20)])
    assert f256 < f_thick


def test_random_mask_draws_every_kind():
    rng = np.random.default_rng(0)
    kinds = {M.random_mask(32, rng)[1] for _ in range(60)}
    assert kinds == {"thin", "medium", "thick", "box"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mask kind"):
        M.generate_mask(32, "blob", np.random.default_rng(0))
    with pytest.raises(ValueError, match="min_hole"):
        M.generate_mask(32, "box", np.random.default_rng(0), 0.6, 0.5)


class TestValidateMask:
    def test_accepts_0_1_and_0_255(self):
        m = np.zeros((8, 8), np.uint8)
        m[2:4, 2:4] = 255
        out = M.validate_mask(m, (8, 8))
        assert out.dtype == np.float32 and out.sum() == 4 and set(np.unique(out)) == {0.0, 1.0}
        assert M.validate_mask(m // 255, (8, 8)).sum() == 4
        assert M.validate_mask(np.dstack([m, m, m]), (8, 8)).sum() == 4   # RGB-saved grey mask

    def test_rejects_size_mismatch(self):
        with pytest.raises(ValueError, match="differs from its image"):
            M.validate_mask(np.eye(8), (16, 16), name="m.png")

    def test_rejects_non_binary(self):
        with pytest.raises(ValueError, match="not binary"):
            M.validate_mask(np.eye(8) * 0.5, (8, 8))
        soft = np.zeros((8, 8), np.uint8)
        soft[0, 0], soft[1, 1] = 128, 255
        with pytest.raises(ValueError, match="not binary"):
            M.validate_mask(soft, (8, 8))

    def test_rejects_empty_and_full(self):
        with pytest.raises(ValueError, match="empty"):
            M.validate_mask(np.zeros((8, 8)), (8, 8))
        with pytest.raises(ValueError, match="all hole"):
            M.validate_mask(np.ones((8, 8)), (8, 8))

    def test_names_the_file(self):
        with pytest.raises(ValueError, match="masks/x.png"):
            M.validate_mask(np.zeros((8, 8)), name="masks/x.png")
