"""Tests of the HRTEM simulation (real abTEM multislice at small sizes)."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import abtem
import numpy as np
import pytest
from ase import Atoms

from hrtem_ray.physics.simulate import (
    WISDOM_ENV,
    apply_dose,
    calibrate_zero_defocus,
    ctf,
    exit_waves,
    fourier_crop,
    image_intensity,
    particle_spectra,
    phase_mask,
    simulate_structure,
    spectra_to_waves,
    wave_spectra,
)
from hrtem_ray.physics.structures import random_structure
from hrtem_ray.spec.types import (
    WORKER_BASE_MIB,
    ImagingCondition,
    SimulationParams,
    StructureParams,
    estimate_worker_memory_bytes,
    output_gpts,
)

FAST = SimulationParams(sampling_angstrom=0.2, n_phonons=2)
SMALL = StructureParams(
    cell_angstrom=64.0,
    substrate_thickness_angstrom=(30.0, 30.0),
    radius_angstrom=(15.0, 15.0),
    n_particles=(1, 1),
)
CONDITIONS = (
    ImagingCondition("-10", -10.0, 400.0),
    ImagingCondition("0", 0.0, None),
    ImagingCondition("10", 10.0, None),
)


@pytest.fixture(scope="module", autouse=True)
def wisdom_file(tmp_path_factory):
    """Keep the tests' FFTW wisdom out of the user's cache."""
    path = tmp_path_factory.mktemp("fftw") / "wisdom.pkl"
    previous = os.environ.get(WISDOM_ENV)
    os.environ[WISDOM_ENV] = str(path)
    yield path
    if previous is None:
        del os.environ[WISDOM_ENV]
    else:
        os.environ[WISDOM_ENV] = previous


@pytest.fixture(scope="module")
def structure():
    return random_structure(SMALL, 5)


@pytest.fixture(scope="module")
def simulated(structure):
    return simulate_structure(structure, FAST, CONDITIONS, seed=5)


def _single_atom_waves(height_angstrom: float, params: SimulationParams) -> np.ndarray:
    """Exit waves of one gold atom at ``height_angstrom`` above the exit plane."""
    cell_height = height_angstrom + 2.0
    atoms = Atoms("Au", positions=[[16.0, 16.0, 2.0]], cell=[32.0, 32.0, cell_height])
    return exit_waves(atoms, params, seed=0)


def test_output_shapes_and_types(simulated, structure):
    n = output_gpts(SMALL.cell_angstrom, FAST)
    assert simulated.images.shape == (len(CONDITIONS), n, n)
    assert simulated.images.dtype == np.float32
    assert simulated.mask.dtype == np.float32 and simulated.mask.shape == (n, n)
    assert 0.0 <= simulated.mask.min() and simulated.mask.max() <= 1.0
    assert simulated.defocus_nm.dtype == np.float64
    assert simulated.pixel_size_angstrom == pytest.approx(0.2)
    assert set(simulated.timings_seconds) == {"multislice", "mask", "calibration", "imaging"}
    # noiseless images are normalised intensities (vacuum = 1); dosed ones are counts
    assert simulated.images[1].mean() == pytest.approx(1.0, abs=0.02)
    electrons = 400.0 * 0.2**2
    assert simulated.images[0].mean() == pytest.approx(electrons, rel=0.03)
    assert np.array_equal(simulated.images[0], np.round(simulated.images[0]))


def test_defocus_jitter(simulated):
    nominal = np.array([c.defocus_nm for c in CONDITIONS])
    jitter = simulated.defocus_nm - nominal
    assert np.all(jitter != 0) and np.all(np.abs(jitter) < 5 * FAST.defocus_jitter_nm)
    no_jitter = FAST.model_copy(update={"defocus_jitter_nm": 0.0})
    images = simulate_structure(random_structure(SMALL, 5), no_jitter, CONDITIONS[1:2], 5)
    assert images.defocus_nm.tolist() == [0.0]


def test_same_seed_same_images_and_condition_independence(simulated, structure):
    again = simulate_structure(random_structure(SMALL, 5), FAST, CONDITIONS[::-1][:2], seed=5)
    # same structure seed and seed: identical bits, whatever the other conditions
    assert np.array_equal(again.images[0], simulated.images[2])
    assert np.array_equal(again.images[1], simulated.images[1])
    assert np.array_equal(again.mask, simulated.mask)
    assert again.zero_defocus_angstrom == simulated.zero_defocus_angstrom
    assert again.defocus_nm[0] == simulated.defocus_nm[2]
    other = simulate_structure(structure, FAST, CONDITIONS[1:2], seed=6)
    assert not np.array_equal(other.images[0], simulated.images[1])


@pytest.mark.slow
def test_exit_waves_bit_identical_across_processes(tmp_path, monkeypatch):
    """Fresh processes (the later ones planning from the first's saved wisdom) agree."""
    script = textwrap.dedent(
        """
        import hashlib
        from ase import Atoms
        from hrtem_ray.physics.simulate import exit_waves
        from hrtem_ray.spec.types import SimulationParams
        atoms = Atoms("CdSe", positions=[[5, 5, 1], [12, 9, 3]], cell=[24, 24, 6])
        waves = exit_waves(atoms, SimulationParams(sampling_angstrom=0.1, n_phonons=2), 3)
        print(hashlib.sha256(waves.tobytes()).hexdigest())
        """
    )
    monkeypatch.setenv(WISDOM_ENV, str(tmp_path / "wisdom.pkl"))
    digests = [
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert (tmp_path / "wisdom.pkl").stat().st_size > 0
    atoms = Atoms("CdSe", positions=[[5, 5, 1], [12, 9, 3]], cell=[24, 24, 6])
    here = exit_waves(atoms, SimulationParams(sampling_angstrom=0.1, n_phonons=2), 3)
    assert here.shape == (2, 240, 240) and here.dtype == np.complex64
    assert np.angle(here).max() > 0.1  # the atoms scatter
    assert not np.array_equal(here[0], here[1])  # two phonon configurations
    assert digests == [hashlib.sha256(here.tobytes()).hexdigest()] * 2


def test_particle_spectra_equal_full_height_multislice(structure):
    """Cut cell + Fresnel propagation = multislice through the empty slices."""
    n = output_gpts(SMALL.cell_angstrom, FAST)
    full_height = spectra_to_waves(wave_spectra(exit_waves(structure.particles, FAST, 3), (n, n)))
    spectra = particle_spectra(structure, FAST, 3, (n, n))
    cut = spectra_to_waves(spectra)
    assert np.abs(full_height - 1).max() > 0.3  # the particle scatters strongly
    assert np.abs(cut - full_height).max() < 0.01
    # the tolerance is tight: an exit plane off by 5 A fails it by far
    off = spectra_to_waves(spectra * ctf((n, n), 0.2, 300.0, 5.0, 0.0))
    assert np.abs(off - full_height).max() > 0.1


def test_calibrated_zero_near_particle_centre(simulated, structure):
    depth = float(structure.center_to_exit_plane_angstrom[0])
    assert abs(simulated.zero_defocus_angstrom - depth) < 10.0


def test_calibration_finds_minimum_variance(structure):
    waves = exit_waves(structure.particles, FAST, seed=1)
    n = output_gpts(SMALL.cell_angstrom, FAST)
    spectra = wave_spectra(waves, (n, n))
    depth = float(structure.center_to_exit_plane_angstrom[0])
    zero = calibrate_zero_defocus(spectra, 0.2, (depth - 20, depth + 20), FAST)
    assert abs(zero - depth) < 10.0
    offsets = (-10.0, -1.0, -0.1, 0.0, 0.1, 1.0, 10.0)
    variance = {d: image_intensity(spectra, 0.2, zero + d, FAST).var() for d in offsets}
    assert variance[0.0] == min(variance.values())
    # contrast grows on both sides of the minimum (measured: about 2x at +-10 A)
    assert min(variance[10.0], variance[-10.0]) > 1.5 * variance[0.0]


def test_defocus_sign_convention():
    """abTEM convention: positive defocus (-C10) focuses on a plane above the exit."""
    params = SimulationParams(
        sampling_angstrom=0.2, n_phonons=1, phonon_sigma_angstrom=0.0, focal_spread_angstrom=0.0
    )
    waves = _single_atom_waves(60.0, params)
    spectra = wave_spectra(waves, waves.shape[-2:])
    variance = {d: image_intensity(spectra, 0.2, d, params).var() for d in (-60.0, 0.0, 60.0)}
    # refocused on the atom (60 A above the exit plane): weak-phase minimum contrast
    assert variance[60.0] < 0.2 * variance[-60.0]
    assert variance[60.0] < 0.2 * variance[0.0]


def test_ctf_matches_abtem():
    params = SimulationParams(sampling_angstrom=0.2, n_phonons=1, phonon_sigma_angstrom=0.0)
    waves = _single_atom_waves(20.0, params)
    ours = spectra_to_waves(
        wave_spectra(waves, waves.shape[-2:]) * ctf(waves.shape[-2:], 0.2, 300.0, 60.0, 10.0)
    )
    theirs = (
        abtem.Waves(waves[0], energy=300e3, sampling=0.2)
        .apply_ctf(abtem.CTF(defocus=60.0, focal_spread=10.0))
        .compute(scheduler="synchronous")
        .array
    )
    assert np.abs(ours[0] - theirs).max() < 1e-5


@pytest.mark.parametrize("cs_mm", [1.2, -0.03])
def test_ctf_with_spherical_aberration_matches_abtem(cs_mm):
    """Cs in mm is abTEM's C30 (angstrom) / 1e7, with abTEM's sign of the aberration phase."""
    params = SimulationParams(sampling_angstrom=0.2, n_phonons=1, phonon_sigma_angstrom=0.0)
    waves = _single_atom_waves(20.0, params)
    transfer = ctf(waves.shape[-2:], 0.2, 300.0, 60.0, 10.0, cs_mm=cs_mm)
    ours = spectra_to_waves(wave_spectra(waves, waves.shape[-2:]) * transfer)
    theirs = (
        abtem.Waves(waves[0], energy=300e3, sampling=0.2)
        .apply_ctf(abtem.CTF(defocus=60.0, Cs=cs_mm * 1e7, focal_spread=10.0))
        .compute(scheduler="synchronous")
        .array
    )
    assert np.abs(ours[0] - theirs).max() < 1e-5
    # Cs changes the image (the test cannot pass with the aberration left out)
    without = spectra_to_waves(
        wave_spectra(waves, waves.shape[-2:]) * ctf(waves.shape[-2:], 0.2, 300.0, 60.0, 10.0)
    )
    assert np.abs(without[0] - theirs).max() > 1e-2


def test_focal_spread_is_one_over_e_width():
    k2_at = np.fft.fftfreq(64, 0.2)[5] ** 2  # spatial frequency of column 5
    transfer = ctf((64, 64), 0.2, 300.0, 0.0, 10.0)
    wavelength = 0.019687  # 300 kV, angstrom
    sigma = 10.0 / np.sqrt(2)  # std of the equivalent Gaussian defocus spread
    expected = np.exp(-0.5 * (np.pi * wavelength * k2_at * sigma) ** 2)
    assert abs(transfer[0, 5]) == pytest.approx(expected, rel=1e-3)


def test_fourier_crop_downsamples_band_limited_waves():
    n, m, length = 64, 32, 12.8
    x = np.arange(n) * length / n
    xs = np.arange(m) * length / m
    wave = lambda u: np.exp(2j * np.pi * (3 * u[:, None] + 5 * u[None, :]) / length) * 0.3 + 1  # noqa: E731
    cropped = spectra_to_waves(wave_spectra(wave(x)[None], (m, m)))[0]
    assert np.abs(cropped - wave(xs)).max() < 1e-5
    spectrum = np.arange(16.0).reshape(4, 4)
    assert fourier_crop(spectrum, (2, 2)).tolist() == [[0.0, 3.0], [12.0, 15.0]]  # 0 and -1


def test_poisson_statistics():
    rng = np.random.default_rng(0)
    intensity = np.linspace(0.5, 1.5, 256 * 256).reshape(256, 256)
    counts = apply_dose(intensity, 400.0, 0.2, rng)
    assert counts.dtype == np.float32
    expected = intensity * 400.0 * 0.2**2
    residual = counts - expected
    assert residual.mean() == pytest.approx(0.0, abs=0.05)
    # Poisson: variance equals the mean (16 electrons per pixel on average)
    assert (residual**2).mean() == pytest.approx(expected.mean(), rel=0.03)
    flat = apply_dose(np.ones((256, 256)), 30.0, 0.2, np.random.default_rng(1))
    assert flat.var() == pytest.approx(flat.mean(), rel=0.05)
    assert np.array_equal(apply_dose(intensity, None, 0.2, rng), intensity.astype(np.float32))


@pytest.mark.parametrize(("lattice", "radius"), [("CdSe", 10.0), ("Ag", 20.0), ("CdSe", 35.0)])
def test_default_mask_area_matches_particle_disc(lattice, radius):
    """Paper settings (0.1 A multislice, 0.2 A output), one phonon, particle alone."""
    params = SimulationParams(n_phonons=1)
    structure_params = StructureParams(
        cell_angstrom=2 * radius + 20.0,  # FFT-friendly grids: 400, 600, 900
        lattices=(lattice,),
        radius_angstrom=(radius, radius),
        n_particles=(1, 1),
        substrate_thickness_angstrom=(5.0, 5.0),
    )
    structure = random_structure(structure_params, 11)
    n = output_gpts(structure_params.cell_angstrom, params)
    pixel = structure_params.cell_angstrom / n
    waves = spectra_to_waves(wave_spectra(exit_waves(structure.particles, params, 1), (n, n)))
    disc = np.pi * radius**2
    smoothed = phase_mask(waves, pixel, lattice, params).sum() * pixel**2 / disc
    paper = phase_mask(waves, pixel, lattice, params.model_copy(update={"mask_recipe": "paper"}))
    assert smoothed == pytest.approx(1.0, abs=0.15)
    assert paper.sum() * pixel**2 / disc < smoothed


_MEASURE_PEAK = """
import json, sys
from hrtem_ray.physics.simulate import simulate_structure
from hrtem_ray.spec.types import ImagingCondition, SimulationParams, StructureParams
from hrtem_ray.physics.structures import random_structure
import abtem, dask, pyarrow, pyfftw  # what a simulation worker has imported
import hrtem_ray.dataset.pipeline

def status_bytes(field):
    # VmRSS: resident now; VmHWM: peak of this process image. (ru_maxrss would keep the
    # parent's peak across fork and exec: pytest's own RSS.)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

structures = StructureParams.model_validate_json(sys.argv[1])
params = SimulationParams.model_validate_json(sys.argv[2])
before = status_bytes("VmRSS")
structure = random_structure(structures, 5)
simulate_structure(structure, params, [ImagingCondition("0", 0.0, 400.0)], 5)
print(json.dumps({"before": before, "after": status_bytes("VmHWM")}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cell_angstrom", "sampling_angstrom", "n_phonons"),
    [(25.6, 0.2, 1), (51.2, 0.1, 4)],
    ids=["tiny-128px-grid", "512px-grid-4-phonons"],
)
def test_memory_estimate_covers_the_measured_peak(cell_angstrom, sampling_angstrom, n_phonons):
    """The estimate's simulation part covers the measured peak-RSS increase, and is not
    more than twice it plus 32 MiB.

    The increase of a small simulation depends on how much of the imports' freed memory
    the allocator hands back: 28 MiB on an idle machine, 17 MiB on a loaded one for the
    same 128 px grid. Hence the absolute slack on the upper bound (the lower bound, the
    one that protects the machine, has none).
    """
    structures = StructureParams(
        cell_angstrom=cell_angstrom,
        substrate_thickness_angstrom=(20.0, 20.0),
        radius_angstrom=(8.0, 8.0),
        n_particles=(1, 1),
    )
    params = SimulationParams(
        sampling_angstrom=sampling_angstrom, n_phonons=n_phonons, output_sampling_angstrom=0.4
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEASURE_PEAK,
            structures.model_dump_json(),
            params.model_dump_json(),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rss = json.loads(proc.stdout)
    measured = rss["after"] - rss["before"]
    estimate = estimate_worker_memory_bytes(structures, params)
    simulation_part = estimate - WORKER_BASE_MIB * 2**20
    slack = 32 * 2**20
    assert measured <= simulation_part <= 2 * measured + slack, (
        measured / 2**20,
        simulation_part / 2**20,
    )
    # the base covers what the imports cost here (a Ray worker adds about 95 MiB)
    assert rss["before"] < WORKER_BASE_MIB * 2**20
