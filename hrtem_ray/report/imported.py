"""The report's panels of imported (real) domains: network versus threshold, and calibration.

For a results table with threshold rows (``phase: threshold``: imported domains with
masks), :func:`imported_section` gives

* the tables ``network_vs_threshold`` (:func:`hrtem_ray.analysis.imported.network_vs_threshold`),
  ``labelled_tiles`` (:func:`~hrtem_ray.analysis.imported.labelled_tiles_curve`) and
  ``calibration`` (:func:`~hrtem_ray.analysis.imported.calibration`);
* the charts ``network_vs_threshold`` (IoU against labelled tiles per method, with the
  replicate intervals, one panel per imported domain) and ``calibration`` (reliability
  diagrams with the ECE);
* per imported domain a banner for the findings block: the plain sentence of the
  comparison (it says so when the network does not beat the threshold).

A table without threshold rows gives nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import altair as alt
import polars as pl

from hrtem_ray.analysis.imported import (
    calibration,
    imported_domains_scored,
    labelled_tiles_curve,
    network_vs_threshold,
)
from hrtem_ray.report.sentences import CI, N_BOOT, Finding
from hrtem_ray.report.vega import error_bars, finalize, named_chart

__all__ = ["ImportedSection", "calibration_chart", "imported_section", "labelled_tiles_chart"]

#: Method colours: the threshold in black, networks in colours.
METHOD_SCALE = alt.Scale(
    domain=["threshold", "transfer", "from scratch", "mixture", "simulated only"],
    range=["#000000", "#1f77b4", "#d62728", "#2ca02c", "#9467bd"],
)


@dataclass
class ImportedSection:
    """What :func:`imported_section` adds to a study's section of the report."""

    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    charts: dict[str, alt.TopLevelMixin] = field(default_factory=dict)
    findings: dict[str, list[Finding]] = field(default_factory=dict)
    banners: list[str] = field(default_factory=list)


def labelled_tiles_chart(curve: pl.DataFrame, study: str) -> alt.TopLevelMixin:
    """IoU on each imported domain's scored tiles against its labelled tiles, per method."""
    base = named_chart(curve, "curve")
    x = alt.X("n_tiles:Q", title="labelled tiles of the domain (training)")
    color = alt.Color("method:N", title="method", scale=METHOD_SCALE)
    lines = base.mark_line(point=True).encode(
        x=x,
        y=alt.Y("iou:Q", title="IoU on the scored tiles", scale=alt.Scale(domain=[0, 1])),
        color=color,
        tooltip=["method:N", "n_tiles:Q", alt.Tooltip("iou:Q", format=".3f"),
                 alt.Tooltip("iou_ci_low:Q", format=".3f"),
                 alt.Tooltip("iou_ci_high:Q", format=".3f"), "n_models:Q",
                 "configuration:N"],
    )  # fmt: skip
    layer = alt.layer(lines, error_bars(base, "iou", "iou", x=x, color=color))
    chart = layer.properties(width=300, height=220).facet(
        column=alt.Column("eval_domain:N", title="imported domain")
    )
    subtitle = (
        f"best configuration per method and tile count (mean of its replicates, {CI:.0%} "
        "bootstrap interval); threshold: blur + Otsu, blur chosen on the labelled tiles"
    )
    return finalize(chart, {"curve": curve}, f"{study}: networks versus threshold", subtitle)


def calibration_chart(bins: pl.DataFrame, study: str) -> alt.TopLevelMixin:
    """Reliability diagrams (particle share against mean predicted probability) per domain."""
    data = bins.filter(pl.col("pixels") > 0).with_columns(
        label=pl.format("{} (ECE {})", pl.col("eval_domain"), pl.col("ece").round(3))
    )
    base = named_chart(data, "bins").encode(
        x=alt.X("confidence:Q", title="mean predicted particle probability",
                scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("frequency:Q", title="share of pixels in the mask", scale=alt.Scale(domain=[0, 1])),
        tooltip=["bin:Q", "pixels:Q", alt.Tooltip("confidence:Q", format=".3f"),
                 alt.Tooltip("frequency:Q", format=".3f"), "configuration:N", "n_models:Q"],
    )  # fmt: skip
    line = base.mark_line()
    points = base.mark_circle(opacity=0.8).encode(
        size=alt.Size("pixels:Q", title="pixels", scale=alt.Scale(range=[20, 400]))
    )
    diagonal = (
        alt.Chart(alt.Data(values=[{"p": 0.0}, {"p": 1.0}]))
        .mark_line(color="grey", strokeDash=[4, 4])
        .encode(x="p:Q", y="p:Q")
    )
    chart = (
        alt.layer(diagonal, line, points, data=alt.NamedData(name="bins"))
        .properties(width=220, height=220)
        .facet(column=alt.Column("label:N", title="imported domain (ECE)"))
    )
    subtitle = (
        "the best network configuration per domain, its replicates pooled; on the diagonal "
        "a model is calibrated"
    )
    return finalize(chart, {"bins": data}, f"{study}: calibration on the scored tiles", subtitle)


def imported_section(results: pl.DataFrame, study: str) -> ImportedSection:
    """Tables, charts, findings and banners of the imported domains (see the module docstring)."""
    out = ImportedSection()
    if not imported_domains_scored(results):
        return out
    versus = network_vs_threshold(results, ci=CI, n_boot=N_BOOT)
    curve = labelled_tiles_curve(results, ci=CI, n_boot=N_BOOT)
    out.tables = {"network_vs_threshold": versus, "labelled_tiles": curve}
    if not curve.is_empty():
        out.charts["network_vs_threshold"] = labelled_tiles_chart(curve, study)
    bins = calibration(results)
    if not bins.is_empty():
        out.tables["calibration"] = bins
        out.charts["calibration"] = calibration_chart(bins, study)
    findings = []
    for row in versus.iter_rows(named=True):
        out.banners.append(row["sentence"])
        findings.append(
            Finding(
                question=f"Does a network beat the blur + Otsu threshold on {row['eval_domain']}?",
                answer=row["sentence"],
                significant={"beats": True, "does not beat": True}.get(row["verdict"], False)
                if row["network_iou_ci_low"] is not None
                else None,
            )
        )
    out.findings = {"network_vs_threshold": findings}
    return out
