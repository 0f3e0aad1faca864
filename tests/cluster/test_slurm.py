"""Tests for hrtem_ray.cluster.slurm without a Slurm cluster.

Slurm's own programs are not on this machine: the tests put small stand-ins for
``scontrol show hostnames`` and ``srun`` on ``PATH`` (each answers for the fake
3-node allocation below and records how it was called). The plan is a pure
function of the environment, so the exact commands are checked as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hrtem_ray.cluster import slurm

REPO = Path(__file__).resolve().parents[2]

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
HOSTLISTS = {
    "gpu[07-09]": ["gpu07", "gpu08", "gpu09"],
    "n[1-3]": ["n1", "n2", "n3"],
    "solo": ["solo"],
}

EXPECTED_STUDY = "hrtem-ray run sweeps/baseline_paper.yaml --address 10.0.0.7:6379"
EXPECTED_STEPS = [
    f"srun --nodes=1 --ntasks=1 --nodelist={host} --cpus-per-task=16 "
    "--export=ALL,RAY_SYMMETRIC_RUN_CLUSTER_WAIT_TIMEOUT=300 "
    "ray symmetric-run --address=10.0.0.7:6379 --min-nodes=3 --num-cpus=16 --num-gpus=2 "
    f"--temp-dir=/tmp/ray-812345 --disable-usage-stats -- {EXPECTED_STUDY}"
    for host in ("gpu07", "gpu08", "gpu09")
]

FAKE_SCONTROL = f"""#!{sys.executable}
import json, sys
lists = json.loads({json.dumps(json.dumps(HOSTLISTS))})
if sys.argv[1:3] != ["show", "hostnames"] or sys.argv[3] not in lists:
    sys.exit("scontrol: error: Invalid hostlist: " + " ".join(sys.argv[3:]))
print("\\n".join(lists[sys.argv[3]]))
"""
FAKE_SRUN = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_SRUN_LOG"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\\n")
head = "--nodelist=" + os.environ["FAKE_SRUN_HEAD"]
sys.exit(int(os.environ["FAKE_STUDY_STATUS"]) if head in sys.argv else 0)
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``scontrol`` and ``srun`` stand-ins first on PATH; returns the srun call log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bindir / name).write_text(text)
        (bindir / name).chmod((bindir / name).stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "srun.log"
    monkeypatch.setenv("FAKE_SRUN_LOG", str(log))
    monkeypatch.setenv("FAKE_SRUN_HEAD", "gpu07")
    monkeypatch.setenv("FAKE_STUDY_STATUS", "0")
    return log


def test_hostnames_from_scontrol(fake_slurm) -> None:
    assert slurm.hostnames("gpu[07-09]") == ["gpu07", "gpu08", "gpu09"]
    with pytest.raises(slurm.SlurmEnvError, match="Invalid hostlist"):
        slurm.hostnames("gpu[07-")


def test_without_scontrol_the_error_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(slurm.SlurmEnvError, match="scontrol not found"):
        slurm.allocation_from_env(FAKE_ENV)


def test_allocation_from_env(fake_slurm) -> None:
    assert slurm.allocation_from_env(FAKE_ENV) == slurm.SlurmAllocation(
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
        # One count without (xN) holds for every node.
        ({"SLURM_JOB_CPUS_PER_NODE": "16"}, (16, 16, 16), 0),
        ({"SLURM_GPUS_PER_TASK": "gpu:h100:8"}, (None, None, None), 8),
        ({"SLURM_GPUS_ON_NODE": "1", "SLURM_GPUS_PER_NODE": "4"}, (None, None, None), 1),
        ({}, (None, None, None), 0),
    ],
)
def test_allocation_counts(fake_slurm, env: dict[str, str], cpus: tuple, gpus: int) -> None:
    alloc = slurm.allocation_from_env({"SLURM_JOB_NODELIST": "n[1-3]", **env})
    assert (alloc.cpus, alloc.gpus) == (cpus, gpus)


def test_old_nodelist_variable_is_accepted(fake_slurm) -> None:
    assert slurm.allocation_from_env({"SLURM_NODELIST": "n[1-3]"}).nodes == ("n1", "n2", "n3")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "SLURM_JOB_NODELIST"),
        ({"SLURM_JOB_ID": "1", "SLURM_CPUS_PER_TASK": "4"}, "SLURM_JOB_NODELIST"),
        ({"SLURM_JOB_NODELIST": "n[1-"}, "SLURM_JOB_NODELIST"),
        ({"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_CPUS_PER_TASK": "many"}, "SLURM_CPUS_PER_TASK"),
        (
            {"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_JOB_CPUS_PER_NODE": "8(x2)"},
            "SLURM_JOB_CPUS_PER_NODE",
        ),
        ({"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_GPUS_ON_NODE": "a100"}, "SLURM_GPUS_ON_NODE"),
        (
            {"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_GPUS_PER_NODE": "a100:2,v100:1"},
            "SLURM_GPUS_PER_NODE",
        ),
    ],
)
def test_bad_env_names_the_variable(fake_slurm, env: dict[str, str], variable: str) -> None:
    with pytest.raises(slurm.SlurmEnvError, match=variable):
        slurm.plan_commands("spec.yaml", env)


def test_plan_exact_commands_for_three_nodes(fake_slurm) -> None:
    plan = slurm.plan_commands("sweeps/baseline_paper.yaml", FAKE_ENV, head_ip="10.0.0.7")
    assert plan.address == "10.0.0.7:6379"
    assert [" ".join(step) for step in plan.steps] == EXPECTED_STEPS
    assert " ".join(plan.study) == EXPECTED_STUDY
    assert plan.render() == "\n".join(
        [
            "# Slurm job 812345: 3 node(s), head gpu07; per node: CPUs 16, GPUs 2; "
            "Ray address 10.0.0.7:6379",
            EXPECTED_STEPS[1] + " &",
            EXPECTED_STEPS[2] + " &",
            EXPECTED_STEPS[0],
        ]
    )


def test_plan_options(fake_slurm) -> None:
    env = {**FAKE_ENV, "HRTEM_RAY_HEAD_IP": "192.168.5.1", "SLURM_JOB_CPUS_PER_NODE": "32(x2),16"}
    env.pop("SLURM_CPUS_PER_TASK")
    plan = slurm.plan_commands(
        "s.yaml",
        env,
        command="sweep",
        port=6400,
        temp_dir="/local/ray",
        out="s3://bucket/study",
        extra_args=["--resume"],
        hrtem_ray_executable="/opt/venv/bin/hrtem-ray",
    )
    assert plan.study == (
        "/opt/venv/bin/hrtem-ray", "sweep", "s.yaml", "--address", "192.168.5.1:6400",
        "--out", "s3://bucket/study", "--resume",
    )  # fmt: skip
    # Per-node CPU counts on heterogeneous nodes; every step runs the same study.
    assert [[a for a in s if a.startswith("--num-cpus")] for s in plan.steps] == [
        ["--num-cpus=32"],
        ["--num-cpus=32"],
        ["--num-cpus=16"],
    ]
    assert all(s[-len(plan.study) :] == plan.study for s in plan.steps)
    assert all(
        "--temp-dir=/local/ray" in s and "--address=192.168.5.1:6400" in s for s in plan.steps
    )
    # Without an IP the head host name is used (main_from_cli resolves it first).
    assert slurm.plan_commands("s.yaml", FAKE_ENV).address == "gpu07:6379"
    # Unknown CPU count: no --num-cpus, no --cpus-per-task; one node: one step.
    single = slurm.plan_commands("s.yaml", {"SLURM_JOB_NODELIST": "solo"})
    assert len(single.steps) == 1 and "--temp-dir=/tmp/ray-slurm" in single.steps[0]
    assert not any(a.startswith(("--num-cpus", "--cpus-per-task")) for a in single.steps[0])
    with pytest.raises(ValueError, match="command"):
        slurm.plan_commands("s.yaml", FAKE_ENV, command="train")
    with pytest.raises(ValueError, match="port"):
        slurm.plan_commands("s.yaml", FAKE_ENV, port=0)


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    slurm.add_arguments(parser)
    args = slurm.parse_args(parser, ["sweeps/baseline_paper.yaml", "--dry-run"])
    for key, value in kw.items():
        setattr(args, key, value)
    return args


def test_parse_args_passes_what_follows_the_first_separator_to_the_study() -> None:
    parser = argparse.ArgumentParser()
    slurm.add_arguments(parser)
    args = slurm.parse_args(parser, ["s.yaml", "--port", "6400", "--", "--resume", "--", "x"])
    assert (args.spec, args.port, args.extra) == ("s.yaml", 6400, ["--resume", "--", "x"])
    assert slurm.parse_args(parser, ["s.yaml"]).extra == []
    with pytest.raises(SystemExit):  # a study option before the separator is refused
        slurm.parse_args(parser, ["s.yaml", "--resume"])


def test_dry_run_prints_every_command(fake_slurm, capsys) -> None:
    assert slurm.main_from_cli(_args(head_ip="10.0.0.7"), env=FAKE_ENV) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [EXPECTED_STEPS[1] + " &", EXPECTED_STEPS[2] + " &", EXPECTED_STEPS[0]]
    assert not fake_slurm.exists()  # nothing ran
    # An unresolvable head name is shown as it is in a dry run, and is an error otherwise.
    assert slurm.main_from_cli(_args(study_command="sweep"), env=FAKE_ENV) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# note: gpu07 not resolvable")
    assert out[-1].endswith("-- hrtem-ray sweep sweeps/baseline_paper.yaml --address gpu07:6379")
    assert slurm.main_from_cli(_args(dry_run=False), env=FAKE_ENV) == 2
    assert "cannot resolve head node gpu07" in capsys.readouterr().err


def test_cli_without_allocation_is_a_clear_error(capsys) -> None:
    assert slurm.main_from_cli(_args(), env={"PATH": "/usr/bin"}) == 2
    assert "SLURM_JOB_NODELIST is not set" in capsys.readouterr().err


@pytest.mark.parametrize("status", [0, 3])
def test_run_starts_every_step_and_returns_the_study_status(
    fake_slurm, status, monkeypatch
) -> None:
    monkeypatch.setenv("FAKE_STUDY_STATUS", str(status))
    plan = slurm.plan_commands("sweeps/baseline_paper.yaml", FAKE_ENV, head_ip="10.0.0.7")
    assert slurm.run(plan) == status
    calls = [json.loads(line) for line in fake_slurm.read_text().splitlines()]
    assert sorted(" ".join(["srun", *c]) for c in calls) == sorted(EXPECTED_STEPS)


def test_the_sbatch_command_runs_hrtem_ray_slurm(fake_slurm) -> None:
    """`python -m hrtem_ray.cli slurm`, as the sbatch script calls it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HRTEM_RAY_HEAD"))}
    env.update(FAKE_ENV, HRTEM_RAY_HEAD_IP="10.0.0.7")
    args = ["sweeps/baseline_paper.yaml", "--dry-run", "--command", "sweep", "--", "--resume"]
    proc = subprocess.run(
        [sys.executable, "-m", "hrtem_ray.cli", "slurm", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].endswith(
        "-- hrtem-ray sweep sweeps/baseline_paper.yaml --address 10.0.0.7:6379 --resume"
    )
    env.pop("SLURM_JOB_NODELIST")
    proc = subprocess.run(
        [sys.executable, "-m", "hrtem_ray.cli", "slurm", "spec.yaml", "--dry-run"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "SLURM_JOB_NODELIST" in proc.stderr


def test_sbatch_script_calls_the_tested_code() -> None:
    text = (REPO / "sweeps" / "slurm.sbatch").read_text()
    assert text.startswith("#!/bin/bash")
    assert "#SBATCH --ntasks-per-node=1" in text
    assert 'exec python -m hrtem_ray.cli slurm "$@"' in text
    assert subprocess.run(["bash", "-n", str(REPO / "sweeps" / "slurm.sbatch")]).returncode == 0
