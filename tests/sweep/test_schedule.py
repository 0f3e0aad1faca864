"""The dependent-trial schedule, driven by hand (no Ray): order, release, skipping, resume."""

from __future__ import annotations

from hrtem_ray.sweep.schedule import DependentTrialSchedule
from hrtem_ray.sweep.trials import Trial, TrialPlan


def pretrain(name: str, n: int) -> Trial:
    """A pretrain trial with model id ``name`` training on ``n`` images."""
    return Trial("pretrain", "0", None, 1e-3, None, n, None, "none", 0, None, model_id=name)


def transfer(name: str, parent: Trial) -> Trial:
    """A child of ``parent`` with model id ``name``."""
    return Trial(
        "transfer", "0", "10", 1e-3, 1e-4, parent.n_pretrain, 2, "none", 0, parent.model_id,
        model_id=name,
    )  # fmt: skip


def baseline(name: str, n: int) -> Trial:
    """A baseline trial with model id ``name`` training on ``n`` + ``n`` images."""
    return Trial("baseline", "0", "10", 1e-3, None, n, n, "none", 0, None, model_id=name)


SHORT, LONG, MID = pretrain("short", 2), pretrain("long", 16), pretrain("mid", 4)
PLAN = TrialPlan(
    pretrain=[SHORT, LONG, MID],
    transfer=[transfer("short-a", SHORT), transfer("short-b", SHORT), transfer("long-a", LONG)],
    baseline=[baseline("b-small", 1), baseline("b-big", 8)],
)


def drain(schedule: DependentTrialSchedule, prefix: str = "k") -> list[str]:
    """Hand out every trial that is ready now; their model ids, in order."""
    out = []
    while (trial := schedule.next_trial(f"{prefix}{len(out)}")) is not None:
        out.append(trial.model_id)
    return out


def test_pretrain_longest_first_then_baselines_longest_first():
    schedule = DependentTrialSchedule(PLAN)
    assert schedule.pending == 8
    assert drain(schedule) == ["long", "mid", "short", "b-big", "b-small"]
    assert schedule.running == 5 and schedule.pending == 3
    assert not schedule.finished  # children still wait for their parents


def test_equal_sizes_keep_the_plan_order():
    trials = [pretrain(f"p{i}", 4) for i in range(5)]
    schedule = DependentTrialSchedule(TrialPlan(trials, [], []))
    assert drain(schedule) == [f"p{i}" for i in range(5)]


def test_children_are_released_by_their_own_parent_only_and_before_baselines():
    schedule = DependentTrialSchedule(PLAN)
    assert [schedule.next_trial(k).model_id for k in ("t-long", "t-mid", "t-short")] == [
        "long",
        "mid",
        "short",
    ]
    schedule.complete("t-mid", failed=False)  # no children: releases nothing
    schedule.complete("t-short", failed=False)
    # the short parent's children come before the queued baselines; long's child still waits
    assert drain(schedule) == ["short-a", "short-b", "b-big", "b-small"]
    assert schedule.pending == 1
    schedule.complete("t-long", failed=False)
    assert drain(schedule, "again") == ["long-a"]
    assert schedule.pending == 0 and not schedule.finished
    for key in ("k0", "k1", "k2", "k3", "again0"):
        schedule.complete(key, failed=False)
    assert schedule.finished and schedule.running == 0 and schedule.skipped == []


def test_children_of_a_failed_parent_are_skipped_with_the_reason():
    schedule = DependentTrialSchedule(PLAN)
    keys = {schedule.next_trial(k).model_id: k for k in ("a", "b", "c")}
    schedule.complete(keys["short"], failed=True)
    assert [(t.model_id, reason) for t, reason in schedule.skipped] == [
        ("short-a", "parent short failed"),
        ("short-b", "parent short failed"),
    ]
    assert schedule.pending == 3  # the long parent's child and two baselines
    schedule.complete(keys["long"], failed=False)
    schedule.complete(keys["mid"], failed=False)
    handed = drain(schedule)
    assert handed == ["long-a", "b-big", "b-small"]
    for i in range(len(handed)):
        schedule.complete(f"k{i}", failed=False)
    assert schedule.finished


def test_resume_skips_done_trials_and_releases_the_children_of_done_parents():
    schedule = DependentTrialSchedule(PLAN, done={"short", "short-a", "b-big"})
    # short is done: its remaining child is ready at once, after the pretrain queue
    assert drain(schedule) == ["long", "mid", "short-b", "b-small"]
    assert schedule.pending == 1  # long-a waits for long


def test_excluded_trials_are_skipped_with_their_children_and_not_reported():
    schedule = DependentTrialSchedule(PLAN, done={"mid"}, excluded={"long", "b-small"})
    assert drain(schedule) == ["short", "b-big"]
    assert schedule.pending == 2  # short's children
    schedule.complete("k0", failed=False)
    schedule.complete("k1", failed=False)
    assert drain(schedule, "c") == ["short-a", "short-b"]
    schedule.complete("c0", failed=False)
    schedule.complete("c1", failed=False)
    assert schedule.finished and schedule.skipped == []


def test_everything_done_is_finished_at_once_and_unknown_keys_are_ignored():
    schedule = DependentTrialSchedule(PLAN, done={t.model_id for t in PLAN.all()})
    assert schedule.finished and schedule.pending == 0
    assert schedule.next_trial("x") is None
    schedule.complete("never-handed-out", failed=True)
    assert schedule.skipped == []


def test_per_model_parents_each_release_only_their_own_child():
    """``transfer.parents: per_model``: one parent per child, each child released by its own."""
    from helpers import TINY_STUDY

    from hrtem_ray.spec.config import parse_study_spec
    from hrtem_ray.sweep.trials import plan_trials

    transfer = {**TINY_STUDY["transfer"], "parents": "per_model"}
    plan = plan_trials(parse_study_spec({**TINY_STUDY, "transfer": transfer}, source="tests"))
    assert len(plan.pretrain) == len(plan.transfer) == 8
    parent_of = {t.model_id: t.parent_id for t in plan.transfer}
    schedule = DependentTrialSchedule(TrialPlan(plan.pretrain, plan.transfer, []))
    keys = {schedule.next_trial(f"p{i}").model_id: f"p{i}" for i in range(8)}
    assert set(keys) == set(parent_of.values()) and schedule.next_trial("none") is None
    released = []
    for child, parent in parent_of.items():
        schedule.complete(keys[parent], failed=False)
        handed = drain(schedule, f"after-{parent}-")
        assert handed == [child]  # exactly its own child, at once
        released += handed
    assert released == list(parent_of) and schedule.pending == 0
    # a failed parent skips only its own child
    schedule = DependentTrialSchedule(TrialPlan(plan.pretrain, plan.transfer, []))
    first = schedule.next_trial("f").model_id
    schedule.complete("f", failed=True)
    assert [t.parent_id for t, _ in schedule.skipped] == [first]
    assert schedule.pending == 7 + 7
