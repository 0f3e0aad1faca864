"""The exit-wave store: new imaging domains without multislice, bit-identical, crash-safe."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import CLI, TINY_DATASET, kill_cli_when, tiny_dataset_spec

from hrtem_ray.dataset import claim, manifest, pipeline, readers, waves
from hrtem_ray.physics import simulate
from hrtem_ray.spec.config import parse_dataset_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def multislice_calls(monkeypatch):
    """Counts every call of the real multislice (:func:`hrtem_ray.physics.simulate.exit_waves`).

    Every multislice of the package goes through this one function (the full
    structure and the particles alone each call it once per structure); the
    counter wraps the real function, which still runs.
    """
    calls = []
    real = simulate.exit_waves

    def counted(*args, **kwargs):
        calls.append(args[2] if len(args) > 2 else kwargs.get("seed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(simulate, "exit_waves", counted)
    return calls


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shard_files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _sha(p) for p in root.glob("study=*/**/*.parquet")}


def _wave_entries(root: Path) -> list[Path]:
    return sorted((root / waves.WAVES_DIR / waves.MANIFEST_DIR).glob("*.json"))


N_STRUCTURES = 6 + 3  # the tiny dataset: train + val


def test_adding_a_domain_runs_no_multislice_and_is_bit_identical(
    multislice_calls, tmp_path, caplog
):
    base = tiny_dataset_spec()
    root = tmp_path / "study"
    first = pipeline.simulate_dataset_serial(base, root)
    # the counter sees the real multislice: two passes (full, particles) per structure
    assert len(multislice_calls) == 2 * N_STRUCTURES
    assert (first.structures_simulated, first.structures_from_store) == (N_STRUCTURES, 0)
    before = _shard_files(root)

    wider = tiny_dataset_spec(defocus_nm=[-10, 0, 10, 20])
    multislice_calls.clear()
    with caplog.at_level("INFO", logger="hrtem_ray.dataset"):
        added = pipeline.simulate_dataset_serial(wider, root)
    assert multislice_calls == []
    assert f"{N_STRUCTURES} structures from the exit-wave store, 0 simulated" in caplog.text
    assert (added.structures_simulated, added.structures_from_store) == (0, N_STRUCTURES)
    assert added.shards_written == len(manifest.plan_shards(wider)) - len(
        manifest.plan_shards(base)
    )
    after = _shard_files(root)
    assert {k: after[k] for k in before} == before  # existing shards untouched
    assert readers.summarize(root)["20"] == {"train": 6, "val": 3}

    # one pass, no store, every domain at once: the same images bit for bit
    one_pass = tmp_path / "one-pass"
    pipeline.simulate_dataset_serial(wider.model_copy(update={"keep_exit_waves": False}), one_pass)
    assert not (one_pass / waves.WAVES_DIR).exists()
    for domain in wider.domains:
        for split in ("train", "val"):
            a = readers.read_images(root, domain, split)
            b = readers.read_images(one_pass, domain, split)
            assert a.structure_ids == b.structure_ids
            np.testing.assert_array_equal(a.images, b.images)
            np.testing.assert_array_equal(a.masks, b.masks)
            np.testing.assert_array_equal(a.defocus_nm, b.defocus_nm)


def test_adding_a_test_split_simulates_only_the_new_structures(multislice_calls, tmp_path):
    """Held-out structures added to a dataset: train and val shards and waves stay as they
    are, only the new structures run multislice, and a spec without a test split keeps the
    identity of a dataset written before test splits existed."""
    base = tiny_dataset_spec()
    counts = dict(TINY_DATASET["n_structures"])
    assert "test" not in base.model_dump(mode="json")["n_structures"]
    same = tiny_dataset_spec(n_structures={**counts, "test": 0})
    assert same.content_hash() == base.content_hash()
    root = tmp_path / "study"
    pipeline.simulate_dataset_serial(base, root)
    before = _shard_files(root)
    waves_before = {p.name: _sha(p) for p in _wave_entries(root)}

    held_out = tiny_dataset_spec(n_structures={**counts, "test": 2})
    assert held_out.waves_hash(held_out.groups()[0].name) == base.waves_hash(base.groups()[0].name)
    multislice_calls.clear()
    pipeline.simulate_dataset_serial(held_out, root)
    assert len(multislice_calls) == 2 * 2  # two passes per new structure, nothing else
    after = _shard_files(root)
    assert {k: after[k] for k in before} == before
    assert {p.name: _sha(p) for p in _wave_entries(root) if p.name in waves_before} == waves_before
    for domain in held_out.domains:
        assert readers.summarize(root)[domain] == {**counts, "test": 2}
        test = readers.read_images(root, domain, "test")
        val = readers.read_images(root, domain, "val")
        assert set(test.structure_ids).isdisjoint(val.structure_ids)
        assert not np.array_equal(test.images, val.images[:2])


def test_changing_a_multislice_field_refuses_the_store_naming_it(tiny_dataset_root, tmp_path):
    root = Path(shutil.copytree(tiny_dataset_root, tmp_path / "copy"))
    simulation = {**TINY_DATASET["simulation"], "n_phonons": 2}
    spec = tiny_dataset_spec(simulation=simulation)
    with pytest.raises(
        manifest.DatasetError, match=r"dataset\.simulation\.n_phonons: stored 1, spec 2"
    ):
        claim.check_dataset_root(spec, root)
    with pytest.raises(manifest.DatasetError, match="exit-wave store cannot be reused"):
        pipeline.simulate_dataset_serial(spec, root)
    # an imaging field (the output sampling, coarser: within the stored band) is accepted
    coarser = {**TINY_DATASET["simulation"], "output_sampling_angstrom": 0.8}
    claim.check_dataset_root(tiny_dataset_spec(simulation=coarser), root)


def test_coarser_output_sampling_is_cropped_from_the_store(multislice_calls, tmp_path):
    root = tmp_path / "study"
    pipeline.simulate_dataset_serial(tiny_dataset_spec(), root)
    coarser = tiny_dataset_spec(
        simulation={**TINY_DATASET["simulation"], "output_sampling_angstrom": 0.8}
    )
    multislice_calls.clear()
    summary = pipeline.simulate_dataset_serial(coarser, root)
    assert multislice_calls == [] and summary.structures_from_store == N_STRUCTURES
    direct = tmp_path / "direct"
    pipeline.simulate_dataset_serial(coarser.model_copy(update={"keep_exit_waves": False}), direct)
    a, b = readers.read_images(root, "0", "val"), readers.read_images(direct, "0", "val")
    assert a.images.shape[-1] == 32
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_torn_wave_shard_is_not_read_and_is_simulated_again(multislice_calls, tmp_path):
    spec = tiny_dataset_spec()
    root = tmp_path / "study"
    pipeline.simulate_dataset_serial(spec, root)
    entry = _wave_entries(root)[0]
    parquet = root / waves.WAVES_DIR / f"{entry.stem}.parquet"
    # a write killed between the file and its manifest entry: a file, no entry
    entry.unlink()
    parquet.write_bytes(parquet.read_bytes()[:100])
    unit = next(
        u
        for u in pipeline.simulation_units(spec, manifest.plan_shards(spec))
        if u.waves_key == entry.stem
    )
    indices = list(range(unit.start, unit.stop))
    assert waves.read_waves(str(root), entry.stem, spec.waves_hash("all"), indices) is None
    wider = tiny_dataset_spec(defocus_nm=[-10, 0, 10, 20])
    multislice_calls.clear()
    summary = pipeline.simulate_dataset_serial(wider, root)
    assert len(multislice_calls) == 2 * len(indices)
    assert summary.structures_simulated == len(indices)
    assert entry.exists()
    stored = waves.read_waves(str(root), entry.stem, spec.waves_hash("all"), indices)
    assert stored is not None and [s.index for s in stored] == indices


@pytest.mark.slow
def test_killed_store_write_leaves_nothing_complete_looking_and_rerun_completes(tmp_path):
    spec = {**TINY_DATASET, "n_structures": {"train": 24, "val": 3}, "structures_per_shard": 1}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"dataset": spec}))
    out = tmp_path / "ds"
    args = ["simulate", spec_file, "--out", out, "--num-cpus", 2]
    kill_cli_when(args, lambda: len(_wave_entries(out)) >= 3, timeout=180)
    parsed = parse_dataset_spec(spec)
    n_units = 24 + 3
    entries = _wave_entries(out)
    assert 3 <= len(entries) < n_units, f"killed part-way: {len(entries)} of {n_units}"
    # every entry the store lists is complete: its file matches the recorded sha256
    for entry in entries:
        index = int(entry.stem.rsplit("-", 2)[1])
        split = entry.stem.split("-")[2]
        stored = waves.read_waves(str(out), entry.stem, parsed.waves_hash("all"), [index])
        assert stored is not None, entry
        assert split in ("train", "val")
    rerun = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(_wave_entries(out)) == n_units
    # the rerun completed the store: a new domain comes entirely from it
    wider = parsed.model_copy(update={"defocus_nm": [-10.0, 0.0, 10.0, 20.0]})
    summary = pipeline.simulate_dataset_serial(wider, out)
    assert (summary.structures_from_store, summary.structures_simulated) == (n_units, 0)


@pytest.mark.slow
def test_cs_study_end_to_end(tmp_path):
    """A tiny spherical-aberration study: simulate, sweep, report, with the axis's unit."""
    study = {
        "name": "tiny-cs",
        "dataset": {**TINY_DATASET, "axis": "cs_mm", "defocus_nm": 0, "cs_mm": [0, 1.2]},
        "domains": {"pretrain": ["0"], "transfer": ["1.2"]},
        "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0]},
        "transfer": {"lr": [1e-4], "n_images": [2], "freeze": ["none"]},
        "training": {"epochs": 1, "batch_size": 4},
        "model": {"size": "small"},
        "resources": {"cpu": 1, "max_failures": 0},
    }
    spec_file = tmp_path / "cs.yaml"
    spec_file.write_text(yaml.safe_dump(study))
    out = tmp_path / "out"
    proc = subprocess.run(
        [*CLI, "run", str(spec_file), "--out", str(out), "--num-cpus", "2"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    table = readers.read_table(out / "data", ["0", "1.2"])
    assert set(table.column("cs_mm").to_pylist()) == {0.0, 1.2}
    a = readers.read_images(out / "data", "0", "train")
    b = readers.read_images(out / "data", "1.2", "train")
    assert not np.array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)  # same structures, same ground truth
    assert (out / "results").exists()
    page = (out / "report" / "report.html").read_text()
    assert "spherical aberration Cs (mm)" in page  # the axis is labelled with its unit


def test_laptop_cs_preset_parses_with_its_axis_unit():
    from hrtem_ray.report.axes import axis_label
    from hrtem_ray.spec.config import load_study_spec

    spec = load_study_spec(REPO / "sweeps" / "laptop_cs.yaml")
    assert spec.dataset.axis == "cs_mm"
    assert axis_label(spec.dataset.axis) == "spherical aberration Cs (mm)"
    assert {c.cs_mm for c in spec.dataset.groups()[0].conditions} == {0.0, 0.5, 1.0, 1.5, 2.0}
