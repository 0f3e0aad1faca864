"""Shared fixtures: a local Ray cluster, a tiny real simulated dataset, a laptop-study run.

Everything here runs the real code paths (abTEM multislice, Parquet on disk,
a real Ray cluster) at small sizes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

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

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"

TINY_DATASET = {
    "axis": "defocus",
    "defocus_nm": [-10, 0, 10],
    "dose_e_per_angstrom2": 400,
    "structures": {
        "cell_angstrom": 25.6,
        "substrate_thickness_angstrom": [6, 10],
        "radius_angstrom": [5, 7],
        "n_particles": [1, 2],
        "min_separation_angstrom": 4,
    },
    "simulation": {
        "sampling_angstrom": 0.2,
        "n_phonons": 1,
        "output_sampling_angstrom": 0.4,
    },
    "n_structures": {"train": 6, "val": 3},
    "seed": 7,
    "structures_per_shard": 3,
}


# One pretrain and one transfer model on the tiny dataset, one epoch (end-to-end fault tests).
TWO_MODEL_STUDY = {
    "name": "two-models",
    "dataset": TINY_DATASET,
    "domains": {"pretrain": ["0"], "transfer": ["10"], "eval": ["0", "10"]},
    "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0]},
    "transfer": {"lr": [1e-4], "n_images": [2], "freeze": ["none"]},
    "training": {"epochs": 1, "batch_size": 4},
    "model": {"size": "small"},
    "resources": {"cpu": 1, "max_failures": 0},
}


def tiny_dataset_spec(**overrides):
    """The tiny dataset spec used across tests (64 x 64 px images, 3 defoci)."""
    from hrtem_ray.config import parse_dataset_spec

    return parse_dataset_spec({**TINY_DATASET, **overrides}, source="tests")


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
    from hrtem_ray.data import simulate_dataset_serial

    root = tmp_path_factory.mktemp("tiny-dataset")
    simulate_dataset_serial(tiny_dataset_spec(), root)
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tiny_dataset_root):
    """``{domain: (images, masks)}`` of the tiny dataset's training split."""
    from hrtem_ray.data import read_images

    out = {}
    for domain in ("-10", "0", "10"):
        selection = read_images(tiny_dataset_root, domain, "train")
        out[domain] = (selection.images, selection.masks)
    return out


CLI = [sys.executable, "-m", "hrtem_ray.cli"]


def run_cli(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``hrtem-ray ARGS`` in a subprocess, as a user would, capturing its output."""
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def kill_cli_when(args, condition, timeout: float = 240) -> None:
    """Start ``hrtem-ray ARGS``, SIGKILL its whole process group once ``condition()`` holds."""
    proc = subprocess.Popen(
        [*CLI, *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while time.time() < deadline and not condition() and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1.0)  # let orphaned workers of the killed cluster exit


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


def make_bucket(endpoint: str) -> str:
    """Create a fresh bucket on the moto server and return its name."""
    import pyarrow.fs as pafs

    bucket = f"hrtem-{uuid.uuid4().hex[:12]}"
    pafs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        scheme="http",
        endpoint_override=endpoint.split("://", 1)[1],
        allow_bucket_creation=True,
    ).create_dir(bucket)
    return bucket


def s3_env(endpoint: str, no_files_dir: Path) -> dict[str, str]:
    """Environment that points hrtem-ray (and pyarrow) at the moto server, and nowhere else."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "HRTEM_RAY_S3_ENDPOINT": endpoint,
        # Never fall back to instance metadata or the user's AWS files.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(no_files_dir / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(no_files_dir / "no-aws-credentials"),
    }


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
