"""Every analysis table for every filter selection at once, for the interactive report.

:func:`selection_tables` replicates each row of the results table into every filter
selection it belongs to (one ``sel_<dim>`` key per filter dimension) and evaluates
the metric definitions of :mod:`hrtem_ray.analysis.metrics` once with those keys, the
same definitions the public functions evaluate without keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from hrtem_ray.analysis.bootstrap import check_ci
from hrtem_ray.analysis.metrics import (
    ASYMMETRY,
    GAP_METRICS,
    PAIR_METRICS,
    SUMMARY,
    Cells,
    Metric,
    baseline_metric,
    hyperparameter_metric,
    intervals,
    ood_metric,
)
from hrtem_ray.analysis.tables import (
    BASELINE_REQUIRED,
    ENGINE,
    REDUCE_MODES,
    TRANSFER_FILTERS,
    Results,
    check_reduce,
    finish,
    select_rows,
)

SELECTION_DIMS = ("freeze", "n_transfer", "pretrain_lr", "transfer_lr")
ALL = "all"
#: The hyperparameter tables: name suffix -> grouping columns.
HYPERPARAMETER_TABLES = {
    "n_transfer": ("n_transfer",),
    "freeze": ("freeze",),
    "lr": ("pretrain_lr", "transfer_lr"),
}
# The hyperparameter tables show quantiles and the mean, whatever the reduce mode.
_QUANTILES_ONLY = "median"

#: A selection table's parts: (the ``phase`` label of its rows or ``None``, the metric).
Parts = tuple[tuple[str | None, Metric], ...]


def format_value(value: Any) -> str:
    """Label of a filter value: ``format(value, "g")`` for floats, ``str`` otherwise."""
    return format(value, "g") if isinstance(value, float) else str(value)


def _expand_selections(
    lf: pl.LazyFrame, dims: Sequence[str]
) -> tuple[pl.LazyFrame, dict[str, list[str]]]:
    """Replicate each row into every filter selection it belongs to.

    For each dimension d a column ``sel_d`` is added holding ``"all"`` or a value
    label. A row that the filter restricts (see
    :func:`hrtem_ray.analysis.tables.select_rows`) belongs to ``"all"`` and to its own
    value; a row it does not restrict belongs to every choice. Grouping by the
    ``sel_*`` columns then yields, per group, exactly the rows the corresponding
    keyword filters would keep.
    """
    choices: dict[str, list[str]] = {}
    for dim in dims:
        restricted = pl.col("phase") == "transfer" if dim in TRANSFER_FILTERS else pl.lit(True)
        values = lf.filter(restricted).select(pl.col(dim).drop_nulls().unique())
        values = values.collect(engine=ENGINE)
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
        .collect(engine=ENGINE)
    )
    selections = fingerprints.with_columns(
        _sel=pl.col("_ids").rank("dense").cast(pl.Int64),
        _first=pl.col("_ids").is_first_distinct(),
    )
    first = selections.filter("_first").select(*keys, "_sel").lazy()
    distinct = expanded.join(first, on=keys, how="inner").drop(keys)
    return selections.select(*keys, "_sel"), distinct


def _join_intervals(
    table: pl.LazyFrame,
    found: pl.LazyFrame,
    on: list[str],
    selections: pl.DataFrame | None,
    keys: list[str],
) -> pl.LazyFrame:
    """A selection table with the intervals ``found`` joined on ``on``.

    ``found`` are keyed by ``_sel``, the set of models of :func:`_distinct_selections`
    (its numbering is ``selections``), and are copied to every selection ``keys``
    holding that set; ``selections`` of ``None``: no keys.
    """
    if selections is not None:
        found = selections.lazy().join(found, on="_sel", how="inner").drop("_sel")
        on = [*keys, *(c for c in on if c != "_sel")]
    return table.join(found, on=on, how="left", nulls_equal=True)


class _Selections:
    """The expanded rows of :func:`selection_tables` and how their intervals are drawn.

    Parameters
    ----------
    expanded
        The rows with their ``sel_*`` keys (:func:`_expand_selections`).
    keys
        The ``sel_*`` columns.
    ci, n_boot, boot_seed
        The interval arguments of :func:`selection_tables`.
    """

    def __init__(
        self, expanded: pl.LazyFrame, keys: list[str], ci: float | None, n_boot: int, boot_seed: int
    ) -> None:
        self.expanded, self.keys = expanded, keys
        self.ci, self.n_boot, self.boot_seed = ci, n_boot, boot_seed
        self.selections, self.distinct, self.ci_keys = None, expanded, []
        if ci is not None and keys:  # bootstrap each distinct set of models once
            self.selections, self.distinct = _distinct_selections(expanded, keys)
            self.ci_keys = ["_sel"]
        self._drawn: dict[tuple[Cells, str], pl.LazyFrame] = {}

    def _replicates(self, cells: Cells, reduce: str) -> pl.LazyFrame:
        """The replicates of ``cells`` (drawn once per reduce mode: metrics share them)."""
        if (cells, reduce) not in self._drawn:
            drawn = cells.resample(self.distinct, reduce, self.ci_keys, self.n_boot, self.boot_seed)
            self._drawn[cells, reduce] = drawn
        return self._drawn[cells, reduce]

    def table(self, parts: Parts, reduce: str) -> pl.LazyFrame:
        """The rows of a selection table's ``parts`` for every selection, with intervals."""
        frames = []
        for phase, metric in parts:
            frame = metric.block(self.expanded, reduce, self.keys)
            if self.ci is not None:
                replicates = self._replicates(metric.cells, reduce)
                found = intervals(metric, replicates, self.ci_keys, self.ci)
                on = [*self.ci_keys, *metric.on]
                frame = _join_intervals(frame, found, on, self.selections, self.keys)
            frames.append(frame if phase is None else frame.with_columns(phase=pl.lit(phase)))
        return pl.concat(frames)


def _layout(
    parts: Parts, ci: float | None, present: Sequence[str] = ()
) -> tuple[list[str], tuple[str, ...], tuple[str, ...]]:
    """Columns, domain columns and sort columns of a selection table of ``parts``.

    The metric's optional columns follow where they are in the computed table (``present``).
    """
    phase, metric = parts[0]
    columns = [*(["phase"] if phase else []), *metric.labels, *metric.output(ci)]
    columns += [c for c in metric.optional if c in present]
    return columns, (*metric.labels, *metric.domains), metric.order


def _reduced_tables(exclude_eval_domains: Sequence[str]) -> dict[str, Parts]:
    """The tables computed per reduce mode: name -> parts."""
    return {
        "pair_matrix": tuple(PAIR_METRICS.items()),
        "ood_spread": ((None, ood_metric(exclude_eval_domains)),),
        "transfer_asymmetry": ((None, ASYMMETRY),),
        "asymmetry_summary": ((None, SUMMARY),),
        "baseline_comparison": ((None, baseline_metric(None, None)),),
        "generalization_gap": tuple(GAP_METRICS.items()),
    }


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
        The intervals come from the same metric definitions as the public
        functions'. Each distinct set of models is bootstrapped on its own (its
        groups draw from their own random streams), so an interval equals the public
        function's in distribution, not bit for bit; with no ``dims`` there is one
        selection and the intervals are the public functions' (but those of the
        baseline comparison, whose table here resamples every pair at once).

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
        check_reduce(mode)
    check_ci(ci, n_boot)
    hyperparameters = [c for by in HYPERPARAMETER_TABLES.values() for c in by]
    lf = select_rows(results, [*BASELINE_REQUIRED, *hyperparameters], {})
    present = lf.collect_schema()
    dims = [d for d in dims if d in present]
    expanded, choices = _expand_selections(lf, dims)
    expanded = expanded.collect(engine=ENGINE).lazy()
    choices["reduce"] = list(reduce_modes)
    keys = [f"sel_{d}" for d in dims]
    selections = _Selections(expanded, keys, ci, n_boot, boot_seed)

    reduced = _reduced_tables([str(d) for d in exclude_eval_domains])
    parts_of = dict(reduced)
    lazies = {
        name: pl.concat(
            [
                selections.table(parts, mode).with_columns(sel_reduce=pl.lit(mode))
                for mode in reduce_modes
            ]
        )
        for name, parts in reduced.items()
    }
    exclude_target = [str(d) for d in exclude_target_domains]
    for label, by in HYPERPARAMETER_TABLES.items():
        parts = ((None, hyperparameter_metric(by, exclude_target)),)
        lazies[f"hyperparameters_{label}"] = selections.table(parts, _QUANTILES_ONLY)
        parts_of[f"hyperparameters_{label}"] = parts
    frames = pl.collect_all(list(lazies.values()), engine=ENGINE)
    tables = {}
    for name, frame in zip(lazies, frames, strict=True):
        columns, domains, order = _layout(parts_of[name], ci, frame.columns)
        sel = ["sel_reduce", *keys] if name in reduced else keys
        tables[name] = finish(frame.lazy(), columns, domains, keys=sel, order=order)
    return tables, choices
