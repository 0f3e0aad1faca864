"""The materials of the particles: built-in lattices and crystals read from CIF files.

A particle's material is a key of :data:`LATTICES` (the reference study's 9 lattices and
the common HRTEM nanoparticle materials: Au, Pt, Pd, CeO2, TiO2 anatase and rutile) or a
:class:`CifMaterial`, read from a CIF file while the spec is read (``{cif: PATH}`` in
``dataset.structures.lattices`` or a structure domain's ``lattice``). A CIF material
carries its content (cell, sites, space group, the file's sha256), so that Ray workers
never read the file and a dataset's identity is the material, not where its file lies
(:data:`IDENTITY`).

Also here: the particle shapes (:data:`SHAPES`), the orientation near a zone axis
(:class:`ZoneAxisOrientation`), Miller indices (:func:`parse_miller`) and the default
surface energies of the Wulff shape (:data:`DEFAULT_SURFACE_ENERGIES`, with their sources).

Reading a spec without a CIF imports nothing heavy: ASE, spglib and the storage layer are
imported only to read a CIF.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from hrtem_ray.spec.base import SpecModel
from hrtem_ray.spec.names import safe_name_problem

__all__ = [
    "CifMaterial",
    "DEFAULT_SURFACE_ENERGIES",
    "IDENTITY",
    "LATTICES",
    "LatticeSpec",
    "Material",
    "MaterialInfo",
    "SHAPES",
    "STUDY_LATTICES",
    "Shape",
    "SURFACE_ENERGY_SOURCES",
    "WURTZITE_U",
    "ZoneAxisOrientation",
    "canonical_miller",
    "exception_summary",
    "material_info",
    "material_label",
    "paper_mask_blur_angstrom",
    "parse_cif_bytes",
    "parse_miller",
    "read_cif_material",
    "surface_energies_for",
    "without_material_paths",
]


# --------------------------------------------------------------------------- built-in lattices


@dataclass(frozen=True)
class LatticeSpec:
    """A crystal lattice, as input to :func:`ase.spacegroup.crystal`.

    Attributes
    ----------
    spacegroup : int
        International space-group number (ASE's default setting: origin choice 1).
    a_angstrom, c_angstrom : float
        Lattice parameters; ``c_angstrom`` is None for cubic lattices. Hexagonal space
        groups (168-194) get ``gamma = 120``, every other one 90 degrees.
    symbols : tuple of str
        Element of each Wyckoff position in ``basis``.
    basis : tuple of (float, float, float)
        Fractional coordinates of the asymmetric unit.
    paper_mask_blur_angstrom : float
        Gaussian blur of the study's literal ground-truth recipe for this lattice
        (1 A for C, Fe and Co3O4, 1.6 A for the others).
    source : str
        Where the lattice parameters come from.
    """

    spacegroup: int
    a_angstrom: float
    c_angstrom: float | None
    symbols: tuple[str, ...]
    basis: tuple[tuple[float, float, float], ...]
    paper_mask_blur_angstrom: float
    source: str = "the reference study's table (shared/study_reference.md)"

    @property
    def is_wurtzite(self) -> bool:
        """True for the hexagonal (space group 186) lattices, which can carry faults."""
        return self.spacegroup == 186

    @property
    def cellpar(self) -> list[float]:
        """Cell parameters ``[a, b, c, alpha, beta, gamma]`` for ASE."""
        if self.c_angstrom is None:
            return [self.a_angstrom] * 3 + [90.0] * 3
        gamma = 120.0 if 168 <= self.spacegroup <= 194 else 90.0
        return [self.a_angstrom, self.a_angstrom, self.c_angstrom, 90.0, 90.0, gamma]


#: Ideal wurtzite internal parameter u (anion at z = u above the cation).
WURTZITE_U = 3.0 / 8.0


def _wurtzite(cation: str, anion: str, a: float, c: float) -> LatticeSpec:
    basis = ((1 / 3, 2 / 3, 0.0), (1 / 3, 2 / 3, WURTZITE_U))
    return LatticeSpec(186, a, c, (cation, anion), basis, 1.6)


def _spinel(cation: str, a: float, x_origin1: float, blur: float) -> LatticeSpec:
    # Origin choice 1: A (8a) at 0,0,0; B (16d) at 5/8,5/8,5/8; O (32e) at x,x,x
    # with x = u + 1/8, u being the usual origin-choice-2 oxygen parameter.
    basis = ((0.0, 0.0, 0.0), (5 / 8, 5 / 8, 5 / 8), (x_origin1,) * 3)
    return LatticeSpec(227, a, None, (cation, cation, "O"), basis, blur)


def _fcc_metal(element: str, a: float) -> LatticeSpec:
    source = "R. W. G. Wyckoff, Crystal Structures vol. 1, 2nd ed. (1963): X-ray, room temperature"
    return LatticeSpec(225, a, None, (element,), ((0.0, 0.0, 0.0),), 1.6, source)


_TIO2_SOURCE = (
    "J. K. Burdett et al., J. Am. Chem. Soc. 109, 3639 (1987): neutron powder diffraction, 295 K"
)

#: The lattices a spec names by key: the 9 of the reference study (space groups and
#: parameters from its table) and the common HRTEM nanoparticle materials, with measured
#: room-temperature lattice parameters (``source`` of each). Their nearest-neighbour
#: distances are checked against the literature bond lengths in
#: ``tests/physics/test_structures.py``.
LATTICES: dict[str, LatticeSpec] = {
    "ZnS": _wurtzite("Zn", "S", 3.8227, 6.2607),
    "CdSe": _wurtzite("Cd", "Se", 4.2985, 7.0152),
    "Cu": LatticeSpec(225, 3.6157, None, ("Cu",), ((0.0, 0.0, 0.0),), 1.6),
    "Ag": LatticeSpec(225, 4.0782, None, ("Ag",), ((0.0, 0.0, 0.0),), 1.6),
    "C": LatticeSpec(227, 3.5673, None, ("C",), ((0.0, 0.0, 0.0),), 1.0),
    "Si": LatticeSpec(227, 5.430, None, ("Si",), ((0.0, 0.0, 0.0),), 1.6),
    "Fe3O4": _spinel("Fe", 8.394, 0.2549 + 1 / 8, 1.6),
    "Co3O4": _spinel("Co", 8.065, 0.2631 + 1 / 8, 1.0),
    "Fe": LatticeSpec(229, 2.866, None, ("Fe",), ((0.0, 0.0, 0.0),), 1.0),
    "Au": _fcc_metal("Au", 4.0782),
    "Pt": _fcc_metal("Pt", 3.9242),
    "Pd": _fcc_metal("Pd", 3.8907),
    # fluorite: Ce 4a, O 8c
    "CeO2": LatticeSpec(
        225,
        5.411,
        None,
        ("Ce", "O"),
        ((0.0, 0.0, 0.0), (0.25, 0.25, 0.25)),
        1.6,
        "ICDD PDF 34-0394 (synthetic cerianite): X-ray powder diffraction, room temperature",
    ),
    # I4_1/amd origin choice 1: Ti 4a (0, 0, 0), O 8e (0, 0, z)
    "TiO2-anatase": LatticeSpec(
        141, 3.7845, 9.5143, ("Ti", "O"), ((0.0, 0.0, 0.0), (0.0, 0.0, 0.2081)), 1.6, _TIO2_SOURCE
    ),
    # P4_2/mnm: Ti 2a (0, 0, 0), O 4f (x, x, 0)
    "TiO2-rutile": LatticeSpec(
        136,
        4.5937,
        2.9587,
        ("Ti", "O"),
        ((0.0, 0.0, 0.0), (0.3048, 0.3048, 0.0)),
        1.6,
        _TIO2_SOURCE,
    ),
}

#: The reference study's 9 lattices. Their spheres are cut as they always were (no
#: stoichiometry trim in ``stoichiometry: auto``), so that existing datasets stay as they are.
STUDY_LATTICES = ("ZnS", "CdSe", "Cu", "Ag", "C", "Si", "Fe3O4", "Co3O4", "Fe")

#: Blur of the paper mask recipe for a material not in :data:`LATTICES` (the study's
#: 1.6 A "for the others").
DEFAULT_PAPER_MASK_BLUR_ANGSTROM = 1.6


def paper_mask_blur_angstrom(label: str) -> float:
    """The paper recipe's mask blur of a material label (1.6 A unless the study set another)."""
    spec = LATTICES.get(label)
    return DEFAULT_PAPER_MASK_BLUR_ANGSTROM if spec is None else spec.paper_mask_blur_angstrom


# --------------------------------------------------------------------------- CIF materials

#: Serialisation context of a material's identity: ``model_dump(context=IDENTITY)`` leaves
#: out where a CIF was read from (its ``cif`` path), keeping its content.
IDENTITY = {"identity": True}
#: Largest unit cell a CIF may hold (atoms): a nanoparticle material, not a supercell.
MAX_CIF_ATOMS = 1000
#: Smallest distance between two atoms of a CIF crystal (angstrom); closer sites are a
#: symmetry expansion that duplicated a site (a wrong space-group setting).
MIN_CIF_DISTANCE_ANGSTROM = 0.5
#: Occupancies further than this from 1 are partial.
OCCUPANCY_TOLERANCE = 1e-3
#: spglib tolerance for the space group of a CIF crystal (CIF positions have 4-5 digits).
SYMPREC_ANGSTROM = 1e-3


def _is_uri(location: str) -> bool:
    return urlsplit(location).scheme in ("file", "s3")


def read_cif_material(location: str, base_dir: str | None = None) -> dict[str, Any]:
    """Read a CIF file into the content of a :class:`CifMaterial`.

    Parameters
    ----------
    location
        A local path (relative to ``base_dir``, the spec file's folder), ``file://`` or
        ``s3://`` URI (read through :mod:`hrtem_ray.store.storage`).
    base_dir
        Folder of relative paths; the current directory when None.

    Returns
    -------
    dict
        ``name`` (the empirical formula), ``sha256``, ``cell_angstrom``, ``symbols``,
        ``scaled_positions`` and ``spacegroup``.

    Raises
    ------
    ValueError
        The file is missing or unreadable, or its crystal is refused (see
        :func:`parse_cif_bytes`); the message names the file and the reason.
    """
    from hrtem_ray.store import storage

    uri = location
    if not _is_uri(location):
        path = Path(location).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        uri = str(path)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise ValueError(f"CIF {location}: no such file ({uri})") from None
    except Exception as exc:  # noqa: BLE001 - any storage failure is the user's input
        raise ValueError(f"CIF {location}: cannot be read ({exception_summary(exc)})") from None
    return parse_cif_bytes(data, location)


def exception_summary(exc: BaseException) -> str:
    """``Type: first line of the message`` (library errors can run over many lines)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _occupancy_problem(block: Any) -> str | None:
    """The partially occupied sites of a CIF block, or None."""
    occupancies = block.get("_atom_site_occupancy")
    if occupancies is None:
        return None
    labels = block.get("_atom_site_label") or [f"#{k + 1}" for k in range(len(occupancies))]
    partial = []
    for label, value in zip(labels, occupancies, strict=False):
        try:
            occupancy = float(str(value).split("(")[0])
        except ValueError:
            return f"site {label} has an unreadable occupancy {value!r}"
        if abs(occupancy - 1.0) > OCCUPANCY_TOLERANCE:
            partial.append(f"{label} {occupancy:g}")
    if partial:
        return (
            f"partial occupancy ({', '.join(partial)}); a particle needs every site fully "
            "occupied: give an ordered structure"
        )
    return None


def parse_cif_bytes(data: bytes, source: str) -> dict[str, Any]:
    """The content of a :class:`CifMaterial` from a CIF file's bytes (ASE's reader).

    Refused, with ``source`` and the reason: a file ASE cannot parse, no structure or
    more than one in it, partial occupancies, more than :data:`MAX_CIF_ATOMS` atoms in
    the cell, or two atoms closer than :data:`MIN_CIF_DISTANCE_ANGSTROM`.
    """
    try:
        from ase.io.cif import parse_cif

        blocks = [block for block in parse_cif(io.BytesIO(data)) if block.has_structure()]
    except Exception as exc:  # noqa: BLE001 - ASE raises many types for a bad file
        raise ValueError(f"CIF {source}: ASE cannot read it ({exception_summary(exc)})") from None
    if not blocks:
        raise ValueError(f"CIF {source}: no crystal structure in it (cell and atom sites)")
    if len(blocks) > 1:
        raise ValueError(f"CIF {source}: holds {len(blocks)} structures; give a CIF with one")
    problem = _occupancy_problem(blocks[0])
    if problem is not None:
        raise ValueError(f"CIF {source}: {problem}")
    try:
        atoms = blocks[0].get_atoms()
    except Exception as exc:  # noqa: BLE001
        raise ValueError(
            f"CIF {source}: ASE cannot build its crystal ({exception_summary(exc)})"
        ) from None
    return _content_of(atoms, data, source)


def _content_of(atoms: Any, data: bytes, source: str) -> dict[str, Any]:
    """Check a crystal read from a CIF and return its :class:`CifMaterial` content."""
    import numpy as np

    if len(atoms) == 0 or atoms.cell.volume <= 1.0:
        raise ValueError(f"CIF {source}: no atoms or no cell volume")
    if len(atoms) > MAX_CIF_ATOMS:
        raise ValueError(f"CIF {source}: {len(atoms)} atoms in the cell, more than {MAX_CIF_ATOMS}")
    distances = atoms.get_all_distances(mic=True)
    np.fill_diagonal(distances, np.inf)
    if len(atoms) > 1 and distances.min() < MIN_CIF_DISTANCE_ANGSTROM:
        raise ValueError(
            f"CIF {source}: two atoms {distances.min():.3f} A apart (at least "
            f"{MIN_CIF_DISTANCE_ANGSTROM} A): a site duplicated by the symmetry expansion; "
            "check the space group and its setting"
        )
    return {
        "name": atoms.get_chemical_formula(mode="metal", empirical=True),
        "sha256": hashlib.sha256(data).hexdigest(),
        "cell_angstrom": [[round(float(x), 12) for x in row] for row in atoms.cell.array],
        "symbols": list(atoms.get_chemical_symbols()),
        "scaled_positions": [
            [round(float(x), 12) % 1.0 for x in row] for row in atoms.get_scaled_positions()
        ],
        "spacegroup": _spacegroup_number(atoms),
    }


def _spacegroup_number(atoms: Any) -> int:
    """spglib's space group of a crystal (1 when spglib finds none)."""
    import spglib

    spglib.error.OLD_ERROR_HANDLING = False  # errors raise (no deprecation warning)
    try:
        dataset = spglib.get_symmetry_dataset(
            (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers),
            symprec=SYMPREC_ANGSTROM,
        )
    except Exception:  # noqa: BLE001 - spglib finds no symmetry: P1
        return 1
    return 1 if dataset is None else int(dataset.number)


Vector = tuple[float, float, float]


class CifMaterial(SpecModel):
    """A crystal read from a CIF file, with its content (written ``{cif: PATH}`` in a spec).

    The spec form is ``{cif: PATH}`` or ``{cif: PATH, name: LABEL}``; the file is read
    while the spec is read (:func:`read_cif_material`). Stored specs (``dataset.json``,
    ``study.json``) hold the content too and are read back without the file. A content
    given with ``sha256`` alone is checked against the file.

    Attributes
    ----------
    cif
        Where the file was read from, as written in the spec; not part of the identity.
    name
        Label of the material (the ``lattice`` column of the images); default: the
        empirical formula.
    sha256
        Of the file's bytes.
    cell_angstrom, symbols, scaled_positions
        The crystal's cell (rows are the cell vectors) and every atom in it.
    spacegroup
        spglib's space-group number (tolerance :data:`SYMPREC_ANGSTROM`).
    """

    cif: str | None = None
    name: str
    sha256: str
    cell_angstrom: tuple[Vector, Vector, Vector]
    symbols: tuple[str, ...]
    scaled_positions: tuple[Vector, ...]
    spacegroup: int = Field(ge=1, le=230)

    @model_validator(mode="before")
    @classmethod
    def _read_file(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, Mapping) or "symbols" in data:
            return data
        unknown = sorted(set(data) - {"cif", "name", "sha256"})
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; a material file entry is {{cif: PATH}}")
        location = data.get("cif")
        if not isinstance(location, str) or not location:
            raise ValueError("needs cif: PATH (a CIF file), or give a built-in lattice name")
        base_dir = (info.context or {}).get("spec_dir")
        content = read_cif_material(location, base_dir)
        pinned = data.get("sha256")
        if pinned is not None and pinned != content["sha256"]:
            raise ValueError(
                f"CIF {location}: sha256 {content['sha256']} differs from the spec's {pinned}"
            )
        return {**content, "cif": location, "name": data.get("name") or content["name"]}

    @field_validator("name")
    @classmethod
    def _safe_label(cls, value: str) -> str:
        problem = safe_name_problem(value)
        if problem is not None:
            raise ValueError(f"material name {problem}")
        return value

    @model_validator(mode="after")
    def _sites_match(self) -> CifMaterial:
        if len(self.symbols) != len(self.scaled_positions) or not self.symbols:
            raise ValueError("symbols and scaled_positions need one entry per atom")
        return self

    @model_serializer(mode="wrap")
    def _identity(self, handler, info) -> dict[str, Any]:
        out = handler(self)
        if info.context and info.context.get("identity"):
            out.pop("cif", None)
        return out


def _material_tag(value: Any) -> str:
    return "name" if isinstance(value, str) else "cif"


#: A particle material in a spec: a key of :data:`LATTICES` or ``{cif: PATH}``. Errors of
#: the file entry are located at ``...lattices.N.cif``.
Material = Annotated[
    Annotated[str, Tag("name")] | Annotated[CifMaterial, Tag("cif")],
    Discriminator(_material_tag),
]


def material_label(material: str | CifMaterial) -> str:
    """The label of a material: its key, or a CIF material's name."""
    return material if isinstance(material, str) else material.name


def without_material_paths(value: Any) -> Any:
    """A dumped spec without the ``cif`` paths of its CIF materials (their identity form)."""
    if isinstance(value, Mapping):
        is_material = "sha256" in value and "symbols" in value
        return {
            key: without_material_paths(item)
            for key, item in value.items()
            if not (is_material and key == "cif")
        }
    if isinstance(value, list | tuple):
        return [without_material_paths(item) for item in value]
    return value


@dataclass(frozen=True)
class MaterialInfo:
    """What the shapes and defects need to know of a material.

    Attributes
    ----------
    label : str
    spacegroup : int
    elements : tuple of str
        Distinct elements, sorted.
    is_builtin_wurtzite : bool
        A wurtzite key of :data:`LATTICES` (the ones that carry stacking faults).
    """

    label: str
    spacegroup: int
    elements: tuple[str, ...]
    is_builtin_wurtzite: bool = False

    @property
    def is_cubic(self) -> bool:
        """Cubic space group (195-230)."""
        return 195 <= self.spacegroup <= 230

    @property
    def is_fcc_element(self) -> bool:
        """An fcc crystal of one element (Fm-3m with one element)."""
        return self.spacegroup == 225 and len(self.elements) == 1

    @property
    def kind(self) -> str:
        """A short description for messages, e.g. ``"CdSe (space group 186)"``."""
        return f"{self.label} (space group {self.spacegroup})"


def material_info(material: str | CifMaterial) -> MaterialInfo:
    """The :class:`MaterialInfo` of a built-in key or a CIF material."""
    if isinstance(material, str):
        spec = LATTICES[material]
        return MaterialInfo(
            material, spec.spacegroup, tuple(sorted(set(spec.symbols))), spec.is_wurtzite
        )
    return MaterialInfo(material.name, material.spacegroup, tuple(sorted(set(material.symbols))))


# --------------------------------------------------------------------------- shapes, Miller indices

#: Particle shapes: ``sphere`` (cut from the crystal), ``wulff`` (the Wulff construction
#: of wulffpack from surface energies), ``cube`` and ``octahedron`` ({100} and {111} Wulff
#: shapes of cubic crystals), ``icosahedron`` and ``decahedron`` (multiply twinned fcc
#: clusters of ase.cluster).
Shape = Literal["sphere", "wulff", "icosahedron", "decahedron", "octahedron", "cube"]
SHAPES: tuple[str, ...] = ("sphere", "wulff", "icosahedron", "decahedron", "octahedron", "cube")

_MILLER_SEPARATED = re.compile(r"[\s,]+")
_MILLER_COMPACT = re.compile(r"-?\d")


def parse_miller(text: Any) -> tuple[int, ...]:
    """Miller indices from ``"111"``, ``"1-10"``, ``"1 1 0"``, ``"(1,1,0)"`` or ``[1, 1, 0]``.

    Three indices (hkl) or four (hexagonal hkil, with h + k + i = 0). Without separators
    every index is one digit (``"10-10"`` is (1, 0, -1, 0)).

    >>> parse_miller("1-10"), parse_miller("(2, 0, 0)"), parse_miller("10-10")
    ((1, -1, 0), (2, 0, 0), (1, 0, -1, 0))
    """
    if isinstance(text, list | tuple):
        indices = tuple(int(v) for v in text)
    else:
        stripped = str(text).strip().strip("()[]{}").strip()
        parts = [p for p in _MILLER_SEPARATED.split(stripped) if p]
        tokens = parts if len(parts) > 1 else _MILLER_COMPACT.findall(stripped)
        if len(parts) <= 1 and "".join(tokens) != stripped:
            raise ValueError(f"{text!r} is not Miller indices such as '111', '1-10' or '1 1 0'")
        try:
            indices = tuple(int(p) for p in tokens)
        except ValueError:
            raise ValueError(f"{text!r} is not Miller indices such as '111' or '1 1 0'") from None
    if len(indices) not in (3, 4) or not any(indices):
        raise ValueError(f"{text!r}: need 3 indices (hkl) or 4 (hkil), not all zero")
    if len(indices) == 4 and indices[0] + indices[1] + indices[2] != 0:
        raise ValueError(f"{text!r}: hexagonal indices hkil need h + k + i = 0")
    return indices


def canonical_miller(indices: tuple[int, ...]) -> str:
    """The stored form of Miller indices: ``"1 -1 0"``."""
    return " ".join(str(v) for v in indices)


_BROKEN_BOND_FCC = {
    # nearest-neighbour broken-bond model: broken bonds per surface atom / area per atom,
    # (111) 3 / (sqrt(3)/4 a^2), (100) 4 / (a^2/2), (110) 5 / (a^2/sqrt(2)); ratios to (111)
    "1 1 1": 1.0,
    "1 0 0": round(8.0 / (12.0 / math.sqrt(3.0)), 4),
    "1 1 0": round(5.0 * math.sqrt(2.0) / (12.0 / math.sqrt(3.0)), 4),
}

#: Default surface energies (per Miller index, in J/m^2 or relative: only ratios shape a
#: Wulff particle) of the materials that have one; any other needs ``surface_energies``.
DEFAULT_SURFACE_ENERGIES: dict[str, dict[str, float]] = {
    **{metal: dict(_BROKEN_BOND_FCC) for metal in ("Au", "Pt", "Pd", "Cu", "Ag")},
    "CeO2": {"1 1 1": 0.68, "1 1 0": 1.01, "1 0 0": 1.41},
    "TiO2-anatase": {"1 0 1": 0.44, "1 0 0": 0.53, "0 0 1": 0.90},
    "TiO2-rutile": {"1 1 0": 15.6, "1 0 0": 19.6, "0 1 1": 24.4, "0 0 1": 28.9},
}

#: Where each default of :data:`DEFAULT_SURFACE_ENERGIES` comes from.
SURFACE_ENERGY_SOURCES: dict[str, str] = {
    **{
        metal: "nearest-neighbour broken-bond model (relative: (111) 1, (100) 1.155, "
        "(110) 1.021); DFT ratios differ by up to about 15%"
        for metal in ("Au", "Pt", "Pd", "Cu", "Ag")
    },
    "CeO2": "DFT (GGA), M. Nolan et al., Surf. Sci. 576, 217 (2005), J/m^2",
    "TiO2-anatase": "DFT (PBE), M. Lazzeri, A. Vittadini, A. Selloni, Phys. Rev. B 63, "
    "155409 (2001), J/m^2",
    "TiO2-rutile": "DFT (LDA), S. P. Ramamoorthy, D. Vanderbilt, R. D. King-Smith, Phys. Rev. "
    "B 49, 16721 (1994), meV/A^2",
}


def surface_energies_for(
    material: str | CifMaterial, given: Mapping[str, float] | None
) -> dict[str, float] | None:
    """The surface energies of a Wulff particle: those given, else the material's default."""
    if given is not None:
        return dict(given)
    default = DEFAULT_SURFACE_ENERGIES.get(material_label(material))
    return None if default is None or not isinstance(material, str) else dict(default)


class ZoneAxisOrientation(SpecModel):
    """Particles near a zone axis: ``{zone_axis: [[1, 1, 0], [1, 0, 0]], tilt_deg: 3}``.

    Each particle looks down one of the listed directions (drawn per particle; indices
    [uvw] of the material's conventional cell, or of the cluster's own Cartesian frame for
    icosahedra and decahedra), tilted away from it by an angle drawn uniformly over the
    cone of half-angle ``tilt_deg`` (uniform in solid angle), then rotated about the beam
    by a uniformly random angle.
    """

    zone_axis: tuple[tuple[int, int, int], ...] = Field(min_length=1, max_length=64)
    tilt_deg: float = Field(0.0, ge=0, le=90, description="Half-angle of the tilt cone.")

    @field_validator("zone_axis")
    @classmethod
    def _nonzero(cls, value: tuple[tuple[int, int, int], ...]) -> tuple[tuple[int, int, int], ...]:
        zero = [list(axis) for axis in value if not any(axis)]
        if zero:
            raise ValueError(f"{zero}: a zone axis [uvw] needs a non-zero index")
        return value
