"""Valid verdicts for adaptive studies: the findings decided at every look of a sequence.

An adaptive study (:mod:`hrtem_ray.sweep.adaptive`) looks at its findings after every
round of training and adds seeds where a finding is still open. Calling a finding
decided the first time a plain 95% interval clears its claim's edge would be wrong far
more often than 5% of the time: every look is another chance for noise to clear it, and
the percentile bootstrap of :func:`hrtem_ray.analysis.findings` is too narrow with the
two or three replicates per configuration an adaptive study starts from (it estimates
the variance of a mean of ``n`` replicates as ``(n - 1) / n`` of what it is). This
module's rule holds the false-decision rate at ``1 - level`` over all looks together:

1. **A group-sequential boundary (Pocock's).** An adaptive study makes at most
   ``adaptive.max_rounds`` looks, fixed before it starts, and every look decides at the
   same nominal level ``1 - alpha`` (:class:`Schedule`), chosen so that a measure lying
   exactly on its claim's edge is called decided at *some* look with probability
   ``1 - level``. The looks see growing sets of the same models, so their statistics are
   strongly correlated; the boundary takes that into account (a Brownian motion observed
   at each look's replicates per configuration, :func:`crossing_probabilities`), which
   is why each look can be laxer than a split of ``1 - level`` over the looks: with 6
   looks each decides at 98.6% (Bonferroni: 99.2%), with 3 at 97.8%. A finding is decided
   at its first look whose interval clears the edge, and stays so. The first version of
   this rule halved the error rate at every look (``(1 - level) / 2**k``, valid by the
   union bound for any number of looks); its third look decided at 99.4% and its fifth at
   99.8%, so a finding that needed more than two rounds was hardly ever decided (on the
   laptop preset, ``benchmarks/adaptive.py``, it decided 2 of the fixed grid's 5
   findings). A group-sequential boundary was chosen over a final confirmation round on
   fresh seeds: it reuses every model (a confirmation round throws the first rounds'
   models away for the verdict, so it needs more trainings to decide the same finding).
   The boundary assumes the information of a look grows with its replicates per
   configuration as planned (``first_seeds``, then ``replicate_batch`` more per round);
   rounds that add seeds only where a finding's variance lies depart from that, and the
   synthetic nulls below measure what that does to the error rate.
2. **An interval that holds with few replicates.** Each configuration's replicates are
   resampled spread by ``sqrt(n / (n - 1))`` about their mean (``unbiased`` in
   :func:`hrtem_ray.analysis.findings.evaluate`), so the bootstrap variance of the
   measure is unbiased. The interval is ``estimate +/- t * se``: ``se`` the bootstrap
   standard deviation and ``t`` Student's quantile at ``1 - alpha / 2`` with Welch-
   Satterthwaite degrees of freedom from each configuration's share of the variance
   (:func:`contributions`): with one pair of two-replicate configurations (finding 3 on
   the laptop study) ``t`` is about 4.3 rather than 1.96, since two replicates estimate
   a variance with one degree of freedom. (Centring on the bootstrap's bias-corrected
   estimate instead was tried: on the synthetic nulls it made finding 1's ratio of
   standard deviations miss more often, not less.)
3. **Finding 4** (the OOD spread grows for some pairs and shrinks for others) tests each
   pair's change with the same interval and Holm's correction at ``alpha`` over the pairs.

``benchmarks/adaptive.py`` measures the rule on synthetic studies whose measures lie
exactly on their claims' edges (``false_decision_rate_null``), on studies with effects
of the reference study's size (``power_true_effect``), and on the published table.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from hrtem_ray.analysis.findings import (
    REGIONS,
    Evaluation,
    Outcome,
    evaluate,
    holm,
    region_verdict,
    spread_verdict,
)
from hrtem_ray.spec.adaptive import FINDING_KEYS

#: Findings whose measure is a comparison of the shared configuration means (their
#: configurations' shares of the variance come from a regression on those means).
REGRESSED = ("1", "2a", "2b", "2c", "3", "5a", "5b")


@dataclass(frozen=True)
class Schedule:
    """How an adaptive study spends its error rate ``1 - level`` over its looks.

    Pocock's group-sequential boundary: every look decides at the same nominal level
    ``1 - alpha`` (:meth:`alpha`), chosen so that a measure lying on its claim's edge is
    called decided at *some* look of ``looks`` with probability ``1 - level``. The looks
    see growing, overlapping sets of models, so their statistics are correlated: look
    ``k`` carries the information of ``first_seeds + (k - 1) * batch`` replicates per
    configuration, and the crossing probabilities are those of a Brownian motion observed
    at those information fractions (Armitage, McPherson and Rowe's recursive integration,
    :func:`crossing_probabilities`). The number of looks is fixed in advance
    (``adaptive.max_rounds``); a study that stops earlier spends less.

    >>> round(Schedule(0.95, looks=1).alpha(1), 6)  # one look: the fixed grid's level
    0.05
    >>> [round(Schedule(0.95, looks=k).alpha(1), 4) for k in (2, 3, 6)]  # Pocock's levels
    [0.0294, 0.0221, 0.0142]
    >>> round(Schedule(0.95, looks=6).spent(6), 4)  # all looks together: at most 5%
    0.05
    """

    level: float = 0.95
    looks: int = 6
    first_seeds: int = 2
    batch: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.level < 1 or self.looks < 1 or self.first_seeds < 1 or self.batch < 1:
            raise ValueError(
                "level must be in (0, 1) and looks, first_seeds and batch at least 1, not "
                f"{self.level}, {self.looks}, {self.first_seeds}, {self.batch}"
            )

    def times(self) -> tuple[float, ...]:
        """Information fraction of each look (replicates per configuration, relative)."""
        seeds = [self.first_seeds + k * self.batch for k in range(self.looks)]
        return tuple(n / seeds[-1] for n in seeds)

    def alpha(self, look: int) -> float:
        """The nominal error rate of look ``look`` (1, 2, ... ``looks``)."""
        self._check(look)
        return _pocock(self.level, self.times())[0]

    def spent(self, look: int) -> float:
        """The error rate spent by looks ``1 .. look`` together (at the claim's edge)."""
        self._check(look)
        return sum(_pocock(self.level, self.times())[1][:look])

    def _check(self, look: int) -> None:
        if not 1 <= look <= self.looks:
            raise ValueError(f"look must be 1 .. {self.looks} (adaptive.max_rounds), not {look}")


def crossing_probabilities(boundary: Sequence[float], times: Sequence[float],
                           points: int = 801) -> np.ndarray:  # fmt: skip
    """Probability that ``|Z_k|`` first exceeds ``boundary[k]`` at look ``k``.

    ``Z_k = W(t_k) / sqrt(t_k)`` for a standard Brownian motion ``W`` observed at the
    information fractions ``times`` (increasing): the statistics of one measure at
    successive looks of a study whose looks add independent replicates. The density of
    ``W(t_k)`` on the region not yet crossed is carried from look to look on a grid
    (trapezoid rule; ``points`` per look).
    """
    from scipy import stats

    out, grid, density = [], None, None
    for k, (c, t) in enumerate(zip(boundary, times, strict=True)):
        edge = c * math.sqrt(t)
        if k == 0:
            out.append(2 * stats.norm.sf(c))
            s = np.linspace(-edge, edge, points)
            density = stats.norm.pdf(s / math.sqrt(t)) / math.sqrt(t)
        else:
            step = math.sqrt(t - times[k - 1])
            weights = np.full(grid.size, grid[1] - grid[0])
            weights[[0, -1]] /= 2
            mass = weights * density
            out.append(float(mass @ (stats.norm.sf((edge - grid) / step)
                                     + stats.norm.cdf((-edge - grid) / step))))  # fmt: skip
            s = np.linspace(-edge, edge, points)
            density = (stats.norm.pdf((s[:, None] - grid[None, :]) / step) / step) @ mass
        grid = s
    return np.array(out)


@functools.lru_cache(maxsize=64)
def _pocock(level: float, times: tuple[float, ...]) -> tuple[float, tuple[float, ...]]:
    """Pocock's nominal two-sided error rate at ``times``, and each look's crossing
    probability at it."""
    from scipy import optimize, stats

    def excess(c: float) -> float:
        return float(crossing_probabilities([c] * len(times), times).sum()) - (1 - level)

    c = optimize.brentq(excess, 0.5, 8.0, xtol=1e-10)
    crossings = crossing_probabilities([c] * len(times), times)
    return float(2 * stats.norm.sf(c)), tuple(float(x) for x in crossings)


def percent(level: float) -> str:
    """A level as a percentage with no trailing zeros.

    >>> [percent(x) for x in (0.95, 0.975, 0.9875, 0.05)]
    ['95%', '97.5%', '98.75%', '5%']
    """
    return f"{100 * level:.6g}%"


def t_quantile(alpha: float, df: float) -> float:
    """Student's two-sided quantile ``t_{1 - alpha / 2}`` with ``df`` degrees of freedom."""
    from scipy import stats

    if math.isinf(df):
        return float(stats.norm.ppf(1 - alpha / 2))
    return float(stats.t.ppf(1 - alpha / 2, max(df, 1.0)))


def contributions(draws: np.ndarray, blocks: Mapping[int, np.ndarray | None]) -> dict[int, float]:
    """Each configuration's share of a measure's bootstrap variance.

    The bootstrap resamples the configurations independently, so the measure's variance
    is about the sum over configurations of the variance explained by each one's
    resampled means: the least-squares fit of the measure's replicates on that
    configuration's (one column per eval domain). The shares are scaled to sum to the
    measure's variance; configurations without means (``None``) get an equal share of
    what is left, or of all of it when none has means.

    Parameters
    ----------
    draws
        ``(n_boot + 1,)`` the measure's replicates, row 0 the point estimate.
    blocks
        Configuration code -> ``(n_boot + 1, k)`` replicates of its means, or None.
    """
    y = draws[1:]
    keep = np.isfinite(y)
    y = y[keep] - y[keep].mean()
    total = float(np.mean(y**2)) if y.size else 0.0
    shares: dict[int, float] = {}
    for code, block in blocks.items():
        if block is None or total == 0:
            continue
        x = block[1:][keep]
        x = x - x.mean(axis=0)
        if not np.any(x):
            shares[code] = 0.0
            continue
        beta, *_ = np.linalg.lstsq(x, y, rcond=None)
        shares[code] = float(np.mean((x @ beta) ** 2))
    explained = sum(shares.values())
    rest = [c for c in blocks if c not in shares]
    if explained <= 0:
        return {c: total / len(blocks) for c in blocks} if blocks else {}
    scale = total / explained if not rest else min(1.0, total / explained)
    out = {c: v * scale for c, v in shares.items()}
    left = max(0.0, total - sum(out.values()))
    out |= {c: left / len(rest) for c in rest}
    return out


def satterthwaite(shares: Mapping[int, float], n_models: Mapping[int, int]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance ``shares``.

    Configuration ``c`` contributes ``n_models[c] - 1`` degrees of freedom. At least 1.

    >>> satterthwaite({1: 1.0, 2: 1.0}, {1: 2, 2: 2})
    2.0
    >>> satterthwaite({1: 1.0, 2: 0.0}, {1: 2, 2: 30})
    1.0
    """
    total = sum(shares.values())
    denominator = sum(v**2 / max(n_models.get(c, 2) - 1, 1) for c, v in shares.items())
    if total <= 0 or denominator <= 0:
        return float(max(1, sum(max(n_models.get(c, 2) - 1, 1) for c in shares)))
    return max(1.0, total**2 / denominator)


@dataclass(frozen=True)
class Interval:
    """A t interval of one measure (or of one pair of finding 4).

    ``shares``: configuration code -> its share of the variance ``se**2``.
    """

    estimate: float
    se: float
    df: float
    shares: dict[int, float] = field(default_factory=dict)

    def bounds(self, alpha: float) -> tuple[float, float]:
        """The interval at level ``1 - alpha``."""
        half = t_quantile(alpha, self.df) * self.se
        return self.estimate - half, self.estimate + half

    def p_value(self) -> float:
        """Two-sided p-value of ``estimate == 0`` (Student's t with :attr:`df`)."""
        from scipy import stats

        if self.se <= 0:
            return 0.0 if self.estimate else 1.0
        return float(2 * stats.t.sf(abs(self.estimate) / self.se, self.df))


def interval(
    draws: np.ndarray,
    blocks: Mapping[int, np.ndarray | None],
    n_models: Mapping[int, int],
) -> Interval | None:
    """The :class:`Interval` of a measure's replicates (None without two finite ones)."""
    reps = draws[1:][np.isfinite(draws[1:])]
    if reps.size < 2 or not np.isfinite(draws[0]):
        return None
    estimate = float(draws[0])
    shares = contributions(draws, blocks)
    df = satterthwaite(shares, n_models)
    return Interval(estimate, float(reps.std(ddof=1)), df, shares)


@dataclass(frozen=True)
class FindingLook:
    """One finding at one look.

    ``interval``: the measure's (None for finding 4 and when there is none); ``pairs``:
    finding 4's per pair, with ``configs``, the configurations of each.
    """

    key: str
    outcome: Outcome
    interval: Interval | None
    ci_low: float | None
    ci_high: float | None
    verdict: str
    reason: str
    pairs: tuple[Interval, ...] = ()


@dataclass(frozen=True)
class Look:
    """The findings at look ``look`` of a sequence at ``level`` (:func:`sequential_look`).

    ``configs``: the replicated configurations (:attr:`hrtem_ray.analysis.findings.Evaluation.configs`).
    """

    look: int
    level: float
    alpha: float
    findings: dict[str, FindingLook]
    configs: pl.DataFrame

    def table(self) -> pl.DataFrame:
        """One row per finding: ``finding``, ``estimate``, ``ci_low``, ``ci_high``, ``df``,
        ``n_models``, ``verdict`` (at this look's level) and ``reason``."""
        rows = [
            {
                "finding": f.key,
                "estimate": f.outcome.estimate,
                "ci_low": f.ci_low,
                "ci_high": f.ci_high,
                "df": None if f.interval is None else f.interval.df,
                "n_models": f.outcome.n_models,
                "verdict": f.verdict,
                "reason": f.reason,
            }
            for f in self.findings.values()
        ]
        schema = {"finding": pl.String, "estimate": pl.Float64, "ci_low": pl.Float64,
                  "ci_high": pl.Float64, "df": pl.Float64, "n_models": pl.Int64,
                  "verdict": pl.String, "reason": pl.String}  # fmt: skip
        return pl.DataFrame(rows, schema=schema)


def _blocks(
    evaluation: Evaluation, key: str, configs: frozenset[int]
) -> dict[int, np.ndarray | None]:
    """Per configuration of a finding its resampled means, where its measure regresses on them."""
    regress = key in REGRESSED
    return {c: evaluation.config_draws(c) if regress else None for c in sorted(configs)}


def _scalar(
    key: str, outcome: Outcome, evaluation: Evaluation, alpha: float, counts
) -> FindingLook:
    """A finding with one measure at a look's ``alpha``."""
    found = interval(outcome.draws, _blocks(evaluation, key, outcome.configs), counts)
    if found is None:
        return FindingLook(key, outcome, None, None, None, "undecidable", outcome.reason)
    low, high = found.bounds(alpha)
    bounds = f"the {percent(1 - alpha)} interval [{low:.3g}, {high:.3g}] (t, {found.df:.0f} df)"
    verdict, why = region_verdict(key, low, high, bounds)
    detail = outcome.reason.split("; ")[0]
    return FindingLook(key, outcome, found, low, high, verdict, f"{detail}; {why}")


def _spread(outcome: Outcome, alpha: float, counts) -> FindingLook:
    """Finding 4 at a look's ``alpha``: each pair's t test, Holm over the pairs."""
    pairs = [
        interval(row, dict.fromkeys(part), counts)
        for row, part in zip(outcome.draws, outcome.parts, strict=True)
    ]
    if any(p is None for p in pairs):
        return FindingLook("4", outcome, None, None, None, "undecidable", outcome.reason)
    p_values = np.array([p.p_value() for p in pairs])
    test = f"t tests, Holm, family-wise {percent(alpha)}"
    signs = np.array([p.estimate for p in pairs])
    low, high, verdict, reason = spread_verdict(signs, holm(p_values, alpha), test)
    return FindingLook("4", outcome, None, low, high, verdict, reason, tuple(pairs))


def sequential_look(
    table: pl.DataFrame | pl.LazyFrame,
    look: int,
    level: float = 0.95,
    keys: Sequence[str] = FINDING_KEYS,
    n_boot: int = 1000,
    boot_seed: int | None = None,
    alpha: float | None = None,
) -> Look:
    """The findings ``keys`` at look ``look`` of a sequence at family-wise ``level``.

    Parameters
    ----------
    table
        The results of every model trained so far (docs/results_schema.md).
    look
        1 for the first look.
    level
        Family-wise confidence level over all looks (``adaptive.level``).
    keys
        The findings to decide (others are left out of the look).
    n_boot
        Bootstrap replicates.
    boot_seed
        Seed of the resampling; default ``look`` (a look is a function of its table).
    alpha
        This look's error rate; default the :class:`Schedule` of ``level`` with its
        default looks (an adaptive study passes its own, ``Settings.schedule``). A fixed
        grid looks once, with ``alpha = 1 - level`` (:func:`single_look`).

    Returns
    -------
    Look
        Verdicts at ``1 - alpha`` (module docstring).
    """
    alpha = Schedule(level).alpha(look) if alpha is None else alpha
    seed = look if boot_seed is None else boot_seed
    evaluation = evaluate(table, ci=None, n_boot=n_boot, boot_seed=seed, unbiased=True, keys=keys)
    counts = dict(evaluation.configs.select("config", "n_models").iter_rows())
    found = {}
    for key in keys:
        outcome = evaluation.outcomes[key]
        if outcome.draws is None:
            found[key] = FindingLook(key, outcome, None, None, None, "undecidable", outcome.reason)
        elif key == "4":
            found[key] = _spread(outcome, alpha, counts)
        else:
            found[key] = _scalar(key, outcome, evaluation, alpha, counts)
    return Look(look, level, alpha, found, evaluation.configs)


def single_look(
    table: pl.DataFrame | pl.LazyFrame,
    level: float = 0.95,
    keys: Sequence[str] = FINDING_KEYS,
    n_boot: int = 1000,
) -> Look:
    """The findings of a fixed grid, looked at once at ``level`` with the same intervals
    as an adaptive study's looks (the fair comparison of the two: ``benchmarks/adaptive.py``)."""
    return sequential_look(table, 1, level, keys, n_boot, alpha=1 - level)


@dataclass(frozen=True)
class Narrowing:
    """What would decide an open finding at the next look.

    ``variance``: the variance of its measure now (``se**2``); ``required``: the variance
    at which its interval would clear the claim's nearest edge at the next look's level,
    if its estimate stays where it is (0 when it sits on the edge), with the degrees of
    freedom it would have after ``batch`` more replicates of every configuration;
    ``floor``: the most optimistic target, with a normal quantile (infinitely many degrees
    of freedom) and the measure one standard error further from the edge than its
    estimate; ``shares``: configuration code -> its share of ``variance``.
    """

    finding: str
    variance: float
    required: float
    floor: float
    shares: dict[int, float]


def edge_distance(key: str, estimate: float) -> float:
    """Distance of ``estimate`` from the nearest finite edge of finding ``key``'s region."""
    return min(abs(estimate - edge) for edge in REGIONS[key] if np.isfinite(edge))


def _narrowing(
    key: str, found: Interval, distance: float, alpha: float, counts: Mapping[int, int], batch: int
) -> Narrowing:
    """The :class:`Narrowing` of an interval ``distance`` from the edge it must clear."""
    more = {c: n + batch for c, n in counts.items()}
    scaled = {c: v * counts.get(c, 2) / more.get(c, 2 + batch) for c, v in found.shares.items()}
    df = satterthwaite(scaled, more)
    required = (distance / t_quantile(alpha, df)) ** 2
    # the most optimistic target: a normal quantile, and a measure one standard error
    # further from the edge than its estimate (an estimate from two or three replicates
    # per configuration may sit near the edge by chance)
    floor = ((distance + found.se) / t_quantile(alpha, math.inf)) ** 2
    return Narrowing(key, found.se**2, required, floor, found.shares)


def narrowings(look: Look, keys: Sequence[str], next_alpha: float, batch: int) -> list[Narrowing]:
    """What would decide each open finding of ``keys`` at the next look (level ``1 - next_alpha``).

    A scalar finding gives one :class:`Narrowing`; finding 4 one per direction in which
    no pair has changed significantly yet: the pair of that direction nearest to
    significance (Holm's first step, ``next_alpha`` over the pairs). Findings without an
    interval give none. ``batch``: the replicates a round adds to a configuration.
    """
    counts = dict(look.configs.select("config", "n_models").iter_rows())
    out = []
    for key in keys:
        found = look.findings[key]
        if found.verdict != "undecidable":
            continue
        if found.interval is not None:
            i = found.interval
            distance = edge_distance(key, i.estimate)
            out.append(_narrowing(key, i, distance, next_alpha, counts, batch))
        elif found.pairs:
            out.extend(_pair_narrowings(found, next_alpha, counts, batch))
    return out


def _pair_narrowings(
    found: FindingLook, next_alpha: float, counts: Mapping[int, int], batch: int
) -> list[Narrowing]:
    """Finding 4: per missing direction, the pair whose change is nearest to significance."""
    pairs, m = found.pairs, len(found.pairs)
    significant = holm(np.array([p.p_value() for p in pairs]), next_alpha)
    out = []
    for sign in (1, -1):
        if any(s and np.sign(p.estimate) == sign for p, s in zip(pairs, significant, strict=True)):
            continue
        side = [p for p in pairs if np.sign(p.estimate) == sign and p.se > 0]
        if side:
            best = max(side, key=lambda p: abs(p.estimate) / p.se)
            out.append(_narrowing("4", best, abs(best.estimate), next_alpha / m, counts, batch))
    return out
