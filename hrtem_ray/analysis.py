"""Analysis of a results table: the metrics of ``results_schema.md``, in Polars.

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

PHASES = ("pretrain", "transfer", "baseline")
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
        a glob pattern.
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
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    else:
        files = sorted(glob.glob(path, recursive=True))
    if not files:
        raise FileNotFoundError(f"no Parquet files found at {path!r}")
    try:
        table = pl.read_parquet(files, hive_partitioning=False)
    except (pl.exceptions.PolarsError, OSError):
        # Differing per-file schemas: combine by column name and supertype.
        table = pl.concat(
            [pl.read_parquet(f, hive_partitioning=False) for f in files],
            how="diagonal_relaxed",
        )
    return encode_labels(table) if categorical else table


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


def _baseline_comparison(
    lf: pl.LazyFrame, reduce: str, keys: list[str], source: str | None, target: str | None
) -> pl.LazyFrame:
    """Reduce the models of :func:`_baseline_models` per method and number of target images."""
    on_target = pl.col("eval_domain") == pl.col("target")
    on_source = pl.col("eval_domain") == pl.col("source")
    return (
        _baseline_models(lf, keys, source, target)
        .filter(on_target | on_source)
        .group_by([*keys, "source", "target", "method", "n_target_images"])
        .agg(
            loss_on_target=_reduce(pl.col("loss").filter(on_target), reduce),
            loss_on_source=_reduce(pl.col("loss").filter(on_source), reduce),
            n_models=pl.col("model_id").n_unique().cast(pl.Int64),
        )
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
        lf.filter(
            (pl.col("phase") == "transfer")
            & (pl.col("eval_domain") == pl.col("transfer_domain"))
            & ~pl.col("transfer_domain").is_in(list(exclude))
        )
        .group_by([*keys, *by])
        .agg(count=pl.len().cast(pl.Int64), **quantiles, mean=loss.mean())
    )


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


def pair_matrix(
    results: Results, phase: str, reduce: str = "median", **filters: Any
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
    **filters
        ``pretrain_lr``, ``transfer_lr``, ``n_transfer``, ``freeze``, ``seed``.

    Returns
    -------
    polars.DataFrame
        Columns ``pretrain_domain``, ``target_domain``, ``loss``, ``n_models``,
        ``from_pretrain``, in domain order.
    """
    _check_reduce(reduce)
    if phase not in ("pretrain", "transfer"):
        raise ValueError(f"phase must be 'pretrain' or 'transfer', not {phase!r}")
    required = _TRANSFER_COLUMNS if phase == "transfer" else _BASE_COLUMNS
    lf = _select(results, required, filters)
    return _finish(_pair_matrix(lf, phase, reduce, []), PAIR_COLUMNS, PAIR_COLUMNS[:2])


def ood_spread(
    results: Results,
    reduce: str = "median",
    exclude_eval_domains: Sequence[str] = ("0",),
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
    **filters
        See :func:`pair_matrix`.

    Returns
    -------
    polars.DataFrame
        Columns ``pretrain_domain``, ``target_domain``, ``std_pretrain`` (population
        std, ddof 0, of P(a, .)), ``std_transfer`` (the same for the transfer models
        a -> b, or ``std_pretrain`` where none exists) and
        ``shift = std_transfer - std_pretrain``.
    """
    _check_reduce(reduce)
    lf = _select(results, _TRANSFER_COLUMNS, filters)
    exclude = [str(d) for d in exclude_eval_domains]
    return _finish(_ood_spread(lf, reduce, exclude, []), OOD_COLUMNS, OOD_COLUMNS[:2])


def transfer_asymmetry(results: Results, reduce: str = "median", **filters: Any) -> pl.DataFrame:
    """Transfer gaps and their asymmetry for ordered pairs of pretraining domains.

    ``gap_ab = T(a, b) - P(b, b)``, ``gap_ba = T(b, a) - P(a, a)`` and
    ``asymmetry = gap_ab - gap_ba`` (negative: a transfers to b better than the
    reverse), for every a != b that are both pretraining domains.

    Returns
    -------
    polars.DataFrame
        Columns ``pretrain_domain`` (a), ``target_domain`` (b), ``gap_ab``,
        ``gap_ba``, ``asymmetry``.
    """
    _check_reduce(reduce)
    lf = _select(results, _TRANSFER_COLUMNS, filters)
    return _finish(_transfer_asymmetry(lf, reduce, []), ASYMMETRY_COLUMNS, ASYMMETRY_COLUMNS[:2])


def asymmetry_summary(
    results: Results, domain: str, reduce: str = "median", **filters: Any
) -> pl.DataFrame:
    """One-row summary of how a pretraining domain transfers and generalises.

    Parameters
    ----------
    results
        The results table.
    domain
        A pretraining domain (``"0"``, in focus, for the defocus study).
    reduce, **filters
        See :func:`pair_matrix`.

    Returns
    -------
    polars.DataFrame
        Columns ``domain``; ``transfer_asymmetry``, the mean over the other
        pretraining domains b of ``asymmetry(domain, b)``; ``ood_from_domain``, the
        mean of P(domain, b); ``ood_to_domain``, the mean of P(b, domain). Empty if
        ``domain`` is not a pretraining domain of the selection.
    """
    _check_reduce(reduce)
    lf = _select(results, _TRANSFER_COLUMNS, filters)
    summary = _asymmetry_summary(lf, reduce, []).filter(pl.col("domain") == str(domain))
    return _finish(summary, SUMMARY_COLUMNS)


def baseline_comparison(
    results: Results, source: str, target: str, reduce: str = "mean", **filters: Any
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
        models of each domain.
    """
    _check_reduce(reduce)
    lf = _select(results, _BASELINE_REQUIRED, filters)
    comparison = _baseline_comparison(lf, reduce, [], str(source), str(target))
    return _finish(comparison, BASELINE_COLUMNS, order=("method", "n_target_images"))


def _by_columns(by: str | Sequence[str]) -> list[str]:
    return [by] if isinstance(by, str) else list(by)


def hyperparameter_effects(
    results: Results,
    by: str | Sequence[str],
    exclude_target_domains: Sequence[str] = ("0",),
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
    **filters
        See :func:`pair_matrix`.

    Returns
    -------
    polars.DataFrame
        The ``by`` columns, then ``count``, the quantiles ``q05``, ``q25``, ``q50``,
        ``q75``, ``q95`` (linear interpolation) and ``mean``.
    """
    by = _by_columns(by)
    lf = _select(results, [*_TRANSFER_COLUMNS, *by], filters)
    exclude = [str(d) for d in exclude_target_domains]
    return _finish(_hyperparameter_effects(lf, by, exclude, []), [*by, *HYPER_STATS], order=by)


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


def selection_tables(
    results: Results,
    dims: Sequence[str] = SELECTION_DIMS,
    reduce_modes: Sequence[str] = REDUCE_MODES,
    exclude_eval_domains: Sequence[str] = ("0",),
    exclude_target_domains: Sequence[str] = ("0",),
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

    Returns
    -------
    tables
        ``pair_matrix`` (with a ``phase`` column), ``ood_spread``,
        ``transfer_asymmetry``, ``asymmetry_summary``, ``baseline_comparison``
        (with ``source`` and ``target``) and ``hyperparameters_<by>``; each with a
        column ``sel_<dim>`` per dimension (``"all"`` or a value label) and, for the
        reduced tables, ``sel_reduce``. Selecting one value per ``sel_*`` column gives
        the table the public function returns for those filters.
    choices
        The labels per dimension (``"all"`` first) and ``"reduce"``.
    """
    for mode in reduce_modes:
        _check_reduce(mode)
    lf = _select(results, _BASELINE_REQUIRED, {})
    present = lf.collect_schema()
    dims = [d for d in dims if d in present]
    expanded, choices = _expand_selections(lf, dims)
    expanded = expanded.collect(engine=_ENGINE).lazy()
    choices["reduce"] = list(reduce_modes)
    keys = [f"sel_{d}" for d in dims]
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
        }
        for name, frame in tagged.items():
            reduced.setdefault(name, []).append(frame.with_columns(sel_reduce=pl.lit(mode)))
    layout = {
        "pair_matrix": (["phase", *PAIR_COLUMNS], PAIR_COLUMNS[:2], ()),
        "ood_spread": (OOD_COLUMNS, OOD_COLUMNS[:2], ()),
        "transfer_asymmetry": (ASYMMETRY_COLUMNS, ASYMMETRY_COLUMNS[:2], ()),
        "asymmetry_summary": (SUMMARY_COLUMNS, ("domain",), ()),
        "baseline_comparison": (
            ("source", "target", *BASELINE_COLUMNS),
            ("source", "target"),
            ("method", "n_target_images"),
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
        lazies.append(_hyperparameter_effects(expanded, by, exclude_target, keys))
        layout[f"hyperparameters_{label}"] = ([*by, *HYPER_STATS], (), tuple(by))
    frames = pl.collect_all(lazies, engine=_ENGINE)
    tables = {}
    for name, frame in zip(names, frames, strict=True):
        columns, domains, order = layout[name]
        sel = ["sel_reduce", *keys] if name in reduced else keys
        tables[name] = _finish(frame.lazy(), columns, domains, keys=sel, order=order)
    return tables, choices
