"""The order in which a study's trials run: pretrain first, children as soon as their parent is done.

Pure scheduling, no Ray: :class:`DependentTrialSchedule` holds the queues that
:class:`hrtem_ray.sweep.tune_adapter.DependentTrialSearcher` hands to Ray Tune, and can be
driven by hand in tests.

>>> from hrtem_ray.sweep.trials import Trial, TrialPlan
>>> parent = Trial("pretrain", "0", None, 1e-3, None, 4, None, "none", 0, None, model_id="p")
>>> child = Trial("transfer", "0", "10", 1e-3, 1e-4, 4, 2, "none", 0, "p", model_id="c")
>>> schedule = DependentTrialSchedule(TrialPlan([parent], [child], []))
>>> schedule.next_trial("t1").model_id, schedule.next_trial("t2")
('p', None)
>>> schedule.complete("t1", failed=False)
>>> schedule.next_trial("t3").model_id
'c'
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection

from hrtem_ray.sweep.trials import Trial, TrialPlan

__all__ = ["DependentTrialSchedule"]


def _longest_first(trials: list[Trial], skip: Collection[str]) -> deque[Trial]:
    """``trials`` not in ``skip``, the largest training sets first (stable for equal sizes)."""
    todo = [t for t in trials if t.model_id not in skip]
    return deque(sorted(todo, key=lambda t: -t.n_train_images))


class DependentTrialSchedule:
    """Hands out pretrain trials, then transfer trials whose parent is done, then baselines.

    Within the pretrain and baseline queues the largest training sets go first
    (longest-first: the long pretrain models, which gate the most work, start
    early, and short ones fill the gaps). A transfer trial waits until its own
    parent has completed, not for all pretraining. Transfer trials of a parent
    that failed are not run; they are listed in :attr:`skipped`.

    Parameters
    ----------
    plan
        Every trial of the study.
    done
        Model ids finished before: skipped, and their children are ready at once.
    excluded
        Model ids not to run: skipped together with their children.

    Attributes
    ----------
    skipped
        ``(trial, reason)`` for every child of a failed parent, in the order of failure.
    """

    def __init__(
        self,
        plan: TrialPlan,
        done: Collection[str] = frozenset(),
        excluded: Collection[str] = frozenset(),
    ) -> None:
        skip = set(done) | set(excluded)
        children = plan.children()
        self._pretrain = _longest_first(plan.pretrain, skip)
        self._ready: deque[Trial] = deque()
        # baselines and thresholds (blur + Otsu fits) depend on no other trial
        self._baseline = _longest_first([*plan.baseline, *plan.threshold], skip)
        self._waiting: dict[str, list[Trial]] = {}
        for parent in plan.pretrain:
            if parent.model_id in excluded:
                continue
            kids = [t for t in children.get(parent.model_id, []) if t.model_id not in skip]
            if parent.model_id in done:
                self._ready.extend(kids)
            elif kids:
                self._waiting[parent.model_id] = kids
        self._live: dict[str, Trial] = {}
        self.skipped: list[tuple[Trial, str]] = []

    @property
    def pending(self) -> int:
        """Trials not yet handed out (queued, or waiting for their parent)."""
        return (
            len(self._pretrain)
            + len(self._ready)
            + len(self._baseline)
            + sum(len(k) for k in self._waiting.values())
        )

    @property
    def running(self) -> int:
        """Trials handed out and not yet completed."""
        return len(self._live)

    @property
    def finished(self) -> bool:
        """Nothing left to hand out, now or later: no trial is running or waiting."""
        queued = self._pretrain or self._ready or self._baseline
        return not (queued or self._live or self._waiting)

    def next_trial(self, key: str) -> Trial | None:
        """The next trial to run, remembered under ``key``; ``None`` when none is ready now.

        Pretrain trials come first, then transfer trials whose parent is done, then
        baselines. ``None`` with :attr:`finished` false means: ask again after a
        running trial completes.
        """
        for queue in (self._pretrain, self._ready, self._baseline):
            if queue:
                trial = queue.popleft()
                self._live[key] = trial
                return trial
        return None

    def complete(self, key: str, *, failed: bool) -> None:
        """Record that the trial handed out under ``key`` ended.

        Its waiting children become ready when it succeeded, and are moved to
        :attr:`skipped` when it ``failed``. Unknown keys are ignored.
        """
        trial = self._live.pop(key, None)
        if trial is None:
            return
        kids = self._waiting.pop(trial.model_id, [])
        if failed:
            self.skipped.extend((k, f"parent {trial.model_id} failed") for k in kids)
        else:
            self._ready.extend(kids)
