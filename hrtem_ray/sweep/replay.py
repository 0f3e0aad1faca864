"""Adaptive rounds without training: replicates drawn from a table, or from a synthetic study.

The rounds of :func:`hrtem_ray.sweep.rounds.run_rounds` only need the results of each
round's models. Here they come from elsewhere:

- :class:`TableSource`: a finished study's table (the reference study's published
  7,200-model table): replicate ``r`` of a configuration is its ``r``-th model in the
  order of ``seed`` (then ``model_id``); a transfer model comes with its parent under
  ``per_model``. This projects how many trainings an adaptive study of the same grid
  would have needed (:func:`replay`).
- :class:`SyntheticStudy`: a laptop-shaped defocus study whose every finding's measure
  is set exactly (:data:`NULL_EFFECTS`: each on its claim's edge, where any verdict is
  false; :data:`TRUE_EFFECTS`: the reference study's effect sizes), with replicate
  noise. It measures the false-decision rate and the power of the sequential rule.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from hrtem_ray.sweep.adaptive import Budget, Design
from hrtem_ray.sweep.rounds import MemoryRounds, Settings, run_rounds
from hrtem_ray.sweep.trials import config_key

_CONFIG_COLUMNS = ("phase", "pretrain_domain", "transfer_domain", "pretrain_lr", "transfer_lr",
                   "n_pretrain", "n_transfer", "freeze")  # fmt: skip


def with_config(table: pl.DataFrame) -> pl.DataFrame:
    """``table`` with ``config``: each row's :func:`~hrtem_ray.sweep.trials.config_key`."""
    keys = table.select(_CONFIG_COLUMNS).unique()
    keys = keys.with_columns(
        config=pl.Series([config_key(*row) for row in keys.iter_rows()], dtype=pl.String)
    )
    return table.join(keys, on=list(_CONFIG_COLUMNS), how="left", nulls_equal=True)


class TableSource:
    """Draw an allocation's models from a finished table (module docstring)."""

    def __init__(self, table: pl.DataFrame) -> None:
        self.table = with_config(table.with_columns(pl.col(pl.Categorical).cast(pl.String)))
        models = self.table.unique("model_id").select("model_id", "config", "phase", "seed",
                                                      "parent_id")  # fmt: skip
        self.models = models.sort("config", "seed", "model_id", nulls_last=True).with_columns(
            rank=pl.int_range(pl.len()).over("config")
        )

    def __call__(self, allocation: Mapping[str, int]) -> pl.DataFrame:
        """The rows of replicates ``0 .. n - 1`` of each configuration, parents included."""
        wanted = pl.DataFrame(
            {"config": list(allocation), "n": list(allocation.values())},
            schema={"config": pl.String, "n": pl.Int64},
        )
        chosen = self.models.join(wanted, on="config").filter(pl.col("rank") < pl.col("n"))
        drawn = chosen.filter(pl.col("phase") != "pretrain")
        parents = set(drawn.get_column("parent_id").drop_nulls().to_list())
        own = (
            self.models.filter((pl.col("phase") == "pretrain") & ~pl.col("model_id").is_in(parents))
            .with_columns(rank=pl.int_range(pl.len()).over("config"))
            .join(wanted, on="config")
            .filter(pl.col("rank") < pl.col("n"))
        )
        ids = set(drawn.get_column("model_id").to_list()) | parents
        ids |= set(own.get_column("model_id").to_list())
        return self.table.filter(pl.col("model_id").is_in(ids)).drop("config")


def replay(
    design: Design,
    source,
    targets: Sequence[str],
    *,
    budget: Budget,
    level: float = 0.95,
    batch: int = 1,
    first_seeds: int = 2,
    max_rounds: int = 6,
    n_boot: int = 1000,
) -> list[dict]:
    """The round records of an adaptive study whose models come from ``source``.

    ``source(allocation)`` returns the results of an allocation's models
    (:class:`TableSource`, :meth:`SyntheticStudy.table`). The rounds are those of
    :func:`hrtem_ray.sweep.rounds.run_rounds`, kept in memory.
    """
    settings = Settings(tuple(targets), level, batch, first_seeds, max_rounds, n_boot, design,
                        budget)  # fmt: skip
    return run_rounds(settings, source, MemoryRounds())


# --------------------------------------------------------------------------- #
# synthetic studies
# --------------------------------------------------------------------------- #
PRETRAIN = ("-10", "0", "10")
TARGETS = ("-10", "0", "5", "10")
EVALS = ("-20", "-10", "0", "5", "10", "20")
UNSEEN = ("-20", "5", "20")
FREEZE = ("none", "encoder", "decoder")
PAIR = ("-10", "5")
N_PRETRAIN, N_TRANSFER = 24, 6
PRETRAIN_LR, TRANSFER_LR = 1e-3, 3e-4
#: Loss of a pretrained model (rows: pretraining domain; columns: :data:`EVALS`), in
#: nats of excess loss, with 2a and 2b at 0: 0 nm as hard in-domain as -10 nm (0.10,
#: 10 nm 0.06), and its G_OOD as low as 10 nm's (0.04, -10 nm 0.07).
PRETRAINED = {
    "-10": (0.14, 0.10, 0.15, 0.18, 0.20, 0.19),
    "0": (0.16, 0.13, 0.10, 0.12, 0.13, 0.14),
    "10": (0.13, 0.11, 0.09, 0.07, 0.06, 0.10),
}
#: Each finding's measure on its claim's edge (no true effect: any verdict is false);
#: ``4``: no pair's OOD spread changes (factor 1 for every pretraining domain).
NULL_EFFECTS = {"1": 0.25, "2a": 0.0, "2b": 0.0, "2c": 0.0, "3": 0.10,
                "4": (1.0, 1.0, 1.0), "5a": 0.05, "5b": 0.0, "5c": 0.15}  # fmt: skip
#: Effects of the reference study's size (its published table: ratio 0.044, 0.037 and
#: -0.030 nats, transfer 4% below the mixture, 3 of 50 pairs growing and 40 shrinking,
#: freezing costs 2.2% and 11.4%), 2c at -0.01 nats and a time saving of 20%.
TRUE_EFFECTS = {"1": 0.044, "2a": 0.037, "2b": -0.030, "2c": -0.01, "3": -0.04,
                "4": (0.7, 1.0, 1.5), "5a": 0.022, "5b": 0.114, "5c": 0.20}  # fmt: skip


@dataclass(frozen=True)
class SyntheticStudy:
    """A laptop-shaped defocus study with each finding's measure set to ``effects``.

    3 pretraining domains (-10, 0, 10 nm), 4 targets (-10, 0, 5, 10 nm), 6 eval domains,
    transfer with 3 freezing modes, one mixture (-10 nm source, 5 nm target, 6 target
    images): 3 + 27 + 1 configurations. A model's loss is its configuration's true loss
    plus a model effect (``model_sd``, the same on every eval domain) and a per-domain
    effect (``row_sd``); its training time per epoch varies by ``seconds_cv``. Replicate
    ``r`` of a configuration is the same model in every call (seeded by ``seed``, the
    configuration and ``r``).
    """

    effects: Mapping[str, object] = field(default_factory=lambda: dict(NULL_EFFECTS))
    model_sd: float = 0.004
    row_sd: float = 0.002
    seconds_cv: float = 0.03
    seed: int = 0

    def design(self) -> Design:
        """The study's :class:`~hrtem_ray.sweep.adaptive.Design` (shared parents)."""
        rows = [dict(zip(_CONFIG_COLUMNS, config, strict=True)) for config in _configs()]
        frame = pl.DataFrame(rows).with_row_index("model_id")
        design = Design.from_table(frame, "shared")
        return Design(design.configs, "shared", 1)  # unlimited replicates

    def means(self) -> dict[str, np.ndarray]:
        """Configuration key -> true loss on each of :data:`EVALS`."""
        e = self.effects
        pre = {a: np.array(v, dtype=float) for a, v in PRETRAINED.items()}
        focus, unseen = EVALS.index("0"), [EVALS.index(u) for u in UNSEEN]
        pre["0"][focus] += e["2a"]
        pre["0"][unseen] += e["2a"] + e["2b"]  # G_OOD of 0 nm: 10 nm's plus 2b
        own = {a: pre[a][EVALS.index(a)] for a in PRETRAIN}
        delta = {}
        for b in TARGETS:
            sources = [a for a in PRETRAIN if a != b]
            mean = np.mean([pre[a][EVALS.index(b)] for a in sources])
            delta |= {(a, b): e["1"] * (pre[a][EVALS.index(b)] - mean) for a in sources}
        others = [b for b in PRETRAIN if b != "0"]
        kappa = np.mean([delta[("0", b)] - delta[(b, "0")] for b in others])
        tau = {b: own.get(b, 0.05) + 0.02 for b in TARGETS}
        tau["0"] += kappa - e["2c"]
        spread = dict(zip(PRETRAIN, e["4"], strict=True))
        out = {}
        for phase, a, b, plr, tlr, n_pre, n_tr, freeze in _configs():
            key = config_key(phase, a, b, plr, tlr, n_pre, n_tr, freeze)
            if phase == "pretrain":
                out[key] = pre[a]
                continue
            unfrozen = tau[b] + delta[(a, b)]
            if phase == "baseline":
                values = pre[a].copy()
                values[EVALS.index(b)] = unfrozen / (1 + e["3"])
                out[key] = values
                continue
            cost = {"none": 1.0, "encoder": 1 + e["5b"], "decoder": 1 + e["5a"]}[freeze]
            values = pre[a] + (spread[a] - 1) * (pre[a] - np.mean(pre[a]))
            values[EVALS.index(b)] = unfrozen * cost
            out[key] = values
        return out

    def table(self, allocation: Mapping[str, int]) -> pl.DataFrame:
        """The results of replicates ``0 .. n - 1`` of each configuration (parents included
        as :class:`~hrtem_ray.sweep.adaptive.Design` counts them)."""
        design, means = self.design(), self.means()
        rows = []
        for key, config in design.configs.items():
            count = design.replicates(allocation, key)
            labels = dict(zip(_CONFIG_COLUMNS, _labels(config, key), strict=True))
            for r in range(count):
                rng = np.random.default_rng([self.seed, zlib.crc32(key.encode()), r])
                loss = (
                    means[key]
                    + rng.normal(0, self.model_sd)
                    + rng.normal(0, self.row_sd, len(EVALS))
                )
                seconds = {"none": 10.0, "encoder": 10.0 * (1 - self.effects["5c"]),
                           "decoder": 9.0}[labels["freeze"]] * (1 + rng.normal(0, self.seconds_cv))  # fmt: skip
                rows += [{**labels, "model_id": f"{key}#{r}", "seed": r, "eval_domain": ev,
                          "loss": float(v), "epochs": 10, "train_seconds": 10 * seconds}
                         for ev, v in zip(EVALS, loss, strict=True)]  # fmt: skip
        return pl.DataFrame(rows, infer_schema_length=None).with_columns(study=pl.lit("defocus"))


def _configs() -> list[tuple]:
    """Every configuration of the synthetic study, as :data:`_CONFIG_COLUMNS` values."""
    out = [("pretrain", a, None, PRETRAIN_LR, None, N_PRETRAIN, None, "none") for a in PRETRAIN]
    out += [("transfer", a, b, PRETRAIN_LR, TRANSFER_LR, N_PRETRAIN, N_TRANSFER, f)
            for a in PRETRAIN for b in TARGETS if a != b for f in FREEZE]  # fmt: skip
    out.append(("baseline", *PAIR[:1], PAIR[1], PRETRAIN_LR, None, N_PRETRAIN - N_TRANSFER,
                N_TRANSFER, "none"))  # fmt: skip
    return out


def _labels(config, key: str) -> tuple:
    """The :data:`_CONFIG_COLUMNS` values of a synthetic configuration."""
    for values in _configs():
        if config_key(*values) == key:
            return values
    raise KeyError(key)


def true_verdicts(effects: Mapping[str, object]) -> dict[str, str]:
    """Each finding's verdict on a synthetic study's true measures (no noise): ``agrees``
    or ``disagrees``, and ``undecidable`` for a measure on its claim's edge."""
    from hrtem_ray.analysis.findings import REGIONS, region_verdict

    study = SyntheticStudy(effects, model_sd=0.0, row_sd=0.0, seconds_cv=0.0)
    design = study.design()
    table = study.table(dict.fromkeys(design.configs, 2))
    from hrtem_ray.analysis.verdicts import findings

    out = {}
    for key, estimate in findings(table, ci=None).select("finding", "estimate").iter_rows():
        on_edge = estimate is None or any(abs(estimate - e) < 1e-9 for e in REGIONS[key])
        out[key] = "undecidable" if on_edge else region_verdict(key, estimate, estimate, "")[0]
    return out


def simulate_studies(
    effects: Mapping[str, object],
    studies: int,
    targets: Sequence[str],
    *,
    budget: Budget,
    first_seed: int = 0,
    **rounds: object,
) -> pl.DataFrame:
    """Adaptive rounds on ``studies`` synthetic studies (seeds ``first_seed ..``).

    Returns one row per study and finding: ``study``, ``finding``, ``verdict`` (final),
    ``round`` (where decided, else null), ``trainings`` (of the whole study when it
    stopped) and ``rounds``. ``rounds``: keyword arguments of :func:`replay`.
    """
    rows = []
    for index in range(first_seed, first_seed + studies):
        study = SyntheticStudy(effects, seed=index)
        records = replay(study.design(), study.table, targets, budget=budget, **rounds)
        last = records[-1]
        for key in targets:
            decided = last["decided"].get(key)
            rows.append({"study": index, "finding": key,
                         "verdict": decided["verdict"] if decided else "undecidable",
                         "round": decided["round"] if decided else None,
                         "trainings": last["trainings"], "rounds": len(records)})  # fmt: skip
    return pl.DataFrame(rows, schema={"study": pl.Int64, "finding": pl.String,
                                      "verdict": pl.String, "round": pl.Int64,
                                      "trainings": pl.Int64, "rounds": pl.Int64})  # fmt: skip
