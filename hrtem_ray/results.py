"""The results table of a study, per-trial histories and failure records.

Layout under a study's storage root (a directory or a URI)::

    results/<phase>/<model_id>.parquet     one row per (model, eval domain); written last
    history/<model_id>.parquet             per-epoch train / validation loss of the stage
    checkpoints/<model_id>/                model state of the best epoch (pretrain models)
    failures/<model_id>.json               a trial that failed for good, with its error

Every file is keyed by the stable ``model_id`` and written atomically, so a
trial that runs twice (at-least-once delivery after a crash) overwrites its own
rows instead of duplicating them.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from hrtem_ray import __version__, storage
from hrtem_ray.trials import PHASES, Trial

RESULTS_DIR = "results"
HISTORY_DIR = "history"
CHECKPOINT_DIR = "checkpoints"
FAILURES_DIR = "failures"

RESULT_SCHEMA = pa.schema(
    [
        ("study", pa.string()),
        ("model_id", pa.string()),
        ("phase", pa.string()),
        ("parent_id", pa.string()),
        ("pretrain_domain", pa.string()),
        ("transfer_domain", pa.string()),
        ("eval_domain", pa.string()),
        ("pretrain_lr", pa.float64()),
        ("transfer_lr", pa.float64()),
        ("n_pretrain", pa.int64()),
        ("n_transfer", pa.int64()),
        ("freeze", pa.string()),
        ("seed", pa.int64()),
        ("epochs", pa.int64()),
        ("loss", pa.float64()),
        ("cross_entropy", pa.float64()),
        ("iou", pa.float64()),
        ("best_epoch", pa.int64()),
        ("train_seconds", pa.float64()),
        ("config_hash", pa.string()),
        ("hrtem_ray_version", pa.string()),
        # extra columns (allowed by the contract, ignored by the analysis)
        ("node_id", pa.string()),
        ("started_at", pa.float64()),
        ("finished_at", pa.float64()),
    ]
)


def result_path(root: str, trial: Trial) -> str:
    return storage.join(root, RESULTS_DIR, trial.phase, f"{trial.model_id}.parquet")


def history_path(root: str, model_id: str) -> str:
    return storage.join(root, HISTORY_DIR, f"{model_id}.parquet")


def checkpoint_path(root: str, model_id: str) -> str:
    return storage.join(root, CHECKPOINT_DIR, model_id)


def failure_path(root: str, model_id: str) -> str:
    return storage.join(root, FAILURES_DIR, f"{model_id}.json")


def result_rows(
    trial: Trial,
    *,
    study: str,
    epochs: int,
    metrics: Mapping[str, object],
    best_epoch: int,
    train_seconds: float,
    node_id: str,
    started_at: float,
    finished_at: float,
) -> pa.Table:
    """Rows of one trained model, one per eval domain.

    ``metrics`` maps eval domain -> an object with ``loss``, ``cross_entropy`` and ``iou``.
    """
    rows = [
        {
            "study": study,
            "model_id": trial.model_id,
            "phase": trial.phase,
            "parent_id": trial.parent_id,
            "pretrain_domain": trial.pretrain_domain,
            "transfer_domain": trial.transfer_domain,
            "eval_domain": domain,
            "pretrain_lr": trial.pretrain_lr,
            "transfer_lr": trial.transfer_lr,
            "n_pretrain": trial.n_pretrain,
            "n_transfer": trial.n_transfer,
            "freeze": trial.freeze,
            "seed": trial.seed,
            "epochs": epochs,
            "loss": float(m.loss),
            "cross_entropy": float(m.cross_entropy),
            "iou": float(m.iou),
            "best_epoch": best_epoch,
            "train_seconds": train_seconds,
            "config_hash": trial.config_hash,
            "hrtem_ray_version": __version__,
            "node_id": node_id,
            "started_at": started_at,
            "finished_at": finished_at,
        }
        for domain, m in metrics.items()
    ]
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def write_result(root: str, trial: Trial, table: pa.Table) -> None:
    """Write a model's rows (atomically; overwrites a previous copy of the same model)."""
    storage.write_parquet_atomic(table, result_path(root, trial))


def write_history(root: str, model_id: str, history: list[dict], metadata: dict) -> None:
    """Write a trial's per-epoch history with its metadata as constant columns."""
    table = pa.Table.from_pylist([{**metadata, **record} for record in history])
    storage.write_parquet_atomic(table, history_path(root, model_id))


def finished_ids(root: str) -> set[str]:
    """Model ids whose results are written (the trial is done)."""
    done = set()
    for phase in PHASES:
        folder = storage.join(root, RESULTS_DIR, phase)
        if storage.exists(folder):
            done |= {
                n.removesuffix(".parquet")
                for n in storage.listdir(folder)
                if n.endswith(".parquet")
            }
    return done


def _read_folder(root: str, folders: list[str]) -> pl.DataFrame:
    files = []
    for folder in folders:
        path = storage.join(root, folder)
        if storage.exists(path):
            files += [
                storage.join(path, n)
                for n in sorted(storage.listdir(path))
                if n.endswith(".parquet")
            ]
    if not files:
        return pl.DataFrame()
    fs = storage.resolve(root).fs
    tables = [pq.read_table(storage.resolve(f).path, filesystem=fs) for f in files]
    return pl.from_arrow(pa.concat_tables(tables, promote_options="default"))


def read_results(root: str) -> pl.DataFrame:
    """The study's results table (empty with the schema's columns if nothing is done yet)."""
    frame = _read_folder(root, [f"{RESULTS_DIR}/{p}" for p in PHASES])
    if frame.is_empty():
        return pl.from_arrow(RESULT_SCHEMA.empty_table())
    return frame


def read_history(root: str) -> pl.DataFrame:
    """Per-epoch histories of every finished trial."""
    return _read_folder(root, [HISTORY_DIR])


def write_failure(
    root: str, trial: Trial, error: str, attempts: int | None = None, kind: str = "trial"
) -> None:
    """Record a trial that failed for good.

    ``kind`` is ``trial`` (its own code failed: not run again automatically),
    ``infrastructure`` (its worker or node was lost) or ``skipped`` (its parent failed).
    """
    storage.write_json_atomic(
        failure_path(root, trial.model_id),
        {
            "model_id": trial.model_id,
            "trial": trial.describe(),
            "phase": trial.phase,
            "parent_id": trial.parent_id,
            "kind": kind,
            "error": error,
            "attempts": attempts,
        },
    )


def read_failures(root: str) -> list[dict]:
    """Failure records of the study (trials retried on the next run)."""
    folder = storage.join(root, FAILURES_DIR)
    if not storage.exists(folder):
        return []
    return [
        storage.read_json(storage.join(folder, n))
        for n in sorted(storage.listdir(folder))
        if n.endswith(".json")
    ]


def write_last_error(root: str, model_id: str, error: BaseException) -> None:
    """Note the error of a trial's latest attempt (read when it fails for good)."""
    text = f"{type(error).__name__}: {error}"
    storage.write_bytes_atomic(
        storage.join(root, FAILURES_DIR, f"{model_id}.last_error"), text.encode()
    )


def read_last_error(root: str, model_id: str) -> str | None:
    """The error noted by a trial's latest failed attempt, if any."""
    path = storage.join(root, FAILURES_DIR, f"{model_id}.last_error")
    return storage.read_bytes(path).decode() if storage.exists(path) else None


def clear_failure(root: str, model_id: str) -> None:
    """Forget a failure record and error note (the trial is being run again)."""
    storage.remove(failure_path(root, model_id))
    storage.remove(storage.join(root, FAILURES_DIR, f"{model_id}.last_error"))
