"""Tests of the random structure generator (real ASE lattices, small cells)."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from hrtem_ray.physics.structures import (
    amorphous_carbon_positions,
    lattice_unit_cell,
    random_structure,
    stacking_sequence,
    wurtzite_block,
)
from hrtem_ray.spec.types import LATTICES, StructureParams

# Shortest bond of each lattice (angstrom), from the study's lattice parameters:
# wurtzite u*c (ideal u = 3/8, c/a slightly off ideal shortens the basal bonds),
# fcc a/sqrt(2), diamond a*sqrt(3)/4, bcc a*sqrt(3)/2, spinel tetrahedral A-O.
EXPECTED_NN = {
    "ZnS": 2.342,
    "CdSe": 2.631,
    "Cu": 3.6157 / np.sqrt(2),
    "Ag": 4.0782 / np.sqrt(2),
    "C": 3.5673 * np.sqrt(3) / 4,
    "Si": 5.430 * np.sqrt(3) / 4,
    "Fe3O4": 1.889,  # literature Fe(A)-O 1.89, Fe(B)-O 2.06
    "Co3O4": 1.916,  # literature Co(A)-O 1.93, Co(B)-O 1.92
    "Fe": 2.866 * np.sqrt(3) / 2,
    # the HRTEM nanoparticle materials: fcc a/sqrt(2); fluorite Ce-O a*sqrt(3)/4;
    # TiO2: the short apical/equatorial Ti-O bond of the literature (anatase 1.934 A,
    # rutile 1.949 A; the long one is checked in test_tio2_octahedra)
    "Au": 4.0782 / np.sqrt(2),
    "Pt": 3.9242 / np.sqrt(2),
    "Pd": 3.8907 / np.sqrt(2),
    "CeO2": 5.411 * np.sqrt(3) / 4,
    "TiO2-anatase": 1.934,
    "TiO2-rutile": 1.949,
}
# Coordination by first neighbours, per element.
EXPECTED_COORDINATION = {
    "ZnS": {"Zn": {4}, "S": {4}},
    "CdSe": {"Cd": {4}, "Se": {4}},
    "Cu": {"Cu": {12}},
    "Ag": {"Ag": {12}},
    "C": {"C": {4}},
    "Si": {"Si": {4}},
    "Fe3O4": {"Fe": {4, 6}, "O": {4}},  # tetrahedral A, octahedral B; O: 1 A + 3 B
    "Co3O4": {"Co": {4, 6}, "O": {4}},
    "Fe": {"Fe": {8}},
    "Au": {"Au": {12}},
    "Pt": {"Pt": {12}},
    "Pd": {"Pd": {12}},
    "CeO2": {"Ce": {8}, "O": {4}},
    "TiO2-anatase": {"Ti": {6}, "O": {3}},
    "TiO2-rutile": {"Ti": {6}, "O": {3}},
}

SMALL = StructureParams(
    cell_angstrom=64.0,
    substrate_thickness_angstrom=(10.0, 20.0),
    radius_angstrom=(8.0, 12.0),
    n_particles=(2, 3),
)


def _coordination(positions: np.ndarray, cell: np.ndarray | None, cutoff: float) -> np.ndarray:
    tree = cKDTree(positions, boxsize=cell)
    return np.array([len(n) - 1 for n in tree.query_ball_point(positions, cutoff)])


@pytest.mark.parametrize("name", sorted(LATTICES))
def test_lattice_nearest_neighbours(name):
    unit = lattice_unit_cell(name)
    big = unit.repeat(tuple(int(np.ceil(8.0 / n)) for n in unit.cell.lengths()))
    distances = big.get_all_distances(mic=True)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() == pytest.approx(EXPECTED_NN[name], abs=0.01)
    # first shell: bonds up to 1.12x the shortest (spinel B-O is 1.09x A-O)
    coordination = (distances < 1.12 * distances.min()).sum(axis=1)
    symbols = np.array(big.get_chemical_symbols())
    for element, allowed in EXPECTED_COORDINATION[name].items():
        assert set(coordination[symbols == element].tolist()) == allowed


def test_spinel_octahedral_bond():
    unit = lattice_unit_cell("Fe3O4").repeat((2, 2, 2))
    distances = unit.get_all_distances(mic=True)
    np.fill_diagonal(distances, np.inf)
    fe = np.array(unit.get_chemical_symbols()) == "Fe"
    fe_o = np.sort(distances[fe][:, ~fe], axis=1)
    # tetrahedral A: 4 bonds at 1.89; octahedral B: 6 bonds at 2.06 A (literature)
    bonds = np.unique(np.round(fe_o[:, 0], 2))
    assert bonds.tolist() == pytest.approx([1.89, 2.06], abs=0.01)


@pytest.mark.parametrize(
    ("name", "bonds"), [("TiO2-anatase", [1.934, 1.98]), ("TiO2-rutile", [1.949, 1.98])]
)
def test_tio2_octahedra(name, bonds):
    """Each Ti has 4 short and 2 long Ti-O bonds of the literature (Burdett et al. 1987)."""
    unit = lattice_unit_cell(name).repeat((3, 3, 3))
    distances = unit.get_all_distances(mic=True)
    ti = np.array(unit.get_chemical_symbols()) == "Ti"
    ti_o = np.sort(distances[ti][:, ~ti], axis=1)[:, :6]
    assert np.allclose(ti_o[:, :4], bonds[0], atol=0.005)
    assert np.allclose(ti_o[:, 4:], bonds[1], atol=0.005)


def test_stacking_sequence_faults():
    perfect = stacking_sequence(10, [])
    assert perfect.tolist() == [1, 2] * 5
    faulted = stacking_sequence(10, [4, 7])
    assert np.all(faulted[1:] != faulted[:-1])  # still close packed
    # a layer breaks the hexagonal ABAB rule exactly at each fault
    breaks = [k for k in range(2, 10) if faulted[k] != faulted[k - 2]]
    assert breaks == [4, 7]
    assert faulted[:4].tolist() == perfect[:4].tolist()


@pytest.mark.parametrize("faults", [(), (0,), (-2, 1)])
def test_wurtzite_block_stays_tetrahedral(faults):
    _, positions = wurtzite_block("CdSe", 12.0, faults)
    assert len(positions) == len(np.unique(positions.round(6), axis=0))
    nn, _ = cKDTree(positions).query(positions, k=2)
    assert nn[:, 1].min() == pytest.approx(EXPECTED_NN["CdSe"], abs=0.01)
    interior = np.linalg.norm(positions, axis=1) < 6.0
    coordination = _coordination(positions, None, 1.1 * EXPECTED_NN["CdSe"])
    assert set(coordination[interior].tolist()) == {4}


def test_wurtzite_block_matches_ase_without_faults():
    _, positions = wurtzite_block("ZnS", 10.0)
    unit = lattice_unit_cell("ZnS")
    scaled = np.linalg.solve(unit.cell.array.T, positions.T).T
    # every atom sits on an ASE unit-cell site (modulo lattice translations)
    wrapped = scaled % 1.0
    sites = unit.get_scaled_positions() % 1.0
    diff = np.abs(wrapped[:, None, :] - sites[None])
    diff = np.minimum(diff, 1 - diff)
    assert diff.max(axis=2).min(axis=1).max() < 1e-6


def test_amorphous_carbon_density_and_min_distance():
    rng = np.random.default_rng(0)
    positions = amorphous_carbon_positions(40.0, 15.0, 0.11, 1.4, rng)
    assert len(positions) == round(0.11 * 40 * 40 * 15)
    assert positions.min() >= 0 and positions[:, :2].max() < 40 and positions[:, 2].max() < 15
    tree = cKDTree(positions, boxsize=[40.0, 40.0, 100.0])  # periodic in x, y only
    distance, _ = tree.query(positions, k=2)
    assert distance[:, 1].min() >= 1.4


def test_random_structure_is_pure_function_of_seed():
    first, second = random_structure(SMALL, 7), random_structure(SMALL, 7)
    assert np.array_equal(first.atoms.positions, second.atoms.positions)
    assert np.array_equal(first.atoms.numbers, second.atoms.numbers)
    assert np.array_equal(first.atoms.cell.array, second.atoms.cell.array)
    assert first.stacking_faults == second.stacking_faults
    other = random_structure(SMALL, 8)
    assert len(other.atoms) != len(first.atoms) or not np.array_equal(
        other.atoms.positions, first.atoms.positions
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_structure_geometry(seed):
    structure = random_structure(SMALL, seed)
    particles, atoms = structure.particles, structure.atoms
    n = structure.n_particles
    assert 1 <= n <= SMALL.n_particles[1]
    assert np.array_equal(particles.cell.array, atoms.cell.array)
    assert np.array_equal(atoms.positions[-len(particles) :], particles.positions)
    assert set(particles.get_chemical_symbols()) == {"Cd", "Se"}
    radii, centers = structure.particle_radii_angstrom, structure.particle_centers_angstrom
    assert np.all((radii >= 8.0) & (radii <= 12.0))
    # inside the cell
    assert particles.positions[:, :2].min() >= 0
    assert particles.positions[:, :2].max() <= SMALL.cell_angstrom
    # surface-to-surface separation
    for i in range(n):
        for j in range(i):
            gap = np.linalg.norm(centers[i] - centers[j]) - radii[i] - radii[j]
            assert gap >= SMALL.min_separation_angstrom
    # particles above (beam side of) the substrate, substrate of the drawn thickness
    carbon = atoms.positions[: len(atoms) - len(particles), 2]
    assert particles.positions[:, 2].max() < carbon.min()
    assert carbon.max() - carbon.min() == pytest.approx(
        structure.substrate_thickness_angstrom, abs=0.5
    )
    depth = structure.cell_height_angstrom - centers[:, 2]
    assert np.allclose(depth, structure.center_to_exit_plane_angstrom)
    expected = structure.substrate_thickness_angstrom + 2.0 + 1.5 + radii
    assert np.allclose(depth, expected)
    assert all(0 <= f <= SMALL.max_stacking_faults for f in structure.stacking_faults)


def test_every_lattice_builds_a_particle():
    for name in LATTICES:
        params = SMALL.model_copy(update={"lattices": (name,), "n_particles": (1, 1)})
        structure = random_structure(params, 3)
        radius = structure.particle_radii_angstrom[0]
        offsets = structure.particles.positions - structure.particle_centers_angstrom[0]
        assert np.linalg.norm(offsets, axis=1).max() <= radius + 1e-9
        # a full sphere: atom count matches the lattice's number density within 15%
        unit = lattice_unit_cell(name)
        expected = len(unit) / unit.get_volume() * 4 / 3 * np.pi * radius**3
        assert len(structure.particles) == pytest.approx(expected, rel=0.15)
