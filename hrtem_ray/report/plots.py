"""Altair figures of the analysis tables.

Every chart function takes the long-form tables of :mod:`hrtem_ray.analysis` and
returns an Altair chart with its data embedded. When a table carries the
``sel_*`` columns of :func:`hrtem_ray.analysis.selection_tables` (one row per reduce
mode and filter selection), the chart gets one Vega-Lite parameter per column
(``sel_reduce``, ``sel_freeze``, ...; default ``median`` / ``all``) and shows only
the rows of the current selection: the report drives these parameters from its
controls. Tables of a single selection (the public analysis functions' output) are
plotted as they are.

Intervals: where a table carries the ``<x>_ci_low`` / ``<x>_ci_high`` columns of an
analysis function called with ``ci`` (and ``n_models``), heatmap tooltips show them,
bars and lines get error bars (Vega marks named ``errorbar_*``), and asymmetry cells
whose interval excludes 0 are outlined (marks named ``significant_*``). Tables
without intervals are drawn without these layers.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import altair as alt
import numpy as np
import polars as pl

from hrtem_ray.analysis import (
    ALL,
    CI_SUFFIXES,
    domain_order,
    format_value,
    significant,
    sort_domains,
)
from hrtem_ray.report.axes import axis_label
from hrtem_ray.spec.types import LATTICES

SELECTION_DEFAULTS = {"sel_reduce": "median"}
SEQUENTIAL = "viridis"
DIVERGING = "redblue"
CELL = 30
SIGNIFICANT_DIGITS = 5
PANEL = 96


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def axis_title(study: str, role: str = "") -> str:
    """Axis title for a domain axis, with the study's unit.

    Parameters
    ----------
    study
        The ``study`` column value (``defocus``, ``dose``, ``structure`` or a
        user-defined axis name, used as is).
    role
        Prefix such as ``"pretraining"`` or ``"target"``.

    Examples
    --------
    >>> axis_title("defocus", "target")
    'target defocus (nm)'
    """
    return f"{role} {axis_label(study)}".strip()


def selection_columns(frame: pl.DataFrame) -> list[str]:
    """The ``sel_*`` columns of a table, in order."""
    return [c for c in frame.columns if c.startswith("sel_")]


def _selection_params(frames: Iterable[pl.DataFrame]) -> list[alt.Parameter]:
    """One Vega-Lite parameter per ``sel_*`` column found in any of ``frames``."""
    names = dict.fromkeys(c for f in frames for c in selection_columns(f))
    return [alt.param(name=n, value=SELECTION_DEFAULTS.get(n, ALL)) for n in names]


def _selection_filter(frame: pl.DataFrame) -> str | None:
    """Vega expression keeping the rows of the current selection, or ``None``."""
    columns = selection_columns(frame)
    if not columns:
        return None
    return " && ".join(f"datum.{c} == {c}" for c in columns)


def _values(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready rows (NaN as null)."""
    floats = [c for c, t in frame.schema.items() if t.is_float()]
    return frame.with_columns(pl.col(floats).fill_nan(None)).to_dicts()


def compact_selections(frame: pl.DataFrame, digits: int = SIGNIFICANT_DIGITS) -> pl.DataFrame:
    """Shrink a selection table for embedding: round floats, drop idle ``sel_*`` columns.

    A ``sel_*`` column is idle when every one of its values selects the same rows (the
    pretrain matrix does not depend on the freezing filter, for example); only its
    default rows are kept and the chart then ignores that control.
    """
    floats = [c for c, t in frame.schema.items() if t.is_float()]
    frame = frame.with_columns(pl.col(floats).round_sig_figs(digits))
    for column in selection_columns(frame):
        default = frame.filter(pl.col(column) == SELECTION_DEFAULTS.get(column, ALL))
        n_values = frame.get_column(column).n_unique()
        if (
            frame.height == default.height * n_values
            and frame.drop(column).unique().height == default.height
        ):
            frame = default.drop(column)
    return frame


def _base(frame: pl.DataFrame, name: str) -> alt.Chart:
    """A chart on the named dataset ``name`` (attached by :func:`_finalize`), filtered to
    the current selection.

    The rows travel once, as a top-level ``datasets`` entry: Altair copies inline
    values at every chart operation, which is slow for the report's long-form tables.
    """
    chart = alt.Chart(alt.NamedData(name=name))
    expr = _selection_filter(frame)
    return chart.transform_filter(expr) if expr else chart


def _finalize(
    chart: alt.TopLevelMixin, datasets: Mapping[str, pl.DataFrame], title: str, subtitle: str
) -> alt.TopLevelMixin:
    """Add the selection parameters, the title and the datasets (last, see :func:`_base`)."""
    params = _selection_params(datasets.values())
    if params:
        chart = chart.add_params(*params)
    chart = chart.properties(title=alt.Title(title, subtitle=subtitle, anchor="start"))
    chart.datasets = {name: _values(frame) for name, frame in datasets.items()}
    return chart


def chart_spec(chart: alt.TopLevelMixin) -> dict[str, Any]:
    """The Vega-Lite dict of a chart, fast for large datasets.

    Equivalent to ``chart.to_dict(validate=False)``, but the ``datasets`` are set
    aside during the conversion (Altair walks every value of them otherwise).
    """
    datasets = chart.datasets
    bare = chart.copy(deep=False)
    bare.datasets = alt.Undefined
    spec = bare.to_dict(validate=False)
    if datasets is not alt.Undefined:
        spec["datasets"] = {**spec.get("datasets", {}), **datasets}
    return spec


def has_interval(frame: pl.DataFrame, column: str) -> bool:
    """Whether ``frame`` holds the interval columns of ``column``."""
    return all(column + suffix in frame.columns for suffix in CI_SUFFIXES)


def interval_tooltips(frame: pl.DataFrame, *columns: str) -> list[alt.Tooltip]:
    """Tooltips of the intervals of ``columns`` (those present) and of ``n_models``."""
    tips = [
        alt.Tooltip(column + suffix, type="quantitative", format=".4g")
        for column in columns
        if has_interval(frame, column)
        for suffix in CI_SUFFIXES
    ]
    if "n_models" in frame.columns:
        tips.append(alt.Tooltip("n_models", type="quantitative"))
    return tips


def with_significance(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """Add ``<column>_significant`` (:func:`hrtem_ray.analysis.significant`) if it has an interval."""
    if not has_interval(frame, column):
        return frame
    return frame.with_columns(significant(frame, column).fill_null(False))


def error_bars(
    base: alt.Chart, column: str, name: str, horizontal: bool = False, **encodings: Any
) -> alt.Chart:
    """Error bars from ``<column>_ci_low`` to ``<column>_ci_high`` (vertical by default).

    Rows without an interval (one model) draw nothing. ``name`` names the Vega mark
    (``errorbar_<name>``; Altair may append an index); ``encodings`` add e.g. the
    other position or the colour channel.
    """
    low, high = (column + suffix for suffix in CI_SUFFIXES)
    axis = "x" if horizontal else "y"
    return (
        base.transform_filter(f"isValid(datum.{low}) && isValid(datum.{high})")
        .mark_rule(strokeWidth=1.5)
        .encode(
            **{axis: f"{low}:Q", f"{axis}2": f"{high}:Q"},
            tooltip=[alt.Tooltip(f"{low}:Q", format=".4g"), alt.Tooltip(f"{high}:Q", format=".4g")],
            **encodings,
        )
        .properties(name=f"errorbar_{name}")
    )


def _order(frame: pl.DataFrame, columns: Sequence[str]) -> list[str]:
    return domain_order(v for c in columns for v in frame.get_column(c).to_list())


def _heatmap(
    base: alt.Chart,
    value: str,
    scale: alt.Scale,
    x: alt.X,
    y: alt.Y,
    legend: str,
    fmt: str = ".3f",
    extra_tooltip: Sequence[alt.Tooltip] = (),
    legend_values: Sequence[float] | None = None,
) -> alt.LayerChart:
    """Rect + value-label heatmap; label colour flips on dark cells.

    The text colour uses the cell's position in the current value range (log-spaced
    for log scales, |value| for diverging scales) so labels stay legible.
    """
    log = scale.to_dict().get("type") == "log"
    diverging = "domainMid" in scale.to_dict()
    if log:
        position = (
            f"(log(datum.{value}) - log(datum._lo)) / (log(datum._hi) - log(datum._lo) + 1e-12)"
        )
        dark = f"{position} < 0.45"
    elif diverging:
        dark = f"abs(datum.{value}) > 0.6 * max(abs(datum._lo), abs(datum._hi))"
    else:
        dark = f"(datum.{value} - datum._lo) / (datum._hi - datum._lo + 1e-12) < 0.45"
    tooltip = [
        alt.Tooltip(x.to_dict()["field"], type="ordinal"),
        alt.Tooltip(y.to_dict()["field"], type="ordinal"),
        alt.Tooltip(value, type="quantitative", format=".4g"),
    ]
    # an explicit empty groupby: Vega-Lite fails on a joinaggregate without one in a facet
    layered = base.transform_joinaggregate(
        _lo=f"min({value})", _hi=f"max({value})", groupby=[]
    ).encode(x=x, y=y)
    rect = layered.mark_rect().encode(
        color=alt.Color(
            value,
            type="quantitative",
            scale=scale,
            title=legend,
            legend=alt.Legend(values=list(legend_values)) if legend_values else alt.Undefined,
        ),
        tooltip=[*tooltip, *extra_tooltip],
    )
    text = layered.mark_text(fontSize=8).encode(
        text=alt.Text(value, type="quantitative", format=fmt),
        color=alt.condition(dark, alt.value("white"), alt.value("black")),
    )
    return alt.layer(rect, text)


def _log_ticks(low: float, high: float, n: int = 5) -> list[float]:
    """About ``n`` log-spaced legend values between ``low`` and ``high``, 2 significant digits."""
    if not (0 < low < high):
        return []
    return sorted({float(f"{v:.2g}") for v in np.geomspace(low, high, n)})


def _domain_axes(study: str, order: list[str], x: str, y: str, x_role: str, y_role: str):
    """Ordinal x/y encodings of two domain columns, in domain order."""
    return (
        alt.X(x, type="ordinal", sort=order, title=axis_title(study, x_role), scale=alt.Scale(paddingInner=0.02)),
        alt.Y(y, type="ordinal", sort=order, title=axis_title(study, y_role)),
    )  # fmt: skip


def loss_heatmap(
    cells: alt.Chart,
    pairs: pl.DataFrame,
    x: alt.X,
    y: alt.Y,
    fmt: str = ".3f",
    extra_tooltip: Sequence[alt.Tooltip | str] = (),
) -> alt.LayerChart:
    """A heatmap of ``loss`` on a log colour scale shared by every panel drawn from ``pairs``.

    The scale runs from the smallest positive loss of ``pairs`` (losses below it are
    drawn at it, since a log scale has no 0) to the largest; the tooltip shows the
    exact loss, then ``extra_tooltip``.
    """
    positive = pairs.filter(pl.col("loss") > 0).get_column("loss")
    floor = float(positive.min()) if positive.len() else 1e-3
    top = float(positive.max()) if positive.len() else 1.0
    return _heatmap(
        cells.transform_calculate(loss_shown=f"max(datum.loss, {floor})"),
        "loss_shown",
        alt.Scale(type="log", scheme=SEQUENTIAL, domainMin=floor),
        x,
        y,
        "excess loss",
        fmt=fmt,
        legend_values=_log_ticks(floor, top),
        extra_tooltip=[alt.Tooltip("loss:Q", format=".5g"), *extra_tooltip],
    )


# --------------------------------------------------------------------------- #
# charts
# --------------------------------------------------------------------------- #
def pair_heatmaps(pairs: pl.DataFrame, study: str = "defocus") -> alt.HConcatChart:
    """Pretraining-domain x target-domain loss, after pretraining and after transfer.

    Parameters
    ----------
    pairs
        :func:`~hrtem_ray.analysis.pair_matrix` rows of both phases with a ``phase``
        column (``pretrain`` / ``transfer``), e.g. the ``pair_matrix`` selection table.
    study
        Study name, for the axis titles.

    Returns
    -------
    altair.HConcatChart
        Two heatmaps sharing one log colour scale; cells where the transfer value
        falls back to the pretrain model (no transfer, e.g. the diagonal) are outlined.
    """
    order = _order(pairs, ["pretrain_domain", "target_domain"])
    x, y = _domain_axes(study, order, "target_domain", "pretrain_domain", "target", "pretraining")
    titles = {"pretrain": "after pretraining", "transfer": "after transfer"}
    panels = []
    datasets = {
        f"pairs_{phase}": compact_selections(pairs.filter(pl.col("phase") == phase))
        for phase in titles
    }
    for phase, title in titles.items():
        cells = _base(datasets[f"pairs_{phase}"], f"pairs_{phase}")
        heat = loss_heatmap(
            cells,
            pairs,
            x,
            y,
            extra_tooltip=[
                *interval_tooltips(datasets[f"pairs_{phase}"], "loss"),
                "from_pretrain:N",
            ],
        )
        layers = [heat]
        if phase == "transfer":
            outline = cells.transform_filter("datum.from_pretrain").mark_rect(
                fillOpacity=0, stroke="white", strokeWidth=1, strokeDash=[2, 2]
            )
            layers.append(outline.encode(x=x, y=y))
        panels.append(alt.layer(*layers).properties(title=title, width=alt.Step(CELL), height=alt.Step(CELL)))  # fmt: skip
    chart = alt.hconcat(*panels).resolve_scale(color="shared")
    return _finalize(
        chart,
        datasets,
        "Loss on the target domain",
        "excess cross-entropy (0 is perfect), log colour scale; dashed outline: no transfer "
        "model, pretrain value shown; tooltips: interval and number of models",
    )


def ood_spread_chart(ood: pl.DataFrame, study: str = "defocus") -> alt.HConcatChart:
    """Out-of-distribution spread before transfer, after transfer, and its shift.

    Parameters
    ----------
    ood
        :func:`~hrtem_ray.analysis.ood_spread` table (optionally with ``sel_*`` columns).
    study
        Study name, for the axis titles.
    """
    ood = compact_selections(ood)
    order = _order(ood, ["pretrain_domain", "target_domain"])
    x, y = _domain_axes(study, order, "target_domain", "pretrain_domain", "target", "pretraining")
    pretrain_stats = ["std_pretrain", *(f"std_pretrain{s}" for s in CI_SUFFIXES)]
    pretrain_stats = [c for c in pretrain_stats if c in ood.columns]
    per_domain = _base(ood, "ood").transform_aggregate(
        **{c: f"mean({c})" for c in pretrain_stats}, groupby=["pretrain_domain"]
    )
    y_domain = alt.Y("pretrain_domain:O", sort=order, title=axis_title(study, "pretraining"))
    before = per_domain.mark_bar().encode(
        y=y_domain,
        x=alt.X("std_pretrain:Q", title="std of loss across eval domains"),
        tooltip=[
            "pretrain_domain:O",
            *(alt.Tooltip(f"{c}:Q", format=".4g") for c in pretrain_stats),
        ],
    )
    if has_interval(ood, "std_pretrain"):
        bars = error_bars(per_domain, "std_pretrain", "std_pretrain", horizontal=True, y=y_domain)
        before = alt.layer(before, bars)
    before = before.properties(title="after pretraining", width=160, height=alt.Step(CELL))
    after = _heatmap(
        _base(ood, "ood"),
        "std_transfer",
        alt.Scale(scheme=SEQUENTIAL, zero=False),
        x,
        y,
        "std after transfer",
        extra_tooltip=interval_tooltips(ood, "std_transfer"),
    ).properties(title="after transfer", width=alt.Step(CELL), height=alt.Step(CELL))
    shift = _heatmap(
        _base(ood, "ood"),
        "shift",
        alt.Scale(scheme=DIVERGING, reverse=True, domainMid=0),
        x,
        y,
        "shift",
        fmt="+.3f",
        extra_tooltip=interval_tooltips(ood, "shift"),
    ).properties(title="shift (red: spread grew)", width=alt.Step(CELL), height=alt.Step(CELL))
    chart = alt.hconcat(before, after, shift).resolve_scale(color="independent")
    return _finalize(
        chart,
        {"ood": ood},
        "Out-of-distribution spread",
        "population std of the loss across evaluation domains (excluded domains left out); "
        "shift = after transfer - after pretraining; bars: interval where there is one",
    )


SUMMARY_METRICS = {
    "transfer_asymmetry": "mean transfer asymmetry",
    "ood_from_domain": "OOD loss of its models",
    "ood_to_domain": "OOD loss of others on it",
}


def asymmetry_chart(
    asymmetry: pl.DataFrame,
    summary: pl.DataFrame,
    study: str = "defocus",
    domain: str | None = None,
) -> alt.HConcatChart:
    """Transfer asymmetry matrix and the per-domain summary.

    Parameters
    ----------
    asymmetry
        :func:`~hrtem_ray.analysis.transfer_asymmetry` table.
    summary
        :func:`~hrtem_ray.analysis.asymmetry_summary` rows, one per pretraining domain
        (e.g. the ``asymmetry_summary`` selection table).
    study
        Study name, for the axis titles.
    domain
        Domain highlighted in the summary; ``"0"`` (in focus) when present, else the
        first pretraining domain.
    """
    asymmetry = with_significance(compact_selections(asymmetry), "asymmetry")
    summary = compact_selections(summary)
    order = _order(asymmetry, ["pretrain_domain", "target_domain"])
    domains = _order(summary, ["domain"])
    if domain is None:
        domain = "0" if "0" in domains else (domains[0] if domains else "")
    x, y = _domain_axes(study, order, "target_domain", "pretrain_domain", "b", "a")
    matrix = _heatmap(
        _base(asymmetry, "asymmetry"),
        "asymmetry",
        alt.Scale(scheme=DIVERGING, reverse=True, domainMid=0),
        x,
        y,
        "asymmetry",
        fmt="+.3f",
        extra_tooltip=[
            *interval_tooltips(asymmetry, "asymmetry"),
            alt.Tooltip("gap_ab:Q", format=".4g"),
            alt.Tooltip("gap_ba:Q", format=".4g"),
            *(["asymmetry_significant:N"] if "asymmetry_significant" in asymmetry.columns else []),
        ],
    )
    if "asymmetry_significant" in asymmetry.columns:
        outline = (
            _base(asymmetry, "asymmetry")
            .transform_filter("datum.asymmetry_significant")
            .mark_rect(fillOpacity=0, stroke="black", strokeWidth=2.5)
            .encode(x=x, y=y)
            .properties(name="significant_asymmetry")
        )
        matrix = alt.layer(matrix, outline)
    matrix = matrix.properties(
        title="asymmetry(a, b) = gap(a→b) - gap(b→a)", width=alt.Step(CELL), height=alt.Step(CELL)
    )
    highlight = alt.condition(
        f"datum.domain == '{domain}'", alt.value("#d62728"), alt.value("#9e9e9e")
    )
    bars = [
        _summary_bars(summary, metric, label, domains, highlight, study)
        for metric, label in SUMMARY_METRICS.items()
    ]
    chart = alt.hconcat(matrix, *bars).resolve_scale(color="independent")
    return _finalize(
        chart,
        {"asymmetry": asymmetry, "summary": summary},
        "Transfer asymmetry",
        f"gap(a→b) = T(a,b) - P(b,b); negative asymmetry: a transfers to b better than the "
        f"reverse; black outline: interval excludes 0. Red bars: "
        f"{axis_title(study, 'pretraining')} = {domain}; whiskers: interval",
    )


def _summary_bars(
    summary: pl.DataFrame,
    metric: str,
    label: str,
    domains: list[str],
    highlight: alt.Color,
    study: str,
) -> alt.LayerChart | alt.Chart:
    """One bar panel of the asymmetry summary, with error bars where there are intervals."""
    x = alt.X("domain:O", sort=domains, title=axis_title(study, "pretraining"))
    bars = (
        _base(summary, "summary")
        .mark_bar()
        .encode(
            x=x,
            y=alt.Y(f"{metric}:Q", title="loss" if metric != "transfer_asymmetry" else "asymmetry"),
            color=highlight,
            tooltip=[
                "domain:O",
                alt.Tooltip(f"{metric}:Q", format=".4g"),
                *interval_tooltips(summary, metric),
            ],
        )
    )
    if has_interval(summary, metric):
        bars = alt.layer(bars, error_bars(_base(summary, "summary"), metric, metric, x=x))
    return bars.properties(title=label, width=alt.Step(18), height=150)


def _richest_pair(comparison: pl.DataFrame, labels: list[str]) -> str:
    """The pair with the most points at the default selection, preferring source "0"."""
    if not labels:
        return ""
    default = comparison
    for column in selection_columns(comparison):
        default = default.filter(pl.col(column) == SELECTION_DEFAULTS.get(column, ALL))
    counts = dict(default.group_by("pair").len().iter_rows())
    return max(labels, key=lambda p: (counts.get(p, 0), p.startswith("0 → "), -labels.index(p)))


METHODS = alt.Scale(domain=["transfer", "mixture"])
#: The reference study's Figure 7.2 convention: transfer dashed, mixture solid.
TRANSFER_MIXTURE_DASH = alt.Scale(domain=["transfer", "mixture"], range=[[6, 3], [1, 0]])


def _baseline_panel(comparison: pl.DataFrame, column: str, title: str) -> alt.LayerChart:
    """Lines of one loss of the baseline comparison per method, with error bars."""
    base = _base(comparison, "comparison").transform_filter("datum.pair == pair")
    x = alt.X("n_target_images:Q", title="target images in training")
    color = alt.Color("method:N", title="method", scale=METHODS)
    lines = base.mark_line(point=True).encode(
        x=x,
        y=alt.Y(f"{column}:Q", title="excess loss", scale=alt.Scale(zero=False)),
        color=color,
        strokeDash=alt.StrokeDash("method:N", scale=TRANSFER_MIXTURE_DASH),
        tooltip=[
            "method:N",
            "n_target_images:Q",
            alt.Tooltip(f"{column}:Q", format=".4g"),
            *interval_tooltips(comparison, column),
        ],
    )
    layers = [lines]
    if has_interval(comparison, column):
        layers.append(error_bars(base, column, column, x=x, color=color))
    return alt.layer(*layers).properties(title=title, width=260, height=200)


def baseline_chart(
    comparison: pl.DataFrame, study: str = "defocus", default_pair: tuple[str, str] | None = None
) -> alt.HConcatChart:
    """Transfer versus mixture training against the number of target images.

    Parameters
    ----------
    comparison
        :func:`~hrtem_ray.analysis.baseline_comparison` rows with ``source`` and
        ``target`` columns (several pairs: a select widget picks one; only the pairs
        with both methods are kept when there are any). A ``sel_n_transfer`` column is
        reduced to its ``all`` rows: the x axis already is the number of target images.
    study
        Study name.
    default_pair
        Pair shown first; by default the pair with the most points, preferring the
        in-focus source ``"0"``.
    """
    if "sel_n_transfer" in comparison.columns:  # the x axis is the number of target images
        comparison = comparison.filter(pl.col("sel_n_transfer") == ALL).drop("sel_n_transfer")
    comparison = compact_selections(comparison).with_columns(
        pair=pl.concat_str(pl.col("source"), pl.lit(" → "), pl.col("target"))
    )
    methods = comparison.group_by("pair").agg(pl.col("method").n_unique())
    complete = methods.filter(pl.col("method") == 2).get_column("pair")
    if complete.len():  # only the pairs with both methods are worth comparing
        comparison = comparison.filter(pl.col("pair").is_in(complete.to_list()))
    pairs = sort_domains(
        comparison.select("source", "target", "pair").unique(), ["source", "target"]
    )
    labels = pairs.get_column("pair").to_list()
    comparison = comparison.drop("source", "target")  # named by `pair`
    if default_pair is not None:
        default = f"{default_pair[0]} → {default_pair[1]}"
    else:
        default = _richest_pair(comparison, labels)
    pair = alt.param(
        name="pair",
        value=default,
        bind=alt.binding_select(
            options=labels or [""], name=f"{axis_title(study)} pair (source → target) "
        ),
    )
    panels = [
        _baseline_panel(comparison, column, title)
        for column, title in (("loss_on_target", "loss on target"), ("loss_on_source", "loss on source"))
    ]  # fmt: skip
    chart = alt.hconcat(*panels).add_params(pair)
    return _finalize(
        chart,
        {"comparison": comparison},
        "Transfer learning versus training on a mixture",
        "transfer: pretrain on source, then train on n target images; mixture: one stage on "
        "source + target images (0: source only, max: target only); whiskers: interval",
    )


HYPERPARAMETER_TITLES = {
    "n_transfer": "transfer size (images)",
    "freeze": "frozen part",
    "lr": "learning rates (pretrain / transfer)",
}


def _group_labels(table: pl.DataFrame, name: str) -> pl.DataFrame:
    """Add a string ``group`` column naming the grouping of a hyperparameter table."""
    columns = ("pretrain_lr", "transfer_lr") if name == "lr" else (name,)
    labels = []
    for column in columns:
        values = table.get_column(column).unique().drop_nulls().to_list()
        mapping = {v: format_value(v) for v in values}
        labels.append(pl.col(column).replace_strict(mapping, default=None, return_dtype=pl.String))
    return table.with_columns(group=pl.concat_str(labels, separator=" / "))


def hyperparameter_chart(
    tables: Mapping[str, pl.DataFrame], study: str = "defocus"
) -> alt.HConcatChart:
    """Distribution of the transfer models' loss on their own target, per hyperparameter.

    Parameters
    ----------
    tables
        :func:`~hrtem_ray.analysis.hyperparameter_effects` tables keyed by
        ``n_transfer``, ``freeze`` and ``lr`` (grouped by the two learning rates).
    study
        Study axis (``defocus``, ``dose``, ``structure``): names the target domain in
        the chart title (:func:`axis_title`).

    Returns
    -------
    altair.HConcatChart
        Box plots drawn from the quantiles: whiskers 5-95 %, box 25-75 %, median tick,
        mean dot; one panel per hyperparameter, shared y scale.
    """
    panels = []
    frames = {}
    for name, title in HYPERPARAMETER_TITLES.items():
        if name not in tables:
            continue
        frame = _group_labels(compact_selections(tables[name]), name)
        frames[f"hyperparameters_{name}"] = frame
        groups = frame.get_column("group").unique(maintain_order=True).to_list()
        if name == "n_transfer":
            groups = domain_order(groups)
        x = alt.X("group:N", sort=groups, title=title, axis=alt.Axis(labelAngle=0))
        base = _base(frame, f"hyperparameters_{name}").encode(x=x)
        tooltip = ["group:N", "count:Q", *(alt.Tooltip(f"{q}:Q", format=".4g") for q in ("q05", "q25", "q50", "q75", "q95", "mean")), *interval_tooltips(frame, "q50")]  # fmt: skip
        y = alt.Y("q05:Q", title="excess loss on target", scale=alt.Scale(zero=False))
        whisker = base.mark_rule().encode(y=y, y2="q95:Q")
        box = base.mark_bar(size=22, color="#7fa7d6").encode(y="q25:Q", y2="q75:Q", tooltip=tooltip)
        median = base.mark_tick(color="black", size=22, thickness=2).encode(y="q50:Q")
        mean = base.mark_point(color="#d62728", filled=True, size=30).encode(y="mean:Q")
        layers = [whisker, box, median, mean]
        if has_interval(frame, "q50"):
            layers.append(
                error_bars(base, "q50", f"median_{name}").mark_rule(
                    strokeWidth=5, opacity=0.45, color="black"
                )
            )
        panels.append(alt.layer(*layers).properties(width=alt.Step(48), height=200))
    chart = alt.hconcat(*panels).resolve_scale(y="shared")
    return _finalize(
        chart,
        frames,
        "Hyperparameters of the transfer stage",
        f"loss of transfer models on their own target {axis_title(study)}; whiskers 5-95 %, "
        "box 25-75 %, tick median (grey bar: its interval), dot mean",
    )


def _png(pixels: np.ndarray) -> bytes:
    """Encode an 8-bit greyscale array as PNG (no imaging dependency)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape
    raw = np.concatenate([np.zeros((height, 1), np.uint8), pixels], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def image_url(image: np.ndarray, robust: bool = True) -> str:
    """A greyscale ``data:`` PNG URL of a 2-D array.

    Parameters
    ----------
    image
        2-D array.
    robust
        Scale the 1st-99th percentile range to black-white (images); otherwise
        0-1 (masks).
    """
    image = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(image, (1, 99)) if robust else (0.0, 1.0)
    scaled = np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1) * 255
    return "data:image/png;base64," + base64.b64encode(_png(np.round(scaled))).decode()


def examples_chart(
    examples: Mapping[str, tuple[np.ndarray, np.ndarray]], study: str = "defocus"
) -> alt.Chart:
    """Panel of example images (top of each pair) and their masks, one column per domain.

    Parameters
    ----------
    examples
        ``domain -> (images, masks)``, each an ``(n, H, W)`` array.
    study
        Study name, for the column title.
    """
    rows = []
    row_order: list[str] = []
    for domain, (images, masks) in examples.items():
        for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
            for label, url in (
                (f"image {k + 1}", image_url(image)),
                (f"mask {k + 1}", image_url(mask, robust=False)),
            ):
                rows.append({"domain": domain, "row": label, "url": url})
                row_order += [label] if label not in row_order else []
    order = domain_order(examples)
    chart = (
        alt.Chart(alt.Data(values=rows))
        .mark_image(width=PANEL, height=PANEL)
        .encode(
            x=alt.X("domain:O", sort=order, title=axis_title(study), axis=alt.Axis(orient="top", labelAngle=0)),
            y=alt.Y("row:O", sort=row_order, title=None),
            url="url:N",
        )
        .properties(width=alt.Step(PANEL + 8), height=alt.Step(PANEL + 8))
    )  # fmt: skip
    return chart.properties(
        title=alt.Title(
            "Example validation images and masks",
            subtitle="images scaled 1-99 percentile; masks 0 (black) to 1 (white)",
            anchor="start",
        )
    )


# --------------------------------------------------------------------------- #
# the reference study's generalization measure, training time, Figure 7.2, structures
# --------------------------------------------------------------------------- #
GAP_TITLES = {"pretrain": "pretrain models (X: pretraining domain)",
              "transfer": "transfer models (X: transfer domain)"}  # fmt: skip


def generalization_gap_chart(gaps: pl.DataFrame, study: str = "defocus") -> alt.HConcatChart:
    """G_OOD(X -> X') heatmaps of the pretrain and of the transfer models.

    Parameters
    ----------
    gaps
        :func:`~hrtem_ray.analysis.generalization_gap` rows of both phases with a
        ``phase`` column, e.g. the ``generalization_gap`` selection table.
    study
        Study name, for the axis titles.

    Returns
    -------
    altair.HConcatChart
        One heatmap per phase: x the eval domain X', y the training domain X, a
        diverging colour scale centred on 0 (red: worse away from the training
        domain), tooltips with the interval and the number of models.
    """
    order = _order(gaps, ["train_domain", "eval_domain"])
    x, y = _domain_axes(study, order, "eval_domain", "train_domain", "evaluation", "training")
    datasets, panels = {}, []
    for phase, title in GAP_TITLES.items():
        name = f"gap_{phase}"
        datasets[name] = compact_selections(gaps.filter(pl.col("phase") == phase).drop("phase"))
        heat = _heatmap(
            _base(datasets[name], name),
            "gap",
            alt.Scale(scheme=DIVERGING, reverse=True, domainMid=0),
            x,
            y,
            "G_OOD",
            fmt="+.3f",
            extra_tooltip=interval_tooltips(datasets[name], "gap"),
        )
        panels.append(heat.properties(title=title, width=alt.Step(CELL), height=alt.Step(CELL)))
    chart = alt.hconcat(*panels).resolve_scale(color="shared")
    return _finalize(
        chart,
        datasets,
        "Generalization gap G_OOD",
        "G_OOD(f, X→X') = L_X'(f) - L_X(f) per model, reduced over the models trained on X; "
        "red: worse away from the training domain; tooltips: interval and number of models",
    )


def _time_groups(times: pl.DataFrame) -> pl.DataFrame:
    """Add ``group``: phase and training-set size, with the device columns when present."""
    parts = [
        pl.col("phase"),
        pl.lit(" · "),
        pl.col("n_train_images").cast(pl.String),
        pl.lit(" img"),
    ]
    if "train_device" in times.columns:
        parts += [pl.lit(" · "), pl.col("train_device").cast(pl.String).fill_null("?")]
    if "trials_sharing_device" in times.columns:
        sharing = pl.col("trials_sharing_device").cast(pl.String).fill_null("?")
        parts += [pl.lit(" shared by "), sharing]
    return times.with_columns(group=pl.concat_str(parts))


FREEZE_ORDER = ["none", "decoder", "encoder"]


def training_time_chart(times: pl.DataFrame, study: str = "defocus") -> alt.HConcatChart:
    """Seconds per epoch by phase, training-set size and frozen part, and the saving.

    Parameters
    ----------
    times
        :func:`~hrtem_ray.analysis.training_time` table (with or without intervals and
        the device columns; with them, each bar group names the device and how many
        trials shared it, so confounded timings are visible).
    study
        Study name, in the subtitle.

    Returns
    -------
    altair.HConcatChart
        Bars of the time per epoch per group, one bar per frozen part; bars of the
        saving against no freezing (frozen parts only); whiskers: interval.
    """
    times = _time_groups(times)
    order = times.sort("phase", "n_train_images").get_column("group").unique(maintain_order=True)
    x = alt.X("group:N", sort=order.to_list(), title=None, axis=alt.Axis(labelAngle=-30))
    freeze = alt.Color("freeze:N", scale=alt.Scale(domain=FREEZE_ORDER), title="frozen part")
    offset = alt.XOffset("freeze:N", sort=FREEZE_ORDER)
    panels = []
    for column, title, frame in (
        ("seconds_per_epoch", "seconds per epoch", times),
        ("saving", "saving against no freezing", times.filter(pl.col("freeze") != "none")),
    ):
        base = _base(times, "times")
        if column == "saving":
            base = base.transform_filter("datum.freeze != 'none' && isValid(datum.saving)")
        tooltip = ["group:N", "freeze:N", alt.Tooltip(f"{column}:Q", format=".3g"),
                   *interval_tooltips(times, column)]  # fmt: skip
        fmt = ".0%" if column == "saving" else ".3g"
        y = alt.Y(f"{column}:Q", title=title, axis=alt.Axis(format=fmt))
        bars = base.mark_bar().encode(x=x, xOffset=offset, y=y, color=freeze, tooltip=tooltip)
        layers = [bars]
        if has_interval(frame, column) and frame.height:
            layers.append(
                error_bars(base, column, column, x=x, xOffset=offset, color=alt.value("black"))
            )
        panels.append(alt.layer(*layers).properties(title=title, width=alt.Step(22), height=180))
    return _finalize(
        alt.hconcat(*panels),
        {"times": times},
        "Training time",
        f"{study} study: median seconds per epoch of a stage (train_seconds / epochs) per model; "
        "saving = 1 - t / t(no freezing) at the same phase, size and device; whiskers: interval",
    )


FIGURE_7_2_FIRST = ("-10", "5")


def transfer_mixture_chart(
    models: pl.DataFrame,
    study: str = "defocus",
    first: tuple[str, str] = FIGURE_7_2_FIRST,
    columns: int = 4,
) -> alt.FacetChart:
    """The reference study's Figure 7.2: transfer (dashed) against mixture training (solid).

    Parameters
    ----------
    models
        :func:`~hrtem_ray.analysis.transfer_mixture_models` rows: one per model.
    study
        Study name, for the panel labels.
    first
        The pair drawn first when present (the paper's -10 nm → +5 nm panel); the others
        follow in domain order.
    columns
        Panels per row.

    Returns
    -------
    altair.FacetChart
        One small panel per (source, target) pair: x the target-domain images in
        training, y the loss on the target domain; a line through the mean over the
        models at each x (dashed: transfer, solid: mixture) and a point per model.
    """
    models = models.with_columns(
        pair=pl.concat_str(pl.col("source"), pl.lit(" → "), pl.col("target"))
    )
    pairs = sort_domains(models.select("source", "target", "pair").unique(), ["source", "target"])
    first_label = f"{first[0]} → {first[1]}"
    order = pairs.get_column("pair").to_list()
    if first_label in order:
        order = [first_label, *(p for p in order if p != first_label)]
    x = alt.X("n_target_images:Q", title="target-domain images in training")
    y = alt.Y("loss:Q", title="excess loss on target", scale=alt.Scale(zero=False))
    color = alt.Color("method:N", scale=METHODS, title="method")
    mean = (
        alt.Chart()
        .mark_line()
        .encode(
            x=x,
            y=alt.Y("mean(loss):Q", title="excess loss on target", scale=alt.Scale(zero=False)),
            color=color,
            strokeDash=alt.StrokeDash("method:N", scale=TRANSFER_MIXTURE_DASH, title="method"),
            tooltip=[
                "method:N",
                "n_target_images:Q",
                alt.Tooltip("mean(loss):Q", format=".4g", title="mean loss"),
            ],
        )
    )
    points = (
        alt.Chart()
        .mark_point(filled=True, size=28, opacity=0.7)
        .encode(
            x=x,
            y=y,
            color=color,
            shape=alt.Shape("method:N", scale=METHODS),
            tooltip=[
                "method:N",
                "model_id:N",
                "seed:Q",
                "n_target_images:Q",
                alt.Tooltip("loss:Q", format=".4g"),
                "pretrain_lr:Q",
                "transfer_lr:Q",
                "freeze:N",
            ],
        )
        .properties(name="model_points")
    )
    chart = (
        alt.layer(mean, points, data=alt.NamedData(name="figure_7_2"))
        .properties(width=180, height=140)
        .facet(
            facet=alt.Facet("pair:N", sort=order, title=f"{axis_title(study)}: source → target"),
            columns=columns,
        )
        .resolve_scale(y="independent")
    )
    return _finalize(
        chart,
        {"figure_7_2": models},
        "Transfer versus mixture (the reference study's Figure 7.2)",
        "dashed: pretrain on the source, then transfer on n target images; solid: one stage "
        "on a mixture of source and target images; line: mean over models, points: models",
    )


SIZE_ORDER = ["small", "large"]
STRUCTURE_CELL = 18
STRUCTURE_PANEL = 180  # smallest panel side (px): room for the column header


def structure_parts(frame: pl.DataFrame, column: str) -> pl.DataFrame:
    """Split a structure domain label ``<lattice>-<size>`` into two columns.

    Adds ``<column>_lattice`` and ``<column>_size`` (``sweeps/structure_paper.yaml``
    names its domains ``ZnS-small``, ``ZnS-large``...; a label without ``-`` is a
    lattice with an empty size).
    """
    parts = pl.col(column).cast(pl.String).str.extract_groups(r"^(.*?)(?:-([^-]*))?$")
    return frame.with_columns(
        parts.struct.field("1").alias(f"{column}_lattice"),
        parts.struct.field("2").fill_null("").alias(f"{column}_size"),
    )


def _lattice_order(labels: Iterable[str]) -> list[str]:
    """Lattices in the reference study's order (:data:`hrtem_ray.spec.types.LATTICES`), then others."""
    known = list(LATTICES)
    present = set(labels)
    return [*(x for x in known if x in present), *sorted(present - set(known))]


def _size_order(labels: Iterable[str]) -> list[str]:
    present = set(labels)
    return [*(s for s in SIZE_ORDER if s in present), *sorted(present - set(SIZE_ORDER))]


def structure_chart(pairs: pl.DataFrame, study: str = "structure") -> alt.FacetChart:
    """The structure series per lattice and particle size, after pretraining and after transfer.

    Parameters
    ----------
    pairs
        :func:`~hrtem_ray.analysis.pair_matrix` rows of both phases with a ``phase``
        column (the ``pair_matrix`` selection table) of a structure study, whose
        domains are named ``<lattice>-<size>`` (:func:`structure_parts`).
    study
        Study name.

    Returns
    -------
    altair.FacetChart
        Lattice x lattice heatmaps: one row per pretraining particle size, one column
        per phase (after pretraining, after transfer) and target particle size;
        lattices in the reference study's order (ZnS, CdSe, Cu, Ag, C, Si, Fe3O4,
        Co3O4, Fe); one log colour scale.
    """
    pairs = structure_parts(structure_parts(pairs, "pretrain_domain"), "target_domain")
    lattices = _lattice_order([*pairs["pretrain_domain_lattice"], *pairs["target_domain_lattice"]])
    sizes = _size_order([*pairs["pretrain_domain_size"], *pairs["target_domain_size"]])
    # lattice names on the axes; what they are is said by the facet headers
    x = alt.X("target_domain_lattice:O", sort=lattices, title=None)
    y = alt.Y("pretrain_domain_lattice:O", sort=lattices, title=None)
    side = max(STRUCTURE_CELL * len(lattices), STRUCTURE_PANEL)
    phases = {"pretrain": "after pretraining", "transfer": "after transfer"}
    # one facet chart (Altair cannot combine parameters of facets inside a concat)
    panel = pl.concat_str(
        pl.col("phase").cast(pl.String).replace_strict(phases, default=None),
        pl.lit(" · target "),
        pl.col("target_domain_size"),
    )
    frame = compact_selections(pairs.filter(pl.col("phase").is_in(list(phases)))).with_columns(
        panel=panel
    )
    panels = [f"{p} · target {s}" for p in phases.values() for s in sizes]
    base = alt.Chart()
    expr = _selection_filter(frame)
    base = base.transform_filter(expr) if expr else base
    tooltip = ["pretrain_domain:N", "target_domain:N", *interval_tooltips(frame, "loss")]
    heat = loss_heatmap(base, pairs, x, y, fmt=".2f", extra_tooltip=tooltip).properties(
        width=side, height=side
    )
    chart = heat.facet(
        row=alt.Row(
            "pretrain_domain_size:N",
            sort=sizes,
            title="pretraining particles; rows: pretraining lattice",
        ),
        column=alt.Column(
            "panel:N", sort=panels, title="columns: target lattice", header=alt.Header(labelLimit=0)
        ),
        data=alt.NamedData(name="structure"),
    )
    return _finalize(
        chart,
        {"structure": frame},
        "Structure series per lattice and particle size",
        "loss on the target structure (log colour scale), after pretraining and after "
        "transfer; rows: pretraining particle size, columns: phase and target particle size",
    )
