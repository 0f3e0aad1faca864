"""Microscope files as images: reading, calibration, resampling, tiling, imported domains.

Reading
-------
:func:`read_micrograph` reads one 2-D image and its pixel size in Å from

* DM3/DM4, EMD (Velox and Berkeley/NCEM), MRC: RosettaSciIO, the file's axes calibration;
* TIFF: RosettaSciIO's calibration when it names a length unit (vendor tags), else the
  ImageJ description (``unit`` nm, Å, µm, ... with the X resolution tag), else the
  resolution tags with ``ResolutionUnit`` centimetre (an inch unit is taken as
  uncalibrated: image editors write 72 dpi there);
* PNG/JPEG (RosettaSciIO's image reader, colour averaged to grey) and NPY: no calibration.

The file's own calibration is used; ``pixel_size_angstrom`` is the fallback for files
without one (a :class:`MicrographError` asks for ``--pixel-size-angstrom`` otherwise).

Resampling
----------
:func:`resample` maps an image onto a grid of another pixel size covering the same field
of view (``round(side * from / to)`` pixels, pixel centres aligned) by band-limited
(Fourier) resampling of the image's mirror-symmetric extension: its DCT-II coefficients
are cropped (downsampling: an ideal low-pass at the new Nyquist frequency, so nothing
aliases) or zero-padded (upsampling), then inverted at the new size. Mirroring instead of
wrapping keeps the edges free of wrap-around ringing; lattice fringes below the new
Nyquist frequency keep their amplitude (a Gaussian anti-aliasing filter would damp them),
and upsampling then downsampling returns the original exactly.
Masks and probability maps are resampled linearly (order 1, no overshoot) and kept as
fractions in [0, 1] (soft labels at particle edges, as simulated masks are).

Imported domains
----------------
:func:`import_micrographs` tiles the resampled images to the dataset's image size and
stores the tiles as shards of an *imported domain* in a simulated dataset's root, in the
same layout as simulated shards (``study=<axis>/domain=<name>/split=<split>/<key>.parquet``),
with the same manifest entries (rows, bytes, sha256, written last) so that
:func:`hrtem_ray.dataset.readers.read_images` reads them and
:func:`hrtem_ray.dataset.manifest.verify_shards` checks them. One shard is one file. A row has exactly the columns of a simulated row
(so that tables of both concatenate): metadata that do not apply are NaN or null,
``lattice`` is ``"imported"``, ``structure_id`` is ``<file name>/y<row>x<col>`` (the
tile's top-left pixel on the resampled grid). The tile's provenance (:func:`provenance`:
``source_file``, ``source_sha256``, ``source_pixel_size_angstrom``, ``calibration`` and
the tile positions) is in the shard's Parquet schema metadata ``hrtem_ray.imported`` and
in its manifest entry's ``imported`` record (with the domain and whether it has masks).
Without masks the ``mask`` column is NaN: such a domain can be predicted on, never trained or evaluated on.
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from hrtem_ray.dataset.manifest import (
    ROW_COLUMNS,
    ShardTask,
    dataset_spec,
    manifest_entries,
    write_shard,
)
from hrtem_ray.dataset.readers import read_images
from hrtem_ray.spec.dataset import DatasetSpec
from hrtem_ray.spec.names import safe_name_problem
from hrtem_ray.spec.study import StudySpec
from hrtem_ray.spec.types import SPLITS, output_gpts
from hrtem_ray.store import storage
from hrtem_ray.store.digest import sha256_file

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
IMPORTED_LATTICE = "imported"


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


# --- resampling and tiling ---------------------------------------------------------------


def resampled_shape(shape: Sequence[int], from_angstrom: float, to_angstrom: float) -> tuple:
    """Shape of the same field of view at another pixel size (at least 1 px per side)."""
    return tuple(max(1, int(round(s * from_angstrom / to_angstrom))) for s in shape)


def resample(
    image: np.ndarray,
    from_angstrom: float,
    to_angstrom: float,
    *,
    shape: Sequence[int] | None = None,
    mask: bool = False,
) -> np.ndarray:
    """``image`` on a grid of pixel size ``to_angstrom`` (see the module docstring).

    Parameters
    ----------
    image
        ``(H, W)`` array at ``from_angstrom`` per pixel.
    from_angstrom, to_angstrom
        Pixel sizes in Å.
    shape
        Output shape; default :func:`resampled_shape` (the same field of view).
    mask
        Linear interpolation (for masks and probability maps: no overshoot); masks are
        *not* thresholded here.
    """
    shape = (
        tuple(shape)
        if shape is not None
        else resampled_shape(image.shape, from_angstrom, to_angstrom)
    )
    if shape == image.shape:
        return np.asarray(image, np.float32)
    if mask:
        from skimage.transform import resize

        out = resize(np.asarray(image, np.float64), shape, order=1, mode="edge")
        return out.astype(np.float32)
    return _dct_resample(np.asarray(image, np.float64), shape).astype(np.float32)


def _dct_resample(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Band-limited resampling of a 2-D image to ``shape`` (DCT-II crop or zero-pad)."""
    from scipy.fft import dctn, idctn

    coefficients = dctn(image, type=2, norm="ortho")
    out = np.zeros(shape, np.float64)
    keep = tuple(min(a, b) for a, b in zip(image.shape, shape, strict=True))
    out[: keep[0], : keep[1]] = coefficients[: keep[0], : keep[1]]
    # orthonormal DCT: scale so that a constant image keeps its value
    out *= math.sqrt(shape[0] * shape[1] / (image.shape[0] * image.shape[1]))
    return idctn(out, type=2, norm="ortho")


def tile_starts(length: int, tile_px: int, overlap_px: int = 0) -> list[int]:
    """Start offsets of tiles of ``tile_px`` covering ``[0, length)``, overlapping by at least
    ``overlap_px``; the last tile ends at ``length`` (it may overlap more).

    Raises
    ------
    ValueError
        ``length < tile_px``, or ``overlap_px`` not in ``[0, tile_px)``.
    """
    if not 0 <= overlap_px < tile_px:
        raise ValueError(f"overlap must be in [0, {tile_px}) px, got {overlap_px}")
    if length < tile_px:
        raise ValueError(f"a side of {length} px is smaller than one tile ({tile_px} px)")
    stride = tile_px - overlap_px
    starts = list(range(0, length - tile_px + 1, stride))
    if starts[-1] != length - tile_px:
        starts.append(length - tile_px)
    return starts


def tile_positions(shape: Sequence[int], tile_px: int, overlap_px: int = 0) -> list[tuple]:
    """``(y, x)`` top-left corners of the tiles of an image, row by row."""
    return [
        (y, x)
        for y in tile_starts(shape[0], tile_px, overlap_px)
        for x in tile_starts(shape[1], tile_px, overlap_px)
    ]


def cut_tiles(image: np.ndarray, positions: Sequence[tuple], tile_px: int) -> np.ndarray:
    """The tiles ``(N, tile_px, tile_px)`` of ``image`` at ``positions``."""
    return np.stack([image[y : y + tile_px, x : x + tile_px] for y, x in positions])


# --- imported domains --------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedDomain:
    """An imported domain of a dataset root (from its manifest entries)."""

    name: str
    has_masks: bool
    images: dict[str, int] = field(default_factory=dict)  # split -> tiles
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_micrographs` wrote."""

    domain: str
    tiles: dict[str, int]
    files: dict[str, str]  # file name -> split
    shards: int
    pixel_size_angstrom: float
    tile_px: int


def imported_domains(dataset_root: str | Path) -> dict[str, ImportedDomain]:
    """The imported domains of a dataset root, by name (empty when there are none)."""
    found: dict[str, dict] = {}
    for entry in manifest_entries(dataset_root).values():
        record = entry.get("imported")
        if not isinstance(record, dict):
            continue
        item = found.setdefault(
            record["domain"], {"has_masks": bool(record["has_masks"]), "images": {}, "sources": []}
        )
        split = entry["task"]["split"]
        for info in entry["files"].values():
            item["images"][split] = item["images"].get(split, 0) + int(info["rows"])
        item["sources"].extend(record.get("sources", []))
    return {
        name: ImportedDomain(name, v["has_masks"], v["images"], tuple(sorted(v["sources"])))
        for name, v in found.items()
    }


def check_imported_use(
    dataset_root: str | Path, names: Iterable[str], role: str, *, needs_masks: bool = True
) -> dict[str, ImportedDomain]:
    """Check that imported domains exist in a dataset root (with masks, if needed).

    Raises
    ------
    MicrographError
        A name is not an imported domain of the root, or one without masks is used
        for training or evaluation (``role`` names the spec field).
    """
    domains = imported_domains(dataset_root)
    for name in names:
        if name not in domains:
            known = ", ".join(sorted(domains)) or "none"
            raise MicrographError(
                f"{role}: {name!r} is not an imported domain of {dataset_root} (imported: "
                f"{known}); run `hrtem-ray import FILES --data {dataset_root} --domain {name}`"
            )
        if needs_masks and not domains[name].has_masks:
            raise MicrographError(
                f"{role}: imported domain {name!r} has no masks, so it cannot be used for "
                "training or evaluation (only `hrtem-ray predict` on its files); import it "
                "again with --masks"
            )
    return domains


def export_micrographs(
    dataset_root: str | Path,
    domain: str,
    out_dir: str | Path,
    *,
    pixel_size_angstrom: float,
    n: int | None = None,
) -> list[Path]:
    """Write a simulated domain's images as calibrated micrographs, to try ``hrtem-ray import``.

    Each image (train, then val) is resampled to ``pixel_size_angstrom``
    (:func:`resample`) and written as ``<out_dir>/<domain>_<split>_<k>.tif`` (float32,
    ImageJ calibration in nm), its mask as ``<out_dir>/masks/<same stem>.png`` (0-255).

    Returns
    -------
    list of Path
        The micrographs written, in order (the masks sort the same way).

    Raises
    ------
    MicrographError
        ``domain`` is not a safe name (:mod:`hrtem_ray.spec.names`); nothing is written.
    """
    import tifffile
    from PIL import Image

    _check_domain_name(domain, "domain")
    spec = dataset_spec(dataset_root)
    source = spec.simulation.output_sampling_angstrom
    out = Path(out_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    size_nm = pixel_size_angstrom / 10
    written = []
    for split in SPLITS:
        selection = read_images(dataset_root, domain, split, n)
        for k, (image, mask) in enumerate(zip(selection.images, selection.masks, strict=True)):
            stem = f"{domain}_{split}_{k:03d}"
            fine = resample(image, source, pixel_size_angstrom)
            fine_mask = resample(mask, source, pixel_size_angstrom, shape=fine.shape, mask=True)
            path = out / f"{stem}.tif"
            tifffile.imwrite(
                path,
                fine,
                imagej=True,
                resolution=(1 / size_nm, 1 / size_nm),
                metadata={"unit": "nm"},
            )
            levels = np.round(np.clip(fine_mask, 0, 1) * 255).astype(np.uint8)
            Image.fromarray(levels).save(out / "masks" / f"{stem}.png")
            written.append(path)
    return written


def check_spec_imports(spec: StudySpec, dataset_root: str | Path) -> None:
    """Check a study's imported domains (``domains.imported``) against its dataset directory.

    Each must be an imported domain of ``dataset_root``; one that a role (pretrain,
    transfer, eval) names must have masks, validation tiles, at least ``training.n_val``
    of them, and the training tiles its grids ask for (``pretrain.n_images``,
    ``transfer.n_images``, ``baseline.mixtures``). Call it before a sweep starts.

    Raises
    ------
    MicrographError
        Naming the spec field, the domain and what is missing.
    """
    if not spec.domains.imported:
        return
    roles = {r: spec.domains_for(r) for r in ("pretrain", "transfer", "eval")}
    used = [d for d in spec.domains.imported if any(d in names for names in roles.values())]
    check_imported_use(
        dataset_root, set(spec.domains.imported) - set(used), "domains.imported", needs_masks=False
    )
    found = check_imported_use(dataset_root, used, "domains", needs_masks=True)
    needs = {
        "pretrain": max(spec.pretrain.n_images) if spec.pretrain else 0,
        "transfer": max(spec.transfer.n_images) if spec.transfer else 0,
    }
    if spec.baseline is not None:
        needs["pretrain"] = max(needs["pretrain"], *(m[0] for m in spec.baseline.mixtures))
        needs["transfer"] = max(needs["transfer"], *(m[1] for m in spec.baseline.mixtures))
    for name in used:
        counts = found[name].images
        n_val = spec.training.n_val or 1
        if counts.get("val", 0) < n_val:
            raise MicrographError(
                f"domains: imported domain {name!r} has {counts.get('val', 0)} validation tiles, "
                f"{n_val} needed (training.n_val); import more files (a quarter go to val)"
            )
        for role, field_name in (
            ("pretrain", "pretrain.n_images"),
            ("transfer", "transfer.n_images"),
        ):
            if name in roles[role] and counts.get("train", 0) < needs[role]:
                raise MicrographError(
                    f"{field_name}: imported domain {name!r} has {counts.get('train', 0)} "
                    f"training tiles, {needs[role]} needed"
                )


def assign_splits(names: Sequence[str], val_fraction: float) -> dict[str, str]:
    """Split of each file (whole files, never tiles of one file, so no overlap leaks):
    the last ``round(n * val_fraction)`` names in sorted order (at least one when there are
    two or more files) are ``val``, the rest ``train``; a single file is ``train``."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(names)
    n_val = (
        0 if len(ordered) < 2 else min(len(ordered) - 1, max(1, round(len(ordered) * val_fraction)))
    )
    if val_fraction == 0:
        n_val = 0
    return {n: ("val" if i >= len(ordered) - n_val else "train") for i, n in enumerate(ordered)}


def _check_domain_name(domain: object, field: str) -> None:
    """Raise :class:`MicrographError` unless ``domain`` is a safe name (it becomes file names)."""
    problem = safe_name_problem(domain)
    if problem is not None:
        raise MicrographError(f"{field}: {problem}")


def _check_import_inputs(
    files: Sequence[Path], masks: Sequence[Path] | None, domain: str, spec: DatasetSpec, root: str
) -> None:
    """The checks that need no file content (names, formats, the domain)."""
    if domain in spec.domains:
        raise MicrographError(
            f"--domain: {domain!r} is a simulated domain of the dataset ({', '.join(spec.domains)})"
        )
    if domain in imported_domains(root):
        raise MicrographError(
            f"--domain: {root} already holds an imported domain {domain!r}; choose another name"
        )
    if not files:
        raise MicrographError("no files to import")
    for group, label in ((files, "files"), (masks or [], "masks")):
        seen: dict[str, Path] = {}
        for path in group:
            if path.name in seen:
                raise MicrographError(
                    f"two {label} have the same name {path.name!r} ({seen[path.name]} and {path}); "
                    "rename one (a tile records its source by file name)"
                )
            seen[path.name] = path
    for path in files:
        micrograph_format(path)
    if masks is not None:
        if len(masks) != len(files):
            raise MicrographError(
                f"{len(masks)} masks for {len(files)} files; give one mask per file, in order"
            )
        for path in masks:
            micrograph_format(path, MASK_FORMATS)


def provenance(micrograph: Micrograph, positions: Sequence[tuple]) -> dict:
    """What an imported shard records of its source file: name, sha256, calibration, tiles."""
    return {
        "source_file": micrograph.name,
        "source_sha256": micrograph.sha256,
        "source_pixel_size_angstrom": micrograph.pixel_size_angstrom,
        "calibration": micrograph.calibration,
        "tiles_y_x_px": [[int(y), int(x)] for y, x in positions],
    }


def _row_schema(root: str) -> pa.Schema | None:
    """The schema of the dataset's simulated shard files (None before any is written)."""
    import pyarrow.parquet as pq

    for entry in manifest_entries(root).values():
        if "imported" not in entry:
            info = next(iter(entry["files"].values()))
            loc = storage.resolve(storage.join(root, info["path"]))
            return pq.read_schema(loc.path, filesystem=loc.fs).remove_metadata()
    return None


def _tile_table(
    spec: DatasetSpec,
    schema: pa.Schema | None,
    domain: str,
    split: str,
    micrograph: Micrograph,
    image: np.ndarray,
    mask: np.ndarray | None,
    positions: list[tuple],
    tile_px: int,
) -> pa.Table:
    """The rows of one file's tiles, with exactly the columns of a simulated row.

    Columns that do not apply to a micrograph (defocus, dose, ...) are NaN or null,
    ``lattice`` is ``"imported"``, ``n_particles`` -1 and ``structure_id``
    ``<file name>/y<row>x<col>`` (the tile's top-left pixel on the resampled grid); the
    Parquet schema metadata ``hrtem_ray.imported`` holds :func:`provenance`. Without a mask
    the ``mask`` column is NaN.
    """
    n = len(positions)
    images = cut_tiles(image, positions, tile_px)
    masks = (
        cut_tiles(mask, positions, tile_px) if mask is not None else np.full_like(images, np.nan)
    )
    known = {
        "study": [spec.axis] * n,
        "domain": [domain] * n,
        "split": [split] * n,
        "structure_id": [f"{micrograph.name}/y{y:05d}x{x:05d}" for y, x in positions],
        "structure_seed": [0] * n,
        "lattice": [IMPORTED_LATTICE] * n,
        "n_particles": [-1] * n,
        "pixel_size_angstrom": [spec.simulation.output_sampling_angstrom] * n,
    }
    if schema is None:  # no simulated shard yet: the row columns, unknown ones float
        kinds = {"structure_seed": pa.int64(), "n_particles": pa.int64()}
        strings = ("study", "domain", "split", "structure_id", "lattice")
        fields = [
            pa.field(c, pa.string() if c in strings else kinds.get(c, pa.float64()))
            for c in ROW_COLUMNS
        ]
    else:
        fields = [f for f in schema if f.name not in ("image", "mask")]
    columns = {}
    for f in fields:
        if f.name in known:
            columns[f.name] = pa.array(known[f.name], f.type)
        elif pa.types.is_floating(f.type):
            columns[f.name] = pa.array([float("nan")] * n, f.type)
        else:
            columns[f.name] = pa.nulls(n, f.type)
    table = pa.table(columns)
    table = table.append_column("image", pa.FixedShapeTensorArray.from_numpy_ndarray(images))
    table = table.append_column("mask", pa.FixedShapeTensorArray.from_numpy_ndarray(masks))
    record = json.dumps(provenance(micrograph, positions), sort_keys=True)
    return table.replace_schema_metadata({"hrtem_ray.imported": record})


def import_micrographs(
    files: Sequence[str | Path],
    dataset_root: str | Path,
    domain: str,
    *,
    masks: Sequence[str | Path] | None = None,
    pixel_size_angstrom: float | None = None,
    overlap_px: int = 0,
    val_fraction: float = 0.25,
) -> ImportSummary:
    """Import micrographs (and optional masks) as an imported domain of a dataset root.

    Every file is read, calibrated, resampled to the dataset's
    ``simulation.output_sampling_angstrom`` (:func:`resample`) and tiled to the dataset's
    image size before anything is written; then each file's tiles become one shard
    (files, then its manifest entry, each atomically). Whole files go to ``train`` or
    ``val`` (:func:`assign_splits`).

    Parameters
    ----------
    files
        Micrographs (:data:`FORMATS`), with distinct file names.
    dataset_root
        A simulated dataset's root (``dataset.json``): its image size and pixel size.
    domain
        Name of the new domain (a safe name, not a simulated domain, not imported yet).
    masks
        One mask per file, in the same order (:data:`MASK_FORMATS`), or None.
    pixel_size_angstrom
        Pixel size of files without calibration.
    overlap_px
        Overlap of neighbouring tiles, in pixels of the resampled image.
    val_fraction
        Fraction of the files in the ``val`` split.

    Raises
    ------
    MicrographError
        An unknown format, a mask whose shape differs from its image, two files with the
        same name, a missing calibration, an image smaller than one tile, a bad domain
        name; nothing is written.
    hrtem_ray.dataset.manifest.DatasetError
        No dataset at ``dataset_root``.
    """
    _check_domain_name(domain, "--domain")
    root = str(dataset_root)
    spec = dataset_spec(root)
    files = [Path(f) for f in files]
    mask_paths = None if masks is None else [Path(m) for m in masks]
    _check_import_inputs(files, mask_paths, domain, spec, root)
    if not 0 <= overlap_px:
        raise MicrographError(f"overlap_px must be >= 0, got {overlap_px}")
    target = spec.simulation.output_sampling_angstrom
    tile_px = output_gpts(spec.structures.cell_angstrom, spec.simulation)
    splits = assign_splits([f.name for f in files], val_fraction)
    prepared = []
    for k, path in enumerate(files):
        micrograph = read_micrograph(path, pixel_size_angstrom)
        mask = None if mask_paths is None else read_mask(mask_paths[k], micrograph.image.shape)
        image = resample(micrograph.image, micrograph.pixel_size_angstrom, target)
        if mask is not None:
            mask = resample(
                mask, micrograph.pixel_size_angstrom, target, shape=image.shape, mask=True
            )
            mask = np.clip(mask, 0.0, 1.0)
        try:
            positions = tile_positions(image.shape, tile_px, overlap_px)
        except ValueError as exc:
            raise MicrographError(
                f"{path}: resampled to {target:g} Å/px it is {image.shape[0]} x {image.shape[1]} "
                f"px: {exc}"
            ) from None
        prepared.append((path, micrograph, image, mask, positions))
    tag = spec.content_hash()[:8]
    schema = _row_schema(root)
    tiles: dict[str, int] = {s: 0 for s in SPLITS}
    for index, (path, micrograph, image, mask, positions) in enumerate(prepared):
        split = splits[path.name]
        key = f"{tag}-imported_{domain}-{split}-{index:05d}-{index + 1:05d}"
        table = _tile_table(
            spec, schema, domain, split, micrograph, image, mask, positions, tile_px
        )
        _write_imported_shard(
            root, spec, key, split, index, domain, table, micrograph, positions, mask
        )
        tiles[split] += table.num_rows
    return ImportSummary(
        domain, tiles, {f.name: splits[f.name] for f in files}, len(prepared), target, tile_px
    )


def _write_imported_shard(
    root: str,
    spec: DatasetSpec,
    key: str,
    split: str,
    index: int,
    domain: str,
    table: pa.Table,
    micrograph: Micrograph,
    positions: list[tuple],
    mask: np.ndarray | None,
) -> None:
    """One file's shard: the Parquet file, then its manifest entry (:func:`write_shard`)."""
    task = ShardTask(key, f"imported:{domain}", split, index, index + 1, domain)
    entry = {
        "dataset_hash": spec.content_hash(),
        "task": {
            "key": key,
            "group": task.group,
            "split": split,
            "start": index,
            "stop": index + 1,
        },
        "imported": {
            "domain": domain,
            "has_masks": mask is not None,
            "sources": [micrograph.name],
            **provenance(micrograph, positions),
        },
    }
    write_shard(root, spec.axis, task, table, entry)


__all__ = [
    "FORMATS",
    "ImportSummary",
    "ImportedDomain",
    "Micrograph",
    "MicrographError",
    "assign_splits",
    "check_imported_use",
    "check_spec_imports",
    "cut_tiles",
    "export_micrographs",
    "import_micrographs",
    "imported_domains",
    "read_mask",
    "read_micrograph",
    "resample",
    "resampled_shape",
    "tile_positions",
    "tile_starts",
]
