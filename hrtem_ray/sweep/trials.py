"""The trials of a study: pretrain, transfer (children of a pretrain model) and mixture baselines.

Pure planning, no Ray: :func:`plan_trials` expands a :class:`~hrtem_ray.spec.study.StudySpec`
into :class:`Trial` records with stable ids, so that the same configuration and
seed always get the same ``model_id`` (resumed sweeps cannot duplicate rows).

Pretraining protocols (``transfer.parents``)
--------------------------------------------
``shared`` (default)
    One pretrain model per pretrain-grid configuration (domain x lr x n_images x seed);
    all its transfer children start from its checkpoint. The defocus preset's grid: 30
    pretrain + 7,200 transfer trainings.
``per_model`` (the reference study's protocol)
    Every transfer model gets a pretraining run of its own: the same pretrain
    configuration with its own seed, :func:`per_model_seed` of the grid seed and the
    child's transfer settings. The defocus preset: 7,200 pretrain + 7,200 transfer
    trainings. A pretrain configuration without any child keeps its one grid model.

Both protocols train the same transfer models (same settings); ``shared`` saves
``n_transfer_models - n_pretrain_configurations`` pretraining runs, which
:func:`dry_run` prints as training passes for both protocols. The per-model parents
are independent, so the pretrain statistics rest on one model per transfer model and
transfer medians are not correlated through shared parents.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from dataclasses import asdict, dataclass, field

from hrtem_ray.spec.study import StudySpec
from hrtem_ray.spec.types import N_SYMMETRIES, PHASES, Freeze, Phase

__all__ = [
    "PHASES",
    "Phase",
    "Trial",
    "TrialPlan",
    "baseline_pairs",
    "dry_run",
    "per_model_seed",
    "plan_trials",
    "trial_context",
    "training_passes",
]


@dataclass(frozen=True)
class Trial:
    """One model to train. Field meanings follow the results table (docs/results_schema.md)."""

    phase: Phase
    pretrain_domain: str
    transfer_domain: str | None
    pretrain_lr: float
    transfer_lr: float | None
    n_pretrain: int
    n_transfer: int | None
    freeze: Freeze
    seed: int
    parent_id: str | None
    config_hash: str = field(default="", compare=False)
    model_id: str = field(default="", compare=False)

    @property
    def train_domain(self) -> str:
        """The domain whose validation set selects the best epoch."""
        return self.pretrain_domain if self.phase == "pretrain" else str(self.transfer_domain)

    @property
    def n_train_images(self) -> int:
        """Images the trial's stage trains on (a baseline: source plus target)."""
        if self.phase == "pretrain":
            return self.n_pretrain
        if self.phase == "transfer":
            return int(self.n_transfer or 0)
        return self.n_pretrain + int(self.n_transfer or 0)

    @property
    def lr(self) -> float:
        """Learning rate of the stage this trial trains."""
        return self.transfer_lr if self.phase == "transfer" else self.pretrain_lr

    def describe(self) -> str:
        """A short human-readable description for progress lines."""
        if self.phase == "pretrain":
            return f"pretrain {self.pretrain_domain} lr={self.pretrain_lr:g} n={self.n_pretrain} seed={self.seed}"
        if self.phase == "transfer":
            return (
                f"transfer {self.pretrain_domain}->{self.transfer_domain} lr={self.transfer_lr:g} "
                f"n={self.n_transfer} freeze={self.freeze} seed={self.seed}"
            )
        return (
            f"baseline {self.pretrain_domain}:{self.transfer_domain}={self.n_pretrain}:{self.n_transfer} "
            f"lr={self.pretrain_lr:g} seed={self.seed}"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Trial:
        return cls(**data)


@dataclass(frozen=True)
class TrialPlan:
    """Every trial of a study, grouped by phase."""

    pretrain: list[Trial]
    transfer: list[Trial]
    baseline: list[Trial]

    def all(self) -> list[Trial]:
        return [*self.pretrain, *self.transfer, *self.baseline]

    def children(self) -> dict[str, list[Trial]]:
        """Transfer trials keyed by their parent's model id."""
        out: dict[str, list[Trial]] = {}
        for trial in self.transfer:
            out.setdefault(str(trial.parent_id), []).append(trial)
        return out

    def counts(self) -> dict[str, int]:
        return {p: len(getattr(self, p)) for p in PHASES}


def _identify(trial: Trial, context: dict) -> Trial:
    """Attach ``config_hash`` (full configuration) and ``model_id`` to a trial."""
    fields = {k: v for k, v in asdict(trial).items() if k not in ("config_hash", "model_id")}
    text = json.dumps({"trial": fields, **context}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Trial(**fields, config_hash=digest[:16], model_id=f"{trial.phase}-{digest[:12]}")


#: Fields of ``training`` added after model ids were first derived: they enter the id only
#: when set to something other than this default, so that every existing id stays as it was.
LATER_TRAINING_DEFAULTS = {"loss": "cross_entropy"}


def trial_context(spec: StudySpec) -> dict:
    """Everything besides the trial's own fields that determines the trained model.

    ``training`` holds every field of :class:`~hrtem_ray.spec.study.TrainingSpec` except
    those of :data:`LATER_TRAINING_DEFAULTS` that are at their default (a study with the
    default loss keeps the ids it had before ``training.loss`` existed).
    """
    training = spec.training.model_dump(mode="json")
    for key, default in LATER_TRAINING_DEFAULTS.items():
        if training.get(key) == default:
            training.pop(key)
    return {
        "study": spec.name,
        "axis": spec.dataset.axis,
        "dataset": spec.dataset.content_hash(),
        "model": spec.model.model_dump(mode="json"),
        "training": training,
        "eval": spec.domains_for("eval"),
    }


def per_model_seed(
    seed: int, transfer_domain: str, transfer_lr: float, n_transfer: int, freeze: str
) -> int:
    """The seed of a transfer model's own pretraining run under ``transfer.parents: per_model``.

    The first 60 bits of SHA-256 of the canonical JSON
    ``{"freeze": ..., "n_transfer": ..., "seed": ..., "transfer_domain": ..., "transfer_lr": ...}``
    (keys sorted, no spaces), as an integer in ``[0, 2**60)``. It depends only on the
    grid seed and the child's own transfer settings (not on the grid's size or order), so
    adding a grid value keeps every existing seed and model id. Parent and child both use
    it (initialisation and data order), and it is the ``seed`` column of their rows.

    Parameters
    ----------
    seed
        The pretrain grid's seed (``pretrain.seeds``).
    transfer_domain, transfer_lr, n_transfer, freeze
        The transfer model's settings.

    Returns
    -------
    int
        The derived seed.

    Examples
    --------
    >>> per_model_seed(0, "10", 1e-4, 64, "none") == per_model_seed(0, "10", 1e-4, 64, "none")
    True
    >>> per_model_seed(0, "10", 1e-4, 64, "none") != per_model_seed(1, "10", 1e-4, 64, "none")
    True
    """
    payload = {
        "seed": int(seed),
        "transfer_domain": str(transfer_domain),
        "transfer_lr": float(transfer_lr),
        "n_transfer": int(n_transfer),
        "freeze": str(freeze),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def baseline_pairs(pretrain: list[str], transfer: list[str]) -> list[tuple[str, str]]:
    """Unordered (source, target) pairs for mixture baselines.

    Every pretrain-to-transfer pair without repeats, a pair of two pretraining
    domains counted once (source = the one listed first), e.g. 40 pairs for the
    defocus study's 5 pretraining and 11 transfer defoci.
    """
    seen: set[frozenset[str]] = set()
    pairs = []
    for a in pretrain:
        for b in transfer:
            key = frozenset((a, b))
            if a == b or key in seen:
                continue
            seen.add(key)
            pairs.append(
                (a, b) if b not in pretrain or pretrain.index(a) < pretrain.index(b) else (b, a)
            )
    return pairs


def _pretrain_trial(domain: str, lr: float, n: int, seed: int, ctx: dict) -> Trial:
    """The pretrain trial on ``n`` images of ``domain`` at ``lr`` with ``seed``, identified."""
    return _identify(Trial("pretrain", domain, None, lr, None, n, None, "none", seed, None), ctx)


def _transfer_trial(
    parent: Trial, target: str, lr: float, n: int, freeze: Freeze, ctx: dict
) -> Trial:
    """The child of ``parent`` with the given transfer settings (it inherits the seed), identified."""
    child = Trial(
        "transfer",
        parent.pretrain_domain,
        target,
        parent.pretrain_lr,
        lr,
        parent.n_pretrain,
        n,
        freeze,
        parent.seed,
        parent.model_id,
    )
    return _identify(child, ctx)


def plan_trials(spec: StudySpec) -> TrialPlan:
    """Expand a study into its trials (pretrain, transfer, baseline), in a fixed order.

    Pretrain trials follow the pretrain grid (domain, lr, n_images, seed). Under
    ``transfer.parents: shared`` each is the parent of all its configuration's transfer
    trials (every target but its own domain x lr x n_images x freeze); under
    ``per_model`` each transfer trial gets a parent of its own, seeded with
    :func:`per_model_seed`; the parents are listed in the order of their children (see
    the module docstring).

    Raises
    ------
    ValueError
        If two per-model parents would get the same id (a 60-bit seed collision; never
        observed).
    """
    ctx = trial_context(spec)
    pre_domains = spec.domains_for("pretrain")
    tr_domains = spec.domains_for("transfer")
    configs: list[Trial] = []
    if spec.pretrain is not None:
        grid = spec.pretrain
        for domain, lr, n, seed in itertools.product(
            pre_domains, grid.lr, grid.n_images, grid.seeds
        ):
            configs.append(_pretrain_trial(domain, lr, n, seed, ctx))
    pretrain: list[Trial] = []
    transfer: list[Trial] = []
    per_model = spec.transfer is not None and spec.transfer.parents == "per_model"
    for config in configs:
        targets = [d for d in tr_domains if d != config.pretrain_domain]
        grid = spec.transfer
        settings = (
            list(itertools.product(targets, grid.lr, grid.n_images, grid.freeze))
            if grid is not None
            else []
        )
        if not per_model or not settings:
            pretrain.append(config)
            transfer.extend(_transfer_trial(config, *s, ctx) for s in settings)
            continue
        for target, lr, n, freeze in settings:
            seed = per_model_seed(config.seed, target, lr, n, freeze)
            parent = _pretrain_trial(
                config.pretrain_domain, config.pretrain_lr, config.n_pretrain, seed, ctx
            )
            pretrain.append(parent)
            transfer.append(_transfer_trial(parent, target, lr, n, freeze, ctx))
    if len({t.model_id for t in pretrain}) != len(pretrain):
        raise ValueError("two pretrain trials share a model id (per-model seed collision)")
    baseline: list[Trial] = []
    if spec.baseline is not None:
        grid = spec.baseline
        for (src, tgt), (n_src, n_tgt), lr, seed in itertools.product(
            baseline_pairs(pre_domains, tr_domains), grid.mixtures, grid.lr, grid.seeds
        ):
            baseline.append(
                _identify(
                    Trial("baseline", src, tgt, lr, None, n_src, n_tgt, "none", seed, None), ctx
                )
            )
    return TrialPlan(pretrain, transfer, baseline)


def training_passes(trials: list[Trial], epochs: int) -> int:
    """Augmented image passes of ``trials``: training images x dihedral symmetries x epochs."""
    return sum(t.n_train_images for t in trials) * N_SYMMETRIES * epochs


def _protocol_lines(spec: StudySpec) -> list[str]:
    """Trainings and image passes of ``spec`` under both ``transfer.parents`` protocols.

    One line per protocol, the one of ``spec`` marked ``(this spec)``; the ``shared``
    line also says how much compute shared parents save against ``per_model``.
    """
    if spec.transfer is None:
        return []
    epochs = spec.training.epochs
    totals = {}
    for parents in ("per_model", "shared"):
        variant = spec.model_copy(
            update={"transfer": spec.transfer.model_copy(update={"parents": parents})}
        )
        trials = plan_trials(variant).all()
        totals[parents] = (len(trials), training_passes(trials, epochs))
    (n_per, passes_per), (n_shared, passes_shared) = totals["per_model"], totals["shared"]
    saved = passes_per - passes_shared
    share = saved / passes_per if passes_per else 0.0
    lines = []
    for parents, (n, passes) in totals.items():
        mark = " (this spec)" if parents == spec.transfer.parents else ""
        line = (
            f"transfer.parents: {parents}{mark}: {n:,} trainings, {passes:,} augmented image passes"
        )
        if parents == "shared":
            line += (
                f"; shared parents save {n_per - n_shared:,} pretraining runs, "
                f"{saved:,} passes ({share:.0%})"
            )
        lines.append(line)
    return lines


def dry_run(spec: StudySpec) -> str:
    """Trial counts per phase and the images each trial trains on, without running anything.

    Parameters
    ----------
    spec
        The validated study.

    Returns
    -------
    str
        Lines: ``study NAME (AXIS): N pretrain, N transfer, N baseline, N models in all``
        (scripts read this first line: its form stays), the result rows, per phase the
        training-set sizes (``count x images``) and the augmented image passes (images x
        dihedral symmetries x epochs), then, for a study with transfer trials, the
        trainings and image passes of all phases under each pretraining protocol
        (``transfer.parents: per_model`` and ``shared``), with what shared parents save.
    """
    plan = plan_trials(spec)
    n_eval = len(spec.domains_for("eval"))
    lines = [
        f"study {spec.name} ({spec.dataset.axis}): "
        + ", ".join(f"{n} {phase}" for phase, n in plan.counts().items())
        + f", {len(plan.all())} models in all",
        f"each model is evaluated on {n_eval} eval domains: {len(plan.all()) * n_eval} result rows",
    ]
    epochs = spec.training.epochs
    for phase in PHASES:
        trials = getattr(plan, phase)
        if not trials:
            continue
        sizes = Counter(t.n_train_images for t in trials)
        detail = ", ".join(f"{count} x {images}" for images, count in sorted(sizes.items()))
        lines.append(
            f"{phase}: {len(trials)} trials training on images per trial: {detail} "
            f"({training_passes(trials, epochs):,} augmented image passes over {epochs} epochs)"
        )
    return "\n".join(lines + _protocol_lines(spec))
