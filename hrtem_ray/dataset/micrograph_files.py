"""Microscope files as images: reading one micrograph or mask, and its calibration.

:func:`read_micrograph` reads one 2-D image and its pixel size in Å from every format
that RosettaSciIO reads 2-D images from, each through its own RosettaSciIO plugin
(:data:`IMAGE_PLUGINS`; the extensions are :data:`FORMATS`):

* Gatan DM3/DM4, FEI TIA ``.ser`` (its metadata from the ``.emi`` beside it) and
  ``.emi``, EMD (Velox, Berkeley/NCEM), HyperSpy ``.hspy``/``.zspy``, MRC, and the
  other plugins listed there: the calibration of the image's two axes;
* TIFF: RosettaSciIO's calibration when it names a length unit (vendor tags), else the
  ImageJ description (``unit`` nm, Å, µm, ... with the X resolution tag), else the
  resolution tags with ``ResolutionUnit`` centimetre (an inch unit is taken as
  uncalibrated: image editors write 72 dpi there);
* PNG/JPEG/BMP/... (colour averaged to grey) and NPY: no calibration.

Calibration units are parsed as real files write them
(:func:`hrtem_ray.dataset.micrograph_metadata.parse_unit`, with the imaging mode): SI metres
and their prefixes, ``µm`` with the micro sign or the Greek mu, ``um``, ``micron``,
ncempy's ``n_m``, ``Å`` (both code points), ``A``, ``angstrom``. The file's own
calibration is used; ``pixel_size_angstrom`` is the fallback for files without one (a
:class:`MicrographError` asks for ``--pixel-size-angstrom`` otherwise).

What is refused, before any compute, with a :class:`MicrographError` naming the file and
what it holds: a diffraction pattern (axes in reciprocal length or angle, e.g. ``1/nm``,
or a DigitalMicrograph file taken in diffraction mode), even with
``pixel_size_angstrom``; a file without a 2-D image (an EELS spectrum...); axes in other
units (eV, s). What is warned about (:class:`MicrographWarning`): a dark-field STEM image
(detector or title ``HAADF``/``ADF``/``DF``) and a STEM image whose detector is not
recorded (:func:`imaging_mode`), since the models are trained on phase-contrast
bright-field HRTEM images.

Masks (:func:`read_mask`) follow one stated rule (:func:`mask_fractions`). Resampling and
tiling are :mod:`hrtem_ray.dataset.geometry`; importing micrographs as a domain of a
dataset is :mod:`hrtem_ray.dataset.micrographs`.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import importlib
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrtem_ray.dataset.geometry import resampled_shape, tile_positions
from hrtem_ray.dataset.micrograph_metadata import (
    Imaging,
    Unit,
    diffraction_mode,
    imaging_mode,
    parse_unit,
    unit_to_angstrom,
)
from hrtem_ray.store.digest import sha256_file

__all__ = [
    "BYTES_PER_READ_PIXEL",
    "FORMATS",
    "IMAGE_PLUGINS",
    "MASK_FORMATS",
    "OTHER_PLUGINS",
    "Imaging",
    "Micrograph",
    "MicrographError",
    "MicrographWarning",
    "Unit",
    "check_image_size",
    "check_upsampling",
    "duplicate_messages",
    "imaging_mode",
    "mask_fractions",
    "micrograph_format",
    "parse_unit",
    "read_mask",
    "read_micrograph",
    "source_sha256",
    "unit_to_angstrom",
]

#: RosettaSciIO plugins (``rsciio.IO_PLUGINS`` names) that read 2-D images, in the order
#: they are tried for an extension that several share (``.hdf5``, ``.h5``, ``.mrc``).
IMAGE_PLUGINS: dict[str, str] = {
    "DigitalMicrograph": "Gatan DigitalMicrograph DM3/DM4",
    "TIA": "FEI/Thermo Fisher TIA .ser (metadata from its .emi) and .emi",
    "EMD": "EMD: Velox (Thermo Fisher), Berkeley/NCEM, Direct Electron DE5",
    "HSPY": "HyperSpy HDF5 (.hspy)",
    "ZSPY": "HyperSpy zarr (.zspy, a directory or a zip file)",
    "MRC": "MRC",
    "MRCZ": "compressed MRC (needs the package mrcz)",
    "TIFF": "TIFF (vendor tags, ImageJ or resolution-tag calibration)",
    "Image": "PNG, JPEG, BMP, GIF, ... (no calibration)",
    "numpy": "NumPy .npy (no calibration; no pickles)",
    "NeXus": "NeXus HDF5",
    "USID": "USID HDF5 (needs the package pyUSID)",
    "netCDF": "HyperSpy < 0.8 netCDF",
    "Semper": "Semper .unf",
    "Ripple": "Ripple .rpl with its .raw",
    "PantaRhei": "CEOS Panta Rhei .prz",
    "DigitalSurf": "Digital Surf .sur/.pro",
    "JEOL": "JEOL .img/.map/.pts/.asw",
    "Phenom": "Phenom .elid",
    "Bruker": "Bruker .bcf/.spx",
    "Delmic": "Delmic HDF5",
}

#: RosettaSciIO plugins not used, and why: they hold no single real-space 2-D image.
OTHER_PLUGINS: dict[str, str] = {
    "EDAX": "EDS spectra and spectrum images",
    "MSA": "1-D spectra",
    "Renishaw": "Raman spectra and maps",
    "JobinYvon": "Raman spectra and maps",
    "TriVista": "optical spectra",
    "Quadstar": "mass spectra",
    "Impulse": "in-situ holder logs",
    "Protochips": "in-situ holder logs",
    "DENS": "in-situ heating logs",
    "Tofwerk": "FIB-SIMS mass-spectrometry stacks",
    "Hamamatsu": "streak-camera images (time x wavelength)",
    "QuantumDetector": "4-D STEM diffraction frames",
    "EMPAD": "4-D STEM diffraction frames",
    "Arina": "4-D STEM diffraction frames",
    "Blockfile": "4-D STEM diffraction frames (precession)",
    "Topspin": "4-D STEM diffraction frames (precession)",
    "TVIPS": "diffraction frame series",
}


def _formats() -> dict[str, tuple[str, ...]]:
    """Extension (lower case, with the dot) -> RosettaSciIO reader modules, tried in order."""
    from rsciio import IO_PLUGINS  # its plugin table only (~40 ms), no reader

    by_name = {p["name"]: p for p in IO_PLUGINS}
    out: dict[str, list[str]] = {}
    for name in IMAGE_PLUGINS:
        plugin = by_name[name]
        module = plugin["api"].removeprefix("rsciio.")
        for ext in plugin["file_extensions"]:
            readers = out.setdefault(f".{ext.lower()}", [])
            if module not in readers:
                readers.append(module)
    return {ext: tuple(readers) for ext, readers in sorted(out.items())}


#: File extensions read, each with its RosettaSciIO reader modules (tried in order).
FORMATS: dict[str, tuple[str, ...]] = _formats()

#: Mask files: PNG, TIFF or NPY (see :func:`mask_fractions` for their values).
MASK_FORMATS = (".png", ".tif", ".tiff", ".npy")


#: Bytes per pixel beside the stored ones while a file is read: the float64 copy and the
#: float32 image of :func:`_grey` (12), so reading needs ``pixels x (itemsize + 12)``.
BYTES_PER_READ_PIXEL = 12


class MicrographError(ValueError):
    """A micrograph or mask cannot be read or imported; the message names the file."""


class MicrographWarning(UserWarning):
    """A micrograph is read, but unlike the images the models were trained on."""


@dataclass(frozen=True)
class Micrograph:
    """One image read from a file.

    Attributes
    ----------
    image : ndarray
        float32 ``(H, W)``.
    pixel_size_angstrom : float
        Pixel size in Å.
    source : str
        The file's path.
    sha256 : str
        SHA-256 of the file's bytes (of every file of a directory format, by name).
    calibration : str
        Where the pixel size came from, e.g. ``"file (nm)"`` or ``"--pixel-size-angstrom"``.
    dtype : str
        The image's data type in the file (``"uint16"``...), before conversion to float32.
    imaging : str
        What the metadata say of the imaging (:func:`imaging_mode`), ``""`` if nothing.
    image_sha256 : str
        SHA-256 of the image as read (shape and float32 values): the same image in two
        files (a ``.ser`` and its ``.emi``, a DM4 and its TIFF export) has the same one.
    """

    image: np.ndarray
    pixel_size_angstrom: float
    source: str
    sha256: str
    calibration: str
    dtype: str = ""
    imaging: str = ""
    image_sha256: str = ""

    @property
    def name(self) -> str:
        return Path(self.source).name


def micrograph_format(path: str | Path, allowed: Iterable[str] | None = None) -> tuple[str, ...]:
    """The RosettaSciIO reader modules of a file, from its extension; MicrographError if the
    extension is not read (the message lists those that are)."""
    suffix = Path(path).suffix.lower()
    allowed = tuple(FORMATS) if allowed is None else tuple(allowed)
    if suffix not in allowed:
        raise MicrographError(
            f"{path}: unknown format {suffix or '(no extension)'!r}; supported: "
            f"{', '.join(allowed)}"
        )
    return FORMATS[suffix]


def _grey(array: np.ndarray) -> np.ndarray:
    """A 2-D float32 image; colour (structured RGB or a last axis of 3-4) averaged to grey."""
    array = _channels(array)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].astype(np.float32).mean(axis=-1)
    if array.ndim != 2:
        raise MicrographError(f"not a 2-D image (shape {array.shape})")
    return np.asarray(array, dtype=np.float32)


def _channels(array: np.ndarray) -> np.ndarray:
    """The array squeezed, a structured RGB(A) array as a last axis of channels."""
    if array.dtype.names:
        array = np.stack([array[n] for n in array.dtype.names[:3]], axis=-1)
    return np.squeeze(np.asarray(array))


def _is_2d(signal: Mapping) -> bool:
    """Whether a RosettaSciIO signal's data are one 2-D image (grey or colour)."""
    array = np.asarray(signal["data"])
    squeezed = np.squeeze(array)
    return bool(
        array.dtype.names
        or squeezed.ndim == 2
        or (squeezed.ndim == 3 and array.shape[-1] in (3, 4))
    )


def _image_axes(signal: Mapping) -> list[dict]:
    """The two axes of a 2-D signal that are longer than one pixel (row, then column)."""
    return [a for a in signal.get("axes", []) if int(a.get("size", 2)) > 1][-2:]


def _describe(signal: Mapping) -> str:
    """One signal in words, e.g. ``"EELS data of shape (2048,) (axes in eV)"``."""
    kind = (signal.get("metadata", {}).get("Signal", {}).get("signal_type") or "").strip()
    units = sorted({str(a.get("units") or "") for a in signal.get("axes", [])} - {""})
    where = f" (axes in {', '.join(units)})" if units else ""
    return f"{kind + ' ' if kind else ''}data of shape {np.shape(signal['data'])}{where}"


def _axes_calibration(signal: Mapping) -> tuple[float | None, str]:
    """Pixel size (Å) and unit of a signal's two image axes; None if uncalibrated.

    Raises
    ------
    MicrographError
        The axes are a diffraction pattern's (reciprocal length or angle), in units that
        are not lengths (eV, s), or of non-square pixels.
    """
    axes = _image_axes(signal)
    units = [parse_unit(a.get("units")) for a in axes]
    kinds = {u.kind for u in units}
    shown = " x ".join(u.text for u in units)
    if kinds & {"reciprocal", "angle"}:
        raise MicrographError(
            f"a diffraction pattern (calibrated in {shown}: reciprocal space), not a real-space "
            "image; the models segment HRTEM images, so it is refused"
        )
    if "other" in kinds:
        raise MicrographError(f"not a real-space image: its axes are in {shown}")
    if len(axes) != 2 or kinds != {"length"}:
        mode = diffraction_mode(signal)
        if mode is not None:
            raise MicrographError(
                f"a diffraction pattern ({mode}), not a real-space image; the models segment "
                "HRTEM images, so it is refused"
            )
        return None, ""
    sizes = [float(a["scale"]) * u.angstrom for a, u in zip(axes, units, strict=True)]
    if not all(math.isfinite(s) and s > 0 for s in sizes):
        return None, ""
    if abs(sizes[0] - sizes[1]) > 0.01 * max(sizes):
        raise MicrographError(f"non-square pixels ({sizes[0]:g} x {sizes[1]:g} Å)")
    return float(np.mean(sizes)), str(axes[-1].get("units"))


def _tia_emi(path: Path) -> Path | None:
    """The ``.emi`` of a TIA ``<name>_<n>.ser``, if it lies beside it."""
    stem, _, number = path.stem.rpartition("_")
    if not stem or not number.isdigit():
        return None
    for suffix in (".emi", ".EMI"):
        emi = path.with_name(stem + suffix)
        if emi.is_file():
            return emi
    return None


def _plugin_signals(path: Path, module_name: str) -> list[dict]:
    """The signals one RosettaSciIO plugin reads from ``path``.

    A TIA ``.ser`` with its ``.emi`` beside it is read through the ``.emi`` (which adds the
    microscope's metadata: mode, detector range) when that names the ``.ser``.
    """
    try:
        module = importlib.import_module(f"rsciio.{module_name}")
    except ImportError as exc:  # an optional dependency of the plugin is missing
        raise MicrographError(
            f"RosettaSciIO's {module_name} reader needs the package {exc.name!r}, which is not "
            f"installed (pip install {exc.name})"
        ) from None
    if module_name == "tia" and path.suffix.lower() == ".ser":
        emi = _tia_emi(path)
        if emi is not None:
            signals = module.file_reader(str(emi))
            mine = [
                s for s in signals if s["metadata"]["General"].get("original_filename") == path.name
            ]
            if mine:
                return mine
    return list(module.file_reader(str(path)))


def _read_signals(path: Path, modules: tuple[str, ...]) -> list[dict]:
    """The signals of ``path``, from the first of ``modules`` that reads it."""
    errors = []
    for module_name in modules:
        try:
            return _plugin_signals(path, module_name)
        except MicrographError as exc:
            errors.append(str(exc))
        except Exception as exc:  # a reader's own error: try the next one, then say each
            errors.append(f"{module_name}: {type(exc).__name__}: {exc}")
    raise MicrographError(f"cannot read it ({'; '.join(errors)})")


def _choose_image(signals: list[dict]) -> dict:
    """The signal to use: the first 2-D image in real space (or uncalibrated); else the
    first 2-D one (whose calibration then says why it is refused).

    Raises
    ------
    MicrographError
        No signal of the file is 2-D; the message describes each one.
    """
    images = [s for s in signals if _is_2d(s)]
    for signal in images:
        kinds = {parse_unit(a.get("units")).kind for a in _image_axes(signal)}
        if kinds <= {"length", "none"}:
            return signal
    if images:
        return images[0]
    held = "; ".join(_describe(s) for s in signals) or "no signal"
    raise MicrographError(f"no 2-D image in the file: it holds {held}")


def _tiff_tag_pixel_size(path: Path) -> tuple[float | None, str]:
    """Pixel size (Å) from an ImageJ description or centimetre resolution tags, else None."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tag = page.tags.get("XResolution")
        if tag is None:
            return None, ""
        numerator, denominator = tag.value
        if not numerator or not denominator:
            return None, ""
        per_unit = numerator / denominator  # pixels per unit
        unit = (tif.imagej_metadata or {}).get("unit")
        if unit is not None:
            factor = unit_to_angstrom(unit)
            if factor is None:
                return None, ""
            return factor / per_unit, f"ImageJ {codecs.decode(unit, 'unicode_escape')}"
        res_unit = page.tags.get("ResolutionUnit")
        if res_unit is not None and int(res_unit.value) == 3:  # centimetre
            return 1e8 / per_unit, "resolution tags (cm)"
    return None, ""


@dataclass(frozen=True)
class _Read:
    """What one file holds: the raw array, its pixel size (None if uncalibrated) and where
    it came from, and the imaging its metadata state."""

    data: np.ndarray
    pixel_angstrom: float | None
    calibration: str
    imaging: Imaging


def _read_file(path: Path, modules: tuple[str, ...]) -> _Read:
    """Read ``path`` with its plugins: the image, its calibration and its imaging mode."""
    signal = _choose_image(_read_signals(path, modules))
    data = np.asarray(signal["data"])
    pixel, unit = _axes_calibration(signal)
    if pixel is not None:
        return _Read(data, pixel, f"file ({unit})", imaging_mode(signal))
    if "tiff" in modules:
        pixel, how = _tiff_tag_pixel_size(path)
        if pixel is not None:
            return _Read(data, pixel, f"file ({how})", imaging_mode(signal))
    return _Read(data, None, "", imaging_mode(signal))


def source_sha256(path: Path) -> str:
    """SHA-256 of a micrograph source: of a file's bytes; of a directory format (a ``.zspy``
    store, HyperSpy's default layout), of each file's relative name and SHA-256, in sorted
    order. A file is hashed once per process while its size and modification time stay
    the same (an import hashes its inputs for its claim, then reads them)."""
    if path.is_file():
        stat = path.stat()
        return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(path).as_posix()}\0{source_sha256(item)}\n".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1024)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file's bytes (cached by path, size and modification time)."""
    with open(path, "rb") as stream:
        return sha256_file(stream)


def _image_sha256(image: np.ndarray) -> str:
    """SHA-256 of an image's shape and float32 values."""
    digest = hashlib.sha256(repr(image.shape).encode())
    digest.update(np.ascontiguousarray(image, np.float32).tobytes())
    return digest.hexdigest()


def _imaging_warning(path: Path, imaging: Imaging) -> str | None:
    """The warning for an image unlike the training images, None for HRTEM-like ones."""
    if imaging.kind == "dark-field":
        return (
            f"{path}: a dark-field STEM image ({imaging.evidence}): particles are bright on a "
            "dark background, unlike the phase-contrast bright-field HRTEM images the models "
            "were trained on; do not trust its segmentation"
        )
    if imaging.kind == "stem":
        return (
            f"{path}: a STEM image ({imaging.evidence}); if it is dark-field (ADF/HAADF), its "
            "contrast is unlike the phase-contrast bright-field HRTEM images the models were "
            "trained on"
        )
    return None


def _header_shape(path: Path, reader: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype a TIFF (first series) or NPY header declares; None for other
    formats or a header that cannot be parsed (the reader then says why)."""
    try:
        if reader == "numpy":
            with path.open("rb") as stream:
                version = np.lib.format.read_magic(stream)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }[version]
                shape, _, dtype = read_header(stream)
            return tuple(shape), np.dtype(dtype)
        if reader == "tiff":
            import logging

            import tifffile

            quiet = logging.getLogger("tifffile")  # a damaged header is the reader's to report
            level = quiet.level
            quiet.setLevel(logging.ERROR)
            try:
                with tifffile.TiffFile(path) as tif:
                    series = tif.series[0]
                    return tuple(series.shape), np.dtype(series.dtype)
            finally:
                quiet.setLevel(level)
    except Exception:
        return None
    return None


def check_image_size(path: str | Path, memory_bytes: int | None = None) -> None:
    """Refuse a file whose header declares an image this machine cannot hold, before reading it.

    The shape and dtype of a TIFF (tifffile's first series) or NPY (its header) are read
    without the data, and ``pixels x (itemsize + BYTES_PER_READ_PIXEL)`` is compared with
    ``memory_bytes`` (default: the memory available now,
    :func:`hrtem_ray.spec.footprint.available_memory_bytes`). Other formats are not
    checked here.

    Raises
    ------
    MicrographError
        Naming the file, the declared shape and dtype, the bytes needed and available.
    """
    path = Path(path)
    declared = _header_shape(path, FORMATS.get(path.suffix.lower(), ("",))[0])
    if declared is None:
        return
    shape, dtype = declared
    pixels = math.prod(shape)
    needed = pixels * (dtype.itemsize + BYTES_PER_READ_PIXEL)
    if memory_bytes is None:
        from hrtem_ray.spec.footprint import available_memory_bytes

        memory_bytes = available_memory_bytes()
    if needed > memory_bytes:
        from hrtem_ray.spec.footprint import format_bytes

        size = " x ".join(str(n) for n in shape)
        raise MicrographError(
            f"{path}: its header declares {size} px of {dtype} ({pixels:,} pixels); reading "
            f"it needs about {format_bytes(needed)}, more than the {format_bytes(memory_bytes)} "
            "of memory available; crop or bin the image first"
        )


def read_micrograph(path: str | Path, pixel_size_angstrom: float | None = None) -> Micrograph:
    """Read one micrograph and its pixel size.

    Parameters
    ----------
    path
        A file (a ``.zspy`` may be a directory) of a format in :data:`FORMATS`.
    pixel_size_angstrom
        Pixel size for a file without calibration (the file's own calibration wins).

    Warns
    -----
    MicrographWarning
        A dark-field STEM image, or a STEM image whose detector is not recorded
        (:func:`imaging_mode`).

    Raises
    ------
    MicrographError
        Unknown format, unreadable file, no 2-D image, a diffraction pattern (even with
        ``pixel_size_angstrom``), axes in non-length units, non-finite values, or no
        calibration and no ``pixel_size_angstrom`` (the message says to pass
        ``--pixel-size-angstrom``).
    """
    path = Path(path)
    modules = micrograph_format(path)
    if not path.exists():
        raise MicrographError(f"{path}: no such file")
    check_image_size(path)
    try:
        read = _read_file(path, modules)
        image = _grey(read.data)
    except MicrographError as exc:
        raise MicrographError(f"{path}: {exc}") from None
    except Exception as exc:  # a reader's own error: name the file
        raise MicrographError(f"{path}: cannot read it as {modules[0]} ({exc})") from None
    pixel, how = read.pixel_angstrom, read.calibration
    if pixel is None:
        if pixel_size_angstrom is None:
            raise MicrographError(
                f"{path}: the file has no pixel size calibration; pass --pixel-size-angstrom "
                "(pixel_size_angstrom=) with its pixel size in Å"
            )
        if not (pixel_size_angstrom > 0 and math.isfinite(pixel_size_angstrom)):
            raise MicrographError(f"pixel_size_angstrom must be > 0, got {pixel_size_angstrom}")
        pixel, how = float(pixel_size_angstrom), "--pixel-size-angstrom"
    if not np.isfinite(image).all():
        raise MicrographError(f"{path}: the image has NaN or infinite values")
    message = _imaging_warning(path, read.imaging)
    if message is not None:
        warnings.warn(message, MicrographWarning, stacklevel=2)
    return Micrograph(
        image,
        float(pixel),
        str(path),
        source_sha256(path),
        how,
        dtype=str(_channels(read.data).dtype),
        imaging=read.imaging.describe(),
        image_sha256=_image_sha256(image),
    )


def check_upsampling(
    micrograph: Micrograph,
    target_angstrom: float,
    max_factor: float,
    *,
    tile_px: int,
    overlap_px: int = 0,
) -> float:
    """The resampling factor of a micrograph (its pixel size over ``target_angstrom``: above 1
    it is upsampled), refused above ``max_factor``.

    A 112 px image at 12.5 Å/px brought to 0.4 Å/px is upsampled 31x into 3,500 px: tiles
    of blur that hold no detail the file does not have.

    Raises
    ------
    MicrographError
        ``max_factor`` is not a number >= 1, or the factor exceeds it; the message gives the
        factor, the sizes, the tiles it would make and the ``--max-upsampling`` to pass.
    """
    if not (math.isfinite(max_factor) and max_factor >= 1):
        raise MicrographError(f"--max-upsampling must be a number >= 1, got {max_factor}")
    factor = micrograph.pixel_size_angstrom / target_angstrom
    if factor <= max_factor:
        return factor
    shape = resampled_shape(micrograph.image.shape, micrograph.pixel_size_angstrom, target_angstrom)
    try:
        tiles = f"{len(tile_positions(shape, tile_px, overlap_px)):,} tiles of {tile_px} px"
    except ValueError:  # smaller than a tile, or a bad overlap (refused later)
        tiles = "no whole tile"
    height, width = micrograph.image.shape
    raise MicrographError(
        f"{micrograph.source}: {height} x {width} px at {micrograph.pixel_size_angstrom:g} Å/px "
        f"would be upsampled {factor:.1f}x to {shape[0]} x {shape[1]} px at {target_angstrom:g} "
        f"Å/px ({tiles}), above the limit of {max_factor:g}x: the tiles would hold no detail "
        f"the file does not have; pass --max-upsampling {math.ceil(factor * 10) / 10:g} "
        "(max_upsampling=) to import it anyway"
    )


def duplicate_messages(
    micrographs: Iterable[Micrograph],
    earlier: Mapping[str, Iterable[tuple[str, str]]],
    domain: str,
) -> list[str]:
    """Warnings for micrographs imported before or twice: train/evaluation leakage.

    Parameters
    ----------
    micrographs
        The files of one import.
    earlier
        SHA-256 (of a file, or of its image) -> ``(domain, file name)`` of earlier imports
        (:func:`hrtem_ray.dataset.micrographs.imported_sources`).
    domain
        The domain being imported.

    Returns
    -------
    list of str
        One message per file whose bytes or image were imported before (naming each
        domain and file that holds it), and per file that repeats an earlier one of this
        import.
    """
    messages, seen = [], {}
    for micrograph in micrographs:
        keys = [k for k in (micrograph.sha256, micrograph.image_sha256) if k]
        before = sorted({tuple(w) for k in keys for w in earlier.get(k, [])})
        if before:
            where = "; ".join(f"{name} in domain {held!r}" for held, name in before)
            messages.append(
                f"{micrograph.source}: the same file was imported before as {where}: "
                f"training on one of these domains and evaluating on the other ({domain!r}) "
                "leaks the evaluation data"
            )
        twin = next((seen[k] for k in keys if k in seen), None)
        if twin is not None:
            messages.append(
                f"{micrograph.source}: the same image as {twin} in this import; its tiles may "
                "land in both train and val"
            )
        for key in keys:
            seen.setdefault(key, micrograph.source)
    return messages


def mask_fractions(values: np.ndarray, source: str | Path = "mask") -> np.ndarray:
    """A mask's values as particle fractions in [0, 1], by one stated rule.

    * every value in [0, 1]: fractions as they are (binary 0/1, or soft);
    * else whole numbers in [0, 255] whose largest is 255: divided by 255 (binary 0/255,
      or 8-bit soft);
    * anything else is refused: a label map (all 7s, or labels 1, 2, 3...), a 16-bit
      0/65535 mask, negative or non-finite values. Convert such a mask first (e.g.
      ``255 * (labels > 0)``).

    Raises
    ------
    MicrographError
        Naming ``source``, the values found (the first few distinct ones) and the rule.
    """
    values = np.asarray(values, np.float64)
    if values.size and np.isfinite(values).all():
        low, high = float(values.min()), float(values.max())
        if low >= 0 and high <= 1:
            return values.astype(np.float32)
        if low >= 0 and high == 255 and np.array_equal(values, np.round(values)):
            return (values / 255).astype(np.float32)
    distinct = np.unique(values)
    shown = ", ".join(f"{v:g}" for v in distinct[:6])
    more = f" and {len(distinct) - 6} more" if len(distinct) > 6 else ""
    raise MicrographError(
        f"mask {source}: values {shown}{more} are not a mask; allowed: fractions in [0, 1] "
        "(0/1 or soft) or whole numbers 0-255 with 255 for particle (0/255 or 8-bit soft); "
        "convert a label map first (e.g. 255 * (labels > 0))"
    )


def read_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A mask (float32 fractions in [0, 1]) of an image of ``shape``, by
    :func:`mask_fractions`' rule.

    Raises
    ------
    MicrographError
        Unknown format, unreadable, a colour image (its channels differ), values outside
        the rule, or the mask's shape is not ``shape``.
    """
    path = Path(path)
    modules = micrograph_format(path, MASK_FORMATS)
    check_image_size(path)
    try:
        data = _channels(_read_file(path, modules).data)
    except Exception as exc:
        raise MicrographError(f"{path}: cannot read the mask ({exc})") from None
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        colours = data[..., :3]
        if not (colours == colours[..., :1]).all():
            found = np.unique(colours.reshape(-1, 3), axis=0)
            raise MicrographError(
                f"mask {path} is a colour image ({len(found)} colours, e.g. RGB "
                f"{tuple(int(c) for c in found[-1])}); a mask is grey: 0/1 or 0/255 per pixel"
            )
        data = colours[..., 0]
    mask = _grey(data)
    if mask.shape != tuple(shape):
        raise MicrographError(
            f"mask {path} has shape {mask.shape}, its image {tuple(shape)}; a mask must "
            "match its image pixel for pixel"
        )
    return mask_fractions(mask, path)
