"""Sweep-engine benchmark: Ray Tune overhead per trial, and pipelined vs barrier scheduling.

Prints JSON. ``--quick`` finishes in under two minutes on a 2-core machine.

Keys
----
tune_overhead_ratio
    Wall time of K pretrain trials run one at a time through Ray Tune (the sweep
    engine, cluster already started) over the same K trials called directly with
    :func:`hrtem_ray.sweep.execute.execute_trial` in one process. Target < 1.10 for
    trials of about 30 s (the full mode; ``--quick`` uses shorter trials, where
    the fixed per-trial cost weighs more).
pipelined_vs_barrier_makespan
    Makespan of a study with uneven pretrain durations (short and long pretrain
    sets) under the engine's pipelined schedule (children start when their own
    parent is done) over a two-phase schedule with a barrier (all pretraining,
    then all transfer). Target 0.8 or less.
"""

from __future__ import annotations

import os
import tempfile
import time

import common

from hrtem_ray.cluster.runtime import ray_session
from hrtem_ray.dataset.pipeline import simulate_dataset
from hrtem_ray.spec.config import parse_dataset_spec, parse_study_spec
from hrtem_ray.study import Study
from hrtem_ray.sweep.execute import execute_trial
from hrtem_ray.sweep.trials import plan_trials

# the laptop dataset, three of its defoci, one phonon configuration
DATASET = common.laptop_dataset(
    defocus_nm=[-10, 0, 10],
    n_structures={"train": 24, "val": 4},
    seed=3,
    structures_per_shard=2,
)
DATASET["simulation"] = {**DATASET["simulation"], "n_phonons": 1}


def overhead(data_root: str, tmp: str, epochs: int, k: int) -> dict:
    """K equal pretrain trials, one at a time: through Tune vs direct calls."""
    raw = {
        "name": "overhead",
        "dataset": {**DATASET, "path": data_root},
        "domains": {"pretrain": ["-10"]},
        "pretrain": {"lr": [1e-3], "n_images": [24], "seeds": list(range(k))},
        "transfer": None,
        "training": {"epochs": epochs},
        "resources": {"cpu": 1, "max_concurrent_trials": 1},
    }
    spec = parse_study_spec(raw)
    trials = plan_trials(spec).pretrain
    start = time.perf_counter()
    for trial in trials:
        execute_trial(
            spec,
            trial,
            dataset_root=data_root,
            study_root=os.path.join(tmp, "direct"),
            num_threads=1,
        )
    direct = time.perf_counter() - start
    start = time.perf_counter()
    Study(spec, out=os.path.join(tmp, "tune")).sweep()
    tuned = time.perf_counter() - start
    return {
        "trials": k,
        "direct_seconds_per_trial": direct / k,
        "tune_seconds_per_trial": tuned / k,
        "tune_overhead_ratio": tuned / direct,
    }


def makespans(data_root: str, tmp: str, epochs: int) -> dict:
    """The same uneven study, pipelined (one sweep) and with a barrier (two sweeps)."""
    raw = {
        "name": "uneven",
        "dataset": {**DATASET, "path": data_root},
        # one short and one long pretrain model (2 and 24 images), 12 children each
        "domains": {"pretrain": ["-10"], "transfer": ["-10", "0", "10"]},
        "pretrain": {"lr": [1e-3], "n_images": [2, 24], "seeds": [0]},
        "transfer": {"lr": [1e-4, 1e-5], "n_images": [2], "freeze": ["none", "encoder", "decoder"]},
        "training": {"epochs": epochs},
        "resources": {"cpu": 1},
    }
    spec = parse_study_spec(raw)
    start = time.perf_counter()
    Study(spec, out=os.path.join(tmp, "pipelined")).sweep()
    pipelined = time.perf_counter() - start
    barrier_out = os.path.join(tmp, "barrier")
    start = time.perf_counter()
    Study(spec.model_copy(update={"transfer": None}), out=barrier_out).sweep()
    Study(spec, out=barrier_out).sweep()  # the pretrain models are done: transfer only
    barrier = time.perf_counter() - start
    counts = plan_trials(spec).counts()
    return {
        "study_trials": counts,
        "pipelined_seconds": pipelined,
        "barrier_seconds": barrier,
        "pipelined_vs_barrier_makespan": pipelined / barrier,
    }


def main() -> None:
    parser = common.parser(__doc__, "short trials (< 2 minutes)")
    args = parser.parse_args()
    overhead_epochs, k, study_epochs = (3, 2, 2) if args.quick else (12, 3, 6)
    report: dict = {"quick": args.quick, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        with ray_session(None, num_cpus=os.cpu_count(), object_store_memory_bytes=256 * 1024**2):
            data_root = os.path.join(tmp, "data")
            simulate_dataset(parse_dataset_spec(DATASET), data_root)
            report.update(overhead(data_root, tmp, overhead_epochs, k))
            report.update(makespans(data_root, tmp, study_epochs))
    common.emit(report, args.out)


if __name__ == "__main__":
    main()
