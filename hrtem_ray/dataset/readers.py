"""Reading a dataset's shards without Ray, abTEM or ASE: tables, images and masks, counts.

Readers see only the current dataset's complete shards: the usable entries of
:func:`hrtem_ray.dataset.manifest.manifest_entries` (simulated shards the spec in
``dataset.json`` plans, and complete imported domains). Asked for an imported domain whose
import did not finish (no domain record), they refuse it with the reason. A listed file that is missing or does
not match its manifest is refused with its name (:class:`~hrtem_ray.dataset.manifest.DatasetError`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from hrtem_ray.dataset import imported
from hrtem_ray.dataset.manifest import (
    SPEC_FILE,
    DatasetError,
    manifest_entries,
    read_record,
    stored_spec,
)
from hrtem_ray.spec.types import SPLITS
from hrtem_ray.store import storage


@dataclass
class ImageSet:
    """Images and masks of one (domain, split) selection, ordered by structure id."""

    images: np.ndarray
    masks: np.ndarray
    structure_ids: list[str]
    defocus_nm: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def _selected_files(
    root: str, domains: Iterable[str] | None, split: str | None
) -> list[tuple[str, str, int]]:
    """``(shard key, file URI, rows)`` of the current dataset's shards, optionally selected."""
    if read_record(root) is None:
        raise DatasetError(f"no dataset at {root} (missing {SPEC_FILE}); run `hrtem-ray simulate`")
    wanted = None if domains is None else set(domains)
    if wanted:
        _refuse_unusable_imports(root, wanted)
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


def _refuse_unusable_imports(root: str, domains: set[str]) -> None:
    """Raise :class:`DatasetError` if one of ``domains`` is an imported domain that readers
    must not use: an interrupted import (no domain record), or tiles of another grid."""
    record = read_record(root)
    grid = imported.tile_grid(stored_spec(record)) if record is not None else {}
    problems = imported.domain_problems(root, grid)
    for domain in sorted(domains & set(problems)):
        raise DatasetError(f"{root}: {problems[domain][1]}")


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


def drawn_rows(n_available: int, n: int, seed: int) -> np.ndarray:
    """Row numbers of ``n`` of ``n_available`` rows drawn at random with ``seed``, ascending.

    The first ``n`` of one permutation of all rows, so the draws of one seed are nested:
    the ``n`` rows of a smaller count are among those of a larger one.

    Examples
    --------
    >>> small, large = drawn_rows(100, 4, seed=3), drawn_rows(100, 8, seed=3)
    >>> set(small) <= set(large), len(large)
    (True, 8)
    """
    if not 0 <= n <= n_available:
        raise ValueError(f"n must be between 0 and {n_available}, got {n}")
    return np.sort(np.random.default_rng(seed).permutation(n_available)[:n])


def read_images(
    dataset_root: str | Path,
    domain: str,
    split: str = "train",
    n: int | None = None,
    draw_seed: int | None = None,
) -> ImageSet:
    """``n`` images of a domain and split: the first by structure id, or drawn at random.

    Parameters
    ----------
    dataset_root
        Dataset root (directory or URI).
    domain
        Domain label, e.g. ``"-10"``.
    split
        ``"train"``, ``"val"`` or ``"test"`` (:data:`~hrtem_ray.spec.types.SPLITS`).
    n
        Number of images; ``None`` for all. Fewer available raises :class:`DatasetError`.
    draw_seed
        ``None``: the first ``n`` by structure id. An integer: ``n`` drawn at random with
        this seed (:func:`drawn_rows`, nested across ``n``), returned in structure-id
        order. Ignored when ``n`` is ``None``.
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
    if n is not None and draw_seed is not None:
        table = table.take(pa.array(drawn_rows(available, n, draw_seed)))
    elif n is not None:
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
