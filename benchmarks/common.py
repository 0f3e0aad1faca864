"""Shared command line and output of the benchmark scripts (each prints one JSON object)."""

from __future__ import annotations

import argparse
import json
from typing import Any


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
