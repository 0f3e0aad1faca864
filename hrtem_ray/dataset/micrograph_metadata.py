"""What a microscope file's metadata say: calibration units and how the image was taken.

Pure functions on RosettaSciIO signal dictionaries (``data``, ``axes``, ``metadata``,
``original_metadata``), used by :mod:`hrtem_ray.dataset.micrograph_files`:

* :func:`parse_unit`: a calibration unit as real files write it (SI metres and their
  prefixes, ``µm`` with the micro sign or the Greek mu, ``um``, ncempy's ``n_m``, ``Å``
  with either code point, ``A``), its kind (a length, a reciprocal length or an angle of a
  diffraction pattern, none, other) and its size in Å;
* :func:`imaging_mode`: dark-field, bright-field or scanned (STEM) from the detector of the
  image, its title or signs of a scan;
* :func:`diffraction_mode`: metadata that say the file is a diffraction pattern.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = [
    "ANGLE_UNITS",
    "DETECTOR_FIELDS",
    "NO_UNITS",
    "UNIT_ANGSTROM",
    "Imaging",
    "Unit",
    "diffraction_mode",
    "imaging_mode",
    "parse_unit",
    "unit_to_angstrom",
]

#: Length units of calibrations, in Å (keys as :func:`parse_unit` normalises them).
UNIT_ANGSTROM: dict[str, float] = {
    "m": 1e10,
    "meter": 1e10,
    "metre": 1e10,
    "cm": 1e8,
    "mm": 1e7,
    "μm": 1e4,  # NFKC turns the micro sign into the Greek mu
    "um": 1e4,
    "micron": 1e4,
    "micrometer": 1e4,
    "micrometre": 1e4,
    "nm": 10.0,
    "nanometer": 10.0,
    "nanometre": 10.0,
    "å": 1.0,
    "a": 1.0,
    "angstrom": 1.0,
    "ångström": 1.0,
    "pm": 0.01,
    "picometer": 0.01,
    "picometre": 0.01,
}

#: Angle units (diffraction patterns calibrated in scattering angle).
ANGLE_UNITS = ("rad", "mrad", "μrad", "urad", "deg", "degree", "°")

#: Units of an uncalibrated axis.
NO_UNITS = ("", "px", "pixel", "pixels", "<undefined>", "undefined", "none", "t.b.d.")


@dataclass(frozen=True)
class Unit:
    """A calibration unit: ``kind`` is ``length``, ``reciprocal``, ``angle``, ``none`` (an
    uncalibrated axis) or ``other`` (eV, s, ...); ``angstrom`` is Å per unit (lengths) or
    per inverse unit (reciprocal lengths), else None."""

    kind: str
    angstrom: float | None
    text: str


@dataclass(frozen=True)
class Imaging:
    """What a file's metadata say of how the image was taken (:func:`imaging_mode`).

    ``kind`` is ``dark-field`` (an ADF/HAADF/DF detector or title), ``stem`` (scanned,
    detector not recorded), ``bright-field`` (a BF/ABF detector or title) or ``""``
    (nothing recorded); ``evidence`` names the metadata field and value.
    """

    kind: str
    evidence: str

    def describe(self) -> str:
        """E.g. ``"dark-field STEM (detector: HAADF)"``; ``""`` when nothing is known."""
        label = {"dark-field": "dark-field STEM", "stem": "STEM", "bright-field": "bright-field"}
        return f"{label[self.kind]} ({self.evidence})" if self.kind else ""


def _normalise_unit(unit: str) -> str:
    """Lower case, NFKC (micro sign -> mu, Ångström sign -> Å), ImageJ ``\\u`` escapes decoded,
    no spaces or underscores (ncempy writes ``n_m``), a plural ``s`` dropped."""
    text = unit.strip()
    if "\\u" in text:
        text = codecs.decode(text, "unicode_escape")
    text = unicodedata.normalize("NFKC", text).lower().replace("_", "").replace(" ", "")
    if len(text) > 3 and text.endswith("s") and text[:-1] in UNIT_ANGSTROM:
        text = text[:-1]
    return text


def parse_unit(unit: object) -> Unit:
    """The kind of a calibration unit and its size in Å (see :class:`Unit`).

    >>> parse_unit("n_m").angstrom, parse_unit("\\u00b5m").angstrom, parse_unit("m").angstrom
    (10.0, 10000.0, 10000000000.0)
    >>> parse_unit("1/nm").kind, parse_unit("mrad").kind, parse_unit("eV").kind
    ('reciprocal', 'angle', 'other')
    """
    if unit is None:
        return Unit("none", None, "")
    if not isinstance(unit, str):
        return Unit("other", None, str(unit))
    text = _normalise_unit(unit)
    if text in NO_UNITS:
        return Unit("none", None, unit)
    if text in UNIT_ANGSTROM:
        return Unit("length", UNIT_ANGSTROM[text], unit)
    if text in ANGLE_UNITS:
        return Unit("angle", None, unit)
    for pattern in (r"1/(.+)", r"(.+)\^-1", r"(.+)-1", r"(.+)⁻¹", r"per(.+)"):
        match = re.fullmatch(pattern, text)
        if match and match.group(1) in UNIT_ANGSTROM:
            return Unit("reciprocal", UNIT_ANGSTROM[match.group(1)], unit)
    return Unit("other", None, unit)


def unit_to_angstrom(unit: object) -> float | None:
    """Å per ``unit`` (``"nm"``, ``"Å"``, ``"µm"``, ``"n_m"``, ImageJ's ``"\\u00C5"``...),
    None if it is not a length."""
    parsed = parse_unit(unit)
    return parsed.angstrom if parsed.kind == "length" else None


def _flatten(tree: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """``(dotted.path, value)`` of every leaf of nested mappings."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, tree


def _metadata_leaves(signal: Mapping) -> list[tuple[str, object]]:
    """Every leaf of a signal's ``metadata`` and ``original_metadata``."""
    return [
        *_flatten(signal.get("metadata") or {}, "metadata"),
        *_flatten(signal.get("original_metadata") or {}, "original_metadata"),
    ]


#: Metadata fields naming the detector that recorded this very image (Velox; DM quick saves).
DETECTOR_FIELDS = ("BinaryResult.Detector", "DetectorMetadata.DetectorName", "Temp-Tags.Detector")
DARK_FIELD = re.compile(
    r"(?<![A-Za-z])(HAADF|MAADF|LAADF|ADF|DF\d?|dark[ -]?field)(?![A-Za-z])", re.I
)
BRIGHT_FIELD = re.compile(r"(?<![A-Za-z])(A?BF|bright[ -]?field)(?![A-Za-z])", re.I)


def _scanning_evidence(leaves: list[tuple[str, object]], *, dwell_time: bool = True) -> str | None:
    """The metadata field that says the image was scanned (STEM), None if none does; a
    positive dwell time counts only with ``dwell_time``."""
    for key, value in leaves:
        text = str(value).strip()
        if key.endswith("Acquisition_instrument.TEM.acquisition_mode") and text == "STEM":
            return f"acquisition mode: {text}"  # HyperSpy
        if key.endswith("Microscope Info.Operation Mode") and text == "SCANNING":
            return f"operation mode: {text}"  # DigitalMicrograph
        if key.endswith("ExperimentalDescription.Mode") and "STEM" in text.split():
            return f"mode: {text}"  # TIA (.emi)
        if dwell_time and re.search(r"dwell ?time", key, re.I) and _positive(value):
            return f"{key.rsplit('.', 1)[-1]}: {text}"  # Berkeley EMD, TIA: a scan's dwell time
    return None


def _positive(value: object) -> bool:
    try:
        return float(value) > 0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def imaging_mode(signal: Mapping) -> Imaging:
    """How a RosettaSciIO signal's image was taken, from its metadata where they say it.

    In order: the detector of this image (:data:`DETECTOR_FIELDS`: Velox's
    ``BinaryResult.Detector``, DigitalMicrograph's ``Temp-Tags.Detector``), the image's
    title (``HAADF Image``), then signs of a scan (HyperSpy's acquisition mode ``STEM``,
    DigitalMicrograph's operation mode ``SCANNING``, TIA's mode ``STEM ...``, a dwell
    time). A dark-field name (HAADF, ADF, DF...) gives ``dark-field``, a bright-field one
    (BF, ABF) ``bright-field``, a scan with neither ``stem``.
    """
    leaves = _metadata_leaves(signal)
    named = [
        (f"detector: {value}", str(value))
        for key, value in leaves
        if key.endswith(DETECTOR_FIELDS) and isinstance(value, str) and value.strip()
    ]
    title = (signal.get("metadata", {}).get("General", {}).get("title") or "").strip()
    if title:
        named.append((f"title: {title!r}", title))
    for evidence, text in named:
        if DARK_FIELD.search(text):
            return Imaging("dark-field", evidence)
        if BRIGHT_FIELD.search(text):
            return Imaging("bright-field", evidence)
    detector_named = len(named) > bool(title)  # e.g. a camera: no guess from a dwell time
    scanned = _scanning_evidence(leaves, dwell_time=not detector_named)
    return Imaging("stem", f"{scanned}; detector not recorded") if scanned else Imaging("", "")


def diffraction_mode(signal: Mapping) -> str | None:
    """Metadata that say the file is a diffraction pattern (not a scan), None otherwise."""
    for key, value in _metadata_leaves(signal):
        text = str(value).strip()
        if key.endswith("Microscope Info.Operation Mode") and text == "DIFFRACTION":
            return f"operation mode: {text}"  # DigitalMicrograph, TEM diffraction
        if key.endswith("Signal.signal_type") and "diffraction" in text.lower():
            return f"signal type: {text}"  # HyperSpy / pyxem
    return None
