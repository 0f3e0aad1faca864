"""Dataset pipeline: Ray Data simulation into Parquet shards, reading without Ray, crash safety."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow.dataset as pads
import pytest
import yaml
from conftest import TINY_DATASET, kill_cli_when, run_cli, tiny_dataset_spec

from hrtem_ray import data
from hrtem_ray.config import SpecError, load_dataset_spec, parse_dataset_spec


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_ray_data_pipeline_matches_the_serial_loop(ray_cluster, tiny_dataset_root, tmp_path):
    spec = tiny_dataset_spec()
    summary = data.simulate_dataset(spec, tmp_path / "ray")
    assert summary.shards == summary.shards_written == len(data.plan_shards(spec))
    assert summary.images == 3 * (6 + 3)
    for domain in spec.domains:
        for split in ("train", "val"):
            a = data.read_images(tmp_path / "ray", domain, split)
            b = data.read_images(tiny_dataset_root, domain, split)
            assert a.structure_ids == b.structure_ids
            np.testing.assert_array_equal(a.images, b.images)
            np.testing.assert_array_equal(a.masks, b.masks)


def test_parquet_round_trip_without_ray(tiny_dataset_root):
    table = pads.dataset(
        tiny_dataset_root / "study=defocus", format="parquet", partitioning=None
    ).to_table()
    assert table.num_rows == 27
    assert str(table.schema.field("image").type).startswith("extension<arrow.fixed_shape_tensor")
    images = table.column("image").combine_chunks().to_numpy_ndarray()
    assert images.shape == (27, 64, 64) and images.dtype == np.float32
    frame = pl.read_parquet(
        str(tiny_dataset_root / "study=defocus" / "**" / "*.parquet"), hive_partitioning=False
    )
    assert set(frame["domain"]) == {"-10", "0", "10"}
    assert frame.filter(pl.col("split") == "val").height == 9
    # the jittered defocus scatters around the nominal value (sigma 1.5 nm)
    offsets = (frame["defocus_nm"] - frame["nominal_defocus_nm"]).to_numpy()
    assert 0.3 < offsets.std() < 3.0
    selection = data.read_images(tiny_dataset_root, "0", "train", n=4)
    assert selection.structure_ids == [f"train-{i:05d}" for i in range(4)]
    assert selection.masks.min() >= 0 and selection.masks.max() <= 1 and selection.masks.max() > 0.5
    # every defocus domain shows the same structures: identical masks, different images
    other = data.read_images(tiny_dataset_root, "10", "train", n=4)
    np.testing.assert_array_equal(selection.masks, other.masks)
    assert not np.allclose(selection.images, other.images)
    with pytest.raises(data.DatasetError, match="has 6 images, 7 requested"):
        data.read_images(tiny_dataset_root, "0", "train", n=7)


def test_rerun_writes_nothing(tiny_dataset_root):
    before = {p: p.stat().st_mtime_ns for p in tiny_dataset_root.rglob("*") if p.is_file()}
    summary = data.simulate_dataset_serial(tiny_dataset_spec(), tiny_dataset_root)
    assert summary.shards_written == 0 and summary.images == 0
    after = {p: p.stat().st_mtime_ns for p in tiny_dataset_root.rglob("*") if p.is_file()}
    assert after == before


def test_other_spec_refuses_to_overwrite(tiny_dataset_root):
    before = _files(tiny_dataset_root)
    with pytest.raises(data.DatasetError, match="another spec"):
        data.simulate_dataset_serial(tiny_dataset_spec(seed=8), tiny_dataset_root)
    assert _files(tiny_dataset_root) == before


def test_killed_run_leaves_no_complete_looking_shard_and_rerun_completes(
    tiny_dataset_root, tmp_path
):
    spec = {**TINY_DATASET, "n_structures": {"train": 24, "val": 3}, "structures_per_shard": 1}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"dataset": spec}))
    out = tmp_path / "ds"
    args = ["simulate", spec_file, "--out", out, "--num-cpus", 2]
    kill_cli_when(args, lambda: len(data.completed_shards(str(out))) >= 3, timeout=180)
    n_total = len(data.plan_shards(load_dataset_spec(spec_file)))
    done = data.completed_shards(str(out))
    assert 3 <= len(done) < n_total, (
        f"the run should be killed part-way ({len(done)} of {n_total} shards)"
    )
    # whatever the manifest lists is complete and readable
    for domain in ("-10", "0", "10"):
        data.read_table(out, [domain])
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(data.completed_shards(str(out))) == n_total
    counts = data.summarize(out)
    assert counts == {d: {"train": 24, "val": 3} for d in ("-10", "0", "10")}
    frame = pl.concat(
        [
            pl.from_arrow(data.read_table(out, [d]).drop_columns(["image", "mask"]))
            for d in ("-10", "0", "10")
        ]
    )
    assert frame.select("domain", "structure_id").n_unique() == frame.height == 81


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"study": "angle"}, r"dataset\.study: Input should be 'defocus', 'dose' or 'structure'"),
        ({"defocus_nm": -10}, r"study 'defocus' needs defocus_nm as a list"),
        ({"structures": {"lattices": ["Au"]}}, r"dataset\.structures\.lattices.*Au.*allowed"),
        ({"n_structures": {"train": 0, "val": 2}}, r"dataset\.n_structures\.train"),
        ({"simulation": {"n_phonons": 0}}, r"dataset\.simulation\.n_phonons"),
        ({"shards": 3}, r"dataset\.shards: Extra inputs are not permitted"),
    ],
)
def test_invalid_dataset_specs_name_the_field(override, message):
    with pytest.raises(SpecError, match=message):
        parse_dataset_spec({**TINY_DATASET, **override}, source="test")


def test_cli_rejects_bad_spec_before_writing(tmp_path):
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(
        yaml.safe_dump({"dataset": {**TINY_DATASET, "dose_e_per_angstrom2": [30, 60]}})
    )
    out = tmp_path / "never"
    proc = run_cli("simulate", spec_file, "--out", out, timeout=120)
    assert proc.returncode == 2
    assert "dose_e_per_angstrom2 must be a single value" in proc.stderr
    assert not out.exists()
