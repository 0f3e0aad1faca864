"""The typed specifications of every stage: pydantic and dataclasses only, no heavy imports.

This is the bottom layer of hrtem-ray: the structure generator, the multislice
simulation, the U-Net and the study spec sections (:mod:`hrtem_ray.spec.dataset`,
:mod:`hrtem_ray.spec.study`) all take their parameters as the classes defined here, so
that reading and validating a spec loads neither torch, abTEM, ASE nor Ray. Each shared type and constant has its one
definition here:

* :class:`StructureParams`: the random structure generator
  (:mod:`hrtem_ray.physics.structures`), with the materials it draws from
  (:data:`LATTICES` and CIF materials, defined in :mod:`hrtem_ray.spec.materials`);
* :class:`SimulationParams`, :class:`ImagingCondition` and the grid sizes and
  memory estimate derived from them (:mod:`hrtem_ray.physics.simulate`);
* :class:`ModelSpec` and :data:`Freeze` (:mod:`hrtem_ray.learning.model`);
* :data:`Phase` / :data:`PHASES` and :data:`SPLITS` (trials, results and analysis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from hrtem_ray.spec.materials import (
    LATTICES,
    WURTZITE_U,
    CifMaterial,
    LatticeSpec,
    Material,
    Shape,
    ZoneAxisOrientation,
    canonical_miller,
    material_info,
    material_label,
    parse_miller,
    surface_energies_for,
)

__all__ = [
    "ANGSTROM_PER_NM",
    "DETECTOR_DEFAULTS",
    "Freeze",
    "FREEZE_OPTIONS",
    "GRIDS_FIXED",
    "GRIDS_PER_PHONON",
    "ImagingCondition",
    "LATTICES",
    "LatticeSpec",
    "MAX_LENGTH_RANGE_ANGSTROM",
    "MAX_PARTICLES",
    "ModelSpec",
    "N_SYMMETRIES",
    "PHASES",
    "Phase",
    "SIMULATION_FIXED_MIB",
    "SPLITS",
    "SimulationParams",
    "TRAINED_PHASES",
    "MULTISLICE_FIELDS",
    "SHAPE_CIRCUMRADIUS_FACTOR",
    "STRUCTURE_FIELDS_OMITTED_AT",
    "StructureParams",
    "StructureWaves",
    "WORKER_BASE_MIB",
    "WURTZITE_U",
    "estimate_worker_memory_bytes",
    "max_particles_fit",
    "multislice_gpts",
    "output_gpts",
    "shape_problem",
]

#: A part of the U-Net kept frozen during a transfer stage (``none``: train everything).
Freeze = Literal["none", "encoder", "decoder"]
FREEZE_OPTIONS: tuple[Freeze, ...] = ("none", "encoder", "decoder")
#: What a model is: pretrained, transferred from a pretrain model, a single-stage
#: baseline on a mixture of two domains, or (no training) the classical blur-and-Otsu
#: threshold of an imported domain (:mod:`hrtem_ray.learning.threshold`).
Phase = Literal["pretrain", "transfer", "baseline", "threshold"]
PHASES: tuple[Phase, ...] = ("pretrain", "transfer", "baseline", "threshold")
#: The phases that train a network.
TRAINED_PHASES: tuple[Phase, ...] = ("pretrain", "transfer", "baseline")
#: Training images are augmented by the 8 symmetries of the square (the dihedral group D4).
N_SYMMETRIES = 8
#: The splits of a dataset: ``train`` (training images), ``val`` (model selection: the
#: best epoch) and ``test`` (held out: every reported metric, when the dataset has one).
SPLITS = ("train", "val", "test")
#: Angstrom per nanometre: the spec gives defocus in nm, abTEM takes angstrom.
ANGSTROM_PER_NM = 10.0


# --------------------------------------------------------------------------- structures


#: Upper bound of the substrate-thickness and radius ranges (angstrom).
MAX_LENGTH_RANGE_ANGSTROM = 1000.0
#: Upper bound of the particle-count range.
MAX_PARTICLES = 1000


#: Circumradius over equivalent-sphere radius of the shapes with a fixed form: a cube
#: ``(4 pi / 3)^(1/3) sqrt(3) / 2``, a regular octahedron ``pi^(1/3)``; icosahedra and
#: decahedra of ase.cluster measure at most 1.25 (their discrete sizes round the volume).
#: Wulff shapes depend on their surface energies (checked when the particles are built).
SHAPE_CIRCUMRADIUS_FACTOR = {
    "sphere": 1.0,
    "cube": (4 * np.pi / 3) ** (1 / 3) * np.sqrt(3) / 2,
    "octahedron": np.pi ** (1 / 3),
    "icosahedron": 1.25,
    "decahedron": 1.25,
    "wulff": 1.0,
}

#: The :class:`StructureParams` fields added after datasets existed, at the values that
#: reproduce the earlier generator: left out of every dump (and so of every hash) at them.
STRUCTURE_FIELDS_OMITTED_AT: dict[str, Any] = {
    "shape": "sphere",
    "surface_energies": None,
    "orientation": "random",
    "max_twins": 0,
    "max_fcc_stacking_faults": 0,
    "stoichiometry": "auto",
}


#: Validation-context key of a spec that hrtem-ray stored itself (``study.json``,
#: ``dataset.json``): the refusals that protect planning new work (a particle count that
#: can never fit, added after studies existed) do not stop reading what was written.
STORED = "stored"


def max_particles_fit(
    cell_angstrom: float, radius_angstrom: float, min_separation_angstrom: float
) -> int:
    """Most particles of radius ``radius_angstrom`` or more that can ever fit in the cell.

    Particles lie inside the ``cell_angstrom`` square (centres in a square of side
    ``cell_angstrom - 2 radius``), rest on one plane, and keep ``min_separation_angstrom``
    surface to surface, so any two centres are at least ``d = 2 radius +
    min_separation_angstrom`` apart in the plane (also for unequal radii, each at least
    ``radius``). Oler's inequality (1961) bounds the number of points ``d`` apart in a
    convex region of area ``A`` and perimeter ``P``: ``N <= 2 / sqrt(3) A / d^2 + P / (2 d)
    + 1``. The bound is reached only by a perfect hexagonal packing; random placement
    (:func:`hrtem_ray.physics.structures.random_structure`) stalls well below it.

    Parameters
    ----------
    cell_angstrom
        Side of the square cell.
    radius_angstrom
        The smallest particle radius.
    min_separation_angstrom
        Smallest surface-to-surface distance.

    Returns
    -------
    int
        The bound, at least 1 (one particle always fits when ``2 radius <= cell``).
    """
    side = max(cell_angstrom - 2 * radius_angstrom, 0.0) / (
        2 * radius_angstrom + min_separation_angstrom
    )
    return max(1, int(np.floor(2 / np.sqrt(3) * side**2 + 2 * side + 1 + 1e-9)))


class StructureParams(BaseModel):
    """Parameters of the random structure generator (all lengths in angstrom).

    Ranges are ``(low, high)`` tuples, drawn uniformly (integers inclusive). Every
    number must be finite and within the bounds given per field (e.g. a cell of 5
    to 2000 A, at most 4 stacking faults, whose random draw otherwise may take
    very long to find fault layers two bilayers apart).

    Materials, shapes and defects
    -----------------------------
    ``lattices`` are keys of :data:`LATTICES` or ``{cif: PATH}`` entries
    (:class:`~hrtem_ray.spec.materials.CifMaterial`); each structure draws one.
    ``radius_angstrom`` is the radius of the sphere of the same volume (the same number
    of atoms) for every ``shape``, so that studies across shapes compare like with like.
    ``shape`` must exist for every lattice: ``icosahedron`` and ``decahedron`` need fcc
    crystals of one element, ``cube`` and ``octahedron`` cubic ones, ``wulff`` surface
    energies (``surface_energies`` per Miller index, else the material's default:
    :data:`~hrtem_ray.spec.materials.DEFAULT_SURFACE_ENERGIES`). ``orientation`` is
    ``random`` or a :class:`~hrtem_ray.spec.materials.ZoneAxisOrientation`. Particles of
    fcc crystals of one element get 0..``max_twins`` {111} twin planes and
    0..``max_fcc_stacking_faults`` intrinsic stacking faults (drawn per particle; not for
    icosahedra and decahedra, which are twinned by their shape), wurtzite particles
    0..``max_stacking_faults`` I1 faults. ``stoichiometry``: ``auto`` keeps every
    compound particle's formula within 2% (removing the least bound atoms of the elements
    in excess), except spheres of the reference study's 9 lattices, cut as they always
    were; ``kept`` trims those too; ``as_cut`` never trims.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    cell_angstrom: float = Field(
        128.0, ge=5, le=2000, description="Side L of the square cell (x, y)."
    )
    substrate_thickness_angstrom: tuple[float, float] = (20.0, 80.0)
    lattices: tuple[Material, ...] = ("CdSe",)
    radius_angstrom: tuple[float, float] = (15.0, 25.0)
    n_particles: tuple[int, int] = (1, 5)
    max_stacking_faults: int = Field(2, ge=0, le=4, description="Wurtzite only: 0..max I1 faults.")
    min_separation_angstrom: float = Field(10.0, ge=0, le=1000, description="Surface to surface.")
    carbon_density_per_angstrom3: float = Field(0.11, gt=0, le=0.3)
    carbon_min_distance_angstrom: float = Field(1.4, gt=0, le=5)
    vacuum_angstrom: float = Field(2.0, ge=0, le=1000, description="Vacuum above and below.")
    particle_gap_angstrom: float = Field(1.5, ge=0, le=100, description="Particle to substrate.")
    max_placement_attempts: int = Field(200, ge=1, le=100_000)
    shape: Shape = "sphere"
    surface_energies: dict[str, float] | None = None
    orientation: Literal["random"] | ZoneAxisOrientation = "random"
    max_twins: int = Field(0, ge=0, le=4, description="fcc of one element: 0..max twin planes.")
    max_fcc_stacking_faults: int = Field(
        0, ge=0, le=4, description="fcc of one element: 0..max intrinsic stacking faults."
    )
    stoichiometry: Literal["auto", "kept", "as_cut"] = "auto"

    @field_validator("substrate_thickness_angstrom", "radius_angstrom")
    @classmethod
    def _positive_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= MAX_LENGTH_RANGE_ANGSTROM:
            raise ValueError(
                f"need 0 < low <= high <= {MAX_LENGTH_RANGE_ANGSTROM:g}, got {list(value)}"
            )
        return value

    @field_validator("n_particles")
    @classmethod
    def _count_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1 <= low <= high <= MAX_PARTICLES:
            raise ValueError(f"need 1 <= low <= high <= {MAX_PARTICLES}, got {list(value)}")
        return value

    @field_validator("lattices")
    @classmethod
    def _known_lattices(cls, value: tuple[Material, ...]) -> tuple[Material, ...]:
        if not value:
            raise ValueError("at least one lattice is required")
        unknown = [name for name in value if isinstance(name, str) and name not in LATTICES]
        if unknown:
            raise ValueError(
                f"unknown lattice(s) {unknown}; allowed: {sorted(LATTICES)}, or {{cif: PATH}}"
            )
        labels = [material_label(m) for m in value]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(
                f"material(s) {repeated} listed twice; give each CIF material its own name"
            )
        return value

    @field_validator("shape")
    @classmethod
    def _shape_exists_for_lattices(cls, value: str, info: ValidationInfo) -> str:
        for material in info.data.get("lattices", ()):
            problem = shape_problem(value, material)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("surface_energies", mode="before")
    @classmethod
    def _canonical_miller_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for key, energy in value.items():
            miller = canonical_miller(parse_miller(key))
            if miller in out:
                raise ValueError(f"Miller indices {key!r} given twice")
            if isinstance(energy, int | float) and not energy > 0:
                raise ValueError(f"({miller}): {energy}; surface energies must be > 0")
            out[miller] = energy
        if not out:
            raise ValueError("needs at least one Miller index")
        return out

    @model_validator(mode="after")
    def _particles_fit(self, info: ValidationInfo) -> StructureParams:
        factor = SHAPE_CIRCUMRADIUS_FACTOR[self.shape]
        shown = "" if factor == 1 else f" (a {self.shape} reaches {factor:.2f} x radius)"
        if 2 * factor * self.radius_angstrom[1] >= self.cell_angstrom:
            raise ValueError(
                f"radius_angstrom {self.radius_angstrom} does not fit in cell_angstrom "
                f"{self.cell_angstrom}{shown}"
            )
        if self.shape == "wulff":
            missing = [
                material_label(m)
                for m in self.lattices
                if surface_energies_for(m, self.surface_energies) is None
            ]
            if missing:
                raise ValueError(
                    f"surface_energies: shape wulff needs surface energies for {missing} "
                    "(no default for them), e.g. surface_energies: {'111': 1.0, '100': 1.15}"
                )
        if (info.context or {}).get(STORED):  # written by hrtem-ray: read as it was planned
            return self
        low, high = self.n_particles
        most = max_particles_fit(
            self.cell_angstrom, factor * self.radius_angstrom[0], self.min_separation_angstrom
        )
        if high > most:
            raise ValueError(
                f"n_particles {[low, high]} can never fit: at most {most} particles of radius "
                f">= {self.radius_angstrom[0]:g} A{shown}, {self.min_separation_angstrom:g} A apart "
                f"(min_separation_angstrom), fit in a cell of {self.cell_angstrom:g} A "
                f"(cell_angstrom); allowed: n_particles up to {most}, or a larger "
                "cell_angstrom, smaller radius_angstrom or min_separation_angstrom"
            )
        return self

    @model_serializer(mode="wrap")
    def _omit_new_fields_at_defaults(self, handler) -> dict[str, Any]:
        out = handler(self)
        for name, default in STRUCTURE_FIELDS_OMITTED_AT.items():
            if name in out and out[name] == default:
                del out[name]
        return out


def shape_problem(shape: str, material: str | CifMaterial) -> str | None:
    """Why a shape does not exist for a material (a message naming both), or None."""
    info = material_info(material)
    if shape in ("icosahedron", "decahedron") and not info.is_fcc_element:
        return (
            f"shape {shape} needs an fcc crystal of one element (Au, Pt, Pd, Cu, Ag or such "
            f"a CIF); {info.kind} is not one"
        )
    if shape in ("cube", "octahedron") and not info.is_cubic:
        return f"shape {shape} needs a cubic crystal (space group 195-230); {info.kind} is not one"
    return None


# --------------------------------------------------------------------------- simulation


#: The detector fields of :class:`SimulationParams` at their defaults (an ideal detector).
DETECTOR_DEFAULTS = {"detector_mtf_at_nyquist": 1.0, "detector_noise_e_per_pixel": 0.0}


class SimulationParams(BaseModel):
    """Multislice, ground-truth and imaging parameters (paper values by default).

    Every number must be finite and within physical bounds (given per field:
    e.g. 10 to 3000 keV, a multislice sampling of 0.01 to 1 A, at most 256
    phonon configurations); the memory a worker needs is estimated by
    :func:`estimate_worker_memory_bytes`.

    Mask recipes (see :func:`phase_mask`) are applied to the phase of the
    phonon-averaged particles-in-vacuum exit wave at the output sampling:

    ``"paper"``
        Binary ``phase > paper_threshold_rad`` (pi/16), blurred by the lattice's
        blur (1 A for C, Fe and Co3O4, 1.6 A otherwise) or ``mask_blur_angstrom``.
    ``"smoothed"`` (default)
        Phase smoothed by a Gaussian of ``smoothed_phase_sigma_angstrom`` first,
        then binary ``> smoothed_threshold_rad``, then the same blur.

    Detector (:func:`hrtem_ray.physics.simulate.apply_detector`, after the Poisson noise of
    the dose): a modulation transfer function falling as a Gaussian in spatial frequency
    to ``detector_mtf_at_nyquist`` at the output Nyquist frequency, then Gaussian read
    noise of ``detector_noise_e_per_pixel`` electrons per pixel (the noise floor). The
    defaults (1 and 0) are an ideal detector, the study's (and every dataset's before
    these fields existed); real cameras have an MTF of about 0.1-0.6 at Nyquist (Larsen
    et al., arXiv 2302.12629, found that modelling it matters on real camera data).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    energy_kev: float = Field(300.0, ge=10, le=3000, description="Beam energy (TEMs: 20-1250).")
    sampling_angstrom: float = Field(
        0.1, ge=0.01, le=1.0, description="Multislice real-space sampling (paper: 0.1)."
    )
    slice_thickness_angstrom: float = Field(2.0, ge=0.1, le=100)
    n_phonons: int = Field(8, ge=1, le=256, description="Frozen-phonon configurations.")
    phonon_sigma_angstrom: float = Field(
        0.1, ge=0, le=1, description="Displacement std per Cartesian direction, all elements."
    )
    output_sampling_angstrom: float = Field(0.2, gt=0, le=10, description="Image pixel size.")
    focal_spread_angstrom: float = Field(10.0, ge=0, le=1000, description="abTEM 1/e focal spread.")
    defocus_jitter_nm: float = Field(1.5, ge=0, le=100, description="Std of the per-image jitter.")
    mask_recipe: Literal["smoothed", "paper"] = "smoothed"
    paper_threshold_rad: float = Field(np.pi / 16, gt=0, le=np.pi)
    smoothed_phase_sigma_angstrom: float = Field(1.0, ge=0, le=100)
    smoothed_threshold_rad: float = Field(np.pi / 64, gt=0, le=np.pi)
    mask_blur_angstrom: float | None = Field(
        None, ge=0, le=100, description="Mask blur std; None = per lattice (1 or 1.6 A)."
    )
    calibration_window_angstrom: float = Field(
        15.0, gt=0, le=1000, description="Search margin around the particle-centre distances."
    )
    calibration_coarse_step_angstrom: float = Field(1.0, ge=0.01, le=100)
    calibration_fine_step_angstrom: float = Field(0.1, ge=0.001, le=100)
    detector_mtf_at_nyquist: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Detector MTF at the output Nyquist frequency (1: an ideal detector).",
    )
    detector_noise_e_per_pixel: float = Field(
        0.0, ge=0, le=1e4, description="Std of the detector's read noise (noise floor), e/px."
    )

    @model_serializer(mode="wrap")
    def _omit_ideal_detector(self, handler) -> dict:
        """Leave the detector fields out at their defaults (an ideal detector), so that the
        stored spec and the hash of every dataset written before they existed stay as they were."""
        out = handler(self)
        for name, ideal in DETECTOR_DEFAULTS.items():
            if out.get(name) == ideal:
                out.pop(name, None)
        return out

    @model_validator(mode="after")
    def _output_not_finer(self) -> SimulationParams:
        if self.output_sampling_angstrom < self.sampling_angstrom:
            raise ValueError(
                f"output_sampling_angstrom {self.output_sampling_angstrom} is finer than "
                f"sampling_angstrom {self.sampling_angstrom}"
            )
        coarse, fine = self.calibration_coarse_step_angstrom, self.calibration_fine_step_angstrom
        if not fine <= coarse <= 1000 * fine:
            raise ValueError(
                f"calibration_fine_step_angstrom {fine} and calibration_coarse_step_angstrom "
                f"{coarse}: need fine <= coarse <= 1000 * fine"
            )
        return self


@dataclass(frozen=True)
class ImagingCondition:
    """One imaging domain.

    Attributes
    ----------
    domain : str
        Label, e.g. ``"-10"``.
    defocus_nm : float
        Nominal defocus relative to the calibrated zero (abTEM sign: positive =
        underfocus).
    dose_e_per_angstrom2 : float or None
        Electron dose; None for noiseless normalised intensity.
    focal_spread_angstrom : float or None
        abTEM 1/e focal spread of this domain; None: ``SimulationParams.focal_spread_angstrom``.
    cs_mm : float
        Spherical aberration C30 in mm (abTEM's ``Cs`` is in angstrom: ``1e7 * cs_mm``).
    """

    domain: str
    defocus_nm: float
    dose_e_per_angstrom2: float | None
    focal_spread_angstrom: float | None = None
    cs_mm: float = 0.0


#: The :class:`SimulationParams` fields of the multislice physics: what the exit
#: waves depend on. The others (output sampling, focal spread, jitter, mask and
#: calibration) are applied to stored waves (:mod:`hrtem_ray.dataset.waves`).
MULTISLICE_FIELDS = (
    "energy_kev",
    "sampling_angstrom",
    "slice_thickness_angstrom",
    "n_phonons",
    "phonon_sigma_angstrom",
)


@dataclass
class StructureWaves:
    """The exit waves of one structure and what its ground truth and calibration need.

    Everything after the multislice is a function of this record and the imaging
    parameters (:func:`hrtem_ray.physics.simulate.images_from_waves`); the exit-wave store
    (:mod:`hrtem_ray.dataset.waves`) keeps it on disk.

    Attributes
    ----------
    full_spectra, particle_spectra : np.ndarray
        complex64 ``(n_phonons, n, n)`` Fourier-cropped spectra (unshifted, see
        :func:`hrtem_ray.physics.simulate.wave_spectra`) of every frozen-phonon exit wave of
        the full structure and of the particles alone in vacuum (same exit plane).
    cell_angstrom : float
        Side of the square cell; the pixel size is ``cell_angstrom / n``.
    lattice : str
        Lattice of the particles (selects the paper mask blur).
    n_particles : int
        Number of particles.
    exit_depths_angstrom : tuple of float
        Smallest and largest particle-centre-to-exit-plane distance (calibration window).
    zero_defocus_angstrom : float or None
        Calibrated zero, valid for the calibration inputs ``zero_key``.
    zero_key : str
        The calibration inputs ``zero_defocus_angstrom`` was found with ("" for none).
    multislice_seconds : float
        Wall-clock seconds of the multislice (0 when read from the store).
    """

    full_spectra: np.ndarray
    particle_spectra: np.ndarray
    cell_angstrom: float
    lattice: str
    n_particles: int
    exit_depths_angstrom: tuple[float, float]
    zero_defocus_angstrom: float | None = None
    zero_key: str = ""
    multislice_seconds: float = 0.0


def multislice_gpts(cell_angstrom: float, params: SimulationParams) -> int:
    """Multislice grid side in points: ``ceil(cell_angstrom / sampling_angstrom)`` (abTEM's)."""
    return int(np.ceil(cell_angstrom / params.sampling_angstrom))


#: Resident memory of a simulation worker before it simulates (MiB): hrtem_ray, torch,
#: abTEM and pyarrow imported, measured 534 MiB in a plain process; a Ray Data worker
#: adds about 95 MiB (laptop preset: 569 MiB peak in a plain process, 663 MiB in a Ray
#: worker, ``benchmarks/results/simulate.json``).
WORKER_BASE_MIB = 640
#: Grid-independent memory of the first structure simulated (abTEM, dask and FFTW
#: state): measured 28 MiB at a 128^2 grid; 40 leaves a margin.
SIMULATION_FIXED_MIB = 40
#: complex64 grids of the multislice working set (potential slices, transmission
#: function, propagator, FFTW buffers) and per frozen-phonon configuration (exit
#: wave kept, its FFT, dask's concatenation), fitted to the measurements below.
GRIDS_FIXED = 10
GRIDS_PER_PHONON = 3


def estimate_worker_memory_bytes(structures: StructureParams, params: SimulationParams) -> int:
    """Estimated peak memory (bytes) of one worker simulating structures of these parameters.

    ``(WORKER_BASE_MIB + SIMULATION_FIXED_MIB) MiB + 8 n^2 (GRIDS_FIXED +
    GRIDS_PER_PHONON * n_phonons)`` bytes, ``n`` being :func:`multislice_gpts`: the
    multislice grid, the exit waves of every phonon configuration (kept until their
    Fourier cropping), the potential slices and the particles-only pass (which runs
    after the full structure's waves are freed, on the same grid). The substrate
    thickness changes the time (slices), not the memory.

    The constants are calibrated against peak memory measured per grid size and phonon
    count (README, "Benchmarks"); ``tests/physics/test_simulate.py`` measures two sizes again.

    Parameters
    ----------
    structures : StructureParams
        Sets the cell side.
    params : SimulationParams
        Sets the sampling and the phonon count.

    Returns
    -------
    int
        Bytes, including the worker's base memory (:data:`WORKER_BASE_MIB`).
    """
    side = multislice_gpts(structures.cell_angstrom, params)
    grid_bytes = 8 * side * side
    grids = GRIDS_FIXED + GRIDS_PER_PHONON * params.n_phonons
    return (WORKER_BASE_MIB + SIMULATION_FIXED_MIB) * 2**20 + grid_bytes * grids


def output_gpts(cell_angstrom: float, params: SimulationParams) -> int:
    """Output image side in pixels; the pixel size is ``cell_angstrom / output_gpts``."""
    return int(round(cell_angstrom / params.output_sampling_angstrom))


# --------------------------------------------------------------------------- model


_PRESETS: dict[str, dict[str, tuple[int, ...] | int]] = {
    "full": {
        "stem_channels": 64,
        "encoder_channels": (64, 128, 256, 512),
        "encoder_depths": (2, 2, 2, 2),
        "decoder_channels": (256, 128, 64, 32, 16),
    },
    "small": {
        "stem_channels": 16,
        "encoder_channels": (16, 32, 64, 128),
        "encoder_depths": (1, 1, 1, 1),
        "decoder_channels": (32, 16, 16, 8, 8),
    },
}


class ModelSpec(BaseModel):
    """Architecture of a :class:`UNet`.

    Parameters
    ----------
    size
        ``"full"`` (smp ``Unet("resnet18")`` layout, 14.3 M parameters) or ``"small"``
        (laptop option, 395,330 parameters).
    stem_channels, encoder_channels, encoder_depths, decoder_channels
        Optional overrides of the preset widths: stem output channels, the output channels
        and number of residual blocks of the four encoder stages, and the output channels of
        the five decoder blocks.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: Literal["full", "small"] = "small"
    stem_channels: int | None = Field(default=None, ge=1)
    encoder_channels: tuple[int, int, int, int] | None = None
    encoder_depths: tuple[int, int, int, int] | None = None
    decoder_channels: tuple[int, int, int, int, int] | None = None

    def resolved(self) -> dict[str, tuple[int, ...] | int]:
        """Return the widths and depths with the preset filled in where not overridden."""
        out = dict(_PRESETS[self.size])
        for key in out:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out
