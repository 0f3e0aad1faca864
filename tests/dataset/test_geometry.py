"""Resampling micrographs to another pixel size, and tiling them."""

from __future__ import annotations

import numpy as np
import pytest

from hrtem_ray.dataset.geometry import resample, tile_positions, tile_starts

PIXEL_ANGSTROM = 0.4  # the tiny dataset's output sampling


def test_resampling_up_then_down_returns_the_image(mosaic):
    image, _ = mosaic
    fine = resample(image, PIXEL_ANGSTROM, PIXEL_ANGSTROM / 2.5)
    assert fine.shape == (320, 320)
    np.testing.assert_allclose(
        resample(fine, PIXEL_ANGSTROM / 2.5, PIXEL_ANGSTROM), image, atol=1e-4 * np.ptp(image)
    )
    assert resample(np.full((50, 30), 3.0), 1.0, 0.7).mean() == pytest.approx(3.0)


def test_tiles_cover_the_image_with_the_overlap():
    assert tile_starts(128, 64) == [0, 64]
    assert tile_starts(130, 64, 16) == [0, 48, 66]
    assert len(tile_positions((130, 64), 64, 16)) == 3
    with pytest.raises(ValueError, match="smaller than one tile"):
        tile_starts(63, 64)
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(128, 64, 64)
