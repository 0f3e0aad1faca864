"""The study sections of a spec: domain roles, the trial grids, training and resources.

:class:`StudySpec` is a whole study (``sweeps/laptop.yaml``): its ``dataset``
section (:class:`~hrtem_ray.spec.dataset.DatasetSpec`) and the sections read by
``hrtem-ray sweep``: ``domains`` (:class:`DomainsSpec`), the ``pretrain``,
``transfer`` and ``baseline`` grids, ``training``, ``model``, ``resources`` and
``storage``. Its checks tie the sections together: the roles name known domains,
the grids ask for no more images than the dataset has, and trained images are a
multiple of :data:`MODEL_STRIDE_PX`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

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
Seed = Annotated[int, Field(ge=0, lt=2**63)]


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


class PretrainGrid(SpecModel):
    lr: list[float] = Field(default_factory=lambda: [1e-3, 1e-4], min_length=1)
    n_images: list[PositiveInt] = Field(default_factory=lambda: [512], min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)


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
    delete_parent_checkpoints
        Delete a parent's checkpoint once all its children's results are stored.
        ``None`` (default): on for ``per_model`` (one checkpoint per transfer model would
        pile up), off for ``shared``; never with ``keep_checkpoints: all``.
    """

    lr: list[float] = Field(default_factory=lambda: [1e-4, 1e-5], min_length=1)
    n_images: list[PositiveInt] = Field(default_factory=lambda: [64, 128, 256, 512], min_length=1)
    freeze: list[Freeze] = Field(
        default_factory=lambda: ["none", "encoder", "decoder"], min_length=1
    )
    parents: ParentsProtocol = "shared"
    delete_parent_checkpoints: bool | None = None


class BaselineGrid(SpecModel):
    """Single-stage training on mixtures ``(n_source, n_target)`` of two domains."""

    mixtures: list[tuple[PositiveInt, PositiveInt]] = Field(
        default_factory=lambda: [(128, 384), (256, 256), (384, 128)], min_length=1
    )
    lr: list[float] = Field(default_factory=lambda: [1e-3, 1e-4], min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)


class TrainingSpec(SpecModel):
    """How every stage trains; ``loss`` is one of :data:`LOSS_FUNCTIONS` (see :data:`LossFunction`)."""

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr_decay: float = Field(default=0.99, gt=0, le=1)
    n_val: int | None = Field(default=None, ge=1)
    loss: LossFunction = "cross_entropy"


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
        sizes = {
            "pretrain.n_images": self.pretrain.n_images if self.pretrain else [],
            "transfer.n_images": self.transfer.n_images if self.transfer else [],
            "baseline.mixtures": [max(m) for m in self.baseline.mixtures] if self.baseline else [],
        }
        for field, values in sizes.items():
            too_big = [v for v in values if v > n_train or v < 0]
            if too_big:
                raise ValueError(
                    f"{field}: {too_big} exceed the {n_train} training images per domain "
                    f"(dataset.n_structures.train)"
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

    def with_storage(self, storage: str | Path) -> StudySpec:
        """A copy of this spec writing to another storage location."""
        return self.model_copy(update={"storage": str(storage)})


def _nearest_multiple(side: int) -> int:
    return max(MODEL_STRIDE_PX, MODEL_STRIDE_PX * round(side / MODEL_STRIDE_PX))
