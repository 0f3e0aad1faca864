"""The public analysis functions of ``docs/results_schema.md``, in Polars.

Every function takes the results table (one row per trained model and evaluation
domain) as a :class:`polars.DataFrame` or :class:`polars.LazyFrame` and returns a
long-form :class:`polars.DataFrame` ready for Altair. Each evaluates one metric
definition of :mod:`hrtem_ray.analysis.metrics`, the same the report's selection
tables evaluate (:func:`hrtem_ray.analysis.selections.selection_tables`).

Label columns may be strings or categoricals (:func:`~hrtem_ray.analysis.tables.load_results`
returns categoricals, see :func:`~hrtem_ray.analysis.tables.encode_labels`); either gives
the same tables, whose label columns are always strings.

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
and the intervals are :mod:`hrtem_ray.analysis.bootstrap`'s, the metric definitions
(:mod:`hrtem_ray.analysis.metrics`) say which models form a group and recompute its
statistics per replicate. Every group of models a statistic reduces over (the pretrain models of a domain, the transfer models of a
pair, the models of a baseline point, a hyperparameter group) is resampled
independently with replacement at its own size; all eval domains of a group are
reduced from the same resample; derived statistics (spreads, gaps, asymmetries,
means over domains) are recomputed per replicate by the same code as the point
estimates. A fallback cell (a pair without transfer models) gets the interval of the
pretrain models it shows. Where a group has a single model, every interval it enters
is null, not a zero-width interval. The same ``boot_seed`` gives the same intervals,
whatever the row order or model ids. Per function, see the Notes of its docstring.
Two exact shortcuts of :mod:`hrtem_ray.analysis.bootstrap` keep this fast (every function
on a million rows takes about 3 s of CPU time, see ``benchmarks/analysis.py``): the
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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from hrtem_ray.analysis.bootstrap import CI_SUFFIXES, check_ci
from hrtem_ray.analysis.metrics import (
    ASYMMETRY,
    DEVICE_COLUMNS,
    GAP_METRICS,
    PAIR_METRICS,
    SUMMARY,
    Metric,
    baseline_metric,
    evaluate,
    hyperparameter_metric,
    ood_metric,
    time_metric,
)
from hrtem_ray.analysis.tables import (
    BASE_COLUMNS,
    BASELINE_REQUIRED,
    TRANSFER_COLUMNS,
    Results,
    check_reduce,
    finish,
    required_columns,
    select_rows,
)

_TIME_REQUIRED = (
    "model_id",
    "phase",
    "freeze",
    "n_pretrain",
    "n_transfer",
    "train_seconds",
    "epochs",
)


def _select(
    results: Results,
    required: Sequence[str],
    reduce: str,
    ci: float | None,
    n_boot: int,
    filters: dict[str, Any],
    phase: str | None = None,
) -> pl.LazyFrame:
    """Check ``reduce``, the interval arguments and ``phase`` (if given), then :func:`select_rows`."""
    check_reduce(reduce)
    check_ci(ci, n_boot)
    if phase is not None and phase not in ("pretrain", "transfer"):
        raise ValueError(f"phase must be 'pretrain' or 'transfer', not {phase!r}")
    return select_rows(results, required_columns(required, ci), filters)


def _table(
    metric: Metric,
    lf: pl.LazyFrame,
    reduce: str,
    ci: float | None,
    n_boot: int,
    boot_seed: int,
    rows: pl.Expr | None = None,
) -> pl.DataFrame:
    """A public function's table: ``metric`` evaluated without keys, its ``rows``, collected."""
    table = evaluate(metric, lf, reduce, [], ci, n_boot, boot_seed)
    if rows is not None:
        table = table.filter(rows)
    return finish(table, metric.output(ci), metric.domains, order=metric.order)


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
    required = TRANSFER_COLUMNS if phase == "transfer" else BASE_COLUMNS
    lf = _select(results, required, reduce, ci, n_boot, filters, phase)
    return _table(PAIR_METRICS[phase], lf, reduce, ci, n_boot, boot_seed)


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
    lf = _select(results, TRANSFER_COLUMNS, reduce, ci, n_boot, filters)
    metric = ood_metric([str(d) for d in exclude_eval_domains])
    return _table(metric, lf, reduce, ci, n_boot, boot_seed)


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
    lf = _select(results, TRANSFER_COLUMNS, reduce, ci, n_boot, filters)
    return _table(ASYMMETRY, lf, reduce, ci, n_boot, boot_seed)


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
    lf = _select(results, TRANSFER_COLUMNS, reduce, ci, n_boot, filters)
    rows = pl.col("domain") == str(domain)
    return _table(SUMMARY, lf, reduce, ci, n_boot, boot_seed, rows)


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
    lf = _select(results, BASELINE_REQUIRED, reduce, ci, n_boot, filters)
    metric = baseline_metric(str(source), str(target))
    return _table(metric, lf, reduce, ci, n_boot, boot_seed)


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
    by = [by] if isinstance(by, str) else list(by)
    lf = select_rows(results, required_columns([*TRANSFER_COLUMNS, *by], ci), filters)
    metric = hyperparameter_metric(by, [str(d) for d in exclude_target_domains])
    return _table(metric, lf, "median", ci, n_boot, boot_seed)  # (quantiles, whatever reduce)


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
    lf = _select(results, [*TRANSFER_COLUMNS, "model_id"], reduce, ci, n_boot, filters, phase)
    return _table(GAP_METRICS[phase], lf, reduce, ci, n_boot, boot_seed)


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
    lf = _select(results, _TIME_REQUIRED, reduce, ci, n_boot, filters)
    device = [c for c in DEVICE_COLUMNS if c in lf.collect_schema()]
    return _table(time_metric(device), lf, reduce, ci, n_boot, boot_seed)


#: The reference study's Figure 7.2 configuration: transfer = pretrain at lr 1e-4 on 512
#: images, then transfer at lr 1e-5 (no freezing); mixture = one stage at lr 1e-4.
FIGURE_7_2 = {"pretrain_lr": 1e-4, "transfer_lr": 1e-5, "n_pretrain": 512, "freeze": "none"}
FIGURE_7_2_COLUMNS = (
    "source", "target", "method", "n_target_images", "model_id", "seed", "loss",
    "pretrain_lr", "transfer_lr", "n_pretrain", "freeze",
)  # fmt: skip
_FIGURE_7_2_REQUIRED = (*BASELINE_REQUIRED, "seed", "pretrain_lr", "transfer_lr", "freeze")


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
    lf = select_rows(results, _FIGURE_7_2_REQUIRED, filters)
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
    return finish(table, FIGURE_7_2_COLUMNS, pair, order=("method", "n_target_images", "model_id"))
