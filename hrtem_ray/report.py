"""The self-contained HTML report of a results directory.

:func:`write_report` writes into ``out_dir``:

- ``report.html``: one page that opens offline (Vega, Vega-Lite and Vega-Embed are
  inlined); its controls (reduce mode, freezing, transfer size, learning rates)
  re-filter every chart in the browser. The charts embed the long-form tables of
  :func:`hrtem_ray.analysis.selection_tables`, i.e. the analysis results of every
  control combination, so no computation happens in the page;
- ``figures/<study>_<chart>.png`` and ``.svg``: every chart at its default
  selection (median, no filter), rendered with vl-convert;
- ``tables/<study>_<table>.csv``: the tables at the default selection, and
  ``tables/<study>_<table>_all_selections.csv``: the same for every selection (the
  ``sel_*`` columns name it).

``<study>`` is the table's ``study`` value made safe as a file name
(:func:`safe_name`): a table is data, and no value read from it can place a file
outside ``out_dir``. Nothing is created before the input is known to be usable
(:class:`ReportError` otherwise). What a path given to ``hrtem-ray report`` holds
(a study root, a study's ``results/``, or any results table) is decided by
:func:`hrtem_ray.study.locate_results`.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl
import vl_convert as vlc

from hrtem_ray import analysis, plots

log = logging.getLogger(__name__)

CONTROL_LABELS = {
    "reduce": "reduce over models",
    "freeze": "frozen part",
    "n_transfer": "transfer images",
    "pretrain_lr": "pretrain lr",
    "transfer_lr": "transfer lr",
}
EXAMPLE_DOMAINS = 7
EXAMPLE_IMAGES = 2

CAPTIONS = {
    "pair_matrix": "Finding 1: after transfer the loss on the target barely depends on the "
    "pretraining domain; after pretraining alone it depends strongly on it.",
    "ood_spread": "Finding 4: the spread of the loss across evaluation domains can grow or "
    "shrink after transfer, depending on the pair.",
    "asymmetry": "Finding 2: the in-focus domain is the hardest, yet models pretrained on it "
    "generalise and transfer better than the reverse (negative asymmetry, lower OOD loss).",
    "baseline": "Finding 3: transfer with a small target set approaches single-stage training "
    "on a mixture with the same amount of target data.",
    "hyperparameters": "Finding 5: freezing the decoder costs little; freezing the encoder "
    "costs a little accuracy for far fewer trainable parameters.",
    "examples": "A few validation images of the dataset with their particle masks.",
}
TITLES = {
    "pair_matrix": "Loss matrices",
    "ood_spread": "Out-of-distribution spread",
    "asymmetry": "Transfer asymmetry",
    "baseline": "Transfer versus mixture",
    "hyperparameters": "Hyperparameters",
    "examples": "Example images",
}


# Columns a table needs to be reported (the analysis reads them all).
REQUIRED_COLUMNS = ("phase", "pretrain_domain", "transfer_domain", "eval_domain", "loss")


# Longest file-name stem made from a table value (file systems allow 255 bytes in all).
MAX_NAME = 100


class ReportError(ValueError):
    """The report cannot be built from what it was given (nothing was written)."""


def safe_name(value: object) -> str:
    """A file-name-safe version of a table value (a ``study`` label).

    Characters outside ``[A-Za-z0-9._+-]`` become ``_``, runs of dots become ``_``
    (no ``..``), leading dots and dashes are dropped, and the name is cut to
    :data:`MAX_NAME` characters; an empty result is ``_``.

    >>> safe_name("../../x")
    '_x'
    >>> safe_name("defocus")
    'defocus'
    """
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))
    name = re.sub(r"\.{2,}", "_", name)
    name = re.sub(r"_{2,}", "_", name).lstrip(".-")[:MAX_NAME]
    return name or "_"


def unique_safe_names(values: Sequence[object]) -> dict[object, str]:
    """:func:`safe_name` of each value, made distinct with ``-2``, ``-3``... suffixes.

    Names are compared without case, for case-insensitive file systems.
    """
    names: dict[object, str] = {}
    used: set[str] = set()
    for value in values:
        base = candidate = safe_name(value)
        n = 1
        while candidate.lower() in used:
            n += 1
            candidate = f"{base}-{n}"
        used.add(candidate.lower())
        names[value] = candidate
    return names


def output_path(out_dir: Path, *parts: str) -> Path:
    """``out_dir / parts``, refusing any path that would leave ``out_dir``.

    Raises
    ------
    ReportError
        If the resolved path is not inside ``out_dir``.
    """
    root = out_dir.resolve()
    path = root.joinpath(*parts).resolve()
    if path == root or not path.is_relative_to(root):
        raise ReportError(f"refusing to write {path}: outside the report directory {root}")
    return path


@dataclass
class StudySection:
    """Charts, tables and control choices of one study of the results table.

    ``key`` is the file-safe name of ``study`` used in file names and element ids.
    """

    study: str
    charts: dict[str, alt.TopLevelMixin]
    tables: dict[str, pl.DataFrame]
    choices: dict[str, list[str]]
    summary: pl.DataFrame
    static_charts: dict[str, alt.TopLevelMixin] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = safe_name(self.study)


def default_selection(table: pl.DataFrame) -> pl.DataFrame:
    """Rows of a selection table at the default selection (median, no filter), sel_* dropped."""
    mask = pl.lit(True)
    for column in plots.selection_columns(table):
        mask = mask & (pl.col(column) == plots.SELECTION_DEFAULTS.get(column, analysis.ALL))
    return table.filter(mask).drop(plots.selection_columns(table))


def study_charts(tables: Mapping[str, pl.DataFrame], study: str) -> dict[str, alt.TopLevelMixin]:
    """The report's charts of one study from its selection tables."""
    return {
        "pair_matrix": plots.pair_heatmaps(tables["pair_matrix"], study),
        "ood_spread": plots.ood_spread_chart(tables["ood_spread"], study),
        "asymmetry": plots.asymmetry_chart(
            tables["transfer_asymmetry"], tables["asymmetry_summary"], study
        ),
        "baseline": plots.baseline_chart(tables["baseline_comparison"], study),
        "hyperparameters": plots.hyperparameter_chart(
            {
                name.removeprefix("hyperparameters_"): frame
                for name, frame in tables.items()
                if name.startswith("hyperparameters_")
            },
            study,
        ),
    }


def model_summary(results: pl.DataFrame) -> pl.DataFrame:
    """Models, rows and domains per phase."""
    columns = results.columns
    models = pl.col("model_id").n_unique() if "model_id" in columns else pl.len()
    return (
        results.group_by("phase")
        .agg(
            models=models,
            rows=pl.len(),
            pretrain_domains=pl.col("pretrain_domain").n_unique(),
            eval_domains=pl.col("eval_domain").n_unique(),
        )
        .sort("phase")
    )


def example_images(
    data_dir: str | os.PathLike[str], domains: list[str], n: int = EXAMPLE_IMAGES
) -> dict[str, tuple[Any, Any]]:
    """Read ``n`` validation images and masks of up to :data:`EXAMPLE_DOMAINS` domains.

    Domains are spread evenly over ``domains`` (in domain order). Domains the dataset
    cannot provide are skipped; the dataset reader is
    :func:`hrtem_ray.data.read_images`.
    """
    from hrtem_ray.data import read_images

    ordered = analysis.domain_order(domains)
    if len(ordered) > EXAMPLE_DOMAINS:
        step = (len(ordered) - 1) / (EXAMPLE_DOMAINS - 1)
        ordered = [ordered[int(i * step + 0.5)] for i in range(EXAMPLE_DOMAINS)]
    examples = {}
    for domain in ordered:
        try:
            selection = read_images(data_dir, domain, split="val", n=n)
        except Exception as error:  # noqa: BLE001 - a missing domain must not stop the report
            log.warning("example images of domain %s unavailable: %s", domain, error)
            continue
        examples[domain] = (selection.images, selection.masks)
    return examples


def build_section(
    results: pl.DataFrame, study: str, data_dir: str | os.PathLike[str] | None = None
) -> StudySection:
    """Compute the tables and charts of one study."""
    tables, choices = analysis.selection_tables(results)
    charts = study_charts(tables, study)
    static = study_charts({name: default_selection(t) for name, t in tables.items()}, study)
    notes = []
    if data_dir is not None:
        try:
            domains = results.get_column("eval_domain").unique().to_list()
            examples = example_images(data_dir, domains)
        except Exception as error:  # noqa: BLE001 - the report works without the dataset
            examples = {}
            notes.append(f"example images unavailable: {error}")
        if examples:
            charts["examples"] = plots.examples_chart(examples, study)
        elif not notes:
            notes.append(f"no example images found in {data_dir}")
    summary = model_summary(results)
    return StudySection(study, charts, tables, choices, summary, static, notes)


def _script_json(value: Any) -> str:
    """JSON safe to place inside a ``<script>`` element."""
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/")


def _controls_html(section: StudySection) -> str:
    """The select widgets driving the ``sel_*`` parameters of a section's charts."""
    widgets = []
    for dim in ("reduce", *analysis.SELECTION_DIMS):
        options = section.choices.get(dim)
        if not options:
            continue
        param = f"sel_{dim}"
        default = plots.SELECTION_DEFAULTS.get(param, analysis.ALL)
        items = "".join(
            f'<option value="{html.escape(o)}"{" selected" if o == default else ""}>'
            f"{html.escape(o)}</option>"
            for o in options
        )
        widgets.append(
            f'<label>{CONTROL_LABELS[dim]} <select class="control" data-study='
            f'"{html.escape(section.study)}" data-param="{param}" id="{section.key}-{param}">'
            f"{items}</select></label>"
        )
    return f'<div class="controls">{"".join(widgets)}</div>'


def _summary_html(section: StudySection) -> str:
    header = "".join(f"<th>{html.escape(c)}</th>" for c in section.summary.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in section.summary.iter_rows()
    )
    return f'<table class="summary"><tr>{header}</tr>{rows}</table>'


def _section_html(section: StudySection, specs: Mapping[str, str]) -> str:
    """HTML of one study: summary, controls and one figure block per chart."""
    blocks = []
    for name in section.charts:
        key = f"{section.key}_{name}"
        blocks.append(
            f'<section class="figure"><h3>{TITLES[name]}</h3><p>{CAPTIONS[name]}</p>'
            f'<div class="chart" id="chart-{key}" data-study="{html.escape(section.study)}" '
            f'data-spec="spec-{key}"></div>'
            f'<p class="files"><a href="figures/{key}.png">PNG</a> · '
            f'<a href="figures/{key}.svg">SVG</a></p>'
            f'<script type="application/json" id="spec-{key}">{specs[key]}</script></section>'
        )
    tables = " · ".join(
        f'<a href="tables/{section.key}_{name}.csv">{name}</a>' for name in section.tables
    )
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in section.notes)
    return (
        f"<h2>Study: {html.escape(section.study)}</h2>{_summary_html(section)}{notes}"
        f"{_controls_html(section)}{''.join(blocks)}"
        f'<p class="files">Tables (CSV, default selection; <code>*_all_selections.csv</code> '
        f"for every selection): {tables}</p>"
    )


PAGE_SCRIPT = """
const views = {};
function hasSignal(view, name) {
  try { view.signal(name); return true; } catch (error) { return false; }
}
async function embedAll() {
  for (const element of document.querySelectorAll('.chart')) {
    const spec = JSON.parse(document.getElementById(element.dataset.spec).textContent);
    const result = await vegaEmbed(element, spec, {renderer: 'svg', actions: false});
    (views[element.dataset.study] = views[element.dataset.study] || []).push(result.view);
  }
}
for (const select of document.querySelectorAll('select.control')) {
  select.addEventListener('change', async () => {
    document.body.dataset.updating = 'true';
    for (const view of views[select.dataset.study] || []) {
      if (hasSignal(view, select.dataset.param)) {
        view.signal(select.dataset.param, select.value);
        await view.runAsync();
      }
    }
    document.body.dataset.updating = 'false';
  });
}
embedAll().then(
  () => { document.body.dataset.rendered = 'true'; },
  (error) => { document.body.dataset.rendered = 'error'; console.error(error); }
);
"""

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem 2rem; color: #222; }
h1 { margin-bottom: 0.2rem; } .meta { color: #666; margin-top: 0; }
.controls { position: sticky; top: 0; background: #f6f7f9; border: 1px solid #dde;
  padding: 0.5rem 0.8rem; margin: 1rem 0; z-index: 10; display: flex; flex-wrap: wrap; gap: 1.2rem; }
.controls label { font-size: 0.9rem; } .controls select { margin-left: 0.3rem; }
.figure { margin: 1.5rem 0 2.5rem; } .figure p { max-width: 60rem; color: #444; }
.files { font-size: 0.85rem; color: #666; } .note { color: #a33; }
.study-notes { border: 2px solid #a33; background: #fff4f4; padding: 0.4rem 0.8rem; }
.study-notes p { margin: 0.3rem 0; font-weight: 600; color: #a33; }
table.summary { border-collapse: collapse; font-size: 0.9rem; }
table.summary td, table.summary th { border: 1px solid #ccd; padding: 0.2rem 0.6rem; text-align: right; }
"""


def render_page(
    sections: list[StudySection],
    specs: Mapping[str, str],
    source: str,
    notes: Sequence[str] = (),
) -> str:
    """The complete HTML document, with the Vega libraries inlined.

    ``notes`` (e.g. ``partial: 3 of 13 models``) are shown at the top of the page.
    """
    bundle = vlc.javascript_bundle().replace("</script", "<\\/script")
    body = "".join(_section_html(s, specs) for s in sections)
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    top = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    top = f'<div class="study-notes" id="study-notes">{top}</div>' if notes else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>hrtem-ray report</title>"
        f"<style>{PAGE_STYLE}</style><script>{bundle}</script></head><body>"
        f'<h1>hrtem-ray report</h1>{top}<p class="meta">results: {html.escape(source)} · '
        f"generated {created}</p>{body}<script>{PAGE_SCRIPT}</script></body></html>"
    )


def _write_outputs(section: StudySection, out_dir: Path) -> dict[str, str]:
    """Write the PNG/SVG figures and CSV tables of a section; return the chart specs.

    The static figures are drawn from the default selection only (faster to render).
    """
    specs = {}
    for name, chart in section.charts.items():
        key = f"{section.key}_{name}"
        specs[key] = _script_json(plots.chart_spec(chart))
        static = plots.chart_spec(section.static_charts.get(name, chart))
        output_path(out_dir, "figures", f"{key}.svg").write_text(vlc.vegalite_to_svg(static))
        output_path(out_dir, "figures", f"{key}.png").write_bytes(
            vlc.vegalite_to_png(static, scale=2)
        )
    for name, table in section.tables.items():
        stem = f"{section.key}_{name}"
        default_selection(table).write_csv(output_path(out_dir, "tables", f"{stem}.csv"))
        table.write_csv(output_path(out_dir, "tables", f"{stem}_all_selections.csv"))
    return specs


def load_table(results: str | os.PathLike[str] | pl.DataFrame) -> pl.DataFrame:
    """The results table to report, checked to be one (see :func:`write_report`).

    Raises
    ------
    ReportError
        If there are no rows, or the table lacks a column the analysis needs.
    """
    if isinstance(results, pl.DataFrame):
        table = analysis.encode_labels(results)
        where = "the results table"
    else:
        try:
            table = analysis.load_results(results)
        except FileNotFoundError:
            raise ReportError(f"no results yet in {os.fspath(results)}") from None
        where = os.fspath(results)
    if table.is_empty():
        raise ReportError(f"no results yet in {where}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ReportError(
            f"{where} is not a results table (missing columns: {', '.join(missing)}); "
            "give a study directory or its results/ folder"
        )
    return table


def write_report(
    results: str | os.PathLike[str] | pl.DataFrame,
    out_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    notes: Sequence[str] = (),
    source: str | None = None,
) -> Path:
    """Write the HTML report, figures and tables of a results table.

    Nothing is created before the table has been read and checked.

    Parameters
    ----------
    results
        Results table: a directory of Parquet files, a file or a glob (read exactly as
        :func:`hrtem_ray.analysis.load_results` reads it), or a table in memory.
    out_dir
        Output directory (created): ``report.html``, ``figures/``, ``tables/``.
    data_dir
        Optional dataset root; when given, a panel of example validation images
        and masks is added (the report is written without it if it cannot be read).
    notes
        Lines shown at the top of the page (e.g. ``partial: 3 of 13 models``).
    source
        Where the results came from, as shown on the page (default: ``results``).

    Returns
    -------
    pathlib.Path
        Path of ``report.html``.

    Raises
    ------
    ReportError
        No rows, not a results table, or a file name that would leave ``out_dir``.
    """
    table = load_table(results)
    if source is None:
        source = "results table" if isinstance(results, pl.DataFrame) else os.fspath(results)
    if "study" in table.columns:
        studies = analysis.domain_order(table.get_column("study").unique().to_list())
    else:
        studies = ["results"]
        table = table.with_columns(study=pl.lit("results"))
    keys = unique_safe_names(studies)
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    sections, specs = [], {}
    for study in studies:
        rows = table.filter(pl.col("study").cast(pl.String) == str(study))
        section = build_section(rows, str(study), data_dir)
        section.key = keys[study]
        specs.update(_write_outputs(section, out))
        sections.append(section)
    path = output_path(out, "report.html")
    path.write_text(render_page(sections, specs, source, notes), encoding="utf-8")
    return path
