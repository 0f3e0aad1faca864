"""Typed study specifications, validated once at the edge.

A study is one YAML file (see ``sweeps/``) with a ``dataset`` section, read by
``hrtem-ray simulate``, and the sweep sections (domains, grids, training, model,
resources, storage) read by ``hrtem-ray sweep``. Every field is validated here,
before any compute starts; :class:`SpecError` names the offending field and,
where there is a fixed choice, the allowed values or range.

Validation covers what would otherwise fail only after Ray started:

* names that become path components follow one rule (:data:`SAFE_NAME_PATTERN`,
  :func:`check_safe_name`): the study ``name``, structure-domain keys, the
  domain labels (also those derived from numbers) and ``domains.*`` entries;
* every number is finite (no NaN or infinity anywhere) and within a physical
  range (:data:`MAX_ABS_DEFOCUS_NM`, :data:`MAX_DOSE_E_PER_ANGSTROM2`, the bounds
  of :class:`~hrtem_ray.spec.types.SimulationParams` and
  :class:`~hrtem_ray.spec.types.StructureParams`), lists are non-empty;
* the multislice grid has at most :data:`MAX_MULTISLICE_GPTS` points per side,
  and :func:`check_resources` compares the estimated memory of one simulation
  worker with this machine's memory (call it before Ray starts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hrtem_ray.spec.types import (
    LATTICES,
    MULTISLICE_FIELDS,
    Freeze,
    ImagingCondition,
    ModelSpec,
    SimulationParams,
    StructureParams,
    estimate_worker_memory_bytes,
    multislice_gpts,
    output_gpts,
)

StudyAxis = Literal["defocus", "dose", "structure", "focal_spread_angstrom", "cs_mm"]

#: The unit of each study axis's domain values (report labels: ``f"{axis} ({unit})"``
#: where the unit is not empty, see :func:`axis_label`).
AXIS_UNITS: dict[str, str] = {
    "defocus": "nm",
    "dose": "e/Å²",
    "structure": "",
    "focal_spread_angstrom": "Å",
    "cs_mm": "mm",
}

#: The human name of each study axis (report labels, see :func:`axis_label`).
AXIS_NAMES: dict[str, str] = {
    "defocus": "defocus",
    "dose": "dose",
    "structure": "structure",
    "focal_spread_angstrom": "focal spread",
    "cs_mm": "spherical aberration Cs",
}


def axis_label(axis: str) -> str:
    """An axis with its unit for a report, e.g. ``"spherical aberration Cs (mm)"``."""
    unit = AXIS_UNITS.get(axis, "")
    name = AXIS_NAMES.get(axis, axis)
    return f"{name} ({unit})" if unit else name


#: The :class:`~hrtem_ray.spec.types.ImagingCondition` field each numeric axis sets.
_CONDITION_FIELDS = {
    "defocus": "defocus_nm",
    "dose": "dose_e_per_angstrom2",
    "focal_spread_angstrom": "focal_spread_angstrom",
    "cs_mm": "cs_mm",
}

#: The dataset fields that are each axis's list of domain values.
AXIS_FIELDS: dict[str, str] = {
    "defocus": "defocus_nm",
    "dose": "dose_e_per_angstrom2",
    "structure": "structure_domains",
    "focal_spread_angstrom": "focal_spread_angstrom",
    "cs_mm": "cs_mm",
}

#: Spec fields hashed under their former name (:meth:`DatasetSpec.hash_payload`): a
#: rename of a field must not change the content hash of an existing dataset.
HASH_KEYS = {"axis": "study"}

#: Dataset fields added after datasets existed, left out of :meth:`DatasetSpec.hash_payload`
#: at these values (their defaults), so that every existing dataset keeps its hash.
#: ``keep_exit_waves`` is a storage choice that changes no image: never hashed.
HASH_OMITTED_AT = {"focal_spread_angstrom": None, "cs_mm": 0.0}
HASH_NEVER = {"path", "keep_exit_waves"}


#: Version of what a seed produces (structures, multislice, imaging, masks). Part of
#: :meth:`DatasetSpec.content_hash`: raise it with every code change that changes the
#: images or masks simulated from the same spec, so that such a dataset gets a new
#: hash and an existing directory is never extended with shards of another generator.
GENERATOR_VERSION = 1

#: The one rule for names that become path components (file and folder names under a
#: study root): ASCII letters, digits and ``. _ + -``, not starting with ``.`` or
#: ``_``, at most :data:`SAFE_NAME_MAX_LENGTH` characters, and no ``..`` anywhere.
#: Numeric domain labels such as ``-10``, ``2.5`` or ``1e+06`` match it.
SAFE_NAME_PATTERN = r"[A-Za-z0-9+-][A-Za-z0-9._+-]*"
SAFE_NAME_MAX_LENGTH = 128
_SAFE_NAME = re.compile(SAFE_NAME_PATTERN)

#: Largest |defocus| in nm of a domain (abTEM convention, relative to the calibrated
#: zero). HRTEM defocus series span tens of nm (the study: -25 to 25 nm); beyond a
#: micrometre the image is a far-field shadow, not an HRTEM image.
MAX_ABS_DEFOCUS_NM = 1000.0
#: Largest electron dose in e/A^2. Real HRTEM doses are 10 to 1e5 e/A^2 (the study:
#: 30 to 600); 1e7 e/A^2 keeps the noisy counts of any pixel size exact in float32.
MAX_DOSE_E_PER_ANGSTROM2 = 1e7
#: Largest |Cs| in mm: uncorrected objective lenses have 0.5 to 5 mm, corrected ones
#: tens of micrometres either sign.
MAX_ABS_CS_MM = 10.0
#: Largest |value| and unit of the numeric imaging fields (focal spread: also >= 0).
_ABS_LIMITS = {
    "defocus_nm": (MAX_ABS_DEFOCUS_NM, "nm"),
    "cs_mm": (MAX_ABS_CS_MM, "mm"),
    "focal_spread_angstrom": (1000.0, "A"),
}
#: Largest multislice grid side, ``ceil(cell_angstrom / sampling_angstrom)`` points
#: (the paper: 1280). One complex64 wave of 16384^2 points is 2 GiB.
MAX_MULTISLICE_GPTS = 16384
#: Smallest output image side in pixels.
MIN_OUTPUT_GPTS = 16
#: The U-Net halves the image five times: trained images must be multiples of this.
MODEL_STRIDE_PX = 32


class SpecError(ValueError):
    """A study specification is invalid; the message names the field(s)."""


def safe_name_problem(value: object) -> str | None:
    """Why ``value`` is not a safe path component (see :data:`SAFE_NAME_PATTERN`), or None.

    Parameters
    ----------
    value
        Candidate name (anything; only a ``str`` can be safe).

    Returns
    -------
    str or None
        A message without the field name, e.g. ``"'../x' contains '..'"``.
    """
    allowed = (
        f"allowed: {SAFE_NAME_PATTERN} (letters, digits, '.', '_', '+', '-'; "
        f"not starting with '.' or '_'), at most {SAFE_NAME_MAX_LENGTH} characters, no '..'"
    )
    if not isinstance(value, str):
        return f"{value!r} is not a string; {allowed}"
    if not value:
        return f"empty name; {allowed}"
    if len(value) > SAFE_NAME_MAX_LENGTH:
        return f"{value[:40]!r}... has {len(value)} characters; {allowed}"
    if ".." in value:
        return f"{value!r} contains '..'; {allowed}"
    if not _SAFE_NAME.fullmatch(value):
        return f"{value!r} is not a safe name; {allowed}"
    return None


def is_safe_name(value: object) -> bool:
    """Whether ``value`` may become a path component (see :data:`SAFE_NAME_PATTERN`)."""
    return safe_name_problem(value) is None


def check_safe_name(value: object, field: str) -> str:
    """Return ``value`` if it is a safe path component, else raise :class:`SpecError`.

    Parameters
    ----------
    value
        The name, e.g. a domain label read from a table.
    field
        What the name is, for the message, e.g. ``"domains.pretrain"``.

    Raises
    ------
    SpecError
        ``"<field>: '<value>' ...; allowed: ..."``.
    """
    problem = safe_name_problem(value)
    if problem is not None:
        raise SpecError(f"{field}: {problem}")
    return value  # type: ignore[return-value]


def domain_label(value: float) -> str:
    """Label of a numeric domain: the nominal value formatted with ``format(value, "g")``."""
    return format(float(value), "g")


def machine_memory_bytes() -> int:
    """Physical memory of this machine (``SC_PAGE_SIZE * SC_PHYS_PAGES``)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _safe_name_value(value: str) -> str:
    """``value`` if it is a safe name, else ValueError (pydantic adds the field)."""
    problem = safe_name_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


class StructureDomain(_Spec):
    """One domain of a structure study: a lattice and a particle-radius range."""

    lattice: str
    radius_angstrom: tuple[float, float]

    @field_validator("radius_angstrom")
    @classmethod
    def _positive_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got {list(value)}")
        return value

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
    axis
        The study axis: ``defocus`` (a list of ``defocus_nm``), ``dose`` (a list
        of ``dose_e_per_angstrom2``) or ``structure`` (``structure_domains``).
    defocus_nm
        Nominal defocus in nm relative to each structure's calibrated zero
        (abTEM convention: positive is underfocus); a list for a defocus study.
    dose_e_per_angstrom2
        Electron dose; a list for a dose study; ``null`` for noiseless images.
    focal_spread_angstrom
        The domains of a ``focal_spread_angstrom`` study (abTEM 1/e width); in any
        other study the whole dataset's is ``simulation.focal_spread_angstrom``.
    cs_mm
        Spherical aberration C30 in mm (abTEM's ``Cs`` in angstrom is ``1e7 *
        cs_mm``); a list for a ``cs_mm`` study.
    keep_exit_waves
        Keep every structure's exit waves (:mod:`hrtem_ray.dataset.waves`) so that new
        imaging domains need no multislice; ``false`` saves the storage.
    """

    axis: StudyAxis = "defocus"
    path: str | None = None
    defocus_nm: float | list[float] = -10.0
    dose_e_per_angstrom2: float | list[float] | None = 400.0
    focal_spread_angstrom: list[Annotated[float, Field(ge=0, le=1000)]] | None = None
    cs_mm: float | list[float] = 0.0
    keep_exit_waves: bool = True
    structure_domains: dict[str, StructureDomain] = Field(default_factory=dict)
    structures: StructureParams = Field(default_factory=StructureParams)
    simulation: SimulationParams = Field(default_factory=SimulationParams)
    n_structures: SplitCounts = Field(default_factory=lambda: SplitCounts(train=16, val=8))
    seed: int = Field(default=0, ge=0, lt=2**63)
    structures_per_shard: int = Field(default=2, ge=1, le=10_000)

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "study" in data:
            raise ValueError("dataset.study: renamed to dataset.axis (defocus, dose or structure)")
        return data

    @field_validator("defocus_nm", "cs_mm", "focal_spread_angstrom")
    @classmethod
    def _within_limits(
        cls, value: float | list[float] | None, info: ValidationInfo
    ) -> float | list[float] | None:
        if value is None:
            return value
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("needs at least one value")
        limit, unit = _ABS_LIMITS[info.field_name]
        bad = [v for v in values if abs(v) > limit]
        if bad:
            raise ValueError(f"{bad} outside the allowed range -{limit:g} to {limit:g} {unit}")
        return value

    @field_validator("dose_e_per_angstrom2")
    @classmethod
    def _physical_dose(cls, value: float | list[float] | None) -> float | list[float] | None:
        if value is None:
            return value
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("needs at least one value")
        bad = [v for v in values if not 0 < v <= MAX_DOSE_E_PER_ANGSTROM2]
        if bad:
            raise ValueError(
                f"{bad} outside the allowed range: > 0 and <= {MAX_DOSE_E_PER_ANGSTROM2:g} "
                "e/A^2 (null for noiseless images)"
            )
        return value

    @field_validator("structure_domains")
    @classmethod
    def _safe_domain_keys(cls, value: dict[str, StructureDomain]) -> dict[str, StructureDomain]:
        for key in value:
            problem = safe_name_problem(key)
            if problem is not None:
                raise ValueError(f"key {problem}")
        return value

    @model_validator(mode="after")
    def _grid_fits(self) -> DatasetSpec:
        for _, params in self.groups_structures():
            side = multislice_gpts(params.cell_angstrom, self.simulation)
            if side > MAX_MULTISLICE_GPTS:
                raise ValueError(
                    f"dataset.structures.cell_angstrom / dataset.simulation.sampling_angstrom: "
                    f"{params.cell_angstrom:g} / {self.simulation.sampling_angstrom:g} A gives a "
                    f"multislice grid of {side} points per side; at most {MAX_MULTISLICE_GPTS}"
                )
            out = output_gpts(params.cell_angstrom, self.simulation)
            if out < MIN_OUTPUT_GPTS:
                raise ValueError(
                    f"dataset.structures.cell_angstrom / dataset.simulation."
                    f"output_sampling_angstrom: {params.cell_angstrom:g} / "
                    f"{self.simulation.output_sampling_angstrom:g} A gives images of {out} px; "
                    f"at least {MIN_OUTPUT_GPTS}"
                )
        return self

    def groups_structures(self) -> list[tuple[str, StructureParams]]:
        """Structure parameters of each simulation group, validated (see :meth:`groups`).

        Raises
        ------
        ValueError
            A structure domain's radius range does not fit the cell (naming the domain).
        """
        if self.axis != "structure":
            return [("all", self.structures)]
        out = []
        for label, domain in self.structure_domains.items():
            merged = {
                **self.structures.model_dump(),
                "lattices": (domain.lattice,),
                "radius_angstrom": domain.radius_angstrom,
            }
            try:
                out.append((label, StructureParams.model_validate(merged)))
            except ValidationError as exc:
                msg = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
                raise ValueError(f"dataset.structure_domains.{label}: {msg}") from None
        return out

    @model_validator(mode="after")
    def _axis_consistent(self) -> DatasetSpec:
        listed = {
            "defocus": isinstance(self.defocus_nm, list),
            "dose": isinstance(self.dose_e_per_angstrom2, list),
            "structure": bool(self.structure_domains),
            "focal_spread_angstrom": self.focal_spread_angstrom is not None,
            "cs_mm": isinstance(self.cs_mm, list),
        }
        if not listed[self.axis]:
            need = AXIS_FIELDS[self.axis] + ("" if self.axis == "structure" else " as a list")
            raise ValueError(f"axis {self.axis!r} needs {need}")
        for axis, is_listed in listed.items():
            if axis != self.axis and is_listed and axis in ("defocus", "dose", "cs_mm"):
                raise ValueError(
                    f"{AXIS_FIELDS[axis]} must be a single value in a {self.axis!r} study"
                )
        for axis in ("structure", "focal_spread_angstrom"):
            if self.axis != axis and listed[axis]:
                raise ValueError(f"{AXIS_FIELDS[axis]} is only allowed in a {axis!r} study")
        values = self._axis_values()
        labels = [domain_label(v) for v in values] if self.axis != "structure" else values
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate domains in the {self.axis} axis: {labels}")
        field = f"dataset.{AXIS_FIELDS[self.axis]}"
        for label in labels:
            problem = safe_name_problem(label)
            if problem is not None:
                raise ValueError(f"{field}: domain label {problem}")
        if self.axis == "dose" and any(v <= 0 for v in values):
            raise ValueError("dose_e_per_angstrom2 values must be > 0")
        return self

    def _axis_values(self) -> list:
        return list(getattr(self, AXIS_FIELDS[self.axis]))

    @property
    def domains(self) -> list[str]:
        """Domain labels in spec order."""
        if self.axis == "structure":
            return list(self.structure_domains)
        return [domain_label(v) for v in self._axis_values()]

    def groups(self) -> list[DomainGroup]:
        """The simulation groups of this dataset (see :class:`DomainGroup`)."""
        if self.axis == "structure":
            return [
                DomainGroup(
                    name=label,
                    structures=params,
                    conditions=(self._condition(label),),
                )
                for label, params in self.groups_structures()
            ]
        conds = tuple(
            self._condition(domain_label(v), **{_CONDITION_FIELDS[self.axis]: float(v)})
            for v in self._axis_values()
        )
        return [DomainGroup(name="all", structures=self.structures, conditions=conds)]

    def _condition(self, label: str, **axis_value: float) -> ImagingCondition:
        """The imaging condition of a domain: the dataset's imaging, the axis value replaced."""
        dose = self.dose_e_per_angstrom2
        whole = {
            "defocus_nm": float(self.defocus_nm) if self.axis != "defocus" else 0.0,
            "dose_e_per_angstrom2": None if dose is None or self.axis == "dose" else float(dose),
            "focal_spread_angstrom": self.simulation.focal_spread_angstrom,
            "cs_mm": float(self.cs_mm) if self.axis != "cs_mm" else 0.0,
        }
        return ImagingCondition(label, **{**whole, **axis_value})

    def images_per_domain(self, split: str) -> int:
        """Images available per domain in a split."""
        return getattr(self.n_structures, split)

    def content_hash(self) -> str:
        """Hash of everything that determines what is written and where (not ``path``).

        Covers every field but ``path`` (where the dataset lives, not what it is),
        including ``structures_per_shard`` (shard keys and files), and
        :data:`GENERATOR_VERSION`. 16 hex digits.
        """
        return _hash(self.hash_payload())

    def hash_payload(self) -> dict[str, Any]:
        """What :meth:`content_hash` hashes: the spec without ``path``, plus the generator version.

        ``{"generator_version": GENERATOR_VERSION, **spec as JSON}``, with ``axis``
        under its former key ``study`` (see :data:`HASH_KEYS`), so that renaming a
        spec field leaves the hash, and every existing dataset, as it was. Fields
        added later are left out at their defaults (:data:`HASH_OMITTED_AT`), and
        ``keep_exit_waves`` always (:data:`HASH_NEVER`), for the same reason.
        """
        payload = self.model_dump(mode="json", exclude=HASH_NEVER)
        payload = {
            HASH_KEYS.get(key, key): value
            for key, value in payload.items()
            if key not in HASH_OMITTED_AT or value != HASH_OMITTED_AT[key]
        }
        return {"generator_version": GENERATOR_VERSION, **payload}

    def waves_payload(self, group: str) -> dict[str, Any]:
        """What the exit waves of a group depend on (:mod:`hrtem_ray.dataset.waves`).

        The group's structures, the multislice physics
        (:data:`~hrtem_ray.spec.types.MULTISLICE_FIELDS`), the seed, the structure
        counts, the shard size and :data:`GENERATOR_VERSION`; not the imaging
        (defocus, dose, focal spread, Cs, output sampling, jitter, mask, calibration).
        """
        structures = dict(self.groups_structures())[group]
        return {
            "generator_version": GENERATOR_VERSION,
            "group": group,
            "structures": structures.model_dump(mode="json"),
            "multislice": {name: getattr(self.simulation, name) for name in MULTISLICE_FIELDS},
            "seed": self.seed,
            "n_structures": self.n_structures.model_dump(mode="json"),
            "structures_per_shard": self.structures_per_shard,
        }

    def waves_hash(self, group: str) -> str:
        """Identity of a group's exit waves (:meth:`waves_payload`). 16 hex digits."""
        return _hash(self.waves_payload(group))

    def images_hash(self, group: str, condition: ImagingCondition) -> str:
        """Identity of the images of one domain: its waves, its condition and the imaging.

        Two specs that give a domain the same hash give it the same images, so a
        domain already simulated is kept when other domains are added. 16 hex digits.
        """
        imaging = self.simulation.model_dump(mode="json", exclude=set(MULTISLICE_FIELDS))
        return _hash(
            {
                "waves": self.waves_hash(group),
                "axis": self.axis,
                "condition": dataclasses.asdict(condition),
                "imaging": imaging,
            }
        )


class DomainsSpec(_Spec):
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
            _safe_name_value(label)
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


class PretrainGrid(_Spec):
    lr: list[float] = Field(default_factory=lambda: [1e-3, 1e-4], min_length=1)
    n_images: list[PositiveInt] = Field(default_factory=lambda: [512], min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)


class TransferGrid(_Spec):
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


class BaselineGrid(_Spec):
    """Single-stage training on mixtures ``(n_source, n_target)`` of two domains."""

    mixtures: list[tuple[PositiveInt, PositiveInt]] = Field(
        default_factory=lambda: [(128, 384), (256, 256), (384, 128)], min_length=1
    )
    lr: list[float] = Field(default_factory=lambda: [1e-3, 1e-4], min_length=1)
    seeds: list[Seed] = Field(default_factory=lambda: [0, 1, 2], min_length=1)


class TrainingSpec(_Spec):
    """How every stage trains; ``loss`` is one of :data:`LOSS_FUNCTIONS` (see :data:`LossFunction`)."""

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr_decay: float = Field(default=0.99, gt=0, le=1)
    n_val: int | None = Field(default=None, ge=1)
    loss: LossFunction = "cross_entropy"


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
        return _safe_name_value(value)

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


def check_resources(spec: DatasetSpec | StudySpec, memory_bytes: int | None = None) -> int:
    """Check that one simulation worker fits in this machine's memory; call before Ray starts.

    Parameters
    ----------
    spec
        A dataset spec, or a study spec (its ``dataset``).
    memory_bytes
        Memory available to one worker; default :func:`machine_memory_bytes`.

    Returns
    -------
    int
        The estimate (bytes) of the largest simulation group, from
        :func:`hrtem_ray.spec.types.estimate_worker_memory_bytes`.

    Raises
    ------
    SpecError
        The estimate exceeds ``memory_bytes``; the message gives both and the fields
        that set the memory.
    """
    dataset = spec.dataset if isinstance(spec, StudySpec) else spec
    memory = machine_memory_bytes() if memory_bytes is None else int(memory_bytes)
    estimate = max(
        estimate_worker_memory_bytes(params, dataset.simulation)
        for _, params in dataset.groups_structures()
    )
    if estimate > memory:
        sim, cell = dataset.simulation, dataset.structures.cell_angstrom
        raise SpecError(
            "dataset: one simulation worker needs an estimated "
            f"{estimate / 2**30:.1f} GiB, more than this machine's {memory / 2**30:.1f} GiB "
            f"(dataset.structures.cell_angstrom {cell:g}, dataset.simulation.sampling_angstrom "
            f"{sim.sampling_angstrom:g}, dataset.simulation.n_phonons {sim.n_phonons}); "
            "use a smaller cell, a coarser sampling or fewer phonons"
        )
    return estimate


def _hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _is_union_tag(part: str) -> bool:
    """Whether a pydantic error location part names a validator or a union member."""
    return part.startswith("function-") or part in ("float", "int", "str", "none") or "[" in part


def _format_errors(source: str, error: ValidationError, prefix: str = "") -> str:
    lines = [f"invalid study spec {source}:"]
    located = [
        (".".join(str(p) for p in err["loc"] if not _is_union_tag(str(p))), err)
        for err in error.errors()
    ]
    for loc, err in located:
        # a union member's type error is noise when another member names a deeper field
        if err["type"].endswith("_type") and any(
            other.startswith(f"{loc}.") for other, _ in located
        ):
            continue
        loc = ".".join(p for p in (prefix, loc) if p)
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, Mapping) or got is None else f" (got {got!r})"
        # whole-section checks name their fields in the message itself
        named = not loc or loc == prefix or msg.startswith(f"{loc}.")
        lines.append(f"  {msg}" if named else f"  {loc}: {msg}{shown}")
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


def current_dataset_keys(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """A ``dataset`` section hrtem-ray stored itself, with renamed fields under their new names.

    ``dataset.json`` and ``study.json`` written before ``dataset.study`` became
    ``dataset.axis`` hold ``study`` (see :data:`HASH_KEYS`); a user's spec with the
    old key is refused, a stored one is read as before (its content hash is unchanged).
    """
    current = dict(dataset)
    for new, old in HASH_KEYS.items():
        if old in current and new not in current:
            current[new] = current.pop(old)
    return current


def parse_stored_study_spec(raw: Mapping[str, Any], source: str = "<dict>") -> StudySpec:
    """Validate a study spec hrtem-ray stored itself (``study.json``), also one stored
    before a field rename (see :func:`current_dataset_keys`)."""
    raw = dict(raw)
    if isinstance(raw.get("dataset"), Mapping):
        raw["dataset"] = current_dataset_keys(raw["dataset"])
    return parse_study_spec(raw, source=source)


def load_dataset_spec(path: str | Path) -> DatasetSpec:
    """Read only the ``dataset`` section of a study YAML file."""
    raw = _read_yaml(path)
    if "dataset" not in raw:
        raise SpecError(f"invalid study spec {path}:\n  dataset: section is required")
    return parse_dataset_spec(raw["dataset"] or {}, source=str(path))


def load_study_spec(path: str | Path) -> StudySpec:
    """Read and validate a whole study YAML file."""
    return parse_study_spec(_read_yaml(path), source=str(path))
