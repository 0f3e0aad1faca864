"""Dataset pipeline: Ray Data simulation into Parquet shards, reading without Ray, crash safety."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import TINY_DATASET, kill_cli_when, make_bucket, run_cli, s3_env, tiny_dataset_spec

from hrtem_ray.dataset import shards
from hrtem_ray.spec.base import SpecError
from hrtem_ray.spec.config import load_dataset_spec
from hrtem_ray.store import storage

TESTS = Path(__file__).resolve().parents[1]


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def _copy(root: Path, tmp_path: Path) -> Path:
    """A private copy of a dataset root (tests that damage or extend it)."""
    return Path(shutil.copytree(root, tmp_path / "copy"))


def _all_images(root) -> dict:
    """``{(domain, split): ImageSet}`` of the tiny dataset."""
    return {
        (domain, split): shards.read_images(root, domain, split)
        for domain in ("-10", "0", "10")
        for split in ("train", "val")
    }


def test_ray_data_pipeline_matches_the_serial_loop(ray_cluster, tiny_dataset_root, tmp_path):
    spec = tiny_dataset_spec()
    summary = shards.simulate_dataset(spec, tmp_path / "ray")
    assert summary.shards == summary.shards_written == len(shards.plan_shards(spec))
    assert summary.images == 3 * (6 + 3)
    for domain in spec.domains:
        for split in ("train", "val"):
            a = shards.read_images(tmp_path / "ray", domain, split)
            b = shards.read_images(tiny_dataset_root, domain, split)
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
    selection = shards.read_images(tiny_dataset_root, "0", "train", n=4)
    assert selection.structure_ids == [f"train-{i:05d}" for i in range(4)]
    assert selection.masks.min() >= 0 and selection.masks.max() <= 1 and selection.masks.max() > 0.5
    # every defocus domain shows the same structures: identical masks, different images
    other = shards.read_images(tiny_dataset_root, "10", "train", n=4)
    np.testing.assert_array_equal(selection.masks, other.masks)
    assert not np.allclose(selection.images, other.images)
    with pytest.raises(shards.DatasetError, match="has 6 images, 7 requested"):
        shards.read_images(tiny_dataset_root, "0", "train", n=7)


def test_rerun_writes_nothing(tiny_dataset_root):
    before = {p: p.stat().st_mtime_ns for p in tiny_dataset_root.rglob("*") if p.is_file()}
    summary = shards.simulate_dataset_serial(tiny_dataset_spec(), tiny_dataset_root)
    assert summary.shards_written == 0 and summary.images == 0
    after = {p: p.stat().st_mtime_ns for p in tiny_dataset_root.rglob("*") if p.is_file()}
    assert after == before


def test_dataset_stored_before_the_axis_rename_is_still_current(tiny_dataset_root, tmp_path):
    """A ``dataset.json`` holding ``study`` (before ``dataset.axis``) is neither refused
    nor simulated again: the hash is unchanged and the stored spec reads as ``axis``."""
    root = tmp_path / "old"
    shutil.copytree(tiny_dataset_root, root)
    record = json.loads((root / shards.SPEC_FILE).read_text())
    record["spec"] = {("study" if k == "axis" else k): v for k, v in record["spec"].items()}
    (root / shards.SPEC_FILE).write_text(json.dumps(record))
    spec = tiny_dataset_spec()
    shards.check_dataset_root(spec, root)
    assert shards.dataset_spec(root) == spec
    assert shards.simulate_dataset_serial(spec, root).shards_written == 0
    assert "study" in json.loads((root / shards.SPEC_FILE).read_text())["spec"]
    other = tiny_dataset_spec(seed=8)
    with pytest.raises(shards.DatasetError) as info:
        shards.check_dataset_root(other, root)
    assert "dataset.seed: stored 7, spec 8" in str(info.value)
    assert "axis" not in str(info.value) and "study" not in str(info.value)


def test_other_spec_refuses_to_overwrite(tiny_dataset_root):
    before = _files(tiny_dataset_root)
    with pytest.raises(shards.DatasetError, match="another spec"):
        shards.simulate_dataset_serial(tiny_dataset_spec(seed=8), tiny_dataset_root)
    assert _files(tiny_dataset_root) == before


def test_mismatch_names_every_differing_field_without_writing(tiny_dataset_root, tmp_path):
    """Every field the exit waves depend on is named; an imaging field (the dose) is not
    a mismatch (it is imaged from the exit-wave store, see dataset/test_waves.py)."""
    other = tiny_dataset_spec(
        dose_e_per_angstrom2=300, seed=8, simulation={**TINY_DATASET["simulation"], "n_phonons": 2}
    )
    before = {p: p.stat().st_mtime_ns for p in tiny_dataset_root.rglob("*")}
    with pytest.raises(shards.DatasetError) as info:
        shards.check_dataset_root(other, tiny_dataset_root)
    lines = str(info.value).splitlines()
    assert lines[1:3] == [
        "  dataset.seed: stored 7, spec 8",
        "  dataset.simulation.n_phonons: stored 1, spec 2",
    ]
    assert len(lines) == 4, lines
    with pytest.raises(shards.DatasetError, match=r"dataset\.seed: stored 7, spec 8"):
        shards.prepare_root(other, str(tiny_dataset_root))
    assert {p: p.stat().st_mtime_ns for p in tiny_dataset_root.rglob("*")} == before
    # the spec itself, another path, and an empty directory pass without writing anything
    shards.check_dataset_root(tiny_dataset_spec(path="/elsewhere"), tiny_dataset_root)
    shards.check_dataset_root(other, tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


_RACE = """
import json, os, sys, time
sys.path.insert(0, sys.argv[3])
from helpers import tiny_dataset_spec
from hrtem_ray.dataset import shards
from hrtem_ray.store import storage
root, workdir, seeds = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[4:]]
go = os.path.join(workdir, "go")
children = []
for seed in seeds:  # forked after the imports: every racer starts within milliseconds
    pid = os.fork()
    if pid == 0:
        spec = tiny_dataset_spec(seed=seed)
        open(os.path.join(workdir, f"ready{seed}"), "w").close()
        while not os.path.exists(go):
            time.sleep(0.0002)
        try:
            shards.prepare_root(spec, root)
            outcome = "won"
        except shards.DatasetError as exc:
            outcome = "refused " + " | ".join(str(exc).splitlines())
        with open(os.path.join(workdir, f"out{seed}"), "w") as handle:
            handle.write(outcome)
        os._exit(0)
    children.append(pid)
deadline = time.time() + 60
while sum(os.path.exists(os.path.join(workdir, f"ready{s}")) for s in seeds) < len(seeds):
    assert time.time() < deadline, "racers did not start"
    time.sleep(0.01)
open(go, "w").close()
for pid in children:
    os.waitpid(pid, 0)
print(json.dumps({s: open(os.path.join(workdir, f"out{s}")).read() for s in seeds}))
"""


def test_twenty_processes_racing_for_one_directory_one_wins(tmp_path):
    root, workdir = tmp_path / "ds", tmp_path / "race"
    workdir.mkdir()
    seeds = [str(seed) for seed in range(100, 120)]
    proc = subprocess.run(
        [sys.executable, "-c", _RACE, str(root), str(workdir), str(TESTS), *seeds],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = {int(seed): out for seed, out in json.loads(proc.stdout).items()}
    assert len(outcomes) == 20
    winners = [seed for seed, out in outcomes.items() if out == "won"]
    assert len(winners) == 1, outcomes
    (winner,) = winners
    assert shards.dataset_spec(root).seed == winner
    for seed, out in outcomes.items():
        if seed != winner:
            assert out.startswith(f"refused {root} holds a dataset simulated from another spec")
            assert f"dataset.seed: stored {winner}, spec {seed}" in out, out
    assert sorted(p.name for p in root.iterdir()) == ["dataset.json"]


def test_changed_structures_per_shard_never_mixes_shards(tiny_dataset_root, tmp_path):
    """The duplicate-image bug: structures_per_shard 3 -> 2 on the same directory."""
    root = _copy(tiny_dataset_root, tmp_path)
    before = _files(root)
    two = tiny_dataset_spec(structures_per_shard=2)
    with pytest.raises(
        shards.DatasetError, match=r"dataset\.structures_per_shard: stored 3, spec 2"
    ):
        shards.simulate_dataset_serial(two, root)
    assert _files(root) == before
    # Shards of the other spec in the directory anyway (e.g. copied in by hand): never read.
    elsewhere = tmp_path / "two"
    shards.simulate_dataset_serial(
        tiny_dataset_spec(structures_per_shard=2, n_structures={"train": 2, "val": 1}), elsewhere
    )
    for path in _files(elsewhere):
        if path.name != "dataset.json":
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(elsewhere / path, root / path)
    # (one entry per domain and shard: 3 domains x 2 shards)
    with pytest.warns(shards.DatasetWarning, match=r"ignoring 6 manifest entries") as record:
        selection = shards.read_images(root, "0", "train", n=4)
    assert selection.structure_ids == [f"train-{i:05d}" for i in range(4)]
    assert all(str(root / "_manifest") in str(w.message) for w in record)
    with pytest.warns(shards.DatasetWarning):
        assert shards.summarize(root) == {d: {"train": 6, "val": 3} for d in ("-10", "0", "10")}


def test_manifest_records_the_images_hash_and_each_files_rows_and_sha256(tiny_dataset_root):
    spec = tiny_dataset_spec()
    entries = shards.manifest_entries(tiny_dataset_root)
    assert set(entries) == {t.key for t in shards.plan_shards(spec)}
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
    assert shards.verify_shards(tiny_dataset_root) == []


def test_foreign_unreadable_and_incomplete_manifests_are_ignored_and_named(
    tiny_dataset_root, tmp_path
):
    root = _copy(tiny_dataset_root, tmp_path)
    manifest = root / "_manifest"
    entries = shards.manifest_entries(root)
    key = sorted(k for k in entries if entries[k]["task"]["domain"] == "0")[0]
    # entries of other writers (e.g. imported micrographs: no simulation group) are read
    # and must record the current content hash; the rest is ignored by its key
    content = tiny_dataset_spec().content_hash()
    tag = content[:8]
    entry = {**entries[key], "dataset_hash": content}
    # the same structures under other keys: another dataset's hash, inside and in the name
    strays = {
        "deadbeef-0-train-00000-00003": {**entry, "images_hash": "deadbeef00000000"},
        f"{tag}-other-train-90000-90003": {**entry, "dataset_hash": "0" * 16},
        f"{tag}-other-train-80000-80003": {k: v for k, v in entry.items() if k != "dataset_hash"},
        f"{tag}-other-train-70000-70003": {**entry, "files": {"0": {"path": "x.parquet"}}},
        f"{tag}-other-train-60000-60003": {
            **entry,
            "task": {**entry["task"], "key": f"{tag}-other-train-60000-60003"},
            "files": {"0": {**entry["files"]["0"], "path": "../../outside.parquet"}},
        },
    }
    for name, stray in strays.items():
        stray = json.loads(json.dumps(stray))
        stray.setdefault("task", {})["key"] = name
        (manifest / f"{name}.json").write_text(json.dumps(stray))
    (manifest / f"{tag}-garbage.json").write_text("{not json")
    names = [*strays, f"{tag}-garbage"]
    with pytest.warns(shards.DatasetWarning) as record:
        selection = shards.read_images(root, "0", "train")
    assert selection.structure_ids == [f"train-{i:05d}" for i in range(6)]
    message = str(record[0].message)
    assert f"ignoring {len(names)} manifest entries" in message
    for name in names:
        assert str(manifest / f"{name}.json") in message, name
    assert "not the current" in message and "unreadable" in message
    assert "missing or invalid file fields" in message and "outside the dataset root" in message
    with pytest.warns(shards.DatasetWarning):
        assert shards.completed_shards(root) == set(entries)
    with pytest.warns(shards.DatasetWarning):
        assert len(shards.shard_files(root)) == len(entries)
    problems = shards.verify_shards(root)
    assert sorted(p.key for p in problems) == sorted(names)
    assert all(p.path == str(manifest / f"{p.key}.json") for p in problems)
    assert {p.kind for p in problems} == {"manifest"}


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
    damage, problem, runner, tiny_dataset_root, tmp_path, request
):
    root = _copy(tiny_dataset_root, tmp_path)
    original = _all_images(tiny_dataset_root)
    entries = shards.manifest_entries(root)
    key = sorted(k for k in entries if entries[k]["task"]["domain"] == "0")[1]
    target = root / entries[key]["files"]["0"]["path"]
    intact = target.read_bytes()
    damage(target)

    problems = shards.verify_shards(root)
    assert [(p.key, p.path, p.kind) for p in problems] == [(key, str(target), "file")]
    assert re.fullmatch(problem, problems[0].problem), problems[0].problem
    if damage is not _scramble:  # a scrambled page may still decode: only the sha256 tells
        with pytest.raises(shards.DatasetError, match=f"shard file {target} .*rerun"):
            shards.read_table(root, ["0"])

    spec = tiny_dataset_spec()
    with pytest.warns(shards.DatasetWarning, match=rf"shard {key}: {target}: .*re-simulating"):
        if runner == "ray":
            request.getfixturevalue("ray_cluster")
            summary = shards.simulate_dataset(spec, root)
        else:
            summary = shards.simulate_dataset_serial(spec, root)
    assert summary.shards_written == 1 and summary.images == 3  # one domain, 3 structures
    assert (summary.structures_from_store, summary.structures_simulated) == (3, 0)
    assert shards.verify_shards(root) == []
    assert target.read_bytes() == intact  # seeded: the same bytes again
    for selection_key, healed in _all_images(root).items():
        np.testing.assert_array_equal(healed.images, original[selection_key].images)
        np.testing.assert_array_equal(healed.masks, original[selection_key].masks)
        assert healed.structure_ids == original[selection_key].structure_ids


def test_a_file_is_not_a_dataset_root_and_a_too_large_worker_writes_nothing(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(shards.DatasetError, match=r"is a file, not a directory"):
        shards.check_dataset_root(tiny_dataset_spec(), a_file)
    with pytest.raises(shards.DatasetError, match=r"is a file, not a directory"):
        shards.prepare_root(tiny_dataset_spec(), str(a_file))
    huge = tiny_dataset_spec(
        structures={**TINY_DATASET["structures"], "cell_angstrom": 1600},
        simulation={**TINY_DATASET["simulation"], "sampling_angstrom": 0.1, "n_phonons": 256},
    )
    with pytest.raises(SpecError, match=r"one simulation worker needs an estimated \d+"):
        shards.simulate_dataset_serial(huge, tmp_path / "huge")
    assert not (tmp_path / "huge").exists()


def test_claim_verify_and_read_on_s3(tiny_dataset_root, moto_endpoint, monkeypatch, tmp_path):
    """The same guarantees on ``s3://`` (a loopback moto server): conditional claim,
    only the current dataset read, a damaged object found by verify_shards."""
    for key, value in s3_env(moto_endpoint, tmp_path).items():
        monkeypatch.setenv(key, value)
    root = f"s3://{make_bucket(moto_endpoint)}/ds"
    spec = tiny_dataset_spec()
    shards.prepare_root(spec, root)  # claims the empty prefix
    with pytest.raises(shards.DatasetError, match=r"dataset\.seed: stored 7, spec 8"):
        shards.prepare_root(tiny_dataset_spec(seed=8), root)
    with pytest.raises(shards.DatasetError, match=r"dataset\.seed: stored 7, spec 8"):
        shards.check_dataset_root(tiny_dataset_spec(seed=8), root)
    for path in _files(tiny_dataset_root):
        if path.name != "dataset.json":
            storage.write_bytes_atomic(
                storage.join(root, str(path)), (tiny_dataset_root / path).read_bytes()
            )
    assert shards.verify_shards(root) == []
    expected = shards.read_images(tiny_dataset_root, "10", "val")
    np.testing.assert_array_equal(shards.read_images(root, "10", "val").images, expected.images)
    entries = shards.manifest_entries(root)
    key = sorted(k for k in entries if entries[k]["task"]["domain"] == "10")[0]
    damaged = storage.join(root, entries[key]["files"]["10"]["path"])
    storage.write_bytes_atomic(damaged, storage.read_bytes(damaged)[:100])
    (problem,) = shards.verify_shards(root)
    assert (problem.key, problem.path) == (key, damaged)
    with pytest.raises(shards.DatasetError, match=f"shard file {damaged} "):
        shards.read_table(root, ["10"])


def test_readers_need_a_dataset_record(tmp_path):
    with pytest.raises(shards.DatasetError, match=r"no dataset at .* \(missing dataset\.json\)"):
        shards.read_images(tmp_path, "0", "train")
    with pytest.raises(shards.DatasetError, match=r"no dataset at"):
        shards.verify_shards(tmp_path)
    assert shards.completed_shards(tmp_path / "nothing") == set()


def test_killed_run_leaves_no_complete_looking_shard_and_rerun_completes(
    tiny_dataset_root, tmp_path
):
    spec = {**TINY_DATASET, "n_structures": {"train": 24, "val": 3}, "structures_per_shard": 1}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"dataset": spec}))
    out = tmp_path / "ds"
    args = ["simulate", spec_file, "--out", out, "--num-cpus", 2]
    kill_cli_when(args, lambda: len(shards.completed_shards(str(out))) >= 3, timeout=180)
    n_total = len(shards.plan_shards(load_dataset_spec(spec_file)))
    done = shards.completed_shards(str(out))
    assert 3 <= len(done) < n_total, (
        f"the run should be killed part-way ({len(done)} of {n_total} shards)"
    )
    # whatever the manifest lists is complete and readable
    for domain in ("-10", "0", "10"):
        shards.read_table(out, [domain])
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(shards.completed_shards(str(out))) == n_total
    counts = shards.summarize(out)
    assert counts == {d: {"train": 24, "val": 3} for d in ("-10", "0", "10")}
    frame = pl.concat(
        [
            pl.from_arrow(shards.read_table(out, [d]).drop_columns(["image", "mask"]))
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
