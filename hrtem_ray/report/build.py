"""The self-contained HTML report of a results directory.

:func:`write_report` writes into ``out_dir``:

- ``report.html``: one page that opens offline (Vega, Vega-Lite and Vega-Embed are
  inlined); its controls (reduce mode, freezing, transfer size, learning rates)
  re-filter every chart in the browser. The charts embed the long-form tables of
  :func:`hrtem_ray.analysis.selection_tables`, i.e. the analysis results of every
  control combination with their :data:`~hrtem_ray.report.sentences.CI` bootstrap
  intervals over models (:data:`~hrtem_ray.report.sentences.N_BOOT` replicates) and
  ``n_models``, so no computation happens in the page. Heatmap tooltips show the
  intervals, bars and lines draw them as error bars, and asymmetry cells whose interval
  excludes 0 are outlined;
- at the top, a findings block per study (:mod:`hrtem_ray.report.sentences`): the
  hardest evaluation domain, the domain with the best out-of-distribution loss, the
  largest transfer asymmetry and transfer versus mixture at equal target data, as
  sentences generated from the tables at the default
  selection, each with its interval and whether it is significant. Each chart section
  opens with the question it answers and the generated answer; for a defocus study,
  the reference study's finding on that question follows, with whether this study's
  data agree, disagree or cannot decide;
- the reference study's own views (:func:`study_charts`): G_OOD heatmaps, training time
  and the saving of freezing, Figure 7.2 (transfer versus mixture per pair, each model
  a point) and, for a structure study, the loss matrices per lattice and particle size;
  the training-time and Figure 7.2 panels show every model (the controls do not apply);
- ``figures/<study>_<chart>.png`` and ``.svg``: every chart at its default
  selection (median, no filter), rendered with vl-convert;
- ``tables/<study>_<table>.csv``: the tables at the default selection, and
  ``tables/<study>_<table>_all_selections.csv``: the same for every selection (the
  ``sel_*`` columns name it).

``<study>`` is the table's ``study`` value made safe as a file name
(:func:`unique_safe_names`): a table is data, and no value read from it can place a
file outside ``out_dir``. Nothing is created before the input is known to be usable
(:class:`ReportError` otherwise). What a path given to ``hrtem-ray report`` holds
(a study root, a study's ``results/``, or any results table) is decided by
:func:`hrtem_ray.study.locate_results`.

The page itself is rendered from templates by :mod:`hrtem_ray.report.page`; the charts
come from :mod:`hrtem_ray.report.plots`, :mod:`hrtem_ray.report.reference_plots` and
:mod:`hrtem_ray.report.images`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import altair as alt
import polars as pl
import vl_convert as vlc

from hrtem_ray import analysis
from hrtem_ray.report import images, plots, predictions, reference_plots, rounds
from hrtem_ray.report.curves import study_root_of
from hrtem_ray.report.imported import imported_section
from hrtem_ray.report.page import StudySection, render_page
from hrtem_ray.report.sentences import (
    CI,
    N_BOOT,
    attach_verdicts,
    converged_text,
    protocol_banners,
    study_findings,
)
from hrtem_ray.report.vega import chart_spec, default_selection
from hrtem_ray.spec.names import SAFE_NAME_MAX_LENGTH, to_safe_name

log = logging.getLogger(__name__)

EXAMPLE_DOMAINS = 7
EXAMPLE_IMAGES = 2


# Columns a table needs to be reported (the analysis reads them all).
REQUIRED_COLUMNS = ("phase", "pretrain_domain", "transfer_domain", "eval_domain", "loss")


class ReportError(ValueError):
    """The report cannot be built from what it was given (nothing was written)."""


def unique_safe_names(values: Sequence[object]) -> dict[object, str]:
    """A file-name stem for each value: its :func:`~hrtem_ray.spec.names.to_safe_name`,
    made distinct with ``-2``, ``-3``... suffixes (within the safe-name length).

    Names are compared without case, for case-insensitive file systems.

    >>> unique_safe_names(["a/b", "a_b", "../../x"])
    {'a/b': 'a_b', 'a_b': 'a_b-2', '../../x': 'x'}
    """
    names: dict[object, str] = {}
    used: set[str] = set()
    for value in values:
        base = candidate = to_safe_name(value)
        n = 1
        while candidate.lower() in used:
            n += 1
            suffix = f"-{n}"
            candidate = base[: SAFE_NAME_MAX_LENGTH - len(suffix)] + suffix
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


def study_charts(tables: Mapping[str, pl.DataFrame], study: str) -> dict[str, alt.TopLevelMixin]:
    """The report's charts of one study from its tables, in page order.

    ``tables`` are the selection tables of :func:`hrtem_ray.analysis.selection_tables`
    plus, when :func:`study_tables` could compute them, ``training_time`` and
    ``transfer_mixture`` (Figure 7.2; drawn when some pair has both arms). A
    ``structure`` study also gets its figure per lattice and particle size.
    """
    charts = {"pair_matrix": plots.pair_heatmaps(tables["pair_matrix"], study)}
    if study == "structure":
        charts["structure"] = reference_plots.structure_chart(tables["pair_matrix"], study)
    charts |= {
        "ood_spread": plots.ood_spread_chart(tables["ood_spread"], study),
        "asymmetry": plots.asymmetry_chart(
            tables["transfer_asymmetry"], tables["asymmetry_summary"], study
        ),
        "generalization_gap": reference_plots.generalization_gap_chart(
            tables["generalization_gap"], study
        ),
        "baseline": plots.baseline_chart(tables["baseline_comparison"], study),
    }
    if not tables.get("transfer_mixture", pl.DataFrame()).is_empty():
        charts["transfer_mixture"] = reference_plots.transfer_mixture_chart(
            tables["transfer_mixture"], study
        )
    charts["hyperparameters"] = plots.hyperparameter_chart(
        {
            name.removeprefix("hyperparameters_"): frame
            for name, frame in tables.items()
            if name.startswith("hyperparameters_")
        },
        study,
    )
    if "training_time" in tables:
        charts["training_time"] = reference_plots.training_time_chart(
            tables["training_time"], study
        )
    return charts


def study_tables(results: pl.DataFrame) -> tuple[dict[str, pl.DataFrame], list[str]]:
    """The tables the report adds to the selection tables, and notes on those it cannot make.

    ``training_time`` (:func:`hrtem_ray.analysis.training_time`, with :data:`CI`
    intervals) and ``transfer_mixture`` (the per-model points of Figure 7.2,
    :func:`hrtem_ray.analysis.transfer_mixture_models`). Both show every model of the
    table: the report's filter controls do not apply to them.
    """
    tables, notes = {}, []
    try:
        tables["training_time"] = analysis.training_time(results, ci=CI, n_boot=N_BOOT)
    except ValueError as error:  # e.g. a table without train_seconds: the rest still reports
        notes.append(f"training time not analysed: {error}")
    tables["transfer_mixture"] = analysis.transfer_mixture_models(results)
    if tables["transfer_mixture"].is_empty():
        notes.append(
            "Figure 7.2 (transfer versus mixture) not drawn: no pair has both transfer models "
            "and mixture baselines with the pair's source and target"
        )
    return tables, notes


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
    :func:`hrtem_ray.dataset.readers.read_images`.
    """
    from hrtem_ray.dataset.readers import read_images

    ordered = analysis.domain_order(domains)
    if len(ordered) > EXAMPLE_DOMAINS:
        step = (len(ordered) - 1) / (EXAMPLE_DOMAINS - 1)
        ordered = [ordered[int(i * step + 0.5)] for i in range(EXAMPLE_DOMAINS)]
    examples = {}
    for domain in ordered:
        try:
            selection = read_images(data_dir, domain, split="val", n=n)
        except Exception as error:  # a missing domain must not stop the report
            log.warning("example images of domain %s unavailable: %s", domain, error)
            continue
        examples[domain] = (selection.images, selection.masks)
    return examples


def imported_domains_note(data_dir: str | os.PathLike[str], domains: Sequence[str]) -> str | None:
    """The report's mark of imported domains: which of ``domains`` are micrographs brought
    in by ``hrtem-ray import`` (their manifest entries say so), not simulated; ``None``
    when there are none."""
    from hrtem_ray.dataset.manifest import manifest_entries

    imported = {
        str(entry["imported"]["domain"])
        for entry in manifest_entries(data_dir).values()
        if isinstance(entry.get("imported"), dict)
    }
    marked = [d for d in domains if d in imported]
    if not marked:
        return None
    return f"imported domains (micrographs, not simulated): {', '.join(marked)}"


def study_facts(
    results: pl.DataFrame, data_dir: str | os.PathLike[str] | None = None
) -> list[tuple[str, str]]:
    """What the study ran, for the spec summary: images per split, training, seeds, imaging.

    From the results table (epochs, early stopping, seeds, splits scored, convergence,
    loss) and, when ``data_dir`` is given, the dataset's spec (images per split, dose,
    defocus list, Cs, focal spread); a part that cannot be read is left out.
    """
    facts = []
    if data_dir is not None:
        try:
            from hrtem_ray.dataset.manifest import dataset_spec

            spec = dataset_spec(data_dir)
            counts = spec.n_structures
            facts.append(
                ("images per domain", f"train {counts.train}, val {counts.val}, test {counts.test}")
            )
            values = (
                ", ".join(f"{v:g}" for v in spec.defocus_nm)
                if isinstance(spec.defocus_nm, list)
                else f"{spec.defocus_nm:g}"
            )
            facts.append(("defocus (nm)", values))
            dose = spec.dose_e_per_angstrom2
            facts.append(("dose (e/Å²)", "noiseless" if dose is None else str(dose)))
            facts.append(("Cs (mm)", str(spec.cs_mm)))
            facts.append(("focal spread (Å)", str(spec.simulation.focal_spread_angstrom)))
            facts.append(("pixel size (Å)", str(spec.simulation.output_sampling_angstrom)))
        except Exception as error:  # the report works without the dataset
            log.warning("dataset spec unavailable for the summary: %s", error)
    columns = results.columns
    if "patience" in columns and results.get_column("patience").is_not_null().any():
        row = results.row(0, named=True)
        facts.append(
            (
                "training",
                f"early stopping: patience {row['patience']}, min_delta {row.get('min_delta')}, "
                f"at most {row.get('max_epochs')} epochs; epochs trained "
                f"{results.get_column('epochs').min()}-{results.get_column('epochs').max()}",
            )
        )
    else:
        facts.append(("training", f"fixed epochs: {sorted(set(results.get_column('epochs')))}"))
    facts.append(("converged", converged_text(results)))
    in_domain = results.filter(
        (pl.col("phase") == "pretrain")
        & (pl.col("eval_domain").cast(pl.String) == pl.col("pretrain_domain").cast(pl.String))
    )
    if not in_domain.is_empty():
        iou = in_domain.group_by(pl.col("eval_domain").cast(pl.String)).agg(pl.col("iou").median())
        order = analysis.domain_order(iou.get_column("eval_domain").to_list())
        values = dict(iou.iter_rows())
        facts.append(
            (
                "median IoU in domain (pretrained models)",
                ", ".join(f"{d}: {values[d]:.2f}" for d in order),
            )
        )
    seeds = results.group_by("phase").agg(pl.col("seed").n_unique()).sort("phase")
    facts.append(("seeds", ", ".join(f"{p} {n}" for p, n in seeds.iter_rows())))
    if "eval_split" in columns:
        splits = sorted(set(results.get_column("eval_split").cast(pl.String).fill_null("val")))
        facts.append(("scored on", ", ".join(splits)))
    loss = "cross_entropy"
    if "loss_function" in columns:
        loss = ", ".join(
            sorted(
                set(results.get_column("loss_function").cast(pl.String).fill_null("cross_entropy"))
            )
        )
    facts.append(("loss", f"{loss}; reported as excess loss: nats above its floor (0 is perfect)"))
    return facts


def build_section(
    results: pl.DataFrame,
    study: str,
    data_dir: str | os.PathLike[str] | None = None,
    study_root: str | os.PathLike[str] | None = None,
) -> StudySection:
    """Compute the tables, charts and findings of one study (intervals: :data:`CI`).

    With ``study_root``, its learning curves and prediction panel are added
    (:func:`hrtem_ray.report.predictions.study_panels`; notes on what is missing).
    """
    tables, choices = analysis.selection_tables(results, ci=CI, n_boot=N_BOOT)
    extra, notes = study_tables(results)
    tables |= extra
    charts = study_charts(tables, study)
    static = study_charts({name: default_selection(t) for name, t in tables.items()}, study)
    if data_dir is not None:
        try:
            domains = results.get_column("eval_domain").unique().to_list()
            examples = example_images(data_dir, domains)
        except Exception as error:  # the report works without the dataset
            examples = {}
            notes.append(f"example images unavailable: {error}")
        if examples:
            charts["examples"] = images.examples_chart(examples, study)
        elif not notes:
            notes.append(f"no example images found in {data_dir}")
        shown = [results.get_column(c).cast(pl.String) for c in analysis.DOMAIN_COLUMNS]
        note = imported_domains_note(data_dir, analysis.domain_order(pl.concat(shown)))
        if note is not None:
            notes.insert(0, note)
    if study_root is not None:
        panels, panel_notes = predictions.study_panels(study_root, results, data_dir, study)
        charts |= panels
        notes += panel_notes
        records = rounds.read_rounds(study_root)
        if records:  # an adaptive study: its intervals narrowing round by round
            tables["adaptive_rounds"] = rounds.rounds_table(records)
            charts["adaptive_rounds"] = rounds.rounds_chart(tables["adaptive_rounds"], study)
    real = imported_section(results, study)  # networks vs threshold, calibration
    tables |= real.tables
    charts |= real.charts
    static |= real.charts
    summary = model_summary(results)
    section = StudySection(study, charts, tables, choices, summary, static, notes)
    section.findings = study_findings(tables, study) | real.findings
    section.verdicts = analysis.findings(results, ci=CI, n_boot=N_BOOT)
    attach_verdicts(section.findings, section.verdicts)
    section.banners = protocol_banners(results) + real.banners
    section.facts = study_facts(results, data_dir)
    return section


def _write_outputs(section: StudySection, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Write the PNG/SVG figures and CSV tables of a section; return its Vega-Lite specs by key.

    The static figures are drawn from the default selection only (faster to render).
    """
    specs = {}
    for name, chart in section.charts.items():
        key = f"{section.key}_{name}"
        specs[key] = chart_spec(chart)
        static = chart_spec(section.static_charts.get(name, chart))
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
    study_root: str | os.PathLike[str] | None = None,
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
    study_root
        Study root whose ``history/`` and ``checkpoints/`` give the learning curves and
        the prediction panel; by default the study behind ``results`` (or, for a table
        in memory, behind ``source``) when it is a study root or its ``results/``
        (:func:`hrtem_ray.report.curves.study_root_of`), else none.

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
    if study_root is None:
        study_root = study_root_of(source if isinstance(results, pl.DataFrame) else results)
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
        section = build_section(rows, str(study), data_dir, study_root)
        section.key = keys[study]
        specs.update(_write_outputs(section, out))
        sections.append(section)
    path = output_path(out, "report.html")
    path.write_text(render_page(sections, specs, source, notes), encoding="utf-8")
    return path
