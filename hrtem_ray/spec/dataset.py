"""The ``dataset`` section of a study spec: what is simulated, and its identity hashes.

:class:`DatasetSpec` is read by ``hrtem-ray simulate``; :meth:`DatasetSpec.groups` gives
the simulation groups (:class:`DomainGroup`: structures and the imaging conditions of
each domain). Three hashes identify what a spec produces: :meth:`DatasetSpec.content_hash`
(the whole dataset), :meth:`DatasetSpec.waves_hash` (a group's exit waves) and
:meth:`DatasetSpec.images_hash` (one domain's images).

Validation covers what would otherwise fail only after Ray started: every number
is finite and within a physical range (:data:`MAX_ABS_DEFOCUS_NM`,
:data:`MAX_DOSE_E_PER_ANGSTROM2`, :data:`MAX_ABS_CS_MM`, the bounds of
:class:`~hrtem_ray.spec.types.SimulationParams` and
:class:`~hrtem_ray.spec.types.StructureParams`), lists are non-empty, domain labels
and structure-domain keys are safe names (:mod:`hrtem_ray.spec.names`), the
multislice grid has at most :data:`MAX_MULTISLICE_GPTS` points per side, and
:func:`check_resources` compares the estimated memory of one simulation worker with
this machine's memory (call it before Ray starts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from hrtem_ray.spec.base import SpecError, SpecModel
from hrtem_ray.spec.materials import IDENTITY, Material, Shape, ZoneAxisOrientation
from hrtem_ray.spec.names import safe_name_problem
from hrtem_ray.spec.types import (
    LATTICES,
    MULTISLICE_FIELDS,
    ImagingCondition,
    SimulationParams,
    StructureParams,
    estimate_worker_memory_bytes,
    multislice_gpts,
    output_gpts,
)

if TYPE_CHECKING:
    from hrtem_ray.spec.study import StudySpec

StudyAxis = Literal["defocus", "dose", "structure", "focal_spread_angstrom", "cs_mm"]

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


def domain_label(value: float) -> str:
    """Label of a numeric domain: the nominal value formatted with ``format(value, "g")``."""
    return format(float(value), "g")


def machine_memory_bytes() -> int:
    """Physical memory of this machine (``SC_PAGE_SIZE * SC_PHYS_PAGES``)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class StructureDomain(SpecModel):
    """One domain of a structure study: a material, a particle-size range and, optionally,
    its own shape, surface energies, orientation, twins and stoichiometry (the
    ``dataset.structures`` value of each field left unset, ``null``).

    The structure axis is any list of materials x shapes x sizes, each domain named by its
    key, e.g. ``Au-deca-small: {lattice: Au, shape: decahedron, radius_angstrom: [10, 14]}``.
    """

    lattice: Material
    radius_angstrom: tuple[float, float]
    shape: Shape | None = None
    surface_energies: dict[str, float] | None = None
    orientation: Literal["random"] | ZoneAxisOrientation | None = None
    max_twins: int | None = Field(default=None, ge=0, le=4)
    max_fcc_stacking_faults: int | None = Field(default=None, ge=0, le=4)
    stoichiometry: Literal["auto", "kept", "as_cut"] | None = None

    @field_validator("radius_angstrom")
    @classmethod
    def _positive_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got {list(value)}")
        return value

    @field_validator("lattice")
    @classmethod
    def _known_lattice(cls, value: Material) -> Material:
        if isinstance(value, str) and value not in LATTICES:
            raise ValueError(
                f"unknown lattice {value!r}; allowed: {', '.join(LATTICES)}, or {{cif: PATH}}"
            )
        return value

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}

    def overrides(self) -> dict[str, Any]:
        """The :class:`~hrtem_ray.spec.types.StructureParams` fields this domain sets."""
        out: dict[str, Any] = {"lattices": (self.lattice,), "radius_angstrom": self.radius_angstrom}
        for name in STRUCTURE_DOMAIN_OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


#: The optional fields of a :class:`StructureDomain` (``null``: the dataset's).
STRUCTURE_DOMAIN_OPTIONAL = (
    "shape",
    "surface_energies",
    "orientation",
    "max_twins",
    "max_fcc_stacking_faults",
    "stoichiometry",
)


class SplitCounts(SpecModel):
    """Structures simulated per split (each gives one image per imaging domain).

    Attributes
    ----------
    train
        Structures whose images models train on.
    val
        Structures whose images choose each model's best epoch (on its own training domain).
    test
        Held-out structures, never used for training or model selection: when there are
        any, every reported metric is computed on them. 0 (the default): no test split,
        and models are scored on ``val``. Left out of every stored form and hash when 0,
        so a dataset written before test splits existed keeps its identity; adding a test
        split to a dataset leaves its train and val shards and exit waves as they are.
    """

    train: int = Field(ge=1)
    val: int = Field(ge=1)
    test: int = Field(default=0, ge=0)

    @model_serializer(mode="wrap")
    def _omit_empty_test(self, handler) -> dict[str, Any]:
        out = handler(self)
        if out.get("test") == 0:
            del out["test"]
        return out


@dataclass(frozen=True)
class DomainGroup:
    """Structures simulated together and the imaging domains derived from each of them.

    Defocus and dose studies have one group (every structure is imaged in every
    domain); a structure study has one group per domain.
    """

    name: str
    structures: StructureParams
    conditions: tuple[ImagingCondition, ...]


class DatasetSpec(SpecModel):
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
            merged = {**self.structures.model_dump(), **domain.overrides()}
            try:
                out.append((label, StructureParams.model_validate(merged)))
            except ValidationError as exc:
                msg = "; ".join(_located(e) for e in exc.errors())
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
        :data:`GENERATOR_VERSION`. A CIF material enters by its content (sha256, cell,
        sites), not the path of its file (:data:`~hrtem_ray.spec.materials.IDENTITY`).
        16 hex digits.
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
        payload = self.model_dump(mode="json", exclude=HASH_NEVER, context=IDENTITY)
        payload = {
            HASH_KEYS.get(key, key): value
            for key, value in payload.items()
            if key not in HASH_OMITTED_AT or value != HASH_OMITTED_AT[key]
        }
        return {"generator_version": GENERATOR_VERSION, **payload}

    def waves_payload(self, group: str) -> dict[str, Any]:
        """What the exit waves of a group depend on (:mod:`hrtem_ray.dataset.waves`).

        The group's structures, the multislice physics
        (:data:`~hrtem_ray.spec.types.MULTISLICE_FIELDS`), the seed, the train and val
        structure counts (not the test count), the shard size and :data:`GENERATOR_VERSION`; not the imaging
        (defocus, dose, focal spread, Cs, output sampling, jitter, mask, calibration).
        """
        structures = dict(self.groups_structures())[group]
        return {
            "generator_version": GENERATOR_VERSION,
            "group": group,
            "structures": structures.model_dump(mode="json", context=IDENTITY),
            "multislice": {name: getattr(self.simulation, name) for name in MULTISLICE_FIELDS},
            "seed": self.seed,
            # the test count is not part of it: adding held-out structures keeps every
            # train and val wave (each structure's seed depends on its split and index only)
            "n_structures": self.n_structures.model_dump(mode="json", exclude={"test"}),
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


def _located(error: Any) -> str:
    """A pydantic error as ``field: message`` (the message alone for a whole-model check)."""
    msg = error["msg"].removeprefix("Value error, ")
    loc = ".".join(str(p) for p in error["loc"] if not str(p)[:1].isupper() and "[" not in str(p))
    return f"{loc}: {msg}" if loc else msg


def _hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    dataset = spec if isinstance(spec, DatasetSpec) else spec.dataset
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
