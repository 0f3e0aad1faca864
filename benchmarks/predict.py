"""Inference benchmark of ``hrtem-ray predict``: a 4096 px micrograph with the small model; prints JSON.

Times :func:`hrtem_ray.inference.segment` (resampling, tiled inference with the default
quarter-tile overlap and sin² blending, resampling back) of a 4096 x 4096 px micrograph
with the laptop preset's geometry (128 px tiles at 0.4 Å/px) and the small U-Net, on the
CPU with a fixed number of torch threads. The model's weights are its seeded
initialisation (the speed does not depend on them) and the image is seeded noise.

Keys: ``predict_seconds_4096px_small_model`` (the micrograph already at the model's pixel
size), ``predict_seconds_4096px_resampled`` (the micrograph at 0.3 Å/px: resampled to 0.4
and back), and ``tiles_per_second`` of the first.

Usage::

    python benchmarks/predict.py --threads 2 --out benchmarks/results/predict.json
    python benchmarks/predict.py --quick      # a 1024 px micrograph
"""

from __future__ import annotations

import os
import platform
import time

import common
import numpy as np
import torch

from hrtem_ray.dataset.geometry import resampled_shape, tile_positions
from hrtem_ray.dataset.micrograph_files import Micrograph
from hrtem_ray.inference import segment
from hrtem_ray.learning.model import build_model, count_parameters
from hrtem_ray.spec.types import ModelSpec

MODEL_ANGSTROM = 0.4  # the laptop preset's output sampling
TILE_PX = 128  # the laptop preset's image size


def time_segment(model, side_px: int, pixel_angstrom: float, repeats: int) -> dict:
    """Best-of-``repeats`` seconds of :func:`segment` on a ``side_px`` micrograph, and its tiles."""
    image = np.random.default_rng(0).normal(size=(side_px, side_px)).astype(np.float32)
    micrograph = Micrograph(image, pixel_angstrom, "bench.npy", "-", "benchmark")
    model_grid = resampled_shape(image.shape, pixel_angstrom, MODEL_ANGSTROM)
    tiles = len(tile_positions(model_grid, TILE_PX, TILE_PX // 4))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        prob = segment(model, micrograph, MODEL_ANGSTROM, TILE_PX, device="cpu")
        seconds.append(time.perf_counter() - start)
    assert prob.shape == image.shape and np.isfinite(prob).all()
    return {"seconds": min(seconds), "tiles": tiles, "runs_seconds": seconds}


def main() -> None:
    args = common.parser(__doc__, "a 1024 px micrograph (seconds)")
    args.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args.add_argument("--repeats", type=int, default=1, help="runs per case (best is kept)")
    opts = args.parse_args()
    torch.set_num_threads(opts.threads)
    side = 1024 if opts.quick else 4096
    model = build_model(ModelSpec(size="small"), seed=0)
    segment(
        model,
        Micrograph(np.zeros((TILE_PX, TILE_PX), np.float32), 0.4, "w", "-", "-"),
        MODEL_ANGSTROM,
        TILE_PX,
        device="cpu",
    )  # warm-up
    same = time_segment(model, side, MODEL_ANGSTROM, opts.repeats)
    other = time_segment(model, side, 0.3, opts.repeats)
    key = f"{side}px"
    report = {
        "benchmark": "predict",
        f"predict_seconds_{key}_small_model": round(same["seconds"], 2),
        "tiles_per_second": round(same["tiles"] / same["seconds"], 1),
        "tiles": same["tiles"],
        f"predict_seconds_{key}_resampled": round(other["seconds"], 2),
        "resampled_from_angstrom": 0.3,
        "resampled_tiles": other["tiles"],
        "tile_px": TILE_PX,
        "overlap_px": TILE_PX // 4,
        "model_pixel_size_angstrom": MODEL_ANGSTROM,
        "model": "small",
        "parameters": count_parameters(model),
        "threads": opts.threads,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "quick": opts.quick,
    }
    common.emit(report, opts.out)


if __name__ == "__main__":
    main()
