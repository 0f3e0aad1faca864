"""The display words of the study axes in the report: each axis's name and unit.

>>> axis_label("cs_mm")
'spherical aberration Cs (mm)'
"""

from __future__ import annotations

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
