"""Training-throughput benchmark of the U-Net models; prints JSON.

Measures training images/s (forward + backward + Adam step, batch 16, the same
:func:`hrtem_ray.learning.train.train_step` that ``train_stage`` runs) for the full and the small model
at several image sizes, and the step time saved by freezing the encoder or the decoder
relative to no freezing.

Usage::

    python benchmarks/train.py            # 128, 256, 512 px, both models (minutes on a CPU)
    python benchmarks/train.py --quick    # under a minute on 2 CPU cores
    python benchmarks/train.py --threads 2 --out bench_train.json
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import common
import torch

from hrtem_ray.learning.model import build_model, count_parameters, freeze
from hrtem_ray.learning.train import prepare_model, select_device, train_step
from hrtem_ray.spec.types import ModelSpec

BATCH = 16


def make_step(size: str, px: int, part: str, device: torch.device) -> Callable[[], float]:
    """Build a model with ``part`` frozen and return a function timing one training step."""
    model = prepare_model(build_model(ModelSpec(size=size), seed=0), device)
    freeze(model, part)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 1, px, px, generator=gen).to(device)
    m = (torch.rand(BATCH, 1, px, px, generator=gen) > 0.7).float().to(device)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        train_step(model, opt, x, m).item()  # .item() waits for the device
        return time.perf_counter() - t0

    return step


def median_step_seconds(
    steps: dict[str, Callable[[], float]], n: int, warmup: int = 2
) -> dict[str, float]:
    """Median step time of each stepper, run interleaved so background load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(warmup + n):
        for key, step in steps.items():
            t = step()
            if i >= warmup:
                times[key].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = common.parser(__doc__, "fewer sizes and steps (< 1 min)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--device", default=None, help="default: CUDA if available, else CPU")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    on_gpu = device.type == "cuda"
    if args.quick:
        sizes = {"full": [128], "small": [128, 256]}
        steps, freeze_px = 3, 128
    else:
        sizes = {"full": [128, 256, 512], "small": [128, 256, 512]}
        steps, freeze_px = (20 if on_gpu else 3), 128

    t_start = time.perf_counter()
    full = build_model(ModelSpec(size="full"))
    small = build_model(ModelSpec(size="small"))
    report: dict = {
        "quick": args.quick,
        "device": str(device),
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "batch_size": BATCH,
        "precision": "bf16 autocast" if on_gpu else "fp32",
        "memory_format": "channels_last",
        "params_full": count_parameters(full),
        "params_small": count_parameters(small),
        "encoder_frozen_trainable_fraction": freeze(full, "encoder") / count_parameters(full),
        "decoder_frozen_trainable_fraction": freeze(full, "decoder") / count_parameters(full),
        "small_encoder_frozen_trainable_fraction": freeze(small, "encoder")
        / count_parameters(small),
        "images_per_s": {},
        "freeze_time_saved": {},
    }
    for size, pxs in sizes.items():
        parts = ("none", "encoder", "decoder")
        t = median_step_seconds({p: make_step(size, freeze_px, p, device) for p in parts}, steps)
        report["freeze_time_saved"][size] = {
            "px": freeze_px,
            "images_per_s": {part: BATCH / s for part, s in t.items()},
            "encoder": 1 - t["encoder"] / t["none"],
            "decoder": 1 - t["decoder"] / t["none"],
        }
        ips = report["images_per_s"][size] = {}
        for px in pxs:
            if px == freeze_px:
                ips[str(px)] = BATCH / t["none"]
            else:
                ips[str(px)] = (
                    BATCH
                    / median_step_seconds(
                        {"none": make_step(size, px, "none", device)}, steps, warmup=1
                    )["none"]
                )
    report["benchmark_seconds"] = time.perf_counter() - t_start
    common.emit(report, args.out)


if __name__ == "__main__":
    main()
