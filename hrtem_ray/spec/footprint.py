"""What a study or a prediction needs of this machine, checked before any work starts.

Three guards, each a pure estimate compared with what the machine has, raising a
:class:`~hrtem_ray.spec.base.SpecError` with both numbers and the fields that set them:

* :func:`dataset_footprint` / :func:`check_dataset_footprint`: the bytes a dataset's
  shards and exit waves take on disk, and the memory the driver needs to plan its
  shards, against the free space of the dataset root and this machine's memory
  (``n_structures.train: 1e9`` is refused instead of growing past 6 GB);
* :func:`check_local_trial_resources`: ``resources.cpu`` / ``resources.gpu`` of one
  trial against the private local cluster's cores and GPUs (``resources.cpu: 1000``
  on 2 cores is refused instead of waiting for ever);
* :func:`available_memory_bytes` and :func:`parse_bytes`: the memory limit of
  ``hrtem-ray predict`` (:func:`hrtem_ray.inference.estimate_predict_memory_bytes`) and its
  ``--max-memory``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hrtem_ray.spec.base import SpecError
from hrtem_ray.spec.dataset import DatasetSpec, machine_memory_bytes
from hrtem_ray.spec.types import output_gpts

if TYPE_CHECKING:
    from hrtem_ray.spec.study import StudySpec

__all__ = [
    "DRIVER_BYTES_PER_SHARD",
    "DatasetFootprint",
    "available_memory_bytes",
    "check_dataset_footprint",
    "check_local_trial_resources",
    "dataset_footprint",
    "format_bytes",
    "free_disk_bytes",
    "parse_bytes",
    "stored_bytes",
]

#: Driver memory per planned shard (bytes): its task, simulation unit and Ray Data item.
#: Planning the laptop preset with 100,000 training structures (150,024 shards) peaked at
#: 670 bytes per shard (tracemalloc; Ray Data's block metadata comes on top), so 1 KiB.
DRIVER_BYTES_PER_SHARD = 1024
#: Driver memory beside the shard plan: Python, hrtem_ray, pyarrow and Ray's client, as
#: ``WORKER_BASE_MIB`` of a simulation worker.
DRIVER_BASE_BYTES = 640 * 2**20
#: Parquet bytes of an image and its mask over their raw float32 bytes: 0.72 measured on
#: the tiny test dataset (noise does not compress, masks do); the estimate takes the raw
#: size, an upper bound. The exit-wave store measured 1.02 of its raw complex64 bytes.
PARQUET_FRACTION = 1.0


def format_bytes(n_bytes: float) -> str:
    """``n_bytes`` in the largest binary unit below it, e.g. ``1.5 GiB``."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_bytes(text: str) -> int:
    """A size such as ``"8GB"``, ``"8 GiB"``, ``"512M"`` or ``"1e9"`` in bytes.

    Raises
    ------
    ValueError
        Not a positive number with one of the units B, K/KB, M/MB, G/GB, T/TB (powers of
        1000) or KiB, MiB, GiB, TiB (powers of 1024).
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or not float(match.group(1)) > 0:
        raise ValueError(
            f"{text!r} is not a size; allowed: a positive number with B, KB, MB, GB, TB "
            "(powers of 1000) or KiB, MiB, GiB, TiB, e.g. 8GB"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def available_memory_bytes() -> int:
    """Memory this machine can give a new process now: ``MemAvailable`` of ``/proc/meminfo``,
    capped by the cgroup limit (``memory.max``); :func:`machine_memory_bytes` elsewhere."""
    available = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        available = machine_memory_bytes()
    try:
        with open("/sys/fs/cgroup/memory.max") as limit:
            text = limit.read().strip()
        if text.isdigit():
            available = min(available, int(text))
    except OSError:
        pass
    return available


def free_disk_bytes(path: str) -> int | None:
    """Free bytes of the filesystem that would hold ``path`` (its nearest existing parent);
    ``None`` for a URI (``s3://``: no quota the driver can read)."""
    if "://" in path and not path.startswith("file://"):
        return None
    existing = os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            return None
        existing = parent
    return shutil.disk_usage(existing).free


@dataclass(frozen=True)
class DatasetFootprint:
    """What a dataset needs (:func:`dataset_footprint`).

    Attributes
    ----------
    images
        Images of every domain and split.
    shards
        Image shards (one per domain, split and run of ``structures_per_shard``).
    image_bytes
        Bytes of the image shards on disk (image and mask, float32; an upper bound).
    wave_bytes
        Bytes of the exit-wave store (0 without ``keep_exit_waves``).
    driver_bytes
        Memory the driver needs to plan and track the shards.
    """

    images: int
    shards: int
    image_bytes: int
    wave_bytes: int
    driver_bytes: int

    @property
    def disk_bytes(self) -> int:
        """Image shards and exit waves together."""
        return self.image_bytes + self.wave_bytes

    def line(self) -> str:
        """One line for ``--dry-run``: images, shards, disk and driver memory."""
        waves = f" + {format_bytes(self.wave_bytes)} exit waves" if self.wave_bytes else ""
        return (
            f"dataset: {self.images:,} images in {self.shards:,} shards, at most "
            f"{format_bytes(self.image_bytes)} on disk{waves}; the driver needs about "
            f"{format_bytes(self.driver_bytes)} of memory to plan them"
        )


def dataset_footprint(spec: DatasetSpec) -> DatasetFootprint:
    """The disk and driver memory a dataset needs, from its spec alone (nothing is planned).

    Per simulation group: ``structures x domains`` images of ``output_px^2`` float32
    pixels, each with its float32 mask (``8 output_px^2`` bytes; Parquet stores them
    within :data:`PARQUET_FRACTION`); the exit waves of each structure, ``2 n_phonons
    output_px^2`` complex64 values (README, "the exit-wave store"); one shard per domain,
    split and ``structures_per_shard`` structures, each costing the driver
    :data:`DRIVER_BYTES_PER_SHARD`.
    """
    counts = spec.n_structures
    structures = counts.train + counts.val + counts.test
    per_shard = spec.structures_per_shard
    shards_per_domain = sum(
        math.ceil(n / per_shard) for n in (counts.train, counts.val, counts.test)
    )
    images = shards = image_bytes = wave_bytes = 0
    for group in spec.groups():
        side = output_gpts(group.structures.cell_angstrom, spec.simulation)
        domains = len(group.conditions)
        images += structures * domains
        shards += shards_per_domain * domains
        image_bytes += int(structures * domains * 8 * side * side * PARQUET_FRACTION)
        if spec.keep_exit_waves:
            wave_bytes += structures * 2 * spec.simulation.n_phonons * side * side * 8
    driver = DRIVER_BASE_BYTES + shards * DRIVER_BYTES_PER_SHARD
    return DatasetFootprint(images, shards, image_bytes, wave_bytes, driver)


def stored_bytes(path: str) -> int:
    """Bytes of the files under a local directory (0 when it does not exist or for a URI):
    what a dataset being completed already holds."""
    if "://" in path and not path.startswith("file://"):
        return 0
    total = 0
    for folder, _, files in os.walk(os.path.expanduser(path.removeprefix("file://"))):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed while walking
                pass
    return total


def check_dataset_footprint(
    spec: DatasetSpec,
    root: str,
    *,
    memory_bytes: int | None = None,
    free_bytes: int | None = None,
) -> DatasetFootprint:
    """Refuse a dataset that cannot fit this machine's disk or the driver's memory.

    The disk must hold what is still to be written: the footprint less the bytes already
    under ``root`` (a rerun that completes a dataset needs only its missing shards).

    Parameters
    ----------
    spec
        The dataset.
    root
        Where it is written (its free space and what it holds are read; not for ``s3://``).
    memory_bytes, free_bytes
        Defaults: :func:`~hrtem_ray.spec.dataset.machine_memory_bytes` and
        :func:`free_disk_bytes` of ``root``.

    Raises
    ------
    SpecError
        With the estimate, what the machine has, and the fields that set the size.
    """
    footprint = dataset_footprint(spec)
    memory = machine_memory_bytes() if memory_bytes is None else int(memory_bytes)
    free = free_disk_bytes(root) if free_bytes is None else int(free_bytes)
    counts = spec.n_structures
    fields = (
        f"dataset.n_structures {{train: {counts.train:,}, val: {counts.val:,}, test: "
        f"{counts.test:,}}}, {len(spec.domains)} domains, "
        f"structures_per_shard {spec.structures_per_shard}"
    )
    if footprint.driver_bytes > memory:
        raise SpecError(
            f"dataset: planning its {footprint.shards:,} shards needs about "
            f"{format_bytes(footprint.driver_bytes)} of memory, more than this machine's "
            f"{format_bytes(memory)} ({fields}); use fewer structures or more per shard"
        )
    if free is None or footprint.disk_bytes <= free:
        return footprint
    present = stored_bytes(root)
    if footprint.disk_bytes - present > free:
        there = f", {format_bytes(present)} of it already there" if present else ""
        raise SpecError(
            f"dataset: {footprint.images:,} images need about "
            f"{format_bytes(footprint.disk_bytes)} on disk (images "
            f"{format_bytes(footprint.image_bytes)}, exit waves "
            f"{format_bytes(footprint.wave_bytes)}{there}), more than the "
            f"{format_bytes(free)} free at {root} ({fields}; keep_exit_waves: false saves "
            "the waves); use fewer structures or domains, or another --out"
        )
    return footprint


def local_cpu_count() -> int:
    """The cores a private local cluster gets by default: those this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_local_trial_resources(
    spec: StudySpec, num_cpus: int | None = None, num_gpus: int | None = None
) -> None:
    """Refuse a trial that no node of the private local cluster can run, before Ray starts.

    Parameters
    ----------
    spec
        The study (``resources.cpu`` and ``resources.gpu`` per trial).
    num_cpus
        CPUs of the local cluster (``--num-cpus``); default this machine's cores.
    num_gpus
        GPUs of the local cluster (``--num-gpus``); only read when ``resources.gpu > 1``
        (a fraction runs on any GPU, and with none the sweep runs on CPU); default the
        CUDA devices torch sees.

    Raises
    ------
    SpecError
        ``resources.cpu`` (or ``resources.gpu``) exceeds the cluster's, naming both and
        the allowed range.
    """
    cpus = local_cpu_count() if num_cpus is None else num_cpus
    wanted = spec.resources
    if wanted.cpu > cpus:
        source = "--num-cpus" if num_cpus is not None else "this machine's cores"
        raise SpecError(
            f"resources.cpu: {wanted.cpu:g} CPUs per trial, but the local cluster has "
            f"{cpus} ({source}), so no trial could ever start; allowed: up to {cpus} "
            "(or join a larger cluster with --address)"
        )
    if wanted.gpu > 1:
        if num_gpus is None:
            import torch

            num_gpus = torch.cuda.device_count()
        if num_gpus and wanted.gpu > num_gpus:
            raise SpecError(
                f"resources.gpu: {wanted.gpu:g} GPUs per trial, but the local cluster has "
                f"{num_gpus}, so no trial could ever start; allowed: up to {num_gpus} "
                "(fractions such as 0.25 share one GPU)"
            )
