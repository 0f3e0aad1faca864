"""Nanoparticles of any material, shape and orientation, with twins and stacking faults.

:func:`build_particle` makes one particle, a pure function of its random generator:

1. A block of crystal around the origin (:func:`crystal_block`): the material's unit cell
   tiled (ASE), a wurtzite stack built bilayer by bilayer with its I1 faults
   (:func:`wurtzite_block`), or an fcc stack built (111) layer by layer with its twin
   planes and intrinsic stacking faults (:func:`fcc_block`).
2. The block shifted by a random point of the unit cell, so that the particle's centre
   falls anywhere in the crystal.
3. The cut: a sphere of ``radius`` (rotated first, as the generator always did), or the
   polyhedron of a Wulff construction (:func:`polyhedron_form`: wulffpack's facets,
   scaled to the volume of the sphere of ``radius``): ``wulff`` from surface energies,
   ``cube`` from {100} alone and ``octahedron`` from {111} alone.
4. A rotation: uniformly random, or near a zone axis (:func:`orientation_rotation`).
5. Stoichiometry kept (:func:`trim_stoichiometry`).

Icosahedra and decahedra are ase.cluster's multiply twinned fcc clusters
(:func:`cluster_positions`), of the discrete size closest to ``radius``.

Every size is the radius of the sphere of the same volume (``radius_angstrom``): the
cut shapes keep the crystal's number density, so their atom counts match
``density x 4/3 pi r^3`` within the tolerances of ``tests/physics/test_particles.py``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms
from ase.spacegroup import crystal
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from hrtem_ray.spec.base import SpecError
from hrtem_ray.spec.materials import (
    LATTICES,
    STUDY_LATTICES,
    WURTZITE_U,
    CifMaterial,
    ZoneAxisOrientation,
    exception_summary,
    material_info,
    material_label,
    parse_miller,
    surface_energies_for,
)
from hrtem_ray.spec.types import StructureParams

if TYPE_CHECKING:
    from hrtem_ray.spec.dataset import DatasetSpec

__all__ = [
    "Particle",
    "check_particle_shapes",
    "PolyhedronForm",
    "bounding_radius_angstrom",
    "build_particle",
    "cluster_positions",
    "crystal_block",
    "fcc_block",
    "fcc_stacking_letters",
    "lattice_unit_cell",
    "material_cell",
    "orientation_rotation",
    "polyhedron_form",
    "random_rotation",
    "stacking_sequence",
    "trim_stoichiometry",
    "wurtzite_block",
    "zone_axis_rotation",
]

#: Atoms closer than this factor times the material's shortest bond are neighbours when
#: :func:`trim_stoichiometry` ranks atoms by how well they are bound.
NEIGHBOUR_FACTOR = 1.25
#: spglib tolerance of the Wulff constructions (as for CIF crystals).
WULFF_SYMPREC_ANGSTROM = 1e-3

Material = str | CifMaterial


@dataclass(frozen=True)
class Particle:
    """One particle, centred at the origin of its cut, in the laboratory frame.

    Attributes
    ----------
    symbols : list of str
    positions : np.ndarray
        ``(n, 3)`` angstrom, relative to the particle's centre.
    n_faults : int
        Stacking faults (wurtzite I1, or fcc intrinsic).
    n_twins : int
        {111} twin planes (fcc).
    twin_planes : tuple of (np.ndarray, float)
        Unit normal (laboratory frame) and signed distance from the centre (angstrom) of
        each twin plane: its atoms satisfy ``positions @ normal == distance``.
    """

    symbols: list[str]
    positions: np.ndarray
    n_faults: int = 0
    n_twins: int = 0
    twin_planes: tuple[tuple[np.ndarray, float], ...] = field(default=())


# --------------------------------------------------------------------------- materials


@cache
def lattice_unit_cell(name: str) -> Atoms:
    """Conventional unit cell of a lattice of :data:`LATTICES`, via ASE."""
    spec = LATTICES[name]
    return crystal(
        list(spec.symbols), basis=list(spec.basis), spacegroup=spec.spacegroup, cellpar=spec.cellpar
    )


@cache
def material_cell(material: Material) -> Atoms:
    """The unit cell of a built-in lattice or of a CIF material's content."""
    if isinstance(material, str):
        return lattice_unit_cell(material)
    return Atoms(
        list(material.symbols),
        scaled_positions=np.array(material.scaled_positions),
        cell=np.array(material.cell_angstrom),
        pbc=True,
    )


@cache
def _shortest_bond_angstrom(material: Material) -> float:
    """Shortest interatomic distance of a material (periodic), in angstrom."""
    cell = material_cell(material)
    big = cell.repeat(tuple(int(np.ceil(8.0 / n)) for n in cell.cell.lengths()))
    distances = big.get_all_distances(mic=True)
    np.fill_diagonal(distances, np.inf)
    return float(distances.min())


def _number_density_per_angstrom3(material: Material) -> float:
    cell = material_cell(material)
    return len(cell) / cell.get_volume()


def _formula(material: Material) -> dict[str, int]:
    """The reduced formula of a material, e.g. ``{"Ti": 1, "O": 2}``."""
    counts = Counter(material_cell(material).get_chemical_symbols())
    divisor = math.gcd(*counts.values())
    return {element: n // divisor for element, n in counts.items()}


# --------------------------------------------------------------------------- blocks


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


def fcc_stacking_letters(
    n_layers: int, first: int, twin_layers: Sequence[int], fault_layers: Sequence[int]
) -> np.ndarray:
    """Close-packed letters (0=A, 1=B, 2=C) of an fcc (111) stack with twins and faults.

    The perfect stack is ``A B C A B C`` (each layer one step on from the last). A twin
    plane at layer ``t`` mirrors the stack about that layer (``...A B C B A...``: the
    steps reverse after it); an intrinsic stacking fault at layer ``f`` is a missing
    layer (``...A B C A B | A B C...``: a double step into layer ``f``).

    Parameters
    ----------
    n_layers : int
    first : int
        Letter of layer 0.
    twin_layers, fault_layers : sequence of int
        Layer indices (>= 1) of the twin planes and of the faulted layers.

    Returns
    -------
    np.ndarray
        ``(n_layers,)`` integer letters.
    """
    twins, faults = set(twin_layers), set(fault_layers)
    letters = np.empty(n_layers, dtype=int)
    letters[0] = first % 3
    step = 1
    for k in range(1, n_layers):
        if k - 1 in twins:
            step = -step
        letters[k] = (letters[k - 1] + (2 * step if k in faults else step)) % 3
    return letters


_CLOSE_PACKED_OFFSETS = np.array([[0.0, 0.0], [1 / 3, 2 / 3], [2 / 3, 1 / 3]])  # A, B, C


def _close_packed_layers(
    a_angstrom: float, n_in_plane: int, letters: np.ndarray, heights: np.ndarray
) -> np.ndarray:
    """Sites of close-packed triangular layers: ``(layer, site, 3)`` Cartesian positions."""
    a1, a2 = np.array([a_angstrom, 0.0]), np.array([-a_angstrom / 2, a_angstrom * np.sqrt(3) / 2])
    ij = np.stack(
        np.meshgrid(*(np.arange(-n_in_plane, n_in_plane + 1),) * 2, indexing="ij"), axis=-1
    ).reshape(-1, 2)
    frac = ij[None, :, :] + _CLOSE_PACKED_OFFSETS[letters][:, None, :]
    xy = frac[..., :1] * a1 + frac[..., 1:] * a2
    z = np.broadcast_to(heights[:, None, None], xy.shape[:2] + (1,))
    return np.concatenate([xy, z], axis=-1)


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
    n_in_plane = int(np.ceil(half_extent_angstrom / (a * np.sqrt(3) / 2))) + 2
    # even, so that the bilayer at z = 0 is a B layer, as in ASE's unit cell
    n_half_layers = 2 * (int(np.ceil(half_extent_angstrom / c)) + 1)
    layers = np.arange(-n_half_layers, n_half_layers + 1)
    letters = stacking_sequence(len(layers), [k + n_half_layers for k in fault_layers_from_center])
    cations = _close_packed_layers(a, n_in_plane, letters, layers * c / 2).reshape(-1, 3)
    anions = cations + np.array([0.0, 0.0, WURTZITE_U * c])
    symbols = [spec.symbols[0]] * len(cations) + [spec.symbols[1]] * len(anions)
    return symbols, np.concatenate([cations, anions])


#: Rows: the stacking frame's x, y, z (z along [111]) in the cubic frame, so that the
#: perfect A B C stack of :func:`fcc_block` lies on the fcc sites of ASE's unit cell.
_FCC_STACK_TO_CUBIC = np.array(
    [
        [1.0, -1.0, 0.0] / np.sqrt(2.0),
        [1.0, 1.0, -2.0] / np.sqrt(6.0),
        [1.0, 1.0, 1.0] / np.sqrt(3.0),
    ]
)


def _cubic_variant(variant: int) -> np.ndarray:
    """A 90-degree rotation about [001] to the power ``variant``: maps [111] to the
    ``variant``-th of the four {111} normals ([111], [-111], [-1-11], [1-11])."""
    return np.linalg.matrix_power(
        np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0, 0, 1.0]]), variant
    )


def fcc_block(
    a_angstrom: float,
    half_extent_angstrom: float,
    twin_layers: Sequence[int] = (),
    fault_layers: Sequence[int] = (),
    variant: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A block of fcc crystal built (111) layer by layer, in the cubic frame.

    Without twins or faults its sites are those of ASE's fcc unit cell (an atom at the
    origin). Layer ``k`` lies at ``positions @ normal == k * a / sqrt(3)``.

    Parameters
    ----------
    a_angstrom : float
        Cubic lattice parameter.
    half_extent_angstrom : float
        The block covers at least the cube ``[-h, h]^3``.
    twin_layers, fault_layers : sequence of int
        Layer indices (0 is the layer through the origin) of twin planes and of
        intrinsic stacking faults (see :func:`fcc_stacking_letters`).
    variant : int
        Which {111} family is the stacking direction (0 to 3, :func:`_cubic_variant`).

    Returns
    -------
    positions : np.ndarray
        ``(n, 3)`` angstrom.
    normal : np.ndarray
        Unit normal of the stacking planes (the twin planes), cubic frame.
    """
    spacing = a_angstrom / np.sqrt(3.0)
    a_hex = a_angstrom / np.sqrt(2.0)
    n_in_plane = int(np.ceil(2 * half_extent_angstrom / (a_hex * np.sqrt(3) / 2))) + 2
    n_half = int(np.ceil(half_extent_angstrom / spacing)) + 1
    layers = np.arange(-n_half, n_half + 1)
    letters = fcc_stacking_letters(
        len(layers),
        -n_half,
        [k + n_half for k in twin_layers],
        [k + n_half for k in fault_layers],
    )
    stack = _close_packed_layers(a_hex, n_in_plane, letters, layers * spacing).reshape(-1, 3)
    rotation = _cubic_variant(variant)
    positions = stack @ _FCC_STACK_TO_CUBIC @ rotation.T
    inside = np.all(np.abs(positions) <= half_extent_angstrom + spacing, axis=1)
    return positions[inside], rotation @ _FCC_STACK_TO_CUBIC[2]


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


@dataclass(frozen=True)
class _Block:
    """A crystal block (crystal frame), the shift of the particle's centre into it, and
    the planar defects it carries."""

    symbols: list[str]
    positions: np.ndarray
    cell: np.ndarray
    shift: np.ndarray
    n_faults: int = 0
    twin_layers: tuple[int, ...] = ()
    plane_normal: np.ndarray | None = None
    layer_spacing_angstrom: float = 0.0


def crystal_block(
    material: Material,
    radius_angstrom: float,
    bound_angstrom: float,
    params: StructureParams,
    rng: np.random.Generator,
) -> _Block:
    """The crystal a particle is cut from, with its defects and the shift of its centre.

    The random draws, in order: the defect counts (wurtzite: I1 faults; fcc of one
    element when ``max_twins`` or ``max_fcc_stacking_faults`` is set: twins, faults and
    the {111} family), the defect layers, and the shift (a uniform point of the unit
    cell). For the reference study's lattices this is the generator's original order.
    """
    info = material_info(material)
    cell = material_cell(material).cell.array
    if isinstance(material, str) and material in STUDY_LATTICES:
        margin = 2 * LATTICES[material].a_angstrom
    else:
        margin = 2 * float(np.max(np.linalg.norm(cell, axis=1)))
    extent = bound_angstrom + margin
    if info.is_builtin_wurtzite:
        n_faults = int(rng.integers(params.max_stacking_faults + 1))
        c = float(LATTICES[material].c_angstrom)
        faults = _draw_fault_layers(radius_angstrom, c, n_faults, rng)
        symbols, positions = wurtzite_block(material, extent, faults)
        shift = rng.uniform(size=3) @ cell
        return _Block(symbols, positions, cell, shift, n_faults=n_faults)
    if info.is_fcc_element and (params.max_twins or params.max_fcc_stacking_faults):
        return _fcc_defect_block(material, radius_angstrom, extent, params, rng)
    unit = material_cell(material)
    positions = _tile(cell, unit.get_scaled_positions(), extent)
    symbols = list(unit.get_chemical_symbols()) * (len(positions) // len(unit))
    return _Block(symbols, positions, cell, rng.uniform(size=3) @ cell)


def _fcc_defect_block(
    material: Material,
    radius_angstrom: float,
    extent: float,
    params: StructureParams,
    rng: np.random.Generator,
) -> _Block:
    """An fcc block with 0..max twin planes and intrinsic faults through the particle."""
    a = _shortest_bond_angstrom(material) * np.sqrt(2.0)
    n_twins = int(rng.integers(params.max_twins + 1))
    n_faults = int(rng.integers(params.max_fcc_stacking_faults + 1))
    variant = int(rng.integers(4))
    cell = material_cell(material).cell.array
    shift = rng.uniform(size=3) @ cell
    normal = _cubic_variant(variant) @ _FCC_STACK_TO_CUBIC[2]
    spacing = a / np.sqrt(3.0)
    center_layer = int(round(float(shift @ normal) / spacing))
    drawn = _draw_fault_layers(radius_angstrom, 2 * spacing, n_twins + n_faults, rng)
    order = rng.permutation(len(drawn))
    n_twins = min(n_twins, len(drawn))
    twins = sorted(center_layer + drawn[k] for k in order[:n_twins])
    faults = sorted(center_layer + drawn[k] for k in order[n_twins:])
    positions, normal = fcc_block(a, extent + np.linalg.norm(shift), twins, faults, variant)
    symbols = [material_cell(material).get_chemical_symbols()[0]] * len(positions)
    return _Block(
        symbols, positions, cell, shift, len(faults), tuple(twins), normal, float(spacing)
    )


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class PolyhedronForm:
    """A convex particle shape for an equivalent-sphere radius of 1 angstrom.

    Attributes
    ----------
    normals : np.ndarray
        ``(k, 3)`` outward unit facet normals in the material's Cartesian frame.
    distances : np.ndarray
        ``(k,)`` facet distances from the centre; a point ``x`` is inside when
        ``x @ normals.T <= distances * radius`` for a particle of ``radius``.
    circumradius : float
        Largest vertex distance from the centre.
    """

    normals: np.ndarray
    distances: np.ndarray
    circumradius: float


_FIXED_FORMS = {"cube": {(1, 0, 0): 1.0}, "octahedron": {(1, 1, 1): 1.0}}


def _energies_key(
    material: Material, shape: str, surface_energies: dict[str, float] | None
) -> tuple[tuple[tuple[int, ...], float], ...]:
    """Surface energies of a polyhedral shape as a hashable, sorted key."""
    if shape in _FIXED_FORMS:
        return tuple(_FIXED_FORMS[shape].items())
    energies = surface_energies_for(material, surface_energies)
    if energies is None:
        raise SpecError(
            f"surface_energies: shape wulff needs surface energies for {material_label(material)}"
        )
    return tuple(sorted((parse_miller(k), float(v)) for k, v in energies.items()))


@lru_cache(maxsize=256)
def _polyhedron_form_cached(
    material: Material, energies: tuple[tuple[tuple[int, ...], float], ...]
) -> PolyhedronForm:
    import spglib
    from wulffpack import SingleCrystal

    spglib.error.OLD_ERROR_HANDLING = False  # errors raise (no deprecation warning)

    unit = material_cell(material)
    try:
        wulff = SingleCrystal(
            dict(energies), primitive_structure=unit, natoms=1000, symprec=WULFF_SYMPREC_ANGSTROM
        )
    except Exception as exc:  # noqa: BLE001 - wulffpack raises many types
        raise SpecError(
            f"surface_energies {dict(energies)} give no closed Wulff shape for "
            f"{material_label(material)} ({exception_summary(exc)}); list more facets "
            "(polar point groups need (001) and (00-1) separately)"
        ) from None
    dataset = spglib.get_symmetry_dataset(
        (unit.cell.array, unit.get_scaled_positions(), unit.numbers),
        symprec=WULFF_SYMPREC_ANGSTROM,
    )
    # wulffpack works in spglib's standardised frame: x_std = R x, so n = n_std @ R
    to_ours = np.asarray(dataset.std_rotation_matrix)
    facets = wulff.facets
    normals = np.array([f.original_normal for f in facets]) @ to_ours
    distances = np.array([f.distance_from_origin for f in facets])
    vertices = np.array([v for f in facets for v in f.vertices])
    scale = (4.0 / 3.0 * np.pi / wulff.volume) ** (1.0 / 3.0)
    if not np.isfinite(scale) or distances.min() <= 0:
        raise SpecError(
            f"surface_energies {dict(energies)} give no closed Wulff shape for "
            f"{material_label(material)}; list more facets"
        )
    circumradius = float(np.linalg.norm(vertices, axis=1).max() * scale)
    return PolyhedronForm(normals, distances * scale, circumradius)


def polyhedron_form(
    material: Material, shape: str, surface_energies: dict[str, float] | None = None
) -> PolyhedronForm:
    """The facets of a ``wulff``, ``cube`` or ``octahedron`` particle of a material.

    wulffpack's Wulff construction (``SingleCrystal``; the material's point group from
    spglib) from the surface energies (``wulff``: those given, else the material's
    default), from {100} alone (``cube``) or {111} alone (``octahedron``), scaled to the
    volume of the unit sphere. Cached per material and energies.

    Raises
    ------
    hrtem_ray.spec.base.SpecError
        The energies give no closed shape, or there are none for the material.
    """
    return _polyhedron_form_cached(material, _energies_key(material, shape, surface_energies))


@cache
def _decahedron_atoms(p: int, q: int, r: int) -> int:
    """Atom count of ase.cluster's ``Decahedron(p, q, r)`` (it does not depend on the element
    or the lattice parameter)."""
    from ase.cluster import Decahedron

    return len(Decahedron("Au", p, q, r, latticeconstant=4.0))


def _cluster_candidates(shape: str, max_atoms: int) -> list[tuple[int, tuple[int, ...]]]:
    """``(n_atoms, args)`` of the icosahedra / Marks decahedra up to just above ``max_atoms``."""
    out = []
    for size in range(1 if shape == "icosahedron" else 2, 200):
        if shape == "icosahedron":
            counts = [((10 * size**3 - 15 * size**2 + 11 * size - 3) // 3, (size,))]
        else:
            counts = [
                (_decahedron_atoms(size, q, 1), (size, q, 1)) for q in (size - 1, size, size + 1)
            ]
        out.extend(counts)
        if min(n for n, _ in counts) > max_atoms:
            break
    return sorted(out)


def cluster_positions(material: Material, shape: str, radius_angstrom: float) -> np.ndarray:
    """Atoms of the ase.cluster icosahedron or decahedron closest in size to ``radius``.

    Icosahedra (Mackay, ``noshells``) and Marks decahedra (``p``, ``q`` in ``p - 1 .. p +
    1``, re-entrance ``r = 1``: about as tall as wide) come in discrete sizes; the one
    whose atom count is closest (in ratio) to ``density x 4/3 pi radius^3`` is taken.
    Centred on its centroid, in ase.cluster's frame (the decahedron's five-fold axis
    along z).

    Returns
    -------
    np.ndarray
        ``(n, 3)`` angstrom.
    """
    target = _number_density_per_angstrom3(material) * 4.0 / 3.0 * np.pi * radius_angstrom**3
    candidates = _cluster_candidates(shape, int(4 * target) + 20)
    _, args = min(candidates, key=lambda c: (abs(math.log(c[0] / target)), c[1]))
    return _cluster_atoms(material, shape, tuple(args))


@lru_cache(maxsize=256)
def _cluster_atoms(material: Material, shape: str, args: tuple[int, ...]) -> np.ndarray:
    """The centred atoms of one ase.cluster size (cached by size: the random radii of a
    dataset map onto a few discrete clusters)."""
    from ase.cluster import Decahedron, Icosahedron

    element = material_cell(material).get_chemical_symbols()[0]
    a = round(_shortest_bond_angstrom(material) * np.sqrt(2.0), 6)
    if shape == "icosahedron":
        atoms = Icosahedron(element, args[0], latticeconstant=a)
    else:
        atoms = Decahedron(element, *args, latticeconstant=a)
    return atoms.positions - atoms.positions.mean(axis=0)


def bounding_radius_angstrom(
    material: Material, radius_angstrom: float, params: StructureParams
) -> float:
    """Radius of the sphere (about the particle's centre) that holds the whole particle.

    ``radius`` for a sphere, the Wulff polyhedron's circumradius for ``wulff``, ``cube``
    and ``octahedron``, the cluster's for ``icosahedron`` and ``decahedron``. Particles are
    laid out with it (no random draw: a pure function of the spec and the radius).
    """
    if params.shape == "sphere":
        return radius_angstrom
    if params.shape in ("icosahedron", "decahedron"):
        positions = cluster_positions(material, params.shape, round(radius_angstrom, 9))
        return float(np.linalg.norm(positions, axis=1).max())
    form = polyhedron_form(material, params.shape, params.surface_energies)
    return form.circumradius * radius_angstrom


# --------------------------------------------------------------------------- orientation


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random 3D rotation matrix (normalised Gaussian quaternion)."""
    quaternion = rng.normal(size=4)
    return Rotation.from_quat(quaternion / np.linalg.norm(quaternion)).as_matrix()


def _rotation_to_beam(direction: np.ndarray) -> Rotation:
    """The smallest rotation taking ``direction`` onto +z (the beam)."""
    unit = direction / np.linalg.norm(direction)
    axis = np.cross(unit, [0.0, 0.0, 1.0])
    sin = np.linalg.norm(axis)
    angle = math.atan2(sin, unit[2])
    if sin < 1e-12:
        return Rotation.from_rotvec([angle, 0.0, 0.0])  # identity, or pi about x for -z
    return Rotation.from_rotvec(axis / sin * angle)


def zone_axis_rotation(
    direction: np.ndarray, tilt_deg: float, rng: np.random.Generator
) -> np.ndarray:
    """A rotation looking down ``direction`` (Cartesian), tilted within a cone, spun about z.

    The tilt angle is uniform in solid angle over the cone of half-angle ``tilt_deg``
    (``cos(theta)`` uniform), about a random in-plane axis; then a uniformly random
    rotation about the beam. Draws three uniforms.
    """
    axis_angle, cos_fraction, spin = rng.uniform(size=3)
    theta = math.acos(1.0 - cos_fraction * (1.0 - math.cos(math.radians(tilt_deg))))
    azimuth = 2 * math.pi * axis_angle
    tilt = Rotation.from_rotvec(theta * np.array([math.cos(azimuth), math.sin(azimuth), 0.0]))
    about_beam = Rotation.from_rotvec([0.0, 0.0, 2 * math.pi * spin])
    return (about_beam * tilt * _rotation_to_beam(direction)).as_matrix()


def orientation_rotation(
    orientation: Any, cell: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The rotation of one particle: uniformly random, or near one of the zone axes.

    Parameters
    ----------
    orientation
        ``"random"`` or a :class:`~hrtem_ray.spec.materials.ZoneAxisOrientation`.
    cell : np.ndarray
        Rows: the cell vectors that the axes' indices [uvw] refer to.
    rng : numpy.random.Generator
        Draws the axis, the tilt and the rotation about the beam.
    """
    if not isinstance(orientation, ZoneAxisOrientation):
        return random_rotation(rng)
    axes = orientation.zone_axis
    direction = np.asarray(axes[int(rng.integers(len(axes)))], dtype=float) @ cell
    return zone_axis_rotation(direction, orientation.tilt_deg, rng)


# --------------------------------------------------------------------------- stoichiometry


def trim_stoichiometry(
    symbols: Sequence[str],
    positions: np.ndarray,
    formula: dict[str, int],
    bond_angstrom: float,
) -> tuple[list[str], np.ndarray]:
    """Remove the least bound atoms of the elements in excess, keeping the formula.

    With ``F`` the formula units of the scarcest element, every element keeps
    ``round(F x its count in the formula)`` atoms, so each atom fraction is within
    ``0.5 / (F x count)`` of the formula's (2% once an element has 25 atoms). The atoms
    removed are those of the fewest neighbours within :data:`NEIGHBOUR_FACTOR` x
    ``bond_angstrom``, the farthest from the centre first among equals: surface atoms,
    corners and edges first. Charge neutrality is not sought.

    Returns
    -------
    symbols : list of str
    positions : np.ndarray
    """
    names = np.array(symbols)
    counts = {element: int((names == element).sum()) for element in formula}
    units = min(counts[element] / k for element, k in formula.items())
    if units < 1:
        return list(symbols), positions
    neighbours = cKDTree(positions).query_ball_point(
        positions, NEIGHBOUR_FACTOR * bond_angstrom, return_length=True
    )
    distance = np.linalg.norm(positions, axis=1)
    keep = np.ones(len(names), dtype=bool)
    for element, k in formula.items():
        excess = counts[element] - int(round(units * k))
        if excess <= 0:
            continue
        index = np.flatnonzero(names == element)
        order = np.lexsort((-distance[index], neighbours[index]))
        keep[index[order[:excess]]] = False
    return names[keep].tolist(), positions[keep]


def _trims(material: Material, params: StructureParams) -> bool:
    """Whether a particle's stoichiometry is trimmed (see ``StructureParams.stoichiometry``)."""
    if params.stoichiometry == "as_cut" or len(_formula(material)) < 2:
        return False
    legacy = params.shape == "sphere" and material_label(material) in STUDY_LATTICES
    return params.stoichiometry == "kept" or not legacy


# --------------------------------------------------------------------------- particle


def build_particle(
    material: Material, radius_angstrom: float, params: StructureParams, rng: np.random.Generator
) -> Particle:
    """One particle of ``params.shape`` with equivalent-sphere radius ``radius``.

    A pure function of ``rng``'s state (see the module docstring for the steps). For a
    sphere of one of the reference study's lattices in random orientation, the draws
    and the arithmetic are those of the original generator, bit for bit.

    Parameters
    ----------
    material
        A key of :data:`LATTICES` or a CIF material.
    radius_angstrom
        Radius of the sphere of the same volume.
    params
        Shape, surface energies, orientation, defect maxima and stoichiometry.
    rng
        The particle's own generator.
    """
    if params.shape in ("icosahedron", "decahedron"):
        positions = cluster_positions(material, params.shape, round(radius_angstrom, 9))
        rotation = orientation_rotation(params.orientation, np.eye(3), rng)
        element = material_cell(material).get_chemical_symbols()[0]
        return Particle([element] * len(positions), positions @ rotation.T)
    bound = bounding_radius_angstrom(material, radius_angstrom, params)
    block = crystal_block(material, radius_angstrom, bound, params, rng)
    rotation = orientation_rotation(params.orientation, block.cell, rng)
    positions = block.positions - block.shift
    if params.shape == "sphere":
        positions = positions @ rotation.T
        inside = np.linalg.norm(positions, axis=1) <= radius_angstrom
        positions = positions[inside]
    else:
        form = polyhedron_form(material, params.shape, params.surface_energies)
        inside = np.all(
            positions @ form.normals.T <= form.distances * radius_angstrom + 1e-6, axis=1
        )
        positions = positions[inside] @ rotation.T
    symbols = np.asarray(block.symbols)[inside].tolist()
    if _trims(material, params):
        symbols, positions = trim_stoichiometry(
            symbols, positions, _formula(material), _shortest_bond_angstrom(material)
        )
    planes: tuple[tuple[np.ndarray, float], ...] = ()
    if block.plane_normal is not None:
        offset = float(block.shift @ block.plane_normal)
        planes = tuple(
            (rotation @ block.plane_normal, t * block.layer_spacing_angstrom - offset)
            for t in block.twin_layers
        )
    return Particle(symbols, positions, block.n_faults, len(block.twin_layers), planes)


def check_particle_shapes(spec: DatasetSpec) -> None:
    """Check, before Ray starts, that every group's particles can be built and fit the cell.

    Builds each Wulff construction (wulffpack) and each icosahedron / decahedron of the
    largest radius once (both cached for the simulation), and compares the particles'
    bounding diameters with ``cell_angstrom``.

    Raises
    ------
    hrtem_ray.spec.base.SpecError
        Naming the field (``dataset.structures`` or ``dataset.structure_domains.NAME``),
        the material and why.
    """
    for group, params in spec.groups_structures():
        field = "dataset.structures" if group == "all" else f"dataset.structure_domains.{group}"
        for material in params.lattices:
            try:
                bound = bounding_radius_angstrom(material, params.radius_angstrom[1], params)
            except SpecError as exc:
                raise SpecError(f"{field}: {exc}") from None
            if 2 * bound >= params.cell_angstrom:
                raise SpecError(
                    f"{field}.radius_angstrom: a {params.shape} of {material_label(material)} "
                    f"of radius {params.radius_angstrom[1]:g} A reaches {bound:.1f} A from its "
                    f"centre, which does not fit in cell_angstrom {params.cell_angstrom:g}"
                )
