"""Claiming a dataset root: one dataset per directory, the differing fields named, S3 too."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_DATASET, make_bucket, s3_env, tiny_dataset_spec

from hrtem_ray.dataset import claim, manifest, pipeline, readers
from hrtem_ray.store import storage

TESTS = Path(__file__).resolve().parents[1]


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_dataset_stored_before_the_axis_rename_is_still_current(tiny_dataset_root, tmp_path):
    """A ``dataset.json`` holding ``study`` (before ``dataset.axis``) is neither refused
    nor simulated again: the hash is unchanged and the stored spec reads as ``axis``."""
    root = tmp_path / "old"
    shutil.copytree(tiny_dataset_root, root)
    record = json.loads((root / manifest.SPEC_FILE).read_text())
    record["spec"] = {("study" if k == "axis" else k): v for k, v in record["spec"].items()}
    (root / manifest.SPEC_FILE).write_text(json.dumps(record))
    spec = tiny_dataset_spec()
    claim.check_dataset_root(spec, root)
    assert manifest.dataset_spec(root) == spec
    assert pipeline.simulate_dataset_serial(spec, root).shards_written == 0
    assert "study" in json.loads((root / manifest.SPEC_FILE).read_text())["spec"]
    other = tiny_dataset_spec(seed=8)
    with pytest.raises(manifest.DatasetError) as info:
        claim.check_dataset_root(other, root)
    assert "dataset.seed: stored 7, spec 8" in str(info.value)
    assert "axis" not in str(info.value) and "study" not in str(info.value)


def test_other_spec_refuses_to_overwrite(tiny_dataset_root):
    before = _files(tiny_dataset_root)
    with pytest.raises(manifest.DatasetError, match="another spec"):
        pipeline.simulate_dataset_serial(tiny_dataset_spec(seed=8), tiny_dataset_root)
    assert _files(tiny_dataset_root) == before


def test_mismatch_names_every_differing_field_without_writing(tiny_dataset_root, tmp_path):
    """Every field the exit waves depend on is named; an imaging field (the dose) is not
    a mismatch (it is imaged from the exit-wave store, see dataset/test_waves.py)."""
    other = tiny_dataset_spec(
        dose_e_per_angstrom2=300, seed=8, simulation={**TINY_DATASET["simulation"], "n_phonons": 2}
    )
    before = {p: p.stat().st_mtime_ns for p in tiny_dataset_root.rglob("*")}
    with pytest.raises(manifest.DatasetError) as info:
        claim.check_dataset_root(other, tiny_dataset_root)
    lines = str(info.value).splitlines()
    assert lines[1:3] == [
        "  dataset.seed: stored 7, spec 8",
        "  dataset.simulation.n_phonons: stored 1, spec 2",
    ]
    assert len(lines) == 4, lines
    with pytest.raises(manifest.DatasetError, match=r"dataset\.seed: stored 7, spec 8"):
        claim.prepare_root(other, str(tiny_dataset_root))
    assert {p: p.stat().st_mtime_ns for p in tiny_dataset_root.rglob("*")} == before
    # the spec itself, another path, and an empty directory pass without writing anything
    claim.check_dataset_root(tiny_dataset_spec(path="/elsewhere"), tiny_dataset_root)
    claim.check_dataset_root(other, tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


_RACE = """
import json, os, sys, time
sys.path.insert(0, sys.argv[3])
from helpers import tiny_dataset_spec
from hrtem_ray.dataset import claim, manifest
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
            claim.prepare_root(spec, root)
            outcome = "won"
        except manifest.DatasetError as exc:
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
    assert manifest.dataset_spec(root).seed == winner
    for seed, out in outcomes.items():
        if seed != winner:
            assert out.startswith(f"refused {root} holds a dataset simulated from another spec")
            assert f"dataset.seed: stored {winner}, spec {seed}" in out, out
    assert sorted(p.name for p in root.iterdir()) == ["dataset.json"]


def test_changed_structures_per_shard_never_mixes_shards(dataset_copy, tmp_path):
    """The duplicate-image bug: structures_per_shard 3 -> 2 on the same directory."""
    root = dataset_copy
    before = _files(root)
    two = tiny_dataset_spec(structures_per_shard=2)
    with pytest.raises(
        manifest.DatasetError, match=r"dataset\.structures_per_shard: stored 3, spec 2"
    ):
        pipeline.simulate_dataset_serial(two, root)
    assert _files(root) == before
    # Shards of the other spec in the directory anyway (e.g. copied in by hand): never read.
    elsewhere = tmp_path / "two"
    pipeline.simulate_dataset_serial(
        tiny_dataset_spec(structures_per_shard=2, n_structures={"train": 2, "val": 1}), elsewhere
    )
    for path in _files(elsewhere):
        if path.name != "dataset.json":
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(elsewhere / path, root / path)
    # (one entry per domain and shard: 3 domains x 2 shards)
    with pytest.warns(manifest.DatasetWarning, match=r"ignoring 6 manifest entries") as record:
        selection = readers.read_images(root, "0", "train", n=4)
    assert selection.structure_ids == [f"train-{i:05d}" for i in range(4)]
    assert all(str(root / "_manifest") in str(w.message) for w in record)
    with pytest.warns(manifest.DatasetWarning):
        assert readers.summarize(root) == {d: {"train": 6, "val": 3} for d in ("-10", "0", "10")}


def test_a_file_is_not_a_dataset_root(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(manifest.DatasetError, match=r"is a file, not a directory"):
        claim.check_dataset_root(tiny_dataset_spec(), a_file)
    with pytest.raises(manifest.DatasetError, match=r"is a file, not a directory"):
        claim.prepare_root(tiny_dataset_spec(), str(a_file))


def test_claim_verify_and_read_on_s3(tiny_dataset_root, moto_endpoint, monkeypatch, tmp_path):
    """The same guarantees on ``s3://`` (a loopback moto server): conditional claim,
    only the current dataset read, a damaged object found by verify_shards."""
    for key, value in s3_env(moto_endpoint, tmp_path).items():
        monkeypatch.setenv(key, value)
    root = f"s3://{make_bucket(moto_endpoint)}/ds"
    spec = tiny_dataset_spec()
    claim.prepare_root(spec, root)  # claims the empty prefix
    with pytest.raises(manifest.DatasetError, match=r"dataset\.seed: stored 7, spec 8"):
        claim.prepare_root(tiny_dataset_spec(seed=8), root)
    with pytest.raises(manifest.DatasetError, match=r"dataset\.seed: stored 7, spec 8"):
        claim.check_dataset_root(tiny_dataset_spec(seed=8), root)
    for path in _files(tiny_dataset_root):
        if path.name != "dataset.json":
            storage.write_bytes_atomic(
                storage.join(root, str(path)), (tiny_dataset_root / path).read_bytes()
            )
    assert manifest.verify_shards(root) == []
    expected = readers.read_images(tiny_dataset_root, "10", "val")
    np.testing.assert_array_equal(readers.read_images(root, "10", "val").images, expected.images)
    entries = manifest.manifest_entries(root)
    key = sorted(k for k in entries if entries[k]["task"]["domain"] == "10")[0]
    damaged = storage.join(root, entries[key]["files"]["10"]["path"])
    storage.write_bytes_atomic(damaged, storage.read_bytes(damaged)[:100])
    (problem,) = manifest.verify_shards(root)
    assert (problem.key, problem.path) == (key, damaged)
    with pytest.raises(manifest.DatasetError, match=f"shard file {damaged} "):
        readers.read_table(root, ["10"])
