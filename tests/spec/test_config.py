"""Study-spec validation: safe names, impossible specs, the dataset hash, the memory check."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml
from helpers import TINY_DATASET, TINY_STUDY, run_cli, tiny_dataset_spec
from pydantic import ValidationError

from hrtem_ray.spec import dataset as spec_dataset
from hrtem_ray.spec.base import SpecError
from hrtem_ray.spec.config import (
    load_study_spec,
    parse_dataset_spec,
    parse_stored_study_spec,
    parse_study_spec,
)
from hrtem_ray.spec.dataset import check_resources
from hrtem_ray.spec.types import (
    SIMULATION_FIXED_MIB,
    WORKER_BASE_MIB,
    SimulationParams,
    StructureParams,
    estimate_worker_memory_bytes,
)

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "sweeps").glob("*.yaml"))

STRUCTURE_DATASET = {
    **TINY_DATASET,
    "axis": "structure",
    "defocus_nm": -10,
    "structure_domains": {
        "CdSe-small": {"lattice": "CdSe", "radius_angstrom": [5, 6]},
        "Cu-small": {"lattice": "Cu", "radius_angstrom": [5, 6]},
    },
}


def _study(**sections) -> dict:
    """A small valid study on the tiny dataset, with sections replaced."""
    study = {
        "name": "tiny",
        "dataset": copy.deepcopy(TINY_DATASET),
        "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0]},
        "transfer": {"lr": [1e-3], "n_images": [2], "freeze": ["none"]},
        "training": {"epochs": 1, "batch_size": 2},
    }
    study.update(sections)
    return study


def _with(mapping: dict, dotted: str, value) -> dict:
    """A deep copy of ``mapping`` with the field at a dotted path set to ``value``."""
    out = copy.deepcopy(mapping)
    *parents, leaf = dotted.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


# ----------------------------------------------------------------------------- safe names


def test_numeric_domain_labels_stay_valid():
    spec = parse_dataset_spec(
        {**TINY_DATASET, "axis": "dose", "defocus_nm": -10, "dose_e_per_angstrom2": [1e6, 30]}
    )
    assert spec.domains == ["1e+06", "30"]
    assert parse_dataset_spec({**TINY_DATASET, "defocus_nm": [-10, -2.5]}).domains == [
        "-10",
        "-2.5",
    ]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (_study(name="../x"), "name"),
        (_study(name="../../etc"), "name"),
        (_study(domains={"pretrain": ["../x"]}), "domains.pretrain"),
        (_study(domains={"transfer": ["-10", "../x"]}), "domains.transfer"),
        (_study(domains={"eval": ["../../x"]}), "domains.eval"),
        (
            _study(
                dataset={
                    **STRUCTURE_DATASET,
                    "structure_domains": {
                        "../../../../x": {"lattice": "CdSe", "radius_angstrom": [5, 6]}
                    },
                }
            ),
            "dataset.structure_domains",
        ),
    ],
)
def test_path_escaping_names_are_refused_naming_the_field(raw, field):
    with pytest.raises(SpecError) as info:
        parse_study_spec(raw, source="test")
    message = str(info.value)
    assert f"  {field}: " in message, message
    assert "../" in message and "allowed" in message


def test_structure_domain_key_refused_by_the_dataset_section_alone():
    bad = {
        **STRUCTURE_DATASET,
        "structure_domains": {"../x": STRUCTURE_DATASET["structure_domains"]["Cu-small"]},
    }
    with pytest.raises(
        SpecError, match=r"dataset\.structure_domains: key '\.\./x' contains '\.\.'"
    ):
        parse_dataset_spec(bad, source="test")


# ------------------------------------------------------------------------- impossible specs


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "structures.cell_angstrom",
            100000,
            r"dataset\.structures\.cell_angstrom: .*less than or equal to 2000",
        ),
        ("structures.cell_angstrom", float("nan"), r"dataset\.structures\.cell_angstrom: .*finite"),
        ("defocus_nm", [], r"dataset\.defocus_nm: needs at least one value"),
        (
            "defocus_nm",
            [1e6],
            r"dataset\.defocus_nm: \[1000000\.0\] outside the allowed range -1000 to 1000 nm",
        ),
        (
            "defocus_nm",
            [-10, float("nan")],
            r"dataset\.defocus_nm\.1: Input should be a finite number",
        ),
        ("defocus_nm", [float("inf")], r"dataset\.defocus_nm\.0: Input should be a finite number"),
        (
            "dose_e_per_angstrom2",
            0,
            r"dataset\.dose_e_per_angstrom2: \[0\.0\] outside the allowed range: > 0",
        ),
        ("dose_e_per_angstrom2", -5, r"dataset\.dose_e_per_angstrom2: .*outside the allowed range"),
        ("dose_e_per_angstrom2", 1e12, r"dataset\.dose_e_per_angstrom2: .*<= 1e\+07 e/A\^2"),
        ("dose_e_per_angstrom2", float("nan"), r"dataset\.dose_e_per_angstrom2: .*finite"),
        (
            "simulation.sampling_angstrom",
            0.001,
            r"dataset\.simulation\.sampling_angstrom: .*greater than or equal to 0\.01",
        ),
        (
            "simulation.sampling_angstrom",
            0.0,
            r"dataset\.simulation\.sampling_angstrom: .*greater than or equal to 0\.01",
        ),
        ("simulation.energy_kev", float("inf"), r"dataset\.simulation\.energy_kev: .*finite"),
        (
            "simulation.energy_kev",
            1e6,
            r"dataset\.simulation\.energy_kev: .*less than or equal to 3000",
        ),
        (
            "simulation.n_phonons",
            10_000,
            r"dataset\.simulation\.n_phonons: .*less than or equal to 256",
        ),
        (
            "simulation.focal_spread_angstrom",
            float("nan"),
            r"dataset\.simulation\.focal_spread_angstrom: .*finite",
        ),
        (
            "simulation.calibration_coarse_step_angstrom",
            1e-9,
            r"calibration_coarse_step_angstrom: .*greater than or equal to 0\.01",
        ),
        (
            "structures.radius_angstrom",
            [float("nan"), 5],
            r"dataset\.structures\.radius_angstrom\.0: .*finite",
        ),
        (
            "structures.substrate_thickness_angstrom",
            [5, 1e6],
            r"dataset\.structures\.substrate_thickness_angstrom: need 0 < low <= high <= 1000",
        ),
        (
            "structures.n_particles",
            [1, 10**6],
            r"dataset\.structures\.n_particles: need 1 <= low <= high <= 1000",
        ),
        (
            "structures.max_stacking_faults",
            50,
            r"dataset\.structures\.max_stacking_faults: .*less than or equal to 4",
        ),
        ("n_structures.train", 0, r"dataset\.n_structures\.train: .*greater than or equal to 1"),
        ("seed", -1, r"dataset\.seed: .*greater than or equal to 0"),
    ],
)
def test_impossible_dataset_specs_fail_naming_field_and_range(field, value, message):
    with pytest.raises(SpecError, match=message):
        parse_dataset_spec(_with(TINY_DATASET, field, value), source="test")


def test_grid_too_large_for_any_machine_is_refused():
    # 2000 A at 0.1 A: 20000 points per side (one wave 3 GiB)
    raw = _with(
        _with(TINY_DATASET, "structures.cell_angstrom", 2000), "simulation.sampling_angstrom", 0.1
    )
    with pytest.raises(SpecError, match=r"multislice grid of 20000 points per side; at most 16384"):
        parse_dataset_spec(raw, source="test")


def test_tiny_output_images_are_refused():
    raw = _with(TINY_DATASET, "simulation.output_sampling_angstrom", 5.0)
    with pytest.raises(
        SpecError, match=r"output_sampling_angstrom: 25\.6 / 5 A gives images of 5 px; at least 16"
    ):
        parse_dataset_spec(raw, source="test")


def test_structure_domain_radius_must_fit_the_cell():
    raw = copy.deepcopy(STRUCTURE_DATASET)
    raw["structure_domains"]["Cu-small"]["radius_angstrom"] = [5, 20]
    with pytest.raises(
        SpecError, match=r"dataset\.structure_domains\.Cu-small: radius_angstrom .* does not fit"
    ):
        parse_dataset_spec(raw, source="test")
    raw["structure_domains"]["Cu-small"]["radius_angstrom"] = [6, 5]
    with pytest.raises(
        SpecError,
        match=r"dataset\.structure_domains\.Cu-small\.radius_angstrom: need 0 < low <= high",
    ):
        parse_dataset_spec(raw, source="test")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            _study(
                dataset={
                    **TINY_DATASET,
                    "axis": "dose",
                    "defocus_nm": -10,
                    "dose_e_per_angstrom2": [],
                }
            ),
            r"dataset\.dose_e_per_angstrom2: needs at least one value",
        ),
        (
            _study(dataset={**STRUCTURE_DATASET, "structure_domains": {}}),
            r"axis 'structure' needs structure_domains",
        ),
        (_study(domains={"pretrain": []}), r"domains\.pretrain: needs at least one domain"),
        (_study(domains={"eval": []}), r"domains\.eval: needs at least one domain"),
        (
            _study(pretrain={"lr": [], "n_images": [4], "seeds": [0]}),
            r"pretrain\.lr: List should have at least 1 item",
        ),
        (
            _study(pretrain={"lr": [1e-3], "n_images": [0], "seeds": [0]}),
            r"pretrain\.n_images\.0: .*greater than or equal to 1",
        ),
        (
            _study(transfer={"lr": [1e-3], "n_images": [2], "freeze": []}),
            r"transfer\.freeze: List should have at least 1 item",
        ),
        (
            _study(pretrain={"lr": [float("nan")], "n_images": [4], "seeds": [0]}),
            r"pretrain\.lr\.0: Input should be a finite number",
        ),
        (
            _study(training={"epochs": 1, "lr_decay": float("nan")}),
            r"training\.lr_decay: Input should be a finite number",
        ),
        (
            _study(resources={"cpu": float("inf")}),
            r"resources\.cpu: Input should be a finite number",
        ),
        (
            _study(baseline={"mixtures": [[2, 0]], "lr": [1e-3], "seeds": [0]}),
            r"baseline\.mixtures\.0\.1: .*greater than or equal to 1",
        ),
        (
            _study(
                dataset=_with(
                    _with(TINY_DATASET, "structures.cell_angstrom", 24.0),
                    "structures.radius_angstrom",
                    [5, 6],
                )
            ),
            r"images of 60 px; the U-Net needs a multiple of 32 px \(e\.g\. 64\)",
        ),
    ],
)
def test_impossible_study_specs_fail_naming_the_field(raw, message):
    with pytest.raises(SpecError, match=message):
        parse_study_spec(raw, source="test")


# ------------------------------------------------------------------- the protocol (issue 22)

TRANSFER = {"lr": [1e-3], "n_images": [2], "freeze": ["none"]}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            _study(training={"max_epochs": 5, "patience": 6}),
            r"training\.patience: 6 must be less than training\.max_epochs \(5\); allowed: 1 to 4",
        ),
        (
            _study(training={"max_epochs": 5, "patience": 5}),
            r"training\.patience: 5 must be less than training\.max_epochs \(5\); allowed: 1 to 4",
        ),
        (
            _study(training={"epochs": 3, "patience": 3}),
            r"training\.patience: 3 must be less than training\.epochs \(3\); allowed: 1 to 2",
        ),
        (
            _study(training={"epochs": 4, "max_epochs": 5, "patience": 2}),
            r"training\.epochs and training\.max_epochs exclude each other",
        ),
        (
            _study(training={"max_epochs": 5}),
            r"training\.max_epochs: needs training\.patience",
        ),
        (_study(training={"epochs": 3, "min_delta": 0.1}), r"training\.min_delta: needs"),
        (
            _study(baseline={"fractions": [0, 1.5]}),
            r"baseline\.fractions\.1: outside \[0, 1\]; allowed: 0 .* to 1 .*\(got 1\.5\)",
        ),
        (
            _study(baseline={"fractions": [-0.1]}),
            r"baseline\.fractions\.0: outside \[0, 1\]; allowed",
        ),
        (
            _study(baseline={"fractions": [0.5, 0.55]}),  # of 4 images: both 2 target images
            r"baseline\.fractions: 0\.5 and 0\.55 give the same mixture \(2 source : 2 target "
            r"images of 4\); fractions must be at least 1/4 apart",
        ),
        (
            _study(baseline={"mixtures": [[2, 2], [2, 2]]}),
            r"baseline\.mixtures: \[\[2, 2\]\] repeat",
        ),
        (
            _study(baseline={"fractions": [0.5], "mixtures": [[2, 2]]}),
            r"baseline\.fractions and baseline\.mixtures exclude each other",
        ),
        (
            _study(baseline={"n_images": 7}),
            r"baseline\.n_images: \[7\] exceed the 6 training images per domain "
            r"\(dataset\.n_structures\.train\); allowed: 1 to 6",
        ),
        (
            _study(pretrain={"lr": [1e-3], "n_images": [2, 4], "seeds": [0]}, baseline={}),
            r"baseline\.n_images: needed with baseline\.fractions .*\[2, 4\]\); allowed: 1 to 6",
        ),
        (
            _study(baseline={"match": "pixels"}),
            r"baseline\.match: Input should be 'images' or 'steps'",
        ),
        (
            _study(baseline={"match": "steps"}, training={"max_epochs": 5, "patience": 2}),
            r"baseline\.match: steps needs fixed epochs \(training\.epochs\).*allowed with "
            r"early stopping: images",
        ),
        (
            _study(pretrain={"lr": [1e-3], "n_images": [4], "seeds": []}),
            r"pretrain\.seeds: needs at least one seed \(integers in \[0, 2\*\*63\)",
        ),
        (
            _study(transfer={**TRANSFER, "seeds": []}),
            r"transfer\.seeds: needs at least one seed",
        ),
        (_study(baseline={"seeds": []}), r"baseline\.seeds: needs at least one seed"),
        (
            _study(pretrain={"lr": [1e-3], "n_images": [4], "seeds": [1, 1]}),
            r"pretrain\.seeds: seeds \[1\] repeat",
        ),
        (
            _study(transfer={**TRANSFER, "seeds": [0], "parents": "per_model"}),
            r"transfer\.seeds: only with transfer\.parents: shared",
        ),
        (
            _study(baseline={"pairs": [["0", "0"]]}),
            r"baseline\.pairs: \[\['0', '0'\]\] must be distinct \[source, target\] pairs",
        ),
        (
            _study(baseline={"pairs": [["0", "7"]]}),
            r"baseline\.pairs: unknown domains \['7'\]; allowed: -10, 0, 10",
        ),
        (
            _study(training={"epochs": 2, "eval_split": "test"}),
            r"training\.eval_split: test needs held-out structures, but "
            r"dataset\.n_structures\.test is 0; allowed: val",
        ),
        (
            _study(training={"epochs": 2, "eval_split": "train"}),
            r"training\.eval_split: Input should be 'test' or 'val'",
        ),
    ],
)
def test_protocol_bad_input_is_refused_naming_field_and_allowed_values(raw, message):
    with pytest.raises(SpecError, match=message):
        parse_study_spec(raw, source="test")


def test_protocol_bad_input_exits_2_before_anything_runs(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_study(training={"max_epochs": 3, "patience": 4})))
    out = tmp_path / "out"
    proc = run_cli("run", spec_file, "--out", out, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "training.patience: 4 must be less than training.max_epochs (3)" in proc.stderr
    assert not out.exists()


def test_epochs_alone_is_fixed_epoch_training_as_before():
    for training, epochs in (({}, 10), ({"epochs": 3}, 3)):
        spec = parse_study_spec(_study(training=training)).training
        assert (spec.epochs, spec.epoch_limit, spec.stops_early) == (epochs, epochs, False)
        assert (spec.patience, spec.max_epochs, spec.min_delta) == (None, None, 0.0)
    stopping = parse_study_spec(_study(training={"max_epochs": 30, "patience": 3})).training
    assert (stopping.epochs, stopping.epoch_limit, stopping.stops_early) == (None, 30, True)


def test_protocol_specs_survive_their_stored_form():
    raw = _study(
        training={"max_epochs": 30, "patience": 3, "min_delta": 0.01},
        baseline={"fractions": [0, 0.5, 1]},
        transfer={**TRANSFER, "seeds": [0, 1]},
    )
    spec = parse_study_spec(raw)
    again = parse_stored_study_spec(spec.model_dump(mode="json"))
    assert again == spec
    assert again.mixture_counts() == [(4, 0), (2, 2), (0, 4)]


def test_baseline_defaults_to_the_studys_target_fractions_of_the_pretraining_size():
    spec = parse_study_spec(_study(baseline={}))
    assert spec.baseline.fractions == [0, 0.25, 0.5, 0.75, 1]
    assert spec.baseline.match == "images"
    assert spec.mixture_counts() == [(4, 0), (3, 1), (2, 2), (1, 3), (0, 4)]
    explicit = parse_study_spec(_study(baseline={"mixtures": [[3, 1]]}))
    assert explicit.baseline.fractions is None and explicit.mixture_counts() == [(3, 1)]


def test_a_simulation_only_spec_may_have_any_image_size():
    raw = _with(
        _with(TINY_DATASET, "structures.cell_angstrom", 24.0), "structures.radius_angstrom", [5, 6]
    )
    assert parse_dataset_spec(raw).domains == ["-10", "0", "10"]


# ------------------------------------------------------------------------------ memory check


def test_memory_estimate_grows_with_grid_and_phonons():
    # at most 3 particles of 5 A, 10 A apart, fit in 25.6 A (the default n_particles is [1, 5])
    small = StructureParams(cell_angstrom=25.6, radius_angstrom=(5, 6), n_particles=(1, 3))
    large = StructureParams(cell_angstrom=51.2, radius_angstrom=(5, 6), n_particles=(1, 3))
    coarse = SimulationParams(sampling_angstrom=0.2, output_sampling_angstrom=0.4, n_phonons=2)
    fine = coarse.model_copy(update={"sampling_angstrom": 0.1})
    more = coarse.model_copy(update={"n_phonons": 8})
    base = estimate_worker_memory_bytes(small, coarse)
    assert base < estimate_worker_memory_bytes(large, coarse)
    assert base < estimate_worker_memory_bytes(small, fine)
    assert base < estimate_worker_memory_bytes(small, more)
    # a 4x larger grid adds 4x the grid-dependent memory
    fixed = (WORKER_BASE_MIB + SIMULATION_FIXED_MIB) * 2**20
    assert estimate_worker_memory_bytes(large, coarse) - fixed == 4 * (base - fixed)


def test_check_resources_refuses_a_worker_larger_than_the_memory():
    paper = load_study_spec(REPO / "sweeps" / "defocus_paper.yaml")
    estimate = check_resources(paper, memory_bytes=64 * 2**30)
    assert 1.0 * 2**30 < estimate < 1.2 * 2**30  # 425 MiB of grids above the worker's 680 MiB
    with pytest.raises(
        SpecError, match=r"needs an estimated 1\.1 GiB, more than this machine's 1\.0 GiB"
    ):
        check_resources(paper, memory_bytes=2**30)
    with pytest.raises(
        SpecError,
        match=r"cell_angstrom 128, dataset\.simulation\.sampling_angstrom 0\.1, dataset\.simulation\.n_phonons 8",
    ):
        check_resources(paper.dataset, memory_bytes=2**30)


def test_check_resources_uses_this_machines_memory():
    machine = spec_dataset.machine_memory_bytes()
    assert machine > 2**30
    assert check_resources(tiny_dataset_spec()) < machine
    # 16000^2 points x 256 phonons: about 1.5 TiB, beyond any single machine here
    huge = _with(TINY_DATASET, "structures.cell_angstrom", 1600)
    huge = _with(_with(huge, "simulation.sampling_angstrom", 0.1), "simulation.n_phonons", 256)
    spec = parse_dataset_spec(huge)
    assert estimate_worker_memory_bytes(spec.structures, spec.simulation) > machine
    with pytest.raises(SpecError, match=rf"more than this machine's {machine / 2**30:.1f} GiB"):
        check_resources(spec)


# ------------------------------------------------------------------------------ dataset hash


def test_dataset_hash_is_pinned():
    """A change of this hash means every existing dataset is re-simulated: make it on purpose
    (raise GENERATOR_VERSION when the images a seed gives change) and update the literal."""
    assert spec_dataset.GENERATOR_VERSION == 1
    assert tiny_dataset_spec().content_hash() == "5ee49bc0d9e49bc2"


def test_dataset_hash_covers_shards_and_generator_but_not_path(monkeypatch):
    spec = tiny_dataset_spec()
    assert tiny_dataset_spec(structures_per_shard=2).content_hash() != spec.content_hash()
    assert tiny_dataset_spec(path="/elsewhere").content_hash() == spec.content_hash()
    assert tiny_dataset_spec(dose_e_per_angstrom2=300).content_hash() != spec.content_hash()
    before = spec.content_hash()
    monkeypatch.setattr(spec_dataset, "GENERATOR_VERSION", 2)
    assert spec.content_hash() != before
    assert spec.hash_payload()["generator_version"] == 2


def test_dataset_axis_is_hashed_under_its_former_key():
    """``dataset.study`` was renamed to ``dataset.axis``; existing datasets keep their hash."""
    payload = tiny_dataset_spec().hash_payload()
    assert payload["study"] == "defocus" and "axis" not in payload


def test_study_spec_stored_before_the_axis_rename_still_reads():
    """``study.json`` of an existing study root may hold ``dataset.study``."""
    current = parse_study_spec(_study())
    stored = current.model_dump(mode="json")
    stored["dataset"]["study"] = stored["dataset"].pop("axis")
    assert parse_stored_study_spec(stored) == current
    assert parse_stored_study_spec(current.model_dump(mode="json")) == current


@pytest.mark.parametrize("wrap", [False, True], ids=["dataset", "study"])
def test_former_dataset_study_key_names_its_new_name(wrap):
    raw = {**TINY_DATASET, "study": "defocus"}
    raw.pop("axis")
    with pytest.raises(SpecError, match=r"\n  dataset\.study: renamed to dataset\.axis"):
        if wrap:
            parse_study_spec(_study(dataset=raw))
        else:
            parse_dataset_spec(raw)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_validate_and_fit_a_64_gib_worker(preset):
    spec = load_study_spec(preset)
    assert check_resources(spec, memory_bytes=64 * 2**30) > 0
    assert not math.isnan(spec.dataset.simulation.sampling_angstrom)
    assert yaml.safe_load(preset.read_text())["name"] == spec.name


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"axis": "angle"},
            r"dataset\.axis: Input should be 'defocus', 'dose', 'structure', "
            r"'focal_spread_angstrom' or 'cs_mm'",
        ),
        ({"defocus_nm": -10}, r"axis 'defocus' needs defocus_nm as a list"),
        (
            {"structures": {"lattices": ["Unobtainium"]}},
            r"dataset\.structures\.lattices.*Unobtainium.*allowed",
        ),
        ({"n_structures": {"train": 0, "val": 2}}, r"dataset\.n_structures\.train"),
        ({"simulation": {"n_phonons": 0}}, r"dataset\.simulation\.n_phonons"),
        ({"shards": 3}, r"dataset\.shards: Extra inputs are not permitted"),
    ],
)
def test_invalid_dataset_specs_name_the_field(override, message):
    with pytest.raises(SpecError, match=message):
        parse_dataset_spec({**TINY_DATASET, **override}, source="test")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_phonons": 0}, "n_phonons"),
        ({"sampling_angstrom": -0.1}, "sampling_angstrom"),
        ({"mask_recipe": "otsu"}, "mask_recipe"),
        ({"output_sampling_angstrom": 0.05}, "output_sampling_angstrom"),
        ({"defocus_jitter_nm": -1.0}, "defocus_jitter_nm"),
        ({"energy_kv": 300.0}, "energy_kv"),
        # non-physical or non-finite values (issue 10: refused before any compute)
        ({"sampling_angstrom": 0.001}, r"sampling_angstrom\n.*greater than or equal to 0\.01"),
        ({"energy_kev": float("nan")}, r"energy_kev\n.*finite number"),
        ({"energy_kev": 1e6}, r"energy_kev\n.*less than or equal to 3000"),
        ({"n_phonons": 10_000}, r"n_phonons\n.*less than or equal to 256"),
        ({"focal_spread_angstrom": float("inf")}, r"focal_spread_angstrom\n.*finite number"),
        (
            {"calibration_coarse_step_angstrom": 0.1, "calibration_fine_step_angstrom": 0.5},
            r"need fine <= coarse <= 1000 \* fine",
        ),
    ],
)
def test_invalid_simulation_params_name_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        SimulationParams(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lattices": ("Unobtainium",)}, "lattices"),
        ({"radius_angstrom": (20.0, 10.0)}, "radius_angstrom"),
        ({"n_particles": (0, 2)}, "n_particles"),
        ({"cell_angstrom": -1.0}, "cell_angstrom"),
        ({"max_stacking_faults": -1}, "max_stacking_faults"),
        ({"unknown_field": 1}, "unknown_field"),
        # non-physical or non-finite values (issue 10: refused before any compute)
        ({"cell_angstrom": 100000.0}, r"cell_angstrom\n.*less than or equal to 2000"),
        ({"cell_angstrom": float("nan")}, r"cell_angstrom\n.*finite number"),
        ({"substrate_thickness_angstrom": (5.0, float("inf"))}, r"substrate_thickness_angstrom\.1"),
        ({"substrate_thickness_angstrom": (5.0, 5000.0)}, r"need 0 < low <= high <= 1000"),
        ({"n_particles": (1, 10**6)}, r"n_particles\n.*need 1 <= low <= high <= 1000"),
        ({"max_stacking_faults": 50}, r"max_stacking_faults\n.*less than or equal to 4"),
        ({"carbon_min_distance_angstrom": float("nan")}, r"carbon_min_distance_angstrom"),
    ],
)
def test_invalid_structure_params_name_the_field(kwargs, field):
    with pytest.raises(ValidationError, match=field):
        StructureParams(**kwargs)


def test_unknown_lattice_error_lists_allowed_values():
    with pytest.raises(ValidationError, match="CdSe"):
        StructureParams(lattices=("Unobtainium",))


def test_invalid_specs_fail_before_any_compute(tmp_path):
    bad = {**TINY_STUDY, "transfer": {"lr": [1e-4], "n_images": [2], "freeze": ["everything"]}}
    with pytest.raises(SpecError, match=r"transfer\.freeze\.0.*'none', 'encoder' or 'decoder'"):
        parse_study_spec(bad)
    bad = {**TINY_STUDY, "domains": {"pretrain": ["-10", "7"]}}
    with pytest.raises(SpecError, match=r"domains\.pretrain.*'7'.*allowed: -10, 0, 10"):
        parse_study_spec(bad)
    bad = {**TINY_STUDY, "pretrain": {"lr": [1e-3], "n_images": [64], "seeds": [0]}}
    with pytest.raises(SpecError, match=r"pretrain\.n_images.*dataset\.n_structures\.train"):
        parse_study_spec(bad)
    bad = {**TINY_STUDY, "dataset": {**TINY_DATASET, "axis": "focus"}}
    axes = r"dataset\.axis.*'structure', 'focal_spread_angstrom' or 'cs_mm'"
    with pytest.raises(SpecError, match=axes):
        parse_study_spec(bad)
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(yaml.safe_dump({**TINY_STUDY, "resources": {"cpu": 0}}))
    out = tmp_path / "out"
    proc = run_cli("sweep", spec_file, "--out", out, timeout=120)
    assert proc.returncode == 2
    assert "resources.cpu" in proc.stderr and "greater than 0" in proc.stderr
    assert not out.exists()


def test_protocol_and_loss_options_are_validated_with_their_allowed_values():
    transfer = TINY_STUDY["transfer"]
    bad = {**TINY_STUDY, "transfer": {**transfer, "parents": "each"}}
    with pytest.raises(SpecError, match=r"transfer\.parents.*'shared' or 'per_model'"):
        parse_study_spec(bad)
    bad = {**TINY_STUDY, "training": {**TINY_STUDY["training"], "loss": "mse"}}
    with pytest.raises(
        SpecError, match=r"training\.loss.*'cross_entropy' or 'softmax_cross_entropy'"
    ):
        parse_study_spec(bad)
    bad = {
        **TINY_STUDY,
        "transfer": {**transfer, "delete_parent_checkpoints": True},
        "keep_checkpoints": "all",
    }
    with pytest.raises(SpecError, match=r"transfer\.delete_parent_checkpoints.*keep_checkpoints"):
        parse_study_spec(bad)


@pytest.mark.parametrize(
    ("parents", "delete", "keep", "deletes"),
    [
        ("shared", None, "pretrain", False),
        ("per_model", None, "pretrain", True),
        ("per_model", None, "all", False),
        ("per_model", False, "pretrain", False),
        ("shared", True, "pretrain", True),
    ],
)
def test_parent_checkpoints_are_deleted_by_default_only_for_per_model(
    parents, delete, keep, deletes
):
    transfer = {**TINY_STUDY["transfer"], "parents": parents, "delete_parent_checkpoints": delete}
    spec = parse_study_spec({**TINY_STUDY, "transfer": transfer, "keep_checkpoints": keep})
    assert spec.deletes_parent_checkpoints is deletes
    assert parse_study_spec(TINY_STUDY).training.loss == "cross_entropy"


# ------------------------------------------------------------------------------ exit-wave store


def test_new_dataset_fields_at_their_defaults_keep_the_pinned_hash():
    """focal_spread_angstrom, cs_mm and keep_exit_waves came after datasets existed."""
    spec = tiny_dataset_spec()
    assert spec.keep_exit_waves is True and spec.cs_mm == 0.0
    assert tiny_dataset_spec(keep_exit_waves=False).content_hash() == spec.content_hash()
    assert tiny_dataset_spec(cs_mm=0.5).content_hash() != spec.content_hash()


def test_waves_hash_covers_the_multislice_not_the_imaging():
    spec = tiny_dataset_spec()
    same_waves = [
        tiny_dataset_spec(defocus_nm=[-10, 0, 10, 20]),
        tiny_dataset_spec(dose_e_per_angstrom2=100),
        tiny_dataset_spec(cs_mm=1.0),
        tiny_dataset_spec(simulation={**TINY_DATASET["simulation"], "focal_spread_angstrom": 5}),
        tiny_dataset_spec(
            simulation={**TINY_DATASET["simulation"], "output_sampling_angstrom": 0.8}
        ),
    ]
    for other in same_waves:
        assert other.waves_hash("all") == spec.waves_hash("all")
    other_waves = [
        tiny_dataset_spec(simulation={**TINY_DATASET["simulation"], "n_phonons": 2}),
        tiny_dataset_spec(simulation={**TINY_DATASET["simulation"], "energy_kev": 200}),
        tiny_dataset_spec(seed=8),
        tiny_dataset_spec(n_structures={"train": 7, "val": 3}),
    ]
    for other in other_waves:
        assert other.waves_hash("all") != spec.waves_hash("all")


def test_adding_a_domain_keeps_the_images_hash_of_the_others():
    spec, wider = tiny_dataset_spec(), tiny_dataset_spec(defocus_nm=[-10, 0, 10, 20])
    old = {c.domain: spec.images_hash("all", c) for c in spec.groups()[0].conditions}
    new = {c.domain: wider.images_hash("all", c) for c in wider.groups()[0].conditions}
    assert {d: new[d] for d in old} == old and "20" in new
    doses = tiny_dataset_spec(dose_e_per_angstrom2=100)
    assert all(doses.images_hash("all", c) != old[c.domain] for c in doses.groups()[0].conditions)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"axis": "cs_mm"}, "axis 'cs_mm' needs cs_mm as a list"),
        ({"axis": "focal_spread_angstrom"}, "needs focal_spread_angstrom as a list"),
        ({"cs_mm": [0, 1]}, "cs_mm must be a single value in a 'defocus' study"),
        ({"focal_spread_angstrom": [5, 10]}, "only allowed in a 'focal_spread_angstrom' study"),
        ({"cs_mm": 20}, r"dataset.cs_mm: .*outside the allowed range -10 to 10 mm"),
        (
            {"axis": "focal_spread_angstrom", "defocus_nm": 0, "focal_spread_angstrom": [-1]},
            r"dataset.focal_spread_angstrom.0: Input should be greater than or equal to 0",
        ),
    ],
    ids=["cs-axis-scalar", "fs-axis-missing", "cs-list", "fs-list", "cs-range", "fs-negative"],
)
def test_new_axes_are_validated_naming_the_field(overrides, message):
    with pytest.raises(SpecError, match=message):
        tiny_dataset_spec(**overrides)


def test_new_axes_give_conditions_with_the_whole_dataset_imaging():
    cs = tiny_dataset_spec(axis="cs_mm", defocus_nm=5, cs_mm=[0, 1.2])
    assert [
        (c.domain, c.defocus_nm, c.cs_mm, c.focal_spread_angstrom)
        for c in cs.groups()[0].conditions
    ] == [
        ("0", 5.0, 0.0, 10.0),
        ("1.2", 5.0, 1.2, 10.0),
    ]
    spread = tiny_dataset_spec(
        axis="focal_spread_angstrom", defocus_nm=5, focal_spread_angstrom=[5, 20], cs_mm=0.5
    )
    assert [
        (c.domain, c.focal_spread_angstrom, c.cs_mm) for c in spread.groups()[0].conditions
    ] == [
        ("5", 5.0, 0.5),
        ("20", 20.0, 0.5),
    ]


def test_waves_and_images_hashes_are_pinned():
    """The two hashes alongside content_hash (which they leave unchanged): the exit-wave
    store's identity and each domain's images. A change of either means the stored waves
    (or that domain's shards) are simulated again: make it on purpose and update these."""
    spec = tiny_dataset_spec()
    assert spec.waves_hash("all") == "670ff7657b518ee8"
    images = [spec.images_hash("all", c) for c in spec.groups()[0].conditions]
    assert images == ["713820f70f345517", "3d41b16bd724d499", "7777228f963ecd3d"]
