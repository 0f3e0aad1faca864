"""The reference study's own views: G_OOD heatmaps, training time, Figure 7.2 and the structure series.

Charts of :mod:`hrtem_ray.analysis` tables built from the blocks of
:mod:`hrtem_ray.report.vega` (selection parameters, intervals); the training-time and
Figure 7.2 charts show every model (the report's filter controls do not apply to them).
"""

from __future__ import annotations

from collections.abc import Iterable

import altair as alt
import polars as pl

from hrtem_ray.analysis import sort_domains
from hrtem_ray.report.vega import (
    CELL,
    DIVERGING,
    METHODS,
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
    selection_filter,
)
from hrtem_ray.spec.types import LATTICES

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
    order = domains_in(gaps, ["train_domain", "eval_domain"])
    x, y = domain_axes(study, order, "eval_domain", "train_domain", "evaluation", "training")
    datasets, panels = {}, []
    for phase, title in GAP_TITLES.items():
        name = f"gap_{phase}"
        datasets[name] = compact_selections(gaps.filter(pl.col("phase") == phase).drop("phase"))
        heat = heatmap(
            named_chart(datasets[name], name),
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
    return finalize(
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
        base = named_chart(times, "times")
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
    return finalize(
        alt.hconcat(*panels),
        {"times": times},
        "Training time",
        f"{study} study: median seconds per epoch of a stage (its median epoch, or train_seconds / epochs in older tables) per model; "
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
    y = alt.Y(
        "loss:Q", title="excess loss on target (nats above the floor)", scale=alt.Scale(zero=False)
    )
    color = alt.Color("method:N", scale=METHODS, title="method")
    mean = (
        alt.Chart()
        .mark_line()
        .encode(
            x=x,
            y=alt.Y(
                "mean(loss):Q",
                title="excess loss on target (nats above the floor)",
                scale=alt.Scale(zero=False),
            ),
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
    return finalize(
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
    expr = selection_filter(frame)
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
    return finalize(
        chart,
        {"structure": frame},
        "Structure series per lattice and particle size",
        "loss on the target structure (log colour scale), after pretraining and after "
        "transfer; rows: pretraining particle size, columns: phase and target particle size",
    )
