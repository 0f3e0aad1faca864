"""Microscope files as images: reading one micrograph or mask, and its calibration.

:func:`read_micrograph` reads one 2-D image and its pixel size in Å from

* DM3/DM4, EMD (Velox and Berkeley/NCEM), MRC: RosettaSciIO, the file's axes calibration;
* TIFF: RosettaSciIO's calibration when it names a length unit (vendor tags), else the
  ImageJ description (``unit`` nm, Å, µm, ... with the X resolution tag), else the
  resolution tags with ``ResolutionUnit`` centimetre (an inch unit is taken as
  uncalibrated: image editors write 72 dpi there);
* PNG/JPEG (RosettaSciIO's image reader, colour averaged to grey) and NPY: no calibration.

The file's own calibration is used; ``pixel_size_angstrom`` is the fallback for files
without one (a :class:`MicrographError` asks for ``--pixel-size-angstrom`` otherwise).

Resampling and tiling are :mod:`hrtem_ray.dataset.geometry`; importing micrographs as a
domain of a dataset is :mod:`hrtem_ray.dataset.micrographs`.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrtem_ray.store.digest import sha256_file

__all__ = [
    "BYTES_PER_READ_PIXEL",
    "FORMATS",
    "MASK_FORMATS",
    "Micrograph",
    "MicrographError",
    "check_image_size",
    "micrograph_format",
    "read_mask",
    "read_micrograph",
    "unit_to_angstrom",
]

#: File extensions read, by reader.
FORMATS: dict[str, str] = {
    ".dm3": "digitalmicrograph",
    ".dm4": "digitalmicrograph",
    ".emd": "emd",
    ".mrc": "mrc",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".npy": "numpy",
}


#: Mask files: PNG, TIFF or NPY, binary or 0-255.
MASK_FORMATS = (".png", ".tif", ".tiff", ".npy")


#: Length units of calibrations, in Å (keys lower case).
UNIT_ANGSTROM: dict[str, float] = {
    "m": 1e10,
    "cm": 1e8,
    "mm": 1e7,
    "µm": 1e4,
    "μm": 1e4,
    "um": 1e4,
    "micron": 1e4,
    "microns": 1e4,
    "nm": 10.0,
    "å": 1.0,
    "a": 1.0,
    "angstrom": 1.0,
    "angstroms": 1.0,
    "ångström": 1.0,
    "pm": 0.01,
}


#: Bytes per pixel beside the stored ones while a file is read: the float64 copy and the
#: float32 image of :func:`_grey` (12), so reading needs ``pixels x (itemsize + 12)``.
BYTES_PER_READ_PIXEL = 12


class MicrographError(ValueError):
    """A micrograph or mask cannot be read or imported; the message names the file."""


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
        SHA-256 of the file's bytes.
    calibration : str
        Where the pixel size came from, e.g. ``"file (nm)"`` or ``"--pixel-size-angstrom"``.
    """

    image: np.ndarray
    pixel_size_angstrom: float
    source: str
    sha256: str
    calibration: str

    @property
    def name(self) -> str:
        return Path(self.source).name


def micrograph_format(path: str | Path, allowed: Iterable[str] | None = None) -> str:
    """The reader of a file, from its extension; MicrographError if it is not supported."""
    suffix = Path(path).suffix.lower()
    allowed = tuple(FORMATS) if allowed is None else tuple(allowed)
    if suffix not in allowed:
        raise MicrographError(
            f"{path}: unknown format {suffix or '(no extension)'!r}; supported: "
            f"{', '.join(allowed)}"
        )
    return FORMATS[suffix]


def unit_to_angstrom(unit: object) -> float | None:
    """Å per ``unit`` (``"nm"``, ``"Å"``, ``"µm"``, ImageJ's ``"\\u00C5"``...), None if not a length."""
    if not isinstance(unit, str):
        return None
    text = unit.strip()
    if "\\u" in text:
        text = codecs.decode(text, "unicode_escape")
    return UNIT_ANGSTROM.get(text.lower())


def _grey(array: np.ndarray) -> np.ndarray:
    """A 2-D float32 image; colour (structured RGB or a last axis of 3-4) averaged to grey."""
    if array.dtype.names:
        array = np.stack([array[n] for n in array.dtype.names[:3]], axis=-1)
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].astype(np.float32).mean(axis=-1)
    array = np.squeeze(array)
    if array.ndim != 2:
        raise MicrographError(f"not a 2-D image (shape {array.shape})")
    return np.asarray(array, dtype=np.float32)


def _rsciio_signal(path: Path, reader: str) -> dict:
    """The first 2-D image signal RosettaSciIO reads from ``path``."""
    import importlib

    module = importlib.import_module(f"rsciio.{reader}")
    signals = module.file_reader(str(path))
    for signal in signals:
        array = np.asarray(signal["data"])
        squeezed = np.squeeze(array)
        if (
            array.dtype.names
            or squeezed.ndim == 2
            or (squeezed.ndim == 3 and array.shape[-1] in (3, 4))
        ):
            return signal
    shapes = [np.shape(s["data"]) for s in signals]
    raise MicrographError(f"{path}: no 2-D image in the file (signals of shapes {shapes})")


def _axes_pixel_size(signal: dict) -> tuple[float | None, str]:
    """Pixel size (Å) and unit of a RosettaSciIO signal's two image axes, None if uncalibrated."""
    axes = [a for a in signal.get("axes", []) if a.get("size", 2) > 1][-2:]
    if len(axes) != 2:
        return None, ""
    factors = [unit_to_angstrom(a.get("units")) for a in axes]
    if any(f is None for f in factors):
        return None, ""
    sizes = [float(a["scale"]) * f for a, f in zip(axes, factors, strict=True)]
    if not all(math.isfinite(s) and s > 0 for s in sizes):
        return None, ""
    if abs(sizes[0] - sizes[1]) > 0.01 * max(sizes):
        raise MicrographError(f"non-square pixels ({sizes[0]:g} x {sizes[1]:g} Å)")
    return float(np.mean(sizes)), str(axes[-1].get("units"))


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


def _read_array(path: Path, reader: str) -> tuple[np.ndarray, float | None, str]:
    """Image, pixel size in Å (None if the file has none) and where it came from."""
    if reader == "numpy":
        return _grey(np.load(path, allow_pickle=False)), None, ""
    signal = _rsciio_signal(path, reader)
    image = _grey(signal["data"])
    if reader == "image":
        return image, None, ""
    pixel, unit = _axes_pixel_size(signal)
    if pixel is not None:
        return image, pixel, f"file ({unit})"
    if reader == "tiff":
        pixel, how = _tiff_tag_pixel_size(path)
        if pixel is not None:
            return image, pixel, f"file ({how})"
    return image, None, ""


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
    declared = _header_shape(path, FORMATS.get(path.suffix.lower(), ""))
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
        A file of a format in :data:`FORMATS`.
    pixel_size_angstrom
        Pixel size for a file without calibration (the file's own calibration wins).

    Raises
    ------
    MicrographError
        Unknown format, unreadable file, not a 2-D image, non-finite values, or no
        calibration and no ``pixel_size_angstrom`` (the message says to pass
        ``--pixel-size-angstrom``).
    """
    path = Path(path)
    reader = micrograph_format(path)
    if not path.is_file():
        raise MicrographError(f"{path}: no such file")
    check_image_size(path)
    try:
        image, pixel, how = _read_array(path, reader)
    except MicrographError as exc:
        raise MicrographError(f"{path}: {exc}") from None
    except Exception as exc:  # a reader's own error: name the file
        raise MicrographError(f"{path}: cannot read it as {reader} ({exc})") from None
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
    with path.open("rb") as stream:
        sha256 = sha256_file(stream)
    return Micrograph(image, float(pixel), str(path), sha256, how)


def read_mask(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A mask (float32 in [0, 1]) of an image of ``shape``: 0/1 as is, 0-255 divided by 255.

    Raises
    ------
    MicrographError
        Unknown format, or the mask's shape is not ``shape``.
    """
    path = Path(path)
    reader = micrograph_format(path, MASK_FORMATS)
    check_image_size(path)
    try:
        mask, _, _ = _read_array(path, reader)
    except Exception as exc:
        raise MicrographError(f"{path}: cannot read the mask ({exc})") from None
    if mask.shape != tuple(shape):
        raise MicrographError(
            f"mask {path} has shape {mask.shape}, its image {tuple(shape)}; a mask must "
            "match its image pixel for pixel"
        )
    scale = 255.0 if float(np.nanmax(mask, initial=0)) > 1 else 1.0
    return np.clip(mask / scale, 0.0, 1.0).astype(np.float32)
