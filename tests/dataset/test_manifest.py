"""The manifest of a dataset root: what an entry records, which entries are read, verification."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import tiny_dataset_spec

from hrtem_ray.dataset import manifest, pipeline, readers


def _all_images(root) -> dict:
    """``{(domain, split): ImageSet}`` of the tiny dataset."""
    return {
        (domain, split): readers.read_images(root, domain, split)
        for domain in ("-10", "0", "10")
        for split in ("train", "val")
    }


def test_manifest_records_the_images_hash_and_each_files_rows_and_sha256(tiny_dataset_root):
    spec = tiny_dataset_spec()
    entries = manifest.manifest_entries(tiny_dataset_root)
    assert set(entries) == {t.key for t in manifest.plan_shards(spec)}
    hashes = {c.domain: spec.images_hash("all", c) for c in spec.groups()[0].conditions}
    for entry in entries.values():
        domain = entry["task"]["domain"]
        assert entry["images_hash"] == hashes[domain]
        assert set(entry["files"]) == {domain}
        for info in entry["files"].values():
            payload = (tiny_dataset_root / info["path"]).read_bytes()
            assert info["bytes"] == len(payload)
            assert info["sha256"] == hashlib.sha256(payload).hexdigest()
            rows = pq.read_metadata(tiny_dataset_root / info["path"]).num_rows
            assert info["rows"] == rows == entry["task"]["stop"] - entry["task"]["start"]
    assert manifest.verify_shards(tiny_dataset_root) == []


def test_foreign_unreadable_and_incomplete_manifests_are_ignored_and_named(
    dataset_copy, mosaic, tmp_path
):
    """Entries no plan or imported domain lists are ignored by their key, unread; entries an
    imported domain's record lists are read and checked (fields, paths inside the root, the
    tile grid): a bad one is ignored, named with its reason, and drops its whole domain."""
    from hrtem_ray.dataset.micrographs import import_micrographs

    root = dataset_copy
    manifest_dir = root / manifest.MANIFEST_DIR
    entries = manifest.manifest_entries(root)
    key = sorted(k for k in entries if entries[k]["task"]["domain"] == "0")[0]
    tag = tiny_dataset_spec().content_hash()[:8]
    entry = entries[key]
    # the same structures under other keys: another dataset's hash, or no plan at all
    strays = {
        "deadbeef-0-train-00000-00003": {**entry, "images_hash": "deadbeef00000000"},
        f"{tag}-other-train-90000-90003": entry,
        f"{tag}-imported_old-train-00000-00001": entry,  # an import of an earlier version
        "imported-nobody-train-00000": entry,  # no claim or record names it
    }
    for name, stray in strays.items():
        (manifest_dir / f"{name}.json").write_text(json.dumps(stray))
    # an imported domain of 5 files, whose entries are then damaged in 5 ways
    image, _ = mosaic
    files = []
    for k in range(5):
        files.append(tmp_path / f"m{k}.npy")
        np.save(files[-1], np.roll(image, 4 * k, axis=0))
    import_micrographs(files, root, "exp", pixel_size_angstrom=0.4)
    imported = sorted(manifest_dir.glob("imported-exp-*.json"))
    damaged = [json.loads(p.read_text()) for p in imported]
    imported[0].write_text("{not json")
    damaged[1]["files"] = {"exp": {"path": "x.parquet"}}
    damaged[2]["files"]["exp"]["path"] = "../../outside.parquet"
    del damaged[3]["tile_grid"]
    damaged[4]["files"]["exp"]["sha256"] = "0" * 64
    for path, value in zip(imported[1:], damaged[1:], strict=True):
        path.write_text(json.dumps(value))
    names = [*strays, *(p.stem for p in imported)]
    with pytest.warns(manifest.DatasetWarning) as record:
        selection = readers.read_images(root, "0", "train")
    assert selection.structure_ids == [f"train-{i:05d}" for i in range(6)]
    message = str(record[0].message)
    assert f"ignoring {len(names)} manifest entries" in message
    for name in names:
        assert str(manifest_dir / f"{name}.json") in message, name
    assert "not of the current dataset" in message and "unreadable" in message
    assert "earlier hrtem-ray, without a domain record" in message
    assert "shard of no imported domain" in message
    assert "missing or invalid file fields" in message and "outside the dataset root" in message
    assert "manifest entry without tile_grid" in message
    assert "sha256 '0000" in message and "domain record of imported domain 'exp'" in message
    with pytest.warns(manifest.DatasetWarning):
        assert manifest.completed_shards(root) == set(entries)  # no shard of exp: all dropped
    with pytest.warns(manifest.DatasetWarning):
        assert len(readers.shard_files(root)) == len(entries)
    problems = manifest.verify_shards(root)
    assert sorted(p.key for p in problems) == sorted(names)
    assert all(p.path == str(manifest_dir / f"{p.key}.json") for p in problems)
    assert {p.kind for p in problems} == {"manifest"}
    assert {p.key for p in problems if p.domain == "exp"} == {p.stem for p in imported}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _scramble(path: Path) -> None:
    payload = bytearray(path.read_bytes())
    middle = len(payload) // 2
    payload[middle : middle + 64] = bytes(255 - b for b in payload[middle : middle + 64])
    path.write_bytes(bytes(payload))


@pytest.mark.parametrize(
    ("damage", "problem", "runner"),
    [
        (_truncate, r"\d+ bytes, the manifest records \d+", "serial"),
        (_scramble, r"sha256 differs from the manifest", "serial"),
        (Path.unlink, r"missing", "ray"),
    ],
    ids=["truncated", "scrambled", "missing-ray"],
)
def test_damaged_shard_is_reported_refused_and_re_simulated_bit_identical(
    damage, problem, runner, tiny_dataset_root, dataset_copy, request
):
    root = dataset_copy
    original = _all_images(tiny_dataset_root)
    entries = manifest.manifest_entries(root)
    key = sorted(k for k in entries if entries[k]["task"]["domain"] == "0")[1]
    target = root / entries[key]["files"]["0"]["path"]
    intact = target.read_bytes()
    damage(target)

    problems = manifest.verify_shards(root)
    assert [(p.key, p.path, p.kind) for p in problems] == [(key, str(target), "file")]
    assert re.fullmatch(problem, problems[0].problem), problems[0].problem
    if damage is not _scramble:  # a scrambled page may still decode: only the sha256 tells
        with pytest.raises(manifest.DatasetError, match=f"shard file {target} .*rerun"):
            readers.read_table(root, ["0"])

    spec = tiny_dataset_spec()
    with pytest.warns(manifest.DatasetWarning, match=rf"shard {key}: {target}: .*re-simulating"):
        if runner == "ray":
            request.getfixturevalue("ray_cluster")
            summary = pipeline.simulate_dataset(spec, root)
        else:
            summary = pipeline.simulate_dataset_serial(spec, root)
    assert summary.shards_written == 1 and summary.images == 3  # one domain, 3 structures
    assert (summary.structures_from_store, summary.structures_simulated) == (3, 0)
    assert manifest.verify_shards(root) == []
    assert target.read_bytes() == intact  # seeded: the same bytes again
    for selection_key, healed in _all_images(root).items():
        np.testing.assert_array_equal(healed.images, original[selection_key].images)
        np.testing.assert_array_equal(healed.masks, original[selection_key].masks)
        assert healed.structure_ids == original[selection_key].structure_ids
