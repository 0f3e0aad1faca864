"""The module map (package docstring, README "Code layout") and the import layers name every module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

import hrtem_ray

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (REPO / "hrtem_ray").glob("*.py") if not p.stem.startswith("_"))


def test_module_map_names_every_module_once():
    readme = (REPO / "README.md").read_text().split("## Code layout", 1)[1].split("\n## ", 1)[0]
    for module in MODULES:
        assert hrtem_ray.__doc__.count(f"* ``{module}``:") == 1, module
        assert readme.count(f"| `{module}.py` |") == 1, module


def test_import_layers_cover_every_module_and_hold():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    layered = {m.strip() for layer in contract["layers"] for m in layer.split("|")}
    assert layered == {f"hrtem_ray.{m}" for m in MODULES} | {"hrtem_ray._version"}
    script = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(script) if script.exists() else "lint-imports"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "1 kept, 0 broken" in proc.stdout, proc.stdout + proc.stderr
