"""The import layers name every subpackage and hold (lint-imports)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
