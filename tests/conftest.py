"""Shared fixtures: a local Ray cluster, a tiny real simulated dataset, a laptop-study run.

Everything here runs the real code paths (abTEM multislice, Parquet on disk,
a real Ray cluster) at small sizes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ARTIFACTS, REPO, tiny_dataset_spec

# Keep every Ray cluster of the test session on loopback, without token auth.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray's helper processes look up cloud metadata hosts (169.254.169.254, DNS) even with the
# dashboard off; a dead loopback proxy keeps every such request on this machine.
for _var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
    os.environ[_var] = "http://127.0.0.1:9"
for _var in ("no_proxy", "NO_PROXY"):
    os.environ[_var] = "127.0.0.1,localhost"


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs, small object store, no dashboard) per test session."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=256 * 1024**2,
        include_dashboard=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_dataset_root(tmp_path_factory) -> Path:
    """A tiny real dataset (abTEM multislice, 3 defoci, 6 train + 3 val structures) on disk."""
    from hrtem_ray.dataset.pipeline import simulate_dataset_serial

    root = tmp_path_factory.mktemp("tiny-dataset")
    simulate_dataset_serial(tiny_dataset_spec(), root)
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tiny_dataset_root):
    """``{domain: (images, masks)}`` of the tiny dataset's training split."""
    from hrtem_ray.dataset.readers import read_images

    out = {}
    for domain in ("-10", "0", "10"):
        selection = read_images(tiny_dataset_root, domain, "train")
        out[domain] = (selection.images, selection.masks)
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """An S3-compatible moto server on loopback for the whole session."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass(frozen=True)
class LaptopRun:
    out: Path
    results_dir: Path
    data_dir: Path
    report_dir: Path
    log: str


@pytest.fixture(scope="session")
def laptop_run(tmp_path_factory) -> LaptopRun:
    """The README's main command, ``hrtem-ray run sweeps/laptop.yaml``, end to end.

    Runs in a subprocess (its own local Ray cluster) exactly as a user would.
    """
    out = tmp_path_factory.mktemp("laptop-run")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hrtem_ray.cli",
            "run",
            str(REPO / "sweeps" / "laptop.yaml"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log = proc.stdout + proc.stderr
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "laptop_run.log").write_text(log)
    assert proc.returncode == 0, log[-5000:]
    return LaptopRun(out, out / "results", out / "data", out / "report", log)
