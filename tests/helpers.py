"""Test helpers shared by the test modules (constants, spec dicts, CLI and S3 helpers).

Fixtures live in ``conftest.py``; everything a test module imports lives here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
    from hrtem_ray.spec.config import parse_dataset_spec

    return parse_dataset_spec({**TINY_DATASET, **overrides}, source="tests")


# 2 pretrain, 4 transfer and 2 baseline models on the tiny dataset, 2 epochs.
TINY_STUDY = {
    "name": "tiny",
    "dataset": TINY_DATASET,
    "domains": {"pretrain": ["-10", "0"], "transfer": ["-10", "0", "10"]},
    "pretrain": {"lr": [1e-3], "n_images": [4], "seeds": [0]},
    "transfer": {"lr": [1e-4], "n_images": [2], "freeze": ["none", "encoder"]},
    "baseline": {"mixtures": [[2, 2]], "lr": [1e-3], "seeds": [0]},
    "training": {"epochs": 2, "batch_size": 4},
    "resources": {"cpu": 1, "max_failures": 1},
}


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


def poison_domain(dataset_root: Path, target: Path, domain: str) -> Path:
    """A copy of the dataset whose training images of ``domain`` hold a NaN pixel (a NaN loss)."""
    shutil.copytree(dataset_root, target)
    for path in (target / "study=defocus" / f"domain={domain}" / "split=train").glob("*.parquet"):
        table = pq.read_table(path)
        images = table.column("image").combine_chunks().to_numpy_ndarray().copy()
        images[:, 0, 0] = np.nan
        column = pa.FixedShapeTensorArray.from_numpy_ndarray(images)
        pq.write_table(
            table.set_column(table.schema.get_field_index("image"), "image", column), path
        )
    return target


def train_study_root(raw: dict, dataset_root: Path, root: Path, phases=("pretrain",)) -> None:
    """Train the planned trials of ``phases`` of the study spec dict ``raw`` (its dataset at
    ``dataset_root``) into the study root ``root``, one at a time on one CPU thread, without
    Ray: real results/, history/ and checkpoints/."""
    import copy

    from hrtem_ray.spec.config import parse_study_spec
    from hrtem_ray.sweep.execute import execute_trial
    from hrtem_ray.sweep.trials import plan_trials

    raw = copy.deepcopy(raw)
    raw["dataset"] = {**raw["dataset"], "path": str(dataset_root)}
    spec = parse_study_spec(raw, source="tests")
    plan = plan_trials(spec)
    for phase in phases:
        for trial in getattr(plan, phase):
            execute_trial(
                spec, trial, dataset_root=str(dataset_root), study_root=str(root),
                num_threads=1, device="cpu",
            )  # fmt: skip
