"""Simulated datasets: Ray Data simulation into Parquet shards, and a reader without Ray.

Layout of a dataset root (a local directory or a storage URI)::

    dataset.json                                   the spec and its content hash
    study=<axis>/domain=<label>/split=<split>/<shard>.parquet
    _manifest/<shard>.json                         written last: the shard is complete

One Parquet row is one image: ``image`` and ``mask`` as Arrow
``fixed_shape_tensor`` float32 columns plus the metadata columns of
:data:`ROW_COLUMNS`. A shard is a run of consecutive structures of one split;
its files are written first and its manifest entry last, each atomically, so a
killed run never leaves a shard that looks complete, and a rerun only
simulates the shards without a manifest entry.
"""

from __future__ import annotations

import hashlib
import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hrtem_ray import storage
from hrtem_ray.config import SPLITS, DatasetSpec, DomainGroup
from hrtem_ray.simulate import simulate_structure, warm_fftw_wisdom
from hrtem_ray.structures import random_structure

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
    "lattice",
    "n_particles",
    "pixel_size_angstrom",
)


class DatasetError(RuntimeError):
    """A dataset root is missing, incomplete or was written from another spec."""


@dataclass(frozen=True)
class ShardTask:
    """A run of consecutive structures ``[start, stop)`` of one group and split."""

    key: str
    group: str
    split: str
    start: int
    stop: int


@dataclass(frozen=True)
class SimulationSummary:
    """What :func:`simulate_dataset` did."""

    root: str
    images: int
    shards: int
    shards_written: int
    seconds: float

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


def plan_shards(spec: DatasetSpec) -> list[ShardTask]:
    """Every shard of a dataset, in a fixed order."""
    tag = spec.content_hash()[:8]
    tasks = []
    for group in spec.groups():
        for split in SPLITS:
            n = spec.images_per_domain(split)
            for start in range(0, n, spec.structures_per_shard):
                stop = min(n, start + spec.structures_per_shard)
                safe_group = group.name.replace("/", "_")
                key = f"{tag}-{safe_group}-{split}-{start:05d}-{stop:05d}"
                tasks.append(ShardTask(key, group.name, split, start, stop))
    return tasks


def _group(spec: DatasetSpec, name: str) -> DomainGroup:
    return next(g for g in spec.groups() if g.name == name)


def _tensor_column(arrays: np.ndarray) -> pa.Array:
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(arrays, np.float32))


def simulate_shard(spec: DatasetSpec, task: ShardTask) -> dict[str, pa.Table]:
    """Simulate the structures of one shard: one table of rows per domain (no Ray)."""
    group = _group(spec, task.group)
    rows: dict[str, list[dict]] = {c.domain: [] for c in group.conditions}
    for index in range(task.start, task.stop):
        seed = structure_seed(spec.seed, task.group, task.split, index)
        structure = random_structure(group.structures, seed)
        result = simulate_structure(structure, spec.simulation, group.conditions, seed)
        for k, cond in enumerate(group.conditions):
            rows[cond.domain].append(
                {
                    "study": spec.study,
                    "domain": cond.domain,
                    "split": task.split,
                    "structure_id": structure_id(task.group, task.split, index),
                    "structure_seed": seed,
                    "defocus_nm": float(result.defocus_nm[k]),
                    "nominal_defocus_nm": float(cond.defocus_nm),
                    "zero_defocus_angstrom": float(result.zero_defocus_angstrom),
                    "dose_e_per_angstrom2": cond.dose_e_per_angstrom2,
                    "lattice": structure.lattice,
                    "n_particles": int(structure.n_particles),
                    "pixel_size_angstrom": float(result.pixel_size_angstrom),
                    "image": result.images[k],
                    "mask": result.mask,
                }
            )
    return {domain: _rows_to_table(domain_rows) for domain, domain_rows in rows.items()}


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


def shard_path(root: str, study: str, domain: str, split: str, key: str) -> str:
    """Where one domain's file of a shard lives."""
    return storage.join(
        root, f"study={study}", f"domain={domain}", f"split={split}", f"{key}.parquet"
    )


def write_shard(root: str, spec: DatasetSpec, task: ShardTask, tables: dict[str, pa.Table]) -> int:
    """Write a shard's files, then its manifest entry (each atomically); returns images written."""
    files = {}
    for domain, table in tables.items():
        path = shard_path(root, spec.study, domain, task.split, task.key)
        storage.write_parquet_atomic(table, path)
        files[domain] = {"path": path.removeprefix(root).lstrip("/"), "rows": table.num_rows}
    entry = {"task": asdict(task), "files": files, "node_id": current_node_id()}
    storage.write_json_atomic(storage.join(root, MANIFEST_DIR, f"{task.key}.json"), entry)
    return sum(t.num_rows for t in tables.values())


def current_node_id() -> str:
    """The Ray node id of this process, or the host name outside a Ray session.

    Recorded in each shard's manifest entry, so a multi-node run shows where
    every shard was simulated.
    """
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - no Ray, or no runtime context: fall back to the host
        pass
    return os.uname().nodename


def simulate_and_write(spec: DatasetSpec, root: str, task: ShardTask) -> dict:
    """Simulate and write one shard; returns a small record for progress reporting."""
    start = time.perf_counter()
    started_at = time.time()
    n_images = write_shard(root, spec, task, simulate_shard(spec, task))
    return {
        "key": task.key,
        "started_at": started_at,
        "images": n_images,
        "seconds": time.perf_counter() - start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pid": os.getpid(),
    }


def completed_shards(root: str) -> set[str]:
    """Keys of the shards whose manifest entry exists."""
    manifest = storage.join(root, MANIFEST_DIR)
    if not storage.exists(manifest):
        return set()
    return {Path(name).stem for name in storage.listdir(manifest) if name.endswith(".json")}


def prepare_root(spec: DatasetSpec, root: str) -> None:
    """Create a dataset root or check that an existing one was written from the same spec."""
    spec_path = storage.join(root, SPEC_FILE)
    if storage.exists(spec_path):
        stored = storage.read_json(spec_path)
        if stored.get("content_hash") != spec.content_hash():
            raise DatasetError(
                f"{root} holds a dataset simulated from another spec "
                f"(hash {stored.get('content_hash')} != {spec.content_hash()}); "
                "choose another output directory or delete it"
            )
        return
    storage.makedirs(root)
    payload = {"content_hash": spec.content_hash(), "spec": spec.model_dump(mode="json")}
    storage.write_json_atomic(spec_path, payload)


def _simulate_batch(batch: dict[str, np.ndarray], spec_json: str, root: str) -> dict[str, list]:
    spec = DatasetSpec.model_validate_json(spec_json)
    records = [
        simulate_and_write(
            spec,
            root,
            ShardTask(
                str(batch["key"][i]),
                str(batch["group"][i]),
                str(batch["split"][i]),
                int(batch["start"][i]),
                int(batch["stop"][i]),
            ),
        )
        for i in range(len(batch["key"]))
    ]
    return {name: [r[name] for r in records] for name in records[0]}


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

    Uses the running Ray session (see :func:`hrtem_ray.runtime.ray_session`).
    Idempotent: shards with a manifest entry are skipped, so rerunning the same
    spec writes nothing and an interrupted run is completed.
    """
    import ray
    from ray.data import DataContext

    root = str(root)
    prepare_root(spec, root)
    tasks = plan_shards(spec)
    done = completed_shards(root)
    todo = [t for t in tasks if t.key not in done]
    start = time.perf_counter()
    images = 0
    if todo:
        # Plan the FFTs once here so that every worker on this node loads the same wisdom.
        for cell in sorted({g.structures.cell_angstrom for g in spec.groups()}):
            warm_fftw_wisdom(cell, spec.simulation)
        items = [asdict(t) for t in todo]
        with _simulation_data_context(DataContext.get_current()):
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                _simulate_batch,
                batch_size=1,
                num_cpus=cpus_per_task,
                fn_kwargs={"spec_json": spec.model_dump_json(), "root": root},
            )
            for record in ds.iter_rows():
                images += int(record["images"])
                if on_shard is not None:
                    on_shard(dict(record))
    return SimulationSummary(
        root=root,
        images=images,
        shards=len(tasks),
        shards_written=len(todo),
        seconds=time.perf_counter() - start,
    )


def simulate_dataset_serial(spec: DatasetSpec, root: str | Path) -> SimulationSummary:
    """The same as :func:`simulate_dataset` in a plain loop in this process (no Ray)."""
    root = str(root)
    prepare_root(spec, root)
    tasks = plan_shards(spec)
    done = completed_shards(root)
    start = time.perf_counter()
    todo = [t for t in tasks if t.key not in done]
    images = sum(simulate_and_write(spec, root, t)["images"] for t in todo)
    return SimulationSummary(root, images, len(tasks), len(todo), time.perf_counter() - start)


# --- reading, without Ray -------------------------------------------------------------------


def dataset_spec(root: str | Path) -> DatasetSpec:
    """The spec a dataset root was simulated from."""
    spec_path = storage.join(str(root), SPEC_FILE)
    if not storage.exists(spec_path):
        raise DatasetError(f"no dataset at {root} (missing {SPEC_FILE}); run `hrtem-ray simulate`")
    return DatasetSpec.model_validate(storage.read_json(spec_path)["spec"])


def shard_files(
    root: str | Path, domains: Iterable[str] | None = None, split: str | None = None
) -> list[str]:
    """Files of the complete shards (those with a manifest entry), optionally selected."""
    root = str(root)
    wanted = None if domains is None else set(domains)
    files = []
    for key in sorted(completed_shards(root)):
        entry = storage.read_json(storage.join(root, MANIFEST_DIR, f"{key}.json"))
        if split is not None and entry["task"]["split"] != split:
            continue
        for domain, info in entry["files"].items():
            if wanted is None or domain in wanted:
                files.append(storage.join(root, info["path"]))
    return files


def read_table(
    root: str | Path, domains: Iterable[str] | None = None, split: str | None = None
) -> pa.Table:
    """Rows of the complete shards as one Arrow table, ordered by domain and structure id."""
    files = shard_files(root, domains, split)
    if not files:
        return pa.table({})
    fs = storage.resolve(str(root)).fs
    paths = [storage.resolve(f).path for f in files]
    table = pa.concat_tables([pq.read_table(p, filesystem=fs) for p in paths])
    return table.sort_by([("domain", "ascending"), ("structure_id", "ascending")])


def _tensor_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    return column.combine_chunks().to_numpy_ndarray().astype(np.float32, copy=False)


def read_images(
    root: str | Path, domain: str, split: str = "train", n: int | None = None
) -> ImageSet:
    """The first ``n`` images (by structure id) of a domain and split.

    Parameters
    ----------
    root
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
    table = read_table(root, [domain], split)
    available = table.num_rows
    if available == 0 or (n is not None and available < n):
        raise DatasetError(
            f"{root}: domain {domain!r} split {split!r} has {available} images, {n or 'some'} requested"
        )
    if n is not None:
        table = table.slice(0, n)
    return ImageSet(
        images=_tensor_to_numpy(table.column("image")),
        masks=_tensor_to_numpy(table.column("mask")),
        structure_ids=table.column("structure_id").to_pylist(),
        defocus_nm=table.column("defocus_nm").to_numpy(),
    )


def summarize(root: str | Path) -> dict[str, dict[str, int]]:
    """Images per domain and split in the complete shards of a dataset."""
    counts: dict[str, dict[str, int]] = {}
    root = str(root)
    for key in completed_shards(root):
        entry = storage.read_json(storage.join(root, MANIFEST_DIR, f"{key}.json"))
        for domain, info in entry["files"].items():
            split_counts = counts.setdefault(domain, {})
            split = entry["task"]["split"]
            split_counts[split] = split_counts.get(split, 0) + int(info["rows"])
    return counts
