"""The registry of imported domains in a dataset root: claims, domain records, the tile grid.

``hrtem-ray import`` (:func:`hrtem_ray.dataset.micrographs.import_micrographs`) writes one
imported domain in three steps, each atomic, under the dataset's lock
(:mod:`hrtem_ray.store.lock`, the lock ``simulate`` takes)::

    _imported/<domain>.claim.json   1. created exclusively (:func:`create_claim`): the import's
                                       inputs (file names and sha256s, masks, options), the
                                       tile grid and the planned shard keys
    _manifest/imported-<domain>-<split>-<index>.json
                                    2. one shard per file, its Parquet file then its manifest
                                       entry (:func:`hrtem_ray.dataset.manifest.write_shard`)
    _imported/<domain>.json         3. written last (:func:`write_record`): the domain record,
                                       every shard's key, split, source file and sha256, tile
                                       count, bytes and sha256

A domain is complete when its record exists and every shard it lists matches it. A claim
without a record is an interrupted import: readers, ``check`` and the spec preflight refuse
or report the domain (:func:`domain_problems`), and the same import command resumes it (an
import with other inputs is refused: one domain, one set of inputs).

What imported tiles depend on
-----------------------------
Only the dataset's tile grid (:func:`tile_grid`): the output pixel size the micrographs were
resampled to and the image size they were cut to. They do not depend on the imaging of the
simulated domains (defocus, dose, focal spread, Cs, mask and calibration parameters) and are
keyed independently of the dataset's content hash, so an imaging change (the README's "add a
defocus") keeps them; a change of the grid would make them wrong and is refused
(:func:`grid_changes`, called by :mod:`hrtem_ray.dataset.claim`).

Nothing here needs Ray, abTEM or ASE; it reads and writes through
:mod:`hrtem_ray.store.storage` (local paths and ``s3://`` alike).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from hrtem_ray.dataset.micrograph_files import MicrographError
from hrtem_ray.spec.dataset import DatasetSpec
from hrtem_ray.spec.types import output_gpts
from hrtem_ray.store import conditional, storage

__all__ = [
    "IMPORTED_DIR",
    "SHARD_PREFIX",
    "DomainState",
    "assign_splits",
    "claim_path",
    "create_claim",
    "domain_files",
    "domain_problems",
    "grid_changes",
    "input_differences",
    "read_domain",
    "read_domains",
    "record_path",
    "shard_key",
    "tile_grid",
    "utc_now",
    "write_record",
]

#: Folder of the claims and domain records in a dataset root (sorts with ``_manifest``).
IMPORTED_DIR = "_imported"
#: Prefix of every imported shard key (a simulated key starts with 8 hex digits).
SHARD_PREFIX = "imported-"
_CLAIM_SUFFIX = ".claim.json"
_RECORD_SUFFIX = ".json"


def tile_grid(spec: DatasetSpec) -> dict[str, float | int]:
    """What imported tiles depend on: the dataset's output pixel size and image size.

    >>> from hrtem_ray.spec.config import parse_dataset_spec
    >>> structures = {"cell_angstrom": 25.6, "radius_angstrom": [5, 7], "n_particles": [1, 2]}
    >>> spec = parse_dataset_spec({"defocus_nm": [0], "structures": structures,
    ...     "simulation": {"output_sampling_angstrom": 0.4}}, source="doctest")
    >>> tile_grid(spec)
    {'pixel_size_angstrom': 0.4, 'tile_px': 64}
    """
    return {
        "pixel_size_angstrom": float(spec.simulation.output_sampling_angstrom),
        "tile_px": output_gpts(spec.structures.cell_angstrom, spec.simulation),
    }


def _describe_grid(grid: Mapping[str, Any]) -> str:
    """``64 px at 0.4 Å/px``."""
    return f"{grid.get('tile_px')} px at {grid.get('pixel_size_angstrom'):g} Å/px"


def shard_key(domain: str, split: str, index: int) -> str:
    """Key of the shard of an imported domain's ``index``-th file (its manifest entry's stem)."""
    return f"{SHARD_PREFIX}{domain}-{split}-{index:05d}"


def claim_path(root: str, domain: str) -> str:
    """Where a domain's claim lives: ``_imported/<domain>.claim.json``."""
    return storage.join(root, IMPORTED_DIR, f"{domain}{_CLAIM_SUFFIX}")


def record_path(root: str, domain: str) -> str:
    """Where a domain's record lives: ``_imported/<domain>.json`` (written last)."""
    return storage.join(root, IMPORTED_DIR, f"{domain}{_RECORD_SUFFIX}")


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second with a ``Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class DomainState:
    """What a dataset root holds of one imported domain.

    Attributes
    ----------
    name
        The domain.
    claim
        Its claim (``_imported/<domain>.claim.json``), None if absent.
    record
        Its domain record (``_imported/<domain>.json``), None if absent: the import did
        not finish.
    problem
        Why a file that is there cannot be read (None when both read, or are absent).
    """

    name: str
    claim: dict[str, Any] | None = None
    record: dict[str, Any] | None = None
    problem: str | None = None

    @property
    def complete(self) -> bool:
        """The domain record is there and readable."""
        return self.record is not None and self.problem is None

    @property
    def planned_keys(self) -> list[str]:
        """The shard keys the claim (or else the record) lists."""
        source = self.claim or self.record or {}
        shards = source.get("shards")
        if not isinstance(shards, list):
            return []
        return [str(s["key"]) for s in shards if isinstance(s, dict) and "key" in s]


def _read_object(uri: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(JSON object, None)``, ``(None, None)`` if absent, ``(None, why)`` if unreadable."""
    try:
        value = storage.read_json(uri)
    except FileNotFoundError:
        return None, None
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        return None, f"{uri} is unreadable ({exc})"
    if not isinstance(value, dict) or not isinstance(value.get("shards"), list):
        return None, f"{uri} is not an hrtem-ray import file (no shards list)"
    return value, None


def read_domain(root: str, domain: str) -> DomainState:
    """The claim and record of one imported domain (both None when it was never claimed)."""
    claim, claim_problem = _read_object(claim_path(root, domain))
    record, record_problem = _read_object(record_path(root, domain))
    return DomainState(domain, claim, record, record_problem or claim_problem)


def read_domains(root: str) -> dict[str, DomainState]:
    """Every imported domain of a dataset root (claimed, complete or not), by name."""
    folder = storage.join(root, IMPORTED_DIR)
    try:
        names = storage.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    domains = set()
    for name in names:
        if name.startswith("."):
            continue  # temporary files of atomic writes, mutexes
        if name.endswith(_CLAIM_SUFFIX):
            domains.add(name[: -len(_CLAIM_SUFFIX)])
        elif name.endswith(_RECORD_SUFFIX):
            domains.add(name[: -len(_RECORD_SUFFIX)])
    return {domain: read_domain(root, domain) for domain in sorted(domains)}


def _bytes(value: Mapping[str, Any]) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")


def create_claim(root: str, claim: Mapping[str, Any]) -> bool:
    """Claim a domain: create its claim file only if none exists.

    Of any number of concurrent callers exactly one gets True
    (:func:`hrtem_ray.store.conditional.create_exclusive`: ``os.link`` locally, a
    conditional PUT on S3).
    """
    return conditional.create_exclusive(claim_path(root, str(claim["domain"])), _bytes(claim))


def write_record(root: str, record: Mapping[str, Any]) -> None:
    """Write a domain's record, atomically: from now on the domain is complete."""
    storage.write_json_atomic(record_path(root, str(record["domain"])), dict(record))


def input_differences(stored: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    """How two imports of one domain differ: their inputs and tile grids, one line each.

    Parameters
    ----------
    stored, ours
        A claim or record, and the claim this import would write.

    Returns
    -------
    list of str
        e.g. ``["pixel_size_angstrom: stored 2.0, this import 1.0", "files: ..."]``;
        empty when both import the same files the same way.
    """
    a, b = dict(stored.get("inputs") or {}), dict(ours.get("inputs") or {})
    lines = []
    for name in sorted(set(a) | set(b)):
        if a.get(name) == b.get(name):
            continue
        if name in ("files", "masks"):
            lines.append(
                f"{name}: stored {_files_text(a.get(name))}, this import {_files_text(b.get(name))}"
            )
        else:
            lines.append(f"{name}: stored {a.get(name)!r}, this import {b.get(name)!r}")
    if stored.get("grid") != ours.get("grid"):
        lines.append(
            f"tile grid: stored {_describe_grid(stored.get('grid') or {})}, "
            f"this dataset {_describe_grid(ours.get('grid') or {})}"
        )
    return lines


def _files_text(files: object) -> str:
    """``3 files (a.tif, b.tif, c.tif)`` or ``none``; names and first sha256 digits."""
    if not isinstance(files, list) or not files:
        return "none"
    names = [f"{f.get('name')} ({str(f.get('sha256'))[:8]})" for f in files if isinstance(f, dict)]
    shown = ", ".join(names[:4]) + (f", ... {len(names) - 4} more" if len(names) > 4 else "")
    return f"{len(names)} files: {shown}"


def domain_problems(root: str, grid: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Imported domains that readers must not use, with the file to blame and why.

    Parameters
    ----------
    root
        Dataset root.
    grid
        The dataset's current :func:`tile_grid`.

    Returns
    -------
    dict
        ``{domain: (path, problem)}`` for every domain that is claimed but has no record
        (an interrupted import), has an unreadable claim or record, or whose tiles are of
        another grid than the dataset's. Complete domains of the current grid are absent.
    """
    out = {}
    states = read_domains(root)
    written = _manifest_keys(root) if states else set()
    for name, state in states.items():
        if state.problem is not None:
            out[name] = (claim_path(root, name), f"imported domain {name!r}: {state.problem}")
        elif state.record is None:
            keys = state.planned_keys
            done = sum(k in written for k in keys)
            out[name] = (
                claim_path(root, name),
                f"imported domain {name!r} is incomplete: {done} of {len(keys)} files imported and "
                "no domain record (the import was interrupted); rerun the same `hrtem-ray "
                "import` command to complete it",
            )
        elif state.record.get("grid") != dict(grid):
            out[name] = (
                record_path(root, name),
                f"imported domain {name!r} has tiles of {_describe_grid(state.record['grid'])}, "
                f"the dataset's images are now {_describe_grid(grid)}; import its files again",
            )
    return out


def grid_changes(root: str, spec: DatasetSpec) -> list[str]:
    """Why ``spec`` cannot replace a dataset root's spec without invalidating imported domains.

    Returns
    -------
    list of str
        One line per imported domain (claimed, complete or not) whose tiles ``spec``
        would invalidate: its grid differs from ``spec``'s (output pixel size or image
        size), or ``spec`` simulates a domain of the same name. Empty when every imported
        domain carries over.
    """
    grid = tile_grid(spec)
    lines = []
    for name, state in read_domains(root).items():
        stored = (state.record or state.claim or {}).get("grid")
        if name in spec.domains:
            lines.append(
                f"imported domain {name!r}: the spec simulates a domain of the same name; "
                "rename the spec's domain (or import the files under another name)"
            )
        elif stored is not None and stored != grid:
            lines.append(
                f"imported domain {name!r}: its tiles are {_describe_grid(stored)}, this spec's "
                f"images {_describe_grid(grid)} (dataset.simulation.output_sampling_angstrom, "
                "dataset.structures.cell_angstrom)"
            )
    return lines


def _manifest_keys(root: str) -> set[str]:
    """Keys of the manifest entries in a dataset root (``_manifest/<key>.json``)."""
    try:
        names = storage.listdir(storage.join(root, "_manifest"))
    except (FileNotFoundError, NotADirectoryError):
        return set()
    return {n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith(".")}


def domain_files(root: str, domain: str) -> list[str]:
    """Every file of an imported domain: its record, its claim, its shards' manifest entries
    and Parquet files (those that exist), e.g. to quarantine the whole domain."""
    state = read_domain(root, domain)
    paths = [record_path(root, domain), claim_path(root, domain)]
    manifest = storage.join(root, "_manifest")
    keys = set(state.planned_keys) | {
        str(s.get("key")) for s in (state.record or {}).get("shards", []) if isinstance(s, dict)
    }
    try:
        names = storage.listdir(manifest)
    except (FileNotFoundError, NotADirectoryError):
        names = []
    for name in names:
        if not (name.startswith(SHARD_PREFIX) and name.endswith(".json")):
            continue
        key = name[: -len(".json")]
        entry_path = storage.join(manifest, name)
        entry, _ = _read_entry(entry_path)
        record = (entry or {}).get("imported")
        if key not in keys and not (isinstance(record, dict) and record.get("domain") == domain):
            continue
        paths.append(entry_path)
        for info in _entry_files(entry):
            paths.append(storage.join(root, info))
    return [p for p in dict.fromkeys(paths) if storage.exists(p)]


def _read_entry(uri: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        value = storage.read_json(uri)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        return None, str(exc)
    return (value, None) if isinstance(value, dict) else (None, "not a JSON object")


def _entry_files(entry: Mapping[str, Any] | None) -> Iterable[str]:
    """Relative paths of a manifest entry's files that stay inside the root."""
    files = (entry or {}).get("files")
    if not isinstance(files, dict):
        return []
    out = []
    for info in files.values():
        path = info.get("path") if isinstance(info, dict) else None
        if isinstance(path, str) and not path.startswith("/") and ".." not in path.split("/"):
            out.append(posixpath.normpath(path))
    return out


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
