"""The results table of a study, per-trial histories and failure records.

Layout under a study's storage root (a directory or a URI)::

    results/<phase>/<model_id>.parquet     one row per (model, eval domain); written last
    history/<model_id>.parquet             per-epoch train / validation loss of the stage
    checkpoints/<model_id>/                model state of the best epoch (pretrain models)
    failures/<model_id>.json               a trial that failed for good, with its error
    quarantine/<relative path>             damaged files moved aside, each with a
                                           ``<name>.quarantine.json`` note (reason, time)

Every file is keyed by the stable ``model_id`` and written atomically, so a
trial that runs twice (at-least-once delivery after a crash) overwrites its own
rows instead of duplicating them.

Validity
--------
A model is *done* (:func:`finished_ids`) only when its result file is a valid
Parquet file: its footer reads, it has rows, the contract's columns with the
right types, and its ``model_id`` statistics name the file's own model. Only the
footer is read (a few kB per file, see :func:`check_parquet_files`): files are written
atomically, so damage shows as a footer that does not parse. Files found valid
are remembered per process by (path, size, modification time), so the repeated
calls of one sweep read each footer once.
"""

from __future__ import annotations

import datetime as _dt
import json
import posixpath
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hrtem_ray._version import __version__
from hrtem_ray.spec.types import PHASES
from hrtem_ray.store import storage
from hrtem_ray.store.digest import sha256_file
from hrtem_ray.store.layout import (
    CHECKPOINT_DIR,
    FAILURES_DIR,
    HISTORY_DIR,
    QUARANTINE_DIR,
    QUARANTINE_NOTE_SUFFIX,
    RESULTS_DIR,
)
from hrtem_ray.sweep.trials import Trial

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
        # what the loss and the time were measured with (docs/results_schema.md); tables
        # written before these columns existed lack them: read as cross_entropy / unknown
        ("loss_function", pa.string()),
        ("train_device", pa.string()),
        ("trials_sharing_device", pa.int64()),
        # the protocol (docs/results_schema.md); missing in tables written before them
        ("converged", pa.bool_()),
        ("patience", pa.int64()),
        ("max_epochs", pa.int64()),
        ("min_delta", pa.float64()),
        ("train_steps", pa.int64()),
        ("target_fraction", pa.float64()),
        ("parent_seed", pa.int64()),
        # the split scored, and the kept epoch's validation loss (selection, own domain)
        ("eval_split", pa.string()),
        ("val_loss", pa.float64()),
        # the median wall time of the stage's epochs (setup and scoring excluded), and the
        # median CPU time of its process over an epoch (CPU training only)
        ("epoch_seconds", pa.float64()),
        ("epoch_cpu_seconds", pa.float64()),
        # the stage's realistic augmentations (JSON of an AugmentSpec), null: none
        ("augment", pa.string()),
        # scored with test-time augmentation (training.tta); null: no (or a threshold row)
        ("tta", pa.bool_()),
        # threshold rows (phase threshold): the blur and polarity chosen on training tiles
        ("threshold_sigma_px", pa.float64()),
        ("threshold_polarity", pa.string()),
        # calibration on the scored images (networks): ECE and the reliability diagram
        ("ece", pa.float64()),
        ("reliability_pixels", pa.list_(pa.int64())),
        ("reliability_confidence", pa.list_(pa.float64())),
        ("reliability_frequency", pa.list_(pa.float64())),
        # "random": the target images drawn with the row's seed (training.target_images);
        # null: the first n by structure id
        ("target_images", pa.string()),
        # early stopping ended no stage before this many optimizer steps (training.min_steps)
        ("min_steps", pa.int64()),
    ]
)


@dataclass(frozen=True)
class ThresholdMetrics:
    """What a threshold row measures: the IoU, and the blur and polarity it was fitted with.

    A threshold gives no probabilities, so its ``loss`` and ``cross_entropy`` are null.
    """

    iou: float
    sigma_px: float
    polarity: str
    loss: None = None
    cross_entropy: None = None


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
    loss_function: str = "cross_entropy",
    train_device: str | None = None,
    trials_sharing_device: int | None = None,
    converged: bool | None = None,
    patience: int | None = None,
    max_epochs: int | None = None,
    min_delta: float | None = None,
    min_steps: int | None = None,
    train_steps: int | None = None,
    eval_splits: Mapping[str, str] | None = None,
    tta: bool | None = None,
    val_loss: float | None = None,
    epoch_seconds: float | None = None,
    epoch_cpu_seconds: float | None = None,
) -> pa.Table:
    """Rows of one trained model, one per eval domain.

    ``metrics`` maps eval domain -> an object with ``loss``, ``cross_entropy`` and ``iou``;
    ``epochs`` is the number of epochs the stage trained. ``loss_function``,
    ``train_device``, ``trials_sharing_device``, ``converged``, ``patience``,
    ``max_epochs`` (``None`` for fixed epochs), ``min_delta``, ``min_steps`` and ``train_steps`` are
    recorded as they are; ``target_fraction`` and ``parent_seed`` come from the trial
    (see docs/results_schema.md). ``eval_splits`` maps eval domain -> the split its metrics
    were computed on (``test`` or ``val``; default ``val``), ``tta`` whether with test-time
    augmentation (``training.tta``); ``val_loss`` is the kept
    epoch's loss on the selection images (``val`` of the model's own training domain);
    ``epoch_seconds`` the median wall time of one of its epochs (training and validation),
    ``epoch_cpu_seconds`` the median CPU time of the trial's process over one epoch (for a
    model trained on a CPU; ``None`` on a GPU).
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
            "pretrain_lr": None if trial.phase == "threshold" else trial.pretrain_lr,
            "transfer_lr": trial.transfer_lr,
            "n_pretrain": trial.n_pretrain,
            "n_transfer": trial.n_transfer,
            "freeze": trial.freeze,
            "seed": trial.seed,
            "epochs": epochs,
            "loss": _float_or_none(m.loss),
            "cross_entropy": _float_or_none(m.cross_entropy),
            "iou": float(m.iou),
            "best_epoch": best_epoch,
            "train_seconds": train_seconds,
            "config_hash": trial.config_hash,
            "hrtem_ray_version": __version__,
            "node_id": node_id,
            "started_at": started_at,
            "finished_at": finished_at,
            "loss_function": loss_function,
            "train_device": train_device,
            "trials_sharing_device": trials_sharing_device,
            "converged": converged,
            "patience": patience,
            "max_epochs": max_epochs,
            "min_delta": min_delta,
            "min_steps": min_steps,
            "train_steps": train_steps,
            "target_fraction": trial.target_fraction,
            "parent_seed": trial.parent_seed,
            "eval_split": (eval_splits or {}).get(domain, "val"),
            "val_loss": val_loss,
            "epoch_seconds": epoch_seconds,
            "epoch_cpu_seconds": epoch_cpu_seconds,
            "augment": trial.augment,
            "target_images": trial.target_images,
            "tta": tta,
            "threshold_sigma_px": getattr(m, "sigma_px", None),
            "threshold_polarity": getattr(m, "polarity", None),
            **_reliability_columns(getattr(m, "reliability", None)),
        }
        for domain, m in metrics.items()
    ]
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def _reliability_columns(diagram) -> dict:
    """The calibration columns of a row from a
    :class:`hrtem_ray.learning.calibration.Reliability` (all null without one); NaN of empty
    bins become null."""
    if diagram is None:
        return dict.fromkeys(
            ("ece", "reliability_pixels", "reliability_confidence", "reliability_frequency")
        )

    def clean(values: list[float]) -> list[float | None]:
        return [None if v != v else v for v in values]

    return {
        "ece": diagram.ece,
        "reliability_pixels": list(diagram.pixels),
        "reliability_confidence": clean(diagram.confidence),
        "reliability_frequency": clean(diagram.frequency),
    }


def _float_or_none(value: object) -> float | None:
    """``float(value)``, or None for None (the loss of a threshold row)."""
    return None if value is None else float(value)  # type: ignore[arg-type]


def write_result(root: str, trial: Trial, table: pa.Table) -> None:
    """Write a model's rows (atomically; overwrites a previous copy of the same model)."""
    storage.write_parquet_atomic(table, result_path(root, trial))


def write_history(root: str, model_id: str, history: list[dict], metadata: dict) -> None:
    """Write a trial's per-epoch history with its metadata as constant columns."""
    table = pa.Table.from_pylist([{**metadata, **record} for record in history])
    storage.write_parquet_atomic(table, history_path(root, model_id))


# ---------------------------------------------------------------------------------------------
# validity of result and history files (footer only)

# The columns of the results contract (docs/results_schema.md); the extra columns of
# RESULT_SCHEMA are optional.
RESULT_COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA.names[:21])
HISTORY_COLUMNS: tuple[str, ...] = ("model_id", "epoch", "train_loss", "val_loss")

# Remote footers are read by this many threads at once (each read is a round trip or two).
_REMOTE_THREADS = 16
# Files found valid, keyed by (uri, size, mtime): the footer of each is read once per process.
_VALID: set[tuple[str, int, int]] = set()
_VALID_LIMIT = 1_000_000


class DamagedFileWarning(UserWarning):
    """A result or history file could not be read and was skipped."""


@dataclass(frozen=True)
class ParquetFile:
    """A Parquet file found by a listing.

    Attributes
    ----------
    uri
        Its location (a path or URI under the study root).
    model_id
        The model the file belongs to (its name without ``.parquet``).
    info
        The listing's :class:`pyarrow.fs.FileInfo` (size, modification time).
    """

    uri: str
    model_id: str
    info: pafs.FileInfo


@dataclass(frozen=True)
class DamagedFile:
    """A file that is not what it should be, and why."""

    uri: str
    model_id: str
    reason: str


def _kind_of(dtype: pa.DataType) -> str:
    """A coarse type class, so that ``string`` and ``large_string`` compare equal."""
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "string"
    if pa.types.is_integer(dtype):
        return "integer"
    if pa.types.is_floating(dtype):
        return "float"
    if pa.types.is_null(dtype):
        return "null"
    return str(dtype)


_RESULT_KINDS = {name: _kind_of(RESULT_SCHEMA.field(name).type) for name in RESULT_COLUMNS}


def schema_problem(
    schema: pa.Schema, num_rows: int, required: Mapping[str, str] | Iterable[str]
) -> str | None:
    """Why a table with ``schema`` and ``num_rows`` rows is not acceptable, or None.

    Parameters
    ----------
    schema
        The table's Arrow schema.
    num_rows
        Its row count (zero rows is a problem).
    required
        Column names, or a mapping of column name -> type class (see ``_kind_of``);
        an all-null column (``null`` type) passes any type class.
    """
    if num_rows <= 0:
        return "it has no rows"
    names = set(schema.names)
    missing = [c for c in required if c not in names]
    if missing:
        return f"missing column(s) {', '.join(missing)}"
    if isinstance(required, Mapping):
        wrong = [
            f"{c} is {schema.field(c).type}"
            for c, kind in required.items()
            if _kind_of(schema.field(c).type) not in (kind, "null")
        ]
        if wrong:
            return f"wrong column type(s): {', '.join(wrong)}"
    return None


def _stats_model_ids(meta: pq.FileMetaData) -> set[str] | None:
    """The ``model_id`` values named by the row-group statistics (None when unknown)."""
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    if "model_id" not in names:
        return None
    column = names.index("model_id")
    values: set[str] = set()
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(column).statistics
        if stats is None or not stats.has_min_max:
            return None
        values |= {stats.min, stats.max}
    return values


def _footer_problem(
    fs: pafs.FileSystem, entry: ParquetFile, required: Mapping[str, str] | Iterable[str]
) -> str | None:
    """Read one file's footer and say what is wrong with it, or None."""
    key = (entry.uri, entry.info.size, entry.info.mtime_ns or 0)
    if key in _VALID:
        return None
    # pyarrow's open_input_file takes a path string only (a FileInfo raises TypeError)
    source = entry.info.path
    try:
        with fs.open_input_file(source) as handle:
            meta = pq.ParquetFile(handle).metadata
            schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError, ValueError) as exc:
        return f"unreadable Parquet ({type(exc).__name__}: {exc})"
    problem = schema_problem(schema, meta.num_rows, required)
    if problem is None:
        ids = _stats_model_ids(meta)
        if ids is not None and ids != {entry.model_id}:
            problem = f"it holds model_id {sorted(ids)}, not {entry.model_id}"
    if problem is None:
        if len(_VALID) > _VALID_LIMIT:
            _VALID.clear()
        _VALID.add(key)
    return problem


def list_parquet(folder: str) -> list[ParquetFile]:
    """The ``*.parquet`` files directly in ``folder`` (none if it does not exist), by name."""
    loc = storage.resolve(folder)
    selector = pafs.FileSelector(loc.path, allow_not_found=True, recursive=False)
    found = []
    for info in loc.fs.get_file_info(selector):
        name = posixpath.basename(info.path)
        if info.type == pafs.FileType.File and name.endswith(".parquet"):
            if not name.startswith("."):
                found.append(
                    ParquetFile(storage.join(folder, name), name.removesuffix(".parquet"), info)
                )
    return sorted(found, key=lambda f: f.uri)


def _map_files(loc: storage.StorageLocation, fn: Callable, files: list[ParquetFile]) -> list:
    """``[fn(f) for f in files]``; on remote storage in a thread pool (requests overlap)."""
    if loc.is_local or len(files) == 1:
        return [fn(f) for f in files]
    with ThreadPoolExecutor(min(_REMOTE_THREADS, len(files))) as pool:
        return list(pool.map(fn, files))


def check_parquet_files(
    files: list[ParquetFile], required: Mapping[str, str] | Iterable[str]
) -> tuple[list[ParquetFile], list[DamagedFile]]:
    """Split ``files`` into valid ones and damaged ones by reading their footers.

    Remote footers are read by a thread pool; local ones in this thread.
    """
    if not files:
        return [], []
    loc = storage.resolve(files[0].uri)
    problems = _map_files(loc, lambda entry: _footer_problem(loc.fs, entry, required), files)
    valid = [f for f, p in zip(files, problems, strict=True) if p is None]
    damaged = [DamagedFile(f.uri, f.model_id, p) for f, p in zip(files, problems, strict=True) if p]
    return valid, damaged


def scan_results(root: str) -> tuple[dict[str, str], list[DamagedFile]]:
    """Valid result files (model id -> path) and damaged ones, reading footers only."""
    files = [f for phase in PHASES for f in list_parquet(storage.join(root, RESULTS_DIR, phase))]
    valid, damaged = check_parquet_files(files, _RESULT_KINDS)
    return {f.model_id: f.uri for f in valid}, damaged


def scan_histories(root: str) -> tuple[dict[str, str], list[DamagedFile]]:
    """Valid history files (model id -> path) and damaged ones, reading footers only."""
    files = list_parquet(storage.join(root, HISTORY_DIR))
    valid, damaged = check_parquet_files(files, HISTORY_COLUMNS)
    return {f.model_id: f.uri for f in valid}, damaged


def finished_ids(root: str) -> set[str]:
    """Model ids whose result file is valid (the trial is done).

    A damaged result file does not count (see :func:`scan_results`); the sweep moves
    it to ``quarantine/`` before it starts (:func:`hrtem_ray.sweep.check.heal_before_sweep`).
    """
    return set(scan_results(root)[0])


# ---------------------------------------------------------------------------------------------
# reading tables


def _table_problem(
    uri: str, table: pa.Table, required: Mapping[str, str] | Iterable[str]
) -> str | None:
    """Why a file's table cannot be used (contract columns, rows, its own model id), or None."""
    problem = schema_problem(table.schema, table.num_rows, required)
    if problem is None and "model_id" in table.schema.names:
        model_id = posixpath.basename(uri).removesuffix(".parquet")
        ids = set(table["model_id"].unique().to_pylist())
        if ids != {model_id}:
            problem = f"it holds model_id {sorted(map(str, ids))}, not {model_id}"
    return problem


def _read_folder(
    root: str, folders: list[str], required: Mapping[str, str] | Iterable[str] = ()
) -> pl.DataFrame:
    """Concatenate the Parquet files of ``folders``, skipping (with a warning) unusable ones.

    Read by :func:`hrtem_ray.store.storage.read_parquet_files` (a thread pool).
    """
    files = [f.uri for folder in folders for f in list_parquet(storage.join(root, folder))]
    damaged: list[tuple[str, str]] = []
    table = storage.read_parquet_files(
        files,
        check=lambda uri, table: _table_problem(uri, table, required),
        on_damaged=lambda uri, problem: damaged.append((uri, problem)),
    )
    for uri, problem in damaged:
        warnings.warn(
            f"skipping damaged file {uri}: {problem} "
            f"(`hrtem-ray check {root} --repair` quarantines it; the next sweep retrains it)",
            DamagedFileWarning,
            stacklevel=3,
        )
    if table.num_columns == 0:
        return pl.DataFrame()
    return pl.from_arrow(table)


def read_results(root: str) -> pl.DataFrame:
    """The study's results table (empty with the schema's columns if nothing is done yet).

    Files that cannot be read, or lack the contract's columns, are skipped with a
    :class:`DamagedFileWarning` naming them.
    """
    frame = _read_folder(root, [f"{RESULTS_DIR}/{p}" for p in PHASES], _RESULT_KINDS)
    if frame.is_empty():
        return pl.from_arrow(RESULT_SCHEMA.empty_table())
    return frame


def read_history(root: str) -> pl.DataFrame:
    """Per-epoch histories of every finished trial (damaged files skipped with a warning)."""
    return _read_folder(root, [HISTORY_DIR], HISTORY_COLUMNS)


# ---------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_files(root: str, model_id: str) -> dict[str, int]:
    """Files of a stored checkpoint (path relative to it -> bytes); empty when there is none."""
    loc = storage.resolve(checkpoint_path(root, model_id))
    selector = pafs.FileSelector(loc.path, allow_not_found=True, recursive=True)
    prefix = loc.path.rstrip("/") + "/"
    return {
        info.path[len(prefix) :]: info.size
        for info in loc.fs.get_file_info(selector)
        if info.type == pafs.FileType.File
    }


def checkpoint_problem(root: str, model_id: str, deep: bool = False) -> str | None:
    """Why a model's stored checkpoint cannot be used, or None when it is complete.

    Parameters
    ----------
    root
        The study's storage root.
    model_id
        The model whose checkpoint (``checkpoints/<model_id>/``) is checked.
    deep
        Also read every file: compare SHA-256 digests with those in ``metadata.json``,
        or, for a checkpoint written without them, load it with torch.

    Notes
    -----
    Without ``deep`` only a listing and ``metadata.json`` are read: the checkpoint must
    have ``metadata.json`` (written last) and every file it lists with the listed size
    (checkpoints written before the listing existed: a non-empty ``model.pt``).
    """
    location = checkpoint_path(root, model_id)
    files = checkpoint_files(root, model_id)
    if not files:
        return f"checkpoint {location} is missing"
    if "metadata.json" not in files:
        return f"checkpoint {location} is incomplete (no metadata.json)"
    try:
        meta = storage.read_json(storage.join(location, "metadata.json"))
        listed = dict(meta.get("files") or {"model.pt": {}})
    except Exception as exc:  # unparsable metadata
        return f"checkpoint {location} has an unreadable metadata.json ({exc})"
    for name, expected in listed.items():
        if name not in files:
            return f"checkpoint {location} is incomplete ({name} is missing)"
        size = expected.get("bytes")
        if (size is not None and files[name] != size) or files[name] == 0:
            return f"checkpoint {location} is damaged ({name} has {files[name]} bytes, expected {size})"
    if deep:
        return _deep_checkpoint_problem(location, meta, listed)
    return None


def _deep_checkpoint_problem(location: str, meta: dict, listed: dict) -> str | None:
    """Digests of every listed file, or (no digests stored) a trial load with torch."""
    if all("sha256" in v for v in listed.values()):
        for name, expected in listed.items():
            if sha256_file(storage.join(location, name)) != expected["sha256"]:
                return f"checkpoint {location} is damaged ({name} does not match its digest)"
        return None
    import tempfile

    from hrtem_ray.learning.train import load_checkpoint

    try:
        with tempfile.TemporaryDirectory(prefix="hrtem-ckpt-check-") as tmp:
            storage.download_dir(location, tmp)
            load_checkpoint(tmp)
    except Exception as exc:  # any load error: unusable
        return f"checkpoint {location} cannot be loaded ({type(exc).__name__}: {exc})"
    return None


# ---------------------------------------------------------------------------------------------
# quarantine


def _relative(root: str, uri: str) -> str:
    """``uri``'s path relative to ``root`` (both under the same storage)."""
    base = storage.resolve(root).path.rstrip("/")
    path = storage.resolve(uri).path
    if not path.startswith(base + "/"):
        raise ValueError(f"{uri} is not under {root}")
    return path[len(base) + 1 :]


def _move(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Move a file or a folder onto ``dst`` (replacing what is there) on one filesystem."""
    kind = fs.get_file_info(dst).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(dst)
    elif kind == pafs.FileType.File:
        fs.delete_file(dst)
    fs.create_dir(posixpath.dirname(dst), recursive=True)
    is_dir = fs.get_file_info(src).type == pafs.FileType.Directory
    if is_dir and not isinstance(fs, pafs.LocalFileSystem):
        # object stores move files, not folders
        for info in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
            if info.type == pafs.FileType.File:
                fs.move(info.path, dst + info.path[len(src) :])
        fs.delete_dir(src)
    else:
        fs.move(src, dst)


def quarantine(root: str, uri: str, reason: str) -> str | None:
    """Move a damaged file or folder to ``<root>/quarantine/<its relative path>``.

    A note ``<that path>.quarantine.json`` records where it came from, why and when.
    A file that is already gone (moved by another process) is not an error.

    Returns
    -------
    str or None
        The new location, or None when there was nothing to move.
    """
    loc = storage.resolve(uri)
    if loc.fs.get_file_info(loc.path).type == pafs.FileType.NotFound:
        return None
    target = storage.join(root, QUARANTINE_DIR, _relative(root, uri))
    try:
        _move(loc.fs, loc.path, storage.resolve(target).path)
    except FileNotFoundError:
        return None
    note = {
        "path": uri,
        "moved_to": target,
        "reason": reason,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    storage.write_json_atomic(target.rstrip("/") + QUARANTINE_NOTE_SUFFIX, note)
    _VALID.difference_update({k for k in _VALID if k[0] == uri})
    return target


def invalidate_result(root: str, model_id: str, reason: str) -> list[str]:
    """Quarantine a model's result file(s), so that the next sweep trains it again.

    Returns
    -------
    list of str
        The quarantined locations (empty when the model had no result file).
    """
    moved = []
    for phase in PHASES:
        uri = storage.join(root, RESULTS_DIR, phase, f"{model_id}.parquet")
        target = quarantine(root, uri, reason)
        if target is not None:
            moved.append(target)
    return moved


def read_quarantine_notes(root: str) -> list[dict]:
    """The notes of everything quarantined under ``root`` (oldest first)."""
    loc = storage.resolve(storage.join(root, QUARANTINE_DIR))
    selector = pafs.FileSelector(loc.path, allow_not_found=True, recursive=True)
    notes = []
    for info in loc.fs.get_file_info(selector):
        if info.type == pafs.FileType.File and info.path.endswith(QUARANTINE_NOTE_SUFFIX):
            with loc.fs.open_input_stream(info.path) as fh:
                notes.append(json.loads(fh.read()))
    return sorted(notes, key=lambda n: n.get("time", ""))


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
