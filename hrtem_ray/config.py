"""Typed study specifications, validated once at the edge.

A study is one YAML file (see ``sweeps/``) with a ``dataset`` section, read by
``hrtem-ray simulate``, and the sweep sections (domains, grids, training, model,
resources, storage) read by ``hrtem-ray sweep``. Every field is validated here,
before any compute starts; :class:`SpecError` names the offending field and,
where there is a fixed choice, the allowed values.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hrtem_ray.model import ModelSpec
from hrtem_ray.simulate import ImagingCondition, SimulationParams
from hrtem_ray.structures import LATTICES, StructureParams

StudyAxis = Literal["defocus", "dose", "structure"]
Freeze = Literal["none", "encoder", "decoder"]
SPLITS = ("train", "val")


class SpecError(ValueError):
    """A study specification is invalid; the message names the field(s)."""


def domain_label(value: float) -> str:
    """Label of a numeric domain: the nominal value formatted with ``format(value, "g")``."""
    return format(float(value), "g")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StructureDomain(_Spec):
    """One domain of a structure study: a lattice and a particle-radius range."""

    lattice: str
    radius_angstrom: tuple[float, float]

    @field_validator("lattice")
    @classmethod
    def _known_lattice(cls, value: str) -> str:
        if value not in LATTICES:
            raise ValueError(f"unknown lattice {value!r}; allowed: {', '.join(LATTICES)}")
        return value


class SplitCounts(_Spec):
    """Structures simulated per split (each gives one image per imaging domain)."""

    train: int = Field(ge=1)
    val: int = Field(ge=1)


@dataclass(frozen=True)
class DomainGroup:
    """Structures simulated together and the imaging domains derived from each of them.

    Defocus and dose studies have one group (every structure is imaged in every
    domain); a structure study has one group per domain.
    """

    name: str
    structures: StructureParams
    conditions: tuple[ImagingCondition, ...]


class DatasetSpec(_Spec):
    """The ``dataset`` section of a study spec.

    Attributes
    ----------
    study
        The study axis: ``defocus`` (a list of ``defocus_nm``), ``dose`` (a list
        of ``dose_e_per_angstrom2``) or ``structure`` (``structure_domains``).
    defocus_nm
        Nominal defocus in nm relative to each structure's calibrated zero
        (abTEM convention: positive is underfocus); a list for a defocus study.
    dose_e_per_angstrom2
        Electron dose; a list for a dose study; ``null`` for noiseless images.
    """

    study: StudyAxis = "defocus"
    path: str | None = None
    defocus_nm: float | list[float] = -10.0
    dose_e_per_angstrom2: float | list[float] | None = 400.0
    structure_domains: dict[str, StructureDomain] = Field(default_factory=dict)
    structures: StructureParams = Field(default_factory=StructureParams)
    simulation: SimulationParams = Field(default_factory=SimulationParams)
    n_structures: SplitCounts = Field(default_factory=lambda: SplitCounts(train=16, val=8))
    seed: int = Field(default=0, ge=0)
    structures_per_shard: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _axis_consistent(self) -> DatasetSpec:
        listed = {
            "defocus": isinstance(self.defocus_nm, list),
            "dose": isinstance(self.dose_e_per_angstrom2, list),
            "structure": bool(self.structure_domains),
        }
        if not listed[self.study]:
            need = {
                "defocus": "defocus_nm as a list",
                "dose": "dose_e_per_angstrom2 as a list",
                "structure": "structure_domains",
            }[self.study]
            raise ValueError(f"study {self.study!r} needs {need}")
        for axis, is_listed in listed.items():
            if axis != self.study and is_listed and axis != "structure":
                field = "defocus_nm" if axis == "defocus" else "dose_e_per_angstrom2"
                raise ValueError(f"{field} must be a single value in a {self.study!r} study")
        if self.study != "structure" and self.structure_domains:
            raise ValueError("structure_domains is only allowed in a 'structure' study")
        values = self._axis_values()
        labels = [domain_label(v) for v in values] if self.study != "structure" else values
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate domains in the {self.study} axis: {labels}")
        if self.study == "dose" and any(v <= 0 for v in values):
            raise ValueError("dose_e_per_angstrom2 values must be > 0")
        return self

    def _axis_values(self) -> list:
        if self.study == "defocus":
            return list(self.defocus_nm)
        if self.study == "dose":
            return list(self.dose_e_per_angstrom2)
        return list(self.structure_domains)

    @property
    def domains(self) -> list[str]:
        """Domain labels in spec order."""
        if self.study == "structure":
            return list(self.structure_domains)
        return [domain_label(v) for v in self._axis_values()]

    def groups(self) -> list[DomainGroup]:
        """The simulation groups of this dataset (see :class:`DomainGroup`)."""
        if self.study == "structure":
            return [
                DomainGroup(
                    name=label,
                    structures=self.structures.model_copy(
                        update={"lattices": (d.lattice,), "radius_angstrom": d.radius_angstrom}
                    ),
                    conditions=(
                        ImagingCondition(label, float(self.defocus_nm), self._scalar_dose()),
                    ),
                )
                for label, d in self.structure_domains.items()
            ]
        if self.study == "defocus":
            conds = tuple(
                ImagingCondition(domain_label(v), float(v), self._scalar_dose())
                for v in self.defocus_nm
            )
        else:
            conds = tuple(
                ImagingCondition(domain_label(v), float(self.defocus_nm), float(v))
                for v in self.dose_e_per_angstrom2
            )
        return [DomainGroup(name="all", structures=self.structures, conditions=conds)]

    def _scalar_dose(self) -> float | None:
        dose = self.dose_e_per_angstrom2
        return None if dose is None else float(dose)

    def images_per_domain(self, split: str) -> int:
        """Images available per domain in a split."""
        return getattr(self.n_structures, split)

    def content_hash(self) -> str:
        """Hash of everything that determines the images (not ``path``)."""
        payload = self.model_dump(mode="json", exclude={"path", "structures_per_shard"})
        return _hash(payload)


class DomainsSpec(_Spec):
    """Which dataset domains pretrain, receive transfer and are evaluated (default: all)."""

    pretrain: list[str] | None = None
    transfer: list[str] | None = None
    eval: list[str] | None = None


class PretrainGrid(_Spec):
    lr: list[float] = Field(default_factory=lambda: [1e-3, 1e-4], min_length=1)
    n_images: list[int] = Field(default_factory=lambda: [512], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)


class TransferGrid(_Spec):
    lr: list[float] = Field(default_factory=lambda: [1e-4, 1e-5], min_length=1)
    n_images: list[int] = Field(default_factory=lambda: [64, 128, 256, 512], min_length=1)
    freeze: list[Freeze] = Field(
        default_factory=lambda: ["none", "encoder", "decoder"], min_length=1
    )


class BaselineGrid(_Spec):
    """Single-stage training on mixtures ``(n_source, n_target)`` of two domains."""

    mixtures: list[tuple[int, int]] = Field(
        default_factory=lambda: [(128, 384), (256, 256), (384, 128)], min_length=1
    )
    lr: list[float] = Field(default_factory=lambda: [1e-3, 1e-4], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)


class TrainingSpec(_Spec):
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr_decay: float = Field(default=0.99, gt=0, le=1)
    n_val: int | None = Field(default=None, ge=1)


class ResourcesSpec(_Spec):
    """Resources per trial; ``gpu`` may be fractional (0.25 packs four trials per GPU)."""

    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)
    max_concurrent_trials: int | None = Field(default=None, ge=1)
    max_failures: int = Field(default=2, ge=0)


class StudySpec(_Spec):
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
        if not value or any(c in value for c in "/\\ "):
            raise ValueError("name must be non-empty without '/', '\\' or spaces")
        return value

    @model_validator(mode="after")
    def _grids_fit_dataset(self) -> StudySpec:
        allowed = self.dataset.domains
        for role in ("pretrain", "transfer", "eval"):
            chosen = getattr(self.domains, role)
            unknown = [d for d in chosen or [] if d not in allowed]
            if unknown:
                raise ValueError(
                    f"domains.{role}: unknown domains {unknown}; allowed: {', '.join(allowed)}"
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
        return self

    def domains_for(self, role: Literal["pretrain", "transfer", "eval"]) -> list[str]:
        """Domains of a role, defaulting to every dataset domain, in dataset order."""
        chosen = getattr(self.domains, role)
        return list(self.dataset.domains) if chosen is None else list(chosen)

    def with_storage(self, storage: str | Path) -> StudySpec:
        """A copy of this spec writing to another storage location."""
        return self.model_copy(update={"storage": str(storage)})


def _hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _format_errors(source: str, error: ValidationError, prefix: str = "") -> str:
    lines = [f"invalid study spec {source}:"]
    for err in error.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        loc = ".".join(p for p in (prefix, loc) if p)
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, Mapping) or got is None else f" (got {got!r})"
        # whole-section checks name their fields in the message itself
        lines.append(f"  {loc}: {msg}{shown}" if loc and loc != prefix else f"  {msg}")
    return "\n".join(lines)


def _read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"study spec not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"study spec {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(
            f"study spec {path} must be a mapping of sections, got {type(raw).__name__}"
        )
    return raw


def parse_dataset_spec(raw: Mapping[str, Any], source: str = "<dict>") -> DatasetSpec:
    """Validate a ``dataset`` section (a mapping) into a :class:`DatasetSpec`."""
    try:
        return DatasetSpec.model_validate(dict(raw))
    except ValidationError as exc:
        raise SpecError(_format_errors(source, exc, prefix="dataset")) from None


def parse_study_spec(raw: Mapping[str, Any], source: str = "<dict>") -> StudySpec:
    """Validate a whole study (a mapping) into a :class:`StudySpec`."""
    if "dataset" not in raw:
        raise SpecError(f"invalid study spec {source}:\n  dataset: section is required")
    try:
        return StudySpec.model_validate(dict(raw))
    except ValidationError as exc:
        raise SpecError(_format_errors(source, exc)) from None


def load_dataset_spec(path: str | Path) -> DatasetSpec:
    """Read only the ``dataset`` section of a study YAML file."""
    raw = _read_yaml(path)
    if "dataset" not in raw:
        raise SpecError(f"invalid study spec {path}:\n  dataset: section is required")
    return parse_dataset_spec(raw["dataset"] or {}, source=str(path))


def load_study_spec(path: str | Path) -> StudySpec:
    """Read and validate a whole study YAML file."""
    return parse_study_spec(_read_yaml(path), source=str(path))
