"""The on-disk contract of a dataset root: its layout, the shard plan, the manifest, verification.

Layout of a dataset root (a local directory or a storage URI)::

    dataset.json                                   the spec and its content hash
    study=<axis>/domain=<label>/split=<split>/<shard>.parquet
    _manifest/<shard>.json                         written last: the shard is complete
    waves/...                                      the exit-wave store (:mod:`hrtem_ray.dataset.waves`)

One Parquet row is one image: ``image`` and ``mask`` as Arrow
``fixed_shape_tensor`` float32 columns plus the metadata columns of
:data:`ROW_COLUMNS`. A shard is one domain's images of a run of consecutive
structures of one split (:class:`ShardTask`, :func:`plan_shards`), keyed by the
domain's :meth:`~hrtem_ray.spec.dataset.DatasetSpec.images_hash`; its file is written
first and its manifest entry last, each atomically (:func:`write_shard`), so a killed
run never leaves a shard that looks complete, and a rerun only simulates the shards
without a manifest entry (:func:`shards_to_simulate`).

Integrity
---------
* Only the current dataset is read: every manifest entry records the
  ``images_hash`` it was written for, and :func:`manifest_entries` (the readers of
  :mod:`hrtem_ray.dataset.readers`, :func:`completed_shards`) keeps only the entries
  the spec in ``dataset.json`` plans, with that hash, and the shards of complete
  imported domains (:mod:`hrtem_ray.dataset.imported`: listed by their domain record,
  with its sha256, on the dataset's current tile grid); other, unreadable or incomplete
  entries, and every shard of an imported domain without its record (an interrupted
  import), are ignored with a :class:`DatasetWarning` naming their files.
* Shards heal: each entry records the ``rows``, ``bytes`` and ``sha256`` of its
  files. :func:`verify_shards` lists the shards that do not match, and the
  simulation re-simulates them (bit-identical, the simulation being seeded).

Claiming a root for a spec is :mod:`hrtem_ray.dataset.claim`; nothing here needs Ray,
abTEM or ASE.
"""

from __future__ import annotations

import hashlib
import posixpath
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from hrtem_ray.dataset import imported
from hrtem_ray.spec.dataset import DatasetSpec, current_dataset_keys
from hrtem_ray.spec.types import SPLITS, STORED
from hrtem_ray.store import storage
from hrtem_ray.store.digest import sha256_file

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
        dataset, unreadable, missing fields; safe to move away), or an imported domain's
        claim or record that makes readers ignore the whole domain.
    domain : str or None
        The imported domain the problem belongs to (None for simulated shards): an
        imported domain cannot be simulated again, so it is repaired as a whole.
    """

    key: str
    path: str
    problem: str
    kind: Literal["file", "manifest"] = "file"
    domain: str | None = None


@dataclass(frozen=True)
class ShardTask:
    """One domain's images of the structures ``[start, stop)`` of one group and split."""

    key: str
    group: str
    split: str
    start: int
    stop: int
    domain: str = ""


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


def manifest_path(dataset_root: str, key: str) -> str:
    """Where a shard's manifest entry lives: ``_manifest/<key>.json``."""
    return storage.join(dataset_root, MANIFEST_DIR, f"{key}.json")


def write_shard(
    root: str, axis: str, task: ShardTask, table: pa.Table, entry: Mapping[str, Any]
) -> int:
    """Write one domain's shard file, then its manifest entry (each atomically).

    Parameters
    ----------
    root
        Dataset root.
    axis
        The dataset's study axis (the ``study=<axis>`` folder).
    task
        Key, domain and split of the shard.
    table
        The shard's rows.
    entry
        What the manifest entry says of the shard besides its file: the simulation's
        ``images_hash``, ``task`` and ``node_id``, or an importer's ``tile_grid``,
        ``task`` and ``imported`` record.

    Returns
    -------
    int
        The images written. The entry gets ``files``: the file's ``path`` (relative
        to ``root``), ``rows``, ``bytes`` and ``sha256``, so that
        :func:`verify_shards` can tell a damaged file.
    """
    path = shard_path(root, axis, task.domain, task.split, task.key)
    payload = parquet_bytes(table)
    storage.write_bytes_atomic(path, payload)
    info = {
        "path": path.removeprefix(root).lstrip("/"),
        "rows": table.num_rows,
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    storage.write_json_atomic(
        manifest_path(root, task.key), {**entry, "files": {task.domain: info}}
    )
    return table.num_rows


def read_record(root: str) -> dict[str, Any] | None:
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


def dataset_spec(dataset_root: str | Path) -> DatasetSpec:
    """The spec a dataset root was simulated from."""
    record = read_record(str(dataset_root))
    if record is None:
        raise DatasetError(
            f"no dataset at {dataset_root} (missing {SPEC_FILE}); run `hrtem-ray simulate`"
        )
    return stored_spec(record)


def stored_spec(record: Mapping[str, Any]) -> DatasetSpec:
    """The spec of a ``dataset.json`` record (also one stored before a field rename).

    Raises
    ------
    pydantic.ValidationError
        The stored spec is not valid for this version of hrtem-ray (a ``ValueError``).
    """
    raw = current_dataset_keys(record.get("spec") or {})
    return DatasetSpec.model_validate(raw, context={STORED: True})


@dataclass
class _ManifestScan:
    """Manifest entries of one dataset root: those of the current hash, and the rest."""

    dataset_hash: str | None
    entries: dict[str, dict] = field(default_factory=dict)
    ignored: list[ShardProblem] = field(default_factory=list)


_TASK_FIELDS = {"key": str, "group": str, "split": str, "start": int, "stop": int}
_FILE_FIELDS = {"path": str, "rows": int, "bytes": int, "sha256": str}


def _entry_problem(entry: Any, key: str, expected: tuple[str, Any]) -> str | None:
    """Why a parsed manifest entry is not usable, or None.

    ``expected`` is ``(field, hash)``: ``("images_hash", h)`` for a planned image
    shard, ``("tile_grid", grid)`` for a shard of an imported domain.
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
    spec in ``dataset.json`` with the images hash they record, or are shards of a
    complete imported domain (:func:`_imported_shards`). Other files are ignored
    without being read: simulated shards of another spec and those of the old layout
    (one entry for every domain) alike.
    """
    record = read_record(root)
    if record is None:
        return _ManifestScan(None)
    scan = _ManifestScan(record["content_hash"])
    spec = stored_spec(record)
    grid = imported.tile_grid(spec)
    shards, claimed = _imported_shards(root, grid)
    manifest = storage.join(root, MANIFEST_DIR)
    names = storage.listdir(manifest) if storage.exists(manifest) else []
    keys = {n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith(".")}
    planned = planned_hashes(spec)
    tag = f"{scan.dataset_hash[:8]}-"
    for key in sorted(keys):
        path = manifest_path(root, key)
        if key in planned:
            expected = ("images_hash", planned[key][1])
        elif key in shards:
            expected = ("tile_grid", grid)
        elif key in claimed:
            continue  # a shard of an imported domain readers ignore: reported once, below
        else:
            scan.ignored.append(ShardProblem(key, path, _unknown_key_problem(key, tag), "manifest"))
            continue
        try:
            entry = storage.read_json(path)
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            problem: str | None = f"unreadable manifest entry ({exc})"
        else:
            problem = _entry_problem(entry, key, expected)
        domain = shards[key][0] if key in shards else None
        if problem is None and domain is not None:
            problem = _record_problem(entry, shards[key][1], domain)
        if problem is None:
            scan.entries[key] = entry
        else:
            scan.ignored.append(ShardProblem(key, path, problem, "manifest", domain))
    _drop_partial_domains(root, scan, shards, keys, grid)
    return scan


def _unknown_key_problem(key: str, tag: str) -> str:
    """Why a manifest entry that no plan, claim or domain record lists is ignored."""
    if key.startswith(imported.SHARD_PREFIX):
        return "shard of no imported domain (no claim or domain record in _imported/)"
    if key.startswith(tag) and "-imported_" in key:
        return (
            "imported shard written by an earlier hrtem-ray, without a domain record; "
            "`hrtem-ray check --repair` moves it away, then import its files again"
        )
    return f"manifest entry not of the current dataset {tag[:-1]}"


def _imported_shards(
    root: str, grid: Mapping[str, Any]
) -> tuple[dict[str, tuple[str, dict]], set[str]]:
    """``({key: (domain, shard record)} of complete domains on ``grid``, every claimed key)``."""
    shards: dict[str, tuple[str, dict]] = {}
    claimed: set[str] = set()
    for name, state in imported.read_domains(root).items():
        claimed.update(state.planned_keys)
        if state.complete and state.record.get("grid") == dict(grid):
            for shard in state.record["shards"]:
                if isinstance(shard, dict) and isinstance(shard.get("key"), str):
                    shards[shard["key"]] = (name, shard)
                    claimed.add(shard["key"])
    return shards, claimed


def _record_problem(entry: Mapping[str, Any], shard: Mapping[str, Any], domain: str) -> str | None:
    """Why a manifest entry is not the shard its domain record lists, or None."""
    info = entry["files"].get(domain)
    if not isinstance(info, dict):
        return f"manifest entry without a file of imported domain {domain!r}"
    for name in ("path", "bytes", "sha256"):
        if info.get(name) != shard.get(name):
            return (
                f"manifest entry's {name} {info.get(name)!r} is not the {shard.get(name)!r} "
                f"of the domain record of imported domain {domain!r}"
            )
    return None


def _drop_partial_domains(
    root: str,
    scan: _ManifestScan,
    shards: Mapping[str, tuple[str, dict]],
    keys: set[str],
    grid: Mapping[str, Any],
) -> None:
    """Leave out every imported domain that readers must not use, whole, with its reasons.

    A complete domain one of whose entries is missing or ignored is dropped (its tiles
    would otherwise be read in part); claimed domains without a record, with an
    unreadable claim or record, or of another grid get one problem each
    (:func:`hrtem_ray.dataset.imported.domain_problems`).
    """
    for key, (domain, _) in sorted(shards.items()):
        if key not in keys:
            problem = f"manifest entry missing: the domain record of {domain!r} lists it"
            scan.ignored.append(
                ShardProblem(key, manifest_path(root, key), problem, "manifest", domain)
            )
    dropped = {p.domain for p in scan.ignored if p.domain is not None}
    for key in [k for k in scan.entries if k in shards and shards[k][0] in dropped]:
        del scan.entries[key]
    for domain, (path, problem) in imported.domain_problems(root, grid).items():
        scan.ignored.append(ShardProblem(f"imported:{domain}", path, problem, "manifest", domain))


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


def file_problems(root: str, entries: Mapping[str, Mapping]) -> list[ShardProblem]:
    """Files of usable entries that are missing or differ from their size or sha256.

    Reads no more than needed: the size first (one metadata request), the content
    (sha256) only when the size matches. A file whose sha256 matches has the
    recorded rows.
    """
    import pyarrow.fs as pafs

    problems = []
    for key in sorted(entries):
        record = entries[key].get("imported")
        domain = str(record["domain"]) if isinstance(record, dict) else None
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
            problems.append(ShardProblem(key, uri, problem, domain=domain))
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
    return scan.ignored + file_problems(dataset_root, scan.entries)


def shards_to_simulate(spec: DatasetSpec, root: str) -> tuple[list[ShardTask], list[ShardTask]]:
    """``(all planned shards, those to simulate)``: missing, or not matching their manifest.

    Every complete shard is verified (:func:`file_problems`); a damaged one is
    re-simulated with a :class:`DatasetWarning` naming its file. Call after
    :func:`prepare_root`.
    """
    tasks = plan_shards(spec)
    scan = _scan_manifest(root)
    _warn_ignored(root, scan.ignored)
    damaged = file_problems(root, scan.entries)
    for problem in damaged:
        warnings.warn(
            f"shard {problem.key}: {problem.path}: {problem.problem}; re-simulating the shard",
            DatasetWarning,
            stacklevel=3,
        )
    done = set(scan.entries) - {p.key for p in damaged}
    return tasks, [t for t in tasks if t.key not in done]
