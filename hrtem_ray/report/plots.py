"""The figures of the analysis tables: loss matrices, OOD spread, asymmetry, baseline, hyperparameters.

Each function takes a table of :mod:`hrtem_ray.analysis` (a public function's output or
a selection table with ``sel_*`` columns) and returns an Altair chart with its data
embedded, selection parameters and interval layers as :mod:`hrtem_ray.report.vega`
describes. The reference study's own views are in :mod:`hrtem_ray.report.reference_plots`,
the example images in :mod:`hrtem_ray.report.images`.
"""

from __future__ import annotations

from collections.abc import Mapping

import altair as alt
import polars as pl

from hrtem_ray.analysis import ALL, CI_SUFFIXES, domain_order, format_value, sort_domains
from hrtem_ray.report.vega import (
    CELL,
    DIVERGING,
    METHODS,
    SELECTION_DEFAULTS,
    SEQUENTIAL,
    TRANSFER_MIXTURE_DASH,
    axis_title,
    compact_selections,
    domain_axes,
    domains_in,
    error_bars,
    finalize,
    has_interval,
    heatmap,
    interval_tooltips,
    loss_heatmap,
    named_chart,
    selection_columns,
    with_significance,
)


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
    order = domains_in(pairs, ["pretrain_domain", "target_domain"])
    x, y = domain_axes(study, order, "target_domain", "pretrain_domain", "target", "pretraining")
    titles = {"pretrain": "after pretraining", "transfer": "after transfer"}
    panels = []
    datasets = {
        f"pairs_{phase}": compact_selections(pairs.filter(pl.col("phase") == phase))
        for phase in titles
    }
    for phase, title in titles.items():
        cells = named_chart(datasets[f"pairs_{phase}"], f"pairs_{phase}")

        def heat_tooltips(phase: str = phase) -> list:
            frame = datasets[f"pairs_{phase}"]
            iou = (
                [alt.Tooltip("iou:Q", format=".3f", title="IoU")] if "iou" in frame.columns else []
            )
            return [*interval_tooltips(frame, "loss"), *iou, "from_pretrain:N"]

        heat = loss_heatmap(cells, pairs, x, y, extra_tooltip=heat_tooltips())
        layers = [heat]
        if phase == "transfer":
            # a cell without a transfer model holds the pretrain value in the table: never
            # drawn as a measured result, but blank with a legend entry
            measured = cells.transform_filter("!datum.from_pretrain")
            heat = loss_heatmap(measured, pairs, x, y, extra_tooltip=heat_tooltips(phase))
            blank = (
                cells.transform_filter("datum.from_pretrain")
                .transform_calculate(cell="'no transfer model (left blank)'")
                .mark_rect(fill="#f4f4f4", stroke="#999", strokeWidth=1, strokeDash=[2, 2])
                .encode(
                    x=x,
                    y=y,
                    opacity=alt.Opacity(
                        "cell:N", scale=alt.Scale(range=[1]), legend=alt.Legend(title=None)
                    ),
                )
            )
            layers = [heat, blank]
        panels.append(alt.layer(*layers).properties(title=title, width=alt.Step(CELL), height=alt.Step(CELL)))  # fmt: skip
    chart = alt.hconcat(*panels).resolve_scale(color="shared")
    return finalize(
        chart,
        datasets,
        "Loss on the target domain",
        "excess loss in nats above the floor (0 is perfect), log colour scale; grey dashed "
        "cell: no transfer model (left blank, not a result); tooltips: interval, IoU and "
        "number of models",
    )


#: Vega expression true for an OOD-spread cell measured after transfer (a pair without a
#: transfer model has ``std_transfer`` filled with ``std_pretrain`` by the analysis).
NO_FILLER = "datum.std_transfer !== datum.std_pretrain"


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
    order = domains_in(ood, ["pretrain_domain", "target_domain"])
    x, y = domain_axes(study, order, "target_domain", "pretrain_domain", "target", "pretraining")
    pretrain_stats = ["std_pretrain", *(f"std_pretrain{s}" for s in CI_SUFFIXES)]
    pretrain_stats = [c for c in pretrain_stats if c in ood.columns]
    per_domain = named_chart(ood, "ood").transform_aggregate(
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
    # a pair without a transfer model carries its pretrain spread (shift 0) in the table:
    # left blank here, never drawn as a measured result
    measured = named_chart(ood, "ood").transform_filter(NO_FILLER)
    after = heatmap(
        measured,
        "std_transfer",
        alt.Scale(scheme=SEQUENTIAL, zero=False),
        x,
        y,
        "std after transfer",
        extra_tooltip=interval_tooltips(ood, "std_transfer"),
    ).properties(title="after transfer", width=alt.Step(CELL), height=alt.Step(CELL))
    shift = heatmap(
        measured,
        "shift",
        alt.Scale(scheme=DIVERGING, reverse=True, domainMid=0),
        x,
        y,
        "shift",
        fmt="+.3f",
        extra_tooltip=interval_tooltips(ood, "shift"),
    ).properties(title="shift (red: spread grew)", width=alt.Step(CELL), height=alt.Step(CELL))
    chart = alt.hconcat(before, after, shift).resolve_scale(color="independent")
    return finalize(
        chart,
        {"ood": ood},
        "Out-of-distribution spread",
        "population std of the loss across evaluation domains (excluded domains left out); "
        "shift = after transfer - after pretraining; a blank cell has no transfer model (its "
        "table row repeats the pretrain spread); bars: interval where there is one",
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
    order = domains_in(asymmetry, ["pretrain_domain", "target_domain"])
    domains = domains_in(summary, ["domain"])
    if domain is None:
        domain = "0" if "0" in domains else (domains[0] if domains else "")
    x, y = domain_axes(study, order, "target_domain", "pretrain_domain", "b", "a")
    matrix = heatmap(
        named_chart(asymmetry, "asymmetry"),
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
            named_chart(asymmetry, "asymmetry")
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
    return finalize(
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
        named_chart(summary, "summary")
        .mark_bar()
        .encode(
            x=x,
            y=alt.Y(
                f"{metric}:Q",
                title="excess loss (nats)"
                if metric != "transfer_asymmetry"
                else "asymmetry (nats)",
            ),
            color=highlight,
            tooltip=[
                "domain:O",
                alt.Tooltip(f"{metric}:Q", format=".4g"),
                *interval_tooltips(summary, metric),
            ],
        )
    )
    if has_interval(summary, metric):
        bars = alt.layer(bars, error_bars(named_chart(summary, "summary"), metric, metric, x=x))
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


def _baseline_panel(comparison: pl.DataFrame, column: str, title: str) -> alt.LayerChart:
    """Lines of one loss of the baseline comparison per method, with error bars."""
    base = named_chart(comparison, "comparison").transform_filter("datum.pair == pair")
    x = alt.X("n_target_images:Q", title="target images in training")
    color = alt.Color("method:N", title="method", scale=METHODS)
    lines = base.mark_line(point=True).encode(
        x=x,
        y=alt.Y(
            f"{column}:Q", title="excess loss (nats above the floor)", scale=alt.Scale(zero=False)
        ),
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
    return finalize(
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
        base = named_chart(frame, f"hyperparameters_{name}").encode(x=x)
        tooltip = ["group:N", "count:Q", *(alt.Tooltip(f"{q}:Q", format=".4g") for q in ("q05", "q25", "q50", "q75", "q95", "mean")), *interval_tooltips(frame, "q50")]  # fmt: skip
        y = alt.Y(
            "q05:Q",
            title="excess loss on target (nats above the floor)",
            scale=alt.Scale(zero=False),
        )
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
    return finalize(
        chart,
        frames,
        "Hyperparameters of the transfer stage",
        f"loss of transfer models on their own target {axis_title(study)}; whiskers 5-95 %, "
        "box 25-75 %, tick median (grey bar: its interval), dot mean",
    )
