"""The building blocks of the report's Altair figures.

Every chart function of :mod:`hrtem_ray.report.plots`,
:mod:`hrtem_ray.report.reference_plots` and :mod:`hrtem_ray.report.images` takes the
long-form tables of :mod:`hrtem_ray.analysis` and returns an Altair chart with its data
embedded. When a table carries the ``sel_*`` columns of
:func:`hrtem_ray.analysis.selection_tables` (one row per reduce mode and filter
selection), the chart gets one Vega-Lite parameter per column (``sel_reduce``,
``sel_freeze``, ...; default ``median`` / ``all``, :data:`SELECTION_DEFAULTS`) and shows
only the rows of the current selection (:func:`named_chart`, :func:`finalize`): the
report drives these parameters from its controls. Tables of a single selection (the
public analysis functions' output) are plotted as they are.

Intervals: where a table carries the ``<x>_ci_low`` / ``<x>_ci_high`` columns of an
analysis function called with ``ci`` (and ``n_models``), heatmap tooltips show them
(:func:`interval_tooltips`), bars and lines get error bars (:func:`error_bars`: Vega
marks named ``errorbar_*``), and asymmetry cells whose interval excludes 0 are outlined
(marks named ``significant_*``). Tables without intervals are drawn without these layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import altair as alt
import numpy as np
import polars as pl

from hrtem_ray.analysis import ALL, CI_SUFFIXES, domain_order, significant
from hrtem_ray.report.axes import axis_label

SELECTION_DEFAULTS = {"sel_reduce": "median"}
SEQUENTIAL = "viridis"
DIVERGING = "redblue"
CELL = 30
SIGNIFICANT_DIGITS = 5
METHODS = alt.Scale(domain=["transfer", "mixture"])
#: The reference study's Figure 7.2 convention: transfer dashed, mixture solid.
TRANSFER_MIXTURE_DASH = alt.Scale(domain=["transfer", "mixture"], range=[[6, 3], [1, 0]])


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


def default_selection(table: pl.DataFrame) -> pl.DataFrame:
    """Rows of a selection table at the default selection (median, no filter), sel_* dropped."""
    mask = pl.lit(True)
    for column in selection_columns(table):
        mask = mask & (pl.col(column) == SELECTION_DEFAULTS.get(column, ALL))
    return table.filter(mask).drop(selection_columns(table))


def _selection_params(frames: Iterable[pl.DataFrame]) -> list[alt.Parameter]:
    """One Vega-Lite parameter per ``sel_*`` column found in any of ``frames``."""
    names = dict.fromkeys(c for f in frames for c in selection_columns(f))
    return [alt.param(name=n, value=SELECTION_DEFAULTS.get(n, ALL)) for n in names]


def selection_filter(frame: pl.DataFrame) -> str | None:
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


def named_chart(frame: pl.DataFrame, name: str) -> alt.Chart:
    """A chart on the named dataset ``name`` (attached by :func:`finalize`), filtered to
    the current selection.

    The rows travel once, as a top-level ``datasets`` entry: Altair copies inline
    values at every chart operation, which is slow for the report's long-form tables.
    """
    chart = alt.Chart(alt.NamedData(name=name))
    expr = selection_filter(frame)
    return chart.transform_filter(expr) if expr else chart


def finalize(
    chart: alt.TopLevelMixin, datasets: Mapping[str, pl.DataFrame], title: str, subtitle: str
) -> alt.TopLevelMixin:
    """Add the selection parameters, the title and the datasets (last, see :func:`named_chart`)."""
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


def domains_in(frame: pl.DataFrame, columns: Sequence[str]) -> list[str]:
    """The domains found in ``columns`` of ``frame``, in domain order."""
    return domain_order(v for c in columns for v in frame.get_column(c).to_list())


def heatmap(
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


def domain_axes(study: str, order: list[str], x: str, y: str, x_role: str, y_role: str):
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
    return heatmap(
        cells.transform_calculate(loss_shown=f"max(datum.loss, {floor})"),
        "loss_shown",
        alt.Scale(type="log", scheme=SEQUENTIAL, domainMin=floor),
        x,
        y,
        "excess loss (nats above the floor)",
        fmt=fmt,
        legend_values=_log_ticks(floor, top),
        extra_tooltip=[alt.Tooltip("loss:Q", format=".5g"), *extra_tooltip],
    )
