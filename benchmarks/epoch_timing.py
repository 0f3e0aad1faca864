"""Wall time and CPU time per epoch of a transfer-sized stage, alone and on busy cores; prints JSON.

Finding 5c compares seconds per epoch of encoder-frozen and unfrozen transfer models. On
a CPU the time analyses read each model's process CPU time per epoch
(``epoch_cpu_seconds``) rather than its wall time, because trials share the cores. This
measures why: the same 1-thread :func:`hrtem_ray.learning.train.train_stage` (small
U-Net, 6 images of 128 px, 8 validation images, 5 epochs), with nothing frozen and with
the encoder frozen, first alone and then beside ``--busy`` processes that keep the
cores busy (a matrix product in a loop, as another trial would).

Keys
----
alone, busy
    Per freezing option (``none``, ``encoder``): the median over repeats of the median
    epoch's ``wall_seconds`` and ``cpu_seconds``; ``saving_wall`` and ``saving_cpu``:
    1 - encoder / none of each.
inflation_busy_vs_alone
    Per clock (``wall``, ``cpu``): the unfrozen epoch's time on busy cores over its time
    alone (1.0: the clock does not see the other processes).

Usage::

    python benchmarks/epoch_timing.py            # 3 repeats, about 2 minutes on 2 cores
    python benchmarks/epoch_timing.py --quick    # 1 repeat
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time

import common
import numpy as np
import torch

from hrtem_ray.learning.model import build_model
from hrtem_ray.learning.train import train_stage

PX, N_TRAIN, N_VAL, EPOCHS = 128, 6, 8, 5


def _stage_seconds(freeze: str) -> tuple[float, float]:
    """Median epoch's wall and CPU seconds of one transfer-sized stage."""
    rng = np.random.default_rng(0)
    x, xv = (rng.normal(size=(n, PX, PX)).astype(np.float32) for n in (N_TRAIN, N_VAL))
    m, mv = ((rng.random((n, PX, PX)) > 0.7).astype(np.float32) for n in (N_TRAIN, N_VAL))
    stage = train_stage(build_model(seed=0), x, m, xv, mv, lr=3e-4, epochs=EPOCHS,
                        freeze=freeze, device="cpu", num_threads=1)  # fmt: skip
    return (
        statistics.median(h["seconds"] for h in stage.history),
        statistics.median(h["cpu_seconds"] for h in stage.history),
    )


def _busy(stop) -> None:
    """Keep one core busy until ``stop`` is set."""
    torch.set_num_threads(1)
    a = torch.randn(400, 400)
    while not stop.is_set():
        a @ a


def _measure(repeats: int) -> dict[str, dict[str, float]]:
    out = {}
    for freeze in ("none", "encoder"):
        runs = [_stage_seconds(freeze) for _ in range(repeats)]
        out[freeze] = {
            "wall_seconds": statistics.median(w for w, _ in runs),
            "cpu_seconds": statistics.median(c for _, c in runs),
        }
    for clock in ("wall", "cpu"):
        seconds = f"{clock}_seconds"
        out[f"saving_{clock}"] = 1 - out["encoder"][seconds] / out["none"][seconds]
    return out


def main() -> None:
    args = common.parser(__doc__, "1 repeat instead of 3")
    args.add_argument("--busy", type=int, default=os.cpu_count() or 1,
                      help="busy processes beside the stage (default: one per core)")  # fmt: skip
    args = args.parse_args()
    repeats = 1 if args.quick else 3
    report = {"quick": args.quick, "cpu_count": os.cpu_count(), "busy_processes": args.busy}
    report["alone"] = _measure(repeats)
    stop = mp.Event()
    workers = [mp.Process(target=_busy, args=(stop,)) for _ in range(args.busy)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    try:
        report["busy"] = _measure(repeats)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    report["inflation_busy_vs_alone"] = {
        clock: report["busy"]["none"][f"{clock}_seconds"]
        / report["alone"]["none"][f"{clock}_seconds"]
        for clock in ("wall", "cpu")
    }
    common.emit(report, args.out)


if __name__ == "__main__":
    main()
