"""The exit-wave store: every structure's cropped exit waves, kept next to its dataset.

Multislice is almost all of the simulation cost (about a second per structure at
laptop settings, 75-87 s at the paper's, against about 1 ms per defocus for the
imaging). The store keeps, per structure, what every imaging domain is computed
from (:class:`~hrtem_ray.spec.types.StructureWaves`): the exit wave of every
frozen-phonon configuration of the full structure and of the particles alone,
Fourier-cropped to the output grid, and the calibrated zero, so that a new imaging
domain (defocus, dose, focal spread, Cs, a coarser output sampling) needs no
multislice (:func:`hrtem_ray.physics.simulate.images_from_waves`).

Layout under the dataset root, one file per shard of structures::

    waves/<key>.parquet              one row per structure
    waves/_manifest/<key>.json       written last: rows, bytes, sha256 of the file

``<key>`` starts with the first 8 hex digits of the group's
:meth:`~hrtem_ray.spec.dataset.DatasetSpec.waves_hash`, so waves of other multislice
settings never mix. Both files are written atomically (temporary file, then
rename; one PUT on S3) and the manifest entry last, so a killed write leaves no
entry, and a file without a matching entry is never read: :func:`read_waves`
returns None and the shard's multislice runs again.

Checking the store
------------------
:func:`verify_waves` (``hrtem-ray check``) compares every shard's file with its manifest
entry (size, then sha256) and lists the damaged ones; ``--repair`` quarantines the file
and its entry, and the next simulation runs those structures' multislice again, since it
writes every wave shard without a complete entry (:func:`waves_complete`: the entry, and a
file of its size) while ``keep_exit_waves`` is on.

Why Parquet, not Zarr
---------------------
One shard is one object written in one atomic step, with the same storage layer
(local, ``file://``, ``s3://``), the same write-then-rename and the same sha256 in
a manifest as the image shards. A Zarr store is a directory of chunk files plus
metadata: it cannot be renamed into place atomically on an object store, a killed
write leaves chunks that look like data, and checksums would need a scheme of
their own. Exit waves are read whole per shard (never sliced), so Zarr's chunked
partial reads buy nothing here. complex64 is stored as float32 ``(..., 2)``
(real, imaginary) in an Arrow ``fixed_shape_tensor`` column: exact round trip.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hrtem_ray.spec.types import StructureWaves
from hrtem_ray.store import storage
from hrtem_ray.store.digest import sha256_file

__all__ = [
    "MANIFEST_DIR",
    "WAVES_DIR",
    "StoredStructure",
    "WaveProblem",
    "WaveStoreWarning",
    "entry_path",
    "listed_keys",
    "read_waves",
    "stored_bytes",
    "verify_waves",
    "waves_complete",
    "waves_file",
    "write_waves",
]

#: The store's folder in a dataset root (named to sort after the ``study=`` image shards).
WAVES_DIR = "waves"
MANIFEST_DIR = "_manifest"


class WaveStoreWarning(UserWarning):
    """A shard of the exit-wave store is damaged or incomplete; its multislice runs again."""


@dataclass(frozen=True)
class StoredStructure:
    """One structure of a wave shard: its index in the split, its seed and its waves."""

    index: int
    seed: int
    waves: StructureWaves


def waves_file(root: str, key: str) -> str:
    """URI of a wave shard's Parquet file."""
    return storage.join(root, WAVES_DIR, f"{key}.parquet")


def entry_path(root: str, key: str) -> str:
    """URI of a wave shard's manifest entry (written after its file)."""
    return storage.join(root, WAVES_DIR, MANIFEST_DIR, f"{key}.json")


def _complex_column(arrays: Sequence[np.ndarray]) -> pa.Array:
    """complex64 arrays of one shape as a float32 ``(..., 2)`` fixed-shape tensor column."""
    stacked = np.stack([np.ascontiguousarray(a, np.complex64) for a in arrays])
    return pa.FixedShapeTensorArray.from_numpy_ndarray(
        stacked.view(np.float32).reshape(stacked.shape + (2,))
    )


def _complex_from(column: pa.ChunkedArray) -> np.ndarray:
    floats = np.ascontiguousarray(column.combine_chunks().to_numpy_ndarray(), np.float32)
    return floats.view(np.complex64)[..., 0]


def _table(structures: Sequence[StoredStructure]) -> pa.Table:
    waves = [s.waves for s in structures]
    table = pa.table(
        {
            "index": pa.array([s.index for s in structures], pa.int64()),
            "seed": pa.array([s.seed for s in structures], pa.int64()),
            "cell_angstrom": [w.cell_angstrom for w in waves],
            "lattice": [w.lattice for w in waves],
            "n_particles": pa.array([w.n_particles for w in waves], pa.int64()),
            "exit_depth_min_angstrom": [w.exit_depths_angstrom[0] for w in waves],
            "exit_depth_max_angstrom": [w.exit_depths_angstrom[1] for w in waves],
            "zero_defocus_angstrom": pa.array(
                [w.zero_defocus_angstrom for w in waves], pa.float64()
            ),
            "zero_key": [w.zero_key for w in waves],
        }
    )
    table = table.append_column("full_spectra", _complex_column([w.full_spectra for w in waves]))
    return table.append_column(
        "particle_spectra", _complex_column([w.particle_spectra for w in waves])
    )


def _structures(table: pa.Table) -> list[StoredStructure]:
    full = _complex_from(table.column("full_spectra"))
    alone = _complex_from(table.column("particle_spectra"))
    rows = table.drop_columns(["full_spectra", "particle_spectra"]).to_pylist()
    return [
        StoredStructure(
            index=row["index"],
            seed=row["seed"],
            waves=StructureWaves(
                full_spectra=full[i],
                particle_spectra=alone[i],
                cell_angstrom=row["cell_angstrom"],
                lattice=row["lattice"],
                n_particles=row["n_particles"],
                exit_depths_angstrom=(
                    row["exit_depth_min_angstrom"],
                    row["exit_depth_max_angstrom"],
                ),
                zero_defocus_angstrom=row["zero_defocus_angstrom"],
                zero_key=row["zero_key"],
            ),
        )
        for i, row in enumerate(rows)
    ]


def write_waves(root: str, key: str, waves_hash: str, structures: Sequence[StoredStructure]) -> int:
    """Store one shard of waves: the Parquet file, then its manifest entry (each atomic).

    Parameters
    ----------
    root
        Dataset root.
    key
        Shard key (starts with ``waves_hash[:8]``).
    waves_hash
        :meth:`~hrtem_ray.spec.dataset.DatasetSpec.waves_hash` of the shard's group.
    structures
        The shard's structures, in index order.

    Returns
    -------
    int
        Bytes of the Parquet file.
    """
    sink = pa.BufferOutputStream()
    # No dictionary encoding: on float spectra it only adds pages (measured 1.46x the
    # raw complex64 bytes with it, 0.99x without; snappy gains nothing on them either).
    pq.write_table(_table(structures), sink, use_dictionary=False)
    payload = sink.getvalue().to_pybytes()
    storage.write_bytes_atomic(waves_file(root, key), payload)
    entry = {
        "waves_hash": waves_hash,
        "key": key,
        "indices": [s.index for s in structures],
        "rows": len(structures),
        "bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    storage.write_json_atomic(entry_path(root, key), entry)
    return len(payload)


def _entry(root: str, key: str) -> dict | None:
    path = entry_path(root, key)
    if not storage.exists(path):
        return None
    try:
        entry = storage.read_json(path)
    except (ValueError, UnicodeDecodeError, OSError):
        return None
    return entry if isinstance(entry, dict) else None


def read_waves(
    root: str, key: str, waves_hash: str, indices: Sequence[int]
) -> list[StoredStructure] | None:
    """The stored structures of one shard, or None where the shard is not complete.

    None (with a :class:`WaveStoreWarning` when something is there but wrong) when
    the manifest entry is missing, unreadable or of other waves or indices, or the
    file differs from its recorded size or sha256: the caller runs the multislice
    again and rewrites the shard.
    """
    entry = _entry(root, key)
    if entry is None:
        return None
    uri = waves_file(root, key)
    problem = None
    if entry.get("waves_hash") != waves_hash or entry.get("indices") != list(indices):
        problem = "manifest entry of other waves or structures"
    else:
        try:
            payload = storage.read_bytes(uri)
        except (FileNotFoundError, OSError):
            payload = None
        if payload is None or len(payload) != entry.get("bytes"):
            problem = "missing, or its size differs from the manifest"
        elif hashlib.sha256(payload).hexdigest() != entry.get("sha256"):
            problem = "sha256 differs from the manifest"
    if problem is not None:
        warnings.warn(
            f"exit-wave shard {uri}: {problem}; running its multislice again",
            WaveStoreWarning,
            stacklevel=2,
        )
        return None
    return _structures(pq.read_table(pa.BufferReader(payload)))


def stored_bytes(root: str, keys: Sequence[str]) -> int:
    """Bytes of the complete wave shards among ``keys`` (from their manifest entries)."""
    entries = [_entry(root, key) for key in keys]
    return sum(int(e.get("bytes", 0)) for e in entries if e is not None)


@dataclass(frozen=True)
class WaveProblem:
    """A wave shard whose manifest entry or file is damaged (see :func:`verify_waves`).

    ``path`` is the damaged file, or the manifest entry when that is unreadable.
    """

    key: str
    path: str
    problem: str


def listed_keys(root: str) -> list[str]:
    """Keys of the wave shards with a manifest entry."""
    folder = storage.join(root, WAVES_DIR, MANIFEST_DIR)
    try:
        names = storage.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith(".")]


def _shard_problem(root: str, key: str, entry: object, *, digest: bool) -> WaveProblem | None:
    """What is wrong with one listed wave shard (size always, sha256 with ``digest``)."""
    import pyarrow.fs as pafs

    uri = waves_file(root, key)
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("bytes"), int)
        or not isinstance(entry.get("sha256"), str)
    ):
        return WaveProblem(key, entry_path(root, key), "manifest entry without bytes and sha256")
    loc = storage.resolve(uri)
    meta = loc.fs.get_file_info(loc.path)
    if meta.type != pafs.FileType.File:
        return WaveProblem(key, uri, "missing")
    if meta.size != entry["bytes"]:
        return WaveProblem(key, uri, f"{meta.size} bytes, the manifest records {entry['bytes']}")
    if digest and sha256_file(uri) != entry["sha256"]:
        return WaveProblem(key, uri, "sha256 differs from the manifest")
    return None


def verify_waves(root: str) -> list[WaveProblem]:
    """Every damaged shard of a dataset root's exit-wave store, without changing anything.

    Returns
    -------
    list of WaveProblem
        Unreadable manifest entries (``path`` is the entry), then files that are missing
        or differ from the recorded size or sha256 (``path`` is the file). Empty when the
        store is intact or absent. A file without an entry (an interrupted write) is no
        problem: it is never read, and written again.
    """
    problems = []
    for key in listed_keys(root):
        try:
            entry = storage.read_json(entry_path(root, key))
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            problems.append(
                WaveProblem(key, entry_path(root, key), f"unreadable manifest entry ({exc})")
            )
            continue
        problem = _shard_problem(root, key, entry, digest=True)
        if problem is not None:
            problems.append(problem)
    return problems


def waves_complete(root: str, key: str) -> bool:
    """Whether a wave shard has a readable manifest entry and a file of the recorded size
    (one metadata request; the sha256 is checked when the shard is read, and by
    :func:`verify_waves`)."""
    entry = _entry(root, key)
    return entry is not None and _shard_problem(root, key, entry, digest=False) is None
