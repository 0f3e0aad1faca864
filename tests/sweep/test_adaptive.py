"""Adaptive rounds without Ray: replicate plans, what an addition costs, the stored rounds.

The rounds run on :class:`hrtem_ray.sweep.replay.SyntheticStudy` tables (every finding's
measure set exactly, plus replicate noise) in place of training.
"""

from __future__ import annotations

import copy
from collections import Counter

import pytest

from hrtem_ray.spec.base import SpecError
from hrtem_ray.spec.config import load_study_spec
from hrtem_ray.sweep.adaptive import Budget, Design
from hrtem_ray.sweep.replay import TRUE_EFFECTS, SyntheticStudy
from hrtem_ray.sweep.rounds import MemoryRounds, Settings, StoredRounds, design_of, run_rounds
from hrtem_ray.sweep.trials import plan_replicates, plan_trials

KEYS = ("1", "2a", "2b", "2c", "3", "4", "5a", "5b", "5c")


@pytest.fixture(scope="module")
def laptop():
    return load_study_spec("sweeps/laptop.yaml")


def _variant(spec, **transfer):
    return spec.model_copy(update={"transfer": spec.transfer.model_copy(update=transfer)})


@pytest.mark.parametrize("transfer", [{}, {"parents": "per_model"}, {"seeds": [5, 6]}])
def test_replicates_at_the_grid_counts_plan_the_fixed_grid(laptop, transfer):
    """Same model ids: an adaptive study reuses whatever a fixed grid of the spec trained."""
    spec = _variant(laptop, **transfer)
    fixed = plan_trials(spec)
    own = fixed.transfer + fixed.baseline if transfer.get("parents") else fixed.all()
    counts = Counter(t.config for t in own)
    assert sorted(t.model_id for t in plan_replicates(spec, counts).all()) == sorted(
        t.model_id for t in fixed.all()
    )


def test_a_configuration_keeps_its_first_replicates_when_more_are_added(laptop):
    design = design_of(laptop)
    two = design.first_allocation(KEYS, 2)
    four = {k: n + 2 for k, n in two.items()}
    before = {t.model_id for t in plan_replicates(laptop, two).all()}
    after = {t.model_id for t in plan_replicates(laptop, four).all()}
    assert before < after
    assert len(after) == sum(design.trainings(four).values())


def test_added_transfer_replicates_reuse_shared_parents_and_get_their_own_under_per_model(laptop):
    shared, per_model = design_of(laptop), design_of(_variant(laptop, parents="per_model"))
    children = shared.children["pretrain -10>- lr=0.001/- n=24/- none"]
    first, sibling = children[0], children[1]
    allocation = shared.first_allocation(KEYS, 2)  # 2 parents per pretrain configuration
    # the third replicate of a child needs a third parent; its sibling's then reuses it
    assert shared.add(allocation, first, 1) == {"transfer": 1, "pretrain": 1}
    assert shared.add(allocation, sibling, 1) == {"transfer": 1, "pretrain": 0}
    allocation = per_model.first_allocation(KEYS, 2)
    assert per_model.add(allocation, first, 1) == {"transfer": 1, "pretrain": 1}
    assert per_model.add(allocation, sibling, 1) == {"transfer": 1, "pretrain": 1}


def test_the_first_round_trains_only_what_the_targeted_findings_need(laptop):
    design = design_of(laptop)

    def round_one(*findings):
        return design.trainings(design.first_allocation(findings, 2))

    assert round_one("2a", "2b") == {"pretrain": 6, "transfer": 0, "baseline": 0}
    # finding 3: the unfrozen transfer -10 -> 5 at 6 images and its mixture (and 2 parents)
    assert round_one("3") == {"pretrain": 2, "transfer": 2, "baseline": 2}
    # 5a / 5b: the decoder- / encoder-frozen transfers and their unfrozen pairs (5 each)
    assert round_one("5b") == {"pretrain": 6, "transfer": 20, "baseline": 0}
    assert round_one("5a") == {"pretrain": 6, "transfer": 20, "baseline": 0}
    # 1 and 4 spread over every transfer configuration: all 15 (3 freezing options)
    assert round_one(*KEYS[:-3], "5b", "5c") == {"pretrain": 6, "transfer": 30, "baseline": 2}


def _settings(study: SyntheticStudy, max_models: int = 200, **overrides) -> Settings:
    fields = {"targets": KEYS, "level": 0.95, "batch": 2, "first_seeds": 2, "max_rounds": 6,
              "n_boot": 400, "design": study.design(), "budget": Budget(max_models)}  # fmt: skip
    return Settings(**{**fields, **overrides})


def _interrupted_at(round_number: int, study: SyntheticStudy):
    """A trainer that stops (as an interrupted sweep does) when asked for that round."""
    calls = []

    def train(allocation):
        calls.append(allocation)
        return None if len(calls) == round_number else study.table(allocation)

    return train


def test_a_killed_study_resumes_to_the_same_rounds(tmp_path):
    """Stopped before round 3's look (its models were being trained), then run again from
    the stored rounds: every round record is the one of an uninterrupted run."""
    study = SyntheticStudy(TRUE_EFFECTS, seed=3)
    whole = run_rounds(_settings(study), study.table, MemoryRounds())
    assert len(whole) >= 3 and whole[-1]["stop"]
    store = StoredRounds(str(tmp_path))
    partial = run_rounds(_settings(study), _interrupted_at(3, study), store)
    assert [r["round"] for r in partial] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "adaptive").iterdir()) == [
        "round-001.json",
        "round-002.json",
    ]
    resumed = run_rounds(_settings(study), study.table, store)
    assert resumed == whole
    assert store.load() == whole


def test_a_round_says_what_it_added_and_why():
    study = SyntheticStudy(TRUE_EFFECTS, seed=3)
    first = run_rounds(_settings(study, max_rounds=1), study.table, MemoryRounds())[0]
    assert first["stop"] == "max_rounds reached" and first["next_allocation"] is None
    two = run_rounds(_settings(study, max_rounds=2), study.table, MemoryRounds())[0]
    assert two["stop"] is None and two["added"]
    for added in two["added"]:
        assert set(added) == {"config", "replicates", "trainings", "for", "why"}
        assert set(added["for"]) <= set(two["open"]) and added["why"].startswith("narrows ")
        assert two["next_allocation"][added["config"]] > two["allocation"].get(added["config"], 0)
    rows = {row["finding"]: row for row in two["findings"]}
    assert set(rows) == set(KEYS) and set(two["decided"]) | set(two["open"]) == set(KEYS)
    # two looks: each at Pocock's 2.178 standard errors (2.94%), together 5%
    assert two["trainings"] == 62 and two["look_alpha"] == pytest.approx(0.0294, abs=2e-4)
    assert two["alpha_spent"] < 0.05 and first["alpha_spent"] == pytest.approx(0.05)


def test_the_budget_stops_the_rounds_and_a_raised_budget_carries_them_on():
    study = SyntheticStudy(TRUE_EFFECTS, seed=3)
    store = MemoryRounds()
    small = run_rounds(_settings(study, max_models=62), study.table, store)
    assert len(small) == 1 and small[-1]["stop"] == "budget spent"
    more = run_rounds(_settings(study, max_models=200), study.table, store)
    assert len(more) > 1 and more[-1]["trainings"] <= 200
    assert more[0]["findings"] == small[0]["findings"]  # the same look, other additions


def test_stored_rounds_refuse_other_fixed_settings():
    study = SyntheticStudy(TRUE_EFFECTS, seed=3)
    store = MemoryRounds()
    run_rounds(_settings(study, max_rounds=1), study.table, store)
    with pytest.raises(SpecError, match="adaptive.level: the stored rounds"):
        run_rounds(_settings(study, level=0.9), study.table, store)
    # max_rounds sets every look's level (Pocock's boundary): raising it later is refused
    with pytest.raises(SpecError, match="adaptive.max_rounds: the stored rounds"):
        run_rounds(_settings(study, max_rounds=3), study.table, store)
    # rounds looked at by the earlier rule (no "rule" stored) are not mixed with this one's
    store.records[0]["settings"].pop("rule")
    with pytest.raises(SpecError, match="the sequential rule .*: the stored rounds"):
        run_rounds(_settings(study, max_rounds=1), study.table, store)


def test_design_counts_trainings_with_parents():
    design = Design.from_plan(plan_trials(load_study_spec("sweeps/laptop.yaml")))
    fixed = {k: 3 for k, c in design.configs.items() if c.phase != "pretrain"}
    assert design.trainings(fixed) == {"pretrain": 9, "transfer": 45, "baseline": 3}
    doubled = copy.deepcopy(fixed) | {"pretrain 0>- lr=0.001/- n=24/- none": 5}
    assert design.trainings(doubled)["pretrain"] == 11


def test_an_estimate_near_the_edge_is_not_futile_while_its_interval_is_wide():
    """Futility is judged optimistically: the measure may lie a standard error further
    from the edge than a 2-seed estimate. An estimate exactly on the edge with se 0.05 may
    still be decided (with se about 0.05 / 2.45 at 98.6%); one with se 0 may not."""
    from hrtem_ray.analysis.sequential import Interval, _narrowing

    wide = _narrowing("5b", Interval(0.0, 0.05, 3.0, {1: 0.0025}), 0.0, 0.0142, {1: 2}, 2)
    assert wide.floor == pytest.approx((0.05 / 2.453) ** 2, rel=1e-3)
    assert wide.required == 0.0  # where the estimate is now, nothing decides it
    sure = _narrowing("5b", Interval(0.0, 0.0, 3.0, {1: 0.0}), 0.0, 0.0142, {1: 2}, 2)
    assert sure.floor == 0.0
