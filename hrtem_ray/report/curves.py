"""The learning-curve panel: train and validation loss per epoch, per phase, from ``history/``.

A study writes one Parquet file per model into ``<study root>/history/`` (columns
``model_id``, ``epoch``, ``train_loss``, ``val_loss``, ``best_epoch``, ...: the excess
losses of :func:`hrtem_ray.learning.train.train_stage`). :func:`read_histories` reads
those of the models of a results table, :func:`curve_table` takes the median (and the
25th-75th percentile band) over the models of each phase per epoch, :func:`kept_epochs`
the epoch each model kept (its ``best_epoch``) and :func:`learning_curves_chart` draws
both, one panel per phase.

The report layer reads the files itself (:mod:`hrtem_ray.store.storage`, local or
remote), so that it does not depend on the sweep.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Sequence

import altair as alt
import polars as pl
import pyarrow as pa

from hrtem_ray.spec.types import PHASES
from hrtem_ray.store import storage
from hrtem_ray.store.layout import CHECKPOINT_DIR, HISTORY_DIR, RESULTS_DIR, STUDY_FILE

log = logging.getLogger(__name__)

#: The unit of every loss the study reports (excess losses: 0 is perfect).
LOSS_UNIT = "excess cross-entropy (nats above the floor)"
#: Columns a history file must have to be drawn.
HISTORY_COLUMNS = ("model_id", "epoch", "train_loss", "val_loss")
#: The curves, by history column.
CURVES = {"train_loss": "train", "val_loss": "validation"}
#: Percentiles of the band around the median curve.
BAND = (0.25, 0.75)
PANEL_WIDTH = 220
PANEL_HEIGHT = 180


def study_root_of(path: str | os.PathLike[str] | None) -> str | None:
    """The study root behind a results location, or ``None`` when it is not a study's.

    ``path`` is a study root itself (it holds ``results/`` and ``history/``,
    ``checkpoints/`` or ``study.json``) or a study's ``results/`` folder (its parent
    is then the root). Anything else (a loose Parquet file, a glob, ``None``) gives
    ``None``.
    """
    if path is None:
        return None
    raw = os.fspath(path).rstrip("/")
    if any(c in raw for c in "*?[") and "://" not in raw:
        return None
    markers = (HISTORY_DIR, CHECKPOINT_DIR, STUDY_FILE)
    candidates = [raw]
    if posixpath.basename(raw) == RESULTS_DIR:
        candidates.append(raw.rsplit("/", 1)[0] if "/" in raw else ".")
    for root in candidates:
        try:
            if storage.exists(storage.join(root, RESULTS_DIR)) and any(
                storage.exists(storage.join(root, m)) for m in markers
            ):
                return root
        except (OSError, ValueError):  # an unreachable location: not a study
            return None
    return None


def _history_problem(uri: str, table: pa.Table) -> str | None:
    """Why a history file's table cannot be drawn (a missing column or no rows), or None."""
    missing = [c for c in HISTORY_COLUMNS if c not in table.column_names]
    if missing:
        return f"history file lacks columns {missing}"
    if table.num_rows == 0:
        return "history file has no epochs"
    return None


def read_histories(
    study_root: str | os.PathLike[str], model_ids: Sequence[str]
) -> tuple[pl.DataFrame, list[str]]:
    """The per-epoch histories of ``model_ids`` under ``study_root/history/``, and notes.

    Parameters
    ----------
    study_root
        Study root (local path or URI).
    model_ids
        The models to read (those of the results table being reported).

    Returns
    -------
    (polars.DataFrame, list of str)
        Columns ``model_id``, ``epoch``, ``train_loss``, ``val_loss``, ``best_epoch``
        (the history's own, or the epoch of least ``val_loss`` where it has none); and
        one note per model without a history file and per damaged file (which is left
        out, with a logged warning). No history folder gives an empty frame.
    """
    folder = storage.join(study_root, HISTORY_DIR)
    try:
        present = set(storage.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return pl.DataFrame(), [f"no learning curves: {folder} does not exist"]
    wanted = sorted(set(map(str, model_ids)))
    uris = [storage.join(folder, f"{m}.parquet") for m in wanted if f"{m}.parquet" in present]
    notes = []
    absent = len(wanted) - len(uris)
    if absent:
        notes.append(f"learning curves: {absent} of {len(wanted)} models have no history file")

    def damaged(uri: str, reason: str) -> None:
        log.warning("learning curves: %s left out: %s", uri, reason)
        notes.append(f"learning curves: {uri} left out ({reason})")

    columns = [*HISTORY_COLUMNS, "best_epoch"]
    table = storage.read_parquet_files(uris, check=_history_problem, on_damaged=damaged)
    if table.num_rows == 0:
        return pl.DataFrame(), notes
    history = pl.from_arrow(table.select([c for c in columns if c in table.column_names]))
    if "best_epoch" not in history.columns:
        history = history.with_columns(best_epoch=pl.lit(None, pl.Int64))
    least = pl.col("epoch").sort_by("val_loss").first().over("model_id")
    history = history.with_columns(
        pl.col("model_id").cast(pl.String),
        pl.col("epoch").cast(pl.Int64),
        pl.col("train_loss", "val_loss").cast(pl.Float64),
        best_epoch=pl.col("best_epoch").cast(pl.Int64).fill_null(least),
    )
    return history.select(columns).sort("model_id", "epoch"), notes


def model_phases(results: pl.DataFrame) -> pl.DataFrame:
    """``model_id -> phase`` of a results table (one row per model)."""
    return results.select(
        pl.col("model_id").cast(pl.String), pl.col("phase").cast(pl.String)
    ).unique("model_id", keep="first")


def phase_order(phases: Sequence[str]) -> list[str]:
    """``phases`` in protocol order (pretrain, transfer, baseline), others after."""
    known = [p for p in PHASES if p in phases]
    return known + sorted(set(phases) - set(known))


def curve_table(history: pl.DataFrame, phases: pl.DataFrame) -> pl.DataFrame:
    """Median and band of train and validation loss over the models of each phase per epoch.

    Parameters
    ----------
    history
        From :func:`read_histories`.
    phases
        ``model_id``, ``phase`` (:func:`model_phases`).

    Returns
    -------
    polars.DataFrame
        One row per phase, epoch and curve (``train``, ``validation``): ``loss`` (the
        median over the models that trained that epoch), ``loss_low``, ``loss_high``
        (the :data:`BAND` percentiles) and ``n_models``.
    """
    long = (
        history.join(phases, on="model_id", how="inner")
        .unpivot(
            index=["phase", "model_id", "epoch"],
            on=list(CURVES),
            variable_name="curve",
            value_name="value",
        )
        .with_columns(pl.col("curve").replace_strict(CURVES))
        .drop_nulls("value")
    )
    value = pl.col("value")
    return (
        long.group_by("phase", "curve", "epoch")
        .agg(
            loss=value.median(),
            loss_low=value.quantile(BAND[0], interpolation="linear"),
            loss_high=value.quantile(BAND[1], interpolation="linear"),
            n_models=pl.col("model_id").n_unique().cast(pl.Int64),
        )
        .sort("phase", "curve", "epoch")
    )


def kept_epochs(history: pl.DataFrame, phases: pl.DataFrame) -> pl.DataFrame:
    """The epoch each model kept (``best_epoch``) and its validation loss there.

    Returns
    -------
    polars.DataFrame
        One row per model: ``phase``, ``model_id``, ``best_epoch``, ``val_loss`` (null
        when the history has no row of that epoch).
    """
    kept = history.filter(pl.col("epoch") == pl.col("best_epoch")).select("model_id", "val_loss")
    return (
        history.select("model_id", "best_epoch")
        .unique("model_id")
        .join(phases, on="model_id", how="inner")
        .join(kept.unique("model_id"), on="model_id", how="left")
        .select("phase", "model_id", "best_epoch", "val_loss")
        .sort("phase", "model_id")
    )


def learning_curves_chart(curves: pl.DataFrame, kept: pl.DataFrame) -> alt.FacetChart:
    """Median learning curves with their band, one panel per phase, kept epochs marked.

    Parameters
    ----------
    curves
        From :func:`curve_table`.
    kept
        From :func:`kept_epochs`: a point per model at its kept epoch and validation
        loss, and a rule at the median kept epoch of the phase.
    """
    rows = [{"layer": "curve", **r} for r in curves.iter_rows(named=True)]
    rows += [{"layer": "kept", **r} for r in kept.iter_rows(named=True)]
    medians = kept.group_by("phase").agg(median_best_epoch=pl.col("best_epoch").median())
    rows += [{"layer": "median_kept", **r} for r in medians.iter_rows(named=True)]
    base = alt.Chart()
    epoch = alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1))
    loss = alt.Y("loss:Q", title=LOSS_UNIT, scale=alt.Scale(zero=False))
    color = alt.Color(
        "curve:N", scale=alt.Scale(domain=list(CURVES.values())), title="loss", legend=alt.Legend()
    )
    curve = base.transform_filter("datum.layer == 'curve'")
    band = curve.mark_area(opacity=0.2).encode(
        x=epoch, y=alt.Y("loss_low:Q", title=LOSS_UNIT), y2="loss_high:Q", color=color
    )
    tooltip = ["curve:N", "epoch:Q", alt.Tooltip("loss:Q", format=".4g", title="median")]
    tooltip += [alt.Tooltip(f"{c}:Q", format=".4g") for c in ("loss_low", "loss_high")]
    line = curve.mark_line(point=True).encode(
        x=epoch, y=loss, color=color, tooltip=[*tooltip, "n_models:Q"]
    )
    points = (
        base.transform_filter("datum.layer == 'kept'")
        .mark_point(shape="diamond", filled=True, size=50, color="black")
        .encode(
            x=alt.X("best_epoch:Q", title="epoch"),
            y=alt.Y("val_loss:Q", title=LOSS_UNIT),
            tooltip=["model_id:N", "best_epoch:Q", alt.Tooltip("val_loss:Q", format=".4g")],
        )
    )
    rule = (
        base.transform_filter("datum.layer == 'median_kept'")
        .mark_rule(strokeDash=[4, 3], color="grey")
        .encode(x="median_best_epoch:Q", tooltip=["median_best_epoch:Q"])
    )
    order = phase_order(sorted(set(curves.get_column("phase"))))
    chart = (
        alt.layer(band, line, points, rule, data=alt.Data(values=rows))
        .properties(width=PANEL_WIDTH, height=PANEL_HEIGHT)
        .facet(column=alt.Column("phase:N", sort=order, title=None))
        .resolve_scale(x="independent")
    )
    return chart.properties(
        title=alt.Title(
            "Learning curves",
            subtitle=(
                f"median over the models of each phase per epoch, band: "
                f"{BAND[0]:.0%}-{BAND[1]:.0%} of models; diamonds: each model's kept "
                "(best validation) epoch, dashed rule: their median"
            ),
            anchor="start",
        )
    )


def learning_curves(
    study_root: str | os.PathLike[str], results: pl.DataFrame
) -> tuple[alt.FacetChart | None, list[str]]:
    """The learning-curve chart of the models of ``results``, and notes on what is missing.

    ``None`` (with a note) when no model has a usable history or ``results`` has no
    ``model_id``.
    """
    if "model_id" not in results.columns:
        return None, ["no learning curves: the results table has no model_id"]
    phases = model_phases(results)
    history, notes = read_histories(study_root, phases.get_column("model_id").to_list())
    if history.is_empty():
        return None, notes or ["no learning curves: no history files"]
    return learning_curves_chart(curve_table(history, phases), kept_epochs(history, phases)), notes
