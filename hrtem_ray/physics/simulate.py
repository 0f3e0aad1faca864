"""HRTEM image simulation with abTEM: exit waves, ground truth, calibration, imaging.

Pipeline for one structure (:func:`simulate_structure`):

1. Plane-wave multislice (:func:`exit_waves`) of the full structure and of the
   particles alone in vacuum with the same exit plane (:func:`particle_spectra`),
   keeping the exit wave of every frozen-phonon configuration.
2. Fourier cropping of the waves to ``output_sampling_angstrom``
   (:func:`wave_spectra`); everything after works at the output sampling.
3. Ground-truth mask from the phase of the particles-in-vacuum exit wave
   (:func:`phase_mask`).
4. Zero defocus calibrated to the minimum-contrast condition of the
   particles-in-vacuum image (:func:`calibrate_zero_defocus`).
5. For each imaging condition: jittered defocus, CTF with focal spread and
   spherical aberration applied to every phonon configuration, intensities
   averaged (:func:`image_intensity`), then dose and Poisson noise (:func:`apply_dose`)
   and, when the spec asks for one, the detector's MTF and read noise
   (:func:`apply_detector`).

Steps 1-2 (:func:`structure_waves`) are almost all of the cost; their result, a
:class:`~hrtem_ray.spec.types.StructureWaves`, is what the exit-wave store keeps
(:mod:`hrtem_ray.dataset.waves`), and steps 3-5 (:func:`images_from_waves`) turn it into
images for any imaging parameters. :func:`simulate_structure` is the two in one
pass, so images from stored waves are bit-identical to one-pass images.

Conventions
-----------
Defocus
    abTEM's: ``defocus = -C10``, positive is underfocus. The CTF is
    ``exp(i pi lambda k^2 defocus)``, so applying ``defocus = d > 0`` to an exit
    wave equals propagating it back (towards the source) by ``d``; the plane at
    distance ``d`` above the exit plane is then in focus. The calibrated zero of a
    structure is therefore positive and close to the distance between the exit
    plane and the particle centres. :class:`ImagingCondition` defoci are in nm,
    same sign convention, relative to that calibrated zero.
Focal spread
    ``focal_spread_angstrom`` is abTEM's ``focal_spread`` parameter, a 1/e width
    (Kirkland's Delta), not a standard deviation: the temporal envelope is
    ``exp(-(pi * Delta * lambda * k^2 / 2)^2)``, equal to averaging the wave over a
    Gaussian defocus spread of standard deviation ``Delta / sqrt(2)`` (7.07 A for
    the study's 10 A). It is applied to the wave function (quasi-coherent
    approximation), exactly as ``abtem.CTF(focal_spread=...)`` does.
Spherical aberration
    ``cs_mm`` is C30 in mm; abTEM's ``Cs``/``C30`` is in angstrom (``1e7 * cs_mm``).
    Its phase ``chi = pi/2 C30 lambda^3 k^4`` enters the CTF as ``exp(-i chi)``,
    as in ``abtem.CTF(Cs=...)`` (positive Cs with underfocus: Scherzer conditions).
Intensity
    The incident plane wave has unit amplitude, so noiseless images are normalised
    intensities (vacuum = 1); with a dose they are electron counts per pixel.
Reproducibility
    abTEM runs single-threaded (dask ``scheduler="synchronous"``, one FFTW
    thread) with FFTW wisdom loaded from a cache file before any planning and
    saved after (:func:`fftw_wisdom_path`), so the same seed gives the same
    images bit for bit on one machine, whichever process computes them. Call
    :func:`warm_fftw_wisdom` once before starting parallel workers so that they all
    plan from the same wisdom.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.fft
from ase import Atoms
from scipy.ndimage import gaussian_filter

from hrtem_ray.physics.structures import Structure
from hrtem_ray.spec.materials import paper_mask_blur_angstrom
from hrtem_ray.spec.types import (
    ANGSTROM_PER_NM,
    ImagingCondition,
    SimulationParams,
    StructureWaves,
    estimate_worker_memory_bytes,
    multislice_gpts,
    output_gpts,
)
from hrtem_ray.store import storage

__all__ = [
    "ImagingCondition",
    "SimulationParams",
    "StructureImages",
    "StructureWaves",
    "apply_detector",
    "apply_dose",
    "detector_mtf",
    "calibrate_zero_defocus",
    "calibration_key",
    "ctf",
    "estimate_worker_memory_bytes",
    "exit_waves",
    "fftw_wisdom_path",
    "fourier_crop",
    "image_intensity",
    "images_from_waves",
    "load_fftw_wisdom",
    "multislice_gpts",
    "output_gpts",
    "particle_spectra",
    "phase_mask",
    "save_fftw_wisdom",
    "simulate_structure",
    "spectra_to_waves",
    "structure_waves",
    "warm_fftw_wisdom",
    "wave_spectra",
    "with_calibrated_zero",
]

#: Angstrom per millimetre: the spec gives Cs in mm, abTEM takes angstrom.
ANGSTROM_PER_MM = 1e7

#: Environment variable overriding the FFTW wisdom cache file.
WISDOM_ENV = "HRTEM_RAY_FFTW_WISDOM"

# Random streams derived from a structure seed: default_rng([seed, stream, ...]).
_STREAM_PHONONS_FULL = 0
_STREAM_PHONONS_PARTICLES = 1
_STREAM_CONDITION = 2


@dataclass
class StructureImages:
    """Images of one structure under several imaging conditions.

    Attributes
    ----------
    images : np.ndarray
        float32 ``(n_conditions, H, W)`` at the output sampling: electron counts,
        or normalised intensity where the dose is None.
    mask : np.ndarray
        float32 ``(H, W)`` ground truth in [0, 1], shared by all conditions.
    defocus_nm : np.ndarray
        float64 ``(n_conditions,)`` actual defocus (nominal + jitter) relative to
        the calibrated zero.
    zero_defocus_angstrom : float
        Calibrated zero, absolute abTEM defocus relative to the exit plane.
    pixel_size_angstrom : float
        Output pixel size.
    timings_seconds : dict of str to float
        Wall-clock seconds of "multislice", "mask", "calibration" and "imaging".
    """

    images: np.ndarray
    mask: np.ndarray
    defocus_nm: np.ndarray
    zero_defocus_angstrom: float
    pixel_size_angstrom: float
    timings_seconds: dict[str, float]


# --------------------------------------------------------------------------- FFTW wisdom


def fftw_wisdom_path() -> Path:
    """FFTW wisdom cache file: ``$HRTEM_RAY_FFTW_WISDOM`` or ``~/.cache/hrtem_ray/...``."""
    override = os.environ.get(WISDOM_ENV)
    if override:
        return Path(override)
    return Path.home() / ".cache" / "hrtem_ray" / "fftw_wisdom.pkl"


def load_fftw_wisdom(path: Path | None = None) -> bool:
    """Import saved FFTW wisdom into this process; False if there is none.

    Parameters
    ----------
    path : Path, optional
        Wisdom file (default :func:`fftw_wisdom_path`).
    """
    path = fftw_wisdom_path() if path is None else path
    try:
        wisdom = pickle.loads(path.read_bytes())
    except (FileNotFoundError, pickle.UnpicklingError, EOFError):
        return False
    import pyfftw

    pyfftw.import_wisdom(wisdom)
    return True


def save_fftw_wisdom(path: Path | None = None) -> None:
    """Merge this process's FFTW wisdom into the cache file (atomic replace).

    Wisdom already on disk is imported first, so that plans another process saved
    earlier are kept.
    """
    import pyfftw

    path = fftw_wisdom_path() if path is None else path
    load_fftw_wisdom(path)
    storage.write_bytes_atomic(path, pickle.dumps(pyfftw.export_wisdom()))


@contextmanager
def _abtem_single_threaded() -> Iterator[None]:
    """abTEM configured for one worker core: FFTW, one thread, wisdom cached on disk."""
    import abtem  # imported here: training workers that only read the spec never load abTEM
    import pyfftw

    load_fftw_wisdom()
    before = pyfftw.export_wisdom()
    settings = {
        "device": "cpu",
        "fft": "fftw",
        "fftw.threads": 1,
        "fftw.planning_effort": "FFTW_MEASURE",
        "precision": "float32",
        "diagnostics.progress_bar": False,
    }
    with abtem.config.set(settings), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ensemble_mean=False")
        yield
    if pyfftw.export_wisdom() != before:
        save_fftw_wisdom()


# --------------------------------------------------------------------------- multislice


def exit_waves(
    atoms: Atoms,
    params: SimulationParams,
    seed: int,
    slice_thicknesses_angstrom: Sequence[float] | None = None,
) -> np.ndarray:
    """Plane-wave multislice exit waves of every frozen-phonon configuration.

    Parameters
    ----------
    atoms : ase.Atoms
        Orthogonal cell; the beam enters at z = 0 and exits at z = cell height.
    params : SimulationParams
        Energy, sampling, slice thickness, phonon count and displacement std.
    seed : int
        Seed of the phonon displacements.
    slice_thicknesses_angstrom : sequence of float, optional
        Explicit slices (summing to the cell height). By default abTEM splits the
        cell into ``ceil(c / slice_thickness_angstrom)`` equal slices.

    Returns
    -------
    np.ndarray
        complex64 ``(n_phonons, ny, nx)`` at ``sampling_angstrom`` (abTEM rounds the
        grid up to whole points), unit incident amplitude.
    """
    import abtem

    with _abtem_single_threaded():
        phonons = abtem.FrozenPhonons(
            atoms,
            num_configs=params.n_phonons,
            sigmas=params.phonon_sigma_angstrom,
            seed=seed,
            ensemble_mean=False,
        )
        potential = abtem.Potential(
            phonons,
            sampling=params.sampling_angstrom,
            slice_thickness=(
                params.slice_thickness_angstrom
                if slice_thicknesses_angstrom is None
                else tuple(slice_thicknesses_angstrom)
            ),
        )
        waves = abtem.PlaneWave(energy=params.energy_kev * 1e3).multislice(potential)
        array = waves.compute(scheduler="synchronous").array
    return np.asarray(array, dtype=np.complex64).reshape((params.n_phonons,) + array.shape[-2:])


def particle_spectra(
    structure: Structure, params: SimulationParams, seed: int, gpts: tuple[int, int]
) -> np.ndarray:
    """Cropped spectra of the particles-in-vacuum exit waves at the structure's exit plane.

    Multislice runs through the particle layer only, on the same slices as the full
    cell (abTEM splits a cell of height c into ``n = ceil(c / dz)`` equal slices;
    the first slices down to one slice below the lowest particle atom are kept);
    the vacuum left down to the exit plane of the full structure is crossed by
    exact Fresnel propagation (the CTF at defocus ``-distance``). This saves about
    ``(T + gap + vacuum) / c`` of the work (measured 3.1 s -> 1.7 s for a 64 A
    cell at 0.1 A) and equals multislice through the empty slices to about 1e-3
    in the wave (measured max |difference| 1e-3 at 0.1 A, 4e-3 at 0.2 A sampling:
    abTEM re-applies its tapered antialias aperture in every empty slice).

    Parameters
    ----------
    structure : Structure
        Structure whose ``particles`` are simulated.
    params : SimulationParams
        Multislice parameters.
    seed : int
        Seed of the phonon displacements.
    gpts : tuple of int
        Output grid (see :func:`wave_spectra`).

    Returns
    -------
    np.ndarray
        complex64 ``(n_phonons, *gpts)`` spectra, as :func:`wave_spectra` of the
        full-height exit waves.
    """
    cell_height = structure.cell_height_angstrom
    n_slices = int(np.ceil(cell_height / params.slice_thickness_angstrom))
    thickness = cell_height / n_slices
    bottom = structure.particles.positions[:, 2].max() + 1.0  # + phonon displacements
    n_kept = min(n_slices, int(np.ceil(bottom / thickness)) + 1)
    height = n_kept * thickness
    particles = structure.particles.copy()
    particles.set_cell([*particles.cell.lengths()[:2], height])
    spectra = wave_spectra(exit_waves(particles, params, seed, (thickness,) * n_kept), gpts)
    pixel_size = float(particles.cell[0, 0]) / gpts[1]
    return spectra * ctf(gpts, pixel_size, params.energy_kev, height - cell_height, 0.0)


def warm_fftw_wisdom(cell_angstrom: float, params: SimulationParams) -> None:
    """Plan (and save) the FFTs of a cell size once, before parallel workers start.

    Runs a one-atom multislice on the same lateral grid, so that every worker
    afterwards loads the same wisdom and makes the same plans.
    """
    atoms = Atoms("C", positions=[[cell_angstrom / 2] * 2 + [1.0]])
    atoms.cell = [cell_angstrom, cell_angstrom, 2 * params.slice_thickness_angstrom]
    exit_waves(atoms, params.model_copy(update={"n_phonons": 1}), seed=0)


# --------------------------------------------------------------------------- Fourier space


def fourier_crop(spectra: np.ndarray, gpts: tuple[int, int]) -> np.ndarray:
    """Keep the lowest ``gpts`` spatial frequencies of unshifted 2D spectra.

    Parameters
    ----------
    spectra : np.ndarray
        ``(..., ny, nx)`` FFTs in numpy's (unshifted) frequency order.
    gpts : tuple of int
        Output ``(my, mx)``, each at most the input size.

    Returns
    -------
    np.ndarray
        ``(..., my, mx)`` spectra in unshifted order.
    """
    rows, cols = (
        np.fft.fftfreq(m, 1 / m).astype(int) % n
        for m, n in zip(gpts, spectra.shape[-2:], strict=True)
    )
    return spectra[..., rows[:, None], cols[None, :]]


def wave_spectra(waves: np.ndarray, gpts: tuple[int, int]) -> np.ndarray:
    """Fourier-cropped spectra of waves, normalised so that a plane wave keeps its amplitude.

    ``ifft2(spectrum, norm="forward")`` (:func:`spectra_to_waves`) gives the waves at
    the coarser sampling; this is downsampling by Fourier cropping, not binning.
    """
    spectra = scipy.fft.fft2(waves.astype(np.complex64, copy=False), norm="forward", workers=1)
    return fourier_crop(spectra, gpts)


def spectra_to_waves(spectra: np.ndarray) -> np.ndarray:
    """Real-space waves from spectra made by :func:`wave_spectra`."""
    return scipy.fft.ifft2(spectra, norm="forward", workers=1).astype(np.complex64, copy=False)


@lru_cache(maxsize=8)
def _k2(gpts: tuple[int, int], pixel_size_angstrom: float) -> np.ndarray:
    """Squared spatial frequency (1/A^2) on an unshifted grid (cached, read-only)."""
    ky, kx = (np.fft.fftfreq(n, pixel_size_angstrom) for n in gpts)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    k2.flags.writeable = False
    return k2


def ctf(
    gpts: tuple[int, int],
    pixel_size_angstrom: float,
    energy_kev: float,
    defocus_angstrom: float,
    focal_spread_angstrom: float,
    cs_mm: float = 0.0,
) -> np.ndarray:
    """Contrast transfer function with defocus, spherical aberration and temporal envelope.

    ``exp(i pi lambda k^2 defocus - i pi/2 C30 lambda^3 k^4) * exp(-(pi Delta lambda
    k^2 / 2)^2)`` with ``C30 = 1e7 cs_mm`` angstrom, identical to
    ``abtem.CTF(defocus=defocus, Cs=C30, focal_spread=Delta)`` (abTEM sign: positive
    defocus is underfocus; Delta is a 1/e width, std = Delta / sqrt(2)).

    Returns
    -------
    np.ndarray
        complex64 ``gpts`` array in unshifted frequency order.
    """
    from abtem.core.energy import energy2wavelength

    wavelength = energy2wavelength(energy_kev * 1e3)
    k2 = _k2(tuple(gpts), float(pixel_size_angstrom))
    phase = np.pi * wavelength * defocus_angstrom * k2
    if cs_mm:  # (the same arithmetic as before Cs existed when it is 0: bit-identical images)
        phase = phase - 0.5 * np.pi * cs_mm * ANGSTROM_PER_MM * wavelength**3 * k2**2
    phase = phase.astype(np.float32)
    envelope = np.exp(-((0.5 * np.pi * focal_spread_angstrom * wavelength * k2) ** 2))
    envelope = envelope.astype(np.float32)
    transfer = np.empty(k2.shape, dtype=np.complex64)
    np.multiply(envelope, np.cos(phase), out=transfer.real)
    np.multiply(envelope, np.sin(phase), out=transfer.imag)
    return transfer


def image_intensity(
    spectra: np.ndarray,
    pixel_size_angstrom: float,
    defocus_angstrom: float,
    params: SimulationParams,
    focal_spread_angstrom: float | None = None,
    cs_mm: float = 0.0,
) -> np.ndarray:
    """Image intensity, averaged over phonon configurations after the CTF.

    Parameters
    ----------
    spectra : np.ndarray
        ``(n_phonons, H, W)`` from :func:`wave_spectra`.
    pixel_size_angstrom : float
        Pixel size of the spectra's real-space grid.
    defocus_angstrom : float
        Absolute abTEM defocus relative to the exit plane.
    params : SimulationParams
        Energy, and the focal spread unless given.
    focal_spread_angstrom : float, optional
        abTEM 1/e focal spread (default ``params.focal_spread_angstrom``).
    cs_mm : float
        Spherical aberration C30 in mm.

    Returns
    -------
    np.ndarray
        float64 ``(H, W)`` normalised intensity (vacuum = 1).
    """
    transfer = ctf(
        spectra.shape[-2:],
        pixel_size_angstrom,
        params.energy_kev,
        defocus_angstrom,
        params.focal_spread_angstrom if focal_spread_angstrom is None else focal_spread_angstrom,
        cs_mm,
    )
    waves = spectra_to_waves(spectra * transfer)
    return (waves.real**2 + waves.imag**2).mean(axis=0, dtype=np.float64)


# --------------------------------------------------------------------------- ground truth


def _threshold_and_blur(phase_rad: np.ndarray, threshold_rad: float, blur_px: float) -> np.ndarray:
    binary = (phase_rad > threshold_rad).astype(np.float64)
    return np.clip(gaussian_filter(binary, blur_px, mode="wrap"), 0.0, 1.0)


def phase_mask(
    particle_waves: np.ndarray,
    pixel_size_angstrom: float,
    lattice: str,
    params: SimulationParams,
) -> np.ndarray:
    """Ground-truth mask from the particles-in-vacuum exit-wave phase.

    The phase is that of the phonon-averaged exit wave (vacuum = 0). Coverage is
    the mask area (sum of mask values) over the projected particle-disc area,
    measured for one particle of each of the 9 lattices at radii 1, 2 and 3.5 nm
    (300 kV, 0.1 A multislice, 2 phonons, 0.2 A output, random orientation):

    ``"paper"`` (raw phase > pi/16, blur 1 or 1.6 A)
        0.22 to 0.97, mean 0.64; small particles worst (0.22 to 0.61 at 1 nm): the
        thin rim and the gaps between atomic columns stay below pi/16.
    ``"smoothed"`` (default: phase smoothed by 1 A, > pi/64, same blur)
        0.88 to 1.06, mean 1.00: within 15% of the disc area for radii 1 to 3.5 nm.

    Parameters
    ----------
    particle_waves : np.ndarray
        complex ``(n_phonons, H, W)`` exit waves at the output sampling.
    pixel_size_angstrom : float
        Pixel size of ``particle_waves``.
    lattice : str
        Material label (selects the paper blur: :func:`hrtem_ray.spec.materials.paper_mask_blur_angstrom`).
    params : SimulationParams
        Recipe and its parameters.

    Returns
    -------
    np.ndarray
        float32 ``(H, W)`` in [0, 1].
    """
    phase = np.angle(particle_waves.mean(axis=0))
    blur = params.mask_blur_angstrom
    if blur is None:
        blur = paper_mask_blur_angstrom(lattice)
    if params.mask_recipe == "paper":
        threshold = params.paper_threshold_rad
    else:
        sigma_px = params.smoothed_phase_sigma_angstrom / pixel_size_angstrom
        phase = gaussian_filter(phase, sigma_px, mode="wrap")
        threshold = params.smoothed_threshold_rad
    return _threshold_and_blur(phase, threshold, blur / pixel_size_angstrom).astype(np.float32)


# --------------------------------------------------------------------------- calibration


def _argmin_variance(
    spectra: np.ndarray, pixel_size_angstrom: float, defoci: np.ndarray, params: SimulationParams
) -> float:
    variances = [
        image_intensity(spectra, pixel_size_angstrom, float(d), params).var() for d in defoci
    ]
    return float(defoci[int(np.argmin(variances))])


def calibrate_zero_defocus(
    particle_spectra: np.ndarray,
    pixel_size_angstrom: float,
    window_angstrom: tuple[float, float],
    params: SimulationParams,
) -> float:
    """Defocus of minimum contrast of the particles-in-vacuum image.

    Two-stage grid search minimising the image variance: coarse steps
    (``calibration_coarse_step_angstrom``, 1 A) over ``window_angstrom``, then fine
    steps (0.1 A) within one coarse step of the coarse minimum.

    Parameters
    ----------
    particle_spectra : np.ndarray
        ``(n_phonons, H, W)`` from :func:`wave_spectra` of the particles alone.
    pixel_size_angstrom : float
        Pixel size of the spectra's real-space grid.
    window_angstrom : tuple of float
        ``(low, high)`` abTEM defocus search range.
    params : SimulationParams
        Imaging parameters and grid steps.

    Returns
    -------
    float
        abTEM defocus (angstrom, positive = underfocus) relative to the exit plane.
    """
    coarse_step = params.calibration_coarse_step_angstrom
    fine_step = params.calibration_fine_step_angstrom
    coarse = np.arange(window_angstrom[0], window_angstrom[1] + coarse_step / 2, coarse_step)
    best = _argmin_variance(particle_spectra, pixel_size_angstrom, coarse, params)
    n_fine = int(round(coarse_step / fine_step))
    fine = best + fine_step * np.arange(-n_fine, n_fine + 1)
    return _argmin_variance(particle_spectra, pixel_size_angstrom, fine, params)


def calibration_window(
    exit_depths_angstrom: tuple[float, float], params: SimulationParams
) -> tuple[float, float]:
    """Search range: the particle-centre-to-exit-plane distance range +- the window margin."""
    margin = params.calibration_window_angstrom
    return float(exit_depths_angstrom[0] - margin), float(exit_depths_angstrom[1] + margin)


def calibration_key(params: SimulationParams, gpts: int) -> str:
    """What the calibrated zero depends on besides the particle waves, as a string.

    The zero is the minimum-contrast defocus with the dataset's focal spread
    (``params.focal_spread_angstrom``) and no spherical aberration, whatever the
    domains' focal spread and Cs: a geometric reference (where the particles are),
    shared by every domain of a structure.
    """
    fields = (
        "energy_kev",
        "focal_spread_angstrom",
        "calibration_window_angstrom",
        "calibration_coarse_step_angstrom",
        "calibration_fine_step_angstrom",
    )
    return "|".join([f"gpts={gpts}"] + [f"{name}={getattr(params, name)!r}" for name in fields])


# --------------------------------------------------------------------------- imaging


def apply_dose(
    intensity: np.ndarray,
    dose_e_per_angstrom2: float | None,
    pixel_size_angstrom: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Electron counts: intensity scaled to electrons per pixel, Poisson sampled.

    Parameters
    ----------
    intensity : np.ndarray
        Normalised intensity (vacuum = 1).
    dose_e_per_angstrom2 : float or None
        Dose; None returns the intensity unchanged (as float32).
    pixel_size_angstrom : float
        Pixel side, the pixel area being its square.
    rng : numpy.random.Generator
        Source of the Poisson noise.

    Returns
    -------
    np.ndarray
        float32 counts (mean ``intensity * dose * pixel_size^2``).
    """
    if dose_e_per_angstrom2 is None:
        return intensity.astype(np.float32)
    electrons_per_pixel = dose_e_per_angstrom2 * pixel_size_angstrom**2
    return rng.poisson(np.clip(intensity, 0, None) * electrons_per_pixel).astype(np.float32)


def detector_mtf(shape: tuple[int, int], mtf_at_nyquist: float) -> np.ndarray:
    """A detector's modulation transfer function on the FFT grid of ``shape``.

    A Gaussian in spatial frequency ``q`` (cycles per pixel), 1 at ``q = 0`` and
    ``mtf_at_nyquist`` at the Nyquist frequency ``q = 1/2`` along an axis:
    ``mtf_at_nyquist ** ((q / 0.5) ** 2)``.

    Examples
    --------
    >>> mtf = detector_mtf((4, 4), 0.25)
    >>> float(mtf[0, 0]), float(mtf[0, 2]), float(mtf[2, 2])
    (1.0, 0.25, 0.0625)
    """
    qy = np.fft.fftfreq(shape[0])[:, None]
    qx = np.fft.fftfreq(shape[1])[None, :]
    return mtf_at_nyquist ** ((qy**2 + qx**2) / 0.25)


def apply_detector(
    counts: np.ndarray,
    mtf_at_nyquist: float,
    noise_e_per_pixel: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """An image as a real detector records it: its MTF, then its read noise (noise floor).

    Parameters
    ----------
    counts : np.ndarray
        The recorded electrons per pixel (after the dose's Poisson noise), ``(H, W)``.
    mtf_at_nyquist : float
        :func:`detector_mtf` at Nyquist; 1 leaves the image as it is.
    noise_e_per_pixel : float
        Standard deviation of additive Gaussian read noise, electrons per pixel; 0: none.
    rng : numpy.random.Generator
        Source of the read noise.

    Returns
    -------
    np.ndarray
        float32 ``(H, W)``; the mean is kept (the MTF is 1 at zero frequency).
    """
    image = np.asarray(counts, dtype=np.float64)
    if mtf_at_nyquist < 1:
        image = np.fft.ifft2(np.fft.fft2(image) * detector_mtf(image.shape, mtf_at_nyquist)).real
    if noise_e_per_pixel > 0:
        image = image + rng.normal(0.0, noise_e_per_pixel, image.shape)
    return image.astype(np.float32)


def condition_rng(seed: int, condition: ImagingCondition) -> np.random.Generator:
    """Generator of one condition's jitter and noise, from the seed and the condition.

    Derived from the condition's content, not its position in the request, so an
    image does not depend on which other conditions are simulated with it.
    """
    key = f"{condition.domain}|{condition.defocus_nm!r}|{condition.dose_e_per_angstrom2!r}"
    return np.random.default_rng([seed, _STREAM_CONDITION, zlib.crc32(key.encode())])


def _derived_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def structure_waves(
    structure: Structure, params: SimulationParams, seed: int, gpts: int | None = None
) -> StructureWaves:
    """The multislice of one structure: cropped exit waves, full and particles alone.

    Parameters
    ----------
    structure : Structure
        From :func:`hrtem_ray.physics.structures.random_structure`.
    params : SimulationParams
        Multislice parameters (:data:`~hrtem_ray.spec.types.MULTISLICE_FIELDS`).
    seed : int
        Structure seed; the phonon seeds of both passes derive from it.
    gpts : int, optional
        Side of the stored band (default: :func:`output_gpts` of ``params``).

    Returns
    -------
    StructureWaves
        Without a calibrated zero (see :func:`with_calibrated_zero`).
    """
    start = time.perf_counter()
    cell_angstrom = float(structure.atoms.cell[0, 0])
    n_out = output_gpts(cell_angstrom, params) if gpts is None else gpts
    full = exit_waves(structure.atoms, params, _derived_seed(seed, _STREAM_PHONONS_FULL))
    full_spectra = wave_spectra(full, (n_out, n_out))
    del full
    particle_seed = _derived_seed(seed, _STREAM_PHONONS_PARTICLES)
    depths = structure.center_to_exit_plane_angstrom
    return StructureWaves(
        full_spectra=full_spectra,
        particle_spectra=particle_spectra(structure, params, particle_seed, (n_out, n_out)),
        cell_angstrom=cell_angstrom,
        lattice=structure.lattice,
        n_particles=int(structure.n_particles),
        exit_depths_angstrom=(float(depths.min()), float(depths.max())),
        multislice_seconds=time.perf_counter() - start,
    )


def _cropped(waves: StructureWaves, params: SimulationParams) -> StructureWaves:
    """The waves at the output sampling of ``params``, cropped from the stored band."""
    n_out = output_gpts(waves.cell_angstrom, params)
    n_stored = waves.full_spectra.shape[-1]
    if n_out > n_stored:
        raise ValueError(
            f"output_sampling_angstrom {params.output_sampling_angstrom:g} needs {n_out} px; "
            f"the stored exit waves have {n_stored} px (a finer sampling needs a new multislice)"
        )
    if n_out == n_stored:
        return waves
    crop = (n_out, n_out)
    return dataclasses.replace(
        waves,
        full_spectra=fourier_crop(waves.full_spectra, crop),
        particle_spectra=fourier_crop(waves.particle_spectra, crop),
    )


def with_calibrated_zero(waves: StructureWaves, params: SimulationParams) -> StructureWaves:
    """The waves with their calibrated zero for ``params`` (kept if already calibrated for it)."""
    n = waves.particle_spectra.shape[-1]
    key = calibration_key(params, n)
    if waves.zero_key == key and waves.zero_defocus_angstrom is not None:
        return waves
    window = calibration_window(waves.exit_depths_angstrom, params)
    pixel_size = waves.cell_angstrom / n
    zero = calibrate_zero_defocus(waves.particle_spectra, pixel_size, window, params)
    return dataclasses.replace(waves, zero_defocus_angstrom=zero, zero_key=key)


def images_from_waves(
    waves: StructureWaves,
    params: SimulationParams,
    conditions: Sequence[ImagingCondition],
    seed: int,
) -> StructureImages:
    """Images of a structure's stored waves under several imaging conditions, and its mask.

    Parameters
    ----------
    waves : StructureWaves
        From :func:`structure_waves` or the exit-wave store, at the output sampling
        of ``params`` or finer (cropped here).
    params : SimulationParams
        Output sampling, mask, calibration, focal spread and jitter.
    conditions : sequence of ImagingCondition
        Defoci (relative to the calibrated zero), doses, focal spreads and Cs.
    seed : int
        Structure seed (the jitter and noise of each condition derive from it).

    Returns
    -------
    StructureImages
    """
    timings: dict[str, float] = {"multislice": waves.multislice_seconds}
    waves = _cropped(waves, params)
    n_out = waves.full_spectra.shape[-1]
    pixel_size = waves.cell_angstrom / n_out

    start = time.perf_counter()
    particle_waves = spectra_to_waves(waves.particle_spectra)
    mask = phase_mask(particle_waves, pixel_size, waves.lattice, params)
    timings["mask"] = time.perf_counter() - start

    start = time.perf_counter()
    zero = float(with_calibrated_zero(waves, params).zero_defocus_angstrom)
    timings["calibration"] = time.perf_counter() - start

    start = time.perf_counter()
    images = np.empty((len(conditions), n_out, n_out), dtype=np.float32)
    defocus_nm = np.empty(len(conditions), dtype=np.float64)
    for index, condition in enumerate(conditions):
        rng = condition_rng(seed, condition)
        defocus_nm[index] = condition.defocus_nm + rng.normal(0.0, params.defocus_jitter_nm)
        defocus_angstrom = zero + ANGSTROM_PER_NM * defocus_nm[index]
        intensity = image_intensity(
            waves.full_spectra,
            pixel_size,
            defocus_angstrom,
            params,
            condition.focal_spread_angstrom,
            condition.cs_mm,
        )
        images[index] = apply_dose(intensity, condition.dose_e_per_angstrom2, pixel_size, rng)
        if params.detector_mtf_at_nyquist < 1 or params.detector_noise_e_per_pixel > 0:
            images[index] = apply_detector(
                images[index],
                params.detector_mtf_at_nyquist,
                params.detector_noise_e_per_pixel,
                rng,
            )
    timings["imaging"] = time.perf_counter() - start

    return StructureImages(
        images=images,
        mask=mask,
        defocus_nm=defocus_nm,
        zero_defocus_angstrom=zero,
        pixel_size_angstrom=pixel_size,
        timings_seconds=timings,
    )


def simulate_structure(
    structure: Structure,
    params: SimulationParams,
    conditions: Sequence[ImagingCondition],
    seed: int,
) -> StructureImages:
    """Images of a structure under several imaging conditions, with its ground truth.

    One pass: :func:`images_from_waves` of :func:`structure_waves`.

    Parameters
    ----------
    structure : Structure
        From :func:`hrtem_ray.physics.structures.random_structure`.
    params : SimulationParams
        Simulation parameters.
    conditions : sequence of ImagingCondition
        Defoci (relative to the calibrated zero), doses, focal spreads and Cs.
    seed : int
        Seed of the phonons, the defocus jitter and the noise.

    Returns
    -------
    StructureImages
    """
    return images_from_waves(structure_waves(structure, params, seed), params, conditions, seed)
