"""The Python API: a :class:`Study` simulates its dataset, runs its sweep and writes its report.

>>> from hrtem_ray import Study
>>> study = Study.from_yaml("sweeps/laptop.yaml", out="out/laptop")
>>> len(study.plan.all())  # study.run() simulates, trains 133 models and reports
133

Layout of a study's output directory (``--out``, or ``storage`` in the spec)::

    data/          the simulated dataset (unless ``dataset.path`` names an existing one)
    results/       the results table (Parquet), one file per model
    history/       per-epoch histories
    checkpoints/   best-epoch checkpoints of the pretrain models
    failures/      trials that failed for good
    tune/          Ray Tune's experiment folders
    report/        the HTML report, figures and tables
    adaptive/      an adaptive study's rounds (round-NNN.json)
    study.json     the spec of the latest sweep: the plan that results and reports follow

Results and reports follow the current plan: rows of models that the spec no longer
plans (another ``training.epochs``, another learning rate...) stay on disk but are
left out, and counted (:meth:`Study.result_selection`); ``all_results=True`` keeps them.
"""

from __future__ import annotations

import glob
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import polars as pl

from hrtem_ray.cluster.runtime import ray_session
from hrtem_ray.cluster.signals import sigterm_interrupts
from hrtem_ray.spec.config import (
    load_dataset_spec,
    load_study_spec,
    parse_stored_study_spec,
    parse_study_spec,
    read_spec_file,
)
from hrtem_ray.spec.dataset import check_resources
from hrtem_ray.spec.study import StudySpec
from hrtem_ray.store import storage
from hrtem_ray.store.layout import RESULTS_DIR, STUDY_FILE, is_study_root
from hrtem_ray.store.lock import study_lock
from hrtem_ray.sweep.trials import TrialPlan, plan_trials

log = logging.getLogger(__name__)


def _absolute(location: str) -> str:
    """Local paths become absolute (Ray workers may run elsewhere); URIs stay as they are."""
    return location if "://" in location else str(Path(location).expanduser().resolve())


@dataclass(frozen=True)
class StudyProgress:
    """How far the current plan is: models done and failed for good, read from storage."""

    total: int
    done: int
    failed: int

    @property
    def finished(self) -> bool:
        """Every model of the plan is done."""
        return self.done >= self.total

    def partial_note(self) -> str | None:
        """``partial: N of M models ...`` when the plan is not finished, else ``None``."""
        if self.finished:
            return None
        failed = f", {self.failed} failed (see failures/)" if self.failed else ""
        return f"partial: {self.done} of {self.total} models{failed}"


@dataclass(frozen=True)
class ResultSelection:
    """The results table of the current plan, and what was left out of it.

    Attributes
    ----------
    table
        Rows of models in the current plan, matched by ``model_id`` and
        ``config_hash`` (all rows with ``all_results=True``).
    other_rows, other_models
        Rows and models in ``results/`` from other configurations.
    all_results
        Whether the other configurations' rows are included in :attr:`table`.
    """

    table: pl.DataFrame
    other_rows: int = 0
    other_models: int = 0
    all_results: bool = False

    def note(self) -> str | None:
        """A line on the other configurations' rows (``None`` when there are none)."""
        if not self.other_rows:
            return None
        what = f"{self.other_rows} rows of {self.other_models} models from other configurations"
        if self.all_results:
            return f"included {what} in results/ (--all-results)"
        return f"ignored {what} in results/ (--all-results to include them)"


def select_plan_rows(
    table: pl.DataFrame, plan: TrialPlan, all_results: bool = False
) -> ResultSelection:
    """Split a results table into the rows of ``plan``'s models and the others.

    Parameters
    ----------
    table
        A results table (``model_id`` and ``config_hash`` columns).
    plan
        The current plan (:func:`hrtem_ray.sweep.trials.plan_trials`).
    all_results
        Keep every row in the returned table (the others are still counted).

    Returns
    -------
    ResultSelection
    """
    keys = pl.DataFrame(
        {
            "model_id": [t.model_id for t in plan.all()],
            "config_hash": [t.config_hash for t in plan.all()],
        },
        schema={"model_id": pl.String, "config_hash": pl.String},
    )
    key_columns = ["model_id", "config_hash"]
    typed = table.with_columns(pl.col(key_columns).cast(pl.String))
    others = typed.join(keys, on=key_columns, how="anti")
    current = typed.join(keys, on=key_columns, how="semi")
    return ResultSelection(
        table=table if all_results else current,
        other_rows=others.height,
        other_models=others.get_column("model_id").n_unique() if others.height else 0,
        all_results=all_results,
    )


class Study:
    """A transfer-learning study: its validated spec and where it writes.

    Parameters
    ----------
    spec
        The validated study (see :func:`hrtem_ray.spec.config.load_study_spec`).
    out
        Output directory or storage URI; defaults to the spec's ``storage``.
    data
        Dataset directory or URI overriding ``dataset.path`` and ``<out>/data``
        (``hrtem-ray simulate --out``).
    until_decided
        Make the study adaptive (``hrtem-ray run --until-decided``): a spec without an
        ``adaptive`` section gets the default one (:class:`hrtem_ray.spec.adaptive.AdaptiveSpec`).

    Attributes
    ----------
    study_root
        Where the study writes (absolute for a local path): results, histories,
        checkpoints, failures, ``tune/``, the report and ``study.json``.

    Notes
    -----
    :meth:`simulate`, :meth:`sweep`, :meth:`report` and :meth:`run` log their progress
    lines (simulated shards, finished trials, the outcome) to the ``hrtem_ray`` loggers at
    level INFO and print nothing; ``logging.basicConfig(level=logging.INFO,
    format="%(message)s")`` shows them as the ``hrtem-ray`` command does. Warnings
    (damaged storage repaired, no GPU) are WARNING records, which Python shows on stderr
    even without configuration.
    """

    def __init__(
        self,
        spec: StudySpec,
        out: str | os.PathLike | None = None,
        *,
        data: str | os.PathLike | None = None,
        until_decided: bool = False,
    ) -> None:
        if until_decided and spec.adaptive is None:
            raw = {**spec.model_dump(mode="json"), "adaptive": {}}
            spec = parse_stored_study_spec(raw, source="the spec with --until-decided")
        self.spec = spec if out is None else spec.with_storage(str(out))
        self.study_root = _absolute(self.spec.storage)
        self._data = None if data is None else _absolute(os.fspath(data))
        if self.spec.adaptive is not None:  # the budget covers the first round
            from hrtem_ray.sweep.rounds import settings_of

            settings_of(self.spec)

    @classmethod
    def from_yaml(
        cls,
        path: str | os.PathLike,
        out: str | os.PathLike | None = None,
        *,
        data: str | os.PathLike | None = None,
        until_decided: bool = False,
    ) -> Study:
        """Read and validate a study spec file (see ``sweeps/``)."""
        return cls(load_study_spec(path), out, data=data, until_decided=until_decided)

    @classmethod
    def for_dataset(
        cls, path: str | os.PathLike, *, data: str | os.PathLike | None = None
    ) -> Study:
        """The study of a spec file's ``dataset`` section alone (``hrtem-ray simulate``).

        Only ``dataset`` is validated (with ``name`` and ``storage``, which say where
        ``<storage>/data`` is); the grids are dropped, so a file holding nothing but a
        ``dataset`` section works too.
        """
        dataset = load_dataset_spec(path)
        raw = read_spec_file(path)
        spec = {
            "dataset": dataset.model_dump(mode="json"),
            "pretrain": None,
            "transfer": None,
            "baseline": None,
            **{key: raw[key] for key in ("name", "storage") if raw.get(key) is not None},
        }
        return cls(parse_study_spec(spec, source=os.fspath(path)), data=data)

    @classmethod
    def from_root(cls, study_root: str | os.PathLike) -> Study:
        """The study whose latest sweep wrote ``<study_root>/study.json``.

        Its dataset is ``<study_root>/data``, or the dataset directory that sweep read when
        the spec names one (``dataset.path``).

        Raises
        ------
        FileNotFoundError
            If ``study_root`` holds no ``study.json`` (no sweep started there yet).
        hrtem_ray.spec.base.SpecError
            If the stored spec is no longer valid.
        """
        from hrtem_ray.sweep.run import study_file

        root = _absolute(os.fspath(study_root))
        path = study_file(root)
        if not storage.exists(path):
            raise FileNotFoundError(f"no study.json in {root}")
        stored = storage.read_json(path)
        spec = parse_stored_study_spec(stored["spec"], source=path)
        data = stored.get("data_root") if spec.dataset.path else None
        return cls(spec, out=root, data=data)

    @property
    def dataset_root(self) -> str:
        """The dataset: the ``data`` override, else ``dataset.path``, else ``<out>/data``."""
        if self._data is not None:
            return self._data
        if self.spec.dataset.path:
            return _absolute(self.spec.dataset.path)
        return storage.join(self.study_root, "data")

    @property
    def plan(self) -> TrialPlan:
        """The trials of the spec (:func:`hrtem_ray.sweep.trials.plan_trials`); of an adaptive
        study, those of its latest round (:func:`hrtem_ray.sweep.rounds.current_plan`)."""
        if self.spec.adaptive is not None:
            from hrtem_ray.sweep.rounds import current_plan

            return current_plan(self.spec, self.study_root)
        return self._fixed_plan

    @cached_property
    def _fixed_plan(self) -> TrialPlan:
        return plan_trials(self.spec)

    def progress(self) -> StudyProgress:
        """Models of the current plan done and failed for good, as the storage says now."""
        from hrtem_ray.sweep import results

        planned = {t.model_id for t in self.plan.all()}
        done = results.finished_ids(self.study_root) & planned
        failed = {f.get("model_id") for f in results.read_failures(self.study_root)}
        return StudyProgress(len(planned), len(done), len((failed & planned) - done))

    def shard_progress(self) -> tuple[int, int]:
        """``(done, planned)`` dataset shards of the spec in :attr:`dataset_root`."""
        from hrtem_ray.dataset.manifest import completed_shards, plan_shards

        planned = {t.key for t in plan_shards(self.spec.dataset)}
        return len(completed_shards(self.dataset_root) & planned), len(planned)

    @property
    def results_dir(self) -> str:
        return storage.join(self.study_root, RESULTS_DIR)

    @property
    def report_dir(self) -> str:
        return storage.join(self.study_root, "report")

    def dry_run(self) -> str:
        """Trial counts and training-set sizes (an adaptive study: its first round and budget,
        :func:`hrtem_ray.sweep.rounds.dry_run`), and, when this study simulates its dataset,
        the dataset's images, shards, bytes on disk and driver memory
        (:class:`hrtem_ray.spec.footprint.DatasetFootprint`), without running anything.

        A dataset that cannot fit the data root's free disk or this machine's memory gets
        one more line, ``refused here: ...`` with the numbers: ``simulate``, ``sweep`` and
        ``run`` refuse it in their :meth:`preflight` (a dry run of a paper preset on a
        laptop still shows its counts).
        """
        from hrtem_ray.spec.base import SpecError
        from hrtem_ray.spec.footprint import check_dataset_footprint, dataset_footprint

        if self.spec.adaptive is not None:
            from hrtem_ray.sweep.rounds import dry_run
        else:
            from hrtem_ray.sweep.trials import dry_run

        lines = [dry_run(self.spec)]
        if self._data is None and not self.spec.dataset.path:
            lines.append(dataset_footprint(self.spec.dataset).line())
            try:
                check_dataset_footprint(self.spec.dataset, self.dataset_root)
            except SpecError as refusal:
                lines.append(f"refused here (simulate, sweep and run check it first): {refusal}")
        return "\n".join(lines)

    def check_dataset(self) -> None:
        """Refuse a data root that holds another spec's dataset, before Ray starts.

        Raises
        ------
        hrtem_ray.dataset.manifest.DatasetError
            Naming each field that differs (:func:`hrtem_ray.dataset.claim.check_dataset_root`).
        """
        from hrtem_ray.dataset.claim import check_dataset_root

        check_dataset_root(self.spec.dataset, self.dataset_root)

    def preflight(
        self,
        address: str | None = None,
        *,
        simulate: bool | None = None,
        trials: bool = False,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
    ) -> None:
        """The checks that run before Ray starts and before anything is written.

        The storage must be reachable (:func:`hrtem_ray.store.storage.check_reachable`:
        an ``s3://`` root with no credentials or an unreachable endpoint is refused with
        the reason), the data root must hold this spec's dataset or none
        (:meth:`check_dataset`), its imported domains (``domains.imported``) must be
        there, with masks where a role uses them
        (:func:`hrtem_ray.dataset.micrographs.check_spec_imports`). When this study
        simulates (default: it has no ``dataset.path``) every particle shape must be
        buildable and fit the cell
        (:func:`hrtem_ray.physics.particles.check_particle_shapes`), the dataset must fit
        the data root's free disk and the driver's memory
        (:func:`hrtem_ray.spec.footprint.check_dataset_footprint`) and, on a private local
        cluster, one simulation worker this machine's memory. With ``trials`` (a sweep) on
        a private local cluster, one trial's ``resources`` must fit the cluster
        (:func:`hrtem_ray.spec.footprint.check_local_trial_resources`, ``num_cpus`` and
        ``num_gpus`` as given to the cluster).

        Raises
        ------
        hrtem_ray.store.storage.StorageError, hrtem_ray.dataset.manifest.DatasetError, hrtem_ray.spec.base.SpecError, hrtem_ray.dataset.micrograph_files.MicrographError
        """
        from hrtem_ray.spec.footprint import check_dataset_footprint, check_local_trial_resources

        for root in dict.fromkeys([self.study_root, self.dataset_root]):
            storage.check_reachable(root)
        local = address in (None, "local")
        if trials and local:
            check_local_trial_resources(self.spec, num_cpus=num_cpus, num_gpus=num_gpus)
        self.check_dataset()
        if self.spec.domains.imported:  # imported domains present, with masks and enough tiles
            from hrtem_ray.dataset.micrographs import check_spec_imports

            check_spec_imports(self.spec, self.dataset_root)
        if simulate is None:
            simulate = self._data is None and not self.spec.dataset.path
        if simulate:
            if any(p.shape != "sphere" for _, p in self.spec.dataset.groups_structures()):
                from hrtem_ray.physics.particles import check_particle_shapes

                check_particle_shapes(self.spec.dataset)
            check_dataset_footprint(self.spec.dataset, self.dataset_root)
            if local:
                check_resources(self.spec)

    def simulate(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
    ):
        """Simulate the dataset shards that are missing (idempotent).

        Holds the study lock of :attr:`dataset_root` (checked writable first) for
        the whole run, taken before Ray starts (:mod:`hrtem_ray.store.lock`).
        """
        from hrtem_ray.dataset.pipeline import simulate_dataset

        self.preflight(address, simulate=True)
        with _locked_roots([self.dataset_root], f"hrtem-ray simulate ({self.spec.name})"):
            with (
                ray_session(
                    address, num_cpus=num_cpus, object_store_memory_bytes=_object_store(address)
                ),
                sigterm_interrupts(),
            ):
                return simulate_dataset(self.spec.dataset, self.dataset_root, on_shard=_log_shard)

    def sweep(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
    ):
        """Run every trial not yet done (resumes a previous run); returns a :class:`SweepReport`.

        An adaptive study runs its rounds (:func:`hrtem_ray.sweep.rounds.run_adaptive`),
        resuming its stored ones. Logs the outcome line, and the failure table when trials
        failed for good.
        """
        from hrtem_ray.dataset.pipeline import simulate_dataset
        from hrtem_ray.sweep.rounds import run_adaptive
        from hrtem_ray.sweep.run import format_failures, format_outcome, run_sweep

        simulate = self._data is None and not self.spec.dataset.path
        # The study root's lock (and the data root's, when this sweep writes the
        # dataset) is held for the whole sweep, taken before Ray starts.
        roots = [self.study_root, self.dataset_root] if simulate else [self.study_root]
        self.preflight(
            address, simulate=simulate, trials=True, num_cpus=num_cpus, num_gpus=num_gpus
        )
        with (
            _locked_roots(roots, f"hrtem-ray sweep ({self.spec.name})"),
            ray_session(
                address,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                object_store_memory_bytes=_object_store(address),
            ),
            sigterm_interrupts(),
        ):
            if simulate:
                simulate_dataset(self.spec.dataset, self.dataset_root, on_shard=_log_shard)
            sweep = run_adaptive if self.spec.adaptive is not None else run_sweep
            report = sweep(self.spec, study_root=self.study_root, dataset_root=self.dataset_root)
        log.info(format_outcome(report))
        if report.failed:
            log.info(format_failures(report.failed))
        return report

    def lock(self, command: str):
        """Hold the study lock of :attr:`study_root` (checked writable first), e.g. over a
        sweep and its report; re-entrant within this process (:mod:`hrtem_ray.store.lock`)."""
        return _locked_roots([self.study_root], f"{command} ({self.spec.name})")

    def results(self, all_results: bool = False) -> pl.DataFrame:
        """The results table of the current plan written so far.

        Parameters
        ----------
        all_results
            Also keep rows of models from other configurations (an earlier spec written
            to the same storage); by default they are left out (see
            :meth:`result_selection` for their count).
        """
        return self.result_selection(all_results).table

    def result_selection(self, all_results: bool = False) -> ResultSelection:
        """The results table of the current plan, with the count of other configurations' rows."""
        from hrtem_ray.sweep.results import read_results

        return select_plan_rows(read_results(self.study_root), self.plan, all_results)

    def report_notes(self, selection: ResultSelection) -> list[str]:
        """Lines at the top of a report: ``partial: N of M models`` and rows left out."""
        return [
            note for note in (self.progress().partial_note(), selection.note()) if note is not None
        ]

    def report(
        self,
        out_dir: str | None = None,
        *,
        all_results: bool = False,
    ) -> str:
        """Write the HTML report (with figures and tables) of the current plan's results so far.

        A study whose plan is not finished gets ``partial: N of M models`` at the top of
        the report; rows of other configurations are left out (``all_results=True``
        keeps them), and both notes are also logged. The report is built locally; for a
        remote ``out_dir`` (e.g. ``s3://``) it is built in a temporary folder and
        uploaded. Returns the location of ``report.html``.

        Raises
        ------
        hrtem_ray.report.build.ReportError
            If the study has no result rows (of the current plan) yet.
        """
        from hrtem_ray.report.build import ReportError, write_report

        selection = self.result_selection(all_results)
        notes = self.report_notes(selection)
        for note in notes:
            log.info(note)
        if selection.table.is_empty():
            raise ReportError(f"no results yet in {self.results_dir}")
        target = out_dir or self.report_dir
        build = {"data_dir": self.dataset_root, "notes": notes, "source": self.results_dir}
        if storage.is_local(target):
            return str(write_report(selection.table, storage.local_path(target), **build))
        with tempfile.TemporaryDirectory(prefix="hrtem-report-") as tmp:
            write_report(selection.table, Path(tmp) / "report", **build)
            storage.upload_dir(Path(tmp) / "report", target)
        return storage.join(target, "report.html")

    def run(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        report: bool = True,
    ) -> pl.DataFrame:
        """Simulate, sweep, analyse and report in one go; returns the results table.

        An interrupted sweep (SIGINT / SIGTERM) writes no report; a sweep with failed
        trials writes one marked ``partial: N of M models``.
        """
        with self.lock("hrtem-ray run"):  # the sweep re-enters it
            outcome = self.sweep(address=address, num_cpus=num_cpus, num_gpus=num_gpus)
            if report and (outcome.finished or not outcome.interrupted) and outcome.done:
                path = self.report()
                log.info(f"report: {path}")
            return self.results()


@contextmanager
def _locked_roots(roots: list[str], command: str) -> Iterator[None]:
    """Check that each root is writable, then hold its study lock (in order).

    Raises
    ------
    hrtem_ray.store.storage.StorageError
        If a root cannot be written (before any lock is taken).
    hrtem_ray.store.lock.LockHeldError
        If another live process holds one of the locks.
    """
    unique = list(dict.fromkeys(roots))
    for root in unique:
        storage.check_writable_root(root)
    with ExitStack() as stack:
        for root in unique:
            stack.enter_context(study_lock(root, command))
        yield


def _object_store(address: str | None) -> int | None:
    """A modest object store for local clusters (the pipeline passes little through it)."""
    return 512 * 1024**2 if address in (None, "local") else None


def _log_shard(record: dict) -> None:
    """The progress line of a simulated shard (``on_shard`` of :func:`simulate_dataset`)."""
    log.info(
        f"simulated shard {record['key']}: {record['images']} images in {record['seconds']:.1f} s"
    )


# --- what a path given to `hrtem-ray report` holds --------------------------------------


@dataclass(frozen=True)
class ResultsLocation:
    """What a path given to ``hrtem-ray report`` holds (see :func:`locate_results`).

    Attributes
    ----------
    results
        The table to report: a path for :func:`write_report`, or the current plan's rows.
    data_dir
        The dataset of the example-image panel (a study's own, unless given).
    notes
        Lines for the top of the report and the terminal (partial study, rows left out).
    source
        Where the results came from, for the page.
    """

    results: str | pl.DataFrame
    data_dir: str | None
    notes: tuple[str, ...] = ()
    source: str = ""


def locate_results(
    path: str | os.PathLike[str], data_dir: str | None = None, all_results: bool = False
) -> ResultsLocation:
    """Find the results table behind ``path``, checking it before anything is written.

    - a study root (``study.json`` or ``results/`` inside), or a study's ``results/``
      folder: its results, restricted to the models of its latest spec
      (``study.json``) unless ``all_results``; ``data_dir`` defaults to its dataset;
    - a dataset root: refused (it holds images, not results);
    - any other directory, Parquet file or glob: read as given.

    Raises
    ------
    hrtem_ray.report.build.ReportError
        ``path`` does not exist, is a dataset, or holds no results yet.
    """
    from hrtem_ray.report.build import ReportError

    raw = os.fspath(path)
    is_glob = "://" not in raw and any(c in raw for c in "*?[")
    if is_glob:
        if not glob.glob(raw, recursive=True):
            raise ReportError(f"no results yet: nothing matches {raw}")
        return ResultsLocation(raw, data_dir, source=raw)
    try:
        storage.check_reachable(raw)
    except storage.StorageError as error:  # no credentials, endpoint unreachable, no bucket
        raise ReportError(str(error)) from None
    try:
        present = storage.exists(raw)
    except (OSError, ValueError) as error:
        raise ReportError(f"cannot read {raw}: {error}") from None
    if not present:
        raise ReportError(f"{raw} does not exist")
    root = None
    if is_study_root(raw):
        root = raw
    elif Path(raw.rstrip("/")).name == RESULTS_DIR:
        parent = raw.rstrip("/").rsplit("/", 1)[0]
        if storage.exists(storage.join(parent, STUDY_FILE)):
            root = parent
    if root is not None:
        return _locate_study(root, data_dir, all_results)
    if storage.exists(storage.join(raw, "dataset.json")):
        raise ReportError(
            f"{raw} is a dataset, not results: give a study directory or its results/ folder"
        )
    if not storage.is_local(raw):
        raise ReportError(f"{raw} is not a study directory (no study.json or results/ inside)")
    return ResultsLocation(raw, data_dir, source=raw)


def _locate_study(root: str, data_dir: str | None, all_results: bool) -> ResultsLocation:
    """:class:`ResultsLocation` of a study root (see :func:`locate_results`)."""
    from hrtem_ray.report.build import ReportError

    results_dir = storage.join(root, RESULTS_DIR)
    try:
        study = Study.from_root(root)
    except FileNotFoundError:  # results written before study.json existed: read them all
        data = data_dir or storage.join(root, "data")
        if not storage.is_local(results_dir):
            raise ReportError(f"{root} has no study.json: run the study's sweep again") from None
        table = _results_or_none(results_dir)
        if table is None:
            raise ReportError(f"no results yet in {results_dir}") from None
        note = f"no study.json in {root}: every row of results/ is reported"
        return ResultsLocation(table, data, (note,), results_dir)
    selection = study.result_selection(all_results)
    if selection.table.is_empty():
        extra = f" ({selection.note()})" if selection.note() else ""
        raise ReportError(f"no results yet in {results_dir}{extra}")
    notes = tuple(study.report_notes(selection))
    return ResultsLocation(selection.table, data_dir or study.dataset_root, notes, results_dir)


def _results_or_none(results_dir: str) -> pl.DataFrame | None:
    """Every row under a local ``results/`` folder, or ``None`` if it holds none."""
    from hrtem_ray.analysis import load_results

    try:
        table = load_results(results_dir, categorical=False)
    except FileNotFoundError:
        return None
    return None if table.is_empty() else table
