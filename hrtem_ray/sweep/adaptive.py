"""Adaptive studies: which replicates each round adds, and why (pure planning, no Ray).

An adaptive study trains its grid's configurations in rounds. The first round trains
``adaptive.first_seeds`` seeds of every configuration its targeted findings need
(:meth:`Design.needed`). After each round the findings are looked at with the
sequential rule of :mod:`hrtem_ray.analysis.sequential`. For each finding still open,
:func:`plan_additions` measures each configuration's share of the measure's variance
(:func:`hrtem_ray.analysis.sequential.contributions`) and adds
``adaptive.replicate_batch`` seeds to every configuration carrying more than
:data:`NEGLIGIBLE_SHARE` of it (a share ``v`` of ``n`` replicates shrinks to
``v * n / (n + batch)``); when the budget cannot pay for all of them, those that narrow
an interval most per training go first. The amount added does not depend on how far the
estimate sits from the claim's edge: adding less once an estimate is nearly decided, as
a first version did, made the next look call findings falsely on the synthetic nulls of
``benchmarks/adaptive.py`` (most false decisions came at round 2). The edge enters only
through *futility*: a finding that could not be decided even if the whole remaining
budget went to it, with the most optimistic quantile, gets nothing more; dropping a
finding can only remove false decisions. The rounds stop when every targeted finding is
decided, ``adaptive.max_rounds`` is reached, or nothing more fits the budget.

Replicates are configurations' seeds (:func:`hrtem_ray.sweep.trials.plan_replicates`):
added transfer replicates reuse the existing parents where the protocol shares them
(``transfer.parents: shared``: only a replicate beyond the parents' count trains a new
one, which also serves every other child configuration of that parent) and get parents
of their own under ``per_model``. :class:`Design` counts what each addition costs.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import polars as pl

from hrtem_ray.analysis.sequential import Look, Narrowing, narrowings, percent
from hrtem_ray.spec.adaptive import IN_FOCUS
from hrtem_ray.spec.types import TRAINED_PHASES
from hrtem_ray.sweep.trials import TrialPlan, config_key

#: A configuration's share of a finding's variance below which adding to it is not worth it.
NEGLIGIBLE_SHARE = 0.005


@dataclass(frozen=True)
class Config:
    """One configuration of the grid: the fields of :func:`~hrtem_ray.sweep.trials.config_key`,
    and for a transfer configuration the key of its parents' (pretrain) configuration."""

    key: str
    phase: str
    pretrain_domain: str
    transfer_domain: str | None
    n_transfer: int | None
    freeze: str
    parent: str | None = None


def _config(row: Mapping) -> Config:
    """The :class:`Config` of a trial's or a results row's fields."""
    key = config_key(
        row["phase"], row["pretrain_domain"], row["transfer_domain"], row["pretrain_lr"],
        row["transfer_lr"], row["n_pretrain"], row["n_transfer"], row["freeze"],
    )  # fmt: skip
    parent = None
    if row["phase"] == "transfer":
        parent = config_key(
            "pretrain", row["pretrain_domain"], None, row["pretrain_lr"], None,
            row["n_pretrain"], None, "none",
        )  # fmt: skip
    return Config(
        key, row["phase"], str(row["pretrain_domain"]),
        None if row["transfer_domain"] is None else str(row["transfer_domain"]),
        row["n_transfer"], str(row["freeze"]), parent,
    )  # fmt: skip


@dataclass(frozen=True)
class Design:
    """An adaptive study's configurations and how their replicates are trained.

    Attributes
    ----------
    configs
        Key -> configuration, pretrain first, in plan order.
    parents
        ``shared`` or ``per_model`` (``transfer.parents``).
    per_parent
        Under ``shared``: replicates of a transfer configuration per parent (the number
        of ``transfer.seeds``, else 1).
    capacity
        Most replicates of a configuration, where limited (a replayed table holds only
        so many); unlimited elsewhere.
    """

    configs: dict[str, Config]
    parents: str = "shared"
    per_parent: int = 1
    capacity: dict[str, int] = field(default_factory=dict, compare=False)
    children: dict[str, list[str]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        kids: dict[str, list[str]] = {}
        for config in self.configs.values():
            if config.parent is not None:
                kids.setdefault(config.parent, []).append(config.key)
        self.children.update(kids)

    @classmethod
    def from_plan(cls, plan: TrialPlan, parents: str = "shared", per_parent: int = 1) -> Design:
        """The design of a fixed grid's plan (:func:`~hrtem_ray.sweep.trials.plan_trials`)."""
        configs: dict[str, Config] = {}
        for trial in [*plan.pretrain, *plan.transfer, *plan.baseline]:  # thresholds: no seeds
            configs.setdefault(trial.config, _config(trial.to_dict()))
        return cls(_ordered(configs), parents, per_parent)

    @classmethod
    def from_table(cls, table: pl.DataFrame, parents: str = "per_model") -> Design:
        """The design of a results table's models (a replayed table), each configuration
        limited to the models the table holds."""
        columns = ["phase", "pretrain_domain", "transfer_domain", "pretrain_lr",
                   "transfer_lr", "n_pretrain", "n_transfer", "freeze"]  # fmt: skip
        models = table.select("model_id", *columns).unique("model_id")
        rows = models.group_by(columns).len().sort(columns, nulls_last=True)
        configs, capacity = {}, {}
        for row in rows.iter_rows(named=True):
            config = _config(row)
            configs[config.key] = config
            capacity[config.key] = int(row["len"])
        return cls(_ordered(configs), parents, 1, capacity)

    def room(self, allocation: Mapping[str, int], key: str, batch: int) -> bool:
        """Whether ``batch`` more replicates of ``key`` stay within its capacity."""
        limit = self.capacity.get(key)
        return limit is None or self.replicates(allocation, key) + batch <= limit

    def replicates(self, allocation: Mapping[str, int], key: str) -> int:
        """Models of configuration ``key`` under ``allocation`` (a pretrain configuration's
        include the parents its children need)."""
        own = allocation.get(key, 0)
        if self.configs[key].phase != "pretrain":
            return own
        kids = [allocation.get(c, 0) for c in self.children.get(key, [])]
        if self.parents == "per_model":
            return own + sum(kids)
        return max([own, *(math.ceil(k / self.per_parent) for k in kids)])

    def trainings(self, allocation: Mapping[str, int]) -> dict[str, int]:
        """Trainings per phase of ``allocation`` (parents included)."""
        out = dict.fromkeys(TRAINED_PHASES, 0)
        for key, config in self.configs.items():
            if config.phase == "pretrain":
                out["pretrain"] += self.replicates(allocation, key)
            else:
                out[config.phase] += allocation.get(key, 0)
        return out

    def add(self, allocation: dict[str, int], key: str, batch: int) -> dict[str, int]:
        """Add ``batch`` replicates of ``key`` to ``allocation`` (in place); the trainings
        this costs, per phase."""
        config = self.configs[key]
        if config.phase == "pretrain":
            before = self.replicates(allocation, key)
            allocation[key] = (
                allocation.get(key, 0) + batch if self.parents == "per_model" else before + batch
            )
            return {"pretrain": batch}
        if config.phase == "baseline":
            allocation[key] = allocation.get(key, 0) + batch
            return {"baseline": batch}
        before = self.replicates(allocation, config.parent)
        allocation[key] = allocation.get(key, 0) + batch
        parents = self.replicates(allocation, config.parent) - before
        return {"transfer": batch, "pretrain": parents}

    def needed(self, findings: Sequence[str]) -> list[str]:
        """The configurations the findings' measures rest on, in design order.

        1 and 4: every pretrain and transfer configuration; 2a, 2b: every pretrain
        configuration; 2c: the transfer configurations between 0 nm and another
        pretraining domain, both ways, and those domains' pretrain configurations; 3: per
        pair with mixtures, the unfrozen transfer and the mixtures at the smallest target
        count they share; 5a: transfer with the decoder frozen and unfrozen; 5b, 5c: with
        the encoder frozen and unfrozen.
        """
        configs = list(self.configs.values())
        pre = [c for c in configs if c.phase == "pretrain"]
        tr = [c for c in configs if c.phase == "transfer"]
        domains = {c.pretrain_domain for c in pre}
        keep: set[str] = set()
        for key in findings:
            if key in ("1", "4"):
                keep |= {c.key for c in pre + tr}
            elif key in ("2a", "2b"):
                keep |= {c.key for c in pre}
            elif key == "2c":
                ways = [c for c in tr if IN_FOCUS in (c.pretrain_domain, c.transfer_domain)
                        and {c.pretrain_domain, c.transfer_domain} <= domains]  # fmt: skip
                ends = {d for c in ways for d in (c.pretrain_domain, c.transfer_domain)}
                keep |= {c.key for c in ways} | {c.key for c in pre if c.pretrain_domain in ends}
            elif key == "3":
                keep |= self._mixture_configs()
            else:
                frozen = "decoder" if key == "5a" else "encoder"
                keep |= {c.key for c in tr if c.freeze in (frozen, "none")}
        return [k for k in self.configs if k in keep]

    def _mixture_configs(self) -> set[str]:
        """Finding 3's configurations: per pair, unfrozen transfer and mixtures at the
        smallest target count both have."""
        configs = list(self.configs.values())
        keep: set[str] = set()
        pairs = {(c.pretrain_domain, c.transfer_domain) for c in configs if c.phase == "baseline"}
        for pair in sorted(pairs, key=str):
            mix = [c for c in configs if c.phase == "baseline" and (c.pretrain_domain, c.transfer_domain) == pair]  # fmt: skip
            arm = [c for c in configs if c.phase == "transfer" and c.freeze == "none"
                   and (c.pretrain_domain, c.transfer_domain) == pair]  # fmt: skip
            shared = {c.n_transfer for c in mix} & {c.n_transfer for c in arm} - {0, None}
            if shared:
                n = min(shared)
                keep |= {c.key for c in mix + arm if c.n_transfer == n}
        return keep

    def first_allocation(self, findings: Sequence[str], seeds: int) -> dict[str, int]:
        """The first round: ``seeds`` replicates of every configuration the findings need.

        A needed pretrain configuration gets them as its own models unless its needed
        children's parents already give it that many (always under ``per_model``).
        """
        needed = self.needed(findings)
        allocation = {k: seeds for k in needed if self.configs[k].phase != "pretrain"}
        for key in needed:
            if self.configs[key].phase == "pretrain" and self.replicates(allocation, key) < seeds:
                allocation[key] = seeds
        return dict(sorted(allocation.items(), key=lambda kv: list(self.configs).index(kv[0])))


def _ordered(configs: dict[str, Config]) -> dict[str, Config]:
    """Configurations in phase order (pretrain, transfer, baseline), each phase as given."""
    return {
        key: config
        for phase in TRAINED_PHASES
        for key, config in configs.items()
        if config.phase == phase
    }


@dataclass(frozen=True)
class Budget:
    """What an adaptive study may spend, and how a trial's seconds count.

    ``None``: no limit of that kind. Hours are measured ``train_seconds`` times the
    trial's ``cpu`` (``gpu``) share; ``seconds`` gives the mean measured seconds of a
    training per phase, to project the next round.
    """

    max_models: int | None = None
    max_cpu_hours: float | None = None
    max_gpu_hours: float | None = None
    cpu: float = 1.0
    gpu: float = 0.0

    def spent(self, trainings: int, seconds: float) -> dict[str, float]:
        """``models``, ``cpu_hours`` and ``gpu_hours`` of ``trainings`` trained in ``seconds``."""
        return {
            "models": trainings,
            "cpu_hours": seconds * self.cpu / 3600,
            "gpu_hours": seconds * self.gpu / 3600,
        }

    def fits(self, spent: Mapping[str, float]) -> bool:
        """Whether ``spent`` stays within every limit."""
        limits = (("models", self.max_models), ("cpu_hours", self.max_cpu_hours),
                  ("gpu_hours", self.max_gpu_hours))  # fmt: skip
        return all(limit is None or spent[name] <= limit + 1e-9 for name, limit in limits)

    def text(self) -> str:
        """The limits in words."""
        parts = [f"{name} {value:g}" for name, value in (
            ("max_models", self.max_models), ("max_cpu_hours", self.max_cpu_hours),
            ("max_gpu_hours", self.max_gpu_hours)) if value is not None]  # fmt: skip
        return ", ".join(parts) or "no limit"


@dataclass
class _Ledger:
    """A round's additions as they are chosen: the allocation, spending and their reasons."""

    design: Design
    budget: Budget
    allocation: dict[str, int]
    spent: dict[str, float]
    seconds: Mapping[str, float]
    batch: int

    def cost(self, key: str) -> tuple[dict[str, int], dict[str, float]]:
        """Trainings per phase, and the spending after them, of adding a batch to ``key``."""
        trial = dict(self.allocation)
        by_phase = self.design.add(trial, key, self.batch)
        seconds = sum(n * self.seconds.get(p, 0.0) for p, n in by_phase.items())
        extra = self.budget.spent(sum(by_phase.values()), seconds)
        return by_phase, {k: self.spent[k] + extra[k] for k in self.spent}

    def take(self, key: str) -> dict[str, int] | None:
        """Add a batch to ``key`` if the budget and its capacity allow; the trainings it
        cost, else None."""
        if not self.design.room(self.allocation, key, self.batch):
            return None
        by_phase, after = self.cost(key)
        if not self.budget.fits(after):
            return None
        self.design.add(self.allocation, key, self.batch)
        self.spent = after
        return by_phase


@dataclass(frozen=True)
class Addition:
    """Replicates added to one configuration, for which findings and why."""

    config: str
    replicates: int
    trainings: int
    findings: tuple[str, ...]
    why: str

    def to_dict(self) -> dict:
        return {"config": self.config, "replicates": self.replicates,
                "trainings": self.trainings, "for": list(self.findings), "why": self.why}  # fmt: skip


def _shares(narrowing: Narrowing, keys: Mapping[int, str]) -> dict[str, float]:
    """A narrowing's variance shares by configuration key (negligible ones left out)."""
    floor = NEGLIGIBLE_SHARE * narrowing.variance
    out: dict[str, float] = {}
    for code, share in narrowing.shares.items():
        if share > floor and code in keys:
            out[keys[code]] = out.get(keys[code], 0.0) + share
    return out


def _gain(share: float, n: int, added: int, batch: int) -> float:
    """Variance removed by a batch more of a configuration with ``n`` replicates, ``added`` added."""
    return share * n * (1 / (n + added) - 1 / (n + added + batch))


def _reachable(narrowing: Narrowing, shares: dict[str, float], counts: Mapping[str, int],
               ledger: _Ledger) -> bool:  # fmt: skip
    """Whether the whole remaining budget spent on this finding could bring its variance
    to what decides it at best (:attr:`Narrowing.floor`; greedy by gain per training, on
    a copy of the ledger)."""
    if narrowing.floor <= 0:
        return False
    trial = _Ledger(ledger.design, ledger.budget, dict(ledger.allocation), dict(ledger.spent),
                    ledger.seconds, ledger.batch)  # fmt: skip
    added = dict.fromkeys(shares, 0)
    variance = narrowing.variance
    heap = [
        (-_gain(s, counts[k], 0, trial.batch) / _trainings(trial, k), k) for k, s in shares.items()
    ]
    heapq.heapify(heap)
    while heap and variance > narrowing.floor:
        score, key = heapq.heappop(heap)
        fresh = -_gain(shares[key], counts[key], added[key], trial.batch) / _trainings(trial, key)
        if fresh > score + 1e-15:  # its cost or gain changed: put it back in order
            heapq.heappush(heap, (fresh, key))
            continue
        if trial.take(key) is None:
            continue
        variance -= _gain(shares[key], counts[key], added[key], trial.batch)
        added[key] += trial.batch
        heapq.heappush(heap, (-_gain(shares[key], counts[key], added[key], trial.batch)
                              / _trainings(trial, key), key))  # fmt: skip
    return variance <= narrowing.floor


def _trainings(ledger: _Ledger, key: str) -> int:
    return max(1, sum(ledger.cost(key)[0].values()))


@dataclass(frozen=True)
class RoundPlan:
    """What a round adds: the additions, the allocation after them, futile findings, and
    whether every wanted addition had run out of replicates (``exhausted``: a replayed
    table holds no more) rather than out of budget."""

    additions: list[Addition]
    allocation: dict[str, int]
    futile: dict[str, str]
    projections: dict[str, str]
    exhausted: bool = False


def plan_additions(
    look: Look,
    open_findings: Sequence[str],
    design: Design,
    allocation: Mapping[str, int],
    budget: Budget,
    spent: Mapping[str, float],
    seconds: Mapping[str, float],
    batch: int,
    futile: Mapping[str, str] | None = None,
    *,
    next_alpha: float,
) -> RoundPlan:
    """The replicates to add after ``look`` for the ``open_findings`` (module docstring).

    Parameters
    ----------
    look
        The look just made (:func:`hrtem_ray.analysis.sequential.sequential_look`).
    open_findings
        Targeted findings not decided yet.
    design, allocation
        The study's configurations and the replicates trained so far.
    budget, spent, seconds
        The limits, what was spent (:meth:`Budget.spent`) and the mean seconds of a
        training per phase.
    batch
        Replicates added to a configuration (``adaptive.replicate_batch``).
    futile
        Findings found futile at earlier rounds: they stay so (and get nothing).
    next_alpha
        The error rate of the next look (:meth:`~hrtem_ray.analysis.sequential.Schedule.alpha`).
    """
    keys = {int(row["config"]): config_key(
        row["phase"], row["pretrain_domain"], row["transfer_domain"], row["pretrain_lr"],
        row["transfer_lr"], row["n_pretrain"], row["n_transfer"], row["freeze"],
    ) for row in look.configs.iter_rows(named=True)}  # fmt: skip
    keys = {code: key for code, key in keys.items() if key in design.configs}
    counts = {key: design.replicates(allocation, key) for key in design.configs}
    ledger = _Ledger(design, budget, dict(allocation), dict(spent), seconds, batch)
    futile = dict(futile or {})
    wanted: dict[str, dict[str, float]] = {}  # config -> finding -> relative gain
    projections: dict[str, str] = {}
    found = narrowings(look, [f for f in open_findings if f not in futile], next_alpha, batch)
    for finding in [f for f in open_findings if f not in futile]:
        mine = [n for n in found if n.finding == finding]
        if not mine:
            futile[finding] = f"no interval: {look.findings[finding].reason}"
        for narrowing in mine:
            shares = _shares(narrowing, keys)
            if not shares or not _reachable(narrowing, shares, counts, ledger):
                futile[finding] = _futile_reason(narrowing)
    for narrowing in [n for n in found if n.finding not in futile]:
        shares = _shares(narrowing, keys)
        order = sorted(shares, key=lambda k: (-_gain(shares[k], counts[k], 0, batch)
                                              / _trainings(ledger, k), k))  # fmt: skip
        variance = narrowing.variance
        for key in order:
            gain = _gain(shares[key], counts[key], 0, batch)
            variance -= gain
            wanted.setdefault(key, {})
            relative = gain / narrowing.variance
            wanted[key][narrowing.finding] = max(wanted[key].get(narrowing.finding, 0), relative)
        projections[narrowing.finding] = (
            f"finding {narrowing.finding}: se {math.sqrt(narrowing.variance):.3g} -> "
            f"{math.sqrt(max(variance, 0)):.3g} projected; decides at "
            f"{math.sqrt(narrowing.required):.3g} (next look at {percent(1 - next_alpha)})"
        )
    ranked = sorted(wanted, key=lambda k: (-max(wanted[k].values()) / _trainings(ledger, k), k))
    additions, full = [], 0
    for key in ranked:
        full += not design.room(ledger.allocation, key, batch)
        by_phase = ledger.take(key)
        if by_phase is None:
            continue
        reasons = ", ".join(
            f"{f} ({g:.0%} of its variance)" for f, g in sorted(wanted[key].items())
        )
        additions.append(Addition(key, batch, sum(by_phase.values()), tuple(sorted(wanted[key])),
                                  f"narrows {reasons}"))  # fmt: skip
    exhausted = bool(ranked) and full == len(ranked)
    return RoundPlan(additions, ledger.allocation, futile, projections, exhausted)


def _futile_reason(narrowing: Narrowing) -> str:
    if narrowing.floor <= 0:
        return "its estimate sits on the claim's edge: no number of replicates decides it"
    return (
        f"its interval (se {math.sqrt(narrowing.variance):.3g}) would need se "
        f"{math.sqrt(narrowing.floor):.3g} or less to clear the edge: more than the budget "
        "left buys"
    )
