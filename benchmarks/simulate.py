"""Simulation benchmark: per-structure time split and the Ray Data pipeline against a serial loop.

Prints JSON. ``--quick`` finishes in under a minute on a 2-core machine.

Keys
----
per_structure_s
    Mean seconds per structure: ``structure`` (generation), ``multislice`` (full
    structure and particles alone, all phonons), ``mask``, ``calibration`` and
    ``imaging_per_defocus``.
serial_images_per_s, pipeline_images_per_s, pipeline_speedup_vs_serial
    The same shards simulated by a plain loop in one process and by the Ray Data
    pipeline on a local cluster of all cores (cluster start-up excluded).
peak_memory_per_worker_mib
    Largest resident set of a Ray worker that simulated shards.
new_domain_seconds_from_store, new_domain_seconds_from_scratch, new_domain_speedup_vs_resimulation
    Adding one defocus domain (30 nm) to the simulated laptop dataset, imaged from its
    exit-wave store (no multislice), against simulating that one domain from scratch
    (multislice included, no store); both serial in this process. Target >= 50.
seconds_structure_build
    Per particle shape (Au particles at laptop settings; ``--shapes-only`` runs this
    alone): ``particle`` (mean seconds to build one particle, its shape cached),
    ``particle_first`` (the first one, building wulffpack's Wulff construction or the
    ase.cluster candidates), ``structure`` (mean seconds of a whole structure: substrate
    and particles), ``multislice`` (mean seconds of that structure's multislice, full and
    particles alone), ``structure_to_multislice`` (their ratio), ``particle_to_multislice``
    (one particle's build over a structure's multislice) and ``atoms_per_particle``;
    ``load_average_1min`` says how busy the machine was when it started.
exit_wave_bytes_per_structure
    Bytes of the exit-wave store per structure at laptop settings (measured: the
    Parquet files); ``exit_wave_bytes_per_structure_paper`` is the same count at the
    paper's settings (640 px, 8 phonons), computed: ``2 x n_phonons x 640^2 x 8`` bytes
    (full structure and particles alone, complex64) plus the same small overhead ratio.
"""

from __future__ import annotations

import os
import tempfile
import time

import common
import numpy as np

from hrtem_ray.cluster.runtime import ray_session
from hrtem_ray.dataset.pipeline import simulate_dataset, simulate_dataset_serial
from hrtem_ray.dataset.waves import WAVES_DIR
from hrtem_ray.physics.particles import build_particle
from hrtem_ray.physics.simulate import simulate_structure, structure_waves
from hrtem_ray.physics.structures import random_structure
from hrtem_ray.spec.config import parse_dataset_spec
from hrtem_ray.spec.materials import SHAPES
from hrtem_ray.spec.types import SimulationParams, output_gpts

#: The defocus (nm) of the domain added to the laptop dataset.
NEW_DEFOCUS_NM = 30.0


def raw_wave_bytes(cell_angstrom: float, params: SimulationParams) -> int:
    """complex64 bytes of one structure's stored spectra: full and particles, every phonon."""
    side = output_gpts(cell_angstrom, params)
    return 2 * params.n_phonons * side * side * 8


def new_domain_timing(spec, root: str, scratch_root: str) -> dict[str, float]:
    """Seconds to add one defocus domain from the store, and to simulate it from scratch."""
    wider = spec.model_copy(update={"defocus_nm": [*spec.defocus_nm, NEW_DEFOCUS_NM]})
    from_store = simulate_dataset_serial(wider, root)
    assert from_store.structures_simulated == 0, "the new domain ran a multislice"
    alone = spec.model_copy(update={"defocus_nm": [NEW_DEFOCUS_NM], "keep_exit_waves": False})
    scratch = simulate_dataset_serial(alone, scratch_root)
    return {
        "new_domain_seconds_from_store": from_store.seconds,
        "new_domain_seconds_from_scratch": scratch.seconds,
        "new_domain_speedup_vs_resimulation": scratch.seconds / from_store.seconds,
    }


def time_split(spec, n_structures: int) -> dict[str, float]:
    """Mean per-structure seconds of each simulation step."""
    group = spec.groups()[0]
    totals: dict[str, float] = {}
    for seed in range(n_structures):
        start = time.perf_counter()
        structure = random_structure(group.structures, 1000 + seed)
        totals["structure"] = totals.get("structure", 0.0) + time.perf_counter() - start
        result = simulate_structure(structure, spec.simulation, group.conditions, 1000 + seed)
        for key, value in result.timings_seconds.items():
            totals[key] = totals.get(key, 0.0) + value
    out = {k: v / n_structures for k, v in totals.items()}
    out["imaging_per_defocus"] = out.pop("imaging") / len(group.conditions)
    return out


def structure_build_timing(spec, n_structures: int) -> dict[str, dict[str, float]]:
    """Seconds to build particles and structures of each shape, and their multislice."""
    base = spec.groups()[0].structures
    structure_waves(random_structure(base, 1999), spec.simulation, 0)  # abTEM warm (JIT, FFTW)
    out: dict[str, dict[str, float]] = {}
    for shape in SHAPES:
        params = base.model_copy(update={"lattices": ("Au",), "shape": shape})
        radii = np.random.default_rng(0).uniform(*params.radius_angstrom, size=4 * n_structures)
        start = time.perf_counter()
        build_particle("Au", float(radii[0]), params, np.random.default_rng(0))
        first = time.perf_counter() - start
        start = time.perf_counter()
        atoms = [
            len(build_particle("Au", float(r), params, np.random.default_rng(k)).symbols)
            for k, r in enumerate(radii)
        ]
        particle = (time.perf_counter() - start) / len(radii)
        structure_s = multislice_s = 0.0
        for seed in range(n_structures):
            start = time.perf_counter()
            structure = random_structure(params, 2000 + seed)
            structure_s += time.perf_counter() - start
            multislice_s += structure_waves(structure, spec.simulation, seed).multislice_seconds
        out[shape] = {
            "particle": particle,
            "particle_first": first,
            "structure": structure_s / n_structures,
            "multislice": multislice_s / n_structures,
            "structure_to_multislice": structure_s / multislice_s,
            "particle_to_multislice": particle * n_structures / multislice_s,
            "atoms_per_particle": float(np.mean(atoms)),
        }
    return out


def main() -> None:
    parser = common.parser(__doc__, "small run (< 1 minute)")
    parser.add_argument(
        "--shapes-only", action="store_true", help="only seconds_structure_build (per shape)"
    )
    args = parser.parse_args()

    # the laptop dataset of sweeps/laptop.yaml: 32 structures in shards of 4
    n_train, n_split, per_shard = (12, 4, 2) if args.quick else (24, 8, 4)
    spec = parse_dataset_spec(
        {
            **common.laptop_dataset(),
            "n_structures": {"train": n_train, "val": n_split},
            "structures_per_shard": per_shard,
        }
    )
    report: dict = {
        "quick": args.quick,
        "cores": os.cpu_count(),
        "structures": n_train + n_split,
        "structures_per_shard": per_shard,
    }
    report["load_average_1min"] = os.getloadavg()[0]
    report["seconds_structure_build"] = structure_build_timing(spec, 2 if args.quick else 4)
    if args.shapes_only:
        common.emit(report, args.out)
        return
    report["per_structure_s"] = time_split(spec, 2 if args.quick else 4)

    with tempfile.TemporaryDirectory() as tmp:
        serial = simulate_dataset_serial(spec, os.path.join(tmp, "serial"))
        waves_dir = os.path.join(tmp, "serial", WAVES_DIR)
        stored = sum(
            os.path.getsize(os.path.join(waves_dir, name))
            for name in os.listdir(waves_dir)
            if name.endswith(".parquet")
        )
        n_structures = n_train + n_split
        cell = spec.structures.cell_angstrom
        overhead = stored / (n_structures * raw_wave_bytes(cell, spec.simulation))
        report["exit_wave_bytes_per_structure"] = stored / n_structures
        report["exit_wave_bytes_per_structure_paper"] = overhead * raw_wave_bytes(
            128.0, SimulationParams()
        )
        report.update(
            new_domain_timing(spec, os.path.join(tmp, "serial"), os.path.join(tmp, "scratch"))
        )
        records: list[dict] = []
        with ray_session(None, num_cpus=os.cpu_count(), object_store_memory_bytes=256 * 1024**2):
            # warm the workers (imports, FFTW wisdom) on a throwaway dataset first
            warm = parse_dataset_spec(
                {**common.laptop_dataset(), "n_structures": {"train": 2, "val": 1}, "seed": 99}
            )
            simulate_dataset(warm, os.path.join(tmp, "warm"))
            pipeline = simulate_dataset(spec, os.path.join(tmp, "ray"), on_shard=records.append)
    report["images"] = serial.images
    report["serial_seconds"] = serial.seconds
    report["pipeline_seconds"] = pipeline.seconds
    report["serial_images_per_s"] = serial.images_per_second
    report["pipeline_images_per_s"] = pipeline.images_per_second
    report["pipeline_speedup_vs_serial"] = serial.seconds / pipeline.seconds
    report["peak_memory_per_worker_mib"] = float(np.max([r["peak_rss_mib"] for r in records]))
    report["workers_used"] = len({r["pid"] for r in records})
    common.emit(report, args.out)


if __name__ == "__main__":
    main()
