"""The study sections of a spec: domain roles, the trial grids, training and resources.

:class:`StudySpec` is a whole study (``sweeps/laptop.yaml``): its ``dataset``
section (:class:`~hrtem_ray.spec.dataset.DatasetSpec`) and the sections read by
``hrtem-ray sweep``: ``domains`` (:class:`DomainsSpec`), the ``pretrain``,
``transfer`` and ``baseline`` grids, ``training``, ``model``, ``resources`` and
``storage``. Its checks tie the sections together: the roles name known domains,
the grids ask for no more images than the dataset has, the baseline's mixtures
differ and can match their transfer counterparts, and trained images are a multiple of
:data:`MODEL_STRIDE_PX`. The ``training`` section chooses fixed epochs or early stopping.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from hrtem_ray.spec.adaptive import FINDING_KEYS, IN_FOCUS, AdaptiveSpec
from hrtem_ray.spec.base import SpecModel
from hrtem_ray.spec.dataset import DatasetSpec
from hrtem_ray.spec.names import check_safe_name
from hrtem_ray.spec.types import Freeze, ModelSpec, output_gpts

#: The U-Net halves the image five times: trained images must be multiples of this.
MODEL_STRIDE_PX = 32


class DomainsSpec(SpecModel):
    """Which dataset domains pretrain, receive transfer and are evaluated (default: all)."""

    pretrain: list[str] | None = None
    transfer: list[str] | None = None
    eval: list[str] | None = None
    #: Domains imported with ``hrtem-ray import`` that the roles above may name; checked
    #: against the dataset directory (present, with masks, enough tiles) before a sweep
    #: (:func:`hrtem_ray.dataset.micrographs.check_spec_imports`).
    imported: list[str] = Field(default_factory=list)

    @field_validator("imported")
    @classmethod
    def _imported_safe(cls, value: list[str]) -> list[str]:
        return cls._non_empty_safe(value) if value else value

    @field_validator("pretrain", "transfer", "eval")
    @classmethod
    def _non_empty_safe(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("needs at least one domain (omit the field for all domains)")
        for label in value:
            check_safe_name(label)
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate domains in {value}")
        return value


PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]


def _replicate_seeds(value: list[int]) -> list[int]:
    """Check a grid's ``seeds``: at least one, no repeats (a repeat is the same model)."""
    if not value:
        raise ValueError(
            "needs at least one seed (integers in [0, 2**63); e.g. [0, 1, 2] for three replicates)"
        )
    repeated = sorted({s for s in value if value.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds {repeated} repeat: each replicate needs a seed of its own")
    return value


def _unit_fraction(value: float) -> float:
    """Check a target fraction of a mixture: within [0, 1]."""
    if not 0 <= value <= 1:
        raise ValueError("outside [0, 1]; allowed: 0 (source images only) to 1 (target only)")
    return value


#: Replicate seeds of a grid: at least one, all different.
Seeds = Annotated[list[Seed], AfterValidator(_replicate_seeds)]
#: A mixture's share of target images, in [0, 1].
TargetFraction = Annotated[float, AfterValidator(_unit_fraction)]


#: Loss functions of a training stage (``training.loss``): ``cross_entropy`` on the logits
#: (the default), or ``softmax_cross_entropy``, the reference study's: cross-entropy applied
#: to the network's softmax outputs ("double softmax", floor ln(1 + e^-1) for hard labels).
#: See :func:`hrtem_ray.learning.train.loss_floor`.
LossFunction = Literal["cross_entropy", "softmax_cross_entropy"]
LOSS_FUNCTIONS: tuple[str, ...] = ("cross_entropy", "softmax_cross_entropy")
#: Pretraining protocols of transfer models (``transfer.parents``): ``shared``, one pretrain
#: model per pretrain-grid configuration whose checkpoint all its transfer children start
#: from; ``per_model``, the reference study's, a pretraining run of its own (own seed, see
#: :func:`hrtem_ray.sweep.trials.per_model_seed`) for every transfer model.
ParentsProtocol = Literal["shared", "per_model"]
#: What a mixture baseline holds equal to its transfer counterpart (``baseline.match``):
#: ``images``, each mixture trains ``training.epochs`` over its own images (total images of
#: the pretraining set with the fractions form); ``steps``, each mixture trains as many
#: optimizer steps as its transfer counterpart in both stages together
#: (:func:`hrtem_ray.sweep.trials.mixture_steps`).
BaselineMatch = Literal["images", "steps"]
#: The target fractions of a mixture baseline without ``fractions`` or ``mixtures``: the
#: reference study's (every phase 512 images; 0 is source-only, 1 target-only).
DEFAULT_TARGET_FRACTIONS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Epochs of fixed-epoch training when neither ``training.epochs`` nor ``max_epochs`` is given.
DEFAULT_EPOCHS = 10


def _range(value: tuple[float, float]) -> tuple[float, float]:
    """Check a ``[low, high]`` range: finite, low <= high."""
    low, high = value
    if not low <= high:
        raise ValueError(f"needs low <= high, got {list(value)}")
    return value


Range = Annotated[tuple[float, float], AfterValidator(_range)]


class AugmentSpec(SpecModel):
    """Augmentations that real micrographs need and simulations lack (a training stage's).

    Each is applied to a training sample with probability ``probability``, with a
    strength drawn uniformly from its range, after the dihedral symmetry and before the
    image is standardised again (:func:`hrtem_ray.learning.augment.realistic_augment`).
    ``None`` leaves one out. The images are first scaled to [0, 1] per sample.

    Attributes
    ----------
    gamma
        Exponent range of ``x ** gamma`` (drawn log-uniformly), e.g. ``[0.7, 1.4]``.
    contrast
        Range of the factor on deviations from the image's mean, e.g. ``[0.6, 1.4]``.
    gaussian_noise
        Largest std of added Gaussian noise, relative to the image's std.
    poisson_counts
        Range of the mean electrons per pixel at which the image is Poisson-resampled.
    blur_sigma_px
        Range of the std (pixels) of a Gaussian blur.
    scale_jitter
        Largest relative zoom in or out (image and mask alike), e.g. 0.15 for 0.85-1.15.
    flat_field
        Largest relative illumination gradient across the tile (a linear ramp).
    probability
        Chance that each augmentation is applied to a sample.
    """

    gamma: Range | None = None
    contrast: Range | None = None
    gaussian_noise: float | None = Field(default=None, gt=0, le=10)
    poisson_counts: Range | None = None
    blur_sigma_px: Range | None = None
    scale_jitter: float | None = Field(default=None, gt=0, lt=1)
    flat_field: float | None = Field(default=None, gt=0, lt=1)
    probability: float = Field(default=0.5, gt=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data: Any) -> Any:
        """``real`` stands for :data:`REAL_AUGMENT`."""
        if data == "real":
            return dict(REAL_AUGMENT)
        if isinstance(data, str):
            raise ValueError(f"unknown augmentation preset {data!r}; allowed: real, or the fields")
        return data

    @model_validator(mode="after")
    def _ranges_in_bounds(self) -> AugmentSpec:
        bounds = {"gamma": (0.1, 10), "contrast": (0, 10), "poisson_counts": (0.1, 1e6),
                  "blur_sigma_px": (0, 20)}  # fmt: skip
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if value is not None and not (low <= value[0] and value[1] <= high and value[1] > 0):
                raise ValueError(f"{name}: {list(value)} outside [{low:g}, {high:g}]")
        return self

    def key(self) -> str:
        """Canonical JSON of the fields that are set (a trial's ``augment``, the results column)."""
        return self.model_dump_json(exclude_none=True)


#: ``augment: real``: the augmentations for real bright-field micrographs (see README).
REAL_AUGMENT: dict[str, Any] = {
    "gamma": (0.7, 1.4),
    "contrast": (0.6, 1.4),
    "gaussian_noise": 0.3,
    "poisson_counts": (5.0, 100.0),
    "blur_sigma_px": (0.3, 1.5),
    "scale_jitter": 0.15,
    "flat_field": 0.3,
    "probability": 0.5,
}


class PretrainGrid(SpecModel):
    """Pretrain trials: every pretrain domain x ``lr`` x ``n_images`` x ``seeds``.

    Each seed is a replicate (initialisation and data order); under ``transfer.parents:
    shared`` each is a separate parent of its own children. ``augment`` randomises the
    simulated images the way real micrographs differ from them (:class:`AugmentSpec`,
    domain randomisation); recorded in the results (``augment``).
    """

    lr: list[float] = Field(default_factory=lambda: [1e-3, 1e-4], min_length=1)
    n_images: list[PositiveInt] = Field(default_factory=lambda: [512], min_length=1)
    seeds: Seeds = Field(default_factory=lambda: [0, 1, 2])
    augment: AugmentSpec | None = None


class TransferGrid(SpecModel):
    """Transfer trials: every target domain x ``lr`` x ``n_images`` x ``freeze`` per parent.

    Attributes
    ----------
    parents
        ``shared`` (default): the children of one pretrain-grid configuration all start
        from its one pretrain model. ``per_model`` (the reference study's protocol): every
        transfer model gets a pretraining run of its own, with its own seed
        (:func:`hrtem_ray.sweep.trials.per_model_seed`); the pretrain count then equals the
        transfer count, and a pretrain configuration without children keeps its grid model.
    seeds
        Replicates of the transfer stage on each shared parent: the seed of the stage's data
        order, one child per seed (``None``, the default: one child, with its parent's seed).
        Replicates with distinct parents come from ``pretrain.seeds``. Not with
        ``parents: per_model``, where every child already has a parent of its own seeded
        from ``pretrain.seeds``.
    delete_parent_checkpoints
        Delete a parent's checkpoint once all its children's results are stored.
        ``None`` (default): on for ``per_model`` (one checkpoint per transfer model would
        pile up), off for ``shared``; never with ``keep_checkpoints: all``.
    augment
        Augmentations of the transfer stage for real micrographs (:class:`AugmentSpec`,
        or ``real``); recorded in the results (``augment``). ``None``: dihedral only.
    """

    lr: list[float] = Field(default_factory=lambda: [1e-4, 1e-5], min_length=1)
    n_images: list[PositiveInt] = Field(default_factory=lambda: [64, 128, 256, 512], min_length=1)
    freeze: list[Freeze] = Field(
        default_factory=lambda: ["none", "encoder", "decoder"], min_length=1
    )
    parents: ParentsProtocol = "shared"
    seeds: Seeds | None = None
    delete_parent_checkpoints: bool | None = None
    augment: AugmentSpec | None = None

    @model_validator(mode="after")
    def _seeds_need_shared_parents(self) -> TransferGrid:
        if self.seeds is not None and self.parents == "per_model":
            raise ValueError(
                "transfer.seeds: only with transfer.parents: shared; under per_model every "
                "transfer model has a pretraining run of its own, seeded from pretrain.seeds: "
                "replicate with pretrain.seeds"
            )
        return self


class BaselineGrid(SpecModel):
    """Single-stage training on mixtures of a source and a target domain.

    The mixtures are either ``fractions`` (target images / ``n_images``; the default,
    :data:`DEFAULT_TARGET_FRACTIONS`) of a fixed total, or explicit ``mixtures``
    ``[n_source, n_target]``. Fraction 0 is a source-only model, 1 a target-only one; every
    mixture picks its best epoch on the target domain's validation images.

    Attributes
    ----------
    fractions
        Target fractions in [0, 1]; ``n_target = round(fraction * n_images)`` (halves up),
        ``n_source = n_images - n_target``. Fractions that give the same counts are refused.
    n_images
        Images of each fractions-form mixture; default the pretraining size (the one value
        of ``pretrain.n_images``).
    mixtures
        Explicit ``[n_source, n_target]`` pairs instead of ``fractions``; ``n_source`` 0
        trains on target images only (from scratch).
    match
        ``images`` (default): each mixture trains the spec's epochs over its images.
        ``steps``: as many optimizer steps as its transfer counterpart (pretraining on
        ``pretrain.n_images``, transfer on the mixture's target images) in both stages
        together; needs fixed epochs (see :data:`BaselineMatch`).
    pairs
        ``[source, target]`` domain pairs to train mixtures for; default every pair of
        :func:`hrtem_ray.sweep.trials.baseline_pairs` (pretrain x transfer domains).
    augment
        Augmentations of the mixtures (:class:`AugmentSpec`), e.g. the transfer stage's,
        so that a target-only mixture (trained from scratch) sees the same ones.
    """

    fractions: list[TargetFraction] | None = None
    n_images: PositiveInt | None = None
    mixtures: list[tuple[NonNegativeInt, PositiveInt]] | None = None
    match: BaselineMatch = "images"
    lr: list[float] = Field(default_factory=lambda: [1e-3, 1e-4], min_length=1)
    seeds: Seeds = Field(default_factory=lambda: [0, 1, 2])
    pairs: list[tuple[str, str]] | None = None
    augment: AugmentSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_fractions(cls, data: Any) -> Any:
        """Without ``fractions`` and ``mixtures``: the study's fractions."""
        if isinstance(data, Mapping) and all(
            data.get(k) is None for k in ("fractions", "mixtures")
        ):
            return {**data, "fractions": list(DEFAULT_TARGET_FRACTIONS)}
        return data

    @model_validator(mode="after")
    def _one_form(self) -> BaselineGrid:
        if self.fractions is not None and self.mixtures is not None:
            raise ValueError(
                "baseline.fractions and baseline.mixtures exclude each other: give target "
                "fractions of baseline.n_images, or explicit [n_source, n_target] pairs"
            )
        if self.mixtures is not None and self.n_images is not None:
            raise ValueError(
                "baseline.n_images: applies to baseline.fractions only "
                "(baseline.mixtures give their own counts)"
            )
        if self.fractions is not None and not self.fractions:
            raise ValueError("baseline.fractions: needs at least one fraction in [0, 1]")
        if self.mixtures is not None and not self.mixtures:
            raise ValueError("baseline.mixtures: needs at least one [n_source, n_target] pair")
        if self.pairs is not None:
            same = [list(p) for p in self.pairs if p[0] == p[1]]
            if not self.pairs or same or len(set(self.pairs)) != len(self.pairs):
                raise ValueError(
                    f"baseline.pairs: {same or self.pairs} must be distinct [source, target] "
                    "pairs of two different domains (or leave baseline.pairs out: every "
                    "pretrain x transfer pair)"
                )
        return self


def fraction_counts(fractions: list[float], n_images: int) -> list[tuple[int, int]]:
    """``(n_source, n_target)`` of each target fraction of ``n_images`` images.

    ``n_target = floor(fraction * n_images + 1/2)`` (halves round up), ``n_source`` the rest.

    Examples
    --------
    >>> fraction_counts([0, 0.25, 0.5, 0.75, 1], 512)
    [(512, 0), (384, 128), (256, 256), (128, 384), (0, 512)]
    """
    counts = []
    for fraction in fractions:
        n_target = math.floor(fraction * n_images + 0.5)
        counts.append((n_images - n_target, n_target))
    return counts


class TrainingSpec(SpecModel):
    """How every stage trains; ``loss`` is one of :data:`LOSS_FUNCTIONS` (see :data:`LossFunction`).

    Two protocols. Fixed epochs: ``epochs`` (default :data:`DEFAULT_EPOCHS`), today's and
    the reference study's; a ``patience`` with it only judges convergence. Early stopping:
    ``max_epochs`` and ``patience``, training stops once ``patience`` epochs in a row did not
    improve the validation loss by more than ``min_delta`` on the best loss so far
    (:func:`hrtem_ray.learning.train.epochs_without_improvement`), but not before the stage
    has trained ``min_steps`` optimizer steps when given (on a few labelled tiles an epoch
    is one or two steps). Either way the best
    epoch is kept, and a model has ``converged`` when it stopped on patience or its best
    epoch is at least ``patience`` epochs before its last
    (:func:`hrtem_ray.learning.train.has_converged`).

    The best epoch is chosen on the ``val`` images of the model's own training domain;
    ``eval_split`` says which split every reported metric is computed on: ``test`` (images
    no model trained on or was selected with), ``val`` (the reference study's: the best
    validation loss), or ``None`` (default): ``test`` when the dataset has a test split
    (``dataset.n_structures.test``), else ``val``. Imported domains are scored on the
    tiles of their micrographs held out whole (``hrtem-ray import --test-files`` or
    ``--test-fraction``) when they have any, else on ``val`` (the ``eval_split`` column
    says which). ``tta``: score every eval domain with test-time augmentation, the mean
    logits over the 8 rotations and mirror images of each image
    (:func:`hrtem_ray.learning.train.forward`; the ``tta`` column); epochs are still
    chosen without it.

    ``target_images``: which ``n`` images of its target domain a transfer model, a
    mixture baseline and a threshold train on. ``first`` (default; the reference study's):
    the first ``n`` by structure id, the same for every seed; simulated structures are
    drawn at random already. ``random``: ``n`` drawn at random with the trial's seed,
    nested (:func:`hrtem_ray.dataset.readers.drawn_rows`), so a transfer model and a
    baseline of one seed see the same tiles, and replicates differ in which tiles they
    see; a threshold is then fitted once per seed. Use ``random`` for imported domains,
    whose structure ids are tile positions: their first ``n`` are a strip of one
    micrograph.
    """

    epochs: int | None = Field(default=None, ge=1)
    max_epochs: int | None = Field(default=None, ge=1)
    patience: int | None = Field(default=None, ge=1)
    min_delta: float = Field(default=0.0, ge=0)
    min_steps: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr_decay: float = Field(default=0.99, gt=0, le=1)
    n_val: int | None = Field(default=None, ge=1)
    loss: LossFunction = "cross_entropy"
    eval_split: Literal["test", "val"] | None = None
    tta: bool = False
    target_images: Literal["first", "random"] = "first"

    @model_validator(mode="before")
    @classmethod
    def _default_epochs(cls, data: Any) -> Any:
        """Neither ``epochs`` nor ``max_epochs``: :data:`DEFAULT_EPOCHS` fixed epochs."""
        if isinstance(data, Mapping) and all(data.get(k) is None for k in ("epochs", "max_epochs")):
            return {**data, "epochs": DEFAULT_EPOCHS}
        return data

    @model_validator(mode="after")
    def _one_protocol(self) -> TrainingSpec:
        if self.max_epochs is not None:
            if self.epochs is not None:
                raise ValueError(
                    "training.epochs and training.max_epochs exclude each other: epochs trains "
                    "a fixed number of epochs, max_epochs (with patience) stops early"
                )
            if self.patience is None:
                raise ValueError(
                    "training.max_epochs: needs training.patience (early stopping); "
                    "for a fixed number of epochs give training.epochs"
                )
        limit_field = "max_epochs" if self.max_epochs is not None else "epochs"
        if self.patience is not None and self.patience >= self.epoch_limit:
            raise ValueError(
                f"training.patience: {self.patience} must be less than training.{limit_field} "
                f"({self.epoch_limit}); allowed: 1 to {self.epoch_limit - 1} (with a patience "
                "of the whole run no model could converge)"
            )
        if self.min_delta > 0 and self.patience is None:
            raise ValueError("training.min_delta: needs training.patience")
        if self.min_steps is not None and not self.stops_early:
            raise ValueError(
                "training.min_steps: needs early stopping (training.max_epochs and patience); "
                "with training.epochs every stage trains all its epochs"
            )
        return self

    @property
    def stops_early(self) -> bool:
        """Whether training stops on patience (``max_epochs`` given) rather than after ``epochs``."""
        return self.max_epochs is not None

    @property
    def epoch_limit(self) -> int:
        """The most epochs a stage trains: ``max_epochs`` under early stopping, else ``epochs``."""
        return int(self.max_epochs if self.max_epochs is not None else self.epochs)


class ResourcesSpec(SpecModel):
    """Resources per trial; ``gpu`` may be fractional (0.25 packs four trials per GPU)."""

    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)
    max_concurrent_trials: int | None = Field(default=None, ge=1)
    max_failures: int = Field(default=2, ge=0)


class StudySpec(SpecModel):
    """A whole transfer-learning study (see ``sweeps/laptop.yaml``)."""

    name: str = "study"
    dataset: DatasetSpec
    domains: DomainsSpec = Field(default_factory=DomainsSpec)
    pretrain: PretrainGrid | None = Field(default_factory=PretrainGrid)
    transfer: TransferGrid | None = Field(default_factory=TransferGrid)
    baseline: BaselineGrid | None = None
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    storage: str = "out/study"
    keep_checkpoints: Literal["pretrain", "all"] = "pretrain"
    adaptive: AdaptiveSpec | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_safe_name(value)

    @model_validator(mode="after")
    def _grids_fit_dataset(self) -> StudySpec:
        clash = [d for d in self.domains.imported if d in self.dataset.domains]
        if clash:
            raise ValueError(f"domains.imported: {clash} are simulated domains of the dataset")
        allowed = [*self.dataset.domains, *self.domains.imported]
        for role in ("pretrain", "transfer", "eval"):
            chosen = getattr(self.domains, role)
            unknown = [d for d in chosen or [] if d not in allowed]
            if unknown:
                raise ValueError(
                    f"domains.{role}: unknown domains {unknown}; allowed: {', '.join(allowed)} "
                    "(name imported domains in domains.imported too)"
                )
        if self.transfer is not None and self.pretrain is None:
            raise ValueError(
                "transfer needs a pretrain grid (transfer trials start from pretrain models)"
            )
        n_train = self.dataset.images_per_domain("train")
        for field, values in self._simulated_sizes().items():
            too_big = [v for v in values if v > n_train or v < 0]
            if too_big:
                raise ValueError(
                    f"{field}: {too_big} exceed the {n_train} training images per domain "
                    f"(dataset.n_structures.train); allowed: 1 to {n_train}"
                )
        if self.baseline is not None and self.baseline.pairs is not None:
            unknown = sorted({d for p in self.baseline.pairs for d in p} - set(allowed))
            if unknown:
                raise ValueError(
                    f"baseline.pairs: unknown domains {unknown}; allowed: {', '.join(allowed)}"
                )
        if self.training.eval_split == "test" and self.dataset.n_structures.test == 0:
            raise ValueError(
                "training.eval_split: test needs held-out structures, but "
                "dataset.n_structures.test is 0; allowed: val, or a dataset.n_structures.test "
                "of at least 1"
            )
        n_val = self.training.n_val
        if n_val is not None and n_val > self.dataset.images_per_domain("val"):
            raise ValueError(
                f"training.n_val: {n_val} exceeds the {self.dataset.images_per_domain('val')} "
                "validation images per domain (dataset.n_structures.val)"
            )
        for grid in (self.pretrain, self.transfer, self.baseline):
            if grid is not None and any(not (lr > 0 and math.isfinite(lr)) for lr in grid.lr):
                raise ValueError("learning rates must be finite and > 0")
        if (
            self.transfer is not None
            and self.transfer.delete_parent_checkpoints
            and self.keep_checkpoints == "all"
        ):
            raise ValueError(
                "transfer.delete_parent_checkpoints: true contradicts keep_checkpoints: all; "
                "drop one of them"
            )
        if self.pretrain is not None or self.baseline is not None:
            for _, params in self.dataset.groups_structures():
                side = output_gpts(params.cell_angstrom, self.dataset.simulation)
                if side % MODEL_STRIDE_PX:
                    raise ValueError(
                        "dataset.structures.cell_angstrom / dataset.simulation."
                        f"output_sampling_angstrom: images of {side} px; the U-Net needs a "
                        f"multiple of {MODEL_STRIDE_PX} px (e.g. {_nearest_multiple(side)})"
                    )
        return self

    def _simulated_sizes(self) -> dict[str, list[int]]:
        """The training-set sizes that simulated domains must hold, by spec field.

        A grid's sizes apply to the domains of its role; where every such domain is an
        imported one (``domains.imported``), the sizes are checked against the tiles the
        domain holds instead, before the sweep
        (:func:`hrtem_ray.dataset.micrographs.check_spec_imports`), not against
        ``dataset.n_structures.train``.
        """
        imported = set(self.domains.imported)

        def simulated(*roles: str) -> bool:
            domains = {d for role in roles for d in self.domains_for(role)}  # type: ignore[arg-type]
            return bool(domains - imported)

        baseline = self.baseline
        sources, targets = ("pretrain",), ("transfer",)
        if baseline is not None and baseline.pairs is not None:
            src = {p[0] for p in baseline.pairs} - imported
            tgt = {p[1] for p in baseline.pairs} - imported
        else:
            src, tgt = simulated(*sources), simulated(*targets)
        mixtures = [tuple(m) for m in (baseline.mixtures or [])] if baseline else []
        return {
            "pretrain.n_images": list(self.pretrain.n_images)
            if self.pretrain and simulated(*sources)
            else [],
            "transfer.n_images": list(self.transfer.n_images)
            if self.transfer and simulated(*targets)
            else [],
            "baseline.mixtures": [m[0] for m in mixtures if src] + [m[1] for m in mixtures if tgt],
            "baseline.n_images": [baseline.n_images]
            if baseline and baseline.n_images and (src or tgt)
            else [],
        }

    @model_validator(mode="after")
    def _baseline_is_fair(self) -> StudySpec:
        """The mixtures exist, differ, and can match the transfer arm's steps."""
        if self.baseline is None:
            return self
        if self.baseline.fractions is not None:
            total = self.baseline_images()
            counts = fraction_counts(self.baseline.fractions, total)
            for i, count in enumerate(counts):
                if count in counts[:i]:
                    first = self.baseline.fractions[counts.index(count)]
                    raise ValueError(
                        f"baseline.fractions: {first:g} and {self.baseline.fractions[i]:g} give "
                        f"the same mixture ({count[0]} source : {count[1]} target images of "
                        f"{total}); fractions must be at least 1/{total} apart"
                    )
        else:
            mixtures = [tuple(m) for m in self.baseline.mixtures or []]
            repeated = sorted({m for m in mixtures if mixtures.count(m) > 1})
            if repeated:
                raise ValueError(
                    f"baseline.mixtures: {[list(m) for m in repeated]} repeat (the same models)"
                )
        if self.baseline.match == "steps":
            if self.training.stops_early:
                raise ValueError(
                    "baseline.match: steps needs fixed epochs (training.epochs): under early "
                    "stopping the transfer arm's steps are known only once it trained; "
                    "allowed with early stopping: images"
                )
            if self.pretrain is None or len(self.pretrain.n_images) != 1:
                raise ValueError(
                    "baseline.match: steps needs a pretrain grid with one n_images value "
                    "(the transfer counterpart's pretraining set)"
                )
        return self

    @model_validator(mode="after")
    def _adaptive_applies(self) -> StudySpec:
        """Every targeted finding applies; shared parents keep their checkpoints."""
        if self.adaptive is None:
            return self
        if self.pretrain is None:
            raise ValueError("adaptive: needs a pretrain grid (every finding rests on one)")
        needs = self.finding_requirements()
        applicable = [k for k in FINDING_KEYS if needs[k] is None]
        if self.adaptive.findings is None and not applicable:
            raise ValueError("adaptive: no finding applies to this spec's axis and grids")
        for key in self.adaptive.findings or []:
            if needs[key] is not None:
                raise ValueError(
                    f"adaptive.findings: finding {key} does not apply to this spec: "
                    f"{needs[key]}; applicable here: {', '.join(applicable) or 'none'}"
                )
        if (
            self.transfer is not None
            and self.transfer.parents == "shared"
            and self.deletes_parent_checkpoints
        ):
            raise ValueError(
                "transfer.delete_parent_checkpoints: not with adaptive and shared parents: a "
                "later round may add children to any parent, which needs its checkpoint"
            )
        return self

    def finding_requirements(self) -> dict[str, str | None]:
        """Per finding key (:data:`~hrtem_ray.spec.adaptive.FINDING_KEYS`): ``None`` when
        this spec's axis and grids give the models it needs, else what is missing."""
        pre, tr = self.domains_for("pretrain"), self.domains_for("transfer")
        evals = set(self.domains_for("eval"))
        freeze = set(self.transfer.freeze) if self.transfer is not None else set()
        focus = None
        if self.dataset.axis != "defocus":
            focus = f"not a defocus study (axis {self.dataset.axis})"
        elif IN_FOCUS not in pre or len(pre) < 2:
            focus = "needs pretraining on 0 nm and another domain (domains.pretrain)"
        no_transfer = None if self.transfer is not None else "no transfer grid"

        def frozen(mode: str) -> str | None:
            if no_transfer or {mode, "none"} - freeze:
                return f"needs transfer.freeze with {mode} and none"
            return None

        reached = [b for b in tr if len([a for a in pre if a != b]) >= 2 and b in evals]
        pairs = [(a, b) for a in pre for b in tr if a != b]
        unseen = [e for e in evals if e not in pre]
        outside = {IN_FOCUS} if self.dataset.axis == "defocus" else set()
        wide = [p for p in pairs if len(evals - {*p, *outside}) >= 2]
        both_ways = [b for b in pre if b != IN_FOCUS and b in tr and IN_FOCUS in tr]
        return {
            "1": no_transfer
            or (None if reached else "no target reached from two pretraining domains"),
            "2a": focus,
            "2b": focus or (None if unseen else "no eval domain outside the pretraining domains"),
            "2c": focus
            or no_transfer
            or (None if both_ways else "needs transfer between 0 nm and another domain both ways"),
            "3": self._mixture_requirement(),
            "4": no_transfer or (None if wide else "no pair with two other eval domains"),
            "5a": frozen("decoder"),
            "5b": frozen("encoder"),
            "5c": frozen("encoder"),
        }

    def _mixture_requirement(self) -> str | None:
        """Why finding 3 (transfer versus mixture) lacks models, or ``None``."""
        if self.transfer is None or "none" not in self.transfer.freeze:
            return "needs unfrozen transfer (transfer.freeze with none)"
        if self.baseline is None:
            return "needs a baseline grid (mixtures)"
        counts = {n for _, n in self.mixture_counts() if n} & set(self.transfer.n_images)
        if not counts:
            return "no mixture has as many target images as a transfer.n_images value"
        return None

    def baseline_images(self) -> int:
        """Images of each fractions-form mixture: ``baseline.n_images``, or the pretraining size.

        Raises
        ------
        ValueError
            Without ``baseline.n_images`` when the pretraining size is not one value.
        """
        if self.baseline is not None and self.baseline.n_images is not None:
            return self.baseline.n_images
        if self.pretrain is None or len(self.pretrain.n_images) != 1:
            sizes = self.pretrain.n_images if self.pretrain else "no pretrain grid"
            raise ValueError(
                "baseline.n_images: needed with baseline.fractions when the pretraining size "
                f"is not one value (pretrain.n_images: {sizes}); allowed: 1 to "
                f"{self.dataset.images_per_domain('train')}"
            )
        return self.pretrain.n_images[0]

    def mixture_counts(self) -> list[tuple[int, int]]:
        """``(n_source, n_target)`` of every baseline mixture, in spec order (none without one).

        The fractions form gives :func:`fraction_counts` of :meth:`baseline_images`; the
        explicit form its ``mixtures``.
        """
        if self.baseline is None:
            return []
        if self.baseline.mixtures is not None:
            return [(int(a), int(b)) for a, b in self.baseline.mixtures]
        return fraction_counts(list(self.baseline.fractions or []), self.baseline_images())

    @property
    def deletes_parent_checkpoints(self) -> bool:
        """Whether a parent's checkpoint is deleted once its children are stored.

        ``transfer.delete_parent_checkpoints`` when set; by default true for
        ``transfer.parents: per_model`` (unless ``keep_checkpoints: all``), false otherwise.
        """
        if self.transfer is None:
            return False
        if self.transfer.delete_parent_checkpoints is not None:
            return self.transfer.delete_parent_checkpoints
        return self.transfer.parents == "per_model" and self.keep_checkpoints != "all"

    def domains_for(self, role: Literal["pretrain", "transfer", "eval"]) -> list[str]:
        """Domains of a role, in dataset order.

        Default: every simulated domain of the dataset; for ``eval`` also every imported
        domain (``domains.imported``) that ``pretrain`` or ``transfer`` names, so that a
        model is always evaluated on the domain it trained on.
        """
        chosen = getattr(self.domains, role)
        if chosen is not None:
            return list(chosen)
        if role != "eval":
            return list(self.dataset.domains)
        trained = {*(self.domains.pretrain or []), *(self.domains.transfer or [])}
        return [*self.dataset.domains, *(d for d in self.domains.imported if d in trained)]

    def scoring_split(self, domain: str, *, imported_test: bool = False) -> Literal["test", "val"]:
        """The split a model's metrics on ``domain`` are computed on (see :class:`TrainingSpec`).

        ``training.eval_split``, or by default ``test`` when the dataset has held-out
        structures and ``val`` when not. An imported domain is scored on its ``test``
        tiles when it holds any (``imported_test``: micrographs held out whole at import,
        known from the dataset directory, see
        :func:`hrtem_ray.sweep.execute.scoring_splits`) unless ``training.eval_split`` is
        ``val``, and on ``val`` otherwise.
        """
        if domain in self.domains.imported:
            return "test" if imported_test and self.training.eval_split != "val" else "val"
        if self.training.eval_split is not None:
            return self.training.eval_split
        return "test" if self.dataset.n_structures.test > 0 else "val"

    def with_storage(self, storage: str | Path) -> StudySpec:
        """A copy of this spec writing to another storage location."""
        return self.model_copy(update={"storage": str(storage)})


def _nearest_multiple(side: int) -> int:
    return max(MODEL_STRIDE_PX, MODEL_STRIDE_PX * round(side / MODEL_STRIDE_PX))
