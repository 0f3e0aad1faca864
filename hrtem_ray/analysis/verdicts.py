"""The findings table: one verdict per finding of the reference study (:func:`findings`).

The measures and their replicate bootstrap are :mod:`hrtem_ray.analysis.findings`; the
intervals that decide them are either Student t intervals over the replicates
(``interval="t"``, the default: :mod:`hrtem_ray.analysis.sequential`, looked at once)
or the percentile intervals of the bootstrap (``interval="percentile"``).

Why t by default: with the two to five replicates per configuration a laptop study has,
the percentile bootstrap estimates the variance of a mean of ``n`` replicates as
``(n - 1) / n`` of what it is and ignores that a variance from ``n`` replicates has
``n - 1`` degrees of freedom. Measured on 200 synthetic 3-seed studies whose every
measure lies exactly on its claim's edge (``benchmarks/adaptive.py``,
``fixed_grid_null``), the percentile intervals called a finding decided in up to 20% of
the studies (10-20% by finding) at the nominal 5%; the t intervals in at most 5.5%.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

from hrtem_ray.analysis.bootstrap import check_ci
from hrtem_ray.analysis.findings import CLAIMS, FINDINGS_COLUMNS, MEASURES, evaluate
from hrtem_ray.analysis.sequential import sequential_look

#: The interval methods of :func:`findings`.
INTERVALS = ("t", "percentile")


def findings(
    table: pl.DataFrame | pl.LazyFrame,
    ci: float | None = 0.95,
    n_boot: int = 1000,
    boot_seed: int = 0,
    interval: Literal["t", "percentile"] = "t",
) -> pl.DataFrame:
    """Decide each finding of the reference study on a results table.

    Parameters
    ----------
    table
        A results table (docs/results_schema.md): one row per model and eval domain;
        an hrtem-ray study or a converted published table (both of its files may be
        concatenated: the defocus models and the mixtures). Extra columns are ignored.
    ci
        Confidence level of the intervals, in (0, 1); ``None``: point estimates only
        (every verdict is then ``undecidable``).
    n_boot
        Bootstrap replicates (at least 2).
    boot_seed
        Seed of the resampling: the same seed gives the same table.
    interval
        ``"t"`` (default): ``estimate +/- t * se``, ``se`` from a bootstrap that resamples
        each configuration's replicates spread by ``sqrt(n / (n - 1))`` (unbiased), ``t``
        Student's quantile with Welch-Satterthwaite degrees of freedom; finding 4 by
        per-pair t tests with Holm's correction. ``"percentile"``: the percentile
        interval of the plain bootstrap, and bootstrap p-values for finding 4. See the
        module docstring for why t is the default.

    Returns
    -------
    polars.DataFrame
        One row per finding, keys ``1, 2a, 2b, 2c, 3, 4, 5a, 5b, 5c`` in that order;
        columns ``finding``, ``claim`` (the study's statement), ``measure`` (in words,
        with its unit and tolerance), ``estimate``, ``ci_low``, ``ci_high`` (f64, null
        when not computable), ``n_models`` (i64: distinct models the measure rests on),
        ``verdict`` (``agrees``, ``disagrees`` or ``undecidable``) and ``reason``.

    Raises
    ------
    ValueError
        For a bad ``ci``/``n_boot``/``interval``, a table without the required columns,
        unknown phases, several studies in one table, or a model with two different rows
        on one eval domain; before any compute.

    Notes
    -----
    Replicates are the distinct models of one configuration; the bootstrap resamples
    them within each configuration, then reduces across configurations
    (:mod:`hrtem_ray.analysis.findings`). Tolerances: finding 1 "barely depends" below
    ``DEPENDENCE_TOLERANCE`` (0.25), finding 3 "approaches" below
    ``APPROACH_TOLERANCE`` (0.10), finding 5a "little" below ``LITTLE_COST`` (0.05),
    finding 5b "a little" between 0 and ``A_LITTLE_COST`` (0.25), finding 5c the
    study's 0.15 to 0.25 (``SAVING_RANGE``). The pretrain, transfer and mixture
    configurations are resampled once, each from its own random stream, and shared by
    the findings that use them; findings 4 and 5c draw their own.
    """
    check_ci(ci, n_boot)
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {list(INTERVALS)}, not {interval!r}")
    if interval == "percentile" or ci is None:
        evaluation = evaluate(table, ci, n_boot if ci is not None else 0, boot_seed)
        rows = [
            {f: getattr(outcome, f) for f in FINDINGS_COLUMNS[3:]} | {"finding": key}
            for key, outcome in evaluation.outcomes.items()
        ]
    else:
        look = sequential_look(table, 1, ci, n_boot=n_boot, boot_seed=boot_seed, alpha=1 - ci)
        rows = [
            {
                "finding": key,
                "estimate": found.outcome.estimate,
                "ci_low": found.ci_low,
                "ci_high": found.ci_high,
                "n_models": found.outcome.n_models,
                "verdict": found.verdict,
                "reason": found.reason,
            }
            for key, found in look.findings.items()
        ]
    rows = [row | {"claim": CLAIMS[row["finding"]], "measure": MEASURES[row["finding"]]}
            for row in rows]  # fmt: skip
    floats, ints = ("estimate", "ci_low", "ci_high"), ("n_models",)
    schema = {c: pl.Float64 if c in floats else pl.Int64 if c in ints else pl.String
              for c in FINDINGS_COLUMNS}  # fmt: skip
    return pl.DataFrame(rows, schema=schema).select(FINDINGS_COLUMNS)
