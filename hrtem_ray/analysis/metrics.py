"""Analysis of a results table: the metrics of ``docs/results_schema.md``, in Polars.

Every public function takes the results table (one row per trained model and
evaluation domain) as a :class:`polars.DataFrame` or :class:`polars.LazyFrame`
and returns a long-form :class:`polars.DataFrame` ready for Altair.

Label columns may be strings or categoricals (:func:`load_results` returns
categoricals, see :func:`encode_labels`); either gives the same tables, whose label
columns are always strings.

Filters
-------
All metric functions accept the keyword filters ``pretrain_lr``, ``transfer_lr``,
``n_transfer``, ``freeze`` and ``seed``, each a single value or a list of values,
applied before reducing. ``pretrain_lr`` and ``seed`` restrict every row.
``transfer_lr``, ``n_transfer`` and ``freeze`` describe the transfer stage, so they
restrict the ``transfer`` rows only: the pretrain models a transfer starts from (and
the single-stage baselines) stay in the selection, as in the reference study's
interactive figures.

Confidence intervals
--------------------
All metric functions accept ``ci`` (a confidence level such as ``0.95``; the default
``None`` adds nothing and leaves the tables exactly as without it), ``n_boot``
(bootstrap replicates, 1000) and ``boot_seed`` (0; named so because ``seed`` is the
filter on the models' seed column). With ``ci`` every statistic column ``x`` is
followed by ``x_ci_low`` and ``x_ci_high``, and a table without an ``n_models``
column gets one: the number of models the row's statistics are computed from.
:func:`significant` flags the rows whose interval excludes zero.

The intervals are percentile bootstrap intervals with the *model* as the unit of
resampling (a model's rows on the eval domains are not independent); the resampling
and the intervals are :mod:`hrtem_ray.analysis.bootstrap`'s, this module says which models
form a group and recomputes its statistics per replicate. Every group of models a
statistic reduces over (the pretrain models of a domain, the transfer models of a
pair, the models of a baseline point, a hyperparameter group) is resampled
independently with replacement at its own size; all eval domains of a group are
reduced from the same resample; derived statistics (spreads, gaps, asymmetries,
means over domains) are recomputed per replicate by the same code as the point
estimates. A fallback cell (a pair without transfer models) gets the interval of the
pretrain models it shows. Where a group has a single model, every interval it enters
is null, not a zero-width interval. The same ``boot_seed`` gives the same intervals,
whatever the row order or model ids. Per function, see the Notes of its docstring.
Two exact shortcuts of :mod:`hrtem_ray.analysis.bootstrap` keep this fast (every function on
a million rows takes about 3 s of CPU time, see ``benchmarks/analysis.py``): the
replicates of a median, min, max or quantile of a single cell are drawn from the
bootstrap distribution of that order statistic (two Beta draws per replicate, no
resample needed), and medians of a group on several eval domains are read off
cumulative resample counts around the expected rank. (:func:`generalization_gap` of
the transfer models is the exception: its groups are large and span every eval
domain, about 7 s on a million rows, measured on a shared 2-core machine.)

Calibration: with 30 models per cell, the 95% interval of a median covers the true
median in about 94% of repeated samples (measured; a percentile bootstrap is a bit
short for small samples, and more so with fewer models: with 2 or 3 models the
interval is just the range of the resampled statistic). Transfer models are
resampled independently of the pretrain models they started from. In the reference
study each transfer model had its own pretraining run, so the groups are
independent; where transfers share parents, intervals of statistics that combine a
transfer group with its parents' group ignore that dependence.

Internally every computation carries a list of extra grouping ``keys``; the public
functions use none, and :func:`selection_tables` uses one key per interactive filter,
which computes the tables for every filter combination in one vectorised pass.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl
import pyarrow.fs as pafs

from hrtem_ray.analysis.bootstrap import (
    CI_SUFFIXES,
    Stat,
    bootstrap_cells,
    check_ci,
    interval,
    with_ci,
)
from hrtem_ray.spec.types import PHASES
from hrtem_ray.store import storage

REDUCE_MODES = ("median", "mean", "min", "max")
FILTERS = ("pretrain_lr", "transfer_lr", "n_transfer", "freeze", "seed")
TRANSFER_FILTERS = ("transfer_lr", "n_transfer", "freeze")
DOMAIN_COLUMNS = ("pretrain_domain", "transfer_domain", "eval_domain")
LABEL_COLUMNS = ("study", "phase", *DOMAIN_COLUMNS, "freeze")
SELECTION_DIMS = ("freeze", "n_transfer", "pretrain_lr", "transfer_lr")
ALL = "all"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)

_NO_CSE = pl.QueryOptFlags(comm_subplan_elim=False)
# The in-memory engine: its group-by sums are deterministic (the streaming engine adds
# in thread-scheduling order) and it is faster on these in-memory aggregations
# (measured 18 -> 13 ms for ood_spread on 1 M rows).
_ENGINE = "in-memory"

_BASE_COLUMNS = ("phase", "pretrain_domain", "eval_domain", "loss")
_TRANSFER_COLUMNS = (*_BASE_COLUMNS, "transfer_domain")

Results = pl.DataFrame | pl.LazyFrame


# --------------------------------------------------------------------------- #
# loading, validation, ordering
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


def _as_lazy(results: Results) -> pl.LazyFrame:
    if isinstance(results, pl.LazyFrame):
        return results
    if isinstance(results, pl.DataFrame):
        return results.lazy()
    raise TypeError(
        f"results must be a polars DataFrame or LazyFrame, not {type(results).__name__}"
    )


def _check_reduce(reduce: str) -> None:
    if reduce not in REDUCE_MODES:
        raise ValueError(f"unknown reduce {reduce!r}; expected one of {', '.join(REDUCE_MODES)}")


def _reduce(expr: pl.Expr, reduce: str) -> pl.Expr:
    """Apply a reduce mode (median, mean, min, max) to an expression."""
    return getattr(expr, reduce)()


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


def _filter_expr(filters: dict[str, Any]) -> pl.Expr:
    """Boolean expression for the keyword filters (see the module docstring)."""
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
    if not lf.select((~known.fill_null(False)).any()).collect(engine=_ENGINE).item():
        return
    phases = lf.select(pl.col("phase").unique()).collect(engine=_ENGINE).to_series().to_list()
    unknown = sorted(str(p) for p in phases if p not in PHASES)
    raise ValueError(f"column 'phase' has unknown value(s) {unknown}; expected {', '.join(PHASES)}")


def _shared_categorical(schema: pl.Schema, columns: Sequence[str]) -> bool:
    """Whether ``columns`` share one categorical type (see :func:`encode_labels`)."""
    dtypes = {schema[c] for c in columns}
    return len(dtypes) == 1 and isinstance(next(iter(dtypes)), (pl.Enum, pl.Categorical))


def _select(results: Results, required: Sequence[str], filters: dict[str, Any]) -> pl.LazyFrame:
    """Validate the table and apply the filters.

    Raises
    ------
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


# --------------------------------------------------------------------------- #
# building blocks (all take and return LazyFrames carrying `keys`)
# --------------------------------------------------------------------------- #
def _pretrain_matrix(lf: pl.LazyFrame, reduce: str, keys: list[str]) -> pl.LazyFrame:
    """P(a, b): reduced loss of pretrain models of domain a on eval domain b."""
    return (
        lf.filter(pl.col("phase") == "pretrain")
        .group_by([*keys, "pretrain_domain", "eval_domain"])
        .agg(loss=_reduce(pl.col("loss"), reduce), n_models=pl.len().cast(pl.Int64))
        .rename({"eval_domain": "target_domain"})
    )


def _transfer_matrix(lf: pl.LazyFrame, reduce: str, keys: list[str]) -> pl.LazyFrame:
    """T(a, b) with the pretrain fallback P(a, b) where no transfer a -> b exists."""
    pretrain = _pretrain_matrix(lf, reduce, keys)
    transfer = (
        lf.filter(
            (pl.col("phase") == "transfer") & (pl.col("eval_domain") == pl.col("transfer_domain"))
        )
        .group_by([*keys, "pretrain_domain", "transfer_domain"])
        .agg(t_loss=_reduce(pl.col("loss"), reduce), t_models=pl.len().cast(pl.Int64))
        .rename({"transfer_domain": "target_domain"})
    )
    return pretrain.join(
        transfer, on=[*keys, "pretrain_domain", "target_domain"], how="full", coalesce=True
    ).select(
        *keys,
        "pretrain_domain",
        "target_domain",
        loss=pl.col("t_loss").fill_null(pl.col("loss")),
        n_models=pl.col("t_models").fill_null(pl.col("n_models")),
        from_pretrain=pl.col("t_loss").is_null(),
    )


def _pair_matrix(lf: pl.LazyFrame, phase: str, reduce: str, keys: list[str]) -> pl.LazyFrame:
    if phase == "pretrain":
        return _pretrain_matrix(lf, reduce, keys).with_columns(from_pretrain=pl.lit(True))
    return _transfer_matrix(lf, reduce, keys)


def _ood_spread(
    lf: pl.LazyFrame, reduce: str, exclude: Sequence[str], keys: list[str]
) -> pl.LazyFrame:
    """Population std over non-excluded eval domains, before and after transfer."""
    pretrain = _pretrain_matrix(lf, reduce, keys).rename({"target_domain": "eval_domain"})
    transfer = (
        lf.filter(pl.col("phase") == "transfer")
        .group_by([*keys, "pretrain_domain", "transfer_domain", "eval_domain"])
        .agg(loss=_reduce(pl.col("loss"), reduce))
        .rename({"transfer_domain": "target_domain"})
    )
    kept = ~pl.col("eval_domain").is_in(list(exclude))
    pairs = [*keys, "pretrain_domain", "target_domain"]
    std_pre = (
        pretrain.filter(kept)
        .group_by([*keys, "pretrain_domain"])
        .agg(std_pretrain=pl.col("loss").std(ddof=0))
    )
    # Aggregate over the kept eval domains while keeping every (a, b) pair in the grid.
    std_tr = transfer.group_by(pairs).agg(std_transfer=pl.col("loss").filter(kept).std(ddof=0))
    return (
        pretrain.select(*keys, "pretrain_domain", target_domain="eval_domain")
        .join(std_tr, on=pairs, how="full", coalesce=True)
        .join(std_pre, on=[*keys, "pretrain_domain"], how="left")
        .with_columns(pl.col("std_transfer").fill_null(pl.col("std_pretrain")))
        .with_columns(shift=pl.col("std_transfer") - pl.col("std_pretrain"))
    )


def _pretrain_domains(lf: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    return lf.filter(pl.col("phase") == "pretrain").select(*keys, domain="pretrain_domain").unique()


def _transfer_asymmetry(lf: pl.LazyFrame, reduce: str, keys: list[str]) -> pl.LazyFrame:
    """gap_ab = T(a,b) - P(b,b), gap_ba and their difference, for a != b pretrain domains."""
    domains = _pretrain_domains(lf, keys)
    pretrain = _pretrain_matrix(lf, reduce, keys)
    p_diag = pretrain.filter(pl.col("pretrain_domain") == pl.col("target_domain")).select(
        *keys, target_domain="pretrain_domain", p_bb="loss"
    )
    gaps = (
        _transfer_matrix(lf, reduce, keys)
        .filter(pl.col("pretrain_domain") != pl.col("target_domain"))
        .join(domains, left_on=[*keys, "pretrain_domain"], right_on=[*keys, "domain"], how="semi")
        .join(domains, left_on=[*keys, "target_domain"], right_on=[*keys, "domain"], how="semi")
        .join(p_diag, on=[*keys, "target_domain"], how="inner")
        .select(*keys, "pretrain_domain", "target_domain", gap_ab=pl.col("loss") - pl.col("p_bb"))
    )
    reverse = gaps.select(
        *keys, pretrain_domain="target_domain", target_domain="pretrain_domain", gap_ba="gap_ab"
    )
    return gaps.join(
        reverse, on=[*keys, "pretrain_domain", "target_domain"], how="inner"
    ).with_columns(asymmetry=pl.col("gap_ab") - pl.col("gap_ba"))


def _asymmetry_summary(lf: pl.LazyFrame, reduce: str, keys: list[str]) -> pl.LazyFrame:
    """The summary of :func:`asymmetry_summary` for every pretraining domain at once."""
    domains = _pretrain_domains(lf, keys)
    off_diag = (
        _pretrain_matrix(lf, reduce, keys)
        .filter(pl.col("pretrain_domain") != pl.col("target_domain"))
        .join(domains, left_on=[*keys, "pretrain_domain"], right_on=[*keys, "domain"], how="semi")
        .join(domains, left_on=[*keys, "target_domain"], right_on=[*keys, "domain"], how="semi")
    )
    asym = (
        _transfer_asymmetry(lf, reduce, keys)
        .group_by([*keys, "pretrain_domain"])
        .agg(transfer_asymmetry=pl.col("asymmetry").mean())
        .rename({"pretrain_domain": "domain"})
    )
    ood_from = (
        off_diag.group_by([*keys, "pretrain_domain"])
        .agg(ood_from_domain=pl.col("loss").mean())
        .rename({"pretrain_domain": "domain"})
    )
    ood_to = (
        off_diag.group_by([*keys, "target_domain"])
        .agg(ood_to_domain=pl.col("loss").mean())
        .rename({"target_domain": "domain"})
    )
    return (
        domains.join(asym, on=[*keys, "domain"], how="left")
        .join(ood_from, on=[*keys, "domain"], how="left")
        .join(ood_to, on=[*keys, "domain"], how="left")
    )


def _baseline_models(
    lf: pl.LazyFrame, keys: list[str], source: str | None, target: str | None
) -> pl.LazyFrame:
    """Per-model rows behind the baseline comparison, with source/target/method/n_target.

    Transfer models give ``source -> target`` points per ``n_transfer``; baseline
    models give mixture points (a mixture of A and B serves both orientations);
    the pretrain models of the source and of the target give the pure-source
    (0 target images) and pure-target mixture points. With ``source`` of ``None``
    every ordered pair present among the transfer and baseline models is produced.
    """
    cols = [*keys, "model_id", "eval_domain", "loss"]
    phase = pl.col("phase")
    lf = lf.with_columns(pl.col("n_transfer", "n_pretrain").cast(pl.Int64))
    transfer = lf.filter(phase == "transfer").select(
        *cols,
        source="pretrain_domain",
        target="transfer_domain",
        method=pl.lit("transfer"),
        n_target_images="n_transfer",
    )
    mixture = lf.filter(phase == "baseline")
    forward = mixture.select(
        *cols,
        source="pretrain_domain",
        target="transfer_domain",
        method=pl.lit("mixture"),
        n_target_images="n_transfer",
    )
    backward = mixture.select(
        *cols,
        source="transfer_domain",
        target="pretrain_domain",
        method=pl.lit("mixture"),
        n_target_images="n_pretrain",
    )
    paired = pl.concat([transfer, forward, backward])
    if source is not None:
        paired = paired.filter((pl.col("source") == source) & (pl.col("target") == target))
    paired = paired.filter(pl.col("source") != pl.col("target"))
    pairs = paired.select(*keys, "source", "target").unique()
    pretrain = lf.filter(phase == "pretrain").select(*cols, "pretrain_domain", "n_pretrain")
    pure_source = pairs.join(
        pretrain, left_on=[*keys, "source"], right_on=[*keys, "pretrain_domain"]
    ).select(
        *cols, "source", "target", method=pl.lit("mixture"), n_target_images=pl.lit(0, pl.Int64)
    )
    pure_target = pairs.join(
        pretrain, left_on=[*keys, "target"], right_on=[*keys, "pretrain_domain"]
    ).select(*cols, "source", "target", method=pl.lit("mixture"), n_target_images="n_pretrain")
    return pl.concat([paired, pure_source, pure_target])


_ON_TARGET = pl.col("eval_domain") == pl.col("target")
_ON_SOURCE = pl.col("eval_domain") == pl.col("source")
_BASELINE_GROUP = ("source", "target", "method", "n_target_images")


def _baseline_comparison(
    lf: pl.LazyFrame, reduce: str, keys: list[str], source: str | None, target: str | None
) -> pl.LazyFrame:
    """Reduce the models of :func:`_baseline_models` per method and number of target images."""
    models = _baseline_models(lf, keys, source, target).filter(_ON_TARGET | _ON_SOURCE)
    return _reduce_baseline(models, reduce, keys)


def _reduce_baseline(models: pl.LazyFrame, reduce: str, keys: list[str]) -> pl.LazyFrame:
    """Loss on the target and on the source per baseline-comparison group."""
    return models.group_by([*keys, *_BASELINE_GROUP]).agg(
        loss_on_target=_reduce(pl.col("loss").filter(_ON_TARGET), reduce),
        loss_on_source=_reduce(pl.col("loss").filter(_ON_SOURCE), reduce),
        n_models=pl.col("model_id").n_unique().cast(pl.Int64),
    )


def _hyperparameter_effects(
    lf: pl.LazyFrame, by: list[str], exclude: Sequence[str], keys: list[str]
) -> pl.LazyFrame:
    """Distribution of transfer models' loss on their own transfer domain, per ``by``."""
    loss = pl.col("loss")
    quantiles = {
        f"q{round(q * 100):02d}": loss.quantile(q, interpolation="linear") for q in QUANTILES
    }
    return (
        _own_domain_rows(lf, exclude)
        .group_by([*keys, *by])
        .agg(count=pl.len().cast(pl.Int64), **quantiles, mean=loss.mean())
    )


def _own_domain_rows(lf: pl.LazyFrame, exclude: Sequence[str]) -> pl.LazyFrame:
    """Rows of transfer models on their own transfer domain, except ``exclude``."""
    return lf.filter(
        (pl.col("phase") == "transfer")
        & (pl.col("eval_domain") == pl.col("transfer_domain"))
        & ~pl.col("transfer_domain").is_in(list(exclude))
    )


def _training_domain(phase: str) -> pl.Expr:
    """A model's own training domain X: the pretraining domain, or the transfer domain."""
    return pl.col("pretrain_domain" if phase == "pretrain" else "transfer_domain")


def _model_gaps(lf: pl.LazyFrame, phase: str, keys: list[str]) -> pl.LazyFrame:
    """Per model of ``phase``: ``gap = L_X'(f) - L_X(f)`` for every eval domain X' != X.

    X is the model's own training domain (:func:`_training_domain`). A model without
    a row on X has no gap. One row per (keys, model, X').
    """
    rows = lf.filter(pl.col("phase") == phase).with_columns(train_domain=_training_domain(phase))
    on_own = pl.col("eval_domain") == pl.col("train_domain")
    own = rows.filter(on_own).group_by([*keys, "model_id"]).agg(own_loss=pl.col("loss").mean())
    return (
        rows.filter(~on_own)
        .join(own, on=[*keys, "model_id"], how="inner")
        .select(
            *keys,
            "model_id",
            "train_domain",
            "eval_domain",
            gap=pl.col("loss") - pl.col("own_loss"),
        )
    )


def _generalization_gap(lf: pl.LazyFrame, phase: str, reduce: str, keys: list[str]) -> pl.LazyFrame:
    """G_OOD(X -> X') reduced over the models of ``phase`` trained on X."""
    return (
        _model_gaps(lf, phase, keys)
        .group_by([*keys, "train_domain", "eval_domain"])
        .agg(gap=_reduce(pl.col("gap"), reduce), n_models=pl.len().cast(pl.Int64))
    )


def _gap_replicates(
    lf: pl.LazyFrame, phase: str, keys: list[str], stat: Stat, n_boot: int, seed: int
) -> pl.DataFrame:
    """Bootstrap replicates of G_OOD: the models trained on each X resampled together.

    All eval domains X' of a training domain X are reduced from the same resample of
    its models (a model's gaps on the X' are not independent).
    """
    gaps = _model_gaps(lf, phase, keys).rename({"gap": "loss"})
    return bootstrap_cells(
        gaps, [*keys, "train_domain"], "eval_domain", {"gap": stat}, n_boot, seed
    )


def _model_seconds(lf: pl.LazyFrame, device: list[str]) -> pl.LazyFrame:
    """One row per model: phase, freeze, training-set size, device columns and s/epoch.

    The training-set size is the stage's images before augmentation: ``n_pretrain``
    for a pretrain model, ``n_transfer`` for a transfer model, both for a baseline
    (its mixture). ``train_seconds`` and ``epochs`` are per stage, repeated on every
    eval row of a model: the first row of each model is used.
    """
    n_pre, n_tr = pl.col("n_pretrain").cast(pl.Int64), pl.col("n_transfer").cast(pl.Int64)
    size = (
        pl.when(pl.col("phase") == "transfer")
        .then(n_tr)
        .when(pl.col("phase") == "baseline")
        .then(n_pre + n_tr)
        .otherwise(n_pre)
    )
    return (
        lf.group_by("model_id")
        .agg(
            pl.col(
                "phase", "freeze", *device, "train_seconds", "epochs", "n_pretrain", "n_transfer"
            ).first()
        )
        .filter(pl.col("train_seconds").is_not_null() & (pl.col("epochs") > 0))
        .select(
            "model_id",
            pl.col("phase").cast(pl.String),
            pl.col("freeze").cast(pl.String),
            size.alias("n_train_images"),
            *device,
            loss=pl.col("train_seconds") / pl.col("epochs"),  # named for bootstrap_cells
        )
    )


def _time_saving(table: pl.LazyFrame, groups: list[str], keys: list[str]) -> pl.LazyFrame:
    """``saving = 1 - t / t(freeze=none)`` within the same ``groups`` other than ``freeze``."""
    same = [*keys, *(g for g in groups if g != "freeze")]
    none = table.filter(pl.col("freeze") == "none").select(*same, _none="seconds_per_epoch")
    return (
        table.join(none, on=same, how="left", nulls_equal=True)
        .with_columns(saving=1 - pl.col("seconds_per_epoch") / pl.col("_none"))
        .drop("_none")
    )


# --------------------------------------------------------------------------- #
# confidence intervals: the bootstrap groups of the results table
# --------------------------------------------------------------------------- #
# The resampling (groups of models, cells, replicates) and the percentile intervals
# are hrtem_ray.analysis.bootstrap's; this section says which models form a group here and
# how many models a table's row is computed from.
_QUANTILE_OF = {"median": 0.5, "min": 0.0, "max": 1.0}


def _stat_of(reduce: str) -> Stat:
    """The bootstrap statistic of a reduce mode: ``"mean"`` or its quantile."""
    return "mean" if reduce == "mean" else _QUANTILE_OF[reduce]


def _replicated_results(
    lf: pl.LazyFrame,
    rows: pl.Expr,
    reduce: str,
    keys: list[str],
    n_boot: int,
    seed: int,
) -> pl.LazyFrame:
    """Bootstrap replicates of the pretrain and transfer cells, in the results table's shape.

    The selected ``rows`` of pretrain models are resampled per pretrain domain, those
    of transfer models per (pretrain, transfer) pair; every cell (eval domain) of a
    group holds the ``reduce`` of one resample of its models. The result has one row
    per (replicate, group, eval domain) with the ``loss`` columns of a results table
    and the key ``rep``, so the building blocks, called with ``keys + ["rep"]`` and
    any reduce mode, recompute every statistic per replicate.
    """
    groups = [*keys, "phase", "pretrain_domain", "transfer_domain"]
    frame = lf.filter(pl.col("phase").is_in(["pretrain", "transfer"]) & rows)
    stats = {"loss": _stat_of(reduce)}
    return bootstrap_cells(frame, groups, "eval_domain", stats, n_boot, seed).lazy()


def _ci_columns(columns: Sequence[str], stats: Sequence[str], ci: float | None) -> list[str]:
    """Output columns: each statistic followed by its interval, ``n_models`` at the end."""
    if ci is None:
        return list(columns)
    out = []
    for column in columns:
        out += [column, *(column + s for s in CI_SUFFIXES)] if column in stats else [column]
    return out if "n_models" in out else [*out, "n_models"]


def _group_sizes(
    replicates: pl.LazyFrame, keys: Sequence[str] = ()
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Models per pretrain domain (``n_pre``) and per transfer pair (``n_tr``), per ``keys``.

    Read from a table of :func:`_replicated_results` (its ``_n`` column), i.e. the
    models that enter the statistics.
    """
    keys = list(keys)
    first = replicates.filter(pl.col("rep") == 0)
    n = pl.col("_n").first().cast(pl.Int64)
    pretrain = (
        first.filter(pl.col("phase") == "pretrain")
        .group_by([*keys, "pretrain_domain"])
        .agg(n_pre=n)
    )
    transfer = (
        first.filter(pl.col("phase") == "transfer")
        .group_by([*keys, "pretrain_domain", "transfer_domain"])
        .agg(n_tr=n)
        .rename({"transfer_domain": "target_domain"})
    )
    return pretrain, transfer


def _pair_sizes(
    replicates: pl.LazyFrame, pairs: pl.LazyFrame, keys: Sequence[str] = ()
) -> pl.LazyFrame:
    """For (a, b) ``pairs``: ``n_pre_a``, ``n_pre_b``, ``n_tr_ab`` and ``n_tr_ba`` (0 if none)."""
    keys = list(keys)
    pretrain, transfer = _group_sizes(replicates, keys)
    swap = {"pretrain_domain": "target_domain", "target_domain": "pretrain_domain"}
    return (
        pairs.select(*keys, *_PAIR)
        .join(pretrain.rename({"n_pre": "n_pre_a"}), on=[*keys, "pretrain_domain"], how="left")
        .join(
            pretrain.rename({"pretrain_domain": "target_domain", "n_pre": "n_pre_b"}),
            on=[*keys, "target_domain"],
            how="left",
        )
        .join(transfer.rename({"n_tr": "n_tr_ab"}), on=[*keys, *_PAIR], how="left")
        .join(transfer.rename({**swap, "n_tr": "n_tr_ba"}), on=[*keys, *_PAIR], how="left")
        .with_columns(pl.col("n_pre_a", "n_pre_b", "n_tr_ab", "n_tr_ba").fill_null(0))
    )


_OTHER_GROUPS = pl.col("n_pre_b") + pl.col("n_tr_ab") + pl.col("n_tr_ba")


def _asymmetry_sizes(
    replicates: pl.LazyFrame, pairs: pl.LazyFrame, keys: Sequence[str] = ()
) -> pl.LazyFrame:
    """``n_models`` of each asymmetry pair: the pretrain models of a and b, transfers both ways."""
    sizes = _pair_sizes(replicates, pairs, keys)
    return sizes.select(*keys, *_PAIR, n_models=pl.col("n_pre_a") + _OTHER_GROUPS)


def _summary_sizes(
    replicates: pl.LazyFrame, domain: str | None, keys: Sequence[str] = ()
) -> pl.LazyFrame:
    """``n_models`` of :func:`asymmetry_summary`: every group of every pair (domain, b).

    ``domain`` of ``None``: every pretraining domain.
    """
    keys = list(keys)
    cells = replicates.filter(pl.col("rep") == 0)  # one replicate: a table of the cells
    pairs = _transfer_asymmetry(cells, "mean", keys)
    if domain is not None:
        pairs = pairs.filter(pl.col("pretrain_domain") == domain)
    return (
        _pair_sizes(replicates, pairs, keys)
        .group_by(*keys, domain="pretrain_domain")
        .agg(n_models=pl.col("n_pre_a").first() + _OTHER_GROUPS.sum())
    )


def significant(table: pl.DataFrame, column: str) -> pl.Series:
    """Whether the interval of ``column`` excludes zero, row by row.

    Meant for differences such as ``asymmetry``, ``gap_ab`` or ``shift``: true where
    ``<column>_ci_low > 0`` or ``<column>_ci_high < 0``, false where the interval
    contains 0, null where it is null (one model per cell).

    Parameters
    ----------
    table
        A table returned by an analysis function called with ``ci``.
    column
        A statistic column of it.

    Returns
    -------
    polars.Series
        Boolean, named ``<column>_significant``, one value per row (add it with
        ``table.with_columns(significant(table, column))``).

    Raises
    ------
    ValueError
        If the table has no interval columns for ``column``.
    """
    low, high = (column + s for s in CI_SUFFIXES)
    if low not in table.columns or high not in table.columns:
        raise ValueError(f"table has no {low!r} / {high!r}; call the analysis function with ci")
    low_s, high_s = table.get_column(low), table.get_column(high)
    return ((low_s > 0) | (high_s < 0)).alias(f"{column}_significant")


# --------------------------------------------------------------------------- #
# public API (results_schema.md)
# --------------------------------------------------------------------------- #
PAIR_COLUMNS = ("pretrain_domain", "target_domain", "loss", "n_models", "from_pretrain")
OOD_COLUMNS = ("pretrain_domain", "target_domain", "std_pretrain", "std_transfer", "shift")
ASYMMETRY_COLUMNS = ("pretrain_domain", "target_domain", "gap_ab", "gap_ba", "asymmetry")
SUMMARY_COLUMNS = ("domain", "transfer_asymmetry", "ood_from_domain", "ood_to_domain")
BASELINE_COLUMNS = ("method", "n_target_images", "loss_on_target", "loss_on_source", "n_models")
HYPER_STATS = ("count", *(f"q{round(q * 100):02d}" for q in QUANTILES), "mean")
_BASELINE_REQUIRED = (*_TRANSFER_COLUMNS, "model_id", "n_pretrain", "n_transfer")
_PAIR = ["pretrain_domain", "target_domain"]
# the cells the pair matrices read: pretrain models on every domain, transfer on their own
_OWN_CELLS = (pl.col("phase") == "pretrain") | (pl.col("eval_domain") == pl.col("transfer_domain"))


def _finish(
    lf: pl.LazyFrame,
    columns: Sequence[str],
    domains: Sequence[str] = (),
    keys: Sequence[str] = (),
    order: Sequence[str] = (),
) -> pl.DataFrame:
    """Collect, keep ``keys + columns`` and sort by keys, ``order`` and domain order."""
    # Common-subplan elimination made the shared pretrain branch of these small plans
    # slower (measured 17 -> 8 ms for the transfer matrix of 1 M string rows).
    frame = lf.select(*keys, *columns).collect(engine=_ENGINE, optimizations=_NO_CSE)
    labels = [c for c, t in frame.schema.items() if isinstance(t, (pl.Enum, pl.Categorical))]
    frame = frame.with_columns(pl.col(labels).cast(pl.String))  # the contract's str labels
    return sort_domains(frame, domains, keys, order)


def _required(columns: Sequence[str], ci: float | None) -> list[str]:
    """Required columns, plus ``model_id`` (the unit of resampling) when ``ci`` is set."""
    return [*columns, "model_id"] if ci is not None else list(columns)


def pair_matrix(
    results: Results,
    phase: str,
    reduce: str = "median",
    ci: float | None = None,
    n_boot: int = 1000,
    boot_seed: int = 0,
    **filters: Any,
) -> pl.DataFrame:
    """Pretrain-domain x target-domain loss matrix after pretraining or after transfer.

    Parameters
    ----------
    results
        The results table.
    phase
        ``"pretrain"``: P(a, b), the reduced loss of the models pretrained on a,
        evaluated on b. ``"transfer"``: T(a, b), the reduced loss of the models
        transferred from a to b on b; where none exists (e.g. a == b) P(a, b) is used
        and ``from_pretrain`` is true.
    reduce
        ``median`` (default), ``mean``, ``min`` or ``max`` over models.
    ci
        Confidence level of an interval for each statistic (e.g. ``0.95``); ``None``
        (default) computes none. See "Confidence intervals" in the module docstring.
    n_boot
        Bootstrap replicates (with ``ci``).
    boot_seed
        Seed of the bootstrap: the same seed gives the same intervals. (``seed`` is
        the filter on the models' seed column.)
    **filters
        ``pretrain_lr``, ``transfer_lr``, ``n_transfer``, ``freeze``, ``seed``.

    Returns
    -------
    polars.DataFrame
        Columns ``pretrain_domain``, ``target_domain``, ``loss``, ``n_models``,
        ``from_pretrain``, in domain order; with ``ci`` also ``loss_ci_low`` and
        ``loss_ci_high`` after ``loss``.

    Notes
    -----
    Interval: percentile bootstrap over the cell's models. A fallback cell
    (``from_pretrain``) gets the interval of its pretrain models. For the median (and
    min, max) the replicates of a transfer cell are drawn exactly from the bootstrap
    distribution of an order statistic (two Beta draws per replicate, see
    :mod:`hrtem_ray.analysis.bootstrap`); pretrain cells are reduced from resamples
    of the domain's models.
    """
    _check_reduce(reduce)
    check_ci(ci, n_boot)
    if phase not in ("pretrain", "transfer"):
        raise ValueError(f"phase must be 'pretrain' or 'transfer', not {phase!r}")
    required = _TRANSFER_COLUMNS if phase == "transfer" else _BASE_COLUMNS
    lf = _select(results, _required(required, ci), filters)
    table = _pair_matrix(lf, phase, reduce, [])
    if ci is not None:
        cells = pl.col("phase") == "pretrain"
        if phase == "transfer":
            cells = cells | (pl.col("eval_domain") == pl.col("transfer_domain"))
        reps = _replicated_results(lf, cells, reduce, [], n_boot, boot_seed)
        table = with_ci(table, _pair_matrix(reps, phase, "mean", ["rep"]), _PAIR, ["loss"], ci)
    return _finish(table, _ci_columns(PAIR_COLUMNS, ["loss"], ci), PAIR_COLUMNS[:2])


def ood_spread(
    results: Results,
    reduce: str = "median",
    exclude_eval_domains: Sequence[str] = ("0",),
    ci: float | None = None,
    n_boot: int = 1000,
    boot_seed: int = 0,
    **filters: Any,
) -> pl.DataFrame:
    """Out-of-distribution spread: std of the loss across eval domains, before/after transfer.

    Parameters
    ----------
    results
        The results table.
    reduce
        Reduce mode over models (per pair and eval domain) before the spread.
    exclude_eval_domains
        Eval domains left out of the spread (the in-focus ``"0"`` by default).
    ci, n_boot, boot_seed
        Intervals, see :func:`pair_matrix`.
    **filters
        See :func:`pair_matrix`.

    Returns
    -------
    polars.DataFrame
        Columns ``pretrain_domain``, ``target_domain``, ``std_pretrain`` (population
        std, ddof 0, of P(a, .)), ``std_transfer`` (the same for the transfer models
        a -> b, or ``std_pretrain`` where none exists) and
        ``shift = std_transfer - std_pretrain``. With ``ci``: ``_ci_low`` and
        ``_ci_high`` after each of the three, and ``n_models``, the pretrain models
        of a plus the transfer models a -> b.

    Notes
    -----
    Interval: percentile bootstrap. Per replicate the pretrain models of a and the
    transfer models a -> b are resampled independently; each resample is reduced on
    every eval domain (the same resampled models on all of them) and the spreads and
    their shift are recomputed. Where no transfer exists the shift is 0 by definition
    and so is its interval.
    """
    _check_reduce(reduce)
    check_ci(ci, n_boot)
    lf = _select(results, _required(_TRANSFER_COLUMNS, ci), filters)
    exclude = [str(d) for d in exclude_eval_domains]
    table = _ood_spread(lf, reduce, exclude, [])
    stats = OOD_COLUMNS[2:]
    if ci is not None:
        cells = (pl.col("phase") == "pretrain") | ~pl.col("eval_domain").is_in(exclude)
        reps = _replicated_results(lf, cells, reduce, [], n_boot, boot_seed)
        table = with_ci(table, _ood_spread(reps, "mean", exclude, ["rep"]), _PAIR, stats, ci)
        n = _pair_sizes(reps, table).select(*_PAIR, n_models=pl.col("n_pre_a") + pl.col("n_tr_ab"))
        table = table.join(n, on=_PAIR, how="left", nulls_equal=True)
    return _finish(table, _ci_columns(OOD_COLUMNS, stats, ci), OOD_COLUMNS[:2])


def transfer_asymmetry(
    results: Results,
    reduce: str = "median",
    ci: float | None = None,
    n_boot: int = 1000,
    boot_seed: int = 0,
    **filters: Any,
) -> pl.DataFrame:
    """Transfer gaps and their asymmetry for ordered pairs of pretraining domains.

    ``gap_ab = T(a, b) - P(b, b)``, ``gap_ba = T(b, a) - P(a, a)`` and
    ``asymmetry = gap_ab - gap_ba`` (negative: a transfers to b better than the
    reverse), for every a != b that are both pretraining domains.

    Parameters
    ----------
    results
        The results table.
    reduce, ci, n_boot, boot_seed, **filters
        See :func:`pair_matrix`.

    Returns
    -------
    polars.DataFrame
        Columns ``pretrain_domain`` (a), ``target_domain`` (b), ``gap_ab``,
        ``gap_ba``, ``asymmetry``. With ``ci``: ``_ci_low`` and ``_ci_high`` after
        each of the three, and ``n_models``, the models of the four groups involved
        (pretrain models of a and of b, transfer models a -> b and b -> a).

    Notes
    -----
    Interval: percentile bootstrap. The four groups (T(a, b) or its pretrain
    fallback, P(b, b), T(b, a), P(a, a)) are resampled independently per replicate
    and the gaps and asymmetry recomputed; a group used twice (P(a, .) as fallback
    and as P(a, a)) is one resample. Median replicates of transfer cells are exact
    order-statistic draws, as in :func:`pair_matrix`.
    """
    _check_reduce(reduce)
    check_ci(ci, n_boot)
    lf = _select(results, _required(_TRANSFER_COLUMNS, ci), filters)
    table = _transfer_asymmetry(lf, reduce, [])
    stats = ASYMMETRY_COLUMNS[2:]
    if ci is not None:
        reps = _replicated_results(lf, _OWN_CELLS, reduce, [], n_boot, boot_seed)
        table = with_ci(table, _transfer_asymmetry(reps, "mean", ["rep"]), _PAIR, stats, ci)
        table = table.join(_asymmetry_sizes(reps, table), on=_PAIR, how="left")
    return _finish(table, _ci_columns(ASYMMETRY_COLUMNS, stats, ci), ASYMMETRY_COLUMNS[:2])


def asymmetry_summary(
    results: Results,
    domain: str,
    reduce: str = "median",
    ci: float | None = None,
    n_boot: int = 1000,
    boot_seed: int = 0,
    **filters: Any,
) -> pl.DataFrame:
    """One-row summary of how a pretraining domain transfers and generalises.

    Parameters
    ----------
    results
        The results table.
    domain
        A pretraining domain (``"0"``, in focus, for the defocus study).
    reduce, ci, n_boot, boot_seed, **filters
        See :func:`pair_matrix`.

    Returns
    -------
    polars.DataFrame
        Columns ``domain``; ``transfer_asymmetry``, the mean over the other
        pretraining domains b of ``asymmetry(domain, b)``; ``ood_from_domain``, the
        mean of P(domain, b); ``ood_to_domain``, the mean of P(b, domain). Empty if
        ``domain`` is not a pretraining domain of the selection. With ``ci``:
        ``_ci_low`` and ``_ci_high`` after each of the three, and ``n_models``, the
        models of every group involved.

    Notes
    -----
    Interval: percentile bootstrap; every group entering a statistic (the pretrain
    models of each domain, the transfer models of each pair) is resampled
    independently per replicate and the means recomputed, as in
    :func:`transfer_asymmetry`.
    """
    _check_reduce(reduce)
    check_ci(ci, n_boot)
    lf = _select(results, _required(_TRANSFER_COLUMNS, ci), filters)
    here = pl.col("domain") == str(domain)
    table = _asymmetry_summary(lf, reduce, []).filter(here)
    stats = SUMMARY_COLUMNS[1:]
    if ci is not None:
        reps = _replicated_results(lf, _OWN_CELLS, reduce, [], n_boot, boot_seed)
        replicated = _asymmetry_summary(reps, "mean", ["rep"]).filter(here)
        table = with_ci(table, replicated, ["domain"], stats, ci)
        table = table.join(_summary_sizes(reps, str(domain)), on="domain", how="left")
    return _finish(table, _ci_columns(SUMMARY_COLUMNS, stats, ci))


def baseline_comparison(
    results: Results,
    source: str,
    target: str,
    reduce: str = "mean",
    ci: float | None = None,
    n_boot: int = 1000,
    boot_seed: int = 0,
    **filters: Any,
) -> pl.DataFrame:
    """Transfer learning versus single-stage training on a mixture, for one domain pair.

    Parameters
    ----------
    results
        The results table.
    source, target
        The source (pretraining) and target domains.
    reduce
        Reduce mode over models (``mean`` by default).
    ci, n_boot, boot_seed
        Intervals, see :func:`pair_matrix`.
    **filters
        See :func:`pair_matrix`.

    Returns
    -------
    polars.DataFrame
        Columns ``method`` (``transfer`` or ``mixture``), ``n_target_images``,
        ``loss_on_target``, ``loss_on_source``, ``n_models``. Transfer rows come from
        the models source -> target per ``n_transfer``; mixture rows from the
        baseline models of the pair per number of target images, plus the
        pure-source (0 target images) and pure-target points from the pretrain
        models of each domain. With ``ci``: ``_ci_low`` and ``_ci_high`` after both
        losses.

    Notes
    -----
    Interval: percentile bootstrap over the models of each row (their losses on the
    target and on the source come from the same resample).
    """
    _check_reduce(reduce)
    check_ci(ci, n_boot)
    lf = _select(results, _BASELINE_REQUIRED, filters)
    source, target = str(source), str(target)
    table = _baseline_comparison(lf, reduce, [], source, target)
    stats = BASELINE_COLUMNS[2:4]
    if ci is not None:
        models = _baseline_models(lf, [], source, target).filter(_ON_TARGET | _ON_SOURCE)
        stat = {"loss": _stat_of(reduce)}
        reps = bootstrap_cells(models, _BASELINE_GROUP, "eval_domain", stat, n_boot, boot_seed)
        replicated = _reduce_baseline(
            reps.lazy().with_columns(model_id=pl.lit("")), "mean", ["rep"]
        )
        table = with_ci(table, replicated, _BASELINE_GROUP, stats, ci)
    columns = _ci_columns(BASELINE_COLUMNS, stats, ci)
    return _finish(table, columns, order=("method", "n_target_images"))


def _by_columns(by: str | Sequence[str]) -> list[str]:
    return [by] if isinstance(by, str) else list(by)


def hyperparameter_effects(
    results: Results,
    by: str | Sequence[str],
    exclude_target_domains: Sequence[str] = ("0",),
    ci: float | None = None,
    n_boot: int = 1000,
    boot_seed: int = 0,
    **filters: Any,
) -> pl.DataFrame:
    """Distribution of the transfer models' loss on their own transfer domain.

    Parameters
    ----------
    results
        The results table.
    by
        Grouping column(s): ``"n_transfer"``, ``"freeze"`` or
        ``("pretrain_lr", "transfer_lr")`` (any columns of the table work).
    exclude_target_domains
        Transfer domains left out (the in-focus ``"0"`` by default).
    ci, n_boot, boot_seed
        Intervals, see :func:`pair_matrix`.
    **filters
        See :func:`pair_matrix`.

    Returns
    -------
    polars.DataFrame
        The ``by`` columns, then ``count``, the quantiles ``q05``, ``q25``, ``q50``,
        ``q75``, ``q95`` (linear interpolation) and ``mean``. With ``ci``:
        ``_ci_low`` and ``_ci_high`` after each quantile and the mean, and
        ``n_models`` (distinct models; ``count`` counts rows).

    Notes
    -----
    Interval: percentile bootstrap over the group's models; the replicates of each
    quantile are exact order-statistic draws (see :mod:`hrtem_ray.analysis.bootstrap`),
    those of the mean come from resampled models.
    """
    check_ci(ci, n_boot)
    by = _by_columns(by)
    lf = _select(results, _required([*_TRANSFER_COLUMNS, *by], ci), filters)
    exclude = [str(d) for d in exclude_target_domains]
    table = _hyperparameter_effects(lf, by, exclude, [])
    stats = HYPER_STATS[1:]
    if ci is not None:
        rows = _own_domain_rows(lf, exclude)
        quantiles = dict(zip(stats, (*QUANTILES, "mean"), strict=True))
        reps = bootstrap_cells(rows, by, None, quantiles, n_boot, boot_seed)
        table = with_ci(table, reps.lazy(), by, stats, ci)
        n = reps.lazy().filter(pl.col("rep") == 0).select(*by, n_models=pl.col("_n"))
        table = table.join(n, on=by, how="left", nulls_equal=True)
    columns = _ci_columns([*by, *HYPER_STATS], stats, ci)
    return _finish(table, columns, order=by)


GAP_COLUMNS = ("train_domain", "eval_domain", "gap", "n_models")
#: Per-row columns saying what a training time was measured on (optional in a table).
DEVICE_COLUMNS = ("train_device", "trials_sharing_device")
TIME_COLUMNS = ("phase", "freeze", "n_train_images", "seconds_per_epoch", "saving", "n_models")
_TIME_REQUIRED = (
    "model_id",
    "phase",
    "freeze",
    "n_pretrain",
    "n_transfer",
    "train_seconds",
    "epochs",
)


def generalization_gap(
    results: Results,
    phase: str,
    reduce: str = "median",
    ci: float | None = None,
    n_boot: int = 1000,
    boot_seed: int = 0,
    **filters: Any,
) -> pl.DataFrame:
    """The reference study's generalization measure G_OOD(X -> X'), per pair of domains.

    ``G_OOD(f, X -> X') = L_X'(f) - L_X(f)``: the loss of model f on the eval domain
    X' minus its loss on X, its own training domain (the pretraining domain of a
    pretrain model, the transfer domain of a transfer model). Computed per model for
    every eval domain X' != X, then reduced over the models trained on X (a transfer
    model counts for its transfer domain, whatever it was pretrained on).

    Parameters
    ----------
    results
        The results table (``model_id`` pairs a model's rows).
    phase
        ``"pretrain"`` or ``"transfer"``: the models whose gaps are computed.
    reduce, ci, n_boot, boot_seed, **filters
        See :func:`pair_matrix`.

    Returns
    -------
    polars.DataFrame
        Columns ``train_domain`` (X), ``eval_domain`` (X'), ``gap`` (positive: worse
        away from home) and ``n_models``, in domain order; with ``ci`` also
        ``gap_ci_low`` and ``gap_ci_high`` after ``gap``. A model without a row on
        its own training domain has no gap and is not counted.

    Notes
    -----
    Interval: percentile bootstrap over the models trained on X, resampled once per
    replicate for all eval domains X' (the same resampled models on each).
    """
    _check_reduce(reduce)
    check_ci(ci, n_boot)
    if phase not in ("pretrain", "transfer"):
        raise ValueError(f"phase must be 'pretrain' or 'transfer', not {phase!r}")
    lf = _select(results, [*_TRANSFER_COLUMNS, "model_id"], filters)
    table = _generalization_gap(lf, phase, reduce, [])
    if ci is not None:
        reps = _gap_replicates(lf, phase, [], _stat_of(reduce), n_boot, boot_seed)
        table = with_ci(table, reps.lazy(), GAP_COLUMNS[:2], ["gap"], ci)
    return _finish(table, _ci_columns(GAP_COLUMNS, ["gap"], ci), GAP_COLUMNS[:2])


def training_time(
    results: Results,
    reduce: str = "median",
    ci: float | None = None,
    n_boot: int = 1000,
    boot_seed: int = 0,
    **filters: Any,
) -> pl.DataFrame:
    """Seconds per training epoch by phase, frozen part and training-set size, and the saving.

    Each model counts once: its stage's ``train_seconds / epochs``. ``saving`` is the
    fraction of the time per epoch saved against ``freeze == "none"`` in the same
    phase, training-set size and device columns (``1 - t / t_none``; positive:
    faster; null where no unfrozen model matches). Finding 5 of the reference study:
    freezing the encoder saves 15-25 % of the training time.

    Parameters
    ----------
    results
        The results table. When it has the columns :data:`DEVICE_COLUMNS`
        (``train_device``, ``trials_sharing_device``: what the time was measured on
        and how many trials shared that device), times are grouped by them as well,
        so that timings taken under different GPU sharing are never compared; a table
        without them is grouped without them.
    reduce, ci, n_boot, boot_seed, **filters
        See :func:`pair_matrix` (``reduce`` is over models, ``median`` by default).

    Returns
    -------
    polars.DataFrame
        Columns ``phase``, ``freeze``, ``n_train_images`` (``n_pretrain`` for
        pretrain, ``n_transfer`` for transfer, their sum for a baseline mixture), the
        device columns present, ``seconds_per_epoch``, ``saving`` and ``n_models``;
        with ``ci`` the intervals of ``seconds_per_epoch`` and ``saving``.

    Notes
    -----
    Interval: percentile bootstrap over the models of each group, every group
    resampled independently; the saving is recomputed per replicate from the two
    resampled groups it compares.
    """
    _check_reduce(reduce)
    check_ci(ci, n_boot)
    lf = _select(results, _TIME_REQUIRED, filters)
    device = [c for c in DEVICE_COLUMNS if c in lf.collect_schema()]
    groups = ["phase", "freeze", "n_train_images", *device]
    models = _model_seconds(lf, device)
    table = models.group_by(groups).agg(
        seconds_per_epoch=_reduce(pl.col("loss"), reduce), n_models=pl.len().cast(pl.Int64)
    )
    table = _time_saving(table, groups, [])
    stats = ["seconds_per_epoch", "saving"]
    if ci is not None:
        stat = {"seconds_per_epoch": _stat_of(reduce)}
        reps = bootstrap_cells(models, groups, None, stat, n_boot, boot_seed).lazy()
        table = with_ci(table, _time_saving(reps, groups, ["rep"]), groups, stats, ci)
    columns = [*TIME_COLUMNS[:3], *device, *_ci_columns(TIME_COLUMNS[3:], stats, ci)]
    return _finish(table, columns, order=groups)


#: The reference study's Figure 7.2 configuration: transfer = pretrain at lr 1e-4 on 512
#: images, then transfer at lr 1e-5 (no freezing); mixture = one stage at lr 1e-4.
FIGURE_7_2 = {"pretrain_lr": 1e-4, "transfer_lr": 1e-5, "n_pretrain": 512, "freeze": "none"}
FIGURE_7_2_COLUMNS = (
    "source", "target", "method", "n_target_images", "model_id", "seed", "loss",
    "pretrain_lr", "transfer_lr", "n_pretrain", "freeze",
)  # fmt: skip
_FIGURE_7_2_REQUIRED = (*_BASELINE_REQUIRED, "seed", "pretrain_lr", "transfer_lr", "freeze")


def _log_distance(column: str, target: float) -> pl.Expr:
    """``|log10(column / target)|``, 0 where the column is null."""
    return (pl.col(column).cast(pl.Float64) / target).log10().abs().fill_null(0.0)


def transfer_mixture_models(results: Results, **filters: Any) -> pl.DataFrame:
    """The per-model points of the reference study's Figure 7.2: transfer against mixture.

    For every (source, target) pair with both arms, the loss on the target domain of
    each model: the transfer models ``source -> target`` (x: their ``n_transfer``) and
    the baseline mixtures with ``pretrain_domain == source`` and ``transfer_domain ==
    target`` (x: their target images, ``n_transfer``). Unlike
    :func:`baseline_comparison`, a mixture counts for its own orientation only and no
    pure-source or pure-target points are added, as in the figure.

    Configuration rule: per pair and arm, one configuration is kept, the one closest
    to the paper's (:data:`FIGURE_7_2`): first unfrozen transfers (``freeze ==
    "none"``) when there are any, then the smallest sum of ``|log10(lr / paper lr)|``
    over the learning rates (pretrain lr 1e-4 and transfer lr 1e-5; mixture lr
    1e-4), then the number of pretraining images closest to 512 (transfer arm; in
    log ratio), then the smallest values (a deterministic tie-break). A study with the
    paper's learning rates therefore shows exactly the paper's arms; a study that used
    others (the laptop preset's 1e-3 / 3e-4) shows the configuration nearest to them.

    Parameters
    ----------
    results
        The results table.
    **filters
        See :func:`pair_matrix`, applied before the rule.

    Returns
    -------
    polars.DataFrame
        Columns :data:`FIGURE_7_2_COLUMNS`, one row per model, sorted by pair (domain
        order), method and ``n_target_images``; ``method`` is ``transfer`` or
        ``mixture``.
    """
    lf = _select(results, _FIGURE_7_2_REQUIRED, filters)
    phase = pl.col("phase")
    arms = (
        lf.filter(
            phase.is_in(["transfer", "baseline"])
            & (pl.col("eval_domain") == pl.col("transfer_domain"))
        )
        .select(
            source="pretrain_domain",
            target="transfer_domain",
            method=pl.when(phase == "transfer")
            .then(pl.lit("transfer"))
            .otherwise(pl.lit("mixture")),
            n_target_images=pl.col("n_transfer").cast(pl.Int64),
            model_id=pl.col("model_id").cast(pl.String),
            seed=pl.col("seed").cast(pl.Int64),
            loss="loss",
            pretrain_lr=pl.col("pretrain_lr").cast(pl.Float64),
            transfer_lr=pl.col("transfer_lr").cast(pl.Float64),
            # the pretraining images define the transfer arm; a mixture's vary with it
            n_pretrain=pl.when(phase == "transfer").then(pl.col("n_pretrain").cast(pl.Int64)),
            freeze=pl.col("freeze").cast(pl.String),
        )
        .filter(pl.col("source") != pl.col("target"))
    )
    pair = ["source", "target"]
    both = arms.group_by(pair).agg(pl.col("method").n_unique()).filter(pl.col("method") == 2)
    arms = arms.join(both.select(pair), on=pair, how="semi")
    config = ["pretrain_lr", "transfer_lr", "n_pretrain", "freeze"]
    paper = FIGURE_7_2
    chosen = (
        arms.select(*pair, "method", *config)
        .unique()
        .with_columns(
            _frozen=pl.col("freeze") != "none",
            _lr=_log_distance("pretrain_lr", paper["pretrain_lr"])
            + _log_distance("transfer_lr", paper["transfer_lr"]),
            _n=_log_distance("n_pretrain", paper["n_pretrain"]),
        )
        .sort([*pair, "method", "_frozen", "_lr", "_n", *config], nulls_last=True)
        .group_by([*pair, "method"], maintain_order=True)
        .first()
        .select(*pair, "method", *config)
    )
    table = arms.join(chosen, on=[*pair, "method", *config], how="semi", nulls_equal=True)
    return _finish(table, FIGURE_7_2_COLUMNS, pair, order=("method", "n_target_images", "model_id"))


# --------------------------------------------------------------------------- #
# every filter combination at once (for the interactive report)
# --------------------------------------------------------------------------- #
def format_value(value: Any) -> str:
    """Label of a filter value: ``format(value, "g")`` for floats, ``str`` otherwise."""
    return format(value, "g") if isinstance(value, float) else str(value)


def _expand_selections(
    lf: pl.LazyFrame, dims: Sequence[str]
) -> tuple[pl.LazyFrame, dict[str, list[str]]]:
    """Replicate each row into every filter selection it belongs to.

    For each dimension d a column ``sel_d`` is added holding ``"all"`` or a value
    label. A row that the filter restricts (see the module docstring) belongs to
    ``"all"`` and to its own value; a row it does not restrict belongs to every
    choice. Grouping by the ``sel_*`` columns then yields, per group, exactly the
    rows the corresponding keyword filters would keep.
    """
    choices: dict[str, list[str]] = {}
    for dim in dims:
        restricted = pl.col("phase") == "transfer" if dim in TRANSFER_FILTERS else pl.lit(True)
        values = lf.filter(restricted).select(pl.col(dim).drop_nulls().unique())
        values = values.collect(engine=_ENGINE)
        labels = {v: format_value(v) for v in sorted(values.to_series().to_list())}
        choices[dim] = [ALL, *labels.values()]
        own = pl.concat_list(
            pl.col(dim).replace_strict(labels, default=None, return_dtype=pl.String), pl.lit(ALL)
        )
        every = pl.lit(pl.Series([choices[dim]], dtype=pl.List(pl.String)))
        column = f"sel_{dim}"
        lf = lf.with_columns(pl.when(restricted).then(own).otherwise(every).alias(column)).explode(
            column
        )
    return lf, choices


def _distinct_selections(
    expanded: pl.LazyFrame, keys: list[str]
) -> tuple[pl.DataFrame, pl.LazyFrame]:
    """Number the distinct sets of models among the selections, to bootstrap each once.

    Filters act on model attributes, so two selections with the same set of model ids
    hold the same rows and give the same tables (with one value per dimension,
    ``"all"`` and that value select the same models).

    Returns
    -------
    selections
        The ``keys`` of every selection and ``_sel``, the number of its set of models.
    distinct
        The rows of the first selection of each set, with ``_sel`` in place of ``keys``
        (one integer key groups faster than the ``sel_*`` strings).
    """
    fingerprints = (
        expanded.group_by(keys)
        .agg(_ids=pl.col("model_id").cast(pl.String).unique().sort().str.join("\n"))
        .sort(keys)
        .collect(engine=_ENGINE)
    )
    selections = fingerprints.with_columns(
        _sel=pl.col("_ids").rank("dense").cast(pl.Int64),
        _first=pl.col("_ids").is_first_distinct(),
    )
    first = selections.filter("_first").select(*keys, "_sel").lazy()
    distinct = expanded.join(first, on=keys, how="inner").drop(keys)
    return selections.select(*keys, "_sel"), distinct


def _selection_intervals(
    expanded: pl.LazyFrame,
    reduce: str,
    keys: list[str],
    exclude: Sequence[str],
    ci: float,
    n_boot: int,
    boot_seed: int,
) -> dict[str, tuple[pl.LazyFrame, list[str]]]:
    """Intervals (and sizes) of the reduced tables of one mode of :func:`selection_tables`.

    One replicate table of the pretrain and transfer cells (every eval domain the
    pair matrices, spreads and asymmetries read) serves all of them, per selection
    ``keys``; the statistics are recomputed per replicate by the building blocks, as
    in the public functions.

    Returns
    -------
    dict
        Table name -> (its interval columns, plus ``n_models`` where the table has
        none, keyed by ``keys`` and the table's row labels; those join columns).
    """
    cells = _OWN_CELLS | ~pl.col("eval_domain").is_in(list(exclude))
    reps = _replicated_results(expanded, cells, reduce, keys, n_boot, boot_seed)
    reps = reps.collect(engine=_ENGINE).lazy()
    rep_keys = [*keys, "rep"]
    own = reps.filter(_OWN_CELLS)
    on = [*keys, *_PAIR]
    pairs = pl.concat(
        [
            _pair_matrix(own, phase, "mean", rep_keys).with_columns(phase=pl.lit(phase))
            for phase in ("pretrain", "transfer")
        ]
    )
    ood = interval(_ood_spread(reps, "mean", exclude, rep_keys), on, OOD_COLUMNS[2:], ci)
    ood_sizes = _pair_sizes(reps, ood, keys).select(
        *on, n_models=pl.col("n_pre_a") + pl.col("n_tr_ab")
    )
    asym = interval(_transfer_asymmetry(own, "mean", rep_keys), on, ASYMMETRY_COLUMNS[2:], ci)
    on_domain = [*keys, "domain"]
    summary = interval(
        _asymmetry_summary(own, "mean", rep_keys), on_domain, SUMMARY_COLUMNS[1:], ci
    )
    models = _baseline_models(expanded, keys, None, None).filter(_ON_TARGET | _ON_SOURCE)
    groups = [*keys, *_BASELINE_GROUP]
    baseline = bootstrap_cells(
        models, groups, "eval_domain", {"loss": _stat_of(reduce)}, n_boot, boot_seed
    )
    baseline = _reduce_baseline(baseline.lazy().with_columns(model_id=pl.lit("")), "mean", rep_keys)
    gap_on = [*keys, "phase", *GAP_COLUMNS[:2]]
    gaps = pl.concat(
        [
            _gap_replicates(expanded, phase, keys, _stat_of(reduce), n_boot, boot_seed)
            .lazy()
            .with_columns(phase=pl.lit(phase))
            for phase in ("pretrain", "transfer")
        ]
    )
    return {
        "pair_matrix": (interval(pairs, [*on, "phase"], ["loss"], ci), [*on, "phase"]),
        "ood_spread": (ood.join(ood_sizes, on=on, how="left"), on),
        "transfer_asymmetry": (asym.join(_asymmetry_sizes(reps, asym, keys), on=on), on),
        "asymmetry_summary": (
            summary.join(_summary_sizes(own, None, keys), on=on_domain, how="left"),
            on_domain,
        ),
        "baseline_comparison": (interval(baseline, groups, BASELINE_COLUMNS[2:4], ci), groups),
        "generalization_gap": (interval(gaps, gap_on, ["gap"], ci), gap_on),
    }


def _hyperparameter_intervals(
    expanded: pl.LazyFrame,
    by: list[str],
    exclude: Sequence[str],
    keys: list[str],
    ci: float,
    n_boot: int,
    boot_seed: int,
) -> pl.LazyFrame:
    """Intervals and ``n_models`` of a hyperparameter table of :func:`selection_tables`."""
    stats = HYPER_STATS[1:]
    quantiles = dict(zip(stats, (*QUANTILES, "mean"), strict=True))
    groups = [*keys, *by]
    rows = _own_domain_rows(expanded, exclude)
    reps = bootstrap_cells(rows, groups, None, quantiles, n_boot, boot_seed).lazy()
    n = reps.filter(pl.col("rep") == 0).select(*groups, n_models=pl.col("_n"))
    return interval(reps, groups, stats, ci).join(n, on=groups, how="left", nulls_equal=True)


def _join_intervals(
    table: pl.LazyFrame,
    intervals: pl.LazyFrame,
    on: list[str],
    selections: pl.DataFrame | None,
    keys: list[str],
) -> pl.LazyFrame:
    """A selection table with intervals joined on ``on``.

    ``intervals`` are keyed by ``_sel``, the set of models of
    :func:`_distinct_selections` (its numbering is ``selections``), and are copied to
    every selection ``keys`` holding that set; ``selections`` of ``None``: no keys.
    """
    if selections is not None:
        intervals = selections.lazy().join(intervals, on="_sel", how="inner").drop("_sel")
        on = [*keys, *(c for c in on if c != "_sel")]
    return table.join(intervals, on=on, how="left", nulls_equal=True)


def selection_tables(
    results: Results,
    dims: Sequence[str] = SELECTION_DIMS,
    reduce_modes: Sequence[str] = REDUCE_MODES,
    exclude_eval_domains: Sequence[str] = ("0",),
    exclude_target_domains: Sequence[str] = ("0",),
    ci: float | None = None,
    n_boot: int = 1000,
    boot_seed: int = 0,
) -> tuple[dict[str, pl.DataFrame], dict[str, list[str]]]:
    """Every analysis table for every reduce mode and filter selection, in long form.

    Parameters
    ----------
    results
        The results table.
    dims
        Filter dimensions to expand (those absent from the table are skipped).
    reduce_modes
        Reduce modes to compute.
    exclude_eval_domains, exclude_target_domains
        As in :func:`ood_spread` and :func:`hyperparameter_effects`.
    ci, n_boot, boot_seed
        Intervals, as in the public functions: every statistic column gets its
        ``_ci_low`` / ``_ci_high`` columns and every table an ``n_models`` column.
        Each selection is bootstrapped on its own (its groups draw from their own
        random streams), so an interval equals the public function's in
        distribution, not bit for bit.

    Returns
    -------
    tables
        ``pair_matrix`` (with a ``phase`` column), ``ood_spread``,
        ``transfer_asymmetry``, ``asymmetry_summary``, ``baseline_comparison``
        (with ``source`` and ``target``), ``generalization_gap`` (with a ``phase``
        column) and ``hyperparameters_<by>``; each with a
        column ``sel_<dim>`` per dimension (``"all"`` or a value label) and, for the
        reduced tables, ``sel_reduce``. Selecting one value per ``sel_*`` column gives
        the table the public function returns for those filters.
    choices
        The labels per dimension (``"all"`` first) and ``"reduce"``.
    """
    for mode in reduce_modes:
        _check_reduce(mode)
    check_ci(ci, n_boot)
    lf = _select(results, _BASELINE_REQUIRED, {})
    present = lf.collect_schema()
    dims = [d for d in dims if d in present]
    expanded, choices = _expand_selections(lf, dims)
    expanded = expanded.collect(engine=_ENGINE).lazy()
    choices["reduce"] = list(reduce_modes)
    keys = [f"sel_{d}" for d in dims]
    selections, distinct, ci_keys = None, expanded, []
    if ci is not None and keys:  # bootstrap each distinct set of models once
        selections, distinct = _distinct_selections(expanded, keys)
        ci_keys = ["_sel"]
    exclude_eval = [str(d) for d in exclude_eval_domains]
    exclude_target = [str(d) for d in exclude_target_domains]

    reduced: dict[str, list[pl.LazyFrame]] = {}
    for mode in reduce_modes:
        tagged = {
            "pair_matrix": pl.concat(
                [
                    _pair_matrix(expanded, phase, mode, keys).with_columns(phase=pl.lit(phase))
                    for phase in ("pretrain", "transfer")
                ]
            ),
            "ood_spread": _ood_spread(expanded, mode, exclude_eval, keys),
            "transfer_asymmetry": _transfer_asymmetry(expanded, mode, keys),
            "asymmetry_summary": _asymmetry_summary(expanded, mode, keys),
            "baseline_comparison": _baseline_comparison(expanded, mode, keys, None, None),
            "generalization_gap": pl.concat(
                [
                    _generalization_gap(expanded, phase, mode, keys).with_columns(
                        phase=pl.lit(phase)
                    )
                    for phase in ("pretrain", "transfer")
                ]
            ),
        }
        if ci is not None:
            intervals = _selection_intervals(
                distinct, mode, ci_keys, exclude_eval, ci, n_boot, boot_seed
            )
            tagged = {
                name: _join_intervals(frame, *intervals[name], selections, keys)
                for name, frame in tagged.items()
            }
        for name, frame in tagged.items():
            reduced.setdefault(name, []).append(frame.with_columns(sel_reduce=pl.lit(mode)))
    layout = {
        "pair_matrix": (["phase", *_ci_columns(PAIR_COLUMNS, ["loss"], ci)], PAIR_COLUMNS[:2], ()),
        "ood_spread": (_ci_columns(OOD_COLUMNS, OOD_COLUMNS[2:], ci), OOD_COLUMNS[:2], ()),
        "transfer_asymmetry": (
            _ci_columns(ASYMMETRY_COLUMNS, ASYMMETRY_COLUMNS[2:], ci),
            ASYMMETRY_COLUMNS[:2],
            (),
        ),
        "asymmetry_summary": (
            _ci_columns(SUMMARY_COLUMNS, SUMMARY_COLUMNS[1:], ci),
            ("domain",),
            (),
        ),
        "baseline_comparison": (
            ("source", "target", *_ci_columns(BASELINE_COLUMNS, BASELINE_COLUMNS[2:4], ci)),
            ("source", "target"),
            ("method", "n_target_images"),
        ),
        "generalization_gap": (
            ["phase", *_ci_columns(GAP_COLUMNS, ["gap"], ci)],
            GAP_COLUMNS[:2],
            (),
        ),
    }
    names = list(reduced)
    lazies = [pl.concat(reduced[name]) for name in names]
    hyper_by = {
        "n_transfer": ["n_transfer"],
        "freeze": ["freeze"],
        "lr": ["pretrain_lr", "transfer_lr"],
    }
    for label, by in hyper_by.items():
        names.append(f"hyperparameters_{label}")
        frame = _hyperparameter_effects(expanded, by, exclude_target, keys)
        if ci is not None:
            intervals = _hyperparameter_intervals(
                distinct, by, exclude_target, ci_keys, ci, n_boot, boot_seed
            )
            frame = _join_intervals(frame, intervals, [*ci_keys, *by], selections, keys)
        lazies.append(frame)
        columns = _ci_columns([*by, *HYPER_STATS], HYPER_STATS[1:], ci)
        layout[f"hyperparameters_{label}"] = (columns, (), tuple(by))
    frames = pl.collect_all(lazies, engine=_ENGINE)
    tables = {}
    for name, frame in zip(names, frames, strict=True):
        columns, domains, order = layout[name]
        sel = ["sel_reduce", *keys] if name in reduced else keys
        tables[name] = _finish(frame.lazy(), columns, domains, keys=sel, order=order)
    return tables, choices
