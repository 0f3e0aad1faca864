"""The metrics of ``docs/results_schema.md``, each defined once (:class:`Metric`).

A metric is a building block, the cells its bootstrap resamples and its output columns:

* the *block* computes the statistics per row of the table from a results table, for
  a reduce mode and a list of extra grouping ``keys`` (the public functions use none;
  :func:`hrtem_ray.analysis.selections.selection_tables` uses one key per interactive
  filter, which computes every filter combination in one vectorised pass);
* the *cells* (:class:`Cells`) say which models form a resampling group and which
  cells (eval domains) a group is reduced to; :meth:`Cells.resample` draws the
  bootstrap replicates of those cells (:func:`hrtem_ray.analysis.bootstrap.bootstrap_cells`);
* the statistics are recomputed per replicate, by the block itself where the
  replicates have the results table's shape (``rep`` is one more key), and their
  percentile intervals and group sizes joined on the row labels ``on``
  (:func:`intervals`, :func:`evaluate`).

The public functions (:mod:`hrtem_ray.analysis.functions`) and the selection tables
of the report (:mod:`hrtem_ray.analysis.selections`) evaluate the same definitions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import polars as pl

from hrtem_ray.analysis.bootstrap import CI_SUFFIXES, Stat, bootstrap_cells, interval
from hrtem_ray.analysis.tables import reduce_expr, seconds_per_epoch

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
PAIR_COLUMNS = ("pretrain_domain", "target_domain", "loss", "n_models", "from_pretrain")
OOD_COLUMNS = ("pretrain_domain", "target_domain", "std_pretrain", "std_transfer", "shift")
ASYMMETRY_COLUMNS = ("pretrain_domain", "target_domain", "gap_ab", "gap_ba", "asymmetry")
SUMMARY_COLUMNS = ("domain", "transfer_asymmetry", "ood_from_domain", "ood_to_domain")
BASELINE_COLUMNS = ("method", "n_target_images", "loss_on_target", "loss_on_source", "n_models")
HYPER_STATS = ("count", *(f"q{round(q * 100):02d}" for q in QUANTILES), "mean")
GAP_COLUMNS = ("train_domain", "eval_domain", "gap", "n_models")
#: Per-row columns saying what a training time was measured on (optional in a table).
DEVICE_COLUMNS = ("train_device", "trials_sharing_device")
TIME_COLUMNS = ("phase", "freeze", "n_train_images", "seconds_per_epoch", "saving", "n_models")

PAIR = ("pretrain_domain", "target_domain")
_ON_TARGET = pl.col("eval_domain") == pl.col("target")
_ON_SOURCE = pl.col("eval_domain") == pl.col("source")
_BASELINE_GROUP = ("source", "target", "method", "n_target_images")
_QUANTILE_OF = {"median": 0.5, "min": 0.0, "max": 1.0}

#: ``(table, reduce, keys) -> table``: statistics per row, grouped by ``keys`` too.
Block = Callable[[pl.LazyFrame, str, list[str]], pl.LazyFrame]
#: ``(replicates, rows, keys) -> n_models`` per row of ``rows`` (keyed by ``keys + on``).
Sizes = Callable[[pl.LazyFrame, pl.LazyFrame, list[str]], pl.LazyFrame]


# --------------------------------------------------------------------------- #
# the definition of a metric
# --------------------------------------------------------------------------- #
def stat_of(reduce: str) -> Stat:
    """The bootstrap statistic of a reduce mode: ``"mean"`` or its quantile."""
    return "mean" if reduce == "mean" else _QUANTILE_OF[reduce]


def _named_stat(reduce: str, column: str = "loss") -> dict[str, Stat]:
    """``{column: the statistic of reduce}``: the replicates of one reduced column."""
    return {column: stat_of(reduce)}


def _quantile_stats(reduce: str) -> dict[str, Stat]:
    """The quantiles and the mean of :data:`HYPER_STATS`, whatever the reduce mode."""
    return dict(zip(HYPER_STATS[1:], (*QUANTILES, "mean"), strict=True))


@dataclass(frozen=True, eq=False)
class Cells:
    """What a metric's bootstrap resamples: groups of models and the cells of a group.

    Every group is resampled independently with replacement at its own size; all cells
    of a group are reduced from the same resample (a model's rows are not independent).
    Compared by identity: metrics holding the same ``Cells`` can share its replicates.

    Attributes
    ----------
    rows
        ``(table, keys) -> rows``: one row per model and cell, with ``model_id``,
        ``loss``, the ``keys``, ``groups`` and ``cell`` columns.
    groups
        Columns of a resampling group (after the ``keys``).
    cell
        Column of a cell within a group; ``None``: one cell per group.
    stats
        ``reduce -> {output column: statistic}`` (``"mean"`` or a quantile).
    """

    rows: Callable[[pl.LazyFrame, list[str]], pl.LazyFrame]
    groups: tuple[str, ...]
    cell: str | None
    stats: Callable[[str], dict[str, Stat]] = _named_stat

    def resample(
        self, lf: pl.LazyFrame, reduce: str, keys: list[str], n_boot: int, seed: int
    ) -> pl.LazyFrame:
        """Bootstrap replicates: one row per (replicate ``rep``, group, cell), plus ``_n``.

        See :func:`hrtem_ray.analysis.bootstrap.bootstrap_cells`.
        """
        groups = [*keys, *self.groups]
        stats = self.stats(reduce)
        return bootstrap_cells(self.rows(lf, keys), groups, self.cell, stats, n_boot, seed).lazy()


def _as_drawn(replicates: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """The replicates themselves: metrics whose statistics are the resampled cells."""
    return replicates


@dataclass(frozen=True)
class Metric:
    """One analysis table, defined once: building block, resampled cells, output columns.

    Attributes
    ----------
    block
        The statistics per row (:data:`Block`).
    cells
        What the intervals resample (:class:`Cells`).
    on
        The row labels: a row of the table per value.
    stats
        The statistic columns that get intervals.
    columns
        The output columns of the public function (without intervals).
    recompute
        ``(replicates, keys) -> statistics`` per replicate (``keys`` end with ``rep``);
        ``None``: the block with reduce ``"mean"`` on the replicated cells, which have
        the results table's shape and one value per cell (any mode gives that value).
    sizes
        ``n_models`` per row (:data:`Sizes`), for a table whose block has none.
    labels
        Leading label columns of the selection tables, which the public function
        fixes by its arguments (and leaves out).
    domains, order
        Domain columns sorted in domain order, then other columns sorted by.
    optional
        Columns of the block that the selection tables of the report carry where the
        results table has their source (``iou``), without intervals; the public
        function's columns stay ``columns``.
    """

    block: Block
    cells: Cells
    on: tuple[str, ...]
    stats: tuple[str, ...]
    columns: tuple[str, ...]
    recompute: Callable[[pl.LazyFrame, list[str]], pl.LazyFrame] | None = None
    sizes: Sizes | None = None
    labels: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    order: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    def output(self, ci: float | None) -> list[str]:
        """Output columns: each statistic followed by its interval, ``n_models`` at the end."""
        if ci is None:
            return list(self.columns)
        out = []
        for column in self.columns:
            out += (
                [column, *(column + s for s in CI_SUFFIXES)] if column in self.stats else [column]
            )
        return out if "n_models" in out else [*out, "n_models"]


def intervals(metric: Metric, replicates: pl.LazyFrame, keys: list[str], ci: float) -> pl.LazyFrame:
    """The intervals of a metric's statistics (and ``n_models``), keyed by ``keys + on``.

    Parameters
    ----------
    metric
        The metric.
    replicates
        Its cells' replicates (:meth:`Cells.resample` with the same ``keys``).
    keys
        Extra grouping keys.
    ci
        Confidence level.

    Returns
    -------
    polars.LazyFrame
        Per row: ``x_ci_low`` and ``x_ci_high`` of every statistic ``x`` and, where the
        metric defines ``sizes``, ``n_models``.
    """
    rep_keys = [*keys, "rep"]
    if metric.recompute is None:
        stats = metric.block(replicates, "mean", rep_keys)
    else:
        stats = metric.recompute(replicates, rep_keys)
    on = [*keys, *metric.on]
    out = interval(stats, on, metric.stats, ci)
    if metric.sizes is None:
        return out
    return out.join(metric.sizes(replicates, out, keys), on=on, how="left", nulls_equal=True)


def evaluate(
    metric: Metric,
    lf: pl.LazyFrame,
    reduce: str,
    keys: list[str],
    ci: float | None,
    n_boot: int,
    seed: int,
) -> pl.LazyFrame:
    """A metric's table on the rows ``lf``: its statistics and, with ``ci``, their intervals.

    Returns
    -------
    polars.LazyFrame
        The block's table with (``ci`` set) the interval columns and ``n_models``
        joined on ``keys + on`` (null for a row without replicates).
    """
    table = metric.block(lf, reduce, keys)
    if ci is None:
        return table
    replicates = metric.cells.resample(lf, reduce, keys, n_boot, seed)
    found = intervals(metric, replicates, keys, ci)
    return table.join(found, on=[*keys, *metric.on], how="left", nulls_equal=True)


# --------------------------------------------------------------------------- #
# pair matrices and what derives from them
# --------------------------------------------------------------------------- #
def _with_iou(lf: pl.LazyFrame, reduce: str, prefix: str = "") -> list[pl.Expr]:
    """The reduced ``iou`` of a pair cell, where the table has the column (none otherwise).

    Carried next to the loss for the report's tooltips (:attr:`Metric.optional`); the
    bootstrap replicates hold losses only, so IoU gets no interval.
    """
    if "iou" not in lf.collect_schema():
        return []
    return [reduce_expr(pl.col("iou"), reduce).alias(prefix + "iou")]


def _pretrain_matrix(lf: pl.LazyFrame, reduce: str, keys: list[str]) -> pl.LazyFrame:
    """P(a, b): reduced loss (and IoU, where present) of pretrain models of domain a on b."""
    return (
        lf.filter(pl.col("phase") == "pretrain")
        .group_by([*keys, "pretrain_domain", "eval_domain"])
        .agg(
            *_with_iou(lf, reduce),
            loss=reduce_expr(pl.col("loss"), reduce),
            n_models=pl.len().cast(pl.Int64),
        )
        .rename({"eval_domain": "target_domain"})
    )


def _transfer_matrix(lf: pl.LazyFrame, reduce: str, keys: list[str]) -> pl.LazyFrame:
    """T(a, b) with the pretrain fallback P(a, b) where no transfer a -> b exists."""
    pretrain = _pretrain_matrix(lf, reduce, keys)
    iou = _with_iou(lf, reduce, "t_")
    transfer = (
        lf.filter(
            (pl.col("phase") == "transfer") & (pl.col("eval_domain") == pl.col("transfer_domain"))
        )
        .group_by([*keys, "pretrain_domain", "transfer_domain"])
        .agg(*iou, t_loss=reduce_expr(pl.col("loss"), reduce), t_models=pl.len().cast(pl.Int64))
        .rename({"transfer_domain": "target_domain"})
    )
    fallback = [pl.col("t_iou").fill_null(pl.col("iou")).alias("iou")] if iou else []
    return pretrain.join(transfer, on=[*keys, *PAIR], how="full", coalesce=True).select(
        *keys,
        *PAIR,
        *fallback,
        loss=pl.col("t_loss").fill_null(pl.col("loss")),
        n_models=pl.col("t_models").fill_null(pl.col("n_models")),
        from_pretrain=pl.col("t_loss").is_null(),
    )


def _pair_matrix(lf: pl.LazyFrame, reduce: str, keys: list[str], phase: str) -> pl.LazyFrame:
    """P(a, b) (``phase`` pretrain) or T(a, b) with its fallback (``phase`` transfer)."""
    if phase == "pretrain":
        return _pretrain_matrix(lf, reduce, keys).with_columns(from_pretrain=pl.lit(True))
    return _transfer_matrix(lf, reduce, keys)


def _ood_spread(
    lf: pl.LazyFrame, reduce: str, keys: list[str], exclude: Sequence[str]
) -> pl.LazyFrame:
    """Population std over non-excluded eval domains, before and after transfer."""
    pretrain = _pretrain_matrix(lf, reduce, keys).rename({"target_domain": "eval_domain"})
    transfer = (
        lf.filter(pl.col("phase") == "transfer")
        .group_by([*keys, "pretrain_domain", "transfer_domain", "eval_domain"])
        .agg(loss=reduce_expr(pl.col("loss"), reduce))
        .rename({"transfer_domain": "target_domain"})
    )
    kept = ~pl.col("eval_domain").is_in(list(exclude))
    pairs = [*keys, *PAIR]
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


def _between_pretrain_domains(
    pairs: pl.LazyFrame, domains: pl.LazyFrame, keys: list[str]
) -> pl.LazyFrame:
    """The (a, b) ``pairs`` with a != b, both pretraining domains (:func:`_pretrain_domains`)."""
    kept = pairs.filter(pl.col("pretrain_domain") != pl.col("target_domain"))
    for column in PAIR:
        kept = kept.join(domains, left_on=[*keys, column], right_on=[*keys, "domain"], how="semi")
    return kept


def _transfer_asymmetry(lf: pl.LazyFrame, reduce: str, keys: list[str]) -> pl.LazyFrame:
    """gap_ab = T(a,b) - P(b,b), gap_ba and their difference, for a != b pretrain domains."""
    pretrain = _pretrain_matrix(lf, reduce, keys)
    p_diag = pretrain.filter(pl.col("pretrain_domain") == pl.col("target_domain")).select(
        *keys, target_domain="pretrain_domain", p_bb="loss"
    )
    transfer = _transfer_matrix(lf, reduce, keys)
    gaps = (
        _between_pretrain_domains(transfer, _pretrain_domains(lf, keys), keys)
        .join(p_diag, on=[*keys, "target_domain"], how="inner")
        .select(*keys, *PAIR, gap_ab=pl.col("loss") - pl.col("p_bb"))
    )
    reverse = gaps.select(
        *keys, pretrain_domain="target_domain", target_domain="pretrain_domain", gap_ba="gap_ab"
    )
    return gaps.join(reverse, on=[*keys, *PAIR], how="inner").with_columns(
        asymmetry=pl.col("gap_ab") - pl.col("gap_ba")
    )


def _mean_by(table: pl.LazyFrame, keys: list[str], by: str, column: str, name: str) -> pl.LazyFrame:
    """``name``: the mean of ``column`` per ``keys`` and ``by``, with ``by`` renamed ``domain``."""
    return table.group_by([*keys, by]).agg(pl.col(column).mean().alias(name)).rename({by: "domain"})


def _asymmetry_summary(lf: pl.LazyFrame, reduce: str, keys: list[str]) -> pl.LazyFrame:
    """The summary of :func:`asymmetry_summary` for every pretraining domain at once."""
    domains = _pretrain_domains(lf, keys)
    off_diag = _between_pretrain_domains(_pretrain_matrix(lf, reduce, keys), domains, keys)
    asym = _transfer_asymmetry(lf, reduce, keys)
    on = [*keys, "domain"]
    return (
        domains.join(
            _mean_by(asym, keys, "pretrain_domain", "asymmetry", "transfer_asymmetry"),
            on=on,
            how="left",
        )
        .join(
            _mean_by(off_diag, keys, "pretrain_domain", "loss", "ood_from_domain"),
            on=on,
            how="left",
        )
        .join(_mean_by(off_diag, keys, "target_domain", "loss", "ood_to_domain"), on=on, how="left")
    )


# --------------------------------------------------------------------------- #
# how many models a pair statistic is computed from
# --------------------------------------------------------------------------- #
def _group_sizes(
    replicates: pl.LazyFrame, keys: Sequence[str] = ()
) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Models per pretrain domain (``n_pre``) and per transfer pair (``n_tr``), per ``keys``.

    Read from the replicates of :func:`_pair_cells` (their ``_n`` column), i.e. the
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
        pairs.select(*keys, *PAIR)
        .join(pretrain.rename({"n_pre": "n_pre_a"}), on=[*keys, "pretrain_domain"], how="left")
        .join(
            pretrain.rename({"pretrain_domain": "target_domain", "n_pre": "n_pre_b"}),
            on=[*keys, "target_domain"],
            how="left",
        )
        .join(transfer.rename({"n_tr": "n_tr_ab"}), on=[*keys, *PAIR], how="left")
        .join(transfer.rename({**swap, "n_tr": "n_tr_ba"}), on=[*keys, *PAIR], how="left")
        .with_columns(pl.col("n_pre_a", "n_pre_b", "n_tr_ab", "n_tr_ba").fill_null(0))
    )


_OTHER_GROUPS = pl.col("n_pre_b") + pl.col("n_tr_ab") + pl.col("n_tr_ba")


def _ood_sizes(replicates: pl.LazyFrame, pairs: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """``n_models`` of each spread pair (a, b): the pretrain models of a plus transfers a -> b."""
    sizes = _pair_sizes(replicates, pairs, keys)
    return sizes.select(*keys, *PAIR, n_models=pl.col("n_pre_a") + pl.col("n_tr_ab"))


def _asymmetry_sizes(
    replicates: pl.LazyFrame, pairs: pl.LazyFrame, keys: list[str]
) -> pl.LazyFrame:
    """``n_models`` of each asymmetry pair: the pretrain models of a and b, transfers both ways."""
    sizes = _pair_sizes(replicates, pairs, keys)
    return sizes.select(*keys, *PAIR, n_models=pl.col("n_pre_a") + _OTHER_GROUPS)


def _summary_sizes(replicates: pl.LazyFrame, rows: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """``n_models`` of an asymmetry summary: every group of every pair (domain, b).

    Computed for every pretraining domain (``rows`` is not needed).
    """
    cells = replicates.filter(pl.col("rep") == 0)  # one replicate: a table of the cells
    pairs = _transfer_asymmetry(cells, "mean", keys)
    return (
        _pair_sizes(replicates, pairs, keys)
        .group_by(*keys, domain="pretrain_domain")
        .agg(n_models=pl.col("n_pre_a").first() + _OTHER_GROUPS.sum())
    )


def _drawn_sizes(
    replicates: pl.LazyFrame, rows: pl.LazyFrame, keys: list[str], on: Sequence[str]
) -> pl.LazyFrame:
    """``n_models`` of a table whose rows are its resampling groups: their ``_n``."""
    return replicates.filter(pl.col("rep") == 0).select(*keys, *on, n_models=pl.col("_n"))


# --------------------------------------------------------------------------- #
# baseline comparison
# --------------------------------------------------------------------------- #
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

    def points(
        rows: pl.LazyFrame, source: str, target: str, method: str, n: str | pl.Expr
    ) -> pl.LazyFrame:
        """The ``rows`` as points of ``method``: ``n`` (a column or value) target images."""
        return rows.select(
            *cols, source=source, target=target, method=pl.lit(method), n_target_images=n
        )

    transfers = lf.filter(phase == "transfer")
    transfer = points(transfers, "pretrain_domain", "transfer_domain", "transfer", "n_transfer")
    mixtures = lf.filter(phase == "baseline")
    forward = points(mixtures, "pretrain_domain", "transfer_domain", "mixture", "n_transfer")
    backward = points(mixtures, "transfer_domain", "pretrain_domain", "mixture", "n_pretrain")
    paired = pl.concat([transfer, forward, backward])
    if source is not None:
        paired = paired.filter((pl.col("source") == source) & (pl.col("target") == target))
    paired = paired.filter(pl.col("source") != pl.col("target"))
    pairs = paired.select(*keys, "source", "target").unique()
    pretrain = lf.filter(phase == "pretrain").select(*cols, "pretrain_domain", "n_pretrain")

    def pure(end: str, n: str | pl.Expr) -> pl.LazyFrame:
        """The pretrain models of the pair's ``end`` as mixture points."""
        models = pairs.join(pretrain, left_on=[*keys, end], right_on=[*keys, "pretrain_domain"])
        return points(models, "source", "target", "mixture", n)

    pure_source = pure("source", pl.lit(0, pl.Int64))
    return pl.concat([paired, pure_source, pure("target", "n_pretrain")])


def _baseline_rows(
    lf: pl.LazyFrame, keys: list[str], source: str | None, target: str | None
) -> pl.LazyFrame:
    """The rows of :func:`_baseline_models` on the pair's target or source domain."""
    return _baseline_models(lf, keys, source, target).filter(_ON_TARGET | _ON_SOURCE)


def _reduce_baseline(models: pl.LazyFrame, reduce: str, keys: list[str]) -> pl.LazyFrame:
    """Loss on the target and on the source per baseline-comparison group."""
    return models.group_by([*keys, *_BASELINE_GROUP]).agg(
        loss_on_target=reduce_expr(pl.col("loss").filter(_ON_TARGET), reduce),
        loss_on_source=reduce_expr(pl.col("loss").filter(_ON_SOURCE), reduce),
        n_models=pl.col("model_id").n_unique().cast(pl.Int64),
    )


def _baseline_comparison(
    lf: pl.LazyFrame, reduce: str, keys: list[str], source: str | None, target: str | None
) -> pl.LazyFrame:
    """Reduce the models of :func:`_baseline_models` per method and number of target images."""
    return _reduce_baseline(_baseline_rows(lf, keys, source, target), reduce, keys)


def _baseline_replicates(replicates: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    """:func:`_reduce_baseline` of the replicated cells (one value per group and domain)."""
    return _reduce_baseline(replicates.with_columns(model_id=pl.lit("")), "mean", keys)


# --------------------------------------------------------------------------- #
# hyperparameters, generalization gap, training time
# --------------------------------------------------------------------------- #
def _own_domain_rows(lf: pl.LazyFrame, keys: list[str], exclude: Sequence[str]) -> pl.LazyFrame:
    """Rows of transfer models on their own transfer domain, except ``exclude`` (any keys)."""
    return lf.filter(
        (pl.col("phase") == "transfer")
        & (pl.col("eval_domain") == pl.col("transfer_domain"))
        & ~pl.col("transfer_domain").is_in(list(exclude))
    )


def _hyperparameter_effects(
    lf: pl.LazyFrame, reduce: str, keys: list[str], by: Sequence[str], exclude: Sequence[str]
) -> pl.LazyFrame:
    """Distribution of transfer models' loss on their own transfer domain, per ``by``.

    The distribution is its quantiles and mean, whatever ``reduce``.
    """
    loss = pl.col("loss")
    quantiles = {
        f"q{round(q * 100):02d}": loss.quantile(q, interpolation="linear") for q in QUANTILES
    }
    return (
        _own_domain_rows(lf, keys, exclude)
        .group_by([*keys, *by])
        .agg(count=pl.len().cast(pl.Int64), **quantiles, mean=loss.mean())
    )


def _training_domain(phase: str) -> pl.Expr:
    """A model's own training domain X: the pretraining domain, or the transfer domain."""
    return pl.col("pretrain_domain" if phase == "pretrain" else "transfer_domain")


def _model_gaps(lf: pl.LazyFrame, keys: list[str], phase: str) -> pl.LazyFrame:
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


def _gap_rows(lf: pl.LazyFrame, keys: list[str], phase: str) -> pl.LazyFrame:
    """The gaps of :func:`_model_gaps` as the ``loss`` the bootstrap resamples."""
    return _model_gaps(lf, keys, phase).rename({"gap": "loss"})


def _generalization_gap(lf: pl.LazyFrame, reduce: str, keys: list[str], phase: str) -> pl.LazyFrame:
    """G_OOD(X -> X') reduced over the models of ``phase`` trained on X."""
    return (
        _model_gaps(lf, keys, phase)
        .group_by([*keys, "train_domain", "eval_domain"])
        .agg(gap=reduce_expr(pl.col("gap"), reduce), n_models=pl.len().cast(pl.Int64))
    )


def _model_seconds(lf: pl.LazyFrame, keys: list[str], device: Sequence[str]) -> pl.LazyFrame:
    """One row per model: phase, freeze, training-set size, device columns and s/epoch.

    The training-set size is the stage's images before augmentation: ``n_pretrain``
    for a pretrain model, ``n_transfer`` for a transfer model, both for a baseline
    (its mixture). Seconds per epoch: :func:`~hrtem_ray.analysis.tables.seconds_per_epoch`
    (``epoch_cpu_seconds`` on a CPU, else ``epoch_seconds``, where recorded); per stage,
    repeated on every eval row of a model:
    the first row of each model is used.
    """
    n_pre, n_tr = pl.col("n_pretrain").cast(pl.Int64), pl.col("n_transfer").cast(pl.Int64)
    size = (
        pl.when(pl.col("phase") == "transfer")
        .then(n_tr)
        .when(pl.col("phase") == "baseline")
        .then(n_pre + n_tr)
        .otherwise(n_pre)
    )
    schema = lf.collect_schema()
    timed = [c for c in ("epoch_cpu_seconds", "epoch_seconds") if c in schema]
    columns = ["phase", "freeze", *device, "train_seconds", "epochs", *timed, "n_pretrain",
               "n_transfer"]  # fmt: skip
    return (
        lf.group_by([*keys, "model_id"])
        .agg(pl.col(columns).first())
        .filter(pl.col("train_seconds").is_not_null() & (pl.col("epochs") > 0))
        .select(
            *keys,
            "model_id",
            pl.col("phase").cast(pl.String),
            pl.col("freeze").cast(pl.String),
            size.alias("n_train_images"),
            *device,
            loss=seconds_per_epoch(columns),  # named for bootstrap_cells
        )
    )


def _time_saving(table: pl.LazyFrame, keys: list[str], groups: Sequence[str]) -> pl.LazyFrame:
    """``saving = 1 - t / t(freeze=none)`` within the same ``groups`` other than ``freeze``."""
    same = [*keys, *(g for g in groups if g != "freeze")]
    none = table.filter(pl.col("freeze") == "none").select(*same, _none="seconds_per_epoch")
    return (
        table.join(none, on=same, how="left", nulls_equal=True)
        .with_columns(saving=1 - pl.col("seconds_per_epoch") / pl.col("_none"))
        .drop("_none")
    )


def _training_time(
    lf: pl.LazyFrame, reduce: str, keys: list[str], device: Sequence[str]
) -> pl.LazyFrame:
    """Reduced seconds per epoch per (phase, freeze, size, device) group, and the saving."""
    groups = _time_groups(device)
    table = (
        _model_seconds(lf, keys, device)
        .group_by([*keys, *groups])
        .agg(
            seconds_per_epoch=reduce_expr(pl.col("loss"), reduce),
            n_models=pl.len().cast(pl.Int64),
        )
    )
    return _time_saving(table, keys, groups)


def _time_groups(device: Sequence[str]) -> tuple[str, ...]:
    """The groups of :func:`training_time`: phase, freeze, training-set size, device columns."""
    return ("phase", "freeze", "n_train_images", *device)


# --------------------------------------------------------------------------- #
# the definitions
# --------------------------------------------------------------------------- #
def _pair_rows(lf: pl.LazyFrame, keys: list[str], where: pl.Expr) -> pl.LazyFrame:
    """The pretrain and transfer rows ``where`` holds (any keys)."""
    return lf.filter(pl.col("phase").is_in(["pretrain", "transfer"]) & where)


def _pair_cells(where: pl.Expr) -> Cells:
    """Pretrain models per pretrain domain, transfer models per pair; a cell per eval domain.

    ``where`` selects the rows (cells) resampled. The replicates have the results
    table's shape, so the pair blocks recompute their statistics on them.
    """
    groups = ("phase", "pretrain_domain", "transfer_domain")
    return Cells(partial(_pair_rows, where=where), groups, "eval_domain")


_PRETRAIN = pl.col("phase") == "pretrain"
#: Pretrain models on every eval domain.
PRETRAIN_CELLS = _pair_cells(_PRETRAIN)
#: The cells the pair matrices read: pretrain models on every domain, transfer on their own.
OWN_CELLS = _pair_cells(_PRETRAIN | (pl.col("eval_domain") == pl.col("transfer_domain")))


def _pair(
    block: Block, cells: Cells, columns: tuple[str, ...], stats: tuple[str, ...], **more: object
) -> Metric:
    """A metric with a row per (pretrain domain, target domain) pair, in domain order."""
    return Metric(block, cells, PAIR, stats, columns, domains=PAIR, **more)


#: P(a, b) and T(a, b) (:func:`hrtem_ray.analysis.pair_matrix`), by phase.
PAIR_METRICS = {
    phase: _pair(
        partial(_pair_matrix, phase=phase), cells, PAIR_COLUMNS, ("loss",), optional=("iou",)
    )
    for phase, cells in (("pretrain", PRETRAIN_CELLS), ("transfer", OWN_CELLS))
}
#: Transfer gaps and their asymmetry (:func:`hrtem_ray.analysis.transfer_asymmetry`).
ASYMMETRY = _pair(
    _transfer_asymmetry, OWN_CELLS, ASYMMETRY_COLUMNS, ASYMMETRY_COLUMNS[2:], sizes=_asymmetry_sizes
)
#: Asymmetry summary of every pretraining domain (:func:`hrtem_ray.analysis.asymmetry_summary`).
SUMMARY = Metric(
    _asymmetry_summary,
    OWN_CELLS,
    ("domain",),
    SUMMARY_COLUMNS[1:],
    SUMMARY_COLUMNS,
    sizes=_summary_sizes,
    domains=("domain",),
)


def ood_metric(exclude: Sequence[str]) -> Metric:
    """The spread over the eval domains but ``exclude`` (:func:`hrtem_ray.analysis.ood_spread`)."""
    exclude = list(exclude)
    cells = _pair_cells(_PRETRAIN | ~pl.col("eval_domain").is_in(exclude))
    block = partial(_ood_spread, exclude=exclude)
    return _pair(block, cells, OOD_COLUMNS, OOD_COLUMNS[2:], sizes=_ood_sizes)


def baseline_metric(source: str | None, target: str | None) -> Metric:
    """Transfer against mixtures for one pair, or every pair (``None``), by target images.

    :func:`hrtem_ray.analysis.baseline_comparison`; its groups (a method and number of
    target images of a pair) are resampled with their losses on the target and source.
    """
    rows = partial(_baseline_rows, source=source, target=target)
    return Metric(
        block=partial(_baseline_comparison, source=source, target=target),
        cells=Cells(rows, _BASELINE_GROUP, "eval_domain"),
        on=_BASELINE_GROUP,
        stats=BASELINE_COLUMNS[2:4],
        columns=BASELINE_COLUMNS,
        recompute=_baseline_replicates,
        labels=("source", "target"),
        order=("method", "n_target_images"),
    )


def hyperparameter_metric(by: Sequence[str], exclude: Sequence[str]) -> Metric:
    """Quantiles of the own-domain loss per ``by`` (:func:`hrtem_ray.analysis.hyperparameter_effects`).

    Each group's quantile replicates are drawn directly (exact order-statistic draws,
    see :mod:`hrtem_ray.analysis.bootstrap`), so they are the statistics.
    """
    by, exclude = tuple(by), list(exclude)
    return Metric(
        block=partial(_hyperparameter_effects, by=by, exclude=exclude),
        cells=Cells(partial(_own_domain_rows, exclude=exclude), by, None, _quantile_stats),
        on=by,
        stats=HYPER_STATS[1:],
        columns=(*by, *HYPER_STATS),
        recompute=_as_drawn,
        sizes=partial(_drawn_sizes, on=by),
        order=by,
    )


def _gap_metric(phase: str) -> Metric:
    """G_OOD of the models of ``phase``: the models trained on X resampled together."""
    return Metric(
        block=partial(_generalization_gap, phase=phase),
        cells=Cells(
            partial(_gap_rows, phase=phase),
            ("train_domain",),
            "eval_domain",
            partial(_named_stat, column="gap"),
        ),
        on=GAP_COLUMNS[:2],
        stats=("gap",),
        columns=GAP_COLUMNS,
        recompute=_as_drawn,
        domains=GAP_COLUMNS[:2],
    )


#: G_OOD(X -> X') (:func:`hrtem_ray.analysis.generalization_gap`), by phase.
GAP_METRICS = {phase: _gap_metric(phase) for phase in ("pretrain", "transfer")}


def time_metric(device: Sequence[str]) -> Metric:
    """Seconds per epoch and the saving of freezing (:func:`hrtem_ray.analysis.training_time`).

    ``device``: the :data:`DEVICE_COLUMNS` the table has, grouped by as well.
    """
    device = tuple(device)
    groups = _time_groups(device)
    seconds = partial(_named_stat, column="seconds_per_epoch")
    return Metric(
        block=partial(_training_time, device=device),
        cells=Cells(partial(_model_seconds, device=device), groups, None, seconds),
        on=groups,
        stats=("seconds_per_epoch", "saving"),
        columns=(*TIME_COLUMNS[:3], *device, *TIME_COLUMNS[3:]),
        recompute=partial(_time_saving, groups=groups),
        order=groups,
    )
