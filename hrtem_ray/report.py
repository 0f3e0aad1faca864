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
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
from collections.abc import Mapping
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


@dataclass
class StudySection:
    """Charts, tables and control choices of one study of the results table."""

    study: str
    charts: dict[str, alt.TopLevelMixin]
    tables: dict[str, pl.DataFrame]
    choices: dict[str, list[str]]
    summary: pl.DataFrame
    static_charts: dict[str, alt.TopLevelMixin] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


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
            f'"{html.escape(section.study)}" data-param="{param}" id="{section.study}-{param}">'
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
        key = f"{section.study}_{name}"
        blocks.append(
            f'<section class="figure"><h3>{TITLES[name]}</h3><p>{CAPTIONS[name]}</p>'
            f'<div class="chart" id="chart-{key}" data-study="{html.escape(section.study)}" '
            f'data-spec="spec-{key}"></div>'
            f'<p class="files"><a href="figures/{key}.png">PNG</a> · '
            f'<a href="figures/{key}.svg">SVG</a></p>'
            f'<script type="application/json" id="spec-{key}">{specs[key]}</script></section>'
        )
    tables = " · ".join(
        f'<a href="tables/{section.study}_{name}.csv">{name}</a>' for name in section.tables
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
table.summary { border-collapse: collapse; font-size: 0.9rem; }
table.summary td, table.summary th { border: 1px solid #ccd; padding: 0.2rem 0.6rem; text-align: right; }
"""


def render_page(sections: list[StudySection], specs: Mapping[str, str], source: str) -> str:
    """The complete HTML document, with the Vega libraries inlined."""
    bundle = vlc.javascript_bundle().replace("</script", "<\\/script")
    body = "".join(_section_html(s, specs) for s in sections)
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>hrtem-ray report</title>"
        f"<style>{PAGE_STYLE}</style><script>{bundle}</script></head><body>"
        f'<h1>hrtem-ray report</h1><p class="meta">results: {html.escape(source)} · '
        f"generated {created}</p>{body}<script>{PAGE_SCRIPT}</script></body></html>"
    )


def _write_outputs(section: StudySection, out_dir: Path) -> dict[str, str]:
    """Write the PNG/SVG figures and CSV tables of a section; return the chart specs.

    The static figures are drawn from the default selection only (faster to render).
    """
    specs = {}
    for name, chart in section.charts.items():
        key = f"{section.study}_{name}"
        specs[key] = _script_json(plots.chart_spec(chart))
        static = plots.chart_spec(section.static_charts.get(name, chart))
        (out_dir / "figures" / f"{key}.svg").write_text(vlc.vegalite_to_svg(static))
        (out_dir / "figures" / f"{key}.png").write_bytes(vlc.vegalite_to_png(static, scale=2))
    for name, table in section.tables.items():
        default_selection(table).write_csv(out_dir / "tables" / f"{section.study}_{name}.csv")
        table.write_csv(out_dir / "tables" / f"{section.study}_{name}_all_selections.csv")
    return specs


def write_report(
    results_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the HTML report, figures and tables of a results directory.

    Parameters
    ----------
    results_dir
        Results table: a directory of Parquet files, a file or a glob (see
        :func:`hrtem_ray.analysis.load_results`).
    out_dir
        Output directory (created): ``report.html``, ``figures/``, ``tables/``.
    data_dir
        Optional dataset root; when given, a panel of example validation images
        and masks is added (the report is written without it if it cannot be read).

    Returns
    -------
    pathlib.Path
        Path of ``report.html``.
    """
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    results = analysis.load_results(results_dir)
    if "study" in results.columns:
        studies = analysis.domain_order(results.get_column("study").unique().to_list())
    else:
        studies = ["results"]
        results = results.with_columns(study=pl.lit("results"))
    sections, specs = [], {}
    for study in studies:
        section = build_section(results.filter(pl.col("study") == study), study, data_dir)
        specs.update(_write_outputs(section, out))
        sections.append(section)
    path = out / "report.html"
    path.write_text(render_page(sections, specs, os.fspath(results_dir)), encoding="utf-8")
    return path
