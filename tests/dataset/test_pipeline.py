"""Simulating a dataset: Ray Data and the serial loop agree, reruns, crashes, refused specs."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import yaml
from helpers import TINY_DATASET, kill_cli_when, run_cli, tiny_dataset_spec

from hrtem_ray.dataset import manifest, pipeline, readers
from hrtem_ray.spec.base import SpecError
from hrtem_ray.spec.config import load_dataset_spec


@pytest.mark.slow
def test_ray_data_pipeline_matches_the_serial_loop(ray_cluster, tiny_dataset_root, tmp_path):
    spec = tiny_dataset_spec()
    summary = pipeline.simulate_dataset(spec, tmp_path / "ray")
    assert summary.shards == summary.shards_written == len(manifest.plan_shards(spec))
    assert summary.images == 3 * (6 + 3)
    for domain in spec.domains:
        for split in ("train", "val"):
            a = readers.read_images(tmp_path / "ray", domain, split)
            b = readers.read_images(tiny_dataset_root, domain, split)
            assert a.structure_ids == b.structure_ids
            np.testing.assert_array_equal(a.images, b.images)
            np.testing.assert_array_equal(a.masks, b.masks)


def test_rerun_writes_nothing(tiny_dataset_root):
    before = {p: p.stat().st_mtime_ns for p in tiny_dataset_root.rglob("*") if p.is_file()}
    summary = pipeline.simulate_dataset_serial(tiny_dataset_spec(), tiny_dataset_root)
    assert summary.shards_written == 0 and summary.images == 0
    after = {p: p.stat().st_mtime_ns for p in tiny_dataset_root.rglob("*") if p.is_file()}
    assert after == before


def test_a_too_large_worker_writes_nothing(tmp_path):
    huge = tiny_dataset_spec(
        structures={**TINY_DATASET["structures"], "cell_angstrom": 1600},
        simulation={**TINY_DATASET["simulation"], "sampling_angstrom": 0.1, "n_phonons": 256},
    )
    with pytest.raises(SpecError, match=r"one simulation worker needs an estimated \d+"):
        pipeline.simulate_dataset_serial(huge, tmp_path / "huge")
    assert not (tmp_path / "huge").exists()


@pytest.mark.slow
def test_killed_run_leaves_no_complete_looking_shard_and_rerun_completes(
    tiny_dataset_root, tmp_path
):
    spec = {**TINY_DATASET, "n_structures": {"train": 24, "val": 3}, "structures_per_shard": 1}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"dataset": spec}))
    out = tmp_path / "ds"
    args = ["simulate", spec_file, "--out", out, "--num-cpus", 2]
    kill_cli_when(args, lambda: len(manifest.completed_shards(str(out))) >= 3, timeout=180)
    n_total = len(manifest.plan_shards(load_dataset_spec(spec_file)))
    done = manifest.completed_shards(str(out))
    assert 3 <= len(done) < n_total, (
        f"the run should be killed part-way ({len(done)} of {n_total} shards)"
    )
    # whatever the manifest lists is complete and readable
    for domain in ("-10", "0", "10"):
        readers.read_table(out, [domain])
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(manifest.completed_shards(str(out))) == n_total
    counts = readers.summarize(out)
    assert counts == {d: {"train": 24, "val": 3} for d in ("-10", "0", "10")}
    frame = pl.concat(
        [
            pl.from_arrow(readers.read_table(out, [d]).drop_columns(["image", "mask"]))
            for d in ("-10", "0", "10")
        ]
    )
    assert frame.select("domain", "structure_id").n_unique() == frame.height == 81


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"dose_e_per_angstrom2": [30, 60]}, "dose_e_per_angstrom2 must be a single value"),
        ({"defocus_nm": []}, "dataset.defocus_nm: needs at least one value"),
        (
            {"structures": {**TINY_DATASET["structures"], "cell_angstrom": 100000}},
            "dataset.structures.cell_angstrom: Input should be less than or equal to 2000",
        ),
    ],
    ids=["dose-list", "no-defocus", "huge-cell"],
)
def test_cli_rejects_bad_spec_before_writing(tmp_path, override, message):
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(yaml.safe_dump({"dataset": {**TINY_DATASET, **override}}))
    out = tmp_path / "never"
    proc = run_cli("simulate", spec_file, "--out", out, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_unit_carries_its_parameters_so_workers_rebuild_nothing_of_the_spec(
    tmp_path, monkeypatch
):
    """Parameters go one way: the driver derives groups, conditions and hashes once
    (simulation_units); simulating a unit derives none of them again from the spec."""
    from hrtem_ray.spec.dataset import DatasetSpec

    spec = tiny_dataset_spec(n_structures={"train": 1, "val": 1}, structures_per_shard=1)
    units = pipeline.simulation_units(spec, manifest.plan_shards(spec))
    assert [u.domains for u in units] == [("-10", "0", "10")] * 2
    assert [s.condition for s in units[0].shards] == list(spec.groups()[0].conditions)
    calls = []
    for name in ("groups", "groups_structures", "waves_hash", "images_hash", "model_validate"):
        original = getattr(DatasetSpec, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(DatasetSpec, name, spy)
    record = pipeline.simulate_and_write(spec, str(tmp_path), units[0])
    assert calls == []
    assert record["images"] == 3 and record["key"] == units[0].waves_key
    for shard in units[0].shards:
        assert (tmp_path / manifest.MANIFEST_DIR / f"{shard.task.key}.json").is_file()
