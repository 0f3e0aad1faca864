"""The self-contained HTML report of a results directory.

:func:`write_report` writes into ``out_dir``:

- ``report.html``: one page that opens offline (Vega, Vega-Lite and Vega-Embed are
  inlined); its controls (reduce mode, freezing, transfer size, learning rates)
  re-filter every chart in the browser. The charts embed the long-form tables of
  :func:`hrtem_ray.analysis.selection_tables`, i.e. the analysis results of every
  control combination with their :data:`CI` bootstrap intervals over models
  (:data:`N_BOOT` replicates) and ``n_models``, so no computation happens in the page.
  Heatmap tooltips show the intervals, bars and lines draw them as error bars, and
  asymmetry cells whose interval excludes 0 are outlined;
- at the top, a findings block per study (:func:`study_findings`,
  :func:`headline_findings`): the hardest evaluation domain, the domain with the best
  out-of-distribution loss, the largest transfer asymmetry and transfer versus mixture
  at equal target data, as sentences generated from the tables at the default
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

from hrtem_ray import analysis
from hrtem_ray.report import plots
from hrtem_ray.report.axes import AXIS_UNITS

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
    "examples": "A few validation images of the dataset with their particle masks.",
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
    findings: dict[str, list[Finding]] = field(default_factory=dict)

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
    """The report's charts of one study from its tables, in page order.

    ``tables`` are the selection tables of :func:`hrtem_ray.analysis.selection_tables`
    plus, when :func:`study_tables` could compute them, ``training_time`` and
    ``transfer_mixture`` (Figure 7.2; drawn when some pair has both arms). A
    ``structure`` study also gets its figure per lattice and particle size.
    """
    charts = {"pair_matrix": plots.pair_heatmaps(tables["pair_matrix"], study)}
    if study == "structure":
        charts["structure"] = plots.structure_chart(tables["pair_matrix"], study)
    charts |= {
        "ood_spread": plots.ood_spread_chart(tables["ood_spread"], study),
        "asymmetry": plots.asymmetry_chart(
            tables["transfer_asymmetry"], tables["asymmetry_summary"], study
        ),
        "generalization_gap": plots.generalization_gap_chart(tables["generalization_gap"], study),
        "baseline": plots.baseline_chart(tables["baseline_comparison"], study),
    }
    if not tables.get("transfer_mixture", pl.DataFrame()).is_empty():
        charts["transfer_mixture"] = plots.transfer_mixture_chart(tables["transfer_mixture"], study)
    charts["hyperparameters"] = plots.hyperparameter_chart(
        {
            name.removeprefix("hyperparameters_"): frame
            for name, frame in tables.items()
            if name.startswith("hyperparameters_")
        },
        study,
    )
    if "training_time" in tables:
        charts["training_time"] = plots.training_time_chart(tables["training_time"], study)
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


# --------------------------------------------------------------------------- #
# findings: questions answered from the study's own tables
# --------------------------------------------------------------------------- #
CI = 0.95
# 1000 replicates for every selection table: about 2 s of CPU time for the laptop study's
# 36 models (distinct filter selections are bootstrapped once, see selection_tables).
N_BOOT = 1000
IN_FOCUS = "0"


@dataclass
class Finding:
    """One generated answer to a question the report asks of the study's data.

    Attributes
    ----------
    question
        The question, e.g. ``"Is the in-focus domain the hardest?"``.
    answer
        Sentences generated from the tables, with the intervals.
    significant
        Whether the comparison is significant at the report's confidence level;
        ``None`` when the table gives no interval (or nothing to compare).
    reference
        The reference study's finding on this question, when it applies to the study.
    agrees
        Whether this study's data agree with ``reference`` (``None``: they cannot decide,
        for lack of intervals).
    """

    question: str
    answer: str
    significant: bool | None = None
    reference: str | None = None
    agrees: bool | None = None


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def interval_text(value: float | None, low: float | None, high: float | None) -> str:
    """``0.16 [95% CI 0.158, 0.163]``, or the value with ``no interval`` when it has none."""
    if low is None or high is None:
        return f"{_number(value)} (no interval: a group of one model)"
    return f"{_number(value)} [{CI:.0%} CI {_number(low)}, {_number(high)}]"


def _stat(row: Mapping[str, Any], column: str) -> str:
    """:func:`interval_text` of ``column`` in a table row."""
    return interval_text(row.get(column), row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high"))


def intervals_apart(
    first: Mapping[str, Any], second: Mapping[str, Any], column: str
) -> bool | None:
    """Whether the intervals of ``column`` in two rows do not overlap (``None``: no interval).

    Non-overlapping 95% intervals imply a significant difference of the two (a
    conservative test: overlapping intervals may still differ significantly).
    """
    bounds = [row.get(f"{column}{s}") for row in (first, second) for s in analysis.CI_SUFFIXES]
    if any(b is None for b in bounds):
        return None
    low_1, high_1, low_2, high_2 = bounds
    return high_1 < low_2 or high_2 < low_1


def _verdict(significant: bool | None, how: str = "the intervals do not overlap") -> str:
    if significant is None:
        return "Significance unknown (no interval)."
    return f"Significant ({how})." if significant else "Not significant."


def _has_in_focus(domains: pl.Series, study: str) -> bool:
    """Whether a defocus study's ``domains`` include the in-focus one."""
    return study == "defocus" and IN_FOCUS in domains.to_list()


def _label(study: str, domain: str) -> str:
    unit = AXIS_UNITS.get(study, "")
    return f"{domain} {unit}" if unit else domain


def hardest_domain(pairs: pl.DataFrame, study: str) -> Finding:
    """Which evaluation domain is hardest: the highest loss even for its best in-domain models.

    Per target domain b, the cells of models trained on b (the pretrain diagonal
    P(b, b) and the transfers a -> b) are compared, and the lowest loss kept (the best
    training route to b); the hardest domain is the one where that is highest. The
    comparison with the runner-up is significant when their intervals do not overlap.
    """
    question = (
        "Is the in-focus domain the hardest?"
        if _has_in_focus(pairs.get_column("target_domain"), study)
        else "Which evaluation domain is the hardest?"
    )
    own = pairs.filter(
        (pl.col("phase") == "transfer")
        & (~pl.col("from_pretrain") | (pl.col("pretrain_domain") == pl.col("target_domain")))
    )
    best = own.sort("loss").group_by("target_domain", maintain_order=True).first().sort("loss")
    if best.height < 2:
        return Finding(question, "Fewer than two domains with in-domain models: no comparison.")
    hardest, runner = best.row(-1, named=True), best.row(-2, named=True)
    significant = intervals_apart(hardest, runner, "loss")
    source = hardest["pretrain_domain"]
    route = (
        "pretrained on it"
        if source == hardest["target_domain"]
        else f"pretrained on {_label(study, source)}, then transferred"
    )
    answer = (
        f"The hardest domain is {_label(study, hardest['target_domain'])}: even its best "
        f"in-domain models ({route}) reach a loss of {_stat(hardest, 'loss')}, against "
        f"{_stat(runner, 'loss')} on the next hardest, {_label(study, runner['target_domain'])}. "
        f"{_verdict(significant)}"
    )
    return _with_reference(
        Finding(question, answer, significant),
        study,
        "the in-focus (0 nm) dataset is the hardest",
        hardest["target_domain"] == IN_FOCUS,
        pairs,
    )


def best_ood_domain(summary: pl.DataFrame, study: str) -> Finding:
    """Which pretraining domain's models have the lowest out-of-distribution loss."""
    question = (
        "Do models pretrained on the in-focus domain generalise best out of distribution?"
        if _has_in_focus(summary.get_column("domain"), study)
        else "Models pretrained on which domain generalise best out of distribution?"
    )
    ranked = summary.drop_nulls("ood_from_domain").sort("ood_from_domain")
    if ranked.height < 2:
        return Finding(question, "Fewer than two pretraining domains: no comparison.")
    best, runner = ranked.row(0, named=True), ranked.row(1, named=True)
    significant = intervals_apart(best, runner, "ood_from_domain")
    answer = (
        f"Models pretrained on {_label(study, best['domain'])} have the lowest mean loss on the "
        f"other pretraining domains, {_stat(best, 'ood_from_domain')}; next: "
        f"{_label(study, runner['domain'])}, {_stat(runner, 'ood_from_domain')}. "
        f"{_verdict(significant)}"
    )
    return _with_reference(
        Finding(question, answer, significant),
        study,
        "models pretrained on the in-focus domain generalise better out of distribution",
        best["domain"] == IN_FOCUS,
        summary.rename({"domain": "target_domain"}),
    )


def largest_asymmetry(asymmetry: pl.DataFrame, study: str, transfers: bool = True) -> Finding:
    """The pair with the largest transfer asymmetry, and whether its interval excludes 0.

    ``transfers`` of ``False`` (no transfer model in the table, every T(a, b) a pretrain
    fallback): there is no transfer to compare.
    """
    question = "Which pair of domains transfers most asymmetrically?"
    if not transfers:
        return Finding(question, "No transfer models: no transfer asymmetry to compute.")
    rows = asymmetry.filter(pl.col("asymmetry") <= 0).sort("asymmetry")
    if rows.is_empty():
        return Finding(question, "Fewer than two pretraining domains: no asymmetry to compute.")
    row = rows.row(0, named=True)
    significant = None
    if "asymmetry_ci_low" in rows.columns:
        significant = analysis.significant(rows.head(1), "asymmetry").item()
    a, b = _label(study, row["pretrain_domain"]), _label(study, row["target_domain"])
    answer = (
        f"Pretraining on {a} and transferring to {b} beats the reverse by the most: "
        f"asymmetry {_stat(row, 'asymmetry')} (gap {a}→{b} {_number(row['gap_ab'])}, "
        f"{b}→{a} {_number(row['gap_ba'])}). {_verdict(significant, 'the interval excludes 0')}"
    )
    return Finding(question, answer, significant)


def in_focus_asymmetry(summary: pl.DataFrame, study: str) -> Finding | None:
    """Whether the in-focus domain transfers better than the reverse (``None`` without it)."""
    rows = summary.filter(pl.col("domain") == IN_FOCUS).drop_nulls("transfer_asymmetry")
    if study != "defocus" or rows.is_empty():
        return None
    row = rows.row(0, named=True)
    significant = None
    if "transfer_asymmetry_ci_low" in rows.columns:
        significant = analysis.significant(rows, "transfer_asymmetry").item()
    answer = (
        "Mean transfer asymmetry of the in-focus domain against the other pretraining "
        f"domains: {_stat(row, 'transfer_asymmetry')} (negative: it transfers better than "
        f"the reverse). {_verdict(significant, 'the interval excludes 0')}"
    )
    return _with_reference(
        Finding("Does the in-focus domain transfer better than the reverse?", answer, significant),
        study,
        "models pretrained on the in-focus domain transfer better to other defoci than the "
        "reverse (negative asymmetry)",
        row["transfer_asymmetry"] < 0,
        summary.rename({"domain": "target_domain"}),
    )


def transfer_vs_mixture(comparison: pl.DataFrame, study: str) -> Finding:
    """Transfer against mixture training at equal target data: the largest difference."""
    question = (
        "Does transfer with a small target set approach training on a mixture with the same "
        "amount of target data?"
    )
    key = ["source", "target", "n_target_images"]
    on_target = ["loss_on_target", "loss_on_target_ci_low", "loss_on_target_ci_high"]
    present = [c for c in on_target if c in comparison.columns]
    transfer = comparison.filter(pl.col("method") == "transfer").select(*key, *present)
    mixture = comparison.filter(pl.col("method") == "mixture").select(*key, *present)
    both = transfer.join(mixture, on=key, suffix="_mix").drop_nulls(
        ["loss_on_target", "loss_on_target_mix"]
    )
    if both.is_empty():
        return Finding(
            question,
            "No pair has both transfer models and mixture baselines with the same number of "
            "target images: the comparison cannot be made from this table.",
        )
    both = both.with_columns(diff=pl.col("loss_on_target") - pl.col("loss_on_target_mix"))
    row = both.sort(pl.col("diff").abs(), descending=True).row(0, named=True)
    mix = {c.removesuffix("_mix"): v for c, v in row.items() if c.endswith("_mix")}
    significant = intervals_apart(row, mix, "loss_on_target")
    lower = int((both.get_column("diff") < 0).sum())
    answer = (
        f"In {both.height} comparison(s) at equal target data, transfer reached a lower target "
        f"loss in {lower}. Largest difference: {_label(study, row['source'])} → "
        f"{_label(study, row['target'])} with {row['n_target_images']} target images, transfer "
        f"{_stat(row, 'loss_on_target')} against mixture {_stat(mix, 'loss_on_target')}. "
        f"{_verdict(significant)}"
    )
    return _with_reference(
        Finding(question, answer, significant),
        study,
        "transfer with a small target set approaches single-stage training on a mixture "
        "with the same amount of target data",
        None if significant is None else (not significant or row["diff"] < 0),
        None,
    )


def pretrain_dependence(pairs: pl.DataFrame, study: str) -> Finding:
    """How much the loss on a target depends on the pretraining domain, before and after transfer.

    Per target domain reached by transfers from at least two pretraining domains, the
    range (max - min) of the loss across those pretraining domains, after pretraining
    alone and after transfer; averaged over the targets.
    """
    question = "After transfer, does the loss on a target still depend on the pretraining domain?"
    transfer = pairs.filter((pl.col("phase") == "transfer") & ~pl.col("from_pretrain"))
    targets = transfer.group_by("target_domain").len().filter(pl.col("len") >= 2)
    cells = transfer.select("pretrain_domain", "target_domain").join(
        targets.select("target_domain"), on="target_domain"
    )
    if cells.is_empty():
        return Finding(
            question,
            "No target domain was reached from two or more pretraining domains: no comparison.",
        )
    ranges = {}
    for phase in ("pretrain", "transfer"):
        ranges[phase] = (
            pairs.filter(pl.col("phase") == phase)
            .join(cells, on=["pretrain_domain", "target_domain"])
            .group_by("target_domain")
            .agg(spread=pl.col("loss").max() - pl.col("loss").min())
            .get_column("spread")
            .mean()
        )
    answer = (
        f"Over {targets.height} target domain(s) reached from several pretraining domains, the "
        f"loss varies across pretraining domains by {_number(ranges['pretrain'])} on average "
        f"after pretraining alone and by {_number(ranges['transfer'])} after transfer "
        "(ranges of medians; the interval of every cell is in the heatmap tooltips)."
    )
    return _with_reference(
        Finding(question, answer),
        study,
        "after transfer the target loss barely depends on the pretraining domain; after "
        "pretraining alone it depends strongly",
        None if None in ranges.values() else bool(ranges["transfer"] < ranges["pretrain"]),
        None,
    )


def ood_shift(ood: pl.DataFrame, study: str) -> Finding:
    """How often transfer widens or narrows the out-of-distribution spread, and significantly."""
    question = "Does transfer widen or narrow the out-of-distribution spread?"
    pairs = ood.filter(pl.col("pretrain_domain") != pl.col("target_domain")).filter(
        pl.col("shift") != 0
    )
    if pairs.is_empty():
        return Finding(question, "No transfer pairs: no shift to report.")
    grew, shrank = int((pairs["shift"] > 0).sum()), int((pairs["shift"] < 0).sum())
    counted = "no intervals"
    significant = None
    if "shift_ci_low" in pairs.columns:
        flags = analysis.significant(pairs, "shift")
        significant = bool(flags.any()) if flags.null_count() < len(flags) else None
        counted = f"{int(flags.sum())} with an interval excluding 0, {flags.null_count()} without interval"
    row = pairs.sort(pl.col("shift").abs(), descending=True).row(0, named=True)
    answer = (
        f"The spread grew after transfer for {grew} pair(s) and shrank for {shrank} "
        f"({counted}). Largest shift: {_label(study, row['pretrain_domain'])} → "
        f"{_label(study, row['target_domain'])}, {_stat(row, 'shift')}."
    )
    return _with_reference(
        Finding(question, answer, significant),
        study,
        "the spread can grow or shrink after transfer, depending on the pair",
        grew > 0 and shrank > 0,
        None,
    )


def freezing_cost(hyper: pl.DataFrame, study: str) -> Finding:
    """Median loss on the target per frozen part, against no freezing."""
    question = "What does freezing part of the network cost?"
    rows = {r["freeze"]: r for r in hyper.iter_rows(named=True)}
    if "none" not in rows or len(rows) < 2:
        return Finding(question, "The study does not vary freezing: no comparison.")
    parts, flags = [], []
    for part, row in rows.items():
        if part == "none":
            continue
        apart = intervals_apart(row, rows["none"], "q50")
        flags.append(apart)
        parts.append(f"frozen {part}: {_stat(row, 'q50')} ({_verdict(apart).rstrip('.').lower()})")
    answer = (
        f"Median loss of transfer models on their target: no freezing {_stat(rows['none'], 'q50')}; "
        + "; ".join(parts)
        + "."
    )
    significant = None if None in flags else any(flags)
    encoder = rows.get("encoder")
    return _with_reference(
        Finding(question, answer, significant),
        study,
        "freezing the decoder costs little; freezing the encoder costs a little accuracy",
        None if encoder is None else bool(encoder["q50"] >= rows["none"]["q50"]),
        None,
    )


PHASE_MODELS = {"pretrain": "pretrained models", "transfer": "transferred models"}


def generalization_finding(gaps: pl.DataFrame, study: str) -> Finding:
    """G_OOD after pretraining and after transfer: its mean over pairs and the largest cell.

    ``gaps``: the ``generalization_gap`` table at one selection (with a ``phase``
    column). Significant when some cell's interval excludes 0.
    """
    question = "How much worse are models away from their own training domain (G_OOD)?"
    sentences, flags = [], []
    for phase, models in PHASE_MODELS.items():
        rows = gaps.filter(pl.col("phase") == phase).drop_nulls("gap")
        if rows.is_empty():
            continue
        worst = rows.sort("gap", descending=True).row(0, named=True)
        sentence = (
            f"For {models}, G_OOD averages {_number(rows['gap'].mean())} over {rows.height} "
            f"(training, evaluation) domain pairs; the largest is "
            f"{_label(study, worst['train_domain'])} → {_label(study, worst['eval_domain'])}, "
            f"{_stat(worst, 'gap')}"
        )
        if "gap_ci_low" in rows.columns:
            marked = analysis.significant(rows, "gap")
            flags.append(marked)
            sentence += (
                f" ({int(marked.sum())} of {rows.height} pairs with an interval excluding 0, "
                f"{marked.null_count()} without interval)"
            )
        sentences.append(sentence + ".")
    if not sentences:
        return Finding(question, "No model has a loss on its own training domain: no G_OOD.")
    flagged = pl.concat(flags) if flags else pl.Series([], dtype=pl.Boolean)
    significant = bool(flagged.any()) if flagged.null_count() < len(flagged) else None
    return Finding(question, " ".join(sentences), significant)


def figure_7_2_finding(models: pl.DataFrame, study: str) -> Finding:
    """Transfer with its fewest target images against the mixture with its fewest, per pair.

    ``models``: the per-model points of Figure 7.2
    (:func:`hrtem_ray.analysis.transfer_mixture_models`). The comparison is of means
    over models (the figure's lines); it carries no interval.
    """
    question = "Figure 7.2: does transfer with a small target set approach training on a mixture?"
    means = (
        models.group_by("source", "target", "method", "n_target_images")
        .agg(loss=pl.col("loss").mean(), n=pl.len())
        .sort("n_target_images")
        .group_by("source", "target", "method", maintain_order=True)
        .first()
    )
    transfer = means.filter(pl.col("method") == "transfer").drop("method")
    mixture = means.filter(pl.col("method") == "mixture").drop("method")
    both = _sort_pairs(transfer.join(mixture, on=["source", "target"], suffix="_mix"))
    if both.is_empty():
        return Finding(question, "No pair has both arms: Figure 7.2 cannot be drawn.")
    lower = int((both["loss"] <= both["loss_mix"]).sum())
    row = both.row(0, named=True)
    answer = (
        f"In {lower} of {both.height} pair(s), transfer with its fewest target images reaches a "
        f"mean target loss no higher than the mixture with its fewest. "
        f"{_label(study, row['source'])} → {_label(study, row['target'])}: transfer with "
        f"{row['n_target_images']} target images {_number(row['loss'])} (mean of {row['n']} "
        f"model(s)), mixture with {row['n_target_images_mix']} {_number(row['loss_mix'])} "
        f"(mean of {row['n_mix']}). Means over models, no interval: the figure shows each model."
    )
    return _with_reference(
        Finding(question, answer),
        study,
        "transfer with a small target set approaches single-stage training on a mixture "
        "with the same amount of target data",
        None,
        None,
    )


def _sort_pairs(pairs: pl.DataFrame) -> pl.DataFrame:
    """Rows of (``source``, ``target``) pairs, the -10 → 5 pair of Figure 7.2 first."""
    first = (pl.col("source") == plots.FIGURE_7_2_FIRST[0]) & (
        pl.col("target") == plots.FIGURE_7_2_FIRST[1]
    )
    ordered = analysis.sort_domains(pairs, ["source", "target"])
    return pl.concat([ordered.filter(first), ordered.filter(~first)])


def _device_note(times: pl.DataFrame) -> str:
    """What the timings were measured on, and whether GPU sharing confounds them."""
    if "trials_sharing_device" not in times.columns:
        return (
            "The table does not record how many trials shared a device: the timings may be "
            "confounded by sharing."
        )
    sharing = times.get_column("trials_sharing_device").drop_nulls()
    if sharing.len() and sharing.max() > 1:
        return (
            f"Up to {sharing.max()} trials shared a device while these times were measured: "
            "each saving compares models with the same sharing only."
        )
    return "No device was shared by several trials while these times were measured."


def freezing_time_saving(times: pl.DataFrame, study: str) -> Finding:
    """The time per epoch saved by freezing part of the network, against no freezing."""
    question = "How much training time does freezing part of the network save?"
    rows = times.filter((pl.col("freeze") != "none") & pl.col("saving").is_not_null())
    if rows.is_empty():
        return Finding(
            question,
            "No frozen model has an unfrozen counterpart of the same phase, size and device: "
            f"no saving to report. {_device_note(times)}",
        )
    parts = [
        f"frozen {r['freeze']}, {r['phase']} on {r['n_train_images']} images: {_stat(r, 'saving')}"
        for r in rows.iter_rows(named=True)
    ]
    flags = analysis.significant(rows, "saving") if "saving_ci_low" in rows.columns else None
    significant = None
    if flags is not None and flags.null_count() < len(flags):
        significant = bool(flags.any())
    encoder = rows.filter(pl.col("freeze") == "encoder").get_column("saving")
    answer = (
        "Saving of the median time per epoch against no freezing (1 - t / t_none): "
        + "; ".join(parts)
        + f". {_device_note(times)}"
    )
    return _with_reference(
        Finding(question, answer, significant),
        study,
        "freezing the encoder cuts training time by 15-25%",
        None if encoder.is_empty() else bool(encoder.median() > 0),
        None,
    )


def _with_reference(
    finding: Finding,
    study: str,
    claim: str,
    agrees: bool | None,
    domains: pl.DataFrame | None,
) -> Finding:
    """Attach the reference study's claim to a finding of a defocus study.

    Claims about the in-focus domain apply only when the table has one (``domains``:
    a table with a ``target_domain`` column, or ``None`` for claims about any pairs).
    ``agrees`` of ``None``: the data cannot decide.
    """
    if study != "defocus":
        return finding
    if domains is not None and IN_FOCUS not in domains.get_column("target_domain").to_list():
        return finding
    finding.reference = claim
    finding.agrees = agrees
    return finding


def study_findings(tables: Mapping[str, pl.DataFrame], study: str) -> dict[str, list[Finding]]:
    """The generated findings of a study, per report section, at the default selection.

    Parameters
    ----------
    tables
        The selection tables of :func:`hrtem_ray.analysis.selection_tables` (with
        intervals); the default selection (median, no filter) is used.
    study
        The study name (``defocus`` enables the comparison with the reference study).

    Returns
    -------
    dict
        Section name -> findings, in order; :func:`headline_findings` picks the ones shown in
        the findings block at the top.
    """
    t = {name: default_selection(frame) for name, frame in tables.items()}
    transfers = (
        not t["pair_matrix"]
        .filter((pl.col("phase") == "transfer") & ~pl.col("from_pretrain"))
        .is_empty()
    )
    asymmetry = [
        hardest_domain(t["pair_matrix"], study),
        best_ood_domain(t["asymmetry_summary"], study),
        largest_asymmetry(t["transfer_asymmetry"], study, transfers),
    ]
    focus = in_focus_asymmetry(t["asymmetry_summary"], study) if transfers else None
    findings = {
        "pair_matrix": [pretrain_dependence(t["pair_matrix"], study)],
        "ood_spread": [ood_shift(t["ood_spread"], study)],
        "asymmetry": asymmetry + ([focus] if focus else []),
        "baseline": [transfer_vs_mixture(t["baseline_comparison"], study)],
    }
    if "hyperparameters_freeze" in t:
        findings["hyperparameters"] = [freezing_cost(t["hyperparameters_freeze"], study)]
    findings["generalization_gap"] = [generalization_finding(t["generalization_gap"], study)]
    if not t.get("transfer_mixture", pl.DataFrame()).is_empty():
        findings["transfer_mixture"] = [figure_7_2_finding(t["transfer_mixture"], study)]
    if "training_time" in t:
        findings["training_time"] = [freezing_time_saving(t["training_time"], study)]
    return findings


def headline_findings(findings: Mapping[str, list[Finding]]) -> list[Finding]:
    """The findings block: hardest domain, best OOD loss, largest asymmetry, transfer vs mixture."""
    return [*findings.get("asymmetry", [])[:3], *findings.get("baseline", [])]


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


def build_section(
    results: pl.DataFrame, study: str, data_dir: str | os.PathLike[str] | None = None
) -> StudySection:
    """Compute the tables, charts and findings of one study (intervals: :data:`CI`)."""
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
            charts["examples"] = plots.examples_chart(examples, study)
        elif not notes:
            notes.append(f"no example images found in {data_dir}")
        shown = [results.get_column(c).cast(pl.String) for c in analysis.DOMAIN_COLUMNS]
        note = imported_domains_note(data_dir, analysis.domain_order(pl.concat(shown)))
        if note is not None:
            notes.insert(0, note)
    summary = model_summary(results)
    section = StudySection(study, charts, tables, choices, summary, static, notes)
    section.findings = study_findings(tables, study)
    return section


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


REFERENCE_VERDICT = {
    True: "This study's data agree",
    False: "This study's data disagree with the reference study",
    None: "This study's data cannot decide (no interval)",
}
# how sure the verdict is: the finding's own significance
VERDICT_QUALIFIER = {True: ".", False: " (not significantly).", None: " (point estimates only)."}
SIGNIFICANCE = {True: "significant", False: "not significant", None: "no interval"}


def reference_verdict(finding: Finding) -> str:
    """Whether the data agree with the reference study, qualified by the finding's significance."""
    if finding.agrees is None:
        return REFERENCE_VERDICT[None] + "."
    return REFERENCE_VERDICT[finding.agrees] + VERDICT_QUALIFIER[finding.significant]


def _reference_html(finding: Finding) -> str:
    """The reference study's claim on a finding and whether this study's data agree."""
    if finding.reference is None:
        return ""
    verdict = {True: "agree", False: "disagree", None: "undecided"}[finding.agrees]
    return (
        f'<p class="reference {verdict}">Reference study: {html.escape(finding.reference)}. '
        f"<b>{html.escape(reference_verdict(finding))}</b></p>"
    )


def _finding_html(finding: Finding) -> str:
    """A question, its generated answer and the reference study's view, as paragraphs."""
    significance = SIGNIFICANCE[finding.significant]
    return (
        f'<div class="finding" data-significant="{significance}">'
        f'<p class="question">{html.escape(finding.question)}</p>'
        f'<p class="answer">{html.escape(finding.answer)}</p>{_reference_html(finding)}</div>'
    )


def findings_html(section: StudySection) -> str:
    """The findings block of a study: its headline comparisons (:func:`headline_findings`)."""
    items = "".join(_finding_html(f) for f in headline_findings(section.findings))
    return (
        f'<section class="findings" id="findings-{section.key}"><h2>Findings: '
        f'{html.escape(section.study)}</h2><p class="meta">Generated from this study\'s tables '
        f"(median over models, no filter); intervals: {CI:.0%} percentile bootstrap over "
        f"models ({N_BOOT} replicates).</p>{items}</section>"
    )


def _section_html(section: StudySection, specs: Mapping[str, str]) -> str:
    """HTML of one study: summary, controls and one figure block per chart."""
    blocks = []
    for name in section.charts:
        key = f"{section.key}_{name}"
        caption = "".join(_finding_html(f) for f in section.findings.get(name, []))
        if name in CAPTIONS:
            caption += f"<p>{CAPTIONS[name]}</p>"
        blocks.append(
            f'<section class="figure"><h3>{TITLES[name]}</h3>{caption}'
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
.findings { border: 1px solid #ccd; background: #f8f9fc; padding: 0.4rem 1rem; margin: 1rem 0; }
.finding { margin: 0.6rem 0; max-width: 60rem; } .finding p { margin: 0.15rem 0; }
.question { font-weight: 600; } .reference { font-size: 0.9rem; color: #555; }
.reference.disagree b { color: #a33; }
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
    findings = "".join(findings_html(s) for s in sections)
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    top = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    top = f'<div class="study-notes" id="study-notes">{top}</div>' if notes else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>hrtem-ray report</title>"
        f"<style>{PAGE_STYLE}</style><script>{bundle}</script></head><body>"
        f'<h1>hrtem-ray report</h1>{top}<p class="meta">results: {html.escape(source)} · '
        f"generated {created}</p>{findings}{body}<script>{PAGE_SCRIPT}</script></body></html>"
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
