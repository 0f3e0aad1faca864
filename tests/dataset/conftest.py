"""Fixtures of the dataset tests: a private copy of the session's tiny dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def dataset_copy(tiny_dataset_root, tmp_path) -> Path:
    """A private copy of the tiny dataset to damage, extend or import into (the session one
    stays untouched)."""
    target = tmp_path / "data"
    shutil.copytree(tiny_dataset_root, target)
    return target
