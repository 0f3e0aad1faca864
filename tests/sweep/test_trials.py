"""Trial planning (no Ray, no data): counts, order, stable ids, dry run.

Resuming relies on ids that never change for the same configuration: a sweep skips every
model whose result file, named by its ``model_id``, exists. One id is pinned below as a
literal, so that any change of how ids are derived fails here first.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest

from hrtem_ray.spec.config import load_study_spec, parse_study_spec
from hrtem_ray.spec.types import N_SYMMETRIES
from hrtem_ray.sweep.trials import (
    Trial,
    baseline_pairs,
    dry_run,
    mixture_steps,
    per_model_seed,
    plan_trials,
    stage_steps,
    trial_passes,
)

# A literal copy of the tiny dataset, not helpers.TINY_DATASET: the pinned model id below
# must not move when shared test data changes.
DATASET = {
    "axis": "defocus",
    "defocus_nm": [-10, 0, 10],
    "dose_e_per_angstrom2": 400,
    "structures": {
        "cell_angstrom": 25.6,
        "substrate_thickness_angstrom": [6, 10],
        "radius_angstrom": [5, 7],
        "n_particles": [1, 2],
        "min_separation_angstrom": 4,
    },
    "simulation": {"sampling_angstrom": 0.2, "n_phonons": 1, "output_sampling_angstrom": 0.4},
    "n_structures": {"train": 6, "val": 3},
    "seed": 7,
    "structures_per_shard": 3,
}

# One pretrain model on domain 0, its two children on domain 10, one baseline 0:10.
SPEC = {
    "name": "pinned",
    "dataset": DATASET,
    "domains": {"pretrain": ["0"], "transfer": ["0", "10"]},
    "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0]},
    "transfer": {"lr": [1e-4], "n_images": [2], "freeze": ["none", "encoder"]},
    "baseline": {"mixtures": [[2, 2]], "lr": [1e-3], "seeds": [0]},
    "training": {"epochs": 2, "batch_size": 4},
}

# The id hrtem-ray has always given the pretrain model of SPEC (also before dataset.study was
# renamed dataset.axis). If this changes, every stored study would train all its models again.
PINNED_PRETRAIN_ID = "pretrain-e80619dcd76e"
# Every id of SPEC's plan (shared parents), as before transfer.seeds, baseline fractions,
# baseline.match and early stopping existed: options at their defaults keep them.
PINNED_IDS = [
    PINNED_PRETRAIN_ID,
    "transfer-826c7d45b447",
    "transfer-41e6e9443544",
    "baseline-00ec40e8ec5c",
]


def plan_of(raw: dict):
    """The trial plan of a raw spec dict."""
    return plan_trials(parse_study_spec(raw, source="tests"))


def edited(**changes) -> dict:
    """SPEC with top-level sections replaced or updated (``dataset`` updated key by key)."""
    raw = copy.deepcopy(SPEC)
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if key == "dataset" else value
    return raw


def test_one_model_id_is_pinned():
    (pretrain,) = plan_of(SPEC).pretrain
    assert pretrain.model_id == PINNED_PRETRAIN_ID
    assert pretrain.model_id == f"pretrain-{pretrain.config_hash[:12]}"


def test_new_options_at_their_defaults_keep_every_id():
    assert [t.model_id for t in plan_of(SPEC).all()] == PINNED_IDS
    explicit = edited(
        baseline={**SPEC["baseline"], "match": "images"},
        training={**SPEC["training"], "min_delta": 0.0, "patience": None, "max_epochs": None},
    )
    assert [t.model_id for t in plan_of(explicit).all()] == PINNED_IDS
    # the same mixture in the fractions form is the same model
    fractions = edited(baseline={"fractions": [0.5], "lr": [1e-3], "seeds": [0]})
    assert [t.model_id for t in plan_of(fractions).baseline] == PINNED_IDS[3:]


def test_plan_has_the_expected_trials_in_a_fixed_order():
    plan = plan_of(SPEC)
    assert plan.counts() == {"pretrain": 1, "transfer": 2, "baseline": 1}
    (parent,) = plan.pretrain
    # no transfer onto the parent's own domain; freeze options in spec order
    assert [(t.transfer_domain, t.freeze) for t in plan.transfer] == [
        ("10", "none"),
        ("10", "encoder"),
    ]
    assert all(t.parent_id == parent.model_id for t in plan.transfer)
    assert plan.children() == {parent.model_id: plan.transfer}
    (baseline,) = plan.baseline
    assert (baseline.pretrain_domain, baseline.transfer_domain) == ("0", "10")
    assert baseline.n_train_images == 4 and baseline.parent_id is None
    assert [t.model_id for t in plan.all()] == [t.model_id for t in plan_of(SPEC).all()]
    assert len({t.model_id for t in plan.all()}) == 4


def test_ids_follow_the_configuration_but_not_where_the_data_lives():
    ids = {t.model_id for t in plan_of(SPEC).all()}
    assert {t.model_id for t in plan_of(edited(dataset={"path": "/elsewhere"})).all()} == ids
    for raw in (
        edited(training={"epochs": 3, "batch_size": 4}),
        edited(dataset={"seed": 8}),
        edited(name="another"),
    ):
        assert not ids & {t.model_id for t in plan_of(raw).all()}


def test_a_new_grid_value_keeps_the_ids_of_existing_trials():
    more = edited(transfer={"lr": [1e-4, 1e-5], "n_images": [2], "freeze": ["none", "encoder"]})
    old, new = plan_of(SPEC), plan_of(more)
    assert {t.model_id for t in old.all()} < {t.model_id for t in new.all()}
    assert new.counts()["transfer"] == 4


def test_trial_round_trips_through_its_dict():
    for trial in plan_of(SPEC).all():
        again = Trial.from_dict(trial.to_dict())
        assert again == trial and again.model_id == trial.model_id


@pytest.mark.parametrize(
    ("pretrain", "transfer", "expected"),
    [
        (["0"], ["0", "10"], [("0", "10")]),
        (["a", "b"], ["b", "a", "c"], [("a", "b"), ("a", "c"), ("b", "c")]),
    ],
)
def test_baseline_pairs_are_unordered_and_without_repeats(pretrain, transfer, expected):
    assert baseline_pairs(pretrain, transfer) == expected


def test_baseline_pairs_of_the_defocus_study():
    pretrain = ["-20", "-10", "0", "10", "20"]
    transfer = [str(d) for d in range(-25, 30, 5)]
    assert len(baseline_pairs(pretrain, transfer)) == 40


def test_dry_run_lines():
    lines = dry_run(parse_study_spec(SPEC, source="tests")).splitlines()
    assert lines == [
        "study pinned (defocus): 1 pretrain, 2 transfer, 1 baseline, 4 models in all",
        "each model is evaluated on 3 eval domains: 12 result rows",
        "training: 2 fixed epochs; convergence not judged (no training.patience)",
        "pretrain: 1 trials training on images per trial: 1 x 4 "
        "(64 augmented image passes over 2 epochs)",
        "transfer: 2 trials training on images per trial: 2 x 2 "
        "(64 augmented image passes over 2 epochs)",
        "baseline: 1 trials training on images per trial: 1 x 4 "
        "(64 augmented image passes over 2 epochs)",
        # per_model: 2 parents of 4 images, 2 children of 2, 1 baseline of 4: 16 images x 8 x 2
        "transfer.parents: per_model: 5 trainings, 256 augmented image passes",
        "transfer.parents: shared (this spec): 4 trainings, 192 augmented image passes; "
        "shared parents save 1 pretraining runs, 64 passes (25%)",
    ]


def per_model(raw: dict, **transfer) -> dict:
    """``raw`` with ``transfer.parents: per_model`` (and other transfer fields)."""
    return {**raw, "transfer": {**raw["transfer"], "parents": "per_model", **transfer}}


def test_per_model_parents_one_per_child_with_derived_seeds():
    plan = plan_of(per_model(SPEC))
    assert plan.counts() == {"pretrain": 2, "transfer": 2, "baseline": 1}
    parents = {p.model_id: p for p in plan.pretrain}
    assert [t.parent_id for t in plan.transfer] == list(parents)  # one parent each, in order
    assert plan.children() == {t.parent_id: [t] for t in plan.transfer}
    for child in plan.transfer:
        parent = parents[child.parent_id]
        expected = per_model_seed(0, child.transfer_domain, 1e-4, 2, child.freeze)
        assert parent.seed == child.seed == expected
        assert (parent.pretrain_domain, parent.pretrain_lr, parent.n_pretrain) == ("0", 1e-3, 4)
    assert len({p.seed for p in plan.pretrain}) == 2
    # the baseline and the shared protocol's ids are untouched
    assert plan.baseline == plan_of(SPEC).baseline
    assert plan_of(SPEC).pretrain[0].model_id == PINNED_PRETRAIN_ID
    assert PINNED_PRETRAIN_ID not in parents


def test_per_model_seed_is_a_documented_hash_of_the_child_settings():
    text = '{"freeze":"none","n_transfer":2,"seed":0,"transfer_domain":"10","transfer_lr":0.0001}'
    assert per_model_seed(0, "10", 1e-4, 2, "none") == int(
        hashlib.sha256(text.encode()).hexdigest()[:15], 16
    )
    assert 0 <= per_model_seed(2**62, "x", 1.0, 1, "encoder") < 2**60


def test_per_model_ids_survive_a_new_grid_value():
    old = plan_of(per_model(SPEC))
    new = plan_of(per_model(SPEC, lr=[1e-4, 1e-5]))
    assert {t.model_id for t in old.all()} < {t.model_id for t in new.all()}
    assert new.counts() == {"pretrain": 4, "transfer": 4, "baseline": 1}


def test_per_model_keeps_the_grid_model_of_a_configuration_without_children():
    raw = per_model(SPEC)
    raw["domains"] = {"pretrain": ["0", "10"], "transfer": ["10"]}
    plan = plan_of(raw)
    # domain 0: two children with parents of their own; domain 10: no target, its grid model
    assert plan.counts() == {"pretrain": 3, "transfer": 2, "baseline": 1}
    lonely = [p for p in plan.pretrain if p.pretrain_domain == "10"]
    assert [p.seed for p in lonely] == [0]


def test_the_loss_option_enters_the_ids_only_when_set():
    default = plan_of(edited(training={**SPEC["training"], "loss": "cross_entropy"}))
    assert default.pretrain[0].model_id == PINNED_PRETRAIN_ID
    softmax = plan_of(edited(training={**SPEC["training"], "loss": "softmax_cross_entropy"}))
    assert not {t.model_id for t in softmax.all()} & {t.model_id for t in default.all()}


def first_line_counts(path: str) -> dict[str, int]:
    """The counts of ``--dry-run``'s first line (``study NAME (AXIS): N pretrain, ...``)."""
    first = dry_run(load_study_spec(path)).splitlines()[0]
    parts = first.split(": ", 1)[1].split(", ")
    return {part.split(" ", 1)[1]: int(part.split(" ", 1)[0]) for part in parts}


@pytest.mark.parametrize(
    ("preset", "pretrain", "transfer", "baseline"),
    [
        ("defocus_paper", 7200, 7200, 0),
        ("dose_paper", 180, 180, 0),
        ("structure_paper", 2754, 2754, 0),  # 18 domains x 3 seeds x 17 targets x 3 freezes
        ("baseline_paper", 450, 450, 720),  # 50 ordered pairs x 3 sizes x 3 seeds
    ],
)
def test_paper_presets_use_per_model_parents_with_the_study_counts(
    preset, pretrain, transfer, baseline
):
    path = f"sweeps/{preset}.yaml"
    counts = first_line_counts(path)
    assert counts == {
        "pretrain": pretrain,
        "transfer": transfer,
        "baseline": baseline,
        "models in all": pretrain + transfer + baseline,
    }
    spec = load_study_spec(path)
    assert spec.transfer.parents == "per_model" and spec.deletes_parent_checkpoints
    assert spec.dataset.simulation.mask_recipe == "smoothed"
    lines = dry_run(spec).splitlines()
    assert any(line.startswith("transfer.parents: per_model (this spec): ") for line in lines)
    assert any(line.startswith("transfer.parents: shared: ") for line in lines)


def test_defocus_paper_protocol_lines_count_the_passes():
    spec = load_study_spec("sweeps/defocus_paper.yaml")
    per_model_line, shared_line = dry_run(spec).splitlines()[-2:]
    # per model: 7,200 parents of 512 images + transfers of 64..512 (1,800 each) over 10 epochs
    transfer_images = 1800 * (64 + 128 + 256 + 512)
    per_model_passes = (7200 * 512 + transfer_images) * N_SYMMETRIES * 10
    shared_passes = (30 * 512 + transfer_images) * N_SYMMETRIES * 10
    assert per_model_line == (
        f"transfer.parents: per_model (this spec): 14,400 trainings, "
        f"{per_model_passes:,} augmented image passes"
    )
    assert shared_line.startswith(
        f"transfer.parents: shared: 7,230 trainings, {shared_passes:,} augmented image passes; "
        f"shared parents save 7,170 pretraining runs, {per_model_passes - shared_passes:,} passes"
    )


@pytest.mark.parametrize(
    ("preset", "counts"),
    [
        ("laptop", {"pretrain": 21, "transfer": 105, "baseline": 7}),
        ("laptop_dose", {"pretrain": 6, "transfer": 24, "baseline": 3}),
        ("laptop_structure", {"pretrain": 6, "transfer": 36, "baseline": 3}),
        ("laptop_cs", {"pretrain": 6, "transfer": 24, "baseline": 3}),
        ("laptop_materials", {"pretrain": 6, "transfer": 18, "baseline": 3}),
    ],
)
def test_laptop_presets_dry_run(preset, counts):
    got = first_line_counts(f"sweeps/{preset}.yaml")
    assert got == {**counts, "models in all": sum(counts.values())}


@pytest.mark.parametrize(
    "preset", ["laptop", "laptop_dose", "laptop_structure", "laptop_cs", "laptop_materials"]
)
def test_laptop_presets_compare_like_with_like_on_replicates(preset):
    """Every simulated laptop preset: a mixture pair with both arms at the same target count,
    fair mixtures (the pretraining size), at least 3 replicates of every compared model, a
    test split and early stopping (laptop.yaml: the Figure 7.2 pair -10 -> 5 nm)."""
    spec = load_study_spec(f"sweeps/{preset}.yaml")
    plan = plan_trials(spec)
    assert sorted(n_target for _, n_target in spec.mixture_counts()) == spec.transfer.n_images
    assert {t.n_pretrain + t.n_transfer for t in plan.baseline} == set(spec.pretrain.n_images)
    arms = {(t.pretrain_domain, t.transfer_domain, t.n_transfer) for t in plan.transfer}
    assert {(t.pretrain_domain, t.transfer_domain, t.n_transfer) for t in plan.baseline} <= arms
    if preset == "laptop":
        assert ("-10", "5") in {(t.pretrain_domain, t.transfer_domain) for t in plan.baseline}
    replicates = {}
    for t in plan.all():
        key = (t.phase, t.pretrain_domain, t.transfer_domain, t.n_transfer, t.freeze)
        replicates.setdefault(key, set()).add(t.seed)
    assert min(len(seeds) for seeds in replicates.values()) >= 3
    assert spec.dataset.n_structures.test > 0 and spec.training.stops_early


def test_baseline_paper_has_both_arms_of_figure_7_2_for_every_pair():
    plan = plan_trials(load_study_spec("sweeps/baseline_paper.yaml"))
    mixtures = {
        (t.pretrain_domain, t.transfer_domain, t.n_transfer)
        for t in plan.baseline
        if t.pretrain_lr == 1e-4
    }
    transfers = {(t.pretrain_domain, t.transfer_domain, t.n_transfer) for t in plan.transfer}
    assert mixtures <= transfers
    assert {(t.pretrain_lr, t.transfer_lr) for t in plan.transfer} == {(1e-4, 1e-5)}
    assert {t.n_pretrain for t in plan.transfer} == {512}
    per_point = {}
    for t in plan.transfer:
        key = (t.pretrain_domain, t.transfer_domain, t.n_transfer)
        per_point[key] = per_point.get(key, 0) + 1
    assert set(per_point.values()) == {3}  # 3 seeds, each with its own parent
    assert ("-10", "5", 128) in transfers


def test_baseline_paper_mixtures_are_the_studys_target_fractions_of_512_images():
    spec = load_study_spec("sweeps/baseline_paper.yaml")
    assert spec.mixture_counts() == [(384, 128), (256, 256), (128, 384)]
    fractions = {t.target_fraction for t in plan_trials(spec).baseline}
    assert fractions == {0.25, 0.5, 0.75}


# ----------------------------------------------------------------------------- fair baselines


def baseline_of(baseline: dict, **changes) -> list[Trial]:
    """The baseline trials of SPEC with ``baseline`` (lr 1e-3, seed 0 unless given)."""
    return plan_of(edited(baseline={"lr": [1e-3], "seeds": [0], **baseline}, **changes)).baseline


def test_fractions_hold_the_total_at_the_pretraining_size_by_default():
    # no fractions, no mixtures: the study's fractions of the pretraining size (4 images)
    trials = baseline_of({})
    assert [(t.n_pretrain, t.n_transfer) for t in trials] == [
        (4, 0),
        (3, 1),
        (2, 2),
        (1, 3),
        (0, 4),
    ]
    assert [t.target_fraction for t in trials] == [0, 0.25, 0.5, 0.75, 1]
    assert {t.n_train_images for t in trials} == {4}
    assert {t.max_steps for t in trials} == {None}
    assert len({t.model_id for t in trials}) == 5
    # another total, with halves rounded up: 6 images x 0.25 = 1.5 -> 2 target images
    trials = baseline_of({"fractions": [0.25, 1], "n_images": 6})
    assert [(t.n_pretrain, t.n_transfer) for t in trials] == [(4, 2), (0, 6)]


def test_match_steps_gives_each_mixture_its_transfer_counterparts_steps():
    spec = parse_study_spec(
        edited(baseline={"fractions": [0, 0.5, 1], "match": "steps", "lr": [1e-3], "seeds": [0]}),
        source="tests",
    )
    plan = plan_trials(spec)
    # epochs 2, batch 4: pretraining on 4 images is 2 x ceil(4 x 8 / 4) = 16 steps; a
    # transfer on n target images adds 2 x ceil(8 n / 4) = 4 n
    assert [(t.n_transfer, t.max_steps) for t in plan.baseline] == [(0, 16), (2, 24), (4, 32)]
    (parent,) = plan.pretrain
    for child in plan.transfer:  # n_transfer 2: the counterpart of the 2-target-image mixture
        both_stages = stage_steps(parent.n_pretrain, 2, 4) + stage_steps(child.n_transfer, 2, 4)
        assert mixture_steps(spec, child.n_transfer) == both_stages == 24
    # matched steps are other models than matched images (the budget enters the id)
    images = baseline_of({"fractions": [0, 0.5, 1]})
    assert not {t.model_id for t in images} & {t.model_id for t in plan.baseline}
    # 4 images x 8 = 32 samples an epoch (8 steps of 4): a 24-step budget is 3 epochs
    mixture = plan.baseline[1]
    assert trial_passes(mixture, 2, 4) == 24 * 4 == 3 * 32
    lines = dry_run(spec).splitlines()
    assert (
        "baseline: 3 trials training on images per trial: 3 x 4 (288 augmented image passes "
        "in steps matched to the transfer arm: 16, 24, 32 steps)"
    ) in lines


def test_a_partial_last_epoch_counts_its_steps_passes():
    trial = baseline_of({"fractions": [0.5], "match": "steps"})[0]  # 24 steps
    odd = Trial(**{**trial.to_dict(), "max_steps": 11})  # 8 + 3 steps: 32 + 3 x 4 samples
    assert trial_passes(odd, 2, 4) == 32 + 12


def test_early_stopping_enters_the_ids_and_the_dry_run():
    training = {"max_epochs": 20, "patience": 3, "min_delta": 0.001, "batch_size": 4}
    spec = parse_study_spec(edited(training=training), source="tests")
    plan = plan_trials(spec)
    assert not {t.model_id for t in plan.all()} & set(PINNED_IDS)
    lines = dry_run(spec).splitlines()
    assert lines[2].startswith(
        "training: early stopping on the validation loss after 3 epochs without an "
        "improvement > 0.001, at most 20 epochs"
    )
    # at most 20 epochs of 4 images x 8 symmetries
    assert lines[3] == (
        "pretrain: 1 trials training on images per trial: 1 x 4 "
        "(640 augmented image passes at most, over at most 20 epochs)"
    )
    assert lines[-1].startswith("transfer.parents: shared (this spec): 4 trainings, at most ")


# ----------------------------------------------------------------------------- replicates


def test_replicate_pretrain_seeds_are_distinct_parents_of_distinct_children():
    plan = plan_of(edited(pretrain={**SPEC["pretrain"], "seeds": [0, 1, 2]}))
    assert plan.counts() == {"pretrain": 3, "transfer": 6, "baseline": 1}
    parents = {p.model_id: p for p in plan.pretrain}
    assert len(parents) == 3 and [p.seed for p in plan.pretrain] == [0, 1, 2]
    assert len({t.model_id for t in plan.transfer}) == 6
    assert set(plan.children()) == set(parents)  # every seed is a parent of its own
    for child in plan.transfer:
        assert child.parent_seed == parents[child.parent_id].seed == child.seed
    # the same setting on three parents: three replicates with three parent seeds
    same_setting = [t for t in plan.transfer if t.freeze == "none"]
    assert sorted(t.parent_seed for t in same_setting) == [0, 1, 2]
    assert len({t.parent_id for t in same_setting}) == 3


def test_transfer_seeds_replicate_the_transfer_stage_on_each_parent():
    base = plan_of(SPEC)
    plan = plan_of(edited(transfer={**SPEC["transfer"], "seeds": [5, 6]}))
    (parent,) = plan.pretrain
    assert parent.model_id == PINNED_PRETRAIN_ID
    assert [(t.freeze, t.seed) for t in plan.transfer] == [
        ("none", 5), ("none", 6), ("encoder", 5), ("encoder", 6)
    ]  # fmt: skip
    assert {t.parent_seed for t in plan.transfer} == {parent.seed}
    assert {t.parent_id for t in plan.transfer} == {parent.model_id}
    ids = {t.model_id for t in plan.transfer}
    assert len(ids) == 4 and not ids & {t.model_id for t in base.transfer}
    assert "parent seed=0" in plan.transfer[0].describe()


def test_baseline_pairs_choose_the_mixtures_domains():
    import yaml

    raw = yaml.safe_load(Path("sweeps/laptop.yaml").read_text())
    raw["domains"] = {"pretrain": ["-10", "0"], "transfer": ["-10", "0", "5"]}
    raw["baseline"] = {"pairs": [["-10", "5"]], "fractions": [0.25], "n_images": 24,
                       "lr": [1e-3], "seeds": [0, 1]}  # fmt: skip
    plan = plan_trials(parse_study_spec(raw))
    assert {(t.pretrain_domain, t.transfer_domain) for t in plan.baseline} == {("-10", "5")}
    assert [(t.n_pretrain, t.n_transfer, t.seed) for t in plan.baseline] == [(18, 6, 0), (18, 6, 1)]
    raw["baseline"].pop("pairs")
    every = plan_trials(parse_study_spec(raw)).baseline
    assert len(every) > len(plan.baseline)


def test_replicate_baseline_seeds_are_distinct_models():
    trials = baseline_of({"fractions": [0.5], "seeds": [0, 1, 2]})
    assert [t.seed for t in trials] == [0, 1, 2] and len({t.model_id for t in trials}) == 3


def test_random_target_images_enter_the_ids_of_the_trials_they_concern_only():
    """``training.target_images: random`` draws the target images of transfer trials and
    baselines with their seeds: their ids change, the pretrained models stay shared."""
    first = plan_of(SPEC)
    drawn = plan_of(edited(training={**SPEC["training"], "target_images": "random"}))
    assert [t.model_id for t in drawn.pretrain] == [PINNED_PRETRAIN_ID]
    assert [t.model_id for t in first.all()] == PINNED_IDS
    for a, b in zip(first.transfer + first.baseline, drawn.transfer + drawn.baseline, strict=True):
        assert a.model_id != b.model_id and a.parent_id == b.parent_id
        assert (a.draw_seed, b.draw_seed, b.target_images) == (None, b.seed, "random")
        assert b.describe().endswith(" drawn")
    assert drawn.pretrain[0].draw_seed is None


def test_random_target_images_need_a_known_value():
    with pytest.raises(
        ValueError, match=r"training\.target_images: Input should be 'first' or 'random'"
    ):
        plan_of(edited(training={**SPEC["training"], "target_images": "shuffled"}))


def test_min_steps_enters_the_ids_only_when_set():
    stopping = {**SPEC["training"], "epochs": None, "max_epochs": 4, "patience": 2}
    plain = plan_of(edited(training=stopping))
    unset = plan_of(edited(training={**stopping, "min_steps": None}))
    assert [t.model_id for t in unset.all()] == [t.model_id for t in plain.all()]
    floor = plan_of(edited(training={**stopping, "min_steps": 50}))
    assert not {t.model_id for t in floor.all()} & {t.model_id for t in plain.all()}
    with pytest.raises(ValueError, match=r"training\.min_steps: needs early stopping"):
        plan_of(edited(training={**SPEC["training"], "min_steps": 50}))
