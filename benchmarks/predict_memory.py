"""Peak memory of ``hrtem-ray predict`` against its estimate; prints JSON.

Builds a real study root (the tiny test dataset simulated with abTEM, one small U-Net
trained for one epoch: 64 px tiles at 0.4 Å/px), then, for each case, writes a seeded
noise micrograph as NPY and runs :func:`hrtem_ray.predict` on it in a fresh Python process
(CPU, 2 torch threads, outputs written), reading that process's peak resident memory
(``VmHWM``), and its resident memory once the model is loaded (``VmRSS``). Each case is compared with
:func:`hrtem_ray.inference.estimate_predict_memory_bytes`: the estimate must not be below the
measured peak.

Keys: ``cases`` (side in px, pixel size in Å, resampled side, estimate and measured peak in
MiB, their ratio, the base before the first file and both above it, seconds),
``model_pixel_size_angstrom``, ``tile_px``.

Usage::

    python benchmarks/predict_memory.py --out benchmarks/results/predict_memory.json
    python benchmarks/predict_memory.py --quick      # two small cases
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

from hrtem_ray.dataset.geometry import resampled_shape
from hrtem_ray.dataset.pipeline import simulate_dataset_serial
from hrtem_ray.inference import study_geometry
from hrtem_ray.predict_budget import PREDICT_BASE_BYTES, estimate_predict_memory_bytes
from hrtem_ray.spec.config import parse_study_spec
from hrtem_ray.sweep.execute import execute_trial
from hrtem_ray.sweep.run import write_study_spec
from hrtem_ray.sweep.trials import plan_trials

#: The tiny test dataset (tests/helpers.py, TINY_DATASET) and one small model on it.
STUDY = {
    "name": "predict-memory",
    "dataset": {
        "axis": "defocus",
        "defocus_nm": [0, 10],
        "dose_e_per_angstrom2": 400,
        "structures": {
            "cell_angstrom": 25.6,
            "substrate_thickness_angstrom": [6, 10],
            "radius_angstrom": [5, 7],
            "n_particles": [1, 2],
            "min_separation_angstrom": 4,
        },
        "simulation": {"sampling_angstrom": 0.2, "n_phonons": 1, "output_sampling_angstrom": 0.4},
        "n_structures": {"train": 4, "val": 2},
        "seed": 7,
        "structures_per_shard": 3,
    },
    "domains": {"pretrain": ["0"], "eval": ["0"]},
    "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0]},
    "transfer": None,
    "training": {"epochs": 1, "batch_size": 4},
    "model": {"size": "small"},
}

#: (side px, pixel size Å): at the model's pixel size, and upsampled 2x, 2.5x and 5x (10,240 px)
#: (two input sizes at the same upsampled size tell the input's share from the model grid's).
CASES = [(2048, 0.4), (2048, 0.8), (1024, 1.0), (1024, 2.0), (2048, 2.0)]
QUICK_CASES = [(1024, 0.4), (512, 2.0)]

#: Runs one prediction in a fresh process; prints its resident memory with the model loaded
#: and its peak (VmRSS, VmHWM: ru_maxrss would keep the parent's peak across fork and exec).
CHILD = """
import json, sys, torch
import hrtem_ray
from hrtem_ray.inference import load_study_model

def status_bytes(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

torch.set_num_threads(2)
study, model, path, out, pixel = sys.argv[1:6]
load_study_model(study, model)
before = status_bytes("VmRSS")
hrtem_ray.predict(study, model, [path], out, pixel_size_angstrom=float(pixel),
                  device="cpu", max_memory_bytes=1 << 50)
print(json.dumps({"base_bytes": before, "peak_rss_bytes": status_bytes("VmHWM")}))
"""


def build_study(root: Path) -> str:
    """Simulate the dataset, train the one model, store the study; returns its model id."""
    spec = parse_study_spec(STUDY, source="benchmark")
    data = root / "data"
    simulate_dataset_serial(spec.dataset, data)
    (trial,) = plan_trials(spec).pretrain
    execute_trial(spec, trial, dataset_root=str(data), study_root=str(root), num_threads=2)
    write_study_spec(str(root), spec, str(data))
    return trial.model_id


def measure(study: Path, model_id: str, side: int, pixel: float, work: Path) -> dict:
    """Estimate and measured peak of predicting one ``side`` px micrograph at ``pixel`` Å/px."""
    geometry = study_geometry(str(study))
    path = work / f"micrograph_{side}_{pixel:g}.npy"
    np.save(path, np.random.default_rng(0).normal(size=(side, side)).astype(np.float32))
    estimate = estimate_predict_memory_bytes([(side, side)], [pixel], geometry)
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(study),
            model_id,
            str(path),
            str(work / "out"),
            str(pixel),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - start
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    peak, base = measured["peak_rss_bytes"], measured["base_bytes"]
    path.unlink()
    return {
        "side_px": side,
        "pixel_size_angstrom": pixel,
        "resampled_side_px": resampled_shape((side, side), pixel, geometry.pixel_size_angstrom)[0],
        "estimate_mib": round(estimate / 2**20),
        "peak_rss_mib": round(peak / 2**20),
        "estimate_over_peak": round(estimate / peak, 2),
        "base_rss_mib": round(base / 2**20),
        "estimate_above_base_mib": round((estimate - PREDICT_BASE_BYTES) / 2**20),
        "peak_above_base_mib": round((peak - base) / 2**20),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    args = common.parser(__doc__, "two small cases (seconds)")
    args.add_argument(
        "--case", action="append", default=None, help="SIDE:PIXEL_ANGSTROM (repeatable)"
    )
    opts = args.parse_args()
    chosen = QUICK_CASES if opts.quick else CASES
    if opts.case:
        chosen = [(int(c.split(":")[0]), float(c.split(":")[1])) for c in opts.case]
    with tempfile.TemporaryDirectory(prefix="hrtem-predict-memory-") as tmp:
        root = Path(tmp) / "study"
        model_id = build_study(root)
        geometry = study_geometry(str(root))
        cases = [measure(root, model_id, side, pixel, Path(tmp)) for side, pixel in chosen]
    report = {
        "benchmark": "predict_memory",
        "cases": cases,
        "model_pixel_size_angstrom": geometry.pixel_size_angstrom,
        "tile_px": geometry.tile_px,
        "model": "small",
        "threads": 2,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
        "quick": opts.quick,
    }
    common.emit(report, opts.out)


if __name__ == "__main__":
    main()
