"""The Python API: a :class:`Study` simulates its dataset, runs its sweep and writes its report.

>>> from hrtem_ray import Study
>>> study = Study.from_yaml("sweeps/laptop.yaml", out="out/laptop")   # doctest: +SKIP
>>> table = study.run()                                              # doctest: +SKIP

Layout of a study's output directory (``--out``, or ``storage`` in the spec)::

    data/          the simulated dataset (unless ``dataset.path`` names an existing one)
    results/       the results table (Parquet), one file per model
    history/       per-epoch histories
    checkpoints/   best-epoch checkpoints of the pretrain models
    failures/      trials that failed for good
    tune/          Ray Tune's experiment folders
    report/        the HTML report, figures and tables
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import polars as pl

from hrtem_ray import storage
from hrtem_ray.config import StudySpec, load_study_spec
from hrtem_ray.runtime import ray_session


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _absolute(location: str) -> str:
    """Local paths become absolute (Ray workers may run elsewhere); URIs stay as they are."""
    return location if "://" in location else str(Path(location).expanduser().resolve())


class Study:
    """A transfer-learning study: its validated spec and where it writes.

    Parameters
    ----------
    spec
        The validated study (see :func:`hrtem_ray.config.load_study_spec`).
    out
        Output directory or storage URI; defaults to the spec's ``storage``.
    """

    def __init__(self, spec: StudySpec, out: str | os.PathLike | None = None) -> None:
        self.spec = spec if out is None else spec.with_storage(str(out))
        self.root = _absolute(self.spec.storage)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, out: str | os.PathLike | None = None) -> Study:
        """Read and validate a study spec file (see ``sweeps/``)."""
        return cls(load_study_spec(path), out)

    @property
    def data_root(self) -> str:
        """The dataset: ``dataset.path`` if given, else ``<out>/data``."""
        if self.spec.dataset.path:
            return _absolute(self.spec.dataset.path)
        return storage.join(self.root, "data")

    @property
    def results_dir(self) -> str:
        return storage.join(self.root, "results")

    @property
    def report_dir(self) -> str:
        return storage.join(self.root, "report")

    def dry_run(self) -> str:
        """Trial counts and training-set sizes, without running anything."""
        from hrtem_ray.sweep import dry_run

        return dry_run(self.spec)

    def simulate(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        echo: Callable[[str], None] = _echo,
    ):
        """Simulate the dataset shards that are missing (idempotent)."""
        from hrtem_ray.data import simulate_dataset

        with ray_session(
            address, num_cpus=num_cpus, object_store_memory_bytes=_object_store(address)
        ):
            return simulate_dataset(self.spec.dataset, self.data_root, on_shard=_shard_echo(echo))

    def sweep(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        echo: Callable[[str], None] = _echo,
    ):
        """Run every trial not yet done (resumes a previous run); returns a :class:`SweepReport`."""
        from hrtem_ray.data import simulate_dataset
        from hrtem_ray.sweep import format_failures, run_sweep

        with ray_session(
            address,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            object_store_memory_bytes=_object_store(address),
        ):
            if not self.spec.dataset.path:
                simulate_dataset(self.spec.dataset, self.data_root, on_shard=_shard_echo(echo))
            report = run_sweep(self.spec, root=self.root, data_root=self.data_root, echo=echo)
        echo(
            f"sweep finished: {report.completed} trials run, {report.already_done} were already done, "
            f"{len(report.failed)} failed, {report.seconds:.0f} s"
        )
        echo(format_failures(report.failed))
        return report

    def results(self) -> pl.DataFrame:
        """The results table written so far."""
        from hrtem_ray.results import read_results

        return read_results(self.root)

    def report(self, out_dir: str | None = None) -> str:
        """Write the HTML report (with figures and tables) of the results so far.

        The report is built locally; for a remote ``out_dir`` (e.g. ``s3://``) it is
        built in a temporary folder and uploaded. Returns the location of ``report.html``.
        """
        from hrtem_ray.report import write_report

        target = out_dir or self.report_dir
        if storage.is_local(target) and storage.is_local(self.root):
            local = storage.local_path(target)
            return str(write_report(storage.local_path(self.results_dir), local, self.data_root))
        with tempfile.TemporaryDirectory(prefix="hrtem-report-") as tmp:
            results_copy = Path(tmp) / "results"
            results_copy.mkdir()
            self.results().write_parquet(results_copy / "results.parquet")
            write_report(results_copy, Path(tmp) / "report", data_dir=self.data_root)
            storage.upload_dir(Path(tmp) / "report", target)
        return storage.join(target, "report.html")

    def run(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        report: bool = True,
        echo: Callable[[str], None] = _echo,
    ) -> pl.DataFrame:
        """Simulate, sweep, analyse and report in one go; returns the results table."""
        self.sweep(address=address, num_cpus=num_cpus, num_gpus=num_gpus, echo=echo)
        if report:
            path = self.report()
            echo(f"report: {path}")
        return self.results()


def _object_store(address: str | None) -> int | None:
    """A modest object store for local clusters (the pipeline passes little through it)."""
    return 512 * 1024**2 if address in (None, "local") else None


def _shard_echo(echo: Callable[[str], None]) -> Callable[[dict], None]:
    def on_shard(record: dict) -> None:
        echo(
            f"simulated shard {record['key']}: {record['images']} images in {record['seconds']:.1f} s"
        )

    return on_shard
