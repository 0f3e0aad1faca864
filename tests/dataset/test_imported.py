"""Imported domains that cannot be lost: claims, domain records, imaging changes, the wave store.

In-process checks of :mod:`hrtem_ray.dataset.imported` and the import, simulation and check
code around it, on copies of the tiny simulated dataset (0.4 Å/px, 64 px images). The same
faults injected into real ``hrtem-ray`` processes (two imports racing, SIGINT mid-import,
simulate during an import) are in ``tests/test_import_faults.py``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import TWO_MODEL_STUDY, tiny_dataset_spec

from hrtem_ray.dataset import imported, manifest, readers, waves
from hrtem_ray.dataset.claim import check_dataset_root, prepare_root
from hrtem_ray.dataset.micrograph_files import MicrographError
from hrtem_ray.dataset.micrographs import (
    check_imported_use,
    import_micrographs,
    import_progress,
    imported_domains,
)
from hrtem_ray.dataset.pipeline import simulate_dataset_serial
from hrtem_ray.spec.config import parse_study_spec
from hrtem_ray.sweep.check import inspect_study, repair

PIXEL_ANGSTROM = 0.4  # the tiny dataset's output sampling


def _micrographs(mosaic, folder: Path, n: int) -> list[Path]:
    """``n`` uncalibrated NPY micrographs (128 px, 4 tiles each), shifted copies of the mosaic."""
    image, _ = mosaic
    folder.mkdir(exist_ok=True)
    paths = []
    for k in range(n):
        paths.append(folder / f"m{k:02d}.npy")
        np.save(paths[-1], np.roll(image, 6 * k, axis=1))
    return paths


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (lock and mutex files aside)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def _study_spec(**dataset):
    """A study spec on the tiny dataset with ``dataset`` fields changed (for ``check --spec``)."""
    raw = {**TWO_MODEL_STUDY, "dataset": {**TWO_MODEL_STUDY["dataset"], **dataset}}
    return parse_study_spec(raw, source="tests")


def test_an_interrupted_import_is_refused_by_readers_and_check_and_resumed_by_the_same_call(
    mosaic, dataset_copy, tmp_path
):
    """A claim without its domain record (what an import stopped after 3 of 4 files leaves;
    the real SIGINT is in test_import_faults.py) is refused or reported everywhere; the same
    call resumes it, writing only the missing shard; once more, it writes nothing."""
    files = _micrographs(mosaic, tmp_path / "mic", 4)
    import_micrographs(files, dataset_copy, "exp", pixel_size_angstrom=PIXEL_ANGSTROM)
    record = json.loads((dataset_copy / "_imported" / "exp.json").read_text())
    assert [s["source_file"] for s in record["shards"]] == [f.name for f in files]
    assert record["tiles"] == {"train": 12, "val": 4} and record["grid"]["tile_px"] == 64
    # what an interruption after 3 of the 4 files leaves: no record, no 4th shard
    (dataset_copy / "_imported" / "exp.json").unlink()
    last = record["shards"][-1]
    (dataset_copy / last["path"]).unlink()
    (dataset_copy / "_manifest" / f"{last['key']}.json").unlink()
    assert import_progress(dataset_copy, "exp") == (3, 4)
    with pytest.raises(manifest.DatasetError, match="'exp' is incomplete: 3 of 4 files"):
        readers.read_images(dataset_copy, "exp", "train")
    with pytest.warns(manifest.DatasetWarning, match="'exp' is incomplete"):
        assert "-10" in readers.summarize(dataset_copy)  # other domains read, with a warning
        assert "exp" not in imported_domains(dataset_copy)
        with pytest.raises(MicrographError, match="domains.transfer: .*'exp' is incomplete"):
            check_imported_use(dataset_copy, ["exp"], "domains.transfer")
    report = inspect_study(str(tmp_path / "study"), data_root=str(dataset_copy))
    assert [(p.kind, p.domain) for p in report.problems] == [("shard", "exp")]
    assert "rerun the same `hrtem-ray import` command" in report.problems[0].reason
    resumed = import_micrographs(files, dataset_copy, "exp", pixel_size_angstrom=PIXEL_ANGSTROM)
    assert (resumed.status, resumed.written, resumed.tiles) == ("resumed", 1, record["tiles"])
    assert manifest.verify_shards(dataset_copy) == []
    assert readers.read_images(dataset_copy, "exp", "train").images.shape == (12, 64, 64)
    before = _snapshot(dataset_copy)
    again = import_micrographs(files, dataset_copy, "exp", pixel_size_angstrom=PIXEL_ANGSTROM)
    assert (again.status, again.written) == ("unchanged", 0)
    assert _snapshot(dataset_copy) == before


@pytest.mark.parametrize("complete", [True, False])
def test_another_import_into_a_claimed_domain_is_refused_and_changes_nothing(
    mosaic, dataset_copy, tmp_path, complete
):
    """Other files or options into a domain that holds (or began) an import: refused, naming
    the domain and what differs, before anything is written; no file of the first changes."""
    files = _micrographs(mosaic, tmp_path / "mic", 3)
    import_micrographs(files, dataset_copy, "exp", pixel_size_angstrom=PIXEL_ANGSTROM)
    if not complete:
        (dataset_copy / "_imported" / "exp.json").unlink()
    before = _snapshot(dataset_copy)
    with pytest.raises(MicrographError) as refused:
        import_micrographs(files, dataset_copy, "exp", pixel_size_angstrom=0.2)
    message = str(refused.value)
    assert "'exp'" in message and "pixel_size_angstrom: stored 0.4, this import 0.2" in message
    wanted = "already holds an imported domain" if complete else "did not finish"
    assert wanted in message
    with pytest.raises(MicrographError, match=r"files: stored 3 files: m00.npy \(.*this import 2"):
        import_micrographs(files[:2], dataset_copy, "exp", pixel_size_angstrom=PIXEL_ANGSTROM)
    assert _snapshot(dataset_copy) == before


def test_a_domain_is_claimed_by_exactly_one_of_many_concurrent_claims(tmp_path):
    """The claim is created exclusively (os.link): of 8 threads claiming one domain, one wins."""
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def claim(k: int) -> None:
        barrier.wait()
        results.append(
            imported.create_claim(str(tmp_path), {"domain": "exp", "shards": [], "k": k})
        )

    threads = [threading.Thread(target=claim, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    winner = json.loads((tmp_path / "_imported" / "exp.claim.json").read_text())
    assert winner["domain"] == "exp"


def test_adding_a_defocus_keeps_the_imported_domain_and_check_repair_leaves_it(
    mosaic, dataset_copy, tmp_path
):
    """The README's "add a defocus" after an import: the imported domain stays, unchanged and
    readable without a warning, and `check --spec NEW --repair` finds nothing to quarantine."""
    files = _micrographs(mosaic, tmp_path / "mic", 2)
    import_micrographs(files, dataset_copy, "exp", pixel_size_angstrom=PIXEL_ANGSTROM)
    tiles = readers.read_images(dataset_copy, "exp", "train").images
    folder = dataset_copy / "study=defocus" / "domain=exp"
    imported_files = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    new = tiny_dataset_spec(defocus_nm=[-10, 0, 10, 20])
    with warnings.catch_warnings():
        warnings.simplefilter("error", manifest.DatasetWarning)
        summary = simulate_dataset_serial(new, dataset_copy)
        assert summary.structures_simulated == 0 and summary.structures_from_store == 9
        assert set(readers.summarize(dataset_copy)) == {"-10", "0", "10", "20", "exp"}
        np.testing.assert_array_equal(
            readers.read_images(dataset_copy, "exp", "train").images, tiles
        )
    assert {p: p.read_bytes() for p in imported_files} == imported_files
    report = inspect_study(
        str(tmp_path / "study"), _study_spec(defocus_nm=[-10, 0, 10, 20]), str(dataset_copy)
    )
    assert (
        report.problems == [] and report.checked["shards"] == 4 * 3 + 2
    )  # 4 domains x 3 shards, 2 imported
    assert repair(report) == []
    assert imported_domains(dataset_copy)["exp"].images == {"train": 4, "val": 4}


@pytest.mark.parametrize("change", ["pixel size", "name"])
def test_an_imaging_change_that_invalidates_imported_tiles_is_refused_with_the_reason(
    mosaic, dataset_copy, tmp_path, change
):
    """Another output pixel size (other tiles), or a simulated domain of an imported domain's
    name: refused by the preflight check and by the claim, naming the domain; nothing changes."""
    domain = "exp" if change == "pixel size" else "20"
    files = _micrographs(mosaic, tmp_path / "mic", 1)
    import_micrographs(files, dataset_copy, domain, pixel_size_angstrom=PIXEL_ANGSTROM)
    if change == "pixel size":
        simulation = {**TWO_MODEL_STUDY["dataset"]["simulation"], "output_sampling_angstrom": 0.5}
        new = tiny_dataset_spec(simulation=simulation)
        match = r"'exp': its tiles are 64 px at 0.4 Å/px, this spec's images 51 px at 0.5 Å/px"
    else:
        new = tiny_dataset_spec(defocus_nm=[-10, 0, 10, 20])
        match = "'20': the spec simulates a domain of the same name"
    before = _snapshot(dataset_copy)
    with pytest.raises(manifest.DatasetError, match=match):
        check_dataset_root(new, dataset_copy)
    with pytest.raises(manifest.DatasetError, match="imported domains .* would invalidate"):
        prepare_root(new, str(dataset_copy))
    assert _snapshot(dataset_copy) == before


def _first_wave_shard(root: Path) -> Path:
    return sorted((root / "waves").glob("*.parquet"))[0]


@pytest.mark.parametrize("damage", ["garbled", "truncated"])
def test_a_damaged_wave_shard_is_found_by_check_quarantined_and_rebuilt_bit_identical(
    dataset_copy, tmp_path, damage
):
    """`check` verifies the exit-wave store like image shards; `--repair` quarantines a damaged
    wave shard (file and entry) and the next simulation runs its multislice again, although
    every image shard is there: the rebuilt shard is bit-identical (3 structures' multislice,
    under 1 s). A truncated shard is rebuilt by the simulation without `check` too (its
    size differs from its entry)."""
    shard = _first_wave_shard(dataset_copy)
    intact = shard.read_bytes()
    if damage == "garbled":
        middle = len(intact) // 2
        shard.write_bytes(
            intact[:middle]
            + bytes(b ^ 0xFF for b in intact[middle : middle + 64])
            + intact[middle + 64 :]
        )
        reason = "sha256 differs from the manifest"
    else:
        shard.write_bytes(intact[: len(intact) // 3])
        reason = f"{len(intact) // 3} bytes, the manifest records {len(intact)}"
    assert [(w.path, w.problem) for w in waves.verify_waves(str(dataset_copy))] == [
        (str(shard), reason)
    ]
    report = inspect_study(str(tmp_path / "study"), data_root=str(dataset_copy))
    assert [(p.kind, p.path, p.reason) for p in report.problems] == [("wave", str(shard), reason)]
    assert report.checked["wave shards"] == 3
    if damage == "truncated":
        with pytest.warns(waves.WaveStoreWarning, match=f"{shard}: missing, or its size differs"):
            summary = simulate_dataset_serial(tiny_dataset_spec(), dataset_copy)
        assert (summary.shards_written, summary.structures_simulated) == (0, 3)
        assert shard.read_bytes() == intact
        return
    actions = repair(report)
    assert any("runs the multislice of" in line for line in actions)
    quarantined = dataset_copy / "quarantine"  # a dataset outside the study root: its own
    assert (quarantined / "waves" / shard.name).is_file() and not shard.exists()
    assert not (dataset_copy / "waves" / "_manifest" / f"{shard.stem}.json").exists()
    assert inspect_study(str(tmp_path / "study"), data_root=str(dataset_copy)).problems == []
    summary = simulate_dataset_serial(tiny_dataset_spec(), dataset_copy)
    assert (summary.shards_written, summary.structures_simulated) == (0, 3)
    assert shard.read_bytes() == intact
    assert waves.verify_waves(str(dataset_copy)) == []
