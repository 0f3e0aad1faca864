"""Shared command line and output of the benchmark scripts (each prints one JSON object)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

LAPTOP_SPEC = Path(__file__).resolve().parents[1] / "sweeps" / "laptop.yaml"


def laptop_dataset(**overrides: Any) -> dict[str, Any]:
    """The ``dataset`` section of ``sweeps/laptop.yaml`` with top-level keys replaced."""
    raw = yaml.safe_load(LAPTOP_SPEC.read_text())["dataset"]
    return {**raw, **overrides}


def parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """An argument parser with the ``--quick`` and ``--out`` options every benchmark has."""
    out = argparse.ArgumentParser(description=doc.splitlines()[0])
    out.add_argument("--quick", action="store_true", help=quick_help)
    out.add_argument("--out", default=None, help="also write the JSON to this file")
    return out


def emit(report: dict[str, Any], out: str | None) -> None:
    """Print the report as JSON (and write it to ``out`` if given)."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        with open(out, "w") as fh:
            fh.write(text + "\n")
