"""Random atomic structures: crystalline nanoparticles on amorphous carbon.

Every structure is a pure function of an integer seed (bit for bit): all random
draws come from ``numpy.random.default_rng([seed, stream])`` generators, never from
global state.

Geometry convention (abTEM's): the beam travels along +z, enters the cell at
``z = 0`` and leaves it at the exit plane ``z = c`` (the cell height). The
nanoparticles sit "on top of" the substrate, i.e. on its beam-entrance side::

    z = 0          vacuum (``vacuum_angstrom``)
                   particles (spheres tangent to the plane below, minus a gap)
    z = z_surface  substrate top surface
                   amorphous carbon, thickness T
    z = c - vac    substrate bottom
    z = c          exit plane (after ``vacuum_angstrom`` of vacuum)

so the distance from a particle centre to the exit plane is
``T + vacuum + gap + radius`` (see :attr:`Structure.center_to_exit_plane_angstrom`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from ase import Atoms
from ase.spacegroup import crystal
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from hrtem_ray.spec.types import LATTICES, WURTZITE_U, LatticeSpec, StructureParams

__all__ = [
    "LATTICES",
    "LatticeSpec",
    "Structure",
    "StructureParams",
    "amorphous_carbon_positions",
    "lattice_unit_cell",
    "nanoparticle",
    "random_rotation",
    "random_structure",
    "stacking_sequence",
    "wurtzite_block",
]

# Random streams derived from a structure seed: default_rng([seed, stream]).
_STREAM_LAYOUT = 0
_STREAM_SUBSTRATE = 1
_STREAM_PARTICLE = 2  # + particle index


@dataclass(frozen=True)
class Structure:
    """A substrate with nanoparticles, and the particles alone in the same cell.

    Attributes
    ----------
    atoms : ase.Atoms
        Substrate and particles.
    particles : ase.Atoms
        The particles alone, in the same cell (so both exit planes coincide).
    lattice : str
        Key of :data:`LATTICES` shared by all particles.
    n_particles : int
        Number of particles actually placed (may be below the drawn count when
        the cell is too crowded, see :func:`random_structure`).
    particle_centers_angstrom : np.ndarray
        ``(n_particles, 3)`` sphere centres in cell coordinates.
    particle_radii_angstrom : np.ndarray
        ``(n_particles,)`` sphere radii.
    substrate_thickness_angstrom : float
        Drawn substrate thickness T.
    stacking_faults : tuple of int
        Number of I1 faults of each particle (always 0 for non-wurtzite lattices).
    n_particles_drawn : int
        Number of particles drawn from ``StructureParams.n_particles``; more than
        ``n_particles`` when some found no free spot.
    """

    atoms: Atoms
    particles: Atoms
    lattice: str
    n_particles: int
    particle_centers_angstrom: np.ndarray
    particle_radii_angstrom: np.ndarray
    substrate_thickness_angstrom: float
    stacking_faults: tuple[int, ...] = ()
    n_particles_drawn: int = 0

    @property
    def cell_height_angstrom(self) -> float:
        """Cell height c; the exit plane is at ``z = c``."""
        return float(self.atoms.cell[2, 2])

    @property
    def center_to_exit_plane_angstrom(self) -> np.ndarray:
        """Distance from each particle centre to the exit plane, ``(n_particles,)``."""
        return self.cell_height_angstrom - self.particle_centers_angstrom[:, 2]


# --------------------------------------------------------------------------- carbon


def amorphous_carbon_positions(
    size_xy_angstrom: float,
    thickness_angstrom: float,
    density_per_angstrom3: float,
    min_distance_angstrom: float,
    rng: np.random.Generator,
    max_rounds: int = 1000,
) -> np.ndarray:
    """Amorphous carbon by vectorised random sequential placement.

    Candidates are drawn in batches the size of the remaining deficit; a candidate
    is kept when it is at least ``min_distance_angstrom`` from every accepted atom
    (KD-tree, periodic in x and y) and from every lower-index candidate of its
    batch, which keeps the placement sequential in effect.

    Parameters
    ----------
    size_xy_angstrom : float
        Side L of the periodic square in x and y.
    thickness_angstrom : float
        Slab thickness T (z in ``[0, T)``, not periodic).
    density_per_angstrom3 : float
        Target number density (amorphous carbon: about 0.11 atoms/A^3).
    min_distance_angstrom : float
        Minimum C-C distance.
    rng : numpy.random.Generator
        Source of randomness.
    max_rounds : int
        Safety limit on the number of batches.

    Returns
    -------
    np.ndarray
        ``(round(density * L * L * T), 3)`` positions in angstrom.
    """
    n_target = int(round(density_per_angstrom3 * size_xy_angstrom**2 * thickness_angstrom))
    high = np.array([size_xy_angstrom, size_xy_angstrom, thickness_angstrom])
    # z is padded so that the periodic KD-tree never wraps across the slab.
    box = np.array(
        [size_xy_angstrom, size_xy_angstrom, thickness_angstrom + 2 * min_distance_angstrom]
    )
    accepted = np.empty((0, 3))
    for _ in range(max_rounds):
        deficit = n_target - len(accepted)
        if deficit <= 0:
            return accepted
        candidates = rng.uniform(0.0, high, size=(max(deficit, 256), 3))
        if len(accepted):
            distance, _ = cKDTree(accepted, boxsize=box).query(
                candidates, distance_upper_bound=min_distance_angstrom
            )
            candidates = candidates[distance >= min_distance_angstrom]
        pairs = cKDTree(candidates, boxsize=box).query_pairs(
            min_distance_angstrom, output_type="ndarray"
        )
        keep = np.ones(len(candidates), dtype=bool)
        keep[pairs.max(axis=1)] = False
        accepted = np.concatenate([accepted, candidates[keep][:deficit]])
    raise RuntimeError(
        f"amorphous carbon did not reach {n_target} atoms in {max_rounds} rounds "
        f"(density {density_per_angstrom3} too high for min distance {min_distance_angstrom})"
    )


# --------------------------------------------------------------------------- lattices


@cache
def lattice_unit_cell(name: str) -> Atoms:
    """Conventional unit cell of a lattice of :data:`LATTICES`, via ASE."""
    spec = LATTICES[name]
    return crystal(
        list(spec.symbols), basis=list(spec.basis), spacegroup=spec.spacegroup, cellpar=spec.cellpar
    )


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random 3D rotation matrix (normalised Gaussian quaternion)."""
    quaternion = rng.normal(size=4)
    return Rotation.from_quat(quaternion / np.linalg.norm(quaternion)).as_matrix()


def _tile(cell: np.ndarray, scaled: np.ndarray, half_extent_angstrom: float) -> np.ndarray:
    """Cartesian positions of a block of unit cells covering a cube around the origin."""
    heights = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)  # interplanar spacings
    n = np.ceil(half_extent_angstrom / heights).astype(int) + 1
    grid = np.stack(
        np.meshgrid(*(np.arange(-k, k + 1) for k in n), indexing="ij"), axis=-1
    ).reshape(-1, 1, 3)
    return ((grid + scaled[None]).reshape(-1, 3)) @ cell


def stacking_sequence(n_layers: int, fault_layers: Sequence[int]) -> np.ndarray:
    """Close-packed stacking letters (0=A, 1=B, 2=C) of a wurtzite bilayer stack.

    The perfect stack alternates ``B C B C ...`` (the order of
    :func:`ase.spacegroup.crystal` for space group 186). An I1 intrinsic fault at
    layer ``f`` puts that layer on the third site (neither of the two layers below)
    and the stack continues hexagonally from there: ``...BCBC|ACAC...``, i.e. the
    rest of the stack is the perfect stack with one layer removed, slipped.

    Parameters
    ----------
    n_layers : int
        Number of bilayers.
    fault_layers : sequence of int
        Layer indices (>= 2) at which an I1 fault starts.

    Returns
    -------
    np.ndarray
        ``(n_layers,)`` integer letters.
    """
    faults = set(fault_layers)
    letters = np.empty(n_layers, dtype=int)
    for k in range(n_layers):
        if k < 2:
            letters[k] = 1 + k
        elif k in faults:
            letters[k] = 3 - letters[k - 1] - letters[k - 2]
        else:
            letters[k] = letters[k - 2]
    return letters


def wurtzite_block(
    name: str, half_extent_angstrom: float, fault_layers_from_center: Sequence[int] = ()
) -> tuple[list[str], np.ndarray]:
    """A block of wurtzite around the origin, built bilayer by bilayer.

    Parameters
    ----------
    name : str
        A wurtzite key of :data:`LATTICES`.
    half_extent_angstrom : float
        The block covers at least the cube ``[-h, h]^3``.
    fault_layers_from_center : sequence of int
        Bilayer indices, counted from the bilayer nearest ``z = 0``, where an I1
        fault starts.

    Returns
    -------
    symbols : list of str
    positions : np.ndarray
        ``(n, 3)`` Cartesian positions in angstrom (c axis along z).
    """
    spec = LATTICES[name]
    a, c = spec.a_angstrom, float(spec.c_angstrom)
    a1, a2 = np.array([a, 0.0]), np.array([-a / 2, a * np.sqrt(3) / 2])
    offsets = np.array([[0.0, 0.0], [1 / 3, 2 / 3], [2 / 3, 1 / 3]])  # A, B, C
    n_in_plane = int(np.ceil(half_extent_angstrom / (a * np.sqrt(3) / 2))) + 2
    # even, so that the bilayer at z = 0 is a B layer, as in ASE's unit cell
    n_half_layers = 2 * (int(np.ceil(half_extent_angstrom / c)) + 1)
    layers = np.arange(-n_half_layers, n_half_layers + 1)
    letters = stacking_sequence(len(layers), [k + n_half_layers for k in fault_layers_from_center])
    ij = np.stack(
        np.meshgrid(*(np.arange(-n_in_plane, n_in_plane + 1),) * 2, indexing="ij"), axis=-1
    ).reshape(-1, 2)
    frac = ij[None, :, :] + offsets[letters][:, None, :]  # (layer, site, 2)
    xy = frac[..., :1] * a1 + frac[..., 1:] * a2
    z = np.broadcast_to((layers * c / 2)[:, None, None], xy.shape[:2] + (1,))
    cations = np.concatenate([xy, z], axis=-1).reshape(-1, 3)
    anions = cations + np.array([0.0, 0.0, WURTZITE_U * c])
    symbols = [spec.symbols[0]] * len(cations) + [spec.symbols[1]] * len(anions)
    return symbols, np.concatenate([cations, anions])


def _draw_fault_layers(
    radius_angstrom: float, c_angstrom: float, n_faults: int, rng: np.random.Generator
) -> list[int]:
    """Distinct fault layers inside the sphere, at least two bilayers apart."""
    half = max(int(0.8 * radius_angstrom / (c_angstrom / 2)), 1)
    candidates = np.arange(-half, half + 1)
    n_faults = min(n_faults, (len(candidates) + 1) // 2)
    while True:
        layers = np.sort(rng.choice(candidates, size=n_faults, replace=False))
        if np.all(np.diff(layers) >= 2):
            return [int(k) for k in layers]


def nanoparticle(
    name: str, radius_angstrom: float, n_faults: int, rng: np.random.Generator
) -> tuple[list[str], np.ndarray]:
    """A randomly oriented crystalline sphere centred at the origin.

    The sphere centre is placed at a uniformly random point of the lattice's unit
    cell before the cut, then the crystal is rotated by a uniformly random rotation.

    Parameters
    ----------
    name : str
        Key of :data:`LATTICES`.
    radius_angstrom : float
        Sphere radius; atoms with ``|r| <= radius`` are kept.
    n_faults : int
        Number of I1 stacking faults (wurtzite only, ignored otherwise).
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    symbols : list of str
    positions : np.ndarray
        ``(n, 3)`` positions in angstrom relative to the sphere centre.
    """
    spec = LATTICES[name]
    extent = radius_angstrom + 2 * spec.a_angstrom
    if spec.is_wurtzite:
        faults = _draw_fault_layers(radius_angstrom, float(spec.c_angstrom), n_faults, rng)
        symbols, positions = wurtzite_block(name, extent, faults)
        shift = rng.uniform(size=3) @ lattice_unit_cell(name).cell.array
    else:
        unit = lattice_unit_cell(name)
        cell = unit.cell.array
        positions = _tile(cell, unit.get_scaled_positions(), extent)
        symbols = list(unit.get_chemical_symbols()) * (len(positions) // len(unit))
        shift = rng.uniform(size=3) @ cell
    positions = (positions - shift) @ random_rotation(rng).T
    inside = np.linalg.norm(positions, axis=1) <= radius_angstrom
    return [s for s, keep in zip(symbols, inside, strict=True) if keep], positions[inside]


# --------------------------------------------------------------------------- layout


def _place_particles(
    params: StructureParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """Radii and in-plane centres of non-overlapping particles tangent to one plane.

    Particles are tried one at a time (count and radii drawn first); a particle that
    finds no free spot in ``max_placement_attempts`` tries is dropped.

    Returns
    -------
    radii : np.ndarray
        ``(n,)`` radii.
    centers_xy : np.ndarray
        ``(n, 2)`` in-plane centres; spheres lie fully inside the cell.
    n_drawn : int
        The number of particles drawn (``n`` or more).
    """
    n_drawn = int(rng.integers(params.n_particles[0], params.n_particles[1] + 1))
    radii_drawn = rng.uniform(*params.radius_angstrom, size=n_drawn)
    radii: list[float] = []
    centers: list[np.ndarray] = []
    for radius in radii_drawn:
        trials = rng.uniform(
            radius, params.cell_angstrom - radius, size=(params.max_placement_attempts, 2)
        )
        if centers:
            placed = np.array(centers)
            placed_radii = np.array(radii)
            # Both spheres touch the same plane from above: their centres differ in
            # height by the difference of the radii.
            dxy2 = ((trials[:, None, :] - placed[None]) ** 2).sum(-1)
            dist = np.sqrt(dxy2 + (radius - placed_radii[None]) ** 2)
            free = np.all(
                dist >= radius + placed_radii[None] + params.min_separation_angstrom, axis=1
            )
        else:
            free = np.ones(len(trials), dtype=bool)
        if free.any():
            radii.append(float(radius))
            centers.append(trials[np.argmax(free)])
    return np.array(radii), np.array(centers).reshape(-1, 2), n_drawn


def random_structure(params: StructureParams, seed: int) -> Structure:
    """Random nanoparticles on an amorphous carbon substrate; a pure function of seed.

    Draws (each from its own ``default_rng([seed, stream])``): the substrate
    thickness, the lattice, the particle count and radii, the particle positions
    (at least ``min_separation_angstrom`` apart surface to surface, entirely inside
    the cell, resting on the substrate), the substrate atoms, and for each particle
    its lattice offset, orientation and (wurtzite) 0..``max_stacking_faults`` faults.
    A drawn particle that finds no free spot in ``max_placement_attempts`` tries is left
    out: ``n_particles`` is then below ``n_particles_drawn`` (a count that can never fit
    is refused by :class:`~hrtem_ray.spec.types.StructureParams`; the simulation warns
    about structures that placed fewer than drawn).

    Parameters
    ----------
    params : StructureParams
        Generator parameters.
    seed : int
        Non-negative seed.

    Returns
    -------
    Structure
    """
    layout_rng = np.random.default_rng([seed, _STREAM_LAYOUT])
    thickness = float(layout_rng.uniform(*params.substrate_thickness_angstrom))
    lattice = str(params.lattices[int(layout_rng.integers(len(params.lattices)))])
    radii, centers_xy, n_drawn = _place_particles(params, layout_rng)

    surface_z = params.vacuum_angstrom + 2 * radii.max() + params.particle_gap_angstrom
    height = surface_z + thickness + params.vacuum_angstrom
    cell = [params.cell_angstrom, params.cell_angstrom, height]
    centers = np.column_stack([centers_xy, surface_z - params.particle_gap_angstrom - radii])

    carbon = amorphous_carbon_positions(
        params.cell_angstrom,
        thickness,
        params.carbon_density_per_angstrom3,
        params.carbon_min_distance_angstrom,
        np.random.default_rng([seed, _STREAM_SUBSTRATE]),
    ) + np.array([0.0, 0.0, surface_z])

    symbols: list[str] = []
    positions: list[np.ndarray] = []
    faults: list[int] = []
    for index, (radius, center) in enumerate(zip(radii, centers, strict=True)):
        rng = np.random.default_rng([seed, _STREAM_PARTICLE + index])
        n_faults = (
            int(rng.integers(params.max_stacking_faults + 1))
            if LATTICES[lattice].is_wurtzite
            else 0
        )
        particle_symbols, particle_positions = nanoparticle(lattice, radius, n_faults, rng)
        symbols += particle_symbols
        positions.append(particle_positions + center)
        faults.append(n_faults)

    particles = Atoms(
        symbols, positions=np.concatenate(positions), cell=cell, pbc=[True, True, False]
    )
    substrate = Atoms(["C"] * len(carbon), positions=carbon, cell=cell, pbc=[True, True, False])
    return Structure(
        atoms=substrate + particles,
        particles=particles,
        lattice=lattice,
        n_particles=len(radii),
        particle_centers_angstrom=centers,
        particle_radii_angstrom=radii,
        substrate_thickness_angstrom=thickness,
        stacking_faults=tuple(faults),
        n_particles_drawn=n_drawn,
    )
