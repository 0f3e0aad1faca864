"""The sweep engine: a study's trials on Ray Tune, with pipelined checkpoint handoff.

Pretrain and baseline trials start at once; every transfer trial is handed
out as soon as its own parent has finished and stored its checkpoint (no
barrier between the stages), by :class:`hrtem_ray.sweep.schedule.DependentTrialSchedule`
(pure scheduling) through :mod:`hrtem_ray.sweep.tune_adapter` (the Ray Tune searcher,
trainable and callbacks, imported only when Tune runs). Trials read their
parent's checkpoint from the study's storage, so parent and child may run on
different nodes.

Resuming is driven by what the storage holds: a trial whose result file
exists is done and never runs again; a pretrain model that is done releases its
children at once. Re-running the same command (or ``--resume``) after a crash
therefore finishes the study with exactly one row per (model, eval domain).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import polars as pl

from hrtem_ray.spec.study import StudySpec
from hrtem_ray.store import storage
from hrtem_ray.store.layout import STUDY_FILE
from hrtem_ray.sweep import results
from hrtem_ray.sweep.trials import TrialPlan, plan_trials

if TYPE_CHECKING:  # the adapter imports Ray Tune: only inside the functions that run it
    from hrtem_ray.sweep.tune_adapter import DependentTrialSearcher

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What a sweep did, counted over the models of the current plan only.

    Attributes
    ----------
    planned
        Models of the plan per phase.
    already_done
        Models of the plan that were done before this sweep started.
    completed
        Models of the plan this sweep finished.
    failed
        Failure records (``failures/*.json``) of plan models that are not done.
    seconds
        Wall time of the sweep.
    done
        Models of the plan done when the sweep ended.
    interrupted
        ``True`` when SIGINT / SIGTERM stopped the sweep before it ended.
    """

    planned: dict[str, int]
    already_done: int
    completed: int = 0
    failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    done: int = 0
    interrupted: bool = False

    @property
    def total(self) -> int:
        """Models in the plan."""
        return sum(self.planned.values())

    @property
    def unaccounted(self) -> int:
        """Models of the plan neither done nor recorded as failed (an interrupted sweep)."""
        return max(0, self.total - self.done - len(self.failed))

    @property
    def finished(self) -> bool:
        """Every model of the plan is done."""
        return self.done >= self.total


class StopRequest:
    """SIGINT / SIGTERM during a Ray Tune run: the first stops the sweep, a second aborts it.

    Ray Tune's own SIGINT handler is switched off (``TUNE_DISABLE_SIGINT_HANDLER``):
    it swallows the signal, lets ``Tuner.fit`` return normally and suggests
    ``Tuner.restore``, which hrtem-ray does not use. Instead the first signal sets
    :attr:`signum`, which :class:`hrtem_ray.sweep.tune_adapter.StopOnSignal` turns into a stop of every trial
    at Tune's next step; a second signal raises :class:`KeyboardInterrupt`.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """Handle SIGINT and SIGTERM with :meth:`_handle` (main thread only) while inside."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        saved_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for signum in saved:
            signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum, handler in saved.items():
                signal.signal(signum, handler)
            if saved_env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = saved_env


def trial_resources(spec: StudySpec) -> dict[str, float]:
    """CPU and GPU per trial, falling back to CPU (with a warning) when the cluster has no GPU."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if spec.resources.gpu > 0 and gpus == 0:
        log.warning(
            f"resources.gpu = {spec.resources.gpu:g} but the cluster has no GPU: running trials on CPU"
        )
        resources["gpu"] = 0.0
    return resources


def max_concurrency(spec: StudySpec, resources: dict[str, float]) -> int:
    """How many trials fit on the cluster at once (or the spec's own limit)."""
    import ray

    if spec.resources.max_concurrent_trials is not None:
        return spec.resources.max_concurrent_trials
    total = ray.cluster_resources()
    fits = [math.floor(total.get("CPU", 1) / resources["cpu"] + 1e-9)]
    if resources["gpu"] > 0:
        fits.append(math.floor(total.get("GPU", 0) / resources["gpu"] + 1e-9))
    return max(1, min(fits))


def run_sweep(
    spec: StudySpec,
    *,
    study_root: str,
    dataset_root: str,
    plan: TrialPlan | None = None,
) -> SweepReport:
    """Run every trial of ``spec`` not yet done in ``study_root`` on the current Ray session.

    Progress lines (one per finished trial, and the sweep's start) are logged at INFO,
    repairs of damaged storage and a missing GPU at WARNING (logger ``hrtem_ray.*``).

    Parameters
    ----------
    spec
        The validated study.
    study_root
        The study's storage root (results, histories, checkpoints, failures).
    dataset_root
        The simulated dataset.
    plan
        The trials to run (default :func:`~hrtem_ray.sweep.trials.plan_trials` of
        ``spec``; an adaptive study's round passes its own).
    """
    start = time.time()
    plan = plan if plan is not None else plan_trials(spec)
    planned_ids = {t.model_id for t in plan.all()}
    write_study_spec(study_root, spec, dataset_root)
    from hrtem_ray.sweep.check import heal_before_sweep  # damaged files: quarantined, retrained

    heal_before_sweep(study_root, plan)
    done = results.finished_ids(study_root) & planned_ids
    todo = [t for t in plan.all() if t.model_id not in done]
    report = SweepReport(
        planned=plan.counts(), already_done=len(plan.all()) - len(todo), done=len(done)
    )
    if not todo:
        log.info(f"all {len(plan.all())} trials already done in {study_root}")
        return report
    from hrtem_ray.cluster.runtime import wait_for_node

    resources = trial_resources(spec)
    waited = wait_for_node(resources["cpu"], resources["gpu"])
    if waited >= 1:
        log.info(f"a node for one trial is there after {waited:.0f} s")
    concurrency = max_concurrency(spec, resources)
    log.info(
        f"sweep {spec.name}: {len(todo)} trials to run ({report.already_done} already done), "
        f"{concurrency} at a time, {resources['cpu']:g} CPU / {resources['gpu']:g} GPU each"
    )
    excluded: set[str] = set()
    stop = StopRequest()
    for round_index in range(1 + INFRASTRUCTURE_ROUNDS):
        done = results.finished_ids(study_root) & planned_ids
        remaining = [t for t in plan.all() if t.model_id not in done | excluded]
        if not remaining:
            break
        if round_index:
            log.info(
                f"{len(remaining)} trials lost their worker or node (or depend on one that did): "
                f"running them again (round {round_index + 1} of {1 + INFRASTRUCTURE_ROUNDS})"
            )
        for trial in remaining:
            results.clear_failure(study_root, trial.model_id)
        from hrtem_ray.sweep.tune_adapter import DependentTrialSearcher

        searcher = DependentTrialSearcher(plan, done, excluded)
        with stop.installed():
            _fit(spec, plan, searcher, resources, concurrency, study_root, dataset_root, done, stop)
        if stop.requested:
            report.interrupted = True
            break
        for trial, reason in searcher.skipped:
            results.write_failure(
                study_root, trial, f"not run: {reason}", attempts=0, kind="skipped"
            )
        excluded = _final_failures(results.read_failures(study_root))
        if not any(f["kind"] == "infrastructure" for f in results.read_failures(study_root)):
            break
    finished = results.finished_ids(study_root) & planned_ids
    report.completed = len([t for t in todo if t.model_id in finished])
    report.done = len(finished)
    report.failed = [
        f
        for f in results.read_failures(study_root)
        if f.get("model_id") in planned_ids and f.get("model_id") not in finished
    ]
    if report.interrupted:
        # trials stopped by the interruption are not failures: the rerun runs them
        report.failed = [f for f in report.failed if f.get("kind") == "trial"]
    report.seconds = time.time() - start
    return report


def study_file(study_root: str) -> str:
    """Where a study root keeps the spec of its latest sweep (``<study_root>/study.json``)."""
    return storage.join(study_root, STUDY_FILE)


def write_study_spec(study_root: str, spec: StudySpec, dataset_root: str) -> None:
    """Store the spec being swept, and where its dataset is, at the study root (atomically).

    ``hrtem-ray report STUDY_DIR`` reads it (:meth:`hrtem_ray.study.Study.from_root`)
    to know the current plan, so that rows of models from other configurations are
    left out of the report.
    """
    from hrtem_ray._version import __version__

    storage.write_json_atomic(
        study_file(study_root),
        {
            "spec": spec.model_dump(mode="json"),
            "data_root": dataset_root,  # the stored key keeps its name: older roots read alike
            "hrtem_ray_version": __version__,
        },
    )


# Extra Tune runs for trials whose worker or node was lost (each with fresh actors): Tune's own
# retries can all land on an actor whose node has died but is not yet known to be dead.
INFRASTRUCTURE_ROUNDS = 2


def _final_failures(failures: list[dict]) -> set[str]:
    """Trials not to run again: their own code failed, or their parent's did."""
    own = {f["model_id"] for f in failures if f.get("kind") == "trial"}
    return own | {f["model_id"] for f in failures if f.get("parent_id") in own}


def _fit(
    spec: StudySpec,
    plan: TrialPlan,
    searcher: DependentTrialSearcher,
    resources: dict[str, float],
    concurrency: int,
    study_root: str,
    dataset_root: str,
    done: set[str],
    stop: StopRequest,
) -> None:
    """One Ray Tune run of the trials ``searcher`` hands out; ends early when ``stop`` is set.

    ``done`` holds the plan's models finished before this run (the progress counter's start).
    """
    from ray import tune

    from hrtem_ray.sweep.tune_adapter import (
        Progress,
        RecordFailures,
        StopOnSignal,
        TrialContext,
        tune_messages_hidden,
        tune_trial,
    )

    context = TrialContext(
        spec_json=spec.model_dump_json(),
        dataset_root=dataset_root,
        study_root=study_root,
        num_threads=max(1, int(resources["cpu"])),
    )
    trainable = tune.with_resources(tune.with_parameters(tune_trial, context=context), resources)
    tune_fs, tune_path = storage.pyarrow_filesystem_for_ray(storage.join(study_root, "tune"))
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=-1,
            max_concurrent_trials=concurrency,
            reuse_actors=True,
            trial_dirname_creator=lambda t: t.config["trial"]["model_id"],
            trial_name_creator=lambda t: t.config["trial"]["model_id"],
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
            storage_path=tune_path,
            storage_filesystem=tune_fs,
            failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
            stop=StopOnSignal(stop),
            callbacks=[
                RecordFailures(study_root),
                Progress(len(plan.all()), len(done), searcher),
            ],
            verbose=0,
            log_to_file=True,
        ),
    )
    # Our own progress lines replace Tune's tables (its "new output" prints even at verbose=0).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Results live in the study's storage, not in Tune's result grid: silence its loader.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    with tune_messages_hidden():
        tuner.fit()


def format_outcome(report: SweepReport) -> str:
    """One line on how a sweep ended, counted over the current plan's models."""
    if report.finished:
        return (
            f"sweep finished: all {report.total} models done ({report.completed} run now, "
            f"{report.already_done} were already done), {report.seconds:.0f} s"
        )
    if report.interrupted:
        return (
            f"sweep interrupted after {report.seconds:.0f} s: "
            f"{report.done} of {report.total} models done"
        )
    return (
        f"sweep ended: {report.done} of {report.total} models done, "
        f"{len(report.failed)} failed, {report.seconds:.0f} s"
    )


def format_failures(failures: list[dict]) -> str:
    """The final table of failed trials."""
    if not failures:
        return "no failed trials"
    frame = pl.DataFrame(failures).select("model_id", "trial", "attempts", "error")
    with pl.Config(tbl_rows=len(frame), fmt_str_lengths=100, tbl_width_chars=200):
        return f"{len(failures)} failed trials:\n{frame}"
