"""Simulating a dataset: Ray Data runs the multislice and imaging into Parquet shards.

:func:`simulate_dataset` claims the root (:func:`hrtem_ray.dataset.claim.prepare_root`),
lists the shards still to write (:func:`hrtem_ray.dataset.manifest.shards_to_simulate`),
gathers them into :class:`SimulationUnit` s (one run of structures of one group and split,
imaged in every listed domain) and runs the units on Ray Data, one task each;
:func:`simulate_dataset_serial` does the same in a plain loop. A unit's exit waves are read
from the exit-wave store (:mod:`hrtem_ray.dataset.waves`) when they are there, else simulated
(and stored); every domain's images are written as one shard
(:func:`hrtem_ray.dataset.manifest.write_shard`). Every structure has its own seed
(:func:`structure_seed`), so a rerun of any shard is bit-identical. While
``keep_exit_waves`` is on, a run of structures whose wave shard is missing or damaged
(quarantined by ``hrtem-ray check --repair``, or truncated) gets a unit of its own even
when all its image shards are there, so that the store is whole again (:func:`units_to_run`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hrtem_ray.cluster.runtime import node_id
from hrtem_ray.dataset.claim import prepare_root
from hrtem_ray.dataset.manifest import (
    ROW_COLUMNS,
    ShardTask,
    planned_hashes,
    shards_to_simulate,
    write_shard,
)
from hrtem_ray.dataset.waves import StoredStructure, read_waves, waves_complete, write_waves
from hrtem_ray.physics.particles import check_particle_shapes
from hrtem_ray.physics.simulate import (
    images_from_waves,
    structure_waves,
    warm_fftw_wisdom,
    with_calibrated_zero,
)
from hrtem_ray.physics.structures import random_structure
from hrtem_ray.spec.dataset import DatasetSpec, check_resources
from hrtem_ray.spec.types import ImagingCondition, StructureParams, output_gpts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DomainShard:
    """One domain's shard of a :class:`SimulationUnit`: where it goes and how it is imaged.

    Attributes
    ----------
    task : ShardTask
        The shard's key, domain and split (recorded in its manifest entry).
    images_hash : str
        The domain's :meth:`~hrtem_ray.spec.dataset.DatasetSpec.images_hash`.
    condition : ImagingCondition
        The domain's imaging, from :meth:`~hrtem_ray.spec.dataset.DatasetSpec.groups`.
    """

    task: ShardTask
    images_hash: str
    condition: ImagingCondition


@dataclass(frozen=True)
class SimulationUnit:
    """The structures ``[start, stop)`` of one group and split, and the domains to image.

    The unit of work of the simulation: its exit waves are read from the store or
    simulated once, then imaged in every domain of ``shards``. Built once from the
    spec by :func:`simulation_units`, it carries everything derived from the spec
    that a worker needs (the group's structure parameters, the exit-wave shard's key
    and hash, each domain's shard and imaging condition), so that the parameters go
    one way, spec to worker, and no worker rebuilds the spec's groups.
    """

    group: str
    split: str
    start: int
    stop: int
    structures: StructureParams
    waves_key: str
    waves_hash: str
    shards: tuple[DomainShard, ...]

    @property
    def domains(self) -> tuple[str, ...]:
        """The domains imaged, in the order of the dataset's conditions."""
        return tuple(shard.task.domain for shard in self.shards)


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
    particles_drawn: int = 0
    particles_placed: int = 0
    structures_short: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    @property
    def placement_short(self) -> bool:
        """Whether more than :data:`PLACEMENT_SHORT_SHARE` of the drawn particles found no spot."""
        missing = self.particles_drawn - self.particles_placed
        return missing > PLACEMENT_SHORT_SHARE * self.particles_drawn

    def placement_warning(self, spec: DatasetSpec) -> str | None:
        """A line when simulated structures hold fewer particles than drawn, else ``None``.

        :func:`~hrtem_ray.physics.structures.random_structure` drops a drawn particle that
        finds no free spot; a spec whose count can never fit is refused when it is read
        (:func:`~hrtem_ray.spec.types.max_particles_fit`), this says how many fewer the
        random placement managed.
        """
        if not self.structures_short:
            return None
        params = spec.structures
        return (
            f"dataset.structures.n_particles {list(params.n_particles)}: "
            f"{self.structures_short} of {self.structures_simulated} structures simulated hold "
            f"fewer particles than drawn ({self.particles_placed} of {self.particles_drawn} "
            f"particles placed): no free spot in max_placement_attempts "
            f"({params.max_placement_attempts}) tries; a larger cell_angstrom, fewer "
            "n_particles, a smaller radius_angstrom or min_separation_angstrom places them all"
        )


#: The share of drawn particles left out (no free spot) above which ``simulate`` warns;
#: below it the same line is logged at INFO: sequential random placement leaves a few out
#: of a crowded cell whatever the count (e.g. 2% for 1-2 particles of 6-10 A radius 1 nm
#: apart in a 51.2 A cell), while a count that the cell cannot hold loses far more.
PLACEMENT_SHORT_SHARE = 0.05

#: The counts of a shard record (:func:`simulate_and_write`) that a summary adds up.
SUMMED_COUNTS = (
    "images",
    "structures_from_store",
    "structures_simulated",
    "particles_drawn",
    "particles_placed",
    "structures_short",
)


def structure_seed(dataset_seed: int, group: str, split: str, index: int) -> int:
    """Seed of one structure: a stable hash of its position in the dataset."""
    text = f"{dataset_seed}/{group}/{split}/{index}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little")


def structure_id(group: str, split: str, index: int) -> str:
    """Sortable id of one structure, e.g. ``train-00012`` or ``CdSe-small/train-00012``."""
    stem = f"{split}-{index:05d}"
    return stem if group == "all" else f"{group}/{stem}"


def waves_key(waves_hash: str, group: str, split: str, start: int, stop: int) -> str:
    """Key of the exit-wave shard of a run of structures (:mod:`hrtem_ray.dataset.waves`)."""
    safe_group = group.replace("/", "_")
    return f"{waves_hash[:8]}-{safe_group}-{split}-{start:05d}-{stop:05d}"


def simulation_units(spec: DatasetSpec, tasks: Iterable[ShardTask]) -> list[SimulationUnit]:
    """The image shards to write, gathered per run of structures (in first-seen order).

    Parameters
    ----------
    spec
        The dataset: its groups, conditions and hashes are derived here, once.
    tasks
        Shards of ``spec`` (:func:`~hrtem_ray.dataset.manifest.plan_shards`), e.g. those
        still to simulate.
    """
    groups = {group.name: group for group in spec.groups()}
    conditions = {(g.name, c.domain): c for g in groups.values() for c in g.conditions}
    images_hashes = {key: images_hash for key, (_, images_hash) in planned_hashes(spec).items()}
    waves_hashes: dict[str, str] = {}
    runs: dict[tuple[str, str, int, int], list[DomainShard]] = {}
    for task in tasks:
        shard = DomainShard(task, images_hashes[task.key], conditions[task.group, task.domain])
        runs.setdefault((task.group, task.split, task.start, task.stop), []).append(shard)
        if task.group not in waves_hashes:
            waves_hashes[task.group] = spec.waves_hash(task.group)
    return [
        SimulationUnit(
            *where,
            structures=groups[where[0]].structures,
            waves_key=waves_key(waves_hashes[where[0]], *where),
            waves_hash=waves_hashes[where[0]],
            shards=tuple(shards),
        )
        for where, shards in runs.items()
    ]


def units_to_run(
    spec: DatasetSpec, root: str, tasks: Sequence[ShardTask], todo: Sequence[ShardTask]
) -> list[SimulationUnit]:
    """The units to run: those of the shards to write (``todo``), then, while
    ``keep_exit_waves`` is on, one per run of structures of ``tasks`` whose wave shard is
    not complete (:func:`hrtem_ray.dataset.waves.waves_complete`), with no image shards:
    its multislice runs and its waves are stored again."""
    units = simulation_units(spec, todo)
    if not spec.keep_exit_waves:
        return units
    covered = {unit.waves_key for unit in units}
    for unit in simulation_units(spec, tasks):
        if unit.waves_key not in covered and not waves_complete(root, unit.waves_key):
            units.append(replace(unit, shards=()))
            covered.add(unit.waves_key)
    return units


def _tensor_column(arrays: np.ndarray) -> pa.Array:
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(arrays, np.float32))


def unit_waves(
    spec: DatasetSpec, root: str, unit: SimulationUnit
) -> tuple[list[StoredStructure], bool, list[tuple[int, int]]]:
    """The exit waves of a unit's structures, whether they came from the store, and the
    particles ``(drawn, placed)`` of each structure simulated (none from the store).

    Reads the unit's wave shard when it is complete and holds the output band;
    otherwise runs the multislice (and stores the waves if ``keep_exit_waves``).
    """
    indices = range(unit.start, unit.stop)
    stored = read_waves(root, unit.waves_key, unit.waves_hash, list(indices))
    n_out = output_gpts(unit.structures.cell_angstrom, spec.simulation)
    if stored is not None and all(s.waves.full_spectra.shape[-1] >= n_out for s in stored):
        return stored, True, []
    structures, particles = [], []
    for index in indices:
        seed = structure_seed(spec.seed, unit.group, unit.split, index)
        structure = random_structure(unit.structures, seed)
        particles.append((structure.n_particles_drawn, structure.n_particles))
        waves = structure_waves(structure, spec.simulation, seed)
        structures.append(
            StoredStructure(index, seed, with_calibrated_zero(waves, spec.simulation))
        )
    if spec.keep_exit_waves:
        write_waves(root, unit.waves_key, unit.waves_hash, structures)
    return structures, False, particles


def image_unit(
    spec: DatasetSpec, unit: SimulationUnit, structures: list[StoredStructure]
) -> dict[str, pa.Table]:
    """The images of a unit's structures in its domains: one table of rows per domain."""
    conditions = [shard.condition for shard in unit.shards]
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


def simulate_and_write(spec: DatasetSpec, root: str, unit: SimulationUnit) -> dict:
    """Simulate (or read the stored waves of) one unit and write its domains' shards.

    Returns a small record for progress reporting: ``structures_from_store`` and
    ``structures_simulated`` say where its exit waves came from; ``particles_drawn``,
    ``particles_placed`` and ``structures_short`` count the particles of the structures
    simulated (see :meth:`SimulationSummary.placement_warning`).
    """
    start = time.perf_counter()
    started_at = time.time()
    structures, from_store, particles = unit_waves(spec, root, unit)
    tables = image_unit(spec, unit, structures) if unit.shards else {}
    n_images = 0
    for shard in unit.shards:
        task = shard.task
        entry = {"images_hash": shard.images_hash, "task": asdict(task), "node_id": node_id()}
        n_images += write_shard(root, spec.axis, task, tables[task.domain], entry)
    n_structures = unit.stop - unit.start
    return {
        "key": unit.waves_key,
        "started_at": started_at,
        "images": n_images,
        "structures_from_store": n_structures if from_store else 0,
        "structures_simulated": 0 if from_store else n_structures,
        "particles_drawn": sum(drawn for drawn, _ in particles),
        "particles_placed": sum(placed for _, placed in particles),
        "structures_short": sum(placed < drawn for drawn, placed in particles),
        "seconds": time.perf_counter() - start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pid": os.getpid(),
    }


def _simulate_batch(
    batch: dict[str, np.ndarray], spec: DatasetSpec, units: Sequence[SimulationUnit], root: str
) -> dict[str, list]:
    """Ray Data: simulate the units a batch names by index (``spec`` and ``units`` arrive
    pickled, as built on the driver: nothing is validated or derived again)."""
    records = [simulate_and_write(spec, root, units[int(i)]) for i in batch["unit"]]
    return {name: [r[name] for r in records] for name in records[0]}


def _log_sources(summary: SimulationSummary, spec: DatasetSpec) -> None:
    """Say where the exit waves came from (the ``hrtem_ray`` logger, shown by the CLI), and
    how many structures placed fewer particles than drawn: a warning when more than
    :data:`PLACEMENT_SHORT_SHARE` of the drawn particles were left out, else at INFO."""
    warning = summary.placement_warning(spec)
    if warning is not None:
        logger.log(logging.WARNING if summary.placement_short else logging.INFO, warning)
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
    units = units_to_run(spec, root, tasks, todo)
    start = time.perf_counter()
    totals = dict.fromkeys(SUMMED_COUNTS, 0)
    if units:
        # Plan the FFTs once here so that every worker on this node loads the same wisdom.
        for cell in sorted({g.structures.cell_angstrom for g in spec.groups()}):
            warm_fftw_wisdom(cell, spec.simulation)
        items = [{"unit": index} for index in range(len(units))]
        with _simulation_data_context(DataContext.get_current()):
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                _simulate_batch,
                batch_size=1,
                num_cpus=cpus_per_task,
                fn_kwargs={"spec": spec, "units": units, "root": root},
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
    _log_sources(summary, spec)
    return summary


def simulate_dataset_serial(spec: DatasetSpec, root: str | Path) -> SimulationSummary:
    """The same as :func:`simulate_dataset` in a plain loop in this process (no Ray).

    Raises
    ------
    SpecError
        One worker would need more memory than this machine has
        (:func:`hrtem_ray.spec.dataset.check_resources`), or a particle shape cannot be
        built or does not fit the cell (:func:`hrtem_ray.physics.particles.check_particle_shapes`);
        nothing is written.
    DatasetError
        As :func:`simulate_dataset`.
    """
    check_resources(spec)
    check_particle_shapes(spec)
    root = str(root)
    prepare_root(spec, root)
    tasks, todo = shards_to_simulate(spec, root)
    start = time.perf_counter()
    records = [
        simulate_and_write(spec, root, unit) for unit in units_to_run(spec, root, tasks, todo)
    ]
    summary = SimulationSummary(
        root=root,
        shards=len(tasks),
        shards_written=len(todo),
        seconds=time.perf_counter() - start,
        **{name: sum(int(r[name]) for r in records) for name in SUMMED_COUNTS},
    )
    _log_sources(summary, spec)
    return summary
