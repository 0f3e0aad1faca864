"""Trial planning (no Ray, no data): counts, order, stable ids, dry run.

Resuming relies on ids that never change for the same configuration: a sweep skips every
model whose result file, named by its ``model_id``, exists. One id is pinned below as a
literal, so that any change of how ids are derived fails here first.
"""

from __future__ import annotations

import copy

import pytest

from hrtem_ray.config import parse_study_spec
from hrtem_ray.trials import Trial, baseline_pairs, dry_run, plan_trials

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
        "pretrain: 1 trials training on images per trial: 1 x 4 "
        "(64 augmented image passes over 2 epochs)",
        "transfer: 2 trials training on images per trial: 2 x 2 "
        "(64 augmented image passes over 2 epochs)",
        "baseline: 1 trials training on images per trial: 1 x 4 "
        "(64 augmented image passes over 2 epochs)",
    ]
