"""Imported domains: microscope files as tiles in a simulated dataset's root.

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


Files are read by :mod:`hrtem_ray.dataset.micrograph_files` and resampled and tiled by
:mod:`hrtem_ray.dataset.geometry`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from hrtem_ray.dataset.geometry import cut_tiles, resample, tile_positions
from hrtem_ray.dataset.manifest import (
    ROW_COLUMNS,
    ShardTask,
    dataset_spec,
    manifest_entries,
    write_shard,
)
from hrtem_ray.dataset.micrograph_files import (
    MASK_FORMATS,
    Micrograph,
    MicrographError,
    micrograph_format,
    read_mask,
    read_micrograph,
)
from hrtem_ray.dataset.readers import read_images, summarize
from hrtem_ray.spec.dataset import DatasetSpec
from hrtem_ray.spec.names import safe_name_problem
from hrtem_ray.spec.study import StudySpec
from hrtem_ray.spec.types import SPLITS, output_gpts
from hrtem_ray.store import storage

__all__ = [
    "ImportSummary",
    "ImportedDomain",
    "assign_splits",
    "check_imported_use",
    "check_spec_imports",
    "export_micrographs",
    "import_micrographs",
    "imported_domains",
    "provenance",
]

IMPORTED_LATTICE = "imported"


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
    has_masks: bool = True

    def describe(self, dataset_root: str | Path) -> str:
        """The summary line of ``hrtem-ray import``: files, tiles per split, the test files.

        Examples
        --------
        >>> ImportSummary("exp", {"train": 8, "val": 4, "test": 4},
        ...     {"a.png": "train", "b.png": "val", "c.png": "test"}, 3, 1.5, 128).describe("d")
        'domain exp in d: 3 files, 8 train + 4 val + 4 test tiles of 128 px at 1.5 A/px, with masks; test split (held out whole): c.png'
        """
        masks = "with masks" if self.has_masks else "without masks (predict only)"
        test = sorted(name for name, split in self.files.items() if split == "test")
        held_out = (
            f"; test split (held out whole): {', '.join(test)}"
            if test
            else "; no test split (models are scored on val)"
        )
        return (
            f"domain {self.domain} in {dataset_root}: {len(self.files)} files, "
            f"{self.tiles.get('train', 0)} train + {self.tiles.get('val', 0)} val + "
            f"{self.tiles.get('test', 0)} test tiles of {self.tile_px} px at "
            f"{self.pixel_size_angstrom:g} A/px, {masks}{held_out}"
        )


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
    splits: Sequence[str] = SPLITS,
) -> list[Path]:
    """Write a simulated domain's images as calibrated micrographs, to try ``hrtem-ray import``.

    Each image (of ``splits``: train, val, then test when the dataset has one) is
    resampled to ``pixel_size_angstrom``
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
    stored = summarize(dataset_root).get(domain, {})
    for split in (s for s in SPLITS if s in splits):
        if split == "test" and not stored.get("test"):
            continue  # no held-out images in this domain
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
    for n_source, n_target in spec.mixture_counts():
        needs["pretrain"] = max(needs["pretrain"], n_source)
        needs["transfer"] = max(needs["transfer"], n_target)
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


def assign_splits(
    names: Sequence[str],
    val_fraction: float,
    *,
    test_fraction: float = 0.0,
    test_files: Sequence[str] | None = None,
) -> dict[str, str]:
    """Split of each file: whole files, never tiles of one file, so no overlap leaks.

    The test split (held out: no tile of a test file is trained on or selects a model)
    holds the files named in ``test_files``, or else the last ``round(n * test_fraction)``
    names in sorted order (at least one when ``test_fraction > 0`` and three or more files).
    Of the other files, the last ``round(m * val_fraction)`` in sorted order (at least one
    when there are two or more) are ``val``, the rest ``train``; a single file is ``train``.

    Parameters
    ----------
    names
        File names (distinct).
    val_fraction
        Share of the non-test files in ``val``, in [0, 1).
    test_fraction
        Share of all files held out as ``test``, in [0, 1); ignored with ``test_files``.
    test_files
        File names for the test split (each must be one of ``names``).

    Raises
    ------
    MicrographError
        A fraction outside [0, 1), a test file that is not imported, or a split that
        leaves no training file.

    Examples
    --------
    >>> assign_splits(["a", "b", "c", "d", "e"], 0.25, test_fraction=0.2)
    {'a': 'train', 'b': 'train', 'c': 'train', 'd': 'val', 'e': 'test'}
    >>> assign_splits(["a", "b", "c"], 0.0, test_files=["a"])
    {'a': 'test', 'b': 'train', 'c': 'train'}
    """
    for label, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= value < 1:
            raise MicrographError(f"{label}: {value} is outside [0, 1)")
    ordered = sorted(names)
    if test_files is not None:
        unknown = sorted(set(test_files) - set(ordered))
        if unknown:
            raise MicrographError(
                f"--test-files: {unknown} are not among the imported files "
                f"({', '.join(ordered)}); give file names (no folders)"
            )
        test = set(test_files)
    else:
        n_test = round(len(ordered) * test_fraction)
        if test_fraction > 0 and len(ordered) >= 3:
            n_test = max(1, n_test)
        test = set(ordered[len(ordered) - n_test :]) if n_test else set()
    rest = [n for n in ordered if n not in test]
    if not rest:
        raise MicrographError(
            f"--test-files / --test-fraction: every one of the {len(ordered)} files would be "
            "held out; leave at least one file for training"
        )
    n_val = 0 if len(rest) < 2 else min(len(rest) - 1, max(1, round(len(rest) * val_fraction)))
    if val_fraction == 0:
        n_val = 0
    splits = {n: ("val" if i >= len(rest) - n_val else "train") for i, n in enumerate(rest)}
    return {n: ("test" if n in test else splits[n]) for n in ordered}


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
    test_fraction: float = 0.0,
    test_files: Sequence[str] | None = None,
) -> ImportSummary:
    """Import micrographs (and optional masks) as an imported domain of a dataset root.

    Every file is read, calibrated, resampled to the dataset's
    ``simulation.output_sampling_angstrom`` (:func:`resample`) and tiled to the dataset's
    image size before anything is written; then each file's tiles become one shard
    (files, then its manifest entry, each atomically). Whole files go to ``train``,
    ``val`` or ``test`` (:func:`assign_splits`); the summary and each shard's manifest
    entry record the split of every file.

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
        Fraction of the (non-test) files in the ``val`` split.
    test_fraction, test_files
        Whole files held out as the ``test`` split (:func:`assign_splits`): the names in
        ``test_files``, or a fraction of the files. A study scores its models on an
        imported domain's test tiles when it has any (``eval_split``).

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
    splits = assign_splits(
        [f.name for f in files], val_fraction, test_fraction=test_fraction, test_files=test_files
    )
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
    tiles: dict[str, int] = {"train": 0, "val": 0}  # and "test" when files are held out
    for index, (path, micrograph, image, mask, positions) in enumerate(prepared):
        split = splits[path.name]
        key = f"{tag}-imported_{domain}-{split}-{index:05d}-{index + 1:05d}"
        table = _tile_table(
            spec, schema, domain, split, micrograph, image, mask, positions, tile_px
        )
        _write_imported_shard(
            root, spec, key, split, index, domain, table, micrograph, positions, mask
        )
        tiles[split] = tiles.get(split, 0) + table.num_rows
    return ImportSummary(
        domain,
        tiles,
        {f.name: splits[f.name] for f in files},
        len(prepared),
        target,
        tile_px,
        mask_paths is not None,
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
            "split": split,
            **provenance(micrograph, positions),
        },
    }
    write_shard(root, spec.axis, task, table, entry)
