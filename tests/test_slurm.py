"""Tests for hrtem_ray.slurm without a Slurm cluster.

Nothing here starts ``ray start`` or resolves a host name: the plan is a pure
function of the environment, and :func:`hrtem_ray.slurm.run` is exercised with
fake processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hrtem_ray import slurm

REPO = Path(__file__).resolve().parents[1]

# A 3-node allocation as `sbatch --nodes=3 --ntasks-per-node=1 --cpus-per-task=16
# --gpus-per-node=2` would set it up.
FAKE_ENV = {
    "SLURM_JOB_ID": "812345",
    "SLURM_JOB_NODELIST": "gpu[07-09]",
    "SLURM_NNODES": "3",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_CPUS_PER_TASK": "16",
    "SLURM_CPUS_ON_NODE": "16",
    "SLURM_GPUS_ON_NODE": "2",
    "SLURM_GPUS_PER_NODE": "2",
    "SLURM_JOB_CPUS_PER_NODE": "16(x3)",
}

EXPECTED_HEAD = (
    "srun --nodes=1 --ntasks=1 --cpus-per-task=16 --nodelist=gpu07 "
    "ray start --head --node-ip-address=10.0.0.7 --port=6379 --num-cpus=16 --num-gpus=2 "
    "--temp-dir=/tmp/ray-812345 --disable-usage-stats --block"
)
EXPECTED_WORKERS = [
    f"srun --nodes=1 --ntasks=1 --cpus-per-task=16 --nodelist={host} "
    "ray start --address=10.0.0.7:6379 --num-cpus=16 --num-gpus=2 "
    "--temp-dir=/tmp/ray-812345 --disable-usage-stats --block"
    for host in ("gpu08", "gpu09")
]
EXPECTED_STUDY = "hrtem-ray run sweeps/baseline_paper.yaml --address 10.0.0.7:6379"


# --------------------------------------------------------------------------- hostlists


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("node[01-03]", ["node01", "node02", "node03"]),
        ("gpu[1,3-4]", ["gpu1", "gpu3", "gpu4"]),
        ("login1", ["login1"]),
        ("a1,b[2-3],c", ["a1", "b2", "b3", "c"]),
        ("node[8-10]", ["node8", "node9", "node10"]),
        ("node[008-010]", ["node008", "node009", "node010"]),
        ("cn[1-2],gpu[01-02]", ["cn1", "cn2", "gpu01", "gpu02"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("n[1-2]-ib", ["n1-ib", "n2-ib"]),
        ("n[1-3],n2", ["n1", "n2", "n3"]),  # duplicates dropped, order kept
        (" node[1-2] ", ["node1", "node2"]),
    ],
)
def test_expand_hostlist(hostlist: str, hosts: list[str]) -> None:
    assert slurm.expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize(
    ("hostlist", "message"),
    [
        ("", "empty hostlist"),
        ("node[1-3", "unbalanced '\\['"),
        ("node1-3]", "unbalanced '\\]'"),
        ("node[[1-2]]", "nested"),
        ("node[3-1]", "descending"),
        ("node[a-b]", "bad range"),
        ("node[]", "bad range"),
        ("a,,b", "empty entry"),
    ],
)
def test_expand_hostlist_rejects(hostlist: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        slurm.expand_hostlist(hostlist)


# --------------------------------------------------------------------------- allocation


def test_allocation_from_env() -> None:
    alloc = slurm.allocation_from_env(FAKE_ENV)
    assert alloc == slurm.SlurmAllocation(
        job_id="812345", nodes=("gpu07", "gpu08", "gpu09"), cpus=(16, 16, 16), gpus=2
    )


@pytest.mark.parametrize(
    ("env", "cpus", "gpus"),
    [
        # SLURM_CPUS_PER_TASK wins over the others.
        ({"SLURM_CPUS_PER_TASK": "8", "SLURM_CPUS_ON_NODE": "64"}, (8, 8, 8), 0),
        # Heterogeneous nodes: per-node counts.
        ({"SLURM_JOB_CPUS_PER_NODE": "32(x2),16", "SLURM_CPUS_ON_NODE": "32"}, (32, 32, 16), 0),
        ({"SLURM_CPUS_ON_NODE": "48", "SLURM_GPUS_PER_NODE": "a100:4"}, (48, 48, 48), 4),
        ({"SLURM_GPUS_PER_TASK": "gpu:h100:8"}, (None, None, None), 8),
        ({"SLURM_GPUS_ON_NODE": "1", "SLURM_GPUS_PER_NODE": "4"}, (None, None, None), 1),
        ({}, (None, None, None), 0),
    ],
)
def test_allocation_counts(env: dict[str, str], cpus: tuple, gpus: int) -> None:
    alloc = slurm.allocation_from_env({"SLURM_JOB_NODELIST": "n[1-3]", **env})
    assert (alloc.cpus, alloc.gpus) == (cpus, gpus)


def test_old_nodelist_variable_is_accepted() -> None:
    assert slurm.allocation_from_env({"SLURM_NODELIST": "n[1-2]"}).nodes == ("n1", "n2")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "SLURM_JOB_NODELIST"),
        ({"SLURM_JOB_ID": "1", "SLURM_CPUS_PER_TASK": "4"}, "SLURM_JOB_NODELIST"),
        ({"SLURM_JOB_NODELIST": "n[1-"}, "SLURM_JOB_NODELIST"),
        ({"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_CPUS_PER_TASK": "many"}, "SLURM_CPUS_PER_TASK"),
        (
            {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_CPUS_PER_NODE": "8(x3)"},
            "SLURM_JOB_CPUS_PER_NODE",
        ),
        ({"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_GPUS_ON_NODE": "a100"}, "SLURM_GPUS_ON_NODE"),
    ],
)
def test_bad_env_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(slurm.SlurmEnvError, match=variable):
        slurm.plan_commands("spec.yaml", env)


# --------------------------------------------------------------------------- plan


def test_plan_exact_commands_for_three_nodes() -> None:
    plan = slurm.plan_commands("sweeps/baseline_paper.yaml", FAKE_ENV, head_ip="10.0.0.7")
    assert (plan.head_host, plan.worker_hosts) == ("gpu07", ("gpu08", "gpu09"))
    assert plan.address == "10.0.0.7:6379" and plan.n_nodes == 3
    assert " ".join(plan.head_srun) == EXPECTED_HEAD
    assert [" ".join(w) for w in plan.worker_sruns] == EXPECTED_WORKERS
    assert " ".join(plan.study) == EXPECTED_STUDY
    # The srun wrapper ends with the bare `ray start` argv.
    assert plan.head_srun[-len(plan.head_start) :] == plan.head_start
    assert plan.head_start[:3] == ("ray", "start", "--head")

    assert plan.render() == "\n".join(
        [
            "# Slurm job 812345: 3 node(s), head gpu07, workers gpu08 gpu09",
            "# per node: CPUs 16, GPUs 2; Ray address 10.0.0.7:6379",
            "# 1. Ray head",
            EXPECTED_HEAD + " &",
            "# 2. Ray workers (after the head answers on its port)",
            *(w + " &" for w in EXPECTED_WORKERS),
            "# 3. study (after 3 node(s) joined)",
            EXPECTED_STUDY,
        ]
    )


def test_plan_options() -> None:
    env = {**FAKE_ENV, "HRTEM_RAY_HEAD_IP": "192.168.5.1"}
    plan = slurm.plan_commands(
        "s.yaml",
        env,
        command="sweep",
        port=6400,
        temp_dir="/local/ray",
        out="s3://bucket/study",
        extra_args=["--resume"],
        num_gpus=1,
        hrtem_ray_executable="/opt/venv/bin/hrtem-ray",
    )
    assert plan.study == (
        "/opt/venv/bin/hrtem-ray",
        "sweep",
        "s.yaml",
        "--address",
        "192.168.5.1:6400",
        "--out",
        "s3://bucket/study",
        "--resume",
    )
    assert "--port=6400" in plan.head_start and "--num-gpus=1" in plan.head_start
    assert all("--temp-dir=/local/ray" in w for w in plan.worker_starts)
    # Without an IP the head host name is used (run() resolves it first).
    assert slurm.plan_commands("s.yaml", FAKE_ENV).address == "gpu07:6379"
    # Unknown CPU count: no --num-cpus, no --cpus-per-task; single node: no workers.
    single = slurm.plan_commands("s.yaml", {"SLURM_JOB_NODELIST": "solo"})
    assert single.worker_sruns == () and single.temp_dir == "/tmp/ray-slurm"
    assert not any(a.startswith(("--num-cpus", "--cpus-per-task")) for a in single.head_srun)
    with pytest.raises(ValueError, match="command"):
        slurm.plan_commands("s.yaml", FAKE_ENV, command="train")
    with pytest.raises(ValueError, match="port"):
        slurm.plan_commands("s.yaml", FAKE_ENV, port=0)


def _args(**kw) -> argparse.Namespace:
    base = {"spec": "sweeps/baseline_paper.yaml", "port": 6379, "out": None, "dry_run": True}
    return argparse.Namespace(**{**base, **kw})


def test_dry_run_from_cli_args(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm, "resolve_head_ip", lambda host: "10.0.0.7")
    monkeypatch.setattr(slurm, "run", lambda plan: pytest.fail("dry run must not run"))
    assert slurm.main_from_cli(_args(command="slurm"), env=FAKE_ENV) == 0
    out = capsys.readouterr().out.splitlines()
    assert EXPECTED_HEAD + " &" in out
    assert [w + " &" for w in EXPECTED_WORKERS] == [o for o in out if "--nodelist=gpu0" in o][1:]
    assert out[-1] == EXPECTED_STUDY

    # `study_command` (the lead's CLI dest) and unresolvable head names.
    def unresolvable(host: str) -> str:
        raise OSError("unknown host")

    monkeypatch.setattr(slurm, "resolve_head_ip", unresolvable)
    assert slurm.main_from_cli(_args(study_command="sweep"), env=FAKE_ENV) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# note: gpu07 not resolvable")
    assert out[-1] == "hrtem-ray sweep sweeps/baseline_paper.yaml --address gpu07:6379"


def test_cli_without_allocation_is_a_clear_error(capsys) -> None:
    assert slurm.main_from_cli(_args(), env={"PATH": "/usr/bin"}) == 2
    err = capsys.readouterr().err
    assert "SLURM_JOB_NODELIST is not set" in err


def test_module_entry_point_dry_run() -> None:
    """`python -m hrtem_ray.slurm` as the sbatch script calls it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HRTEM_RAY_HEAD"))}
    env.update(FAKE_ENV, HRTEM_RAY_HEAD_IP="10.0.0.7")
    proc = subprocess.run(
        [sys.executable, "-m", "hrtem_ray.slurm", "sweeps/baseline_paper.yaml", "--dry-run",
         "--command", "sweep", "--", "--resume"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert EXPECTED_HEAD + " &" in lines
    assert lines[-1] == (
        "hrtem-ray sweep sweeps/baseline_paper.yaml --address 10.0.0.7:6379 --resume"
    )
    env.pop("SLURM_JOB_NODELIST")
    proc = subprocess.run(
        [sys.executable, "-m", "hrtem_ray.slurm", "spec.yaml", "--dry-run"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "SLURM_JOB_NODELIST" in proc.stderr


def test_sbatch_script_calls_the_tested_code() -> None:
    text = (REPO / "sweeps" / "slurm.sbatch").read_text()
    assert text.startswith("#!/bin/bash")
    assert "#SBATCH --ntasks-per-node=1" in text
    assert 'exec python -m hrtem_ray.slurm "$@"' in text
    assert subprocess.run(["bash", "-n", str(REPO / "sweeps" / "slurm.sbatch")]).returncode == 0


# --------------------------------------------------------------------------- run (fake processes)


class FakeProc:
    """Stands in for a subprocess.Popen of an srun step."""

    def __init__(self, argv: list[str], log: list[str], dies: bool = False) -> None:
        self.node = next(a for a in argv if a.startswith("--nodelist="))
        self.log, self.returncode = log, (1 if dies else None)
        log.append("start " + self.node)

    def poll(self):
        return self.returncode

    def send_signal(self, sig) -> None:
        self.log.append(f"signal {self.node}")
        self.returncode = -sig

    def wait(self, timeout=None):
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9


def _fake_run(plan, *, head_dies=False, workers_fail=False, study_rc=0):
    log: list[str] = []

    def popen(argv):
        return FakeProc(argv, log, dies=head_dies and "--head" in argv)

    def wait_head(p, alive):
        log.append("wait head")
        if not alive():
            raise RuntimeError("the Ray head step exited")

    def wait_workers(p):
        log.append(f"wait {p.n_nodes} nodes")
        if workers_fail:
            raise TimeoutError("only 2 of 3 Ray nodes joined")

    def run_study(argv):
        log.append("study " + " ".join(argv))
        return study_rc

    rc = slurm.run(
        plan, popen=popen, wait_head=wait_head, wait_workers=wait_workers, run_study=run_study
    )
    return rc, log


def test_run_sequence_and_cleanup() -> None:
    plan = slurm.plan_commands("sweeps/baseline_paper.yaml", FAKE_ENV, head_ip="10.0.0.7")
    rc, log = _fake_run(plan, study_rc=3)
    assert rc == 3  # the study's status is the job's status
    assert log == [
        "start --nodelist=gpu07",
        "wait head",
        "start --nodelist=gpu08",
        "start --nodelist=gpu09",
        "wait 3 nodes",
        "study " + EXPECTED_STUDY,
        "signal --nodelist=gpu09",
        "signal --nodelist=gpu08",
        "signal --nodelist=gpu07",
    ]


def test_run_failures_still_stop_ray(capsys) -> None:
    plan = slurm.plan_commands("s.yaml", FAKE_ENV, head_ip="10.0.0.7")
    rc, log = _fake_run(plan, head_dies=True)
    assert rc == 1 and log == ["start --nodelist=gpu07", "wait head"]
    rc, log = _fake_run(plan, workers_fail=True)
    assert rc == 1 and not any(line.startswith("study") for line in log)
    assert sum(line.startswith("signal") for line in log) == 3
    assert "only 2 of 3" in capsys.readouterr().err
