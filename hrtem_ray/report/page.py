"""The report page: one self-contained HTML document, rendered from Jinja2 templates.

The templates ship with the package (``hrtem_ray/report/templates/``), one per page
section:

- ``page.html.j2``: the document (style, the inlined Vega libraries, the notes at the
  top, every study's findings block, then every study, and the page script);
- ``findings.html.j2``: the findings block of a study (banners and the verdicts of
  :func:`hrtem_ray.analysis.findings`);
- ``study.html.j2``: a study, from ``summary.html.j2`` (models per phase),
  ``controls.html.j2`` (the select widgets of its ``sel_*`` parameters, :func:`controls`),
  one ``figure.html.j2`` per chart (:func:`figures`) and the links to its tables;
- ``finding.html.j2``: the macro of one finding (question, answer, reference study);
- ``page.css`` and ``page.js``: the style and the script (inserted as they are).

Autoescaping is on: every value from a table or a spec is escaped. Only the Vega
bundle and the chart specs, made safe for a ``<script>`` element here
(:func:`script_json`), are inserted as they are. A new kind of section is a new
template included by ``page.html.j2`` or ``study.html.j2``; a new chart needs a title
in :data:`TITLES`.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import altair as alt
import jinja2
import polars as pl
import vl_convert as vlc
from markupsafe import Markup

from hrtem_ray import analysis
from hrtem_ray.report.sentences import (
    CI,
    N_BOOT,
    Finding,
    reference_verdict,
)
from hrtem_ray.report.vega import SELECTION_DEFAULTS
from hrtem_ray.spec.names import to_safe_name

CONTROL_LABELS = {
    "reduce": "reduce over models",
    "freeze": "frozen part",
    "n_transfer": "transfer images",
    "pretrain_lr": "pretrain lr",
    "transfer_lr": "transfer lr",
}
CAPTIONS = {
    "examples": "A few validation images of the dataset with their particle masks.",
    "learning_curves": "Train and validation loss per epoch of every phase, from history/.",
    "predictions": "A held-out image per domain, its mask and a representative model's map.",
    "network_vs_threshold": (
        "IoU on each imported domain's scored tiles (its held-out micrographs when it has a "
        "test split) against the labelled tiles of the domain a model trained on: the "
        "classical blur + Otsu threshold next to the networks. The best configuration of "
        "each method is chosen on these same tiles: an upper bound for the networks."
    ),
    "calibration": (
        "Reliability diagrams: of the pixels given a particle probability near p, the share "
        "that are particles. ECE: the pixel-weighted mean distance from the diagonal."
    ),
    "adaptive_rounds": (
        "An adaptive study's rounds: per finding, its interval at each round's level (the "
        "sequential rule spends 1 - level over the rounds) against the models trained so "
        "far, and the edges of the claim's range (dashed). Table adaptive_rounds gives the "
        "trainings each round added for each finding."
    ),
}
TITLES = {
    "pair_matrix": "Loss matrices",
    "ood_spread": "Out-of-distribution spread",
    "asymmetry": "Transfer asymmetry",
    "baseline": "Transfer versus mixture",
    "hyperparameters": "Hyperparameters",
    "examples": "Example images",
    "generalization_gap": "Generalization gap G_OOD",
    "transfer_mixture": "Figure 7.2: transfer versus mixture",
    "training_time": "Training time",
    "structure": "Structure series per lattice and particle size",
    "learning_curves": "Learning curves",
    "predictions": "Predictions next to the truth",
    "network_vs_threshold": "Imported domains: networks versus the threshold",
    "calibration": "Imported domains: calibration",
    "adaptive_rounds": "Adaptive rounds: intervals narrowing",
}
#: A finding's ``data-significant`` attribute, by its ``significant``.
SIGNIFICANCE = {True: "significant", False: "not significant", None: "no interval"}
#: The class of a reference paragraph, by the finding's ``agrees``.
AGREEMENT = {True: "agree", False: "disagree", None: "undecided"}


@dataclass
class StudySection:
    """Charts, tables and control choices of one study of the results table.

    ``key`` is the file-safe name of ``study`` used in file names and element ids
    (:func:`hrtem_ray.spec.names.to_safe_name` unless given).
    """

    study: str
    charts: dict[str, alt.TopLevelMixin]
    tables: dict[str, pl.DataFrame]
    choices: dict[str, list[str]]
    summary: pl.DataFrame
    static_charts: dict[str, alt.TopLevelMixin] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    key: str = ""
    findings: dict[str, list[Finding]] = field(default_factory=dict)
    verdicts: pl.DataFrame | None = None
    banners: list[str] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.key:
            self.key = to_safe_name(self.study)


class Control(NamedTuple):
    """One select widget: its label, the ``sel_*`` parameter it drives, options and default."""

    label: str
    param: str
    options: list[str]
    default: str


class Figure(NamedTuple):
    """One chart block of the page: element key, title, findings, caption and embedded spec."""

    key: str
    title: str
    findings: list[Finding]
    caption: str | None
    spec: Markup


def script_json(value: Any) -> Markup:
    """JSON safe to place inside a ``<script>`` element (no ``</`` in it)."""
    return Markup(json.dumps(value, separators=(",", ":")).replace("</", "<\\/"))


def controls(section: StudySection) -> list[Control]:
    """The select widgets of a section: reduce mode, then each selection dimension it varies."""
    widgets = []
    for dim in ("reduce", *analysis.SELECTION_DIMS):
        options = section.choices.get(dim)
        if options:
            param = f"sel_{dim}"
            default = SELECTION_DEFAULTS.get(param, analysis.ALL)
            widgets.append(Control(CONTROL_LABELS[dim], param, options, default))
    return widgets


def figures(section: StudySection, specs: Mapping[str, Any]) -> list[Figure]:
    """The chart blocks of a section in page order; ``specs``: chart key -> Vega-Lite dict."""
    blocks = []
    for name in section.charts:
        key = f"{section.key}_{name}"
        findings = section.findings.get(name, [])
        blocks.append(
            Figure(key, TITLES[name], findings, CAPTIONS.get(name), script_json(specs[key]))
        )
    return blocks


def static_file(name: str) -> Markup:
    """A file of the templates folder as it is (the page style and script: no template syntax)."""
    source, _, _ = environment().loader.get_source(environment(), name)
    return Markup(source)


def estimate_text(row: Mapping[str, Any]) -> str:
    """A finding's estimate and interval (3 significant digits), ``-`` when not computable."""
    if row["estimate"] is None:
        return "-"
    if row["ci_low"] is None:
        return f"{row['estimate']:.3g}"
    return f"{row['estimate']:.3g} [{row['ci_low']:.3g}, {row['ci_high']:.3g}]"


@functools.cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment of the report templates (autoescaped, undefined names fail)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hrtem_ray.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters |= {
        "significance": SIGNIFICANCE.__getitem__,
        "agreement": AGREEMENT.__getitem__,
        "reference_verdict": reference_verdict,
        "estimate_text": estimate_text,
    }
    env.globals |= {
        "ci_percent": f"{CI:.0%}",
        "n_boot": N_BOOT,
        "controls": controls,
        "figures": figures,
        "static_file": static_file,
    }
    return env


def render_page(
    sections: list[StudySection],
    specs: Mapping[str, Any],
    source: str,
    notes: Sequence[str] = (),
) -> str:
    """The complete HTML document, with the Vega libraries inlined.

    Parameters
    ----------
    sections
        The studies, in page order.
    specs
        Chart key (``<section key>_<chart>``) -> the chart's Vega-Lite dict.
    source
        Where the results came from, as shown on the page.
    notes
        Lines shown at the top of the page (e.g. ``partial: 3 of 13 models``).
    """
    bundle = Markup(vlc.javascript_bundle().replace("</script", "<\\/script"))
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        environment()
        .get_template("page.html.j2")
        .render(
            sections=sections,
            specs=specs,
            source=source,
            notes=list(notes),
            created=created,
            bundle=bundle,
        )
    )
