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
# pytest-xdist's workers ignore SIGINT, and an ignored signal stays ignored in every process
# they start: a CLI run by a test would then never see the Ctrl-C the fault tests send.
# The default handler here is reset to SIG_DFL in children, as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
    """An S3-compatible moto server on loopback for the whole session.

    Requests are served one at a time: S3 applies each conditional write (``If-None-Match``,
    ``If-Match``) atomically, moto checks and then writes, so two of 20 racing writers could
    both pass the check while the machine was busy (seen once under pytest-xdist).
    """
    import threading

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    one_at_a_time = threading.Lock()

    def serialized(environ, start_response):
        with one_at_a_time:
            return list(app(environ, start_response))

    port = _free_port()
    server = make_server("127.0.0.1", port, serialized, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join()


@dataclass(frozen=True)
class LaptopRun:
    out: Path
    results_dir: Path
    data_dir: Path
    report_dir: Path
    log: str


#: ``sweeps/laptop.yaml`` shrunk for CI (the same sections and code path, fewer and smaller
#: models): 4 defoci incl. the Figure 7.2 pair -10 -> 5 nm, 2 seeds, a test split, early
#: stopping. The full preset is measured by ``benchmarks/laptop_study.py``.
LAPTOP_CI = {
    "dataset": {
        "defocus_nm": [-10, 0, 5, 10],
        "n_structures": {"train": 12, "val": 4, "test": 4},
    },
    "domains": {"pretrain": ["-10", "0"], "transfer": ["-10", "0", "5"]},
    "pretrain": {"lr": [0.001], "n_images": [12], "seeds": [0, 1]},
    "transfer": {"lr": [0.0003], "n_images": [4], "freeze": ["none", "encoder"]},
    "baseline": {
        "pairs": [["-10", "5"]],
        "fractions": [0.25],
        "n_images": 12,
        "lr": [0.001],
        "seeds": [0, 1],
    },
    "training": {"max_epochs": 6, "patience": 2, "batch_size": 16, "lr_decay": 0.99},
}


def laptop_ci_spec(path: Path) -> Path:
    """Write ``sweeps/laptop.yaml`` with :data:`LAPTOP_CI` merged in (one level deep) to ``path``."""
    import yaml

    raw = yaml.safe_load((REPO / "sweeps" / "laptop.yaml").read_text())
    for key, value in LAPTOP_CI.items():
        raw[key] = {**raw[key], **value} if key == "dataset" else value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def laptop_run(tmp_path_factory) -> LaptopRun:
    """The README's main command, ``hrtem-ray run sweeps/laptop.yaml``, end to end, on the
    preset shrunk for CI (:data:`LAPTOP_CI`).

    Runs in a subprocess (its own local Ray cluster) exactly as a user would.
    """
    out = tmp_path_factory.mktemp("laptop-run")
    spec = laptop_ci_spec(out.parent / "laptop-ci.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "hrtem_ray.cli", "run", str(spec), "--out", str(out)],
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
