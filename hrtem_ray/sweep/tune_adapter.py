"""Ray Tune glue of the sweep: the searcher, the trainable, the callbacks and the stopper.

Imports Ray Tune at module level, so :mod:`hrtem_ray.sweep.run` imports this module only
inside the functions that run Tune. The scheduling decisions themselves live in
:class:`hrtem_ray.sweep.schedule.DependentTrialSchedule` (no Ray); this module adapts it and
the trial code to Tune's interfaces:

* :class:`DependentTrialSearcher`: Tune's ``Searcher`` over a :class:`DependentTrialSchedule`;
* :func:`tune_trial`: the trainable (one trial, per-epoch reports, NaN failures recorded);
* :class:`Progress`: one ``[N/M] ...`` line per finished trial;
* :class:`RecordFailures`: a failure record, with attempts and kind, per trial failed for good;
* :class:`StopOnSignal`: ends the run once a stop signal arrived;
* :func:`tune_messages_hidden`: filters Tune's misleading restore hints out of its log.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

# torch (and hrtem_ray.sweep.execute, which imports it) at module level, not in tune_trial: a
# Tune worker imports this module before Tune redirects the trial's stderr to a file.
# torch binds about 35 logging handlers to the sys.stderr of the moment it is first
# imported; imported inside the first trial, they would hold that trial's file, closed
# when it ends, and every later flush would log "ValueError when calling 'flush'".
# RosettaSciIO (imported by the micrograph reader that imported domains need) binds one too.
import torch
from ray import tune
from ray.tune import Callback, Stopper
from ray.tune.search import Searcher

import hrtem_ray.dataset.micrographs  # noqa: F401  (RosettaSciIO's logging handler, above)
from hrtem_ray.spec.study import StudySpec
from hrtem_ray.store import storage
from hrtem_ray.sweep import results
from hrtem_ray.sweep.execute import execute_trial
from hrtem_ray.sweep.schedule import DependentTrialSchedule
from hrtem_ray.sweep.trials import Trial, TrialPlan

__all__ = [
    "DependentTrialSearcher",
    "Progress",
    "RecordFailures",
    "StopOnSignal",
    "TrialContext",
    "tune_messages_hidden",
    "tune_trial",
]


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its own configuration (shipped once per worker)."""

    spec_json: str
    dataset_root: str
    study_root: str
    num_threads: int


class DependentTrialSearcher(Searcher):
    """A Ray Tune searcher handing out the trials of a :class:`DependentTrialSchedule`.

    Parameters
    ----------
    plan
        Every trial of the study.
    done
        Trials finished before: skipped (their children run).
    excluded
        Trials not to run: skipped together with their children.
    """

    def __init__(
        self,
        plan: TrialPlan,
        done: Collection[str] = frozenset(),
        excluded: Collection[str] = frozenset(),
    ) -> None:
        super().__init__()
        self.schedule = DependentTrialSchedule(plan, done, excluded)

    @property
    def pending(self) -> int:
        """Trials not yet handed out."""
        return self.schedule.pending

    @property
    def skipped(self) -> list[tuple[Trial, str]]:
        """Children of failed parents, with the reason they were not run."""
        return self.schedule.skipped

    def suggest(self, trial_id: str) -> dict | str | None:
        """The next trial's config, ``None`` to ask later, or ``FINISHED`` when all are out."""
        trial = self.schedule.next_trial(trial_id)
        if trial is not None:
            return {"trial": trial.to_dict()}
        return Searcher.FINISHED if self.schedule.finished else None

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Release the trial's children, or skip them when it failed."""
        failed = error or bool((result or {}).get("failed"))
        self.schedule.complete(trial_id, failed=failed)

    def save(self, checkpoint_path: str) -> None:
        """Pickle the searcher's state to ``checkpoint_path`` (Tune's experiment state)."""
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__, fh)

    def restore(self, checkpoint_path: str) -> None:
        """Load the state :meth:`save` wrote."""
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))


def tune_trial(config: dict, context: TrialContext) -> None:
    """The Ray Tune trainable: run one trial, report per epoch, record NaN failures."""
    from hrtem_ray.learning.train import NonFiniteLossError

    trial = Trial.from_dict(config["trial"])
    if storage.exists(results.result_path(context.study_root, trial)):
        tune.report({"finished": True, "failed": False, "skipped_existing": True})
        return
    spec = StudySpec.model_validate_json(context.spec_json)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        outcome = execute_trial(
            spec,
            trial,
            dataset_root=context.dataset_root,
            study_root=context.study_root,
            num_threads=context.num_threads,
            device=device,
            on_epoch=lambda record: tune.report({**record, "finished": False}),
        )
    except NonFiniteLossError as exc:
        results.write_failure(context.study_root, trial, f"NonFiniteLossError: {exc}", attempts=1)
        tune.report({"finished": True, "failed": True, "error": str(exc)})
        return
    except Exception as exc:
        results.write_last_error(context.study_root, trial.model_id, exc)
        raise
    results.clear_failure(context.study_root, trial.model_id)  # an earlier attempt may have failed
    tune.report(
        {
            "finished": True,
            "failed": False,
            "best_val_loss": outcome.best_val_loss,
            "best_epoch": outcome.best_epoch,
            "node_id": outcome.node_id,
        }
    )


class _HasPending(Protocol):
    pending: int


class Progress(Callback):
    """One line per finished trial of the plan and a done/running/pending summary, logged at INFO.

    ``done_before`` counts only models of the current plan, and every trial of a
    Tune run belongs to the plan, so the counter cannot pass ``total``.

    Parameters
    ----------
    total
        Models in the plan.
    done_before
        Models of the plan done before this Tune run.
    searcher
        Its ``pending`` count goes into each line.
    """

    def __init__(self, total: int, done_before: int, searcher: _HasPending) -> None:
        self.total = total
        self.finished = done_before
        self.searcher = searcher
        self.started = time.time()

    def _line(self, trials, trial, status: str) -> None:
        """Count ``trial`` as finished and print its line."""
        self.finished += 1
        running = sum(t.status == "RUNNING" for t in trials)
        desc = Trial.from_dict(trial.config["trial"]).describe()
        last = trial.last_result or {}
        metric = (
            f" best val loss {last['best_val_loss']:.4f} (epoch {last['best_epoch']})"
            if "best_val_loss" in last
            else ""
        )
        logging.getLogger(__name__).info(
            f"[{self.finished}/{self.total}] {status} {desc}{metric} | "
            f"done {self.finished} running {running} pending {self.searcher.pending} "
            f"| {time.time() - self.started:.0f}s"
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """A line for a trial that ran to its end (done, or failed with a non-finite loss)."""
        last = trial.last_result or {}
        if not last.get("finished"):
            return  # stopped by an interruption, not done
        self._line(trials, trial, "FAILED (non-finite loss)" if last.get("failed") else "done")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """A line for a trial that failed for good."""
        self._line(trials, trial, "FAILED")


class RecordFailures(Callback):
    """Writes a failure record, with the attempts made, for trials that failed for good.

    Parameters
    ----------
    root
        The study's storage root (``failures/`` goes there).
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.recoveries: dict[str, int] = {}

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        """Count a retry of ``trial``."""
        self.recoveries[trial.trial_id] = self.recoveries.get(trial.trial_id, 0) + 1

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """Record ``trial`` as failed: its own error (``trial``) or a lost worker (``infrastructure``)."""
        record = Trial.from_dict(trial.config["trial"])
        # the trainable notes its own exception; a lost worker or node leaves only Tune's
        summary = results.read_last_error(self.root, record.model_id)
        kind = "trial"
        if summary is None:  # the trial's own code raised nothing: its worker or node was lost
            error = trial.get_error()
            summary = f"{type(error).__name__}: {error}" if error is not None else "worker lost"
            kind = "infrastructure"
        attempts = self.recoveries.get(trial.trial_id, 0) + 1
        results.write_failure(self.root, record, summary.strip(), attempts=attempts, kind=kind)


class _HasRequested(Protocol):
    requested: bool


class StopOnSignal(Stopper):
    """A Ray Tune stopper that ends the whole run once ``stop.requested`` is true.

    Parameters
    ----------
    stop
        A :class:`hrtem_ray.sweep.run.StopRequest` (anything with a ``requested`` flag).
    """

    def __init__(self, stop: _HasRequested) -> None:
        self.stop = stop

    def __call__(self, trial_id: str, result: dict) -> bool:
        """Never stops a single trial."""
        return False

    def stop_all(self) -> bool:
        """Stop every trial once a stop signal arrived."""
        return self.stop.requested


# Ray Tune messages that would mislead a user of hrtem-ray (it resumes from results/, not
# from Tune's experiment state): the restore hint, and the list of trials an interruption
# stopped.
HIDDEN_TUNE_MESSAGES = (
    "Tuner.restore",
    "Resume experiment with",
    "Resume training with",
    "Trials did not complete",
    "Stop signal received",
)


class _HideTuneMessages(logging.Filter):
    """Drops Ray Tune log records that name :data:`HIDDEN_TUNE_MESSAGES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(hidden in text for hidden in HIDDEN_TUNE_MESSAGES)


@contextmanager
def tune_messages_hidden() -> Iterator[None]:
    """Filter :data:`HIDDEN_TUNE_MESSAGES` out of ``ray.tune.tune``'s log while inside."""
    logger = logging.getLogger("ray.tune.tune")
    hide = _HideTuneMessages()
    logger.addFilter(hide)
    try:
        yield
    finally:
        logger.removeFilter(hide)
