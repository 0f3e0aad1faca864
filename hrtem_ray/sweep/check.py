"""Find and repair damaged storage of a study, without running anything (no Ray).

``hrtem-ray check OUT [--repair]`` and the start of every sweep use this module.
What counts as damage, and what :func:`repair` does about it:

=============  ================================================  =========================================
kind           problem                                           repair
=============  ================================================  =========================================
``result``     ``results/<phase>/<id>.parquet`` unreadable        quarantine it: the model is trained again
               (truncated, garbage, wrong or missing columns,
               no rows, another model's rows)
``history``    ``history/<id>.parquet`` unreadable                quarantine it and the model's result: the
                                                                  model is trained again
``checkpoint`` the checkpoint of a finished pretrain model is     quarantine the parent's result (and what
               missing or incomplete (no ``metadata.json``, a     is left of the checkpoint): the parent is
               listed file missing or of the wrong size; with     trained again first, then its children
               ``deep``: a digest mismatch or a failed load)
``shard``      a dataset shard file that does not match its       quarantine the file and its manifest
               manifest, or a stale manifest entry                entry: the next simulation writes the
               (see :mod:`hrtem_ray.dataset.manifest`); an        shard again; an imported domain goes
               imported domain without its domain record          whole (claim, record, every shard), to
               (an interrupted import), or of another grid        be imported again (or rerun the import
                                                                  to complete an interrupted one instead)
``wave``       a shard of the exit-wave store that does not       quarantine the file and its manifest
               match its manifest entry                           entry: the next simulation runs its
               (:func:`hrtem_ray.dataset.waves.verify_waves`)    multislice again and stores it
``temp``       a temporary file of an interrupted write,          delete it
               older than :data:`STRAY_TEMP_AGE_SECONDS`
=============  ================================================  =========================================

Quarantined files go to ``<root>/quarantine/<their relative path>`` with a
``.quarantine.json`` note (where from, why, when); see
:func:`hrtem_ray.sweep.results.quarantine`. Shards of a dataset outside the study root
(``dataset.path``) go to ``<dataset>/quarantine/`` (the dataset is read through
its manifest, never by globbing, so they are not read there). Repairs of the dataset
(shards, imported domains, wave shards) hold the dataset's lock
(:mod:`hrtem_ray.store.lock`), so they never run while ``simulate`` or ``import`` writes
it; a held lock is also noted by the check itself.

Which checkpoints are needed
----------------------------
A pretrain model's checkpoint is only read by its transfer children. With the
study's spec (``<root>/study.json`` written by the sweep, or ``spec=``) a
checkpoint is checked only for finished pretrain models that have at least one
planned child not yet done: a missing checkpoint whose children are all done
needs no retraining. Without a spec the planned children are unknown, so every
finished pretrain model's checkpoint is checked.
"""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import sys
import time
import warnings
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from hrtem_ray.exit_codes import EXIT_BAD_INPUT, EXIT_OK, EXIT_PROBLEMS
from hrtem_ray.spec.base import SpecError
from hrtem_ray.spec.config import load_study_spec, parse_stored_study_spec
from hrtem_ray.spec.study import StudySpec
from hrtem_ray.store import storage
from hrtem_ray.store.layout import STUDY_FILE, is_study_root
from hrtem_ray.sweep import results
from hrtem_ray.sweep.trials import TrialPlan, plan_trials

# A temporary file is stray (not a write in progress) when it is older than this.
STRAY_TEMP_AGE_SECONDS = 600.0
# Folders of a study root where interrupted writes may leave temporary files.
TEMP_SCAN_DIRS = (
    results.RESULTS_DIR,
    results.HISTORY_DIR,
    results.CHECKPOINT_DIR,
    results.FAILURES_DIR,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One damaged item of a study's storage.

    Attributes
    ----------
    kind
        ``result``, ``history``, ``checkpoint``, ``shard``, ``wave`` or ``temp`` (see the
        module docstring).
    path
        The damaged file or folder.
    reason
        What is wrong with it.
    model_id
        The model it belongs to (``None`` for shards and temporary files).
    shard_key
        The dataset or wave shard it belongs to (``shard`` and ``wave`` problems only).
    domain
        The imported domain it belongs to (``shard`` problems of imported domains only).
    """

    kind: str
    path: str
    reason: str
    model_id: str | None = None
    shard_key: str | None = None
    domain: str | None = None

    def describe(self) -> str:
        """One line: kind, path and reason."""
        return f"{self.kind}: {self.path}: {self.reason}"


@dataclass
class CheckReport:
    """What :func:`inspect_study` found.

    Attributes
    ----------
    root
        The study's storage root.
    data_root
        The dataset checked (``None`` if none was found or given).
    spec_source
        Where the spec came from (``study.json``, ``argument``) or ``None``.
    checked
        How many items of each kind were checked.
    problems
        Everything damaged, in a fixed order (results, histories, checkpoints,
        shards, temporary files).
    notes
        What could not be checked, and why.
    """

    root: str
    data_root: str | None = None
    spec_source: str | None = None
    checked: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """No problem was found."""
        return not self.problems

    def format(self) -> str:
        """A human-readable summary: what was checked, each problem, notes."""
        counts = ", ".join(f"{n} {kind}" for kind, n in self.checked.items())
        lines = [f"checked {self.root}: {counts}"]
        lines += [f"note: {note}" for note in self.notes]
        if self.healthy:
            lines.append("no problems found")
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {p.describe()}" for p in self.problems]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# inspection


def stored_spec(root: str) -> StudySpec | None:
    """The spec of the latest sweep in ``root`` (``<root>/study.json``), or None.

    Raises
    ------
    hrtem_ray.spec.base.SpecError
        If ``study.json`` exists but no longer holds a valid spec.
    """
    path = storage.join(root, STUDY_FILE)
    if not storage.exists(path):
        return None
    return parse_stored_study_spec(storage.read_json(path)["spec"], source=path)


def _damaged_models(problems: list[Problem]) -> set[str]:
    """Models that will be trained again because of ``problems``."""
    return {p.model_id for p in problems if p.model_id is not None}


def _parents_to_check(
    root: str, plan: TrialPlan | None, finished: set[str], retrained: set[str]
) -> list[str]:
    """Finished pretrain models whose checkpoints matter (see the module docstring)."""
    done = finished - retrained
    if plan is None:
        folder = storage.join(root, results.RESULTS_DIR, "pretrain")
        return sorted(f.model_id for f in results.list_parquet(folder) if f.model_id in done)
    children = plan.children()
    return [
        parent.model_id
        for parent in plan.pretrain
        if parent.model_id in done
        and any(kid.model_id not in done for kid in children.get(parent.model_id, []))
    ]


def _model_problems(
    root: str, plan: TrialPlan | None, deep: bool, checked: dict[str, int]
) -> list[Problem]:
    """Damaged result and history files, and unusable checkpoints of needed parents."""
    valid, damaged = results.scan_results(root)
    problems = [Problem("result", d.uri, d.reason, d.model_id) for d in damaged]
    histories, damaged_histories = results.scan_histories(root)
    problems += [Problem("history", d.uri, d.reason, d.model_id) for d in damaged_histories]
    checked["results"] = len(valid) + len(damaged)
    checked["histories"] = len(histories) + len(damaged_histories)
    parents = _parents_to_check(root, plan, set(valid), _damaged_models(problems))
    for parent in parents:
        problem = results.checkpoint_problem(root, parent, deep=deep)
        if problem is not None:
            location = results.checkpoint_path(root, parent)
            problems.append(Problem("checkpoint", location, problem, parent))
    checked["checkpoints"] = len(parents)
    return problems


def _shard_problems(data_root: str, checked: dict[str, int], notes: list[str]) -> list[Problem]:
    """Damaged dataset shards and imported domains
    (:func:`hrtem_ray.dataset.manifest.verify_shards`), then damaged wave shards
    (:func:`hrtem_ray.dataset.waves.verify_waves`)."""
    from hrtem_ray.dataset import manifest, waves

    try:
        found = manifest.verify_shards(data_root)
    except manifest.DatasetError as exc:
        notes.append(f"dataset shards not checked: {exc}")
        return []
    with warnings.catch_warnings():  # the ignored entries are the problems listed
        warnings.simplefilter("ignore", manifest.DatasetWarning)
        checked["shards"] = len(manifest.completed_shards(data_root))
    problems = [
        Problem("shard", str(s.path), str(s.problem), shard_key=str(s.key), domain=s.domain)
        for s in found
    ]
    damaged_waves = waves.verify_waves(data_root)
    checked["wave shards"] = len(waves.listed_keys(data_root))
    problems += [Problem("wave", w.path, w.problem, shard_key=w.key) for w in damaged_waves]
    holder = _lock_holder(data_root)
    if holder is not None:
        notes.append(
            f"the dataset {data_root} is being written by another process ({holder}): "
            "shards and imported domains it is writing may be listed as incomplete"
        )
    return problems


def _lock_holder(root: str) -> str | None:
    """Who holds the lock of ``root`` while alive (None when nobody does)."""
    from hrtem_ray.store.lock import DEFAULT_STALE_SECONDS, read_lock, stale_reason

    try:
        info = read_lock(root)
    except ValueError:
        return None
    if info is None or stale_reason(info, DEFAULT_STALE_SECONDS) is not None:
        return None
    return info.describe()


def _is_temp_name(name: str) -> bool:
    """Names of storage's and train's temporary files (``.<name>.tmp-<hex>``, ``.<name>.<pid>.tmp``)."""
    return name.startswith(".") and (".tmp-" in name or name.endswith(".tmp"))


def stray_temp_files(root: str, older_than_seconds: float = STRAY_TEMP_AGE_SECONDS) -> list[str]:
    """Temporary files of interrupted writes under ``root`` older than ``older_than_seconds``."""
    loc = storage.resolve(root)
    found: list[str] = []
    infos = list(loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True)))
    for folder in TEMP_SCAN_DIRS:
        selector = pafs.FileSelector(
            posixpath.join(loc.path, folder), allow_not_found=True, recursive=True
        )
        infos += loc.fs.get_file_info(selector)
    cutoff = time.time() - older_than_seconds
    for info in infos:
        if info.type != pafs.FileType.File or not _is_temp_name(posixpath.basename(info.path)):
            continue
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        if mtime < cutoff:
            found.append(storage.join(root, info.path[len(loc.path.rstrip("/")) + 1 :]))
    return sorted(found)


def _default_data_root(root: str, spec: StudySpec | None) -> str | None:
    """The study's dataset: the spec's ``dataset.path``, else ``<root>/data`` if it exists."""
    if spec is not None and spec.dataset.path:
        path = spec.dataset.path
        return path if "://" in path else os.path.abspath(os.path.expanduser(path))
    candidate = storage.join(root, "data")
    return candidate if storage.exists(candidate) else None


def inspect_study(
    root: str,
    spec: StudySpec | None = None,
    data_root: str | None = None,
    *,
    deep: bool = False,
) -> CheckReport:
    """Find everything damaged in a study's storage; reads, never writes.

    Parameters
    ----------
    root
        The study's storage root (local path or URI).
    spec
        The study; default: ``<root>/study.json`` if present. It decides which
        checkpoints are needed (see the module docstring).
    data_root
        The dataset to check; default: the spec's ``dataset.path``, else
        ``<root>/data`` when it exists.
    deep
        Also read every needed checkpoint in full (digests, or a trial load).

    Returns
    -------
    CheckReport
    """
    root = root if "://" in root else os.path.abspath(os.path.expanduser(root))
    report = CheckReport(root=root)
    if spec is None:
        spec = stored_spec(root)
        report.spec_source = STUDY_FILE if spec is not None else None
    else:
        report.spec_source = "argument"
    if spec is None:
        report.notes.append(
            "no spec (no study.json, no --spec): every finished pretrain model's "
            "checkpoint is checked"
        )
    plan = None
    if spec is not None and spec.adaptive is not None:  # the latest round's trials
        from hrtem_ray.sweep.rounds import current_plan

        plan = current_plan(spec, root)
    elif spec is not None:
        plan = plan_trials(spec)
    report.problems += _model_problems(root, plan, deep, report.checked)
    report.data_root = data_root or _default_data_root(root, spec)
    if report.data_root is not None and storage.exists(report.data_root):
        report.problems += _shard_problems(report.data_root, report.checked, report.notes)
    else:
        report.notes.append("no dataset found: shards not checked")
    temps = stray_temp_files(root)
    report.problems += [Problem("temp", t, "temporary file of an interrupted write") for t in temps]
    return report


# ---------------------------------------------------------------------------------------------
# repair


def _is_under(path: str, root: str) -> bool:
    """Whether ``path`` lies below ``root`` (same storage)."""
    return path.startswith(root.rstrip("/") + "/")


def _repair_one(root: str, data_root: str | None, problem: Problem) -> list[str]:
    """Quarantine, invalidate or delete what ``problem`` names; returns lines saying what was done."""
    done: list[str] = []

    def moved(path: str, reason: str) -> None:
        target = results.quarantine(root, path, reason)
        if target is not None:
            done.append(f"quarantined {path} -> {target} ({reason})")

    if problem.kind == "result":
        moved(problem.path, problem.reason)
    elif problem.kind == "history":
        moved(problem.path, problem.reason)
        reason = f"its history {problem.path} is damaged ({problem.reason})"
        for target in results.invalidate_result(root, str(problem.model_id), reason):
            done.append(f"invalidated {problem.model_id} (result -> {target}): trained again")
    elif problem.kind == "checkpoint":
        for target in results.invalidate_result(root, str(problem.model_id), problem.reason):
            done.append(
                f"invalidated {problem.model_id} (result -> {target}): {problem.reason}; "
                "it is trained again, then its children"
            )
        moved(problem.path, problem.reason)
    elif problem.kind in ("shard", "wave"):
        base = root if _is_under(problem.path, root) else str(data_root)
        for path in _dataset_paths(str(data_root), problem):
            target = results.quarantine(base, path, problem.reason)
            if target is not None:
                done.append(f"quarantined {path} -> {target} ({problem.reason})")
        if problem.domain is not None:
            done.append(
                f"imported domain {problem.domain} removed from {data_root} ({problem.reason}): "
                f"import its files again with `hrtem-ray import FILES... --data {data_root} "
                f"--domain {problem.domain}`"
            )
        elif problem.kind == "wave":
            done.append(f"the next simulation runs the multislice of {problem.shard_key} again")
    elif problem.kind == "temp":
        storage.remove(problem.path)
        done.append(f"deleted {problem.path} (temporary file of an interrupted write)")
    return done


def _dataset_paths(data_root: str, problem: Problem) -> list[str]:
    """What to quarantine for a ``shard`` or ``wave`` problem.

    A simulated shard: its file (or entry) and its manifest entry; without the entry it is
    simply not simulated yet, and the next run writes it. An imported domain cannot be
    simulated, so all of it goes (claim, record, every shard), to be imported again. A
    wave shard: its file and its entry.
    """
    from hrtem_ray.dataset import imported, waves
    from hrtem_ray.dataset.manifest import manifest_path

    if problem.domain is not None:
        return [problem.path, *imported.domain_files(data_root, problem.domain)]
    key = str(problem.shard_key)
    if problem.kind == "wave":
        return [problem.path, waves.waves_file(data_root, key), waves.entry_path(data_root, key)]
    return [problem.path, manifest_path(data_root, key)]


def repair(report: CheckReport) -> list[str]:
    """Quarantine and invalidate what ``report`` found, so that the next run redoes exactly that.

    Parameters
    ----------
    report
        From :func:`inspect_study` (or the start of a sweep).

    Returns
    -------
    list of str
        The actions taken, one line each.
    """
    dataset = [p for p in report.problems if p.kind in ("shard", "wave")]
    lines = [
        line
        for problem in report.problems
        if problem not in dataset
        for line in _repair_one(report.root, report.data_root, problem)
    ]
    if dataset:  # never while simulate or import writes the dataset
        from hrtem_ray.store.lock import study_lock

        with study_lock(str(report.data_root), "hrtem-ray check --repair"):
            for problem in dataset:
                lines += _repair_one(report.root, report.data_root, problem)
    return lines


def heal_before_sweep(root: str, plan: TrialPlan) -> list[str]:
    """At the start of a sweep: quarantine damaged result / history files, invalidate parents.

    Checks what decides which trials run (results, histories, checkpoints of finished
    pretrain models with children still to run; footers and listings only, not the
    dataset or temporary files) and repairs it, logging a warning per action, so that
    the sweep that follows trains the damaged models again, parents first.

    Parameters
    ----------
    root
        The study's storage root.
    plan
        The sweep's plan.

    Returns
    -------
    list of str
        The actions taken (empty when nothing was damaged).
    """
    report = CheckReport(root=root)
    report.problems = _model_problems(root, plan, False, report.checked)
    actions = repair(report)
    for line in actions:
        log.warning(f"warning: damaged storage: {line}")
    return actions


# ---------------------------------------------------------------------------------------------
# command line


def main_from_cli(args: argparse.Namespace) -> int:
    """``hrtem-ray check OUT [--repair] [--spec SPEC] [--data DIR] [--deep]``.

    Returns
    -------
    int
        0: healthy, or every problem repaired (``--repair``); :data:`EXIT_PROBLEMS` (4):
        problems found (without ``--repair``) or a repair failed; 2: ``OUT`` does not
        exist, is not a study directory, or the spec is invalid (an unreachable ``s3://``
        ``OUT`` raises :class:`~hrtem_ray.store.storage.StorageError`, exit 2 too).
    """
    root = args.out if "://" in args.out else os.path.abspath(os.path.expanduser(args.out))
    storage.check_reachable(root)  # StorageError (exit 2): no credentials, unreachable S3
    if not storage.exists(root):
        print(f"error: {root} does not exist", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not is_study_root(root):
        print(
            f"error: {root} is not a study directory (no results/, history/, checkpoints/, "
            f"data/ or {STUDY_FILE}); give the study's output directory (--out)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    try:
        spec = load_study_spec(args.spec) if getattr(args, "spec", None) else None
        report = inspect_study(root, spec, getattr(args, "data", None), deep=args.deep)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(report.format())
    if report.healthy:
        return EXIT_OK
    if not args.repair:
        print(f"run `hrtem-ray check {args.out} --repair` to quarantine and invalidate them")
        return EXIT_PROBLEMS
    actions = repair(report)
    for line in actions:
        print(line)
    left = inspect_study(root, spec, report.data_root, deep=args.deep)
    if not left.healthy:
        print(f"{len(left.problems)} problem(s) remain:\n{left.format()}")
        return EXIT_PROBLEMS
    print(f"repaired: {len(actions)} action(s); rerun the sweep to redo what they invalidated")
    return EXIT_OK


__all__ = [
    "CheckReport",
    "Problem",
    "STRAY_TEMP_AGE_SECONDS",
    "heal_before_sweep",
    "inspect_study",
    "main_from_cli",
    "repair",
    "stray_temp_files",
    "stored_spec",
]
