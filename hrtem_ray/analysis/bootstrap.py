"""Percentile-bootstrap intervals of grouped statistics (numpy and Polars only).

The unit of resampling is the *model*: a model contributes one row per eval domain
and those rows are not independent. A *group* is a set of models that a statistic
reduces over (in :mod:`hrtem_ray.analysis`: the pretrain models of one domain, the
transfer models of one pair, ...); a *cell* is one value the group is reduced to (its
loss on one eval domain). One bootstrap replicate resamples every group
independently, with replacement and at its own size, and reduces all cells of a
group from the same resample (:func:`bootstrap_cells`). Derived statistics are then
recomputed per replicate by the same code as the point estimate, on a table holding
one row per (replicate, cell) (``rep`` is one more key), and the interval is the
percentile interval of those replicates (:func:`interval`, :func:`with_ci`).

Two exact shortcuts keep this fast: the replicates of a median, min, max or quantile
of a single cell are drawn from the bootstrap distribution of that order statistic
(two Beta draws per replicate, no resample needed), and quantiles of a group on
several cells are read off cumulative resample counts around the expected rank.

This module knows nothing of the results table beyond the column names its callers
pass (and ``model_id`` and ``loss``); it imports nothing from ``hrtem_ray``.

>>> import polars as pl
>>> rows = pl.LazyFrame(
...     {"domain": ["a"] * 4 + ["b"], "model_id": ["m1", "m2", "m3", "m4", "m5"],
...      "loss": [0.1, 0.2, 0.3, 0.4, 0.5]}
... )
>>> reps = bootstrap_cells(rows, ["domain"], None, {"loss": "mean"}, n_boot=200, seed=0)
>>> reps.height, reps.columns
(400, ['domain', '_n', 'rep', 'loss'])
>>> ci = interval(reps.lazy(), ["domain"], ["loss"], 0.9).sort("domain").collect()
>>> ci.columns
['domain', 'loss_ci_low', 'loss_ci_high']
>>> bool(0.1 <= ci["loss_ci_low"][0] < ci["loss_ci_high"][0] <= 0.4)
True
>>> ci["loss_ci_low"][1] is None  # one model: no interval
True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl

CI_SUFFIXES = ("_ci_low", "_ci_high")
_BLOCK = 1 << 16  # (replicates x models) random draws per chunk: counted in cache
_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
# The in-memory engine: its group-by sums are deterministic (the streaming engine adds
# in thread-scheduling order) and it is faster on these in-memory aggregations.
_ENGINE = "in-memory"

Stat = float | str  # a quantile in [0, 1] (linear interpolation) or "mean"


def check_ci(ci: float | None, n_boot: int) -> None:
    """Validate the interval arguments before any compute.

    Parameters
    ----------
    ci
        Confidence level in (0, 1), e.g. ``0.95``; ``None`` (no interval) passes.
    n_boot
        Bootstrap replicates; checked only when ``ci`` is set.

    Raises
    ------
    ValueError
        For a confidence level outside (0, 1) or fewer than 2 replicates, naming the
        argument and the allowed values.
    """
    if ci is None:
        return
    if not 0 < ci < 1:
        raise ValueError(f"ci must be a confidence level in (0, 1), e.g. 0.95, not {ci!r}")
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, not {n_boot!r}")


def _counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n`` models is drawn in each of ``n_boot`` resamples.

    Returns
    -------
    numpy.ndarray
        Integer array of shape ``(n, n_boot)`` (a replicate per column; ``int16``
        below 2**15 models, so that sums of counts stay small and fast); every
        column sums to ``n``.
    """
    out = np.empty((n, n_boot), np.int16 if n < 2**15 else np.int64)
    rows = max(1, _BLOCK // n)
    for start in range(0, n_boot, rows):
        size = min(rows, n_boot - start)
        draws = rng.integers(0, n, (size, n), dtype=np.int32)
        draws += n * np.arange(size, dtype=np.int32)[:, None]  # one bin range per replicate
        block = np.bincount(draws.ravel(), minlength=size * n).reshape(size, n)
        out[:, start : start + size] = block.T
    return out


def _order_statistic_replicates(
    values: np.ndarray, q: float, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap replicates of the ``q`` quantile of one cell, without drawing resamples.

    The k-th smallest of n draws with replacement from the sorted values ``s`` is
    ``s[floor(n U)]`` with U the k-th smallest of n standard uniforms, which is
    Beta(k, n - k + 1) distributed; the next smallest is ``U + (1 - U) V`` with V
    ~ Beta(1, n - k). Two Beta draws per replicate therefore give the exact bootstrap
    distribution of a linearly interpolated quantile (median, min, max) at O(1) cost
    instead of O(n).
    """
    s = np.sort(values)
    n = len(s)
    lo, frac = divmod(q * (n - 1), 1.0)
    lo = int(lo)
    u = rng.beta(lo + 1, n - lo, n_boot)
    first = s[np.minimum((n * u).astype(np.int64), n - 1)]
    if frac == 0:
        return first
    u = u + (1 - u) * rng.beta(1, n - lo - 1, n_boot)
    second = s[np.minimum((n * u).astype(np.int64), n - 1)]
    return first + frac * (second - first)


def _mean_replicates(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of the mean of one cell (resampled in cache-sized chunks)."""
    values = np.sort(values)  # a canonical order: the draws do not depend on the row order
    n = len(values)
    out = np.empty(n_boot)
    rows = max(1, 4 * _BLOCK // n)
    for start in range(0, n_boot, rows):
        draws = rng.integers(0, n, (min(rows, n_boot - start), n))
        out[start : start + len(draws)] = values[draws].mean(axis=1)
    return out


def _cumsum_rows(block: np.ndarray) -> np.ndarray:
    """Cumulative sum down the rows, in place (3x faster than ``np.cumsum(axis=0)`` here)."""
    for row in range(1, len(block)):
        np.add(block[row], block[row - 1], out=block[row])
    return block


def _ranks_below(cum: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Per replicate (column), the first position where the cumulative count exceeds ``rank``."""
    return np.count_nonzero(cum <= rank, axis=0)


def _interpolate(
    cum: np.ndarray, sorted_values: np.ndarray, lo: np.ndarray, frac: np.ndarray
) -> np.ndarray:
    """Linear interpolation between the order statistics ``lo`` and ``lo + 1`` of each resample."""
    last = len(sorted_values) - 1  # (clipped where the window misses: recomputed later)
    first = sorted_values[np.minimum(_ranks_below(cum, lo), last)]
    second = sorted_values[np.minimum(_ranks_below(cum, lo + 1), last)]
    return first + frac * (second - first)


def _weighted_quantiles(
    counts: np.ndarray, values: np.ndarray, totals: np.ndarray, q: float
) -> np.ndarray:
    """The ``q`` quantile of every cell of every resample, given the resample counts.

    Per cell, the models are sorted by value; the quantile of a resample is read off
    the cumulative counts in that order. Only a window of about +-4 standard
    deviations of the rank around the expected position is scanned; the draws below
    it are summed once. Replicates whose rank falls outside the window (probability
    about 1e-4 each) are recomputed over all positions, so the result is exact.
    (Sums, not matrix products: a multi-threaded BLAS on a busy machine made those
    20x slower.)

    Parameters
    ----------
    counts
        ``(n, n_boot)`` resample counts (:func:`_counts`).
    values
        ``(n, n_cells)`` model values, NaN where a model has no value in a cell.
    totals
        ``(n_cells, n_boot)`` number of drawn models with a value in each cell.
    q
        The quantile (linear interpolation between order statistics).

    Returns
    -------
    numpy.ndarray
        ``(n_cells, n_boot)``; NaN where a resample drew no model with a value.
    """
    out = np.full(totals.shape, np.nan)
    for cell in range(values.shape[1]):
        column = values[:, cell]
        order = np.argsort(column, kind="stable")[: np.count_nonzero(~np.isnan(column))]
        centre = int(q * (len(order) - 1))
        half = int(2 * np.sqrt(len(order))) + 2
        start, stop = max(0, centre - half), min(len(order), centre + half + 2)
        lo, frac = np.divmod(q * (totals[cell] - 1), 1.0)
        lo = lo.astype(counts.dtype)  # integer ranks: compared with integer counts
        cum = _cumsum_rows(counts[order[start:stop]])
        if start:
            cum += counts[order[:start]].sum(axis=0, dtype=counts.dtype)  # drawn below
        picked = _interpolate(cum, column[order[start:stop]], lo, frac)
        covered = (cum[0] - counts[order[start]] <= lo) & (cum[-1] > lo + (frac > 0))
        missed = np.flatnonzero(~covered & (totals[cell] > 0))
        if len(missed):
            cum = _cumsum_rows(counts[np.ix_(order, missed)])
            picked[missed] = _interpolate(cum, column[order], lo[missed], frac[missed])
        out[cell] = np.where(totals[cell] > 0, picked, np.nan)
    return out


def _joint_replicates(
    values: np.ndarray, stats: Sequence[Stat], n_boot: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Replicates of every cell of one group, all cells reduced from the same resamples.

    Parameters
    ----------
    values
        ``(n_models, n_cells)``, NaN where a model has no value in a cell.
    stats
        One statistic per output: ``"mean"`` or a quantile.

    Returns
    -------
    list of numpy.ndarray
        Per statistic, ``(n_cells, n_boot)`` replicates.
    """
    # A canonical model order (by their values; tied models are interchangeable), so
    # the draws do not depend on the row order or on how model ids are encoded.
    values = values[np.lexsort(values.T[::-1])]
    counts = _counts(len(values), n_boot, rng)
    valid = ~np.isnan(values)
    # drawn models with a value, per cell (float64: the quantile positions are exact)
    totals = np.stack(
        [
            np.full(n_boot, float(len(values)))
            if column.all()
            else counts[column].sum(axis=0, dtype=np.float64)
            for column in valid.T
        ]
    )
    out = []
    for stat in stats:
        if stat == "mean":
            sums = np.where(valid, values, 0.0).T @ counts.astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                out.append(np.where(totals > 0, sums / totals, np.nan))
        else:
            out.append(_weighted_quantiles(counts, values, totals, float(stat)))
    return out


def _group_replicates(
    models: np.ndarray,
    cells: np.ndarray,
    values: np.ndarray,
    stats: Sequence[Stat],
    n_boot: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int, list[np.ndarray]]:
    """Replicates of the cells of one group.

    Parameters
    ----------
    models, cells, values
        One entry per row of the group: the model's code, the cell's code and the
        loss. A model's rows in one cell are averaged (a contract table has one).
    stats, n_boot, rng
        See :func:`bootstrap_cells`.

    Returns
    -------
    cells
        The codes of the group's cells, sorted.
    n_models
        The number of models (with a non-missing loss).
    replicates
        Per statistic, ``(n_cells, n_boot)``. A group of one model has no estimable
        spread: its replicates are NaN, so every interval computed from it is null.
        A group of one cell needs no joint resample and uses the O(1) order-statistic
        draws of :func:`_order_statistic_replicates` for quantiles.
    """
    kept = ~np.isnan(values)  # a missing loss is no evidence
    models, cells, values = models[kept], cells[kept], values[kept]
    model_codes, model = np.unique(models, return_inverse=True)
    cell_codes, cell = np.unique(cells, return_inverse=True)
    n, n_cells = len(model_codes), len(cell_codes)
    flat = model * n_cells + cell
    sums = np.bincount(flat, weights=values, minlength=n * n_cells)
    rows = np.bincount(flat, minlength=n * n_cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = (sums / rows).reshape(n, n_cells)  # NaN where a model lacks a cell
    if n < 2:
        return cell_codes, n, [np.full((n_cells, n_boot), np.nan) for _ in stats]
    if n_cells == 1:
        column = matrix[:, 0]
        return (
            cell_codes,
            n,
            [
                (
                    _mean_replicates(column, n_boot, rng)
                    if stat == "mean"
                    else _order_statistic_replicates(column, float(stat), n_boot, rng)
                )[None, :]
                for stat in stats
            ],
        )
    return cell_codes, n, _joint_replicates(matrix, stats, n_boot, rng)


def _code(column: str, dtype: pl.DataType) -> pl.Expr:
    """Integer code of a label column (categorical codes; strings are encoded first)."""
    expr = pl.col(column)
    if not isinstance(dtype, (pl.Categorical, pl.Enum)):
        expr = expr.cast(pl.String).cast(pl.Categorical)
    return expr.to_physical().cast(pl.Int64)


def bootstrap_cells(
    frame: pl.LazyFrame,
    groups: Sequence[str],
    cell: str | None,
    stats: dict[str, Stat],
    n_boot: int,
    seed: int,
) -> pl.DataFrame:
    """Bootstrap replicates of every cell of every group: the one resampling helper.

    Parameters
    ----------
    frame
        Rows with the ``groups`` columns, ``cell``, ``model_id`` and ``loss``. A
        model's rows in one cell are averaged first (a contract table has exactly
        one), so duplicated rows neither add weight nor narrow an interval.
    groups
        Columns identifying a resampling group (resampled independently).
    cell
        Column identifying a cell within a group (all cells of a group are reduced
        from the same resample of its models); ``None``: one cell per group.
    stats
        Output column -> statistic (``"mean"`` or a quantile in [0, 1]).
    n_boot, seed
        Number of replicates and the seed. Every group draws from its own random
        stream, spawned from ``seed`` in the order of the group labels, and orders its
        models canonically, so the same seed gives the same replicates whatever the
        row order, the model ids or the number of threads.

    Returns
    -------
    polars.DataFrame
        One row per (cell, replicate): the ``groups`` and ``cell`` columns, ``_n``
        (the number of models of the group), ``rep`` (0 .. n_boot - 1) and one column
        per statistic (NaN for groups of one model).
    """
    keys, labels, arrays = _group_arrays(frame, groups, cell)
    # one random stream per group: the draws do not depend on the other groups, and
    # groups can run on several threads (numpy releases the GIL while it draws/counts)
    streams = np.random.SeedSequence(seed).spawn(len(arrays))

    def replicate(args: tuple) -> tuple[np.ndarray, int, list[np.ndarray]]:
        (models, cell_index, values), stream = args
        rng = np.random.default_rng(stream)
        return _group_replicates(models, cell_index, values, [*stats.values()], n_boot, rng)

    with ThreadPoolExecutor(_THREADS) as pool:
        results = list(pool.map(replicate, zip(arrays, streams, strict=True)))
    index, cells, sizes, reps = [], [], [], [[] for _ in stats]
    for i, (present, n, group_reps) in enumerate(results):
        index.append(np.full(len(present), i))
        sizes.append(np.full(len(present), n))
        cells.append(present)
        for out, r in zip(reps, group_reps, strict=True):
            out.append(r)
    none = np.zeros(0, np.int64)
    table = keys[np.concatenate(index) if index else none]
    if labels is not None:
        table = table.with_columns(labels[np.concatenate(cells) if cells else none])
    table = table.with_columns(_n=pl.Series(np.concatenate(sizes) if sizes else none))
    return table[np.repeat(np.arange(table.height), n_boot)].with_columns(
        rep=pl.Series(np.tile(np.arange(n_boot, dtype=np.int32), table.height)),
        **{
            name: pl.Series(name, np.concatenate(r).ravel() if r else [], pl.Float64)
            for name, r in zip(stats, reps, strict=True)
        },
    )


def _group_arrays(
    frame: pl.LazyFrame, groups: Sequence[str], cell: str | None
) -> tuple[pl.DataFrame, pl.Series | None, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The rows of every group as numpy arrays, groups in the order of their labels.

    Returns
    -------
    keys
        One row per group: its ``groups`` columns.
    labels
        The ``cell`` labels in order (``None`` without ``cell``).
    arrays
        Per group: model codes, cell indices into ``labels`` (0 without ``cell``)
        and losses, one entry per row.
    """
    schema = frame.collect_schema()
    # one cell: code 0 for every row (a bare literal would aggregate to one value)
    cell_code = _code(cell, schema[cell]) if cell else pl.col("loss").is_null().cast(pl.Int64) * 0
    per_group = (
        frame.group_by(groups)
        .agg(_model=_code("model_id", schema["model_id"]), _cell=cell_code, _loss="loss")
        .sort([pl.col(g).cast(pl.String) for g in groups], nulls_last=True)
        .collect(engine=_ENGINE)
    )
    if per_group.is_empty():
        return per_group.select(groups), pl.Series(cell, [], schema[cell]) if cell else None, []
    bounds = np.cumsum(per_group.get_column("_loss").list.len().to_numpy())[:-1]
    models, cells, losses = (
        per_group.get_column(c).explode().to_numpy() for c in ("_model", "_cell", "_loss")
    )
    labels = None
    if cell:
        # cells indexed in label order, not by their (encoding-dependent) codes
        table = (
            frame.select(cell, _cell=cell_code)
            .unique()
            .sort(pl.col(cell).cast(pl.String), nulls_last=True)
            .collect(engine=_ENGINE)
        )
        labels = table.get_column(cell)
        rank = np.zeros(int(table.get_column("_cell").max()) + 1, np.int64)
        rank[table.get_column("_cell").to_numpy()] = np.arange(table.height)
        cells = rank[cells]
    arrays = list(
        zip(*(np.split(a, bounds) for a in (models, cells, losses.astype(float))), strict=True)
    )
    return per_group.select(groups), labels, arrays


def interval(
    replicates: pl.LazyFrame, on: Sequence[str], columns: Sequence[str], ci: float
) -> pl.LazyFrame:
    """Percentile interval of each column over the replicates, per ``on``.

    Parameters
    ----------
    replicates
        One row per replicate (and ``on`` value): statistics recomputed on the rows
        of :func:`bootstrap_cells`.
    on
        Columns identifying a statistic's row (the replicate column ``rep`` is not
        one of them).
    columns
        The statistic columns.
    ci
        Confidence level in (0, 1): the bounds are the ``(1 - ci) / 2`` and
        ``(1 + ci) / 2`` quantiles (linear interpolation) of the replicates.

    Returns
    -------
    polars.LazyFrame
        The ``on`` columns and, per statistic ``x``, ``x_ci_low`` and ``x_ci_high``
        (:data:`CI_SUFFIXES`). Null where any replicate is NaN or null: a statistic
        that depends on a group of a single model has no interval (rather than a
        zero-width one).
    """
    tail = (1 - ci) / 2
    exprs = []
    for column in columns:
        x = pl.col(column)
        unknown = (x.is_null() | x.is_nan()).any()
        for suffix, q in zip(CI_SUFFIXES, (tail, 1 - tail), strict=True):
            bound = x.quantile(q, interpolation="linear")
            exprs.append(pl.when(unknown).then(None).otherwise(bound).alias(column + suffix))
    return replicates.group_by(list(on)).agg(exprs)


def with_ci(
    table: pl.LazyFrame,
    replicates: pl.LazyFrame,
    on: Sequence[str],
    columns: Sequence[str],
    ci: float,
) -> pl.LazyFrame:
    """Join the percentile intervals of ``columns`` onto the point estimates, by ``on``.

    Parameters
    ----------
    table
        The point estimates, one row per ``on`` value.
    replicates, on, columns, ci
        See :func:`interval`.

    Returns
    -------
    polars.LazyFrame
        ``table`` with the interval columns appended (left join, nulls matching
        nulls): null for a row without replicates.
    """
    intervals = interval(replicates, on, columns, ci)
    return table.join(intervals, on=list(on), how="left", nulls_equal=True)
