"""The generated findings: questions the report asks of a study's tables, answered in sentences.

:func:`study_findings` answers, per report section and at the default selection (median
over models, no filter), the questions of that section (the hardest evaluation domain,
the best out-of-distribution loss, the largest transfer asymmetry, transfer versus
mixture at equal target data, ...), each as a :class:`Finding` with its :data:`CI`
interval and whether it is significant. For a defocus study each finding carries the
reference study's claim on the question and whether this study's data agree
(:func:`reference_verdict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from hrtem_ray import analysis
from hrtem_ray.report.axes import AXIS_UNITS
from hrtem_ray.report.reference_plots import FIGURE_7_2_FIRST
from hrtem_ray.report.vega import default_selection

#: Confidence level of every interval in the report (percentile bootstrap over models).
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
        Before :func:`attach_verdicts`: whether the point estimates lean towards
        ``reference`` (never shown); after it: ``True`` when every finding of ``keys``
        agrees on replicates, ``False`` when one disagrees, ``None`` otherwise.
    keys
        The findings of :func:`hrtem_ray.analysis.findings` that decide ``reference``.
    verdict
        Their verdicts, decided on replicates (:func:`attach_verdicts`), as shown.
    """

    question: str
    answer: str
    significant: bool | None = None
    reference: str | None = None
    agrees: bool | None = None
    keys: tuple[str, ...] = ()
    verdict: str | None = None


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
    first = (pl.col("source") == FIGURE_7_2_FIRST[0]) & (pl.col("target") == FIGURE_7_2_FIRST[1])
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
    finding.keys = next(keys for start, keys in CLAIM_FINDINGS.items() if claim.startswith(start))
    return finding


#: The findings (:func:`hrtem_ray.analysis.findings` keys) that decide each reference claim
#: of the generated sentences, by the claim's first words.
CLAIM_FINDINGS = {
    "the in-focus (0 nm) dataset is the hardest": ("2a",),
    "models pretrained on the in-focus domain generalise": ("2b",),
    "models pretrained on the in-focus domain transfer better": ("2c",),
    "transfer with a small target set approaches": ("3",),
    "after transfer the target loss barely depends": ("1",),
    "the spread can grow or shrink": ("4",),
    "freezing the decoder costs little": ("5a", "5b"),
    "freezing the encoder cuts training time": ("5c",),
}


def attach_verdicts(findings: Mapping[str, list[Finding]], verdicts: pl.DataFrame) -> None:
    """Give every sentence that cites the reference study the verdicts that decide it.

    ``verdicts`` is :func:`hrtem_ray.analysis.findings` of the whole study: the sentences
    describe the selected table, the verdicts rest on replicates and never on a point
    estimate.
    """
    rows = {row["finding"]: row for row in verdicts.iter_rows(named=True)}
    for items in findings.values():
        for item in items:
            if item.reference is None:
                continue
            parts = [
                f"finding {key}: {rows[key]['verdict']}"
                + ("" if rows[key]["verdict"] != "undecidable" else f" ({rows[key]['reason']})")
                for key in item.keys
                if key in rows
            ]
            item.verdict = "; ".join(parts) or None
            decided = [rows[k]["verdict"] for k in item.keys if k in rows]
            item.agrees = (
                False
                if "disagrees" in decided
                else True
                if decided and set(decided) == {"agrees"}
                else None
            )


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
        Section name -> findings, in order (shown under their charts).
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


def reference_verdict(finding: Finding) -> str:
    """The verdict shown with a sentence's reference claim: the findings block's, on replicates."""
    if finding.verdict is None:
        return "Verdict: see the findings block (decided on replicates)."
    return f"Verdict on replicates (findings block): {finding.verdict}."


#: Below this share of converged models in a phase, a study is marked as not converged.
CONVERGED_SHARE = 0.9


def protocol_banners(results: pl.DataFrame) -> list[str]:
    """Warnings for the top of a study: scored on validation images, or not converged.

    ``eval_split`` missing or ``val`` on some rows: those models were scored on the images
    their epoch was chosen with. ``converged`` below :data:`CONVERGED_SHARE` in a phase
    (among models whose convergence was judged, i.e. with ``training.patience``).
    """
    out = []
    models = results.unique("model_id") if "model_id" in results.columns else results
    if "eval_split" in results.columns:
        on_val = results.get_column("eval_split").cast(pl.String).fill_null("val") == "val"
    else:
        on_val = pl.Series([True] * results.height)
    if on_val.any():
        share = f"{on_val.mean():.0%} of the rows" if not on_val.all() else "every row"
        out.append(
            f"Scored on the validation images used for model selection ({share}): each model's "
            "best epoch was chosen on them, so its loss is optimistic. Add held-out structures "
            "(dataset.n_structures.test) to score on a test split."
        )
    if "converged" in models.columns:
        judged = models.filter(pl.col("converged").is_not_null())
        shares = judged.group_by("phase").agg(pl.col("converged").mean()).sort("phase")
        low = [(p, v) for p, v in shares.iter_rows() if v < CONVERGED_SHARE]
        if low:
            listed = ", ".join(f"{v:.0%} of {p} models" for p, v in low)
            out.append(
                f"Not converged: only {listed} converged (at least {CONVERGED_SHARE:.0%} per "
                "phase are needed); train longer (training.max_epochs) before drawing conclusions."
            )
    return out


def converged_text(results: pl.DataFrame) -> str:
    """Share of converged models per phase, in words (``not judged`` without ``patience``)."""
    if "converged" not in results.columns:
        return "not recorded"
    models = results.unique("model_id")
    parts = []
    for phase, share, judged in (
        models.group_by("phase")
        .agg(pl.col("converged").mean(), judged=pl.col("converged").is_not_null().sum())
        .sort("phase")
        .iter_rows()
    ):
        parts.append(f"{phase} {share:.0%}" if judged else f"{phase} not judged")
    return ", ".join(parts)
