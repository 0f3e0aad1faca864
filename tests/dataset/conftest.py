"""Fixtures of the dataset tests: a private copy of the session's tiny dataset, a mosaic."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from hrtem_ray.dataset import readers


@pytest.fixture
def dataset_copy(tiny_dataset_root, tmp_path) -> Path:
    """A private copy of the tiny dataset to damage, extend or import into (the session one
    stays untouched)."""
    target = tmp_path / "data"
    shutil.copytree(tiny_dataset_root, target)
    return target


@pytest.fixture(scope="module")
def mosaic(tiny_dataset_root) -> tuple[np.ndarray, np.ndarray]:
    """A 128 x 128 px image (2 x 2 simulated validation images) and its mask, at 0.4 Å/px."""
    val = readers.read_images(tiny_dataset_root, "0", "val")
    image = np.block([[val.images[0], val.images[1]], [val.images[2], val.images[0]]])
    mask = np.block([[val.masks[0], val.masks[1]], [val.masks[2], val.masks[0]]])
    return image.astype(np.float32), mask.astype(np.float32)
