"""The trials of a study: pretrain, transfer (children of a pretrain model) and mixture baselines.

Pure planning, no Ray: :func:`plan_trials` expands a :class:`~hrtem_ray.config.StudySpec`
into :class:`Trial` records with stable ids, so that the same configuration and
seed always get the same ``model_id`` (resumed sweeps cannot duplicate rows).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from dataclasses import asdict, dataclass, field

from hrtem_ray.config import StudySpec
from hrtem_ray.specs import N_SYMMETRIES, PHASES, Freeze, Phase

__all__ = [
    "PHASES",
    "Phase",
    "Trial",
    "TrialPlan",
    "baseline_pairs",
    "dry_run",
    "plan_trials",
    "trial_context",
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


def trial_context(spec: StudySpec) -> dict:
    """Everything besides the trial's own fields that determines the trained model."""
    return {
        "study": spec.name,
        "axis": spec.dataset.axis,
        "dataset": spec.dataset.content_hash(),
        "model": spec.model.model_dump(mode="json"),
        "training": spec.training.model_dump(mode="json"),
        "eval": spec.domains_for("eval"),
    }


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


def plan_trials(spec: StudySpec) -> TrialPlan:
    """Expand a study into its trials (pretrain, transfer, baseline), in a fixed order."""
    ctx = trial_context(spec)
    pre_domains = spec.domains_for("pretrain")
    tr_domains = spec.domains_for("transfer")
    pretrain: list[Trial] = []
    transfer: list[Trial] = []
    if spec.pretrain is not None:
        grid = spec.pretrain
        for domain, lr, n, seed in itertools.product(
            pre_domains, grid.lr, grid.n_images, grid.seeds
        ):
            pretrain.append(
                _identify(
                    Trial("pretrain", domain, None, lr, None, n, None, "none", seed, None), ctx
                )
            )
    if spec.transfer is not None:
        grid = spec.transfer
        for parent in pretrain:
            targets = [d for d in tr_domains if d != parent.pretrain_domain]
            for target, lr, n, freeze in itertools.product(
                targets, grid.lr, grid.n_images, grid.freeze
            ):
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
                transfer.append(_identify(child, ctx))
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


def dry_run(spec: StudySpec) -> str:
    """Trial counts per phase and the images each trial trains on, without running anything.

    Parameters
    ----------
    spec
        The validated study.

    Returns
    -------
    str
        Lines: ``study NAME (AXIS): N pretrain, N transfer, N baseline, N models in all``,
        the result rows, then per phase the training-set sizes (``count x images``) and the
        augmented image passes (images x dihedral symmetries x epochs).
    """
    # Lazy: the constant's module imports torch, and planning stays import-light.

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
        passes = sum(t.n_train_images for t in trials) * N_SYMMETRIES * epochs
        lines.append(
            f"{phase}: {len(trials)} trials training on images per trial: {detail} "
            f"({passes:,} augmented image passes over {epochs} epochs)"
        )
    return "\n".join(lines)
