"""The rounds of an adaptive study: train, look, add replicates, store the round, repeat.

:func:`run_rounds` is the loop, whatever trains the models: :func:`run_adaptive` trains
them with the sweep engine (:func:`hrtem_ray.sweep.run.run_sweep`), and
:mod:`hrtem_ray.sweep.replay` draws them from a table instead. Each round is stored as
``<study_root>/adaptive/round-NNN.json`` once its look is made (:func:`round_record`):
the replicates it trained (``allocation``), the findings table of its look, what it
added and why, what was spent, and the allocation of the next round (or why the study
stopped). A round is a pure function of the models of its allocation (the look's
bootstrap is seeded by the round's number), so a killed study resumes where it was: the
last stored round says what to train next, models already trained are skipped by the
sweep, and a round whose look was not stored yet is made again from the same models,
with the same decisions. A study that stopped on its budget, its rounds or futile
findings looks again at its last round when it is resumed, so that a raised budget
(``adaptive.max_models`` ...) carries one stopped by its budget or by futility on; every
other ``adaptive`` field, ``max_rounds`` included (it sets every look's level), must stay
as the stored rounds were made (refused otherwise, naming the field), so a study stopped
at ``max_rounds`` has spent its looks and stops again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl

from hrtem_ray.analysis.sequential import Schedule, sequential_look
from hrtem_ray.spec.adaptive import FINDING_KEYS, AdaptiveSpec
from hrtem_ray.spec.base import SpecError
from hrtem_ray.spec.study import StudySpec
from hrtem_ray.spec.types import TRAINED_PHASES
from hrtem_ray.store import storage
from hrtem_ray.store.layout import ADAPTIVE_DIR
from hrtem_ray.sweep.adaptive import Budget, Design, plan_additions
from hrtem_ray.sweep.results import read_results
from hrtem_ray.sweep.run import SweepReport, run_sweep
from hrtem_ray.sweep.trials import (
    TrialPlan,
    phase_line,
    plan_replicates,
    plan_trials,
    training_line,
)

log = logging.getLogger(__name__)

#: Stop reasons a resumed study looks at again (a raised budget may carry it on).
RESUMABLE_STOPS = ("budget spent", "max_rounds reached", "every open finding is futile")
#: Every reason the rounds stop (the last one only where replicates are limited: replays).
STOPS = ("every targeted finding decided", *RESUMABLE_STOPS, "no replicates left")
#: The ``adaptive`` fields the stored rounds were made with, which a resume must keep.
FIXED_FIELDS = ("findings", "replicate_batch", "first_seeds", "level", "max_rounds", "n_boot")
#: The sequential rule the rounds are looked at with (stored, so that rounds made by
#: another rule are refused rather than mixed).
RULE = "pocock"


@dataclass(frozen=True)
class Settings:
    """Everything the rounds depend on: targets, the rule's settings, design and budget."""

    targets: tuple[str, ...]
    level: float
    batch: int
    first_seeds: int
    max_rounds: int
    n_boot: int
    design: Design
    budget: Budget

    @property
    def schedule(self) -> Schedule:
        """The error rate of each look (Pocock's boundary over ``max_rounds`` looks)."""
        return Schedule(self.level, self.max_rounds, self.first_seeds, self.batch)

    def fixed(self) -> dict[str, Any]:
        """The settings a resumed study must share with its stored rounds."""
        return {"rule": RULE, "findings": list(self.targets), "replicate_batch": self.batch,
                "first_seeds": self.first_seeds, "level": self.level,
                "max_rounds": self.max_rounds, "n_boot": self.n_boot,
                "parents": self.design.parents, "configurations": _digest(list(self.design.configs))}  # fmt: skip


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def targets(spec: StudySpec) -> tuple[str, ...]:
    """The findings an adaptive spec decides: ``adaptive.findings``, or all that apply."""
    chosen = spec.adaptive.findings if spec.adaptive is not None else None
    if chosen is not None:
        return tuple(chosen)
    needs = spec.finding_requirements()
    return tuple(k for k in FINDING_KEYS if needs[k] is None)


def design_of(spec: StudySpec, grid: TrialPlan | None = None) -> Design:
    """The configurations of a spec's grids (:class:`~hrtem_ray.sweep.adaptive.Design`);
    ``grid``: the spec's :func:`~hrtem_ray.sweep.trials.plan_trials`, if planned already."""
    transfer = spec.transfer
    parents = transfer.parents if transfer is not None else "shared"
    per_parent = len(transfer.seeds) if transfer is not None and transfer.seeds else 1
    return Design.from_plan(plan_trials(spec) if grid is None else grid, parents, per_parent)


def settings_of(spec: StudySpec, grid: TrialPlan | None = None) -> Settings:
    """The :class:`Settings` of an adaptive spec, its budget resolved.

    Without any budget, ``max_models`` is the spec's fixed grid (its model count), or
    twice the first round when that is more. ``grid``: the fixed grid's
    :func:`~hrtem_ray.sweep.trials.plan_trials`, if planned already (a paper preset's
    takes seconds).

    Raises
    ------
    hrtem_ray.spec.base.SpecError
        If ``adaptive.max_models`` is below the first round's trainings.
    """
    adaptive = spec.adaptive or AdaptiveSpec()
    grid = plan_trials(spec) if grid is None else grid
    design, chosen = design_of(spec, grid), targets(spec)
    first = sum(design.trainings(design.first_allocation(chosen, adaptive.first_seeds)).values())
    max_models = adaptive.max_models
    if max_models is None and adaptive.max_cpu_hours is None and adaptive.max_gpu_hours is None:
        max_models = max(len(grid.all()), 2 * first)
    if max_models is not None and max_models < first:
        raise SpecError(
            f"adaptive.max_models: {max_models} is below the first round's {first} trainings "
            f"({adaptive.first_seeds} seeds of each configuration findings "
            f"{', '.join(chosen)} need); allowed: at least {first}, or fewer adaptive.findings"
        )
    budget = Budget(max_models, adaptive.max_cpu_hours, adaptive.max_gpu_hours,
                    spec.resources.cpu, spec.resources.gpu)  # fmt: skip
    return Settings(chosen, adaptive.level, adaptive.replicate_batch, adaptive.first_seeds,
                    adaptive.max_rounds, adaptive.n_boot, design, budget)  # fmt: skip


class RoundStore(Protocol):
    """Where the round records live."""

    def load(self) -> list[dict]: ...

    def save(self, record: dict) -> None: ...


class StoredRounds:
    """Round records as ``<study_root>/adaptive/round-NNN.json`` (written atomically)."""

    def __init__(self, study_root: str) -> None:
        self.folder = storage.join(study_root, ADAPTIVE_DIR)

    def path(self, number: int) -> str:
        return storage.join(self.folder, f"round-{number:03d}.json")

    def load(self) -> list[dict]:
        """Every stored round, in order (an empty list before the first)."""
        if not storage.exists(self.folder):
            return []
        names = sorted(n for n in storage.listdir(self.folder) if _is_round_file(n))
        return [storage.read_json(storage.join(self.folder, n)) for n in names]

    def save(self, record: dict) -> None:
        storage.write_json_atomic(self.path(int(record["round"])), record)


def _is_round_file(name: str) -> bool:
    stem = name.rsplit("/", 1)[-1]
    return stem.startswith("round-") and stem.endswith(".json") and stem[6:-5].isdigit()


class MemoryRounds:
    """Round records in memory (replays)."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def load(self) -> list[dict]:
        return list(self.records)

    def save(self, record: dict) -> None:
        self.records = [r for r in self.records if r["round"] < record["round"]] + [record]


def _seconds(table: pl.DataFrame) -> tuple[float, dict[str, float]]:
    """Training seconds of a table's models, in all and their mean per phase."""
    if "train_seconds" not in table.columns or table.is_empty():
        return 0.0, {}
    models = (  # in a fixed order: the sums are the same in every run
        table.with_columns(pl.col("model_id").cast(pl.String))
        .unique("model_id")
        .sort("model_id")
        .select(pl.col("phase").cast(pl.String), pl.col("train_seconds").cast(pl.Float64))
    )
    means = (
        models.group_by("phase", maintain_order=True)
        .agg(pl.col("train_seconds").mean())
        .drop_nulls()
    )
    total = models.get_column("train_seconds").fill_null(0.0).sum()
    return float(total), {p: float(s) for p, s in means.iter_rows()}


def results_digest(table: pl.DataFrame) -> str:
    """A digest of the models and losses a look was made from (``results_digest``)."""
    rows = (
        table.select(pl.col("model_id", "eval_domain").cast(pl.String), pl.col("loss"))
        .unique()
        .sort("model_id", "eval_domain")
    )
    text = "\n".join(f"{m},{e},{loss!r}" for m, e, loss in rows.iter_rows())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def round_record(
    number: int,
    table: pl.DataFrame,
    allocation: Mapping[str, int],
    settings: Settings,
    earlier: Sequence[dict],
) -> dict:
    """Look at round ``number``'s models and decide what the next round adds.

    Parameters
    ----------
    number
        The round (1, 2, ...): its look's level is ``settings.schedule``'s.
    table
        The results of the models of ``allocation``.
    allocation
        Configuration key -> replicates trained.
    settings
        The study's :class:`Settings`.
    earlier
        The records of rounds ``1 .. number - 1``.

    Returns
    -------
    dict
        The round record (module docstring); ``stop`` is None when a next round follows,
        with ``next_allocation``.
    """
    decided = dict(earlier[-1]["decided"]) if earlier else {}
    look = sequential_look(table, number, settings.level, settings.targets, settings.n_boot,
                           alpha=settings.schedule.alpha(number))  # fmt: skip
    rows = []
    for row in look.table().iter_rows(named=True):
        key = row["finding"]
        if key not in decided and row["verdict"] != "undecidable":
            decided[key] = {"verdict": row["verdict"], "round": number,
                            "ci_low": row["ci_low"], "ci_high": row["ci_high"]}  # fmt: skip
        final = decided.get(key, {}).get("verdict", "undecidable")
        rows.append(
            {**row, "final_verdict": final, "decided_round": decided.get(key, {}).get("round")}
        )
    open_findings = [k for k in settings.targets if k not in decided]
    trainings = settings.design.trainings(allocation)
    seconds, per_phase = _seconds(table)
    spent = settings.budget.spent(sum(trainings.values()), seconds)
    plan = None
    stop = None
    if not open_findings:
        stop = "every targeted finding decided"
    elif number >= settings.max_rounds:
        stop = "max_rounds reached"
    else:
        mean = seconds / max(table.get_column("model_id").n_unique(), 1) if seconds else 0.0
        plan = plan_additions(
            look, open_findings, settings.design, allocation, settings.budget, spent,
            {p: per_phase.get(p, mean) for p in TRAINED_PHASES}, settings.batch,
            earlier[-1]["futile"] if earlier else None,
            next_alpha=settings.schedule.alpha(number + 1),
        )  # fmt: skip
        if not plan.additions:
            every = plan.futile and set(plan.futile) == set(open_findings)
            stop = (
                "every open finding is futile"
                if every
                else "no replicates left"
                if plan.exhausted
                else "budget spent"
            )
    return {
        "round": number,
        "level": settings.level,
        "look_alpha": look.alpha,
        "alpha_spent": settings.schedule.spent(number),
        "settings": settings.fixed(),
        "budget": settings.budget.text(),
        "allocation": dict(allocation),
        "trainings": sum(trainings.values()),
        "trainings_by_phase": trainings,
        "cpu_hours": spent["cpu_hours"],
        "gpu_hours": spent["gpu_hours"],
        "results_digest": results_digest(table),
        "findings": rows,
        "decided": decided,
        "open": open_findings,
        "futile": plan.futile if plan else {},
        "projections": plan.projections if plan else {},
        "added": [a.to_dict() for a in plan.additions] if plan and not stop else [],
        "next_allocation": plan.allocation if plan and not stop else None,
        "stop": stop,
    }


def progress_line(record: dict, settings: Settings) -> str:
    """The progress line of a round: decided / open findings, trainings of the budget."""
    decided = ", ".join(f"{k} {v['verdict']}" for k, v in record["decided"].items()) or "none"
    line = (
        f"round {record['round']}: {len(record['decided'])} of {len(settings.targets)} findings "
        f"decided ({decided}); open: {', '.join(record['open']) or 'none'}; "
        f"{record['trainings']} models trained (budget: {record['budget']})"
    )
    if record["stop"]:
        return f"{line}; stopped: {record['stop']}"
    added = record["added"]
    extra = sum(a["trainings"] for a in added)
    configs = "configuration" if len(added) == 1 else "configurations"
    return f"{line}; next round adds {extra} trainings to {len(added)} {configs}"


def _check_resume(records: Sequence[dict], settings: Settings) -> None:
    """Refuse stored rounds made with other fixed settings (naming the field)."""
    if not records:
        return
    stored, now = records[-1]["settings"], settings.fixed()
    names = {"rule": "the sequential rule (rounds of an earlier hrtem-ray version)",
             "parents": "transfer.parents",
             "configurations": "the grids (domains, pretrain, transfer, baseline)"}  # fmt: skip
    for name, value in now.items():
        if stored.get(name) != value:
            where = f"adaptive.{name}" if name in FIXED_FIELDS else names.get(name, name)
            raise SpecError(
                f"{where}: the stored rounds (adaptive/round-*.json) were made with "
                f"{stored.get(name)!r}, the spec now gives {value!r}; keep it as it was, or "
                "move adaptive/ away to start the rounds again (trained models are reused)"
            )


def run_rounds(
    settings: Settings,
    train: Callable[[dict[str, int]], pl.DataFrame | None],
    store: RoundStore,
) -> list[dict]:
    """Train and look round after round until the study stops; returns every round record.

    ``train(allocation)`` trains (or draws) the models of an allocation and returns their
    results, or None when it could not finish them (interrupted, trials failed): the
    loop then returns without a record for that round. Resumes from ``store``.

    Raises
    ------
    hrtem_ray.spec.base.SpecError
        If the stored rounds were made with other settings.
    """
    records = store.load()
    _check_resume(records, settings)
    if records and records[-1]["stop"] in RESUMABLE_STOPS:
        records = records[:-1]  # look again: a raised budget may carry the study on
        allocation = (
            records[-1]["next_allocation"]
            if records
            else settings.design.first_allocation(settings.targets, settings.first_seeds)
        )
    elif records and records[-1]["stop"]:
        return records
    elif records:
        allocation = records[-1]["next_allocation"]
    else:
        allocation = settings.design.first_allocation(settings.targets, settings.first_seeds)
    while True:
        number = len(records) + 1
        table = train(dict(allocation))
        if table is None:
            return records
        record = round_record(number, table, allocation, settings, records)
        store.save(record)
        records.append(record)
        log.info(progress_line(record, settings))
        if record["stop"]:
            return records
        allocation = record["next_allocation"]


def current_allocation(spec: StudySpec, study_root: str) -> dict[str, int]:
    """The replicates of an adaptive study's latest round (its first round before any)."""
    records = StoredRounds(study_root).load()
    if records:
        last = records[-1]
        return (
            last["next_allocation"] if last["next_allocation"] is not None else last["allocation"]
        )
    settings = settings_of(spec)
    return settings.design.first_allocation(settings.targets, settings.first_seeds)


def current_plan(spec: StudySpec, study_root: str) -> TrialPlan:
    """The trials of an adaptive study's latest round (:func:`current_allocation`)."""
    return plan_replicates(spec, current_allocation(spec, study_root))


def dry_run(spec: StudySpec) -> str:
    """The first round of an adaptive study and its budget, without running anything."""
    grid = plan_trials(spec)
    settings = settings_of(spec, grid)
    design = settings.design
    allocation = design.first_allocation(settings.targets, settings.first_seeds)
    plan = plan_replicates(spec, allocation)
    counts = plan.counts()
    each = f"{100 * (1 - settings.schedule.alpha(1)):.1f}%"
    fixed = len(grid.all())
    lines = [
        f"study {spec.name} ({spec.dataset.axis}): "
        + ", ".join(f"{counts[p]} {p}" for p in TRAINED_PHASES)
        + f", {len(plan.all())} models in round 1 of an adaptive study",
        f"adaptive: decides findings {', '.join(settings.targets)} at level {settings.level:g} "
        f"over all rounds: at most {settings.max_rounds} rounds, each look deciding at {each} "
        "(Pocock's boundary)",
        f"round 1: {settings.first_seeds} seeds of each of the "
        f"{len(design.needed(settings.targets))} configurations the findings need "
        f"({len(design.configs)} in the grid)",
        f"budget: {settings.budget.text()}; round 1 uses {len(plan.all())} trainings "
        f"(the fixed grid: {fixed})",
        f"each later round adds {settings.batch} seeds to the configurations that narrow the "
        "open findings' intervals most",
        training_line(spec),
    ]
    lines += [phase_line(spec, p, getattr(plan, p)) for p in TRAINED_PHASES if getattr(plan, p)]
    return "\n".join(lines)


def plan_rows(table: pl.DataFrame, plan: TrialPlan) -> pl.DataFrame:
    """The rows of ``table`` that belong to ``plan``'s models (``model_id`` and ``config_hash``)."""
    keys = pl.DataFrame(
        {"model_id": [t.model_id for t in plan.all()],
         "config_hash": [t.config_hash for t in plan.all()]},
        schema={"model_id": pl.String, "config_hash": pl.String},
    )  # fmt: skip
    typed = table.with_columns(pl.col("model_id", "config_hash").cast(pl.String))
    return typed.join(keys, on=["model_id", "config_hash"], how="semi")


def run_adaptive(spec: StudySpec, *, study_root: str, dataset_root: str) -> SweepReport:
    """Run an adaptive study's rounds on the current Ray session (resumes stored rounds).

    Each round's trials run through :func:`~hrtem_ray.sweep.run.run_sweep`; a round
    whose trials do not all finish (interrupted, failed for good) ends the rounds without
    a look, as a fixed grid's sweep ends. Returns the last round's
    :class:`~hrtem_ray.sweep.run.SweepReport`, its ``completed`` and ``seconds`` summed
    over the rounds run now.
    """
    settings = settings_of(spec)
    reports: list[SweepReport] = []

    def train(allocation: dict[str, int]) -> pl.DataFrame | None:
        plan = plan_replicates(spec, allocation)
        report = run_sweep(spec, study_root=study_root, dataset_root=dataset_root, plan=plan)
        reports.append(report)
        if not report.finished:
            return None
        return plan_rows(read_results(study_root), plan)

    log.info(
        f"adaptive study {spec.name}: findings {', '.join(settings.targets)}, level "
        f"{settings.level:g}, budget {settings.budget.text()}"
    )
    records = run_rounds(settings, train, StoredRounds(study_root))
    if not reports:  # stopped before: make sure the final round's models are all there
        plan = current_plan(spec, study_root)
        reports.append(run_sweep(spec, study_root=study_root, dataset_root=dataset_root, plan=plan))
    report = reports[-1]
    report.completed = sum(r.completed for r in reports)
    report.already_done = max(0, report.total - report.completed)
    report.seconds = sum(r.seconds for r in reports)
    if records and records[-1]["stop"] and report.finished:
        last = records[-1]
        log.info(
            f"adaptive study stopped after round {last['round']}: {last['stop']}; "
            f"{last['trainings']} models trained"
        )
    return report
