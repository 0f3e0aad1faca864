"""The results table: load it, validate and filter it, order its domains, encode its labels.

Every analysis function (:mod:`hrtem_ray.analysis.functions`) takes the results table
(one row per trained model and evaluation domain, ``docs/results_schema.md``) as a
:class:`polars.DataFrame` or :class:`polars.LazyFrame`; :func:`select_rows` checks its
columns and ``phase`` values and applies the keyword filters, :func:`finish` collects a
result in the contract's form (string labels, domains in :func:`domain_order`).

Label columns may be strings or categoricals (:func:`load_results` returns
categoricals, see :func:`encode_labels`); either gives the same tables.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl
import pyarrow.fs as pafs

from hrtem_ray.spec.types import PHASES
from hrtem_ray.store import storage

REDUCE_MODES = ("median", "mean", "min", "max")
FILTERS = ("pretrain_lr", "transfer_lr", "n_transfer", "freeze", "seed")
TRANSFER_FILTERS = ("transfer_lr", "n_transfer", "freeze")
DOMAIN_COLUMNS = ("pretrain_domain", "transfer_domain", "eval_domain")
LABEL_COLUMNS = ("study", "phase", *DOMAIN_COLUMNS, "freeze")
#: Columns that define a configuration (everything but the seed), where a table has them:
#: the replicates of a configuration are its models. The training settings are in it (as in
#: the findings' configurations): models that differ in loss or early stopping are not
#: replicates of one another.
CONFIGURATION_COLUMNS = ("study", "phase", "pretrain_domain", "transfer_domain", "pretrain_lr",
                         "transfer_lr", "n_pretrain", "n_transfer", "freeze", "augment",
                         "target_images", "loss_function", "patience", "min_delta", "min_steps",
                         "max_epochs")  # fmt: skip
#: The columns a pair statistic reads, and those a transfer statistic reads.
BASE_COLUMNS = ("phase", "pretrain_domain", "eval_domain", "loss")
TRANSFER_COLUMNS = (*BASE_COLUMNS, "transfer_domain")
#: The columns of the baseline comparison (and of the selection tables).
BASELINE_REQUIRED = (*TRANSFER_COLUMNS, "model_id", "n_pretrain", "n_transfer")

_NO_CSE = pl.QueryOptFlags(comm_subplan_elim=False)
# The in-memory engine: its group-by sums are deterministic (the streaming engine adds
# in thread-scheduling order) and it is faster on these in-memory aggregations
# (measured 18 -> 13 ms for ood_spread on 1 M rows).
ENGINE = "in-memory"

Results = pl.DataFrame | pl.LazyFrame


# --------------------------------------------------------------------------- #
# loading and encoding
# --------------------------------------------------------------------------- #
def load_results(path: str | os.PathLike[str], categorical: bool = True) -> pl.DataFrame:
    """Read a results table from a directory, a Parquet file or a glob.

    Parameters
    ----------
    path
        A directory (all ``**/*.parquet`` below it are read), one Parquet file, or
        a glob pattern; a local path, ``file://`` or ``s3://`` URI (read with
        :func:`hrtem_ray.store.storage.read_parquet_files`).
    categorical
        Return the label columns (``study``, ``phase``, the domains, ``freeze``) as
        :class:`polars.Categorical`, which the analysis functions group about twice
        as fast as strings (see :func:`encode_labels`). ``False`` keeps the stored
        strings.

    Returns
    -------
    polars.DataFrame
        The concatenated table. Files whose schemas differ slightly (a column that
        is all-null in one file, an extra column in another) are combined by name.

    Raises
    ------
    FileNotFoundError
        If no Parquet file matches.
    ValueError
        If a file cannot be read (naming it).
    """
    table = pl.from_arrow(storage.read_parquet_files(_parquet_files(os.fspath(path))))
    return encode_labels(table) if categorical else table


def _parquet_files(path: str) -> list[str]:
    """The Parquet files ``path`` names (local paths or ``s3://`` URIs), sorted."""
    if storage.is_local(path):
        path = storage.resolve(path).path
        pattern = os.path.join(path, "**", "*.parquet") if os.path.isdir(path) else path
        files = sorted(glob.glob(pattern, recursive=True))
    else:
        loc = storage.resolve(path)
        kind = loc.fs.get_file_info(loc.path).type
        if kind == pafs.FileType.Directory:
            selector = pafs.FileSelector(loc.path, recursive=True)
            infos = loc.fs.get_file_info(selector)
            names = [i.path for i in infos if i.is_file and i.path.endswith(".parquet")]
        else:
            names = [loc.path] if kind == pafs.FileType.File else []
        files = sorted(f"s3://{name}" for name in names)
    if not files:
        raise FileNotFoundError(f"no Parquet files found at {path!r}")
    return files


def encode_labels(results: Results) -> Results:
    """Store the label columns as :class:`polars.Categorical`, the form analysis is fastest on.

    ``study``, ``phase``, the three domain columns and ``freeze`` hold a handful of
    distinct labels repeated over every row. As categoricals, grouping and
    comparing them works on integer codes instead of strings (about 2x faster on a
    million rows, see ``benchmarks/analysis.py``). Values and comparisons with
    string literals are unchanged; cast with ``pl.String`` where plain strings are
    needed (for example to join with a string-keyed table).

    Parameters
    ----------
    results
        A results table (DataFrame or LazyFrame); absent label columns are skipped.

    Returns
    -------
    polars.DataFrame or polars.LazyFrame
        The same table with the label columns re-typed.
    """
    schema = results.collect_schema()
    present = [c for c in LABEL_COLUMNS if c in schema]
    return results.with_columns(pl.col(present).cast(pl.String).cast(pl.Categorical))


# --------------------------------------------------------------------------- #
# ordering
# --------------------------------------------------------------------------- #
def domain_order(labels: Iterable[Any]) -> list[str]:
    """Order domain labels: numeric labels numerically, then the others alphabetically.

    Parameters
    ----------
    labels
        Domain labels (duplicates and ``None`` are dropped).

    Returns
    -------
    list of str
        The unique labels in display order, e.g. ``["-10", "-5", "0", "5", "10"]``.
    """

    def key(label: str) -> tuple[int, float, str]:
        try:
            return (0, float(label), label)
        except ValueError:
            return (1, 0.0, label)

    return sorted({str(x) for x in labels if x is not None}, key=key)


def _numeric_key(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.Float64, strict=False)


def sort_domains(
    frame: pl.DataFrame,
    columns: Sequence[str],
    keys: Sequence[str] = (),
    then: Sequence[str] = (),
) -> pl.DataFrame:
    """Sort by ``keys``, then the domain ``columns`` in :func:`domain_order`, then ``then``."""
    by: list[pl.Expr] = [pl.col(k) for k in keys]
    for column in columns:
        by += [_numeric_key(column), pl.col(column)]
    by += [pl.col(c) for c in then]
    if not by:
        return frame
    return frame.sort(by, nulls_last=True, maintain_order=True)


# --------------------------------------------------------------------------- #
# validation and filters
# --------------------------------------------------------------------------- #
def _as_lazy(results: Results) -> pl.LazyFrame:
    if isinstance(results, pl.LazyFrame):
        return results
    if isinstance(results, pl.DataFrame):
        return results.lazy()
    raise TypeError(
        f"results must be a polars DataFrame or LazyFrame, not {type(results).__name__}"
    )


def check_reduce(reduce: str) -> None:
    """Raise ``ValueError`` naming ``reduce`` and :data:`REDUCE_MODES` if it is not one."""
    if reduce not in REDUCE_MODES:
        raise ValueError(f"unknown reduce {reduce!r}; expected one of {', '.join(REDUCE_MODES)}")


def seconds_per_epoch(columns: Sequence[str]) -> pl.Expr:
    """A model's compute seconds per epoch from the columns a table has (``columns``).

    ``epoch_cpu_seconds`` (the median CPU time of its trial's process over an epoch,
    recorded for models trained on a CPU) where recorded: on a CPU shared with other
    trials, wall time also counts the waits for the cores, which vary with what else ran
    at the time, while CPU time counts the work. Else ``epoch_seconds`` (the median wall
    time of its epochs: GPU training), else ``train_seconds / epochs`` (which spreads the
    stage's setup and scoring over its epochs, so that models stopped after fewer epochs
    look slower per epoch); null without any.
    """
    present = set(columns)
    parts = [pl.col(c).cast(pl.Float64) for c in ("epoch_cpu_seconds", "epoch_seconds")
             if c in present]  # fmt: skip
    if {"train_seconds", "epochs"} <= present:
        parts.append(pl.col("train_seconds") / pl.col("epochs"))
    return pl.coalesce(parts) if parts else pl.lit(None, pl.Float64)


def reduce_expr(expr: pl.Expr, reduce: str) -> pl.Expr:
    """Apply a reduce mode (median, mean, min, max) to an expression."""
    return getattr(expr, reduce)()


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


def _filter_expr(filters: dict[str, Any]) -> pl.Expr:
    """Boolean expression for the keyword filters (see :func:`select_rows`)."""
    expr = pl.lit(True)
    for name, value in filters.items():
        if value is None:
            continue
        match = pl.col(name).is_in(_as_list(value))
        if name in TRANSFER_FILTERS:
            match = (pl.col("phase") != "transfer") | match
        expr = expr & match.fill_null(False)
    return expr


def _check_phases(lf: pl.LazyFrame) -> None:
    """Raise ``ValueError`` naming the unknown ``phase`` values, if any."""
    known = pl.lit(False)
    for phase in PHASES:
        known = known | (pl.col("phase") == phase)
    if not lf.select((~known.fill_null(False)).any()).collect(engine=ENGINE).item():
        return
    phases = lf.select(pl.col("phase").unique()).collect(engine=ENGINE).to_series().to_list()
    unknown = sorted(str(p) for p in phases if p not in PHASES)
    raise ValueError(f"column 'phase' has unknown value(s) {unknown}; expected {', '.join(PHASES)}")


def _shared_categorical(schema: pl.Schema, columns: Sequence[str]) -> bool:
    """Whether ``columns`` share one categorical type (see :func:`encode_labels`)."""
    dtypes = {schema[c] for c in columns}
    return len(dtypes) == 1 and isinstance(next(iter(dtypes)), (pl.Enum, pl.Categorical))


def select_rows(results: Results, required: Sequence[str], filters: dict[str, Any]) -> pl.LazyFrame:
    """Validate the table and apply the keyword filters, before any compute.

    Parameters
    ----------
    results
        The results table.
    required
        The columns the caller reads.
    filters
        ``pretrain_lr``, ``transfer_lr``, ``n_transfer``, ``freeze`` and ``seed``, each
        a single value or a list of values (``None``: no filter). ``pretrain_lr`` and
        ``seed`` restrict every row. ``transfer_lr``, ``n_transfer`` and ``freeze``
        describe the transfer stage, so they restrict the ``transfer`` rows only: the
        pretrain models a transfer starts from (and the single-stage baselines) stay
        in the selection, as in the reference study's interactive figures.

    Returns
    -------
    polars.LazyFrame
        The selected rows; the domain columns read are strings unless they share one
        categorical type.

    Raises
    ------
    TypeError
        For an unknown filter, naming it and :data:`FILTERS`.
    ValueError
        If a required column is missing or ``phase`` holds unknown values.
    """
    lf = _as_lazy(results)
    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        raise TypeError(f"unknown filter(s) {unknown}; expected any of {', '.join(FILTERS)}")
    active = [name for name, value in filters.items() if value is not None]
    needed = list(dict.fromkeys([*required, *active]))
    if any(name in TRANSFER_FILTERS for name in active):
        needed.append("phase")
    schema = lf.collect_schema()
    missing = [c for c in dict.fromkeys(needed) if c not in schema]
    if missing:
        raise ValueError(f"results table lacks required column(s): {', '.join(missing)}")
    if "phase" in schema:
        _check_phases(lf)
    domains = [c for c in DOMAIN_COLUMNS if c in needed]
    if not _shared_categorical(schema, domains):
        lf = lf.with_columns(pl.col(domains).cast(pl.String))
    if active:
        lf = lf.filter(_filter_expr(filters))
    return lf


def required_columns(columns: Sequence[str], ci: float | None) -> list[str]:
    """Required columns, plus ``model_id`` (the unit of resampling) when ``ci`` is set."""
    return [*columns, "model_id"] if ci is not None else list(columns)


# --------------------------------------------------------------------------- #
# collecting a result
# --------------------------------------------------------------------------- #
def finish(
    lf: pl.LazyFrame,
    columns: Sequence[str],
    domains: Sequence[str] = (),
    keys: Sequence[str] = (),
    order: Sequence[str] = (),
) -> pl.DataFrame:
    """Collect, keep ``keys + columns`` and sort by keys, domain order and ``order``.

    Parameters
    ----------
    lf
        A result table.
    columns
        The output columns, in order.
    domains
        Domain columns sorted in :func:`domain_order` (after ``keys``).
    keys
        Leading key columns (the ``sel_*`` columns of a selection table).
    order
        Columns sorted by last.

    Returns
    -------
    polars.DataFrame
        The table, its categorical labels cast to strings (the contract's labels).
    """
    # Common-subplan elimination made the shared pretrain branch of these small plans
    # slower (measured 17 -> 8 ms for the transfer matrix of 1 M string rows).
    frame = lf.select(*keys, *columns).collect(engine=ENGINE, optimizations=_NO_CSE)
    labels = [c for c, t in frame.schema.items() if isinstance(t, (pl.Enum, pl.Categorical))]
    frame = frame.with_columns(pl.col(labels).cast(pl.String))
    return sort_domains(frame, domains, keys, order)
