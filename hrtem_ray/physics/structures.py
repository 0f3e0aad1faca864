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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree

from hrtem_ray.physics.particles import (
    bounding_radius_angstrom,
    build_particle,
    lattice_unit_cell,
    random_rotation,
    stacking_sequence,
    wurtzite_block,
)
from hrtem_ray.spec.materials import material_label
from hrtem_ray.spec.types import LATTICES, LatticeSpec, StructureParams

__all__ = [
    "LATTICES",
    "LatticeSpec",
    "Structure",
    "StructureParams",
    "amorphous_carbon_positions",
    "lattice_unit_cell",
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
        Label of the material shared by all particles (a key of :data:`LATTICES` or a
        CIF material's name).
    n_particles : int
        Number of particles actually placed (may be below the drawn count when
        the cell is too crowded, see :func:`random_structure`).
    particle_centers_angstrom : np.ndarray
        ``(n_particles, 3)`` particle centres (the centre of each cut) in cell coordinates.
    particle_radii_angstrom : np.ndarray
        ``(n_particles,)`` equivalent-sphere radii (the cut radius of a sphere).
    substrate_thickness_angstrom : float
        Drawn substrate thickness T.
    stacking_faults : tuple of int
        Number of stacking faults of each particle (wurtzite I1 faults, fcc intrinsic
        faults; 0 for other lattices).
    twins : tuple of int
        Number of {111} twin planes of each particle (fcc of one element).
    particle_bounding_radii_angstrom : np.ndarray or None
        ``(n_particles,)`` radii of the spheres about the centres that hold each particle
        (the layout's); None means equal to ``particle_radii_angstrom``.
    twin_planes : tuple
        Per particle, ``(normal, distance)`` of each twin plane in cell coordinates
        relative to its centre (see :class:`hrtem_ray.physics.particles.Particle`).
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
    twins: tuple[int, ...] = ()
    particle_bounding_radii_angstrom: np.ndarray | None = None
    twin_planes: tuple = ()
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


# --------------------------------------------------------------------------- layout


def _place_particles(
    params: StructureParams, rng: np.random.Generator, bounding: Callable[[float], float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Radii and in-plane centres of non-overlapping particles resting on one plane.

    Particles are tried one at a time (count and radii drawn first); a particle that
    finds no free spot in ``max_placement_attempts`` tries is dropped. Each particle
    takes the room of its bounding sphere (``bounding(radius)``): spheres touch the
    plane from above, so their centres differ in height by the difference of the radii;
    other shapes are kept apart by their bounding circles in the plane.

    Returns
    -------
    radii : np.ndarray
        ``(n,)`` drawn (equivalent-sphere) radii.
    bounds : np.ndarray
        ``(n,)`` bounding radii.
    centers_xy : np.ndarray
        ``(n, 2)`` in-plane centres; bounding spheres lie fully inside the cell.
    n_drawn : int
        The number of particles drawn (``n`` or more).
    """
    n_drawn = int(rng.integers(params.n_particles[0], params.n_particles[1] + 1))
    radii_drawn = rng.uniform(*params.radius_angstrom, size=n_drawn)
    spheres = params.shape == "sphere"
    radii: list[float] = []
    bounds: list[float] = []
    centers: list[np.ndarray] = []
    for radius in radii_drawn:
        bound = bounding(float(radius)) if not spheres else radius
        trials = rng.uniform(
            bound, params.cell_angstrom - bound, size=(params.max_placement_attempts, 2)
        )
        if centers:
            placed = np.array(centers)
            placed_bounds = np.array(bounds)
            dxy2 = ((trials[:, None, :] - placed[None]) ** 2).sum(-1)
            dz = (bound - placed_bounds[None]) if spheres else 0.0
            dist = np.sqrt(dxy2 + dz**2)
            free = np.all(
                dist >= bound + placed_bounds[None] + params.min_separation_angstrom, axis=1
            )
        else:
            free = np.ones(len(trials), dtype=bool)
        if free.any():
            radii.append(float(radius))
            bounds.append(float(bound))
            centers.append(trials[np.argmax(free)])
    return np.array(radii), np.array(bounds), np.array(centers).reshape(-1, 2), n_drawn


def random_structure(params: StructureParams, seed: int) -> Structure:
    """Random nanoparticles on an amorphous carbon substrate; a pure function of seed.

    Draws (each from its own ``default_rng([seed, stream])``): the substrate
    thickness, the material, the particle count and radii, the particle positions
    (bounding spheres at least ``min_separation_angstrom`` apart surface to surface,
    entirely inside the cell, resting on the substrate), the substrate atoms, and for
    each particle what :func:`hrtem_ray.physics.particles.build_particle` draws: its
    defects, its offset in the crystal and its orientation. A particle that is not a
    sphere is lowered onto the substrate (its lowest atom ``particle_gap_angstrom``
    above it).
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
    material = params.lattices[int(layout_rng.integers(len(params.lattices)))]
    radii, bounds, centers_xy, n_drawn = _place_particles(
        params, layout_rng, lambda r: bounding_radius_angstrom(material, r, params)
    )

    surface_z = params.vacuum_angstrom + 2 * bounds.max() + params.particle_gap_angstrom
    height = surface_z + thickness + params.vacuum_angstrom
    cell = [params.cell_angstrom, params.cell_angstrom, height]
    centers = np.column_stack([centers_xy, surface_z - params.particle_gap_angstrom - bounds])

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
    twins: list[int] = []
    planes: list[tuple] = []
    for index, radius in enumerate(radii):
        rng = np.random.default_rng([seed, _STREAM_PARTICLE + index])
        particle = build_particle(material, radius, params, rng)
        if params.shape != "sphere":  # rest on the substrate
            centers[index, 2] = (
                surface_z - params.particle_gap_angstrom - particle.positions[:, 2].max()
            )
        symbols += particle.symbols
        positions.append(particle.positions + centers[index])
        faults.append(particle.n_faults)
        twins.append(particle.n_twins)
        planes.append(particle.twin_planes)

    particles = Atoms(
        symbols, positions=np.concatenate(positions), cell=cell, pbc=[True, True, False]
    )
    substrate = Atoms(["C"] * len(carbon), positions=carbon, cell=cell, pbc=[True, True, False])
    return Structure(
        atoms=substrate + particles,
        particles=particles,
        lattice=material_label(material),
        n_particles=len(radii),
        particle_centers_angstrom=centers,
        particle_radii_angstrom=radii,
        substrate_thickness_angstrom=thickness,
        stacking_faults=tuple(faults),
        twins=tuple(twins),
        particle_bounding_radii_angstrom=bounds,
        twin_planes=tuple(planes),
        n_particles_drawn=n_drawn,
    )
