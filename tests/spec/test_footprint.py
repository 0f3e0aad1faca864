"""What a study needs of this machine, refused before any work: dataset size, trial resources.

``n_structures.train: 1e9`` used to pass the dry run and grow past 6 GB in ``simulate``;
``resources.cpu: 1000`` on a 2-core machine made ``sweep`` wait for ever. Both are refused
while the spec is checked, before Ray starts, with the numbers (commands called in-process:
exit 2, one ``error:`` line, nothing written).
"""

from __future__ import annotations

import copy
import tracemalloc
from pathlib import Path

import pytest
import yaml
from helpers import TWO_MODEL_STUDY, tiny_dataset_spec

from hrtem_ray import cli
from hrtem_ray.dataset import manifest, pipeline
from hrtem_ray.exit_codes import EXIT_BAD_INPUT, EXIT_OK
from hrtem_ray.spec.base import SpecError
from hrtem_ray.spec.config import load_study_spec, parse_study_spec
from hrtem_ray.spec.footprint import (
    DRIVER_BYTES_PER_SHARD,
    check_dataset_footprint,
    check_local_trial_resources,
    dataset_footprint,
    format_bytes,
    local_cpu_count,
    parse_bytes,
)

REPO = Path(__file__).resolve().parents[2]


def _spec_file(tmp_path: Path, **changes) -> Path:
    """TWO_MODEL_STUDY with top-level sections replaced, as a YAML file."""
    raw = {**copy.deepcopy(TWO_MODEL_STUDY), **changes}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_footprint_counts_images_shards_and_bytes_of_the_laptop_preset():
    spec = load_study_spec(REPO / "sweeps" / "laptop.yaml").dataset
    footprint = dataset_footprint(spec)
    # 24 + 8 + 8 structures x 6 defoci; 4 structures per shard: (6 + 2 + 2) x 6 shards
    assert footprint.images == 240 and footprint.shards == 60
    assert footprint.image_bytes == 240 * 8 * 128**2  # float32 image + float32 mask
    assert footprint.wave_bytes == 40 * 2 * 2 * 128**2 * 8  # README: 0.52 MB per structure
    assert "240 images in 60 shards" in footprint.line()


def test_the_estimate_bounds_the_bytes_a_real_dataset_takes(tiny_dataset_root):
    footprint = dataset_footprint(tiny_dataset_spec())
    images = sum(p.stat().st_size for p in tiny_dataset_root.glob("study=*/**/*.parquet"))
    waves = sum(p.stat().st_size for p in (tiny_dataset_root / "waves").rglob("*.parquet"))
    assert 0.5 * footprint.image_bytes < images <= footprint.image_bytes
    assert waves == pytest.approx(footprint.wave_bytes, rel=0.1)


def test_planning_costs_the_driver_less_than_its_estimate_per_shard():
    """Measured again: the shard plan and simulation units of 3,003 shards."""
    spec = tiny_dataset_spec(n_structures={"train": 2000, "val": 1000}, structures_per_shard=3)
    tracemalloc.start()
    try:
        tasks = manifest.plan_shards(spec)
        units = pipeline.simulation_units(spec, tasks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # (667 train + 334 val shards) x 3 defoci
    assert len(tasks) == dataset_footprint(spec).shards == 3003 and len(units) == 1001
    assert peak / len(tasks) < DRIVER_BYTES_PER_SHARD


def test_a_billion_structures_are_refused_with_the_numbers(tmp_path, capsys):
    spec = _spec_file(
        tmp_path,
        dataset={**TWO_MODEL_STUDY["dataset"], "n_structures": {"train": 1e9, "val": 8}},
    )
    out = tmp_path / "out"
    # the dry run shows the counts and says that it would be refused here
    code, dry, _ = _run_cli(capsys, "sweep", str(spec), "--out", str(out), "--dry-run")
    assert code == EXIT_OK and "dataset: 3,000,000,024 images in 1,000,000,011 shards" in dry
    assert "refused here (simulate, sweep and run check it first): dataset: planning" in dry
    for argv in (
        ["simulate", str(spec), "--out", str(out)],
        ["sweep", str(spec), "--out", str(out)],
        ["run", str(spec), "--out", str(out)],
    ):
        code, _, err = _run_cli(capsys, *argv)
        assert code == EXIT_BAD_INPUT, argv
        assert err.count("error:") == 1 and "Traceback" not in err
        # (333,333,334 train + 3 val shards) x 3 defoci
        assert "planning its 1,000,000,011 shards needs about" in err
        assert "dataset.n_structures {train: 1,000,000,000, val: 8, test: 0}" in err
    assert not out.exists()


def test_completing_a_dataset_needs_only_the_disk_for_what_is_missing(tiny_dataset_root):
    """A rerun of a complete dataset on a disk with no room for a second copy is fine."""
    spec = tiny_dataset_spec()
    footprint = dataset_footprint(spec)
    free = footprint.disk_bytes // 2
    check_dataset_footprint(spec, str(tiny_dataset_root), free_bytes=free)
    with pytest.raises(SpecError, match="already there"):
        check_dataset_footprint(spec, str(tiny_dataset_root), free_bytes=1)


def test_a_dataset_larger_than_the_free_disk_is_refused(tmp_path):
    spec = tiny_dataset_spec()
    footprint = check_dataset_footprint(spec, str(tmp_path / "data"))
    with pytest.raises(SpecError, match=r"need about .* on disk .* more than the 1\.0 KiB free"):
        check_dataset_footprint(spec, str(tmp_path / "data"), free_bytes=1024)
    with pytest.raises(SpecError, match=r"more than this machine's 1\.0 MiB"):
        check_dataset_footprint(spec, str(tmp_path / "data"), memory_bytes=2**20)
    assert footprint.disk_bytes == footprint.image_bytes + footprint.wave_bytes
    assert not (tmp_path / "data").exists()


def test_the_dry_run_prints_the_dataset_footprint(tmp_path, capsys):
    code, out, _ = _run_cli(capsys, "sweep", str(_spec_file(tmp_path)), "--dry-run")
    assert code == EXIT_OK
    assert "dataset: 27 images in 9 shards, at most" in out and "exit waves" in out
    assert "refused here" not in out


def test_a_trial_larger_than_the_local_cluster_is_refused_before_ray_starts(tmp_path, capsys):
    resources = {"cpu": 1000, "max_failures": 0}
    spec = _spec_file(tmp_path, resources=resources)
    out = tmp_path / "out"
    for argv in (["sweep", str(spec), "--out", str(out)], ["run", str(spec), "--out", str(out)]):
        code, _, err = _run_cli(capsys, *argv)
        assert code == EXIT_BAD_INPUT
        cores = local_cpu_count()
        assert f"resources.cpu: 1000 CPUs per trial, but the local cluster has {cores}" in err
        assert f"allowed: up to {cores}" in err and err.count("error:") == 1
    code, _, err = _run_cli(capsys, "sweep", str(spec), "--out", str(out), "--num-cpus", "1")
    assert code == EXIT_BAD_INPUT and "has 1 (--num-cpus)" in err
    assert not out.exists()


def test_local_trial_resources_within_the_cluster_pass():
    spec = parse_study_spec({**TWO_MODEL_STUDY, "resources": {"cpu": 2, "gpu": 0.25}})
    check_local_trial_resources(spec, num_cpus=2, num_gpus=0)  # no GPU: the sweep uses CPU
    check_local_trial_resources(spec, num_cpus=2, num_gpus=1)
    many_gpus = parse_study_spec({**TWO_MODEL_STUDY, "resources": {"cpu": 1, "gpu": 4}})
    with pytest.raises(SpecError, match=r"resources.gpu: 4 GPUs per trial, .* has 2"):
        check_local_trial_resources(many_gpus, num_cpus=2, num_gpus=2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8GB", 8 * 10**9), ("8 GiB", 8 * 2**30), ("512M", 512 * 10**6), ("1e9", 10**9)],
)
def test_sizes_are_parsed(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "-1GB", "0", "8 XB", "lots"])
def test_bad_sizes_are_refused_with_the_allowed_units(text):
    with pytest.raises(ValueError, match="allowed: a positive number with B, KB"):
        parse_bytes(text)


def test_sizes_are_formatted_in_binary_units():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1.5 * 2**30) == "1.5 GiB"
