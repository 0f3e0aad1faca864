"""Simulated datasets: Ray Data simulation into Parquet shards, and a reader without Ray.

Layout of a dataset root (a local directory or a storage URI)::

    dataset.json                                   the spec and its content hash
    study=<axis>/domain=<label>/split=<split>/<shard>.parquet
    _manifest/<shard>.json                         written last: the shard is complete
    waves/...                                      the exit-wave store (:mod:`hrtem_ray.dataset.waves`)

One Parquet row is one image: ``image`` and ``mask`` as Arrow
``fixed_shape_tensor`` float32 columns plus the metadata columns of
:data:`ROW_COLUMNS`. A shard is one domain's images of a run of consecutive
structures of one split, keyed by the domain's
:meth:`~hrtem_ray.spec.dataset.DatasetSpec.images_hash`; its file is written first and
its manifest entry last, each atomically, so a killed run never leaves a shard
that looks complete, and a rerun only simulates the shards without a manifest entry.

New imaging domains from stored waves
-------------------------------------
The exit waves of every structure are kept (``keep_exit_waves``, default true),
written before the images. A spec that differs from the stored one only in its
imaging (defocus, dose, focal spread, Cs, output sampling within the stored band,
jitter, mask or calibration parameters; added or removed domains) claims the same
root: ``dataset.json`` is replaced by the new spec, the shards of domains whose
images hash is unchanged are kept untouched, and the other domains are imaged
from the stored waves without multislice. A spec whose exit waves differ
(structures, multislice physics, seed, counts, shard size, generator version) is
refused with each such field named.

Integrity
---------
* One dataset per directory: ``dataset.json`` is created exclusively
  (:func:`hrtem_ray.store.storage.create_exclusive`), so of any number of concurrent
  :func:`prepare_root` calls exactly one claims an empty directory; a spec with
  other exit waves is refused with a :class:`DatasetError` naming each differing
  field (:func:`check_dataset_root` does the same check without writing); one
  that changes only the imaging replaces the spec (see above).
* Only the current dataset is read: every manifest entry records the
  ``images_hash`` it was written for, and readers (:func:`read_images`,
  :func:`read_table`, :func:`shard_files`, :func:`summarize`,
  :func:`completed_shards`) use only the entries the spec in ``dataset.json``
  plans, with that hash (and entries of other writers, such as imported
  micrographs, whose group is no simulation group and whose ``dataset_hash`` is
  the current content hash); other, unreadable or incomplete entries are ignored with a
  :class:`DatasetWarning` naming their files.
* Shards heal: each entry records the ``rows``, ``bytes`` and ``sha256`` of its
  files. :func:`verify_shards` lists the shards that do not match, and the
  simulation re-simulates them (bit-identical, the simulation being seeded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import resource
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hrtem_ray.cluster.runtime import node_id
from hrtem_ray.dataset.waves import StoredStructure, read_waves, write_waves
from hrtem_ray.physics.simulate import (
    images_from_waves,
    structure_waves,
    warm_fftw_wisdom,
    with_calibrated_zero,
)
from hrtem_ray.physics.structures import random_structure
from hrtem_ray.spec.dataset import (
    GENERATOR_VERSION,
    DatasetSpec,
    DomainGroup,
    check_resources,
    current_dataset_keys,
)
from hrtem_ray.spec.types import MULTISLICE_FIELDS, SPLITS, ImagingCondition, output_gpts
from hrtem_ray.store import storage
from hrtem_ray.store.digest import sha256_file

logger = logging.getLogger(__name__)

MANIFEST_DIR = "_manifest"
SPEC_FILE = "dataset.json"
ROW_COLUMNS = (
    "study",
    "domain",
    "split",
    "structure_id",
    "structure_seed",
    "defocus_nm",
    "nominal_defocus_nm",
    "zero_defocus_angstrom",
    "dose_e_per_angstrom2",
    "focal_spread_angstrom",
    "cs_mm",
    "lattice",
    "n_particles",
    "pixel_size_angstrom",
)


class DatasetError(RuntimeError):
    """A dataset root is missing, incomplete, damaged or was written from another spec."""


class DatasetWarning(UserWarning):
    """A manifest entry or shard file of a dataset root was ignored or is re-simulated."""


@dataclass(frozen=True)
class ShardProblem:
    """A shard whose manifest entry or files do not match (see :func:`verify_shards`).

    Attributes
    ----------
    key : str
        Shard key (the manifest file's stem).
    path : str
        The damaged file, or the ignored manifest entry.
    problem : str
        What is wrong, e.g. ``"missing"``, ``"sha256 differs from the manifest"``
        or ``"manifest entry of dataset 1a2b..., not the current 3c4d..."``.
    kind : str
        ``"file"``: a shard file of the current dataset (re-simulated by the next
        simulation); ``"manifest"``: a manifest entry that readers ignore (another
        dataset, unreadable, missing fields; safe to move away).
    """

    key: str
    path: str
    problem: str
    kind: Literal["file", "manifest"] = "file"


@dataclass(frozen=True)
class ShardTask:
    """One domain's images of the structures ``[start, stop)`` of one group and split."""

    key: str
    group: str
    split: str
    start: int
    stop: int
    domain: str = ""


@dataclass(frozen=True)
class SimulationUnit:
    """The structures ``[start, stop)`` of one group and split, and the domains to image.

    The unit of work of the simulation: its exit waves are read from the store or
    simulated once, then imaged in every listed domain.
    """

    group: str
    split: str
    start: int
    stop: int
    domains: tuple[str, ...]


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`simulate_dataset` did."""

    root: str
    images: int
    shards: int
    shards_written: int
    seconds: float
    structures_from_store: int = 0
    structures_simulated: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class ImageSet:
    """Images and masks of one (domain, split) selection, ordered by structure id."""

    images: np.ndarray
    masks: np.ndarray
    structure_ids: list[str]
    defocus_nm: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def structure_seed(dataset_seed: int, group: str, split: str, index: int) -> int:
    """Seed of one structure: a stable hash of its position in the dataset."""
    text = f"{dataset_seed}/{group}/{split}/{index}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


def structure_id(group: str, split: str, index: int) -> str:
    """Sortable id of one structure, e.g. ``train-00012`` or ``CdSe-small/train-00012``."""
    stem = f"{split}-{index:05d}"
    return stem if group == "all" else f"{group}/{stem}"


def _ranges(spec: DatasetSpec, split: str) -> list[tuple[int, int]]:
    n = spec.images_per_domain(split)
    step = spec.structures_per_shard
    return [(start, min(n, start + step)) for start in range(0, n, step)]


def planned_hashes(spec: DatasetSpec) -> dict[str, tuple[ShardTask, str]]:
    """Every image shard of a dataset by key, with the images hash its entry must record."""
    out = {}
    for group in spec.groups():
        for condition in group.conditions:
            images_hash = spec.images_hash(group.name, condition)
            for split in SPLITS:
                for start, stop in _ranges(spec, split):
                    key = f"{images_hash[:8]}-{condition.domain}-{split}-{start:05d}-{stop:05d}"
                    task = ShardTask(key, group.name, split, start, stop, condition.domain)
                    out[key] = (task, images_hash)
    return out


def plan_shards(spec: DatasetSpec) -> list[ShardTask]:
    """Every image shard of a dataset (one per domain and run of structures), in a fixed order."""
    return [task for task, _ in planned_hashes(spec).values()]


def waves_key(spec: DatasetSpec, group: str, split: str, start: int, stop: int) -> str:
    """Key of the exit-wave shard of a run of structures (:mod:`hrtem_ray.dataset.waves`)."""
    safe_group = group.replace("/", "_")
    return f"{spec.waves_hash(group)[:8]}-{safe_group}-{split}-{start:05d}-{stop:05d}"


def simulation_units(tasks: Iterable[ShardTask]) -> list[SimulationUnit]:
    """The image shards to write, gathered per run of structures (in first-seen order)."""
    domains: dict[tuple[str, str, int, int], list[str]] = {}
    for task in tasks:
        domains.setdefault((task.group, task.split, task.start, task.stop), []).append(task.domain)
    return [SimulationUnit(*where, tuple(labels)) for where, labels in domains.items()]


def _group(spec: DatasetSpec, name: str) -> DomainGroup:
    return next(g for g in spec.groups() if g.name == name)


def _tensor_column(arrays: np.ndarray) -> pa.Array:
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(arrays, np.float32))


def unit_waves(
    spec: DatasetSpec, root: str, unit: SimulationUnit
) -> tuple[list[StoredStructure], bool]:
    """The exit waves of a unit's structures and whether they came from the store.

    Reads the unit's wave shard when it is complete and holds the output band;
    otherwise runs the multislice (and stores the waves if ``keep_exit_waves``).
    """
    group = _group(spec, unit.group)
    indices = range(unit.start, unit.stop)
    key = waves_key(spec, unit.group, unit.split, unit.start, unit.stop)
    waves_hash = spec.waves_hash(unit.group)
    stored = read_waves(root, key, waves_hash, list(indices))
    n_out = output_gpts(group.structures.cell_angstrom, spec.simulation)
    if stored is not None and all(s.waves.full_spectra.shape[-1] >= n_out for s in stored):
        return stored, True
    structures = []
    for index in indices:
        seed = structure_seed(spec.seed, unit.group, unit.split, index)
        waves = structure_waves(random_structure(group.structures, seed), spec.simulation, seed)
        structures.append(
            StoredStructure(index, seed, with_calibrated_zero(waves, spec.simulation))
        )
    if spec.keep_exit_waves:
        write_waves(root, key, waves_hash, structures)
    return structures, False


def image_unit(
    spec: DatasetSpec, unit: SimulationUnit, structures: list[StoredStructure]
) -> dict[str, pa.Table]:
    """The images of a unit's structures in its domains: one table of rows per domain."""
    group = _group(spec, unit.group)
    conditions = [c for c in group.conditions if c.domain in unit.domains]
    rows: dict[str, list[dict]] = {c.domain: [] for c in conditions}
    for stored in structures:
        result = images_from_waves(stored.waves, spec.simulation, conditions, stored.seed)
        for k, cond in enumerate(conditions):
            rows[cond.domain].append(
                {
                    **_condition_columns(cond),
                    "study": spec.axis,
                    "split": unit.split,
                    "structure_id": structure_id(unit.group, unit.split, stored.index),
                    "structure_seed": stored.seed,
                    "defocus_nm": float(result.defocus_nm[k]),
                    "zero_defocus_angstrom": float(result.zero_defocus_angstrom),
                    "lattice": stored.waves.lattice,
                    "n_particles": int(stored.waves.n_particles),
                    "pixel_size_angstrom": float(result.pixel_size_angstrom),
                    "image": result.images[k],
                    "mask": result.mask,
                }
            )
    return {domain: _rows_to_table(domain_rows) for domain, domain_rows in rows.items()}


def _condition_columns(condition: ImagingCondition) -> dict[str, Any]:
    return {
        "domain": condition.domain,
        "nominal_defocus_nm": float(condition.defocus_nm),
        "dose_e_per_angstrom2": condition.dose_e_per_angstrom2,
        "focal_spread_angstrom": float(condition.focal_spread_angstrom),
        "cs_mm": float(condition.cs_mm),
    }


def _rows_to_table(rows: list[dict]) -> pa.Table:
    columns = {name: [r[name] for r in rows] for name in ROW_COLUMNS}
    table = pa.table(columns)
    table = table.set_column(
        table.schema.get_field_index("dose_e_per_angstrom2"),
        "dose_e_per_angstrom2",
        pa.array(columns["dose_e_per_angstrom2"], pa.float64()),
    )
    table = table.append_column("image", _tensor_column(np.stack([r["image"] for r in rows])))
    return table.append_column("mask", _tensor_column(np.stack([r["mask"] for r in rows])))


def shard_path(dataset_root: str, axis: str, domain: str, split: str, key: str) -> str:
    """Where one domain's file of a shard lives (the folder ``study=<axis>`` keeps its name)."""
    return storage.join(
        dataset_root, f"study={axis}", f"domain={domain}", f"split={split}", f"{key}.parquet"
    )


def parquet_bytes(table: pa.Table) -> bytes:
    """A table serialised as one Parquet file (what :func:`write_shard` stores)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_shard(
    root: str, spec: DatasetSpec, task: ShardTask, images_hash: str, table: pa.Table
) -> int:
    """Write one domain's shard file, then its manifest entry (each atomically).

    The entry records the domain's ``images_hash`` and the file's ``rows``,
    ``bytes`` and ``sha256``, so that :func:`verify_shards` can tell a damaged
    file. Returns the images written.
    """
    path = shard_path(root, spec.axis, task.domain, task.split, task.key)
    payload = parquet_bytes(table)
    storage.write_bytes_atomic(path, payload)
    info = {
        "path": path.removeprefix(root).lstrip("/"),
        "rows": table.num_rows,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    entry = {
        "images_hash": images_hash,
        "task": asdict(task),
        "files": {task.domain: info},
        "node_id": node_id(),
    }
    storage.write_json_atomic(storage.join(root, MANIFEST_DIR, f"{task.key}.json"), entry)
    return table.num_rows


def simulate_and_write(spec: DatasetSpec, root: str, unit: SimulationUnit) -> dict:
    """Simulate (or read the stored waves of) one unit and write its domains' shards.

    Returns a small record for progress reporting: ``structures_from_store`` and
    ``structures_simulated`` say where its exit waves came from.
    """
    start = time.perf_counter()
    started_at = time.time()
    structures, from_store = unit_waves(spec, root, unit)
    tables = image_unit(spec, unit, structures)
    where = (unit.group, unit.split, unit.start)
    n_images = 0
    for task, images_hash in planned_hashes(spec).values():
        if task.domain in tables and (task.group, task.split, task.start) == where:
            n_images += write_shard(root, spec, task, images_hash, tables[task.domain])
    n_structures = unit.stop - unit.start
    return {
        "key": waves_key(spec, unit.group, unit.split, unit.start, unit.stop),
        "started_at": started_at,
        "images": n_images,
        "structures_from_store": n_structures if from_store else 0,
        "structures_simulated": 0 if from_store else n_structures,
        "seconds": time.perf_counter() - start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pid": os.getpid(),
    }


# --- the dataset record and the manifest ------------------------------------------------


def dataset_record(spec: DatasetSpec) -> dict[str, Any]:
    """What ``dataset.json`` holds: the content hash, the generator version and the spec."""
    return {
        "content_hash": spec.content_hash(),
        "generator_version": GENERATOR_VERSION,
        "spec": spec.model_dump(mode="json"),
    }


def _read_record(root: str) -> dict[str, Any] | None:
    """``dataset.json`` of a root, None if there is none; DatasetError if unreadable."""
    spec_path = storage.join(root, SPEC_FILE)
    if not storage.exists(spec_path):
        return None
    try:
        record = storage.read_json(spec_path)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        raise DatasetError(f"{spec_path} is unreadable ({exc}); delete the dataset root") from None
    if not isinstance(record, dict) or not isinstance(record.get("content_hash"), str):
        raise DatasetError(f"{spec_path} has no content_hash; it is not a dataset record")
    return record


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": leaf}``; lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key in value:
            out.update(_flatten(value[key], f"{prefix}.{key}"))
        return out
    return {prefix: value}


def _show(value: Any) -> str:
    """A stored or spec value for a message: ``400`` for 400.0, JSON otherwise."""
    if value is _ABSENT:
        return "<absent>"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value, sort_keys=True)


_ABSENT = object()


def spec_differences(stored: dict[str, Any], spec: DatasetSpec) -> list[str]:
    """Fields of a stored dataset record that differ from ``spec`` (``path`` ignored).

    Parameters
    ----------
    stored
        The content of ``dataset.json`` (see :func:`dataset_record`).
    spec
        The spec to compare with.

    Returns
    -------
    list of str
        e.g. ``["dataset.dose_e_per_angstrom2: stored 400, spec 300"]``, sorted.
    """
    ours = _flatten(spec.model_dump(mode="json"), "dataset")
    theirs = _flatten(current_dataset_keys(stored.get("spec") or {}), "dataset")
    lines = [
        f"{name}: stored {_show(theirs.get(name, _ABSENT))}, spec {_show(ours.get(name, _ABSENT))}"
        for name in sorted(set(ours) | set(theirs))
        if name != "dataset.path" and theirs.get(name, _ABSENT) != ours.get(name, _ABSENT)
    ]
    version = stored.get("generator_version", _ABSENT)
    if version != GENERATOR_VERSION:
        lines.append(f"generator_version: stored {_show(version)}, spec {GENERATOR_VERSION}")
    return lines


#: Spec fields (flattened, see :func:`spec_differences`) that the exit waves depend on
#: (:meth:`~hrtem_ray.spec.dataset.DatasetSpec.waves_payload`): a change refuses the root.
_WAVE_FIELDS = (
    "dataset.structures.",
    "dataset.structure_domains.",
    "dataset.n_structures.",
    "dataset.seed",
    "dataset.structures_per_shard",
    *(f"dataset.simulation.{name}" for name in MULTISLICE_FIELDS),
)


def waves_differences(stored: dict[str, Any], spec: DatasetSpec) -> list[str]:
    """The differences of :func:`spec_differences` that the stored exit waves depend on.

    A structure domain added or removed is no difference of the waves (its group's
    waves are simulated or left); one changed is. The generator version is one.
    """
    lines = []
    for line in spec_differences(stored, spec):
        name = line.split(":", 1)[0]
        both = "<absent>" not in line.split(":", 1)[1]
        wave_field = name == "generator_version" or (
            both
            and any(name == f or (f.endswith(".") and name.startswith(f)) for f in _WAVE_FIELDS)
        )
        if wave_field:
            lines.append(line)
    return lines


def _mismatch_error(root: str, stored: dict[str, Any], spec: DatasetSpec) -> DatasetError:
    diffs = waves_differences(stored, spec) or [
        f"content_hash: stored {stored.get('content_hash')}, spec {spec.content_hash()} "
        "(written by another version of hrtem-ray)"
    ]
    listing = "\n".join(f"  {line}" for line in diffs)
    return DatasetError(
        f"{root} holds a dataset simulated from another spec, with other exit waves (the "
        f"exit-wave store cannot be reused for this spec):\n{listing}\n"
        "only imaging fields (defocus, dose, focal spread, Cs, output sampling, jitter, "
        "mask, calibration, domains) may change; choose another output directory, or "
        "delete that one"
    )


def _reusable(stored: dict[str, Any], spec: DatasetSpec) -> bool:
    """Whether a stored record's exit waves are this spec's (only the imaging differs)."""
    if stored["content_hash"] == spec.content_hash():
        return True
    if waves_differences(stored, spec):
        return False
    try:
        stored_spec = DatasetSpec.model_validate(current_dataset_keys(stored.get("spec") or {}))
    except ValueError:
        return False
    groups = {g.name for g in spec.groups()} & {g.name for g in stored_spec.groups()}
    return all(stored_spec.waves_hash(g) == spec.waves_hash(g) for g in groups)


def check_dataset_root(spec: DatasetSpec, root: str | Path) -> None:
    """Check, without writing anything, that ``root`` is empty or holds this spec's dataset.

    Call it before Ray starts; :func:`prepare_root` makes the same check when it
    claims the directory.

    A root whose dataset differs only in the imaging is this spec's: its exit
    waves are reused (see the module docstring).

    Raises
    ------
    DatasetError
        The root holds a dataset of other exit waves (each differing field named,
        e.g. ``dataset.simulation.n_phonons: stored 2, spec 3``), its
        ``dataset.json`` is unreadable, or the root is a file.
    """
    root = str(root)
    _check_not_a_file(root)
    stored = _read_record(root)
    if stored is not None and not _reusable(stored, spec):
        raise _mismatch_error(root, stored, spec)


def _check_not_a_file(root: str) -> None:
    import pyarrow.fs as pafs

    loc = storage.resolve(root)
    if loc.fs.get_file_info(loc.path).type == pafs.FileType.File:
        raise DatasetError(f"dataset root {loc.uri} is a file, not a directory")


def prepare_root(spec: DatasetSpec, root: str) -> None:
    """Claim a dataset root for ``spec``, or check that it already holds ``spec``'s dataset.

    ``dataset.json`` is created with :func:`hrtem_ray.store.storage.create_exclusive`: of
    any number of concurrent callers exactly one creates it, and every other one
    compares its spec with the stored one. A stored spec that differs only in the
    imaging is replaced by ``spec`` (compare-and-swap: a concurrent change is refused).

    Raises
    ------
    DatasetError
        As :func:`check_dataset_root`, or the root cannot be written.
    """
    record = dataset_record(spec)
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    _check_not_a_file(root)
    try:
        if storage.is_local(root):
            storage.makedirs(root)
        if storage.create_exclusive(storage.join(root, SPEC_FILE), text.encode()):
            return
    except PermissionError as exc:
        raise DatasetError(f"cannot write the dataset root {root}: {exc}") from None
    check_dataset_root(spec, root)
    spec_path = storage.join(root, SPEC_FILE)
    before = storage.read_bytes(spec_path)
    if json.loads(before)["content_hash"] == spec.content_hash():
        return
    if not storage.replace_if_unchanged(spec_path, text.encode(), before):
        raise DatasetError(f"{spec_path} changed while this spec replaced it; run again")
    logger.info(
        "%s: imaging changed (same exit waves); the spec in %s is replaced", root, SPEC_FILE
    )


@dataclass
class _ManifestScan:
    """Manifest entries of one dataset root: those of the current hash, and the rest."""

    dataset_hash: str | None
    entries: dict[str, dict] = field(default_factory=dict)
    ignored: list[ShardProblem] = field(default_factory=list)


_TASK_FIELDS = {"key": str, "group": str, "split": str, "start": int, "stop": int}
_FILE_FIELDS = {"path": str, "rows": int, "bytes": int, "sha256": str}


def _entry_problem(entry: Any, key: str, expected: tuple[str, str]) -> str | None:
    """Why a parsed manifest entry is not usable, or None.

    ``expected`` is ``(field, hash)``: ``("images_hash", h)`` for a planned image
    shard, ``("dataset_hash", content hash)`` for a shard of another writer.
    """
    if not isinstance(entry, dict):
        return "not a manifest entry (not a JSON object)"
    name, wanted = expected
    found = entry.get(name)
    if found is None:
        return f"manifest entry without {name} (missing fields)"
    if found != wanted:
        return f"manifest entry of {name} {found}, not the current {wanted}"
    task, files = entry.get("task"), entry.get("files")
    if not isinstance(task, dict) or any(
        not isinstance(task.get(name), kind) for name, kind in _TASK_FIELDS.items()
    ):
        return f"manifest entry with missing or invalid task fields ({', '.join(_TASK_FIELDS)})"
    if task["key"] != key or task["split"] not in SPLITS:
        return f"manifest entry for shard {task['key']!r} split {task['split']!r}"
    if not isinstance(files, dict) or not files:
        return "manifest entry without files"
    for info in files.values():
        if not isinstance(info, dict) or any(
            not isinstance(info.get(name), kind) for name, kind in _FILE_FIELDS.items()
        ):
            return f"manifest entry with missing or invalid file fields ({', '.join(_FILE_FIELDS)})"
        path = info["path"]
        if path.startswith("/") or ".." in path.split("/") or posixpath.normpath(path) != path:
            return f"manifest entry with a file outside the dataset root: {path!r}"
    return None


def _scan_manifest(root: str) -> _ManifestScan:
    """Read the manifest of the dataset in ``root``: usable entries and ignored ones.

    Entries are usable when they parse, have every field and are planned by the
    spec in ``dataset.json`` with the images hash they record; entries of other
    writers (a group that is no simulation group, e.g. imported micrographs) are
    usable when they record the current content hash as ``dataset_hash``. Other
    files are ignored without being read: simulated shards of another spec and
    those of the old layout (one entry for every domain) alike.
    """
    record = _read_record(root)
    if record is None:
        return _ManifestScan(None)
    scan = _ManifestScan(record["content_hash"])
    manifest = storage.join(root, MANIFEST_DIR)
    if not storage.exists(manifest):
        return scan
    spec = DatasetSpec.model_validate(current_dataset_keys(record["spec"]))
    planned = planned_hashes(spec)
    groups = {g.name.replace("/", "_") for g in spec.groups()}
    tag = f"{scan.dataset_hash[:8]}-"
    for name in storage.listdir(manifest):
        if not name.endswith(".json") or name.startswith("."):
            continue
        path, key = storage.join(manifest, name), name[: -len(".json")]
        if key in planned:
            expected = ("images_hash", planned[key][1])
        elif key.startswith(tag) and key[len(tag) :].split("-", 1)[0] not in groups:
            expected = ("dataset_hash", scan.dataset_hash)
        else:
            problem = f"manifest entry not of the current dataset {tag[:-1]}"
            scan.ignored.append(ShardProblem(key, path, problem, "manifest"))
            continue
        try:
            entry = storage.read_json(path)
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            problem = f"unreadable manifest entry ({exc})"
            scan.ignored.append(ShardProblem(key, path, problem, "manifest"))
            continue
        problem = _entry_problem(entry, key, expected)
        if problem is None:
            scan.entries[key] = entry
        else:
            scan.ignored.append(ShardProblem(key, path, problem, "manifest"))
    return scan


def _warn_ignored(root: str, ignored: list[ShardProblem], limit: int = 10) -> None:
    """One :class:`DatasetWarning` naming the ignored manifest entries (the first ``limit``)."""
    if not ignored:
        return
    shown = "; ".join(f"{p.path}: {p.problem}" for p in ignored[:limit])
    more = f"; and {len(ignored) - limit} more" if len(ignored) > limit else ""
    warnings.warn(
        f"{root}: ignoring {len(ignored)} manifest entries that are not of its current "
        f"dataset: {shown}{more}",
        DatasetWarning,
        stacklevel=3,
    )


def manifest_entries(dataset_root: str | Path) -> dict[str, dict]:
    """Usable manifest entries of the current dataset of ``dataset_root``, by shard key.

    Others (another dataset hash, unparsable, missing fields) are ignored with a
    :class:`DatasetWarning` that names their files. Empty without ``dataset.json``.
    """
    dataset_root = str(dataset_root)
    scan = _scan_manifest(dataset_root)
    _warn_ignored(dataset_root, scan.ignored)
    return scan.entries


def completed_shards(dataset_root: str | Path) -> set[str]:
    """Keys of the shards of the current dataset whose manifest entry exists (not verified)."""
    return set(manifest_entries(dataset_root))


def _file_problems(root: str, entries: dict[str, dict]) -> list[ShardProblem]:
    """Files of usable entries that are missing or differ from their size or sha256.

    Reads no more than needed: the size first (one metadata request), the content
    (sha256) only when the size matches. A file whose sha256 matches has the
    recorded rows.
    """
    import pyarrow.fs as pafs

    problems = []
    for key in sorted(entries):
        for info in entries[key]["files"].values():
            uri = storage.join(root, info["path"])
            loc = storage.resolve(uri)
            meta = loc.fs.get_file_info(loc.path)
            if meta.type != pafs.FileType.File:
                problem = "missing"
            elif meta.size != info["bytes"]:
                problem = f"{meta.size} bytes, the manifest records {info['bytes']}"
            elif sha256_file(uri) != info["sha256"]:
                problem = "sha256 differs from the manifest"
            else:
                continue
            problems.append(ShardProblem(key, uri, problem))
    return problems


def verify_shards(dataset_root: str | Path) -> list[ShardProblem]:
    """Every problem of the shards in a dataset root, without changing anything.

    Parameters
    ----------
    dataset_root
        Dataset root (directory or URI) with a ``dataset.json``.

    Returns
    -------
    list of ShardProblem
        Ignored manifest entries (another dataset hash, unparsable, missing
        fields: ``path`` is the entry), then files of the current dataset's
        entries that are missing or differ from the recorded size or sha256
        (``path`` is the file). Empty when every listed shard is intact.

    Raises
    ------
    DatasetError
        No dataset at ``dataset_root`` (no ``dataset.json``), or it is unreadable.
    """
    dataset_root = str(dataset_root)
    scan = _scan_manifest(dataset_root)
    if scan.dataset_hash is None:
        raise DatasetError(f"no dataset at {dataset_root} (missing {SPEC_FILE})")
    return scan.ignored + _file_problems(dataset_root, scan.entries)


def shards_to_simulate(spec: DatasetSpec, root: str) -> tuple[list[ShardTask], list[ShardTask]]:
    """``(all planned shards, those to simulate)``: missing, or not matching their manifest.

    Every complete shard is verified (:func:`_file_problems`); a damaged one is
    re-simulated with a :class:`DatasetWarning` naming its file. Call after
    :func:`prepare_root`.
    """
    tasks = plan_shards(spec)
    scan = _scan_manifest(root)
    _warn_ignored(root, scan.ignored)
    damaged = _file_problems(root, scan.entries)
    for problem in damaged:
        warnings.warn(
            f"shard {problem.key}: {problem.path}: {problem.problem}; re-simulating the shard",
            DatasetWarning,
            stacklevel=3,
        )
    done = set(scan.entries) - {p.key for p in damaged}
    return tasks, [t for t in tasks if t.key not in done]


def _simulate_batch(batch: dict[str, np.ndarray], spec_json: str, root: str) -> dict[str, list]:
    spec = DatasetSpec.model_validate_json(spec_json)
    records = [
        simulate_and_write(
            spec,
            root,
            SimulationUnit(
                str(batch["group"][i]),
                str(batch["split"][i]),
                int(batch["start"][i]),
                int(batch["stop"][i]),
                tuple(str(batch["domains"][i]).split(",")),
            ),
        )
        for i in range(len(batch["group"]))
    ]
    return {name: [r[name] for r in records] for name in records[0]}


def _log_sources(summary: SimulationSummary) -> None:
    """Say where the exit waves came from (the ``hrtem_ray`` logger, shown by the CLI)."""
    logger.info(
        "%s: %d structures from the exit-wave store, %d simulated (multislice); "
        "%d images in %d new shards",
        summary.root,
        summary.structures_from_store,
        summary.structures_simulated,
        summary.images,
        summary.shards_written,
    )


@contextmanager
def _simulation_data_context(ctx) -> Iterator[None]:
    """Ray Data settings for the simulation pipeline, restored afterwards.

    Each task writes its own shard and returns a few bytes, so Ray Data's
    output backpressure has nothing to protect; its concurrency ramp-up left a
    core idle for about a second at the start and 0.1-0.2 s after every task
    (measured: 1.55x instead of 1.96x over the serial loop on 2 cores).
    """
    saved = (
        ctx.enable_progress_bars,
        ctx.enable_operator_progress_bars,
        ctx.get_config(_BACKPRESSURE_KEY, None),
    )
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.set_config(_BACKPRESSURE_KEY, [])
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.enable_operator_progress_bars = saved[:2]
        if saved[2] is None:
            ctx.remove_config(_BACKPRESSURE_KEY)
        else:
            ctx.set_config(_BACKPRESSURE_KEY, saved[2])


_BACKPRESSURE_KEY = "backpressure_policies.enabled"


def simulate_dataset(
    spec: DatasetSpec,
    root: str | Path,
    *,
    on_shard: Callable[[dict], None] | None = None,
    cpus_per_task: float = 1.0,
) -> SimulationSummary:
    """Simulate the shards of ``spec`` not yet in ``root``, in parallel with Ray Data.

    Uses the running Ray session (see :func:`hrtem_ray.cluster.runtime.ray_session`).
    Idempotent: shards with a manifest entry whose files match it are skipped, so
    rerunning the same spec writes nothing and an interrupted run is completed;
    damaged shards are re-simulated (see :func:`shards_to_simulate`).

    Raises
    ------
    DatasetError
        ``root`` holds another dataset (see :func:`prepare_root`).
    """
    import ray
    from ray.data import DataContext

    root = str(root)
    prepare_root(spec, root)
    tasks, todo = shards_to_simulate(spec, root)
    start = time.perf_counter()
    totals = {"images": 0, "structures_from_store": 0, "structures_simulated": 0}
    if todo:
        # Plan the FFTs once here so that every worker on this node loads the same wisdom.
        for cell in sorted({g.structures.cell_angstrom for g in spec.groups()}):
            warm_fftw_wisdom(cell, spec.simulation)
        items = [
            {**asdict(unit), "domains": ",".join(unit.domains)} for unit in simulation_units(todo)
        ]
        with _simulation_data_context(DataContext.get_current()):
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                _simulate_batch,
                batch_size=1,
                num_cpus=cpus_per_task,
                fn_kwargs={"spec_json": spec.model_dump_json(), "root": root},
            )
            for record in ds.iter_rows():
                for name in totals:
                    totals[name] += int(record[name])
                if on_shard is not None:
                    on_shard(dict(record))
    summary = SimulationSummary(
        root=root,
        shards=len(tasks),
        shards_written=len(todo),
        seconds=time.perf_counter() - start,
        **totals,
    )
    _log_sources(summary)
    return summary


def simulate_dataset_serial(spec: DatasetSpec, root: str | Path) -> SimulationSummary:
    """The same as :func:`simulate_dataset` in a plain loop in this process (no Ray).

    Raises
    ------
    SpecError
        One worker would need more memory than this machine has
        (:func:`hrtem_ray.spec.dataset.check_resources`); nothing is written.
    DatasetError
        As :func:`simulate_dataset`.
    """
    check_resources(spec)
    root = str(root)
    prepare_root(spec, root)
    tasks, todo = shards_to_simulate(spec, root)
    start = time.perf_counter()
    records = [simulate_and_write(spec, root, unit) for unit in simulation_units(todo)]
    summary = SimulationSummary(
        root,
        sum(r["images"] for r in records),
        len(tasks),
        len(todo),
        time.perf_counter() - start,
        sum(r["structures_from_store"] for r in records),
        sum(r["structures_simulated"] for r in records),
    )
    _log_sources(summary)
    return summary


# --- reading, without Ray -------------------------------------------------------------------


def dataset_spec(dataset_root: str | Path) -> DatasetSpec:
    """The spec a dataset root was simulated from."""
    record = _read_record(str(dataset_root))
    if record is None:
        raise DatasetError(
            f"no dataset at {dataset_root} (missing {SPEC_FILE}); run `hrtem-ray simulate`"
        )
    return DatasetSpec.model_validate(current_dataset_keys(record["spec"]))


def _selected_files(
    root: str, domains: Iterable[str] | None, split: str | None
) -> list[tuple[str, str, int]]:
    """``(shard key, file URI, rows)`` of the current dataset's shards, optionally selected."""
    if _read_record(root) is None:
        raise DatasetError(f"no dataset at {root} (missing {SPEC_FILE}); run `hrtem-ray simulate`")
    wanted = None if domains is None else set(domains)
    files = []
    entries = manifest_entries(root)
    for key in sorted(entries):
        entry = entries[key]
        if split is not None and entry["task"]["split"] != split:
            continue
        for domain, info in entry["files"].items():
            if wanted is None or domain in wanted:
                files.append((key, storage.join(root, info["path"]), int(info["rows"])))
    return files


def shard_files(
    dataset_root: str | Path, domains: Iterable[str] | None = None, split: str | None = None
) -> list[str]:
    """Files of the current dataset's complete shards (manifest entries), optionally selected."""
    return [uri for _, uri, _ in _selected_files(str(dataset_root), domains, split)]


def read_table(
    dataset_root: str | Path, domains: Iterable[str] | None = None, split: str | None = None
) -> pa.Table:
    """Rows of the current dataset's complete shards, ordered by domain and structure id.

    Raises
    ------
    DatasetError
        No dataset at ``dataset_root``, or a listed file is missing or damaged (named).
    """
    listed = {
        uri: (key, rows) for key, uri, rows in _selected_files(str(dataset_root), domains, split)
    }
    if not listed:
        return pa.table({})

    def wrong_rows(uri: str, table: pa.Table) -> str | None:
        rows = listed[uri][1]
        return None if table.num_rows == rows else f"has {table.num_rows} rows, its manifest {rows}"

    def refuse(uri: str, why: str) -> None:
        raise DatasetError(
            f"shard file {uri} (shard {listed[uri][0]}) is damaged or missing ({why}); rerun "
            "`hrtem-ray simulate` with the same spec to re-simulate it"
        )

    table = storage.read_parquet_files(list(listed), check=wrong_rows, on_damaged=refuse)
    return table.sort_by([("domain", "ascending"), ("structure_id", "ascending")])


def _tensor_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    return column.combine_chunks().to_numpy_ndarray().astype(np.float32, copy=False)


def read_images(
    dataset_root: str | Path, domain: str, split: str = "train", n: int | None = None
) -> ImageSet:
    """The first ``n`` images (by structure id) of a domain and split.

    Parameters
    ----------
    dataset_root
        Dataset root (directory or URI).
    domain
        Domain label, e.g. ``"-10"``.
    split
        ``"train"`` or ``"val"``.
    n
        Number of images; ``None`` for all. Fewer available raises :class:`DatasetError`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    table = read_table(dataset_root, [domain], split)
    available = table.num_rows
    if available == 0 or (n is not None and available < n):
        raise DatasetError(
            f"{dataset_root}: domain {domain!r} split {split!r} has {available} images, "
            f"{n or 'some'} requested"
        )
    if n is not None:
        table = table.slice(0, n)
    return ImageSet(
        images=_tensor_to_numpy(table.column("image")),
        masks=_tensor_to_numpy(table.column("mask")),
        structure_ids=table.column("structure_id").to_pylist(),
        defocus_nm=table.column("defocus_nm").to_numpy(),
    )


def summarize(dataset_root: str | Path) -> dict[str, dict[str, int]]:
    """Images per domain and split in the current dataset's complete shards (from the manifest)."""
    counts: dict[str, dict[str, int]] = {}
    for entry in manifest_entries(dataset_root).values():
        split = entry["task"]["split"]
        for domain, info in entry["files"].items():
            split_counts = counts.setdefault(domain, {})
            split_counts[split] = split_counts.get(split, 0) + int(info["rows"])
    return counts
