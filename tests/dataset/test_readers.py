"""Reading a dataset without Ray: Parquet round trip, selections, a missing record."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow.dataset as pads
import pytest

from hrtem_ray.dataset import manifest, readers


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
    selection = readers.read_images(tiny_dataset_root, "0", "train", n=4)
    assert selection.structure_ids == [f"train-{i:05d}" for i in range(4)]
    assert selection.masks.min() >= 0 and selection.masks.max() <= 1 and selection.masks.max() > 0.5
    # every defocus domain shows the same structures: identical masks, different images
    other = readers.read_images(tiny_dataset_root, "10", "train", n=4)
    np.testing.assert_array_equal(selection.masks, other.masks)
    assert not np.allclose(selection.images, other.images)
    with pytest.raises(manifest.DatasetError, match="has 6 images, 7 requested"):
        readers.read_images(tiny_dataset_root, "0", "train", n=7)


def test_readers_need_a_dataset_record(tmp_path):
    with pytest.raises(manifest.DatasetError, match=r"no dataset at .* \(missing dataset\.json\)"):
        readers.read_images(tmp_path, "0", "train")
    with pytest.raises(manifest.DatasetError, match=r"no dataset at"):
        manifest.verify_shards(tmp_path)
    assert manifest.completed_shards(tmp_path / "nothing") == set()


def test_drawn_images_are_seeded_nested_and_spread(tiny_dataset_root):
    """``draw_seed``: n of the split drawn with the seed, nested across n, reproducible,
    in structure-id order; without it, the first n."""
    by_seed = {
        seed: [readers.read_images(tiny_dataset_root, "0", "train", n, seed) for n in (2, 4)]
        for seed in range(6)
    }
    for small, large in by_seed.values():
        assert len(small.structure_ids) == 2 and len(large.structure_ids) == 4
        assert set(small.structure_ids) <= set(large.structure_ids)
        assert large.structure_ids == sorted(large.structure_ids)
    again = readers.read_images(tiny_dataset_root, "0", "train", 4, draw_seed=0)
    assert again.structure_ids == by_seed[0][1].structure_ids
    draws = {tuple(large.structure_ids) for _, large in by_seed.values()}
    assert len(draws) > 1  # 6 seeds, 15 possible draws of 4 of 6: not all the same
    first = readers.read_images(tiny_dataset_root, "0", "train", 2)
    assert first.structure_ids == ["train-00000", "train-00001"]
    every = readers.read_images(tiny_dataset_root, "0", "train", None, draw_seed=3)
    assert len(every.structure_ids) == 6
    with pytest.raises(manifest.DatasetError, match="has 6 images, 7 requested"):
        readers.read_images(tiny_dataset_root, "0", "train", 7, draw_seed=0)
    with pytest.raises(ValueError, match="n must be between 0 and 6"):
        readers.drawn_rows(6, 7, seed=0)
