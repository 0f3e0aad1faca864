"""The laptop study end to end: ``hrtem-ray run sweeps/laptop.yaml`` timed, and what it decides.

Prints JSON. Runs the README's first command in a subprocess, as a user would (its own
local Ray cluster: simulation, sweep, analysis and report), then reads its results.
``--quick`` runs the preset shrunk as the CI test does (``tests/conftest.py``,
``LAPTOP_CI``), in a few minutes.

Keys
----
seconds_end_to_end
    Wall time of the whole command, install excluded. Target: at most 900 s on 2 cores.
share_converged_by_phase
    Per phase, the share of models whose ``converged`` is true. Target: at least 0.9 each.
findings_decided
    ``count`` and ``names`` of the findings of :func:`hrtem_ray.analysis.findings` with a
    verdict (``agrees`` or ``disagrees``) on the study's results, and ``verdicts``: every
    finding's verdict, estimate, interval and reason. Target: at least 4 decided.
models_by_phase, eval_split
    How many models each phase trained, and the splits the metrics were computed on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import polars as pl

from hrtem_ray import analysis

REPO = Path(__file__).resolve().parents[1]


def _spec(quick: bool, tmp: Path) -> Path:
    if not quick:
        return common.LAPTOP_SPEC
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import laptop_ci_spec  # the CI test's shrunk copy

    return laptop_ci_spec(tmp / "laptop-ci.yaml")


def run_study(spec: Path, out: Path) -> float:
    """Run ``hrtem-ray run SPEC --out OUT``; its wall time in seconds."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "hrtem_ray.cli", "run", str(spec), "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"hrtem-ray run exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return seconds


def summarize(results_dir: Path) -> dict:
    """Convergence, findings and split of a finished study's results."""
    table = analysis.load_results(results_dir)
    models = table.unique("model_id")
    converged = (
        models.group_by("phase")
        .agg(pl.col("converged").fill_null(False).mean().alias("share"))
        .sort("phase")
    )
    found = analysis.findings(table)
    decided = found.filter(pl.col("verdict") != "undecidable")
    return {
        "models_by_phase": dict(models.group_by("phase").len().sort("phase").iter_rows()),
        "eval_split": sorted(set(table.get_column("eval_split").cast(pl.Utf8).fill_null("val"))),
        "share_converged_by_phase": dict(converged.iter_rows()),
        "findings_decided": {
            "count": decided.height,
            "names": decided.get_column("finding").to_list(),
            "verdicts": found.select(
                "finding", "verdict", "estimate", "ci_low", "ci_high", "reason"
            ).to_dicts(),
        },
    }


def main() -> None:
    args = common.parser(__doc__, "the preset shrunk as in CI (a few minutes)").parse_args()
    with tempfile.TemporaryDirectory(prefix="hrtem-laptop-") as tmp:
        out = Path(tmp) / "study"
        seconds = run_study(_spec(args.quick, Path(tmp)), out)
        report = {"quick": args.quick, "cpu_count": os.cpu_count()}
        report["seconds_end_to_end"] = round(seconds, 1)
        report.update(summarize(out / "results"))
    common.emit(report, args.out)


if __name__ == "__main__":
    main()
