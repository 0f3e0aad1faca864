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


An import holds the dataset's lock (:mod:`hrtem_ray.store.lock`, the one ``simulate``
takes), claims the domain before its first shard and writes the domain record last
(:mod:`hrtem_ray.dataset.imported`): two imports into one domain cannot mix their files, a
``simulate`` cannot run meanwhile, an interrupted import is resumed by the same command,
and readers use only complete domains.

Files are read by :mod:`hrtem_ray.dataset.micrograph_files` and resampled and tiled by
:mod:`hrtem_ray.dataset.geometry`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hrtem_ray.dataset import imported
from hrtem_ray.dataset.geometry import cut_tiles, resample, resample_labelled, tile_positions
from hrtem_ray.dataset.imported import assign_splits
from hrtem_ray.dataset.manifest import (
    ROW_COLUMNS,
    DatasetWarning,
    ShardTask,
    dataset_spec,
    file_problems,
    manifest_entries,
    manifest_path,
    write_shard,
)
from hrtem_ray.dataset.micrograph_files import (
    MASK_FORMATS,
    Micrograph,
    MicrographError,
    MicrographWarning,
    check_image_size,
    check_upsampling,
    duplicate_messages,
    micrograph_format,
    read_mask,
    read_micrograph,
    source_sha256,
)
from hrtem_ray.dataset.readers import read_images, summarize
from hrtem_ray.spec.dataset import DatasetSpec
from hrtem_ray.spec.names import safe_name_problem
from hrtem_ray.spec.study import StudySpec
from hrtem_ray.spec.types import SPLITS
from hrtem_ray.store import storage
from hrtem_ray.store.lock import study_lock

__all__ = [
    "ImportSummary",
    "ImportedDomain",
    "check_imported_use",
    "check_spec_imports",
    "export_micrographs",
    "import_micrographs",
    "import_progress",
    "imported_domains",
    "imported_sources",
    "provenance",
]

IMPORTED_LATTICE = "imported"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportedDomain:
    """An imported domain of a dataset root (from its manifest entries)."""

    name: str
    has_masks: bool
    images: dict[str, int] = field(default_factory=dict)  # split -> tiles
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_micrographs` wrote.

    ``status`` is ``"imported"`` (a new domain), ``"resumed"`` (an interrupted import of
    the same inputs completed), ``"repaired"`` (damaged shards of a complete domain written
    again) or ``"unchanged"`` (the domain was complete: nothing written); ``written`` counts
    the shards this call wrote.
    """

    domain: str
    tiles: dict[str, int]
    files: dict[str, str]  # file name -> split
    shards: int
    pixel_size_angstrom: float
    tile_px: int
    written: int = 0
    status: str = "imported"
    #: file name -> resampling factor (its pixel size over the dataset's; > 1: upsampled)
    resampling_factors: dict[str, float] = field(default_factory=dict)
    has_masks: bool = True

    def factors_text(self) -> str:
        """The resampling factor(s) for the summary line, e.g. ``"1.33x"`` or ``"0.75x-1.5x"``."""
        values = sorted(self.resampling_factors.values())
        if not values:
            return "1x"
        low, high = f"{values[0]:.3g}x", f"{values[-1]:.3g}x"
        return low if low == high else f"{low}-{high}"

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
        resampled = f" (resampled {self.factors_text()})" if self.resampling_factors else ""
        return (
            f"domain {self.domain} in {dataset_root}: {len(self.files)} files, "
            f"{self.tiles.get('train', 0)} train + {self.tiles.get('val', 0)} val + "
            f"{self.tiles.get('test', 0)} test tiles of {self.tile_px} px at "
            f"{self.pixel_size_angstrom:g} A/px{resampled}, {masks}{held_out}"
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


def imported_sources(dataset_root: str | Path) -> dict[str, list[tuple[str, str]]]:
    """The files imported into a dataset root: SHA-256 (of the file, and of its image where
    recorded) -> ``(domain, file name)`` of each import, from the manifest entries."""
    found: dict[str, list[tuple[str, str]]] = {}
    for entry in manifest_entries(dataset_root).values():
        record = entry.get("imported")
        if not isinstance(record, dict):
            continue
        where = (str(record.get("domain")), str(record.get("source_file")))
        for key in ("source_sha256", "source_image_sha256"):
            if record.get(key) and where not in found.get(record[key], []):
                found.setdefault(record[key], []).append(where)
    return found


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
            unusable = _unusable_domains(str(dataset_root))
            if name in unusable:
                raise MicrographError(f"{role}: {unusable[name]}")
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


def _unusable_domains(root: str) -> dict[str, str]:
    """Imported domains of a root that readers refuse (interrupted, another grid), and why."""
    grid = imported.tile_grid(dataset_spec(root))
    return {name: why for name, (_, why) in imported.domain_problems(root, grid).items()}


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
    ImageJ calibration in nm), its mask as ``<out_dir>/masks/<same stem>.tif`` (float32
    fractions in [0, 1]: simulated masks are soft and peak below 1, which an 8-bit PNG
    could not carry under :func:`hrtem_ray.dataset.micrograph_files.mask_fractions`' rule).

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
            tifffile.imwrite(out / "masks" / f"{stem}.tif", np.clip(fine_mask, 0, 1))
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


def _check_domain_name(domain: object, field: str) -> None:
    """Raise :class:`MicrographError` unless ``domain`` is a safe name (it becomes file names)."""
    problem = safe_name_problem(domain)
    if problem is not None:
        raise MicrographError(f"{field}: {problem}")


def _check_import_inputs(
    files: Sequence[Path], masks: Sequence[Path] | None, domain: str, spec: DatasetSpec
) -> None:
    """The checks that need no file content (names, formats, the domain)."""
    if domain in spec.domains:
        raise MicrographError(
            f"--domain: {domain!r} is a simulated domain of the dataset ({', '.join(spec.domains)})"
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
        if path.is_file():  # a header declaring more pixels than memory holds: refused here,
            check_image_size(path)  # before the dataset's lock is taken
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
        "source_image_sha256": micrograph.image_sha256,
        "source_pixel_size_angstrom": micrograph.pixel_size_angstrom,
        "source_dtype": micrograph.dtype,
        "calibration": micrograph.calibration,
        "imaging": micrograph.imaging,
        "tiles_y_x_px": [[int(y), int(x)] for y, x in positions],
    }


def _row_schema(root: str) -> pa.Schema | None:
    """The schema of the dataset's simulated shard files (None before any is written)."""
    import pyarrow.parquet as pq

    with warnings.catch_warnings():  # entries readers ignore (this domain's, if resumed)
        warnings.simplefilter("ignore", DatasetWarning)
        entries = manifest_entries(root)
    for entry in entries.values():
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
    max_upsampling: float = 4.0,
) -> ImportSummary:
    """Import micrographs (and optional masks) as an imported domain of a dataset root.

    Under the dataset's lock (:func:`hrtem_ray.store.lock.study_lock`, as ``simulate``):
    every file is read, calibrated, resampled to the dataset's
    ``simulation.output_sampling_angstrom`` (:func:`resample`) and tiled to the dataset's
    image size before anything is written; then the domain is claimed
    (:func:`hrtem_ray.dataset.imported.create_claim`), each file's tiles become one shard
    (files, then its manifest entry, each atomically) and the domain record is written
    last. Whole files go to ``train``, ``val`` or ``test`` (:func:`assign_splits`); the
    summary and each shard's manifest entry record the split of every file.

    The same call again resumes an interrupted import (shards already written and intact
    are kept), rewrites damaged shards of a complete domain, and otherwise changes nothing
    (``status`` ``"unchanged"``).

    Parameters
    ----------
    files
        Micrographs (:data:`FORMATS`), with distinct file names.
    dataset_root
        A simulated dataset's root (``dataset.json``): its image size and pixel size.
    domain
        Name of the domain (a safe name, not a simulated domain).
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
    max_upsampling
        Largest resampling factor allowed (a file's pixel size over the dataset's);
        :func:`check_upsampling`.

    Warns
    -----
    MicrographWarning
        A dark-field or STEM image (:func:`read_micrograph`); a file already imported
        into another domain, or twice in this import (:func:`duplicate_messages`).

    Raises
    ------
    MicrographError
        An unknown format, a missing file, a mask whose shape differs from its image or
        whose values are not a mask, two files with the same name, a missing calibration, a
        diffraction pattern, an upsampling factor above ``max_upsampling``, an image smaller
        than one tile, a bad domain name, or a domain that holds (or an unfinished import
        began) another import's files or options; nothing is written, and every file is
        read and checked before any is resampled.
    hrtem_ray.store.lock.LockHeldError
        Another process (``simulate``, another import) holds the dataset's lock.
    hrtem_ray.dataset.manifest.DatasetError
        No dataset at ``dataset_root``.
    """
    _check_domain_name(domain, "--domain")
    root = str(dataset_root)
    spec = dataset_spec(root)
    paths = [Path(f) for f in files]
    mask_paths = None if masks is None else [Path(m) for m in masks]
    _check_import_inputs(paths, mask_paths, domain, spec)
    if not 0 <= overlap_px:
        raise MicrographError(f"overlap_px must be >= 0, got {overlap_px}")
    options = {
        "pixel_size_angstrom": pixel_size_angstrom,
        "overlap_px": int(overlap_px),
        "val_fraction": float(val_fraction),
    }
    # recorded only when set, so that domains imported before the test split compare equal
    if test_files is not None:
        options["test_files"] = sorted(str(f) for f in test_files)
    elif test_fraction:
        options["test_fraction"] = float(test_fraction)
    assign_splits(  # refuses bad fractions and unknown test files before anything is written
        [p.name for p in paths], val_fraction, test_fraction=test_fraction, test_files=test_files
    )
    storage.check_writable_root(root)
    with study_lock(root, f"hrtem-ray import --domain {domain}"):
        return _import_locked(paths, mask_paths, root, domain, options, max_upsampling)


def import_progress(dataset_root: str | Path, domain: str) -> tuple[int, int]:
    """``(files imported, files claimed)`` of an imported domain; ``(0, 0)`` if unclaimed."""
    root = str(dataset_root)
    keys = imported.read_domain(root, domain).planned_keys
    return sum(storage.exists(manifest_path(root, k)) for k in keys), len(keys)


def _file_inputs(paths: Sequence[Path]) -> list[dict[str, str]]:
    """Name and sha256 of each file, in order (what a claim records of them); a directory
    format (a ``.zspy`` store) by :func:`source_sha256`, as its shards record it."""
    out = []
    for path in paths:
        if not path.exists():
            raise MicrographError(f"{path}: no such file")
        out.append({"name": path.name, "sha256": source_sha256(path)})
    return out


def _new_claim(
    domain: str,
    paths: Sequence[Path],
    mask_paths: Sequence[Path] | None,
    options: Mapping[str, Any],
    grid: Mapping[str, Any],
) -> dict[str, Any]:
    """The claim this import writes: its inputs, the tile grid and the planned shards."""
    splits = assign_splits(
        [p.name for p in paths],
        options["val_fraction"],
        test_fraction=options.get("test_fraction", 0.0),
        test_files=options.get("test_files"),
    )
    inputs = {
        "files": _file_inputs(paths),
        "masks": None if mask_paths is None else _file_inputs(mask_paths),
        **options,
    }
    shards = [
        {
            "key": imported.shard_key(domain, splits[p.name], k),
            "source_file": p.name,
            "split": splits[p.name],
        }
        for k, p in enumerate(paths)
    ]
    return {
        "domain": domain,
        "inputs": inputs,
        "grid": dict(grid),
        "shards": shards,
        "claimed_at": imported.utc_now(),
        "claimed_by": f"host {socket.gethostname()}, pid {os.getpid()}",
    }


def _refuse_other_inputs(root: str, state: imported.DomainState, claim: Mapping) -> None:
    """Raise unless the domain is unclaimed, or claimed by an import of the same inputs."""
    name = state.name
    if state.problem is not None:
        raise MicrographError(
            f"--domain: {state.problem}; move the domain away with `hrtem-ray check --repair` "
            "(on the study whose dataset this is), or choose another name"
        )
    stored = state.record or state.claim
    if stored is None:
        return
    diffs = "; ".join(imported.input_differences(stored, claim))
    if not diffs:
        return
    if state.record is not None:
        raise MicrographError(
            f"--domain: {root} already holds an imported domain {name!r} (completed "
            f"{stored.get('completed_at')}) of other inputs ({diffs}); choose another name"
        )
    raise MicrographError(
        f"--domain: imported domain {name!r} of {root} was claimed by an import that did not "
        f"finish ({stored.get('claimed_by')}, {stored.get('claimed_at')}), of other inputs "
        f"({diffs}); rerun that import to complete it, choose another name, or move the "
        "incomplete domain away with `hrtem-ray check --repair` (on the study whose dataset "
        "this is)"
    )


def _prepare(
    paths: Sequence[Path],
    mask_paths: Sequence[Path] | None,
    options: Mapping[str, Any],
    grid: Mapping[str, Any],
    max_upsampling: float,
    root: str,
    domain: str,
) -> tuple[list[tuple[Micrograph, np.ndarray, np.ndarray | None, list[tuple]]], dict[str, float]]:
    """Every file read, calibrated, resampled to the grid's pixel size and tiled, and each
    file's resampling factor.

    Every file and mask is read and checked (calibration, upsampling factor, mask values)
    before any is resampled; a file already imported into another domain, or twice in
    this import, is warned about (:func:`duplicate_messages`).
    """
    target, tile_px = float(grid["pixel_size_angstrom"]), int(grid["tile_px"])
    overlap_px = int(options["overlap_px"])
    micrographs = [read_micrograph(path, options["pixel_size_angstrom"]) for path in paths]
    factors = {
        m.name: check_upsampling(m, target, max_upsampling, tile_px=tile_px, overlap_px=overlap_px)
        for m in micrographs
    }
    for message in duplicate_messages(micrographs, imported_sources(root), domain):
        warnings.warn(message, MicrographWarning, stacklevel=3)
    masks_read = [
        None if mask_paths is None else read_mask(mask_paths[k], m.image.shape)
        for k, m in enumerate(micrographs)
    ]
    prepared = []
    for path, micrograph, mask in zip(paths, micrographs, masks_read, strict=True):
        image, mask = resample_labelled(
            micrograph.image, mask, micrograph.pixel_size_angstrom, target
        )
        try:
            positions = tile_positions(image.shape, tile_px, options["overlap_px"])
        except ValueError as exc:
            raise MicrographError(
                f"{path}: resampled to {target:g} Å/px it is {image.shape[0]} x {image.shape[1]} "
                f"px: {exc}"
            ) from None
        prepared.append((micrograph, image, mask, positions))
    return prepared, factors


def _import_locked(
    paths: Sequence[Path],
    mask_paths: Sequence[Path] | None,
    root: str,
    domain: str,
    options: Mapping[str, Any],
    max_upsampling: float,
) -> ImportSummary:
    """:func:`import_micrographs` once the dataset's lock is held."""
    spec = dataset_spec(root)  # as it is now that no simulate can change it
    _check_import_inputs(paths, mask_paths, domain, spec)
    grid = imported.tile_grid(spec)
    claim = _new_claim(domain, paths, mask_paths, options, grid)
    state = imported.read_domain(root, domain)
    _refuse_other_inputs(root, state, claim)
    if state.claim is not None:  # the same import, resumed: its claim stands
        claim = {
            **claim,
            **{k: state.claim[k] for k in ("claimed_at", "claimed_by") if k in state.claim},
        }
    if state.complete and _shards_intact(root, state.record):
        return _summary(state.record, written=0, status="unchanged")
    prepared, factors = _prepare(paths, mask_paths, options, grid, max_upsampling, root, domain)
    if state.claim is None and not imported.create_claim(root, claim):
        state = imported.read_domain(root, domain)  # claimed in between (a lock taken over)
        _refuse_other_inputs(root, state, claim)
    schema = _row_schema(root)
    written = 0
    for index, (micrograph, image, mask, positions) in enumerate(prepared):
        shard = claim["shards"][index]
        if _shard_intact(root, shard["key"], domain, micrograph.sha256):
            continue
        table = _tile_table(
            spec,
            schema,
            domain,
            shard["split"],
            micrograph,
            image,
            mask,
            positions,
            int(grid["tile_px"]),
        )
        task = ShardTask(
            shard["key"], f"imported:{domain}", shard["split"], index, index + 1, domain
        )
        _write_imported_shard(
            root, spec, task, table, micrograph, positions, mask is not None, grid
        )
        written += 1
        log.info(
            f"imported {micrograph.name} ({index + 1} of {len(prepared)}): {table.num_rows} "
            f"{shard['split']} tiles"
        )
    record = _domain_record(root, spec, claim, prepared, mask_paths is not None)
    imported.write_record(root, record)
    status = "repaired" if state.record else "resumed" if state.claim else "imported"
    return _summary(record, written=written, status=status, factors=factors)


def _summary(
    record: Mapping[str, Any],
    *,
    written: int,
    status: str,
    factors: Mapping[str, float] | None = None,
) -> ImportSummary:
    """An :class:`ImportSummary` of a domain record (``factors``: of the files read now)."""
    grid = record["grid"]
    return ImportSummary(
        str(record["domain"]),
        {s: int(n) for s, n in record["tiles"].items()},
        {str(s["source_file"]): str(s["split"]) for s in record["shards"]},
        len(record["shards"]),
        float(grid["pixel_size_angstrom"]),
        int(grid["tile_px"]),
        written,
        status,
        dict(factors or {}),
        bool(record.get("has_masks", True)),
    )


def _read_entry(root: str, key: str) -> dict | None:
    """A manifest entry, or None when it is missing or unreadable."""
    try:
        entry = storage.read_json(manifest_path(root, key))
    except (FileNotFoundError, ValueError, UnicodeDecodeError, OSError):
        return None
    return entry if isinstance(entry, dict) else None


def _entry_intact(root: str, key: str, entry: Mapping) -> bool:
    """Whether a manifest entry's files are there with its size and sha256."""
    try:
        return not file_problems(root, {key: entry})
    except (KeyError, TypeError, AttributeError):
        return False  # an entry without the fields: written again


def _shard_intact(root: str, key: str, domain: str, source_sha256: str) -> bool:
    """Whether a shard of this domain, from this source file, is complete and undamaged."""
    entry = _read_entry(root, key)
    if entry is None or not isinstance(entry.get("imported"), dict):
        return False
    record = entry["imported"]
    if record.get("domain") != domain or record.get("source_sha256") != source_sha256:
        return False
    return _entry_intact(root, key, entry)


def _shards_intact(root: str, record: Mapping[str, Any]) -> bool:
    """Whether every shard a domain record lists is there, as the record says."""
    for shard in record["shards"]:
        entry = _read_entry(root, shard["key"])
        info = (entry or {}).get("files", {}).get(record["domain"])
        if not isinstance(info, dict) or any(
            info.get(n) != shard.get(n) for n in ("path", "bytes", "sha256")
        ):
            return False
        if not _entry_intact(root, shard["key"], entry):
            return False
    return True


def _domain_record(
    root: str,
    spec: DatasetSpec,
    claim: Mapping[str, Any],
    prepared: Sequence[tuple],
    has_masks: bool,
) -> dict[str, Any]:
    """The domain record: the claim's inputs and grid, and each shard as written."""
    shards, tiles = [], {"train": 0, "val": 0}  # and "test" when files are held out
    for planned, (micrograph, _, _, _) in zip(claim["shards"], prepared, strict=True):
        entry = _read_entry(root, planned["key"]) or {}
        info = entry["files"][claim["domain"]]
        shards.append(
            {
                **planned,
                "source_sha256": micrograph.sha256,
                "tiles": int(info["rows"]),
                "path": info["path"],
                "bytes": int(info["bytes"]),
                "sha256": info["sha256"],
            }
        )
        tiles[planned["split"]] = tiles.get(planned["split"], 0) + int(info["rows"])
    return {
        "domain": claim["domain"],
        "axis": spec.axis,
        "has_masks": has_masks,
        "inputs": claim["inputs"],
        "grid": claim["grid"],
        "shards": shards,
        "tiles": tiles,
        "claimed_at": claim["claimed_at"],
        "completed_at": imported.utc_now(),
    }


def _write_imported_shard(
    root: str,
    spec: DatasetSpec,
    task: ShardTask,
    table: pa.Table,
    micrograph: Micrograph,
    positions: list[tuple],
    has_masks: bool,
    grid: Mapping[str, Any],
) -> None:
    """One file's shard: the Parquet file, then its manifest entry (:func:`write_shard`)."""
    entry = {
        "tile_grid": dict(grid),
        "task": {
            "key": task.key,
            "group": task.group,
            "split": task.split,
            "start": task.start,
            "stop": task.stop,
        },
        "imported": {
            "domain": task.domain,
            "has_masks": has_masks,
            "sources": [micrograph.name],
            "split": task.split,
            **provenance(micrograph, positions),
        },
    }
    write_shard(root, spec.axis, task, table, entry)
