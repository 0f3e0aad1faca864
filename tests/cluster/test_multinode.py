"""Multi-node behaviour, tested on one machine with a real multi-node Ray cluster.

A head and two worker nodes of :class:`ray.cluster_utils.Cluster` (1 CPU each,
loopback only) run tiny studies driven by ``hrtem-ray sweep SPEC --address ADDR``
in a subprocess, exactly as a user joins an existing cluster:

* simulation tasks and training trials are spread over several nodes, transfer
  trials load their parent's checkpoint across nodes, and the result table has
  the shape of a single-node run of the same spec;
* a worker node killed in the middle of a study (its raylet and workers, by PID)
  costs nothing but retries;
* the study's storage is a URI: ``s3://`` on a moto server on 127.0.0.1 and
  ``file://``.

Ray nodes get the S3 settings from the environment they were started with (their
workers inherit it), as the nodes of a real cluster would from their setup.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import psutil
import pytest
import yaml
from helpers import ARTIFACTS, TINY_DATASET, TINY_STUDY, TWO_MODEL_STUDY, make_bucket, s3_env

from hrtem_ray.dataset.manifest import MANIFEST_DIR, plan_shards
from hrtem_ray.dataset.readers import summarize
from hrtem_ray.spec.config import parse_study_spec
from hrtem_ray.store import s3, storage
from hrtem_ray.study import Study
from hrtem_ray.sweep import results
from hrtem_ray.sweep.trials import plan_trials

pytestmark = pytest.mark.slow

NODE_OBJECT_STORE = 128 * 1024**2
N_EVAL = 3  # eval domains of TINY_STUDY
# Notice a dead node within about 3 s instead of the default 15 s.
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}
# One structure per shard: nine simulation tasks to spread over three nodes.
MULTINODE_STUDY = {**TINY_STUDY, "dataset": {**TINY_DATASET, "structures_per_shard": 1}}


# ------------------------------------------------------------------------- helpers


@contextmanager
def _environ(extra: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _restore_in_process_ray() -> None:
    """Undo what ``Cluster.shutdown`` does to a Ray session of this test process.

    ``Cluster.shutdown`` resets the process-wide internal KV client, which
    belongs to the session-wide ``ray_cluster`` fixture if one is running here:
    direct internal-KV reads and writes would then fail, and Tune's registry
    would silently fall back to process-local storage in later tests.
    """
    import ray
    from ray.experimental import internal_kv

    if ray.is_initialized() and not internal_kv._internal_kv_initialized():
        internal_kv._initialize_internal_kv(ray._private.worker.global_worker.gcs_client)


@contextmanager
def local_cluster(n_workers: int = 2, env: Mapping[str, str] | None = None):
    """A head and ``n_workers`` worker nodes (1 CPU each) on loopback; always shut down.

    Parameters
    ----------
    n_workers
        Worker nodes besides the head.
    env
        Extra environment variables of the node processes (and so of every Ray
        worker they start); the test process's own environment is left as it was.
    """
    from ray.cluster_utils import Cluster

    Path(tempfile.gettempdir(), "ray").mkdir(exist_ok=True)  # ray_current_cluster lives here
    node_args = {"num_cpus": 1, "object_store_memory": NODE_OBJECT_STORE}
    cluster = None
    try:
        with _environ(env or {}):
            cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    **node_args,
                    "include_dashboard": False,
                    "_system_config": FAST_HEALTH_CHECKS,
                },
            )
            for _ in range(n_workers):
                cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        assert cluster.address.startswith("127.0.0.1:")
        assert {n.node_ip_address for n in cluster.list_all_nodes()} == {"127.0.0.1"}
        yield cluster
    finally:
        if cluster is not None:
            cluster.shutdown()
        _restore_in_process_ray()


def node_ids(cluster) -> set[str]:
    """Ray node ids of every node of ``cluster``."""
    return {node.node_id for node in cluster.list_all_nodes()}


def write_spec(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def sweep_command(spec_file: Path, out: str, address: str) -> list[str]:
    """``hrtem-ray sweep SPEC --out OUT --address ADDR`` as a subprocess command."""
    return [
        sys.executable,
        "-m",
        "hrtem_ray.cli",
        "sweep",
        str(spec_file),
        "--out",
        out,
        "--address",
        address,
    ]


def driver_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}


def save_log(name: str, text: str) -> None:
    """Keep a driver's log under artifacts/ for debugging."""
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.log").write_text(text)


def run_driver(
    name: str, cmd: list[str], env: Mapping[str, str], cwd: Path, timeout: float = 300
) -> str:
    """Run a driver to completion; returns its log, asserting that it succeeded."""
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=dict(env), cwd=cwd
    )
    log = proc.stdout + proc.stderr
    save_log(name, log)
    assert proc.returncode == 0, log[-5000:]
    return log


def assert_complete_table(table: pl.DataFrame, spec) -> None:
    """Exactly one row per (model, eval domain) of the plan, no duplicates, no gaps."""
    plan = plan_trials(spec)
    assert table.height == len(plan.all()) * N_EVAL
    assert table.select("model_id", "eval_domain").n_unique() == table.height
    assert set(table["model_id"]) == {t.model_id for t in plan.all()}


def first_rows(history: pl.DataFrame) -> dict[str, dict]:
    """One history row per model (its metadata columns are constant per model)."""
    return {r["model_id"]: r for r in history.unique("model_id").iter_rows(named=True)}


def checked_handoffs(root: str) -> list[tuple[dict, dict]]:
    """(child, parent) history rows of every transfer model, each checked for its weights.

    A transfer model must start from exactly the weights its parent stored: the
    child's ``initial_digest`` equals the parent's ``best_digest``, which equals
    the digest in the parent's stored checkpoint metadata.
    """
    by_model = first_rows(results.read_history(root))
    pairs = []
    for child in by_model.values():
        if child["parent_id"] is None:
            continue
        parent = by_model[child["parent_id"]]
        assert child["initial_digest"] == parent["best_digest"], child["model_id"]
        meta = storage.read_json(
            storage.join(results.checkpoint_path(root, parent["model_id"]), "metadata.json")
        )
        assert meta["best_digest"] == parent["best_digest"]
        pairs.append((child, parent))
    return pairs


def manifest_nodes(data_root: str) -> list[str]:
    """Node ids recorded in the manifest entries of a dataset's shards."""
    manifest = storage.join(data_root, MANIFEST_DIR)
    return [
        storage.read_json(storage.join(manifest, name))["node_id"]
        for name in storage.listdir(manifest)
        if name.endswith(".json")
    ]


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def moto_s3(moto_endpoint, tmp_path_factory) -> dict[str, str]:
    """One bucket on the moto S3 server; the environment that reaches it."""
    env = s3_env(moto_endpoint, tmp_path_factory.mktemp("no-aws"))
    return {**env, "HRTEM_TEST_BUCKET": make_bucket(moto_endpoint)}


@pytest.fixture(scope="module")
def cluster(moto_s3):
    """The module's 3-node cluster; its nodes know the moto server's settings."""
    with local_cluster(n_workers=2, env=moto_s3) as c:
        yield c


@dataclass(frozen=True)
class MultiNodeRun:
    spec_file: Path
    out: Path
    log: str
    nodes: set[str]
    seconds: float


@pytest.fixture(scope="module")
def multinode_run(cluster, moto_s3, tmp_path_factory) -> MultiNodeRun:
    """The tiny study, simulation included, driven by ``hrtem-ray sweep --address``."""
    tmp = tmp_path_factory.mktemp("multinode")
    spec_file = write_spec(tmp / "tiny.yaml", MULTINODE_STUDY)
    out = tmp / "study"
    start = time.time()
    log = run_driver(
        "multinode_sweep",
        sweep_command(spec_file, str(out), cluster.address),
        driver_env(moto_s3),
        cwd=tmp,
    )
    return MultiNodeRun(spec_file, out, log, node_ids(cluster), time.time() - start)


# ------------------------------------------------------------------------- multi-node study


def test_simulation_and_trials_ran_on_several_nodes(multinode_run):
    study = Study.from_yaml(multinode_run.spec_file, out=multinode_run.out)
    shard_nodes = manifest_nodes(study.dataset_root)
    # one shard per structure (6 train + 3 val) and domain (3)
    assert len(shard_nodes) == len(plan_shards(study.spec.dataset)) == 9 * 3
    assert set(shard_nodes) <= multinode_run.nodes
    assert len(set(shard_nodes)) >= 2, f"all simulation tasks ran on one node: {shard_nodes}"

    table = study.results()
    assert_complete_table(table, study.spec)
    trial_nodes = set(table["node_id"])
    assert trial_nodes <= multinode_run.nodes
    assert len(trial_nodes) >= 2, "all trials ran on one node"
    assert results.read_failures(study.study_root) == []
    assert "sweep finished: all 13 models done (13 run now" in multinode_run.log


def test_transfer_trials_load_parent_checkpoints_across_nodes(multinode_run):
    study = Study.from_yaml(multinode_run.spec_file, out=multinode_run.out)
    pairs = checked_handoffs(study.study_root)
    assert len(pairs) == 8
    cross_node = [(c, p) for c, p in pairs if c["node_id"] != p["node_id"]]
    assert cross_node, "no transfer trial ran on another node than its parent"
    for child, parent in cross_node:
        assert {child["node_id"], parent["node_id"]} <= multinode_run.nodes


def test_result_table_has_the_shape_of_a_single_node_run(multinode_run, ray_cluster, tmp_path):
    """The same spec on the test session's single-node cluster gives the same table shape.

    Training is seeded and single-threaded per trial, and the simulation is
    deterministic, so the metrics agree as well.
    """
    single = Study(parse_study_spec(MULTINODE_STUDY, source="tests"), out=tmp_path / "single")
    report = single.sweep()
    assert report.failed == []
    single_table = single.results().sort("model_id", "eval_domain")
    multi = Study.from_yaml(multinode_run.spec_file, out=multinode_run.out)
    multi_table = multi.results().sort("model_id", "eval_domain")

    assert multi_table.schema == single_table.schema
    assert multi_table.height == single_table.height == 13 * N_EVAL
    keys = ["model_id", "eval_domain", "phase", "parent_id", "freeze", "best_epoch"]
    assert multi_table.select(keys).equals(single_table.select(keys))
    assert len(set(single_table["node_id"])) == 1
    for metric in ("loss", "cross_entropy", "iou"):
        diff = (multi_table[metric] - single_table[metric]).abs().max()
        assert diff < 1e-5, f"{metric} differs by {diff} between the runs"


# ------------------------------------------------------------------------- node failure


def _raylet_pid(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def _node_processes(node) -> list[psutil.Process]:
    """A node's raylet and every process it started (its Ray workers), children first."""
    raylet = psutil.Process(_raylet_pid(node))
    return [*raylet.children(recursive=True), raylet]


def _runs_a_trial(node) -> bool:
    """Whether a Tune trial actor (``ray::ImplicitFunc``) lives on ``node``."""
    for proc in _node_processes(node)[:-1]:
        try:
            if "ImplicitFunc" in " ".join(proc.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


def kill_node_by_pid(node) -> list[int]:
    """SIGKILL a node's workers and raylet by PID; returns the PIDs killed."""
    killed = []
    for proc in _node_processes(node):
        try:
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(proc.pid)
        except ProcessLookupError:
            pass
    return killed


def retried_trials(out: Path) -> dict[str, int]:
    """Model id -> failures of every trial Tune had to retry (from its experiment states).

    A sweep may take several Tune runs (a trial that lost its node is run again in
    a fresh one), so the failures of every run are added up.
    """
    states = sorted(out.glob("tune/*/experiment_state-*.json"))
    assert states, "no Tune experiment state"
    retried: dict[str, int] = {}
    for path in states:
        for state, runtime in json.loads(path.read_text())["trial_data"]:
            failures = json.loads(runtime)["num_failures"]
            if failures:
                name = json.loads(state)["custom_trial_name"]
                retried[name] = retried.get(name, 0) + failures
    return retried


def test_killed_worker_node_costs_only_retries(tiny_dataset_root, tmp_path):
    raw = {
        **TINY_STUDY,
        "dataset": {**TINY_DATASET, "path": str(tiny_dataset_root)},
        # Longer trials, so that the node dies while one of them is running.
        "training": {**TINY_STUDY["training"], "epochs": 6},
        "resources": {"cpu": 1, "max_failures": 2},
    }
    spec_file = write_spec(tmp_path / "tiny.yaml", raw)
    out = tmp_path / "study"
    log_file = tmp_path / "driver.log"
    with local_cluster(n_workers=2) as cluster:
        victim = next(iter(cluster.worker_nodes))
        with open(log_file, "w") as log:
            driver = subprocess.Popen(
                sweep_command(spec_file, str(out), cluster.address),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=driver_env(),
                cwd=tmp_path,
            )
            try:
                deadline = time.time() + 180
                while time.time() < deadline and driver.poll() is None:
                    if results.finished_ids(str(out)) and _runs_a_trial(victim):
                        break
                    time.sleep(0.2)
                assert driver.poll() is None, "the study ended before the node could be killed"
                done_at_kill = results.finished_ids(str(out))
                killed_at = time.time()
                assert kill_node_by_pid(victim)
                rc = driver.wait(timeout=300)
            finally:
                if driver.poll() is None:
                    driver.kill()
                    driver.wait()
        text = log_file.read_text()
        save_log("multinode_killed_node", text)
        assert rc == 0, text[-5000:]

    study = Study.from_yaml(spec_file, out=out)
    assert len(done_at_kill) < 13, "the node should die in the middle of the study"
    assert results.read_failures(study.study_root) == []
    table = study.results()
    assert_complete_table(table, study.spec)
    # Nothing finished on the dead node after it died; its lost trials were rerun elsewhere.
    on_victim = table.filter(pl.col("node_id") == victim.node_id)
    assert on_victim.is_empty() or on_victim["finished_at"].max() < killed_at
    retried = retried_trials(out)
    assert retried, "no trial was lost with the node"
    assert set(retried) <= set(table["model_id"])
    rerun = table.filter(pl.col("model_id").is_in(list(retried)))
    assert rerun.height == len(retried) * N_EVAL
    assert victim.node_id not in set(rerun["node_id"])
    # One history per model, one row per epoch: a retried trial overwrote its partial run.
    history = results.read_history(study.study_root)
    assert history.group_by("model_id").len()["len"].to_list() == [6] * 13
    checked_handoffs(study.study_root)


def test_a_trial_no_node_can_hold_waits_saying_what_is_missing_until_one_joins(
    tiny_dataset_root, tmp_path
):
    """``resources.cpu: 2`` on a joined cluster of one 1-CPU node: the sweep waits with a
    progress line naming what one trial needs and what the largest node has, instead of
    hanging silently; once a 2-CPU node joins, the study runs to the end."""
    raw = {
        **TWO_MODEL_STUDY,
        "dataset": {**TINY_DATASET, "path": str(tiny_dataset_root)},
        "resources": {"cpu": 2, "max_failures": 0},
    }
    spec_file = write_spec(tmp_path / "two.yaml", raw)
    lines: list[str] = []
    with local_cluster(n_workers=0) as cluster:
        driver = subprocess.Popen(
            sweep_command(spec_file, str(tmp_path / "study"), cluster.address),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=driver_env(),
            cwd=tmp_path,
        )
        reader = threading.Thread(target=lambda: lines.extend(driver.stdout), daemon=True)
        reader.start()
        try:
            deadline = time.time() + 180
            while time.time() < deadline and driver.poll() is None:
                if any("waiting for a node" in line for line in lines):
                    break
                time.sleep(0.2)
            waiting = [line for line in lines if "waiting for a node" in line]
            assert waiting, "".join(lines)[-5000:]
            assert waiting[0].startswith("waiting for a node with 2 CPU and 0 GPU for one trial")
            assert "the largest of the 1 alive nodes has 1 CPU and 0 GPU" in waiting[0]
            assert not results.finished_ids(str(tmp_path / "study"))
            cluster.add_node(num_cpus=2, object_store_memory=NODE_OBJECT_STORE)
            rc = driver.wait(timeout=300)
            reader.join(timeout=30)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    log = "".join(lines)
    save_log("multinode_waits_for_a_node", log)
    assert rc == 0, log[-5000:]
    assert "a node for one trial is there after" in log
    assert "sweep finished: all 2 models done" in log


# ------------------------------------------------------------------------- storage by URI


def test_study_on_s3_storage(cluster, moto_s3, tmp_path, monkeypatch):
    """Dataset, checkpoints, Tune state and results on S3; nothing written locally."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    for key, value in moto_s3.items():
        monkeypatch.setenv(key, value)
    root = f"s3://{moto_s3['HRTEM_TEST_BUCKET']}/studies/tiny"
    spec_file = write_spec(tmp_path / "tiny.yaml", MULTINODE_STUDY)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    run_driver(
        "multinode_s3_sweep",
        sweep_command(spec_file, root, cluster.address),
        driver_env(moto_s3),
        cwd=cwd,
    )
    assert list(cwd.iterdir()) == [], "an s3:// study wrote local files"

    study = Study.from_yaml(spec_file, out=root)
    assert study.study_root == root and study.dataset_root == f"{root}/data"
    assert sorted(storage.listdir(root)) == [
        "checkpoints",
        "data",
        "history",
        "results",
        "study.json",
        "tune",
    ]
    assert len(set(manifest_nodes(study.dataset_root))) >= 2
    assert summarize(study.dataset_root) == {d: {"train": 6, "val": 3} for d in ("-10", "0", "10")}
    table = study.results()
    assert_complete_table(table, study.spec)
    assert len(checked_handoffs(root)) == 8
    # The same table straight from S3 with polars, without hrtem-ray's reader.
    direct = pl.read_parquet(
        f"{root}/results/*/*.parquet", storage_options=s3.polars_storage_options()
    )
    assert direct.sort("model_id", "eval_domain").equals(table.sort("model_id", "eval_domain"))
    # The report of an S3 study is built locally and uploaded next to its results.
    location = study.report()
    assert location == f"{root}/report/report.html"
    assert storage.read_bytes(location).startswith(b"<!DOCTYPE html>")
    assert storage.exists(f"{root}/report/tables")


def test_study_on_file_uri_storage(multinode_run, cluster, moto_s3, tmp_path):
    """A ``file://`` study root and dataset path work like plain paths."""
    dataset = tmp_path / "dataset"
    shutil.copytree(multinode_run.out / "data", dataset)
    raw = {
        **MULTINODE_STUDY,
        "dataset": {**MULTINODE_STUDY["dataset"], "path": f"file://{dataset}"},
    }
    spec_file = write_spec(tmp_path / "tiny.yaml", raw)
    root = f"file://{tmp_path}/study"
    log = run_driver(
        "multinode_file_sweep",
        sweep_command(spec_file, root, cluster.address),
        driver_env(moto_s3),
        cwd=tmp_path,
    )
    assert "sweep finished: all 13 models done (13 run now" in log
    assert not (tmp_path / "file:").exists()
    table = Study.from_yaml(spec_file, out=root).results()
    assert_complete_table(table, parse_study_spec(raw, source="tests"))
    assert (tmp_path / "study" / "results" / "transfer").is_dir()
    assert len(checked_handoffs(root)) == 8
