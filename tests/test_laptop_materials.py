"""``sweeps/laptop_materials.yaml`` end to end from a copy of the preset and its CIF file (the
CIF path is relative to the spec file), shrunk for CI: simulate, sweep and report."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import polars as pl
import pytest
import yaml
from helpers import REPO

from hrtem_ray.dataset.readers import read_images

#: The preset with fewer structures, images and models (every domain, material and shape kept).
MATERIALS_CI = {
    "dataset": {"n_structures": {"train": 4, "val": 2, "test": 2}, "structures_per_shard": 2},
    "domains": {"pretrain": ["Au-wulff"], "transfer": ["Pt-cube"]},
    "pretrain": {"lr": [0.001], "n_images": [4], "seeds": [0]},
    "transfer": {"lr": [0.0003], "n_images": [2], "freeze": ["none"]},
    "baseline": None,
    "training": {"epochs": 1, "batch_size": 4},
}


@pytest.mark.slow
def test_laptop_materials_preset_runs_end_to_end_from_a_copy(tmp_path):
    sweeps = tmp_path / "sweeps"
    (sweeps / "materials").mkdir(parents=True)
    shutil.copy(REPO / "sweeps" / "materials" / "SrTiO3.cif", sweeps / "materials")
    raw = yaml.safe_load((REPO / "sweeps" / "laptop_materials.yaml").read_text())
    for key, value in MATERIALS_CI.items():
        raw[key] = {**raw[key], **value} if key == "dataset" else value
    spec = sweeps / "laptop_materials.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "hrtem_ray.cli", "run", str(spec), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=tmp_path.parent,  # not the spec's folder: the CIF is found next to the spec
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    domains = list(raw["dataset"]["structure_domains"])
    lattices = {}
    for domain in domains:
        batch = read_images(out / "data", domain, "train", n=4)
        assert batch.images.shape == (4, 128, 128) and batch.masks.max() > 0.5
        shards = out / "data" / "study=structure" / f"domain={domain}" / "split=train"
        rows = pl.read_parquet(shards / "*.parquet", columns=["lattice"])
        lattices[domain] = set(rows["lattice"].to_list())
    assert lattices == {
        "Au-wulff": {"Au"},
        "Pt-cube": {"Pt"},
        "CeO2-wulff": {"CeO2"},
        "SrTiO3-cube": {"SrTiO3"},
    }
    results = pl.read_parquet(out / "results" / "**" / "*.parquet")
    assert results["model_id"].n_unique() == 1 + 1  # Au-wulff, and its transfer to Pt-cube
    assert set(results["eval_domain"].unique()) == set(domains)
    assert (out / "report" / "report.html").is_file()
