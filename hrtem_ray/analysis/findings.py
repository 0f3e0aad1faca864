"""One verdict per finding of the reference study, with replicate-based intervals.

:func:`hrtem_ray.analysis.verdicts.findings` decides each finding of the reference study (``study_reference.md``,
"Findings") on any results table in the schema of ``docs/results_schema.md``: an
hrtem-ray study, or a converted published table. The measures are defined in
``docs/results_schema.md`` ("Findings"); this docstring says how they are computed.

Replicates
----------
A *configuration* is everything that defines a model but its seed: ``study``,
``phase``, the domains, learning rates, image counts, ``freeze`` and, where the table
has them, ``loss_function``, ``patience``, ``min_delta`` and the epoch budget
(``max_epochs``, else ``epochs``). Its *replicates* are its distinct models
(``model_id``): seeds in an hrtem-ray table, the models numbered 0, 1, 2, ... in a
converted published table (which records no seeds). Identical rows are counted once,
so duplicating every row changes nothing.

Each measure is computed in two steps: the mean over the replicates of each
configuration, then a reduction across configurations (the median over the
configurations of one cell, such as the transfer models of one pair, as the study
reduces over models; then the mean over cells, such as pairs or targets). One
bootstrap replicate resamples the models of every configuration independently, with
replacement and at its own size (stratified), and recomputes the measure by the same
code; the interval that decides it is a Student t interval over the replicates, or the
percentile interval of ``n_boot`` replicates (:func:`hrtem_ray.analysis.verdicts.findings`). A
configuration with a single model has no replicates and is left out; where a side of
a comparison is left with none, the verdict is ``undecidable`` and the reason says
so. A verdict is never reached on point estimates.

Verdicts
--------
Each measure has the range that its claim asserts (``REGIONS``, tolerances chosen from
the study's wording and numbers: see ``docs/results_schema.md``). ``agrees``: the
whole interval lies in it; ``disagrees``: none of it does; ``undecidable``: the
interval overlaps its edge, or there is none. Finding 4 counts pairs: its interval
runs from the share of pairs whose OOD spread grows significantly to one minus the
share whose spread shrinks significantly (per pair a bootstrap p-value, twice the
smaller share of replicates on either side of 0, with Holm's correction at level
``1 - ci`` over the pairs). Findings 2a, 2b and 2c concern the in-focus domain
(``"0"``) and need a defocus study (``study == "defocus"``); elsewhere they are
``undecidable`` ("not a defocus study").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import polars as pl

from hrtem_ray.analysis.replicates import (
    ConfigMeans,
    config_means,
    group_means,
    on_target,
    percentile_interval,
    wide_losses,
)
from hrtem_ray.analysis.tables import domain_order, seconds_per_epoch
from hrtem_ray.spec.adaptive import FINDING_KEYS, IN_FOCUS

FINDINGS_COLUMNS = ("finding", "claim", "measure", "estimate", "ci_low", "ci_high", "n_models",
                    "verdict", "reason")  # fmt: skip
VERDICTS = ("agrees", "disagrees", "undecidable")

#: Finding 1: "barely depends" = the spread over pretraining domains after transfer is
#: below a quarter of the spread after pretraining alone (the published table: 0.04).
DEPENDENCE_TOLERANCE = 0.25
#: Finding 3: "approaches" = transfer's target loss at most 10% above the mixture's.
APPROACH_TOLERANCE = 0.10
#: Finding 5a: "costs little" = freezing the decoder raises target loss by under 5%.
LITTLE_COST = 0.05
#: Finding 5b: "costs a little" = freezing the encoder raises it, by under 25%.
A_LITTLE_COST = 0.25
#: Finding 5c: the study's range of the encoder-freezing time saving.
SAVING_RANGE = (0.15, 0.25)
LOSS_UNIT = "nats of excess loss"

CLAIMS = {
    "1": "after transfer, target-domain loss barely depends on the pretraining domain; "
    "after pretraining alone it depends strongly",
    "2a": "the in-focus (0 nm) domain is the hardest",
    "2b": "models pretrained in focus generalise best out of distribution (G_OOD)",
    "2c": "transfer from in focus to other defoci works better than the reverse (asymmetry)",
    "3": "transfer with a small target set approaches a single-stage mixture with the same "
    "amount of target data",
    "4": "out-of-distribution spread can grow or shrink after transfer, depending on the pair",
    "5a": "freezing the decoder costs little accuracy",
    "5b": "freezing the encoder costs a little accuracy",
    "5c": "freezing the encoder cuts training time by 15-25%",
}

MEASURES = {
    "1": "population standard deviation over pretraining domains of the target-domain loss "
    "after transfer, divided by the same after pretraining alone, each a mean over targets "
    f"(ratio; 'barely' below {DEPENDENCE_TOLERANCE:g})",
    "2a": "in-domain loss of the 0 nm pretrained models minus that of the hardest other "
    f"pretraining domain ({LOSS_UNIT})",
    "2b": "G_OOD of the 0 nm pretrained models minus the lowest G_OOD of another pretraining "
    "domain; G_OOD = loss on an eval domain minus loss on the own domain, mean over the eval "
    f"domains no pretraining domain covers ({LOSS_UNIT}; negative: 0 nm generalises best)",
    "2c": "transfer asymmetry of 0 nm: mean over the other pretraining domains b of "
    "[T(0->b) - P(b,b)] - [T(b->0) - P(0,0)] over the transfer settings of both directions "
    f"({LOSS_UNIT}; negative: 0 nm transfers better)",
    "3": "loss on the target of unfrozen transfer models divided by that of mixtures with the "
    "same target images, minus 1, at the smallest target count of each pair with both arms, "
    f"mean over pairs (relative difference; 'approaches' below {APPROACH_TOLERANCE:g})",
    "4": "share of (pretrain, target) pairs whose OOD spread (standard deviation of loss over "
    "eval domains outside 0 nm and both training domains) grows after transfer; interval: "
    "share growing significantly to 1 - share shrinking significantly (Holm; share of pairs)",
    "5a": "relative increase of the target-domain loss from freezing the decoder, paired with "
    "the unfrozen transfer of the same configuration, mean over configurations "
    f"(relative; 'little' below {LITTLE_COST:g})",
    "5b": "relative increase of the target-domain loss from freezing the encoder, paired with "
    "the unfrozen transfer of the same configuration, mean over configurations "
    f"(relative; 'a little' between 0 and {A_LITTLE_COST:g})",
    "5c": "relative saving of training seconds per epoch from freezing the encoder (CPU time "
    "on a CPU, wall time on a GPU), paired with the unfrozen transfer of the same "
    "configuration (and device), mean over "
    f"configurations (relative; claim {SAVING_RANGE[0]:g} to {SAVING_RANGE[1]:g})",
}

_INF = float("inf")
#: Region of each measure that its claim asserts (open interval).
REGIONS: dict[str, tuple[float, float]] = {
    "1": (-_INF, DEPENDENCE_TOLERANCE),
    "2a": (0.0, _INF),
    "2b": (-_INF, 0.0),
    "2c": (-_INF, 0.0),
    "3": (-_INF, APPROACH_TOLERANCE),
    "4": (0.0, 1.0),
    "5a": (-_INF, LITTLE_COST),
    "5b": (0.0, A_LITTLE_COST),
    "5c": SAVING_RANGE,
}

_LABELS = ("study", "model_id", "phase", "pretrain_domain", "transfer_domain", "eval_domain")
_REQUIRED = (*_LABELS, "pretrain_lr", "transfer_lr", "n_pretrain", "n_transfer", "freeze", "loss")
_SETTINGS = ("pretrain_lr", "transfer_lr", "n_pretrain", "n_transfer", "loss_function",
             "patience", "min_delta", "min_steps", "budget", "augment",
             "target_images")  # fmt: skip
_DEVICE = ("train_device", "trials_sharing_device")
_OPTIONAL = ("epochs", "max_epochs", "train_seconds", "epoch_seconds", "epoch_cpu_seconds",
             "loss_function", "patience", "min_delta", "min_steps", "augment", "target_images",
             *_DEVICE)  # fmt: skip
_PHASES = ("pretrain", "transfer", "baseline")
_NO_REPLICATES = "one model per configuration: no replicates"


@dataclass(frozen=True)
class _Data:
    """The table prepared for the findings.

    ``rows``: one row per replicated model (at least 2 per configuration) and eval
    domain, with ``config`` (configuration code), ``setting`` (code of the
    configuration without its domains), ``unfrozen`` (code without ``freeze``), the
    labels, ``n_transfer``, ``loss`` and ``seconds_per_epoch``. ``configs``: one row per
    replicated configuration (those codes, the labels and ``n_models``). ``single``: the
    phases that have configurations with a single model. ``has_seconds``: whether any
    model has ``train_seconds`` and ``epochs``.
    """

    rows: pl.DataFrame
    configs: pl.DataFrame
    study: str
    pretrain_domains: tuple[str, ...]
    single: frozenset[str]
    has_seconds: bool

    def phase(self, phase: str) -> pl.DataFrame:
        """The replicated rows of one phase."""
        return self.rows.filter(pl.col("phase") == phase)

    def n_models(self, configs: set[int]) -> int:
        """Models of the given configurations."""
        return int(self.configs.filter(pl.col("config").is_in(list(configs)))["n_models"].sum())

    def missing(self, phase: str, what: str, decide: str) -> str:
        """The reason for a missing side and what would decide it: replicates, or ``decide``
        (the models the study would need, in the spec's words)."""
        if phase in self.single:
            return f"{what}: {_NO_REPLICATES} (3 seeds per configuration would decide it)"
        return f"no {what} ({decide} would decide it)"


@dataclass(frozen=True)
class Outcome:
    """A finding's result before it becomes a row of the findings table.

    Besides the row's fields: ``draws``, the measure's bootstrap replicates (row 0 the
    point estimate; finding 4: ``(pairs, n_boot + 1)``, the change of each pair's OOD
    spread), ``configs``, the configuration codes the measure rests on, and ``parts``,
    for finding 4 those of each pair. ``None`` / empty without a measure.
    """

    estimate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_models: int = 0
    verdict: str = "undecidable"
    reason: str = ""
    draws: np.ndarray | None = field(default=None, compare=False, repr=False)
    configs: frozenset[int] = frozenset()
    parts: tuple[frozenset[int], ...] = ()


# --------------------------------------------------------------------------- #
# preparation
# --------------------------------------------------------------------------- #
def _code(frame: pl.DataFrame, columns: Sequence[str], name: str) -> pl.DataFrame:
    """Add ``name``: a dense integer code of ``columns``, numbered in sorted order."""
    keys = frame.select(columns).unique().sort(columns, nulls_last=True).with_row_index(name)
    return frame.join(keys, on=list(columns), how="left", nulls_equal=True)


def _read(table: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """The columns the findings use, labels as strings, each distinct row once.

    Raises
    ------
    ValueError
        For missing required columns, phases outside ``pretrain``/``transfer``/``baseline``,
        several studies in one table, or one model with two different rows on an eval domain.
    """
    lf = table.lazy()
    schema = lf.collect_schema()
    missing = [c for c in _REQUIRED if c not in schema]
    if missing:
        raise ValueError(
            f"results table lacks the required columns {missing} (docs/results_schema.md)"
        )
    optional = [c for c in _OPTIONAL if c in schema]
    frame = (
        lf.select(*_REQUIRED, *optional)
        .with_columns(pl.col(*_LABELS, "freeze").cast(pl.String))
        .filter(pl.col("loss").is_not_null() & pl.col("loss").is_finite())
        .unique()
        .collect()
    )
    phases = set(frame.get_column("phase").unique().to_list()) - set(_PHASES)
    if phases:
        raise ValueError(f"phase must be one of {list(_PHASES)}, not {sorted(phases)}")
    studies = frame.get_column("study").unique().to_list()
    if len(studies) > 1:
        raise ValueError(
            f"the table holds several studies {sorted(studies)}: pass one (filter on study)"
        )
    if frame.select(pl.struct("model_id", "eval_domain").is_duplicated().any()).item():
        raise ValueError(
            "a model_id has two different rows on one eval_domain: pass each model once"
        )
    budget = [c for c in ("max_epochs", "epochs") if c in optional]
    seconds = seconds_per_epoch(optional)
    return frame.with_columns(
        budget=pl.coalesce(budget) if budget else pl.lit(None, pl.Int64),
        seconds_per_epoch=seconds,
    )


def _prepare(table: pl.DataFrame | pl.LazyFrame) -> _Data:
    """Validate the table, count each model once and number its configurations."""
    frame = _read(table)
    settings = [c for c in _SETTINGS if c in frame.columns]
    domains = ["pretrain_domain", "transfer_domain"]
    models = frame.group_by("model_id").agg(
        pl.col("study", "phase", *domains, *settings, "freeze").first()
    )
    models = _code(models, ["study", "phase", *domains, *settings, "freeze"], "config")
    models = _code(models, ["study", "phase", *settings, "freeze"], "setting")
    models = _code(models, ["study", "phase", *domains, *settings], "unfrozen")
    models = models.with_columns(n_models=pl.len().over("config"))
    single = frozenset(models.filter(pl.col("n_models") < 2).get_column("phase").to_list())
    models = models.filter(pl.col("n_models") >= 2)
    codes = ["config", "setting", "unfrozen"]
    rows = frame.join(models.select("model_id", *codes), on="model_id", how="inner")
    labels = ("pretrain_lr", "transfer_lr", "n_pretrain", "n_transfer", "freeze")
    configs = models.select(*codes, "n_models", "phase", *domains, *labels).unique()
    pretrain = frame.filter(pl.col("phase") == "pretrain").get_column("pretrain_domain")
    studies = frame.get_column("study").unique().to_list()
    return _Data(
        rows=rows.sort("config", "model_id", "eval_domain"),
        configs=configs.sort("config"),
        study=str(studies[0]) if studies else "",
        pretrain_domains=tuple(domain_order(pretrain.unique().to_list())),
        single=single,
        has_seconds=frame.get_column("seconds_per_epoch").is_not_null().any(),
    )


# --------------------------------------------------------------------------- #
# verdicts
# --------------------------------------------------------------------------- #
def _region_text(region: tuple[float, float]) -> str:
    low, high = region
    if low == -_INF:
        return f"below {high:g}"
    if high == _INF:
        return f"above {low:g}"
    return f"between {low:g} and {high:g}"


def region_verdict(key: str, low: float, high: float, bounds: str) -> tuple[str, str]:
    """The verdict of the interval ``[low, high]`` of finding ``key`` against its claim's
    region (``REGIONS``), and why; ``bounds`` names the interval in the reason."""
    region = REGIONS[key]
    where = _region_text(region)
    if region[0] < low and high < region[1]:
        return "agrees", f"{bounds} lies {where}"
    if high <= region[0] or low >= region[1]:
        return "disagrees", f"{bounds} lies outside the claim's range ({where})"
    return "undecidable", (
        f"{bounds} overlaps the edge of the claim's range ({where}): more replicates would "
        "narrow it"
    )


def _decide(
    key: str,
    stat: np.ndarray,
    ctx: _Context,
    used: set[int],
    detail: str,
    n_models: int | None = None,
) -> Outcome:
    """The verdict of a measure's replicates against its claim's region (``REGIONS``).

    ``used``: the configurations it rests on; ``n_models``: their models (default: all).
    """
    ci = ctx.ci
    n_models = ctx.data.n_models(used) if n_models is None else n_models
    estimate, low, high = percentile_interval(stat, ci)
    keep = {"draws": stat, "configs": frozenset(used)}
    if low is None or high is None:
        why = "no interval requested (ci=None)" if ci is None else "no interval"
        return Outcome(estimate, None, None, n_models, "undecidable", f"{detail}; {why}", **keep)
    verdict, reason = region_verdict(
        key, low, high, f"the {ci:.0%} interval [{low:.3g}, {high:.3g}]"
    )
    return Outcome(estimate, low, high, n_models, verdict, f"{detail}; {reason}", **keep)


def _undecidable(reason: str) -> Outcome:
    return Outcome(reason=reason)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


# --------------------------------------------------------------------------- #
# the findings
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class _Context:
    """What every finding reads: the data, the interval settings and the shared means.

    ``pretrain``: pretrain configurations on every eval domain; ``transfer`` and
    ``baseline``: their configurations on their own target domain. Each is resampled
    once, from its own random stream, and shared by the findings that use it.
    ``unbiased``: every resampling spreads replicates as :func:`group_means` does with it.
    """

    data: _Data
    ci: float | None
    n_boot: int
    boot_seed: int
    pretrain: ConfigMeans | None
    transfer: ConfigMeans | None
    baseline: ConfigMeans | None
    unbiased: bool = False

    def rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.boot_seed, stream])


def _context(
    data: _Data, ci: float | None, n_boot: int, boot_seed: int, unbiased: bool = False
) -> _Context:
    """Resample the pretrain, transfer and baseline configurations once."""
    pre = data.phase("pretrain")
    evals = domain_order(pre.get_column("eval_domain").unique().to_list())
    shared = [
        (pre, evals),
        (on_target(data.phase("transfer")), ["target"]),
        (on_target(data.phase("baseline")), ["target"]),
    ]
    means = [
        config_means(
            frame,
            keys,
            n_boot,
            np.random.default_rng([boot_seed, 100 + i]),
            data.configs,
            unbiased,
        )  # fmt: skip
        for i, (frame, keys) in enumerate(shared)
    ]
    return _Context(data, ci, n_boot, boot_seed, *means, unbiased=unbiased)


def _pair(a: str, b: str | None = None) -> pl.Expr:
    """Configurations pretrained on ``a`` (and transferred to / mixed with ``b``)."""
    where = pl.col("pretrain_domain") == a
    return where if b is None else where & (pl.col("transfer_domain") == b)


def _sides(ctx: _Context, *phases: str) -> str | None:
    """Why a finding lacks one of ``phases``' shared means, or None."""
    names = {"pretrain": "pretraining models", "transfer": "transfer models",
             "baseline": "baseline (mixture) models"}  # fmt: skip
    decide = {"pretrain": "a pretrain grid", "transfer": "a transfer grid",
              "baseline": "a baseline section with mixtures of a transfer pair"}  # fmt: skip
    for phase in phases:
        if getattr(ctx, phase) is None:
            return ctx.data.missing(phase, names[phase], decide[phase])
    return None


def _dependence(ctx: _Context) -> Outcome:
    """Finding 1: how much target-domain loss depends on the pretraining domain."""
    reason = _sides(ctx, "transfer", "pretrain")
    if reason:
        return _undecidable(reason)
    tr, pre = ctx.transfer, ctx.pretrain
    sd_t, sd_p, used = [], [], set()
    pairs = tr.configs.select("pretrain_domain", "transfer_domain").unique()
    for b in domain_order(pairs.get_column("transfer_domain").to_list()):
        cells = []
        sources = pairs.filter(pl.col("transfer_domain") == b).get_column("pretrain_domain")
        for a in domain_order(sources.to_list()):
            t, t_configs = tr.median(_pair(a, b), "target")
            p, p_configs = pre.median(_pair(a), b)
            if t is not None and p is not None:
                cells.append((t, p))
                used |= t_configs | p_configs
        if len(cells) >= 2:
            sd_t.append(np.std([t for t, _ in cells], axis=0))
            sd_p.append(np.std([p for _, p in cells], axis=0))
    if not sd_t:
        return _undecidable("no target domain reached from two pretraining domains with replicates")
    mean_t, mean_p = np.mean(sd_t, axis=0), np.mean(sd_p, axis=0)
    detail = (
        f"{len(sd_t)} targets: spread over pretraining domains {_fmt(mean_t[0])} after "
        f"transfer vs {_fmt(mean_p[0])} after pretraining alone ({LOSS_UNIT})"
    )
    return _decide("1", mean_t / mean_p, ctx, used, detail)


def _in_focus(ctx: _Context) -> str | None:
    """Why the in-focus findings (2a, 2b, 2c) cannot run, or None."""
    if ctx.data.study != "defocus":
        return f"not a defocus study (study = {ctx.data.study!r})"
    if IN_FOCUS not in ctx.data.pretrain_domains:
        return "no pretraining models on the in-focus domain (0 nm in domains.pretrain would decide it)"
    if ctx.pretrain is None:
        return ctx.data.missing("pretrain", "pretraining models", "a pretrain grid")
    present = set(ctx.pretrain.configs.get_column("pretrain_domain").to_list())
    if IN_FOCUS not in present or len(present) < 2:
        why = "pretraining models of 0 nm and another domain"
        return ctx.data.missing("pretrain", why, "0 nm and another domain in domains.pretrain")
    return None


def _per_domain(
    ctx: _Context, extra: Sequence[str], per_config: Callable[[np.ndarray], np.ndarray]
) -> dict[str, tuple[np.ndarray, set[int]]]:
    """Per pretraining domain a: the median over its configurations of ``per_config``.

    ``per_config`` maps the ``(n_boot + 1, n_configs, 1 + len(extra))`` means on a and
    ``extra`` to ``(n_boot + 1, n_configs)``; returns a -> (replicates, configurations).
    """
    out = {}
    for a in ctx.data.pretrain_domains:
        if a in ctx.pretrain.keys:
            values, configs = ctx.pretrain.select(_pair(a), [a, *extra])
            if configs:
                out[a] = (np.median(per_config(values), axis=1), configs)
    return out


def _own(ctx: _Context) -> dict[str, tuple[np.ndarray, set[int]]]:
    """Per pretraining domain a: P(a, a), the in-domain loss of its pretrained models."""
    return _per_domain(ctx, [], lambda values: values[:, :, 0])


def _versus_others(
    ctx: _Context,
    key: str,
    cells: dict[str, tuple[np.ndarray, set[int]]],
    hardest: bool,
    label: str,
) -> Outcome:
    """0 nm's cell minus the largest (``hardest``) or else the smallest cell of the others."""
    others = {a: cell for a, (cell, _) in cells.items() if a != IN_FOCUS}
    if IN_FOCUS not in cells or not others:
        return _undecidable("no in-domain rows of 0 nm and another pretraining domain")
    pick, extreme = (max, np.max) if hardest else (min, np.min)
    other = pick(others, key=lambda a: others[a][0])
    focus = cells[IN_FOCUS][0]
    detail = (
        f"{label}: 0 nm {_fmt(focus[0])} vs {'hardest' if hardest else 'best'} other, "
        f"{other} nm, {_fmt(others[other][0])} ({LOSS_UNIT})"
    )
    used = set().union(*(configs for _, configs in cells.values()))
    stat = focus - extreme(list(others.values()), axis=0)
    return _decide(key, stat, ctx, used, detail)


def _hardest(ctx: _Context) -> Outcome:
    """Finding 2a: in-domain loss of 0 nm minus the hardest other pretraining domain."""
    reason = _in_focus(ctx)
    return (
        _undecidable(reason)
        if reason
        else _versus_others(ctx, "2a", _own(ctx), True, "in-domain loss")
    )


def _generalisation(ctx: _Context) -> Outcome:
    """Finding 2b: G_OOD of 0 nm against the other pretraining domains, on unseen domains."""
    reason = _in_focus(ctx)
    if reason:
        return _undecidable(reason)
    unseen = [e for e in ctx.pretrain.keys if e not in ctx.data.pretrain_domains]
    if not unseen:
        return _undecidable("no eval domain outside every pretraining domain")
    gaps = _per_domain(ctx, unseen, lambda values: values[:, :, 1:].mean(axis=2) - values[:, :, 0])
    return _versus_others(ctx, "2b", gaps, False, f"G_OOD on {', '.join(unseen)} nm")


def _asymmetry(ctx: _Context) -> Outcome:
    """Finding 2c: transfer asymmetry of 0 nm over the transfer settings of both directions."""
    reason = _in_focus(ctx) or _sides(ctx, "transfer")
    if reason:
        return _undecidable(reason)
    own, tr = _own(ctx), ctx.transfer
    asym, used, partners = [], set(), []
    for b in ctx.data.pretrain_domains:
        if b == IN_FOCUS or b not in own or IN_FOCUS not in own:
            continue
        forward, back = _pair(IN_FOCUS, b), _pair(b, IN_FOCUS)
        settings = [
            set(tr.configs.filter(w).get_column("setting").to_list()) for w in (forward, back)
        ]
        shared = pl.col("setting").is_in(list(settings[0] & settings[1]))
        t_fwd, fwd_configs = tr.median(forward & shared, "target")
        t_back, back_configs = tr.median(back & shared, "target")
        if t_fwd is None or t_back is None:
            continue
        asym.append((t_fwd - own[b][0]) - (t_back - own[IN_FOCUS][0]))
        used |= fwd_configs | back_configs | own[b][1] | own[IN_FOCUS][1]
        partners.append(b)
    if not asym:
        why = "transfer models between 0 nm and another pretraining domain, in both directions"
        decide = "0 nm and another pretraining domain in domains.transfer"
        return _undecidable(ctx.data.missing("transfer", why, decide))
    detail = f"mean over {', '.join(partners)} nm"
    return _decide("2c", np.mean(asym, axis=0), ctx, used, detail)


def _mixture(ctx: _Context) -> Outcome:
    """Finding 3: unfrozen transfer against the mixture with the same target images, per pair."""
    reason = _sides(ctx, "baseline", "transfer")
    if reason:
        return _undecidable(reason)
    tr, mix = ctx.transfer, ctx.baseline
    unfrozen = (pl.col("freeze") == "none") & (pl.col("n_transfer") > 0)
    rel, counts, used = [], set(), set()
    pairs = mix.configs.select("pretrain_domain", "transfer_domain").unique().sort(pl.all())
    for a, b in pairs.iter_rows():
        n_mix = set(mix.configs.filter(_pair(a, b)).get_column("n_transfer").to_list())
        n_tr = set(tr.configs.filter(_pair(a, b) & unfrozen).get_column("n_transfer").to_list())
        shared = {n for n in n_mix & n_tr if n}
        if not shared:
            continue
        n_target = min(shared)
        same = pl.col("n_transfer") == n_target
        t, t_configs = tr.median(_pair(a, b) & unfrozen & same, "target")
        m, m_configs = mix.median(_pair(a, b) & same, "target")
        rel.append(t / m - 1)
        counts.add(n_target)
        used |= t_configs | m_configs
    if not rel:
        return _undecidable(
            "no unfrozen transfer and mixture models with the same target count of one pair"
        )
    detail = f"{len(rel)} pairs at {', '.join(map(str, sorted(counts)))} target images"
    return _decide("3", np.mean(rel, axis=0), ctx, used, detail)


def holm(p_values: np.ndarray, alpha: float) -> np.ndarray:
    """Holm's step-down rejections of ``p_values`` at family-wise level ``alpha``."""
    order = np.argsort(p_values, kind="stable")
    thresholds = alpha / (len(p_values) - np.arange(len(p_values)))
    passed = np.cumprod(p_values[order] <= thresholds).astype(bool)
    reject = np.zeros(len(p_values), bool)
    reject[order] = passed
    return reject


def _shifts(ctx: _Context) -> tuple[np.ndarray, list[set[int]]]:
    """Per (pretrain, target) pair: OOD spread after transfer minus before, ``(pairs, n_boot + 1)``,
    and the configurations of each pair.

    The spread is over the eval domains outside 0 nm (defocus studies) and both training
    domains; P and T are medians over configurations of replicate means, as elsewhere.
    """
    pre, rng, pairs = ctx.pretrain, ctx.rng(4), ["pretrain_domain", "transfer_domain"]
    excluded = {IN_FOCUS} if ctx.data.study == "defocus" else set()
    wide = wide_losses(ctx.data.phase("transfer"), pre.keys, pairs)
    shifts, used, before = [], [], {}
    for (a, b), models in sorted(
        wide.partition_by(pairs, as_dict=True).items() if wide is not None else []
    ):
        columns = [e for e in pre.keys if e not in excluded | {a, b}]
        if len(columns) < 2 or a not in ctx.data.pretrain_domains:
            continue
        if a not in before:
            values, configs = pre.select(_pair(a))
            before[a] = (np.median(values, axis=1) if configs else None, configs)
        p_median, p_configs = before[a]
        if not p_configs:
            continue
        values = models.select(columns).to_numpy().astype(np.float64)
        groups = models.get_column("config").to_numpy()
        draws = group_means(values, groups, ctx.n_boot, rng, ctx.unbiased)
        t_median = np.median(draws, axis=1)
        p_columns = p_median[:, [pre.keys.index(e) for e in columns]]
        shifts.append(np.std(t_median, axis=1) - np.std(p_columns, axis=1))
        used.append(p_configs | set(groups.tolist()))
    return np.array(shifts), used


def spread_verdict(
    shift: np.ndarray, reject: np.ndarray, test: str
) -> tuple[float, float, str, str]:
    """Finding 4's interval, verdict and reason from each pair's change of OOD spread.

    ``shift``: each pair's point estimate; ``reject``: whether its change is significant;
    ``test``: how significance was judged (for the reason). The interval runs from the
    share of pairs growing significantly to one minus the share shrinking significantly.
    """
    grow, shrink = reject & (shift > 0), reject & (shift < 0)
    low, high = float(np.mean(grow)), 1 - float(np.mean(shrink))
    detail = (
        f"of {len(shift)} pairs, {int(grow.sum())} grow and {int(shrink.sum())} shrink "
        f"significantly ({test})"
    )
    if low > 0 and high < 1:
        verdict, why = "agrees", "some pairs grow and others shrink"
    elif low >= 1 or high <= 0:
        verdict, why = "disagrees", "every pair moves the same way"
    else:
        verdict, why = "undecidable", "no significant change in one of the directions"
    return low, high, verdict, f"{detail}: {why}"


def _spread(ctx: _Context) -> Outcome:
    """Finding 4: does the OOD spread grow for some pairs and shrink for others?"""
    reason = _sides(ctx, "transfer", "pretrain")
    if reason:
        return _undecidable(reason)
    shift, parts = _shifts(ctx)
    if not len(shift):
        return _undecidable(
            "no pair with replicated transfer and pretraining models on two eval domains"
        )
    used = set().union(*parts)
    estimate, n_models = float(np.mean(shift[:, 0] > 0)), ctx.data.n_models(used)
    keep = {"draws": shift, "configs": frozenset(used), "parts": tuple(map(frozenset, parts))}
    if ctx.ci is None or ctx.n_boot < 2:
        reason = f"{len(shift)} pairs; no interval requested (ci=None)"
        return Outcome(estimate, None, None, n_models, "undecidable", reason, **keep)
    reps = shift[:, 1:]
    p = np.minimum(1.0, 2 * np.minimum(np.mean(reps <= 0, axis=1), np.mean(reps >= 0, axis=1)))
    reject = holm(p, 1 - ctx.ci)
    test = f"Holm, family-wise {1 - ctx.ci:.0%}"
    low, high, verdict, reason = spread_verdict(shift[:, 0], reject, test)
    return Outcome(estimate, low, high, n_models, verdict, reason, **keep)


def _paired(means: ConfigMeans, frozen: str, key: str) -> tuple[np.ndarray | None, set[int]]:
    """Means with ``freeze == frozen`` over those of the same ``key`` with ``"none"``.

    Returns ``((n_boot + 1, n_pairs) ratios, configurations)``, or ``(None, set())``.
    """
    arms = [means.configs.filter(pl.col("freeze") == f).select(key, "index", "config")
            for f in (frozen, "none")]  # fmt: skip
    both = arms[0].join(arms[1], on=key, suffix="_none").sort(key)
    if not both.height:
        return None, set()
    ratio = (
        means.values[:, both.get_column("index").to_numpy(), 0]
        / means.values[:, both.get_column("index_none").to_numpy(), 0]
    )
    return ratio, set(both.get_column("config").to_list()) | set(
        both.get_column("config_none").to_list()
    )


def _freezing_cost(frozen: str, key: str) -> Callable[[_Context], Outcome]:
    """Findings 5a (decoder) and 5b (encoder): the paired relative cost in target loss."""

    def finding(ctx: _Context) -> Outcome:
        reason = _sides(ctx, "transfer")
        if reason:
            return _undecidable(reason)
        if not ctx.transfer.configs.filter(pl.col("freeze") == frozen).height:
            what, decide = f"{frozen}-frozen transfer models", f"{frozen} in transfer.freeze"
            return _undecidable(ctx.data.missing("transfer", what, decide))
        ratio, used = _paired(ctx.transfer, frozen, "unfrozen")
        if ratio is None:
            return _undecidable(f"no {frozen}-frozen transfer model with an unfrozen counterpart")
        detail = f"{ratio.shape[1]} paired configurations"
        return _decide(key, np.mean(ratio - 1, axis=1), ctx, used, detail)

    finding.__doc__ = f"Finding {key}: the paired relative cost of freezing the {frozen}."
    return finding


def _time_saving(ctx: _Context) -> Outcome:
    """Finding 5c: the paired relative saving of seconds per epoch from freezing the encoder."""
    if not ctx.data.has_seconds:
        return _undecidable("no train_seconds")
    transfer = ctx.data.phase("transfer").filter(pl.col("seconds_per_epoch").is_not_null())
    if not transfer.filter(pl.col("freeze") == "encoder").height:
        return _undecidable(
            ctx.data.missing(
                "transfer",
                "encoder-frozen transfer models with times",
                "encoder in transfer.freeze",
            )
        )
    device = [c for c in _DEVICE if c in transfer.columns]
    per_model = _code(transfer.unique("model_id"), ["unfrozen", *device], "pair")
    per_model = _code(per_model, ["pair", "freeze"], "group").select(
        "model_id", "freeze", "pair", source=pl.col("config"), config=pl.col("group"),
        eval_domain=pl.lit("seconds"), loss=pl.col("seconds_per_epoch"),
    )  # fmt: skip
    info = per_model.select("config", "freeze", "pair").unique()
    means = config_means(per_model, ["seconds"], ctx.n_boot, ctx.rng(9), info, ctx.unbiased)
    ratio, used = _paired(means, "encoder", "pair") if means else (None, set())
    if ratio is None:
        return _undecidable("no encoder-frozen transfer model with an unfrozen counterpart")
    models = per_model.filter(pl.col("config").is_in(list(used)))
    detail = f"{ratio.shape[1]} paired configurations" + (" (same device)" if device else "")
    configs = set(models.get_column("source").to_list())
    return _decide("5c", np.mean(1 - ratio, axis=1), ctx, configs, detail, models.height)


_FINDINGS: dict[str, Callable[[_Context], Outcome]] = {
    "1": _dependence,
    "2a": _hardest,
    "2b": _generalisation,
    "2c": _asymmetry,
    "3": _mixture,
    "4": _spread,
    "5a": _freezing_cost("decoder", "5a"),
    "5b": _freezing_cost("encoder", "5b"),
    "5c": _time_saving,
}


@dataclass(frozen=True)
class Evaluation:
    """Every finding's :class:`Outcome` on one table (:func:`evaluate`), with what it rests on.

    Attributes
    ----------
    outcomes
        Finding key -> its outcome, keys in :data:`FINDING_KEYS` order.
    configs
        One row per replicated configuration: ``config`` (the code of
        :attr:`Outcome.configs`), ``n_models``, ``phase``, the domains, learning rates,
        image counts and ``freeze``.
    """

    outcomes: dict[str, Outcome]
    configs: pl.DataFrame
    context: _Context = field(repr=False)

    @cached_property
    def _located(self) -> dict[int, tuple[ConfigMeans, int]]:
        """Configuration code -> the shared means holding it and its index there."""
        located = {}
        for means in (self.context.pretrain, self.context.transfer, self.context.baseline):
            if means is not None:
                codes = means.configs.select("config", "index").iter_rows()
                located |= {int(c): (means, int(i)) for c, i in codes}
        return located

    def config_draws(self, config: int) -> np.ndarray | None:
        """``(n_boot + 1, k)``: the shared bootstrap replicates of a configuration's means
        (a pretrain configuration on every eval domain, a transfer or mixture configuration
        on its target), row 0 the means; ``None`` for a configuration outside them."""
        found = self._located.get(config)
        return None if found is None else found[0].values[:, found[1], :]


def evaluate(
    table: pl.DataFrame | pl.LazyFrame,
    ci: float | None = 0.95,
    n_boot: int = 1000,
    boot_seed: int = 0,
    unbiased: bool = False,
    keys: Sequence[str] = FINDING_KEYS,
) -> Evaluation:
    """Every finding's outcome (of ``keys``), with its bootstrap replicates and configurations.

    What :func:`hrtem_ray.analysis.verdicts.findings` tabulates; ``unbiased`` resamples each configuration's
    replicates spread as :func:`hrtem_ray.analysis.replicates.group_means` says (the
    sequential rule of adaptive studies, :mod:`hrtem_ray.analysis.sequential`). With
    ``ci=None`` every outcome keeps its replicates (``n_boot`` of them) but no verdict.
    """
    ctx = _context(_prepare(table), ci, n_boot, boot_seed, unbiased)
    outcomes = {key: _FINDINGS[key](ctx) for key in keys}
    return Evaluation(outcomes, ctx.data.configs, ctx)
