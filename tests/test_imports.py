"""Import structure: the layers name every subpackage and hold (lint-imports), and light modules
import nothing heavy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
TOP = sorted(
    p.stem if p.is_file() else p.name
    for p in (REPO / "hrtem_ray").iterdir()
    if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
)


def test_import_layers_cover_every_subpackage_and_hold():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    layered = {m.strip() for layer in contract["layers"] for m in layer.split("|")}
    assert layered == {f"hrtem_ray.{m}" for m in TOP}
    script = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(script) if script.exists() else "lint-imports"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "1 kept, 0 broken" in proc.stdout, proc.stdout + proc.stderr


HEAVY = ("torch", "abtem", "ase", "ray")

LIGHT_MODULES = {
    # Reading specs, planning trials and analysing results: nothing heavy.
    "hrtem_ray.spec.config": HEAVY,
    "hrtem_ray.spec.types": HEAVY,
    "hrtem_ray.sweep.trials": HEAVY,
    "hrtem_ray.sweep.results": HEAVY,
    "hrtem_ray.analysis": HEAVY,
    # The dependency-aware schedule runs in the driver before Ray is needed.
    "hrtem_ray.sweep.schedule": ("ray", "torch"),
    # The exit-wave store reads and writes waves without the multislice code.
    "hrtem_ray.dataset.waves": ("abtem",),
    # Reading a dataset, its manifest and its record needs neither Ray nor the physics.
    "hrtem_ray.dataset.readers": HEAVY,
    "hrtem_ray.dataset.manifest": HEAVY,
    "hrtem_ray.dataset.claim": HEAVY,
    # Microscope files: read, resampled, tiled and imported without Ray or the physics.
    "hrtem_ray.dataset.micrograph_files": HEAVY,
    "hrtem_ray.dataset.micrograph_metadata": HEAVY,
    "hrtem_ray.dataset.geometry": HEAVY,
    "hrtem_ray.dataset.micrographs": HEAVY,
    # The report loads torch only to draw its prediction panel, and the CLI nothing
    # heavy before a command runs.
    "hrtem_ray.report.build": HEAVY,
    "hrtem_ray.cli": HEAVY,
}


@pytest.mark.parametrize("module", sorted(LIGHT_MODULES))
def test_light_modules_import_nothing_heavy(module: str) -> None:
    """Each module imports without the heavy packages it does not need (a fresh interpreter)."""
    forbidden = LIGHT_MODULES[module]
    code = f"import sys, {module}; print(sorted(m for m in {forbidden!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
