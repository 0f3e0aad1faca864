"""Run a hrtem-ray study on a Slurm allocation with Ray's own launcher, ``ray symmetric-run``.

Inside an ``sbatch`` job (see ``sweeps/slurm.sbatch``) ``hrtem-ray slurm SPEC``
(or ``python -m hrtem_ray.slurm SPEC``) starts one ``srun`` step per allocated
node, each running the same command::

    ray symmetric-run --address HEAD_IP:PORT --min-nodes N [ray start options] \\
        -- hrtem-ray run SPEC --address HEAD_IP:PORT

Ray's launcher does the process control: on the node that owns ``HEAD_IP`` it
starts the head, waits for ``N`` nodes, runs the study and stops Ray; on every
other node it joins the head and blocks until the head goes away. The job's exit
status is the head step's, i.e. the study's. Host lists come from
``scontrol show hostnames``. ``--dry-run`` prints every command instead.

Variables read
--------------
``SLURM_JOB_NODELIST`` (or ``SLURM_NODELIST``)
    Allocated nodes; the first one is the head. Required.
``SLURM_JOB_ID``
    Names the node-local Ray temp dir (``/tmp/ray-<jobid>``).
``SLURM_CPUS_PER_TASK``, else ``SLURM_JOB_CPUS_PER_NODE`` (``32(x2),16``), else ``SLURM_CPUS_ON_NODE``
    CPUs Ray may use per node (``--num-cpus``); omitted if none is set.
``SLURM_GPUS_ON_NODE``, else ``SLURM_GPUS_PER_NODE`` / ``SLURM_GPUS_PER_TASK`` (``4`` or ``a100:4``)
    GPUs per node (``--num-gpus``); ``0`` if none is set, so Ray never claims GPUs
    the job did not ask for.
``HRTEM_RAY_HEAD_IP``
    Address of the head as the other nodes reach it (e.g. an InfiniBand IP).
    Default: the head host name resolved on the head node (where the batch step runs).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

STUDY_COMMANDS = ("run", "sweep", "simulate")
# Seconds ray symmetric-run waits for the head (on workers) and for all nodes (on the head).
CLUSTER_WAIT_SECONDS = 300


class SlurmEnvError(ValueError):
    """The environment does not describe a usable Slurm allocation."""


def hostnames(nodelist: str) -> list[str]:
    """Expand a Slurm host list (``node[01-03]``) with ``scontrol show hostnames``."""
    try:
        proc = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise SlurmEnvError("scontrol not found: run this on a Slurm node") from None
    hosts = proc.stdout.split()
    if proc.returncode != 0 or not hosts:
        raise SlurmEnvError(f"SLURM_JOB_NODELIST={nodelist!r}: scontrol: {proc.stderr.strip()}")
    return hosts


def _count(value: str, var: str) -> int:
    """A CPU/GPU count such as ``"4"``, ``"a100:4"`` or ``"gpu:a100:4"``."""
    last = value.strip().split(":")[-1]
    if not last.isdigit():
        raise SlurmEnvError(f"cannot read a count from {var}={value!r}")
    return int(last)


def _cpus_per_node(value: str, n_nodes: int) -> list[int]:
    """``SLURM_JOB_CPUS_PER_NODE`` (``"32(x2),16"``) as one count per node."""
    counts: list[int] = []
    for item in value.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if m is None:
            raise SlurmEnvError(f"cannot parse SLURM_JOB_CPUS_PER_NODE={value!r}")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    if len(counts) != n_nodes:
        raise SlurmEnvError(
            f"SLURM_JOB_CPUS_PER_NODE={value!r} lists {len(counts)} nodes, "
            f"SLURM_JOB_NODELIST has {n_nodes}"
        )
    return counts


@dataclass(frozen=True)
class SlurmAllocation:
    """Nodes (the first is the head), CPUs per node (``None``: Ray detects) and GPUs per node."""

    job_id: str
    nodes: tuple[str, ...]
    cpus: tuple[int | None, ...]
    gpus: int


def allocation_from_env(env: Mapping[str, str]) -> SlurmAllocation:
    """Read the allocation from the ``SLURM_*`` variables (see the module docstring).

    Raises
    ------
    SlurmEnvError
        If ``SLURM_JOB_NODELIST`` is missing or a variable cannot be parsed.
    """
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise SlurmEnvError(
            "SLURM_JOB_NODELIST is not set: run this inside a Slurm allocation (sbatch or salloc)"
        )
    nodes = tuple(hostnames(nodelist))
    cpus: tuple[int | None, ...] = (None,) * len(nodes)
    if env.get("SLURM_CPUS_PER_TASK"):
        cpus = (_count(env["SLURM_CPUS_PER_TASK"], "SLURM_CPUS_PER_TASK"),) * len(nodes)
    elif env.get("SLURM_JOB_CPUS_PER_NODE"):
        cpus = tuple(_cpus_per_node(env["SLURM_JOB_CPUS_PER_NODE"], len(nodes)))
    elif env.get("SLURM_CPUS_ON_NODE"):
        cpus = (_count(env["SLURM_CPUS_ON_NODE"], "SLURM_CPUS_ON_NODE"),) * len(nodes)
    gpu_var = next(
        (
            v
            for v in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_TASK")
            if env.get(v)
        ),
        None,
    )
    gpus = _count(env[gpu_var], gpu_var) if gpu_var else 0
    return SlurmAllocation(env.get("SLURM_JOB_ID", ""), nodes, cpus, gpus)


@dataclass(frozen=True)
class SlurmPlan:
    """The ``srun`` step of every node (head first) and the study command they run."""

    allocation: SlurmAllocation
    address: str
    steps: tuple[tuple[str, ...], ...]
    study: tuple[str, ...]

    def render(self) -> str:
        """The plan as shell text (what ``--dry-run`` prints)."""
        alloc = self.allocation
        cpus = "/".join(str(c) for c in sorted({c for c in alloc.cpus if c is not None}))
        return "\n".join(
            [
                f"# Slurm job {alloc.job_id or '?'}: {len(alloc.nodes)} node(s), head "
                f"{alloc.nodes[0]}; per node: CPUs {cpus or 'auto-detected'}, GPUs {alloc.gpus}; "
                f"Ray address {self.address}",
                *(shlex.join(step) + " &" for step in self.steps[1:]),
                shlex.join(self.steps[0]),
            ]
        )


def plan_commands(
    spec_path: str | os.PathLike[str],
    env: Mapping[str, str],
    command: str = "run",
    port: int = 6379,
    *,
    head_ip: str | None = None,
    temp_dir: str | None = None,
    out: str | None = None,
    extra_args: Sequence[str] = (),
    ray_executable: str = "ray",
    hrtem_ray_executable: str = "hrtem-ray",
) -> SlurmPlan:
    """The commands that run a study on the allocation described by ``env`` (nothing runs).

    Parameters
    ----------
    spec_path
        Study spec YAML, passed to the study command as given.
    env
        Environment with the ``SLURM_*`` variables.
    command
        ``hrtem-ray`` subcommand: ``run``, ``sweep`` or ``simulate``.
    port
        GCS port of the Ray head.
    head_ip
        Address the nodes reach the head at; default ``HRTEM_RAY_HEAD_IP``, else the
        head's host name (:func:`main_from_cli` resolves it to an IP first).
    temp_dir
        Node-local Ray temp dir; default ``/tmp/ray-<SLURM_JOB_ID>`` (short: Ray's
        socket paths must stay under 107 bytes).
    out, extra_args
        ``--out`` and further arguments of the study command (e.g. ``["--resume"]``).
    ray_executable, hrtem_ray_executable
        Programs to call.
    """
    if command not in STUDY_COMMANDS:
        raise ValueError(f"command must be one of {STUDY_COMMANDS}, got {command!r}")
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port}")
    alloc = allocation_from_env(env)
    address = f"{head_ip or env.get('HRTEM_RAY_HEAD_IP') or alloc.nodes[0]}:{port}"
    study = [hrtem_ray_executable, command, os.fspath(spec_path), "--address", address]
    study += ["--out", out] if out is not None else []
    study += list(extra_args)
    tmp = temp_dir or f"/tmp/ray-{alloc.job_id or 'slurm'}"

    def step(host: str, cpus: int | None) -> tuple[str, ...]:
        # --cpus-per-task explicitly: some Slurm releases stopped handing the job's value to
        # steps. A step that asks for no GRES gets all of the job's GPUs on its node.
        srun = ["srun", "--nodes=1", "--ntasks=1", f"--nodelist={host}"]
        srun += [] if cpus is None else [f"--cpus-per-task={cpus}"]
        srun += [f"--export=ALL,RAY_SYMMETRIC_RUN_CLUSTER_WAIT_TIMEOUT={CLUSTER_WAIT_SECONDS}"]
        ray = [ray_executable, "symmetric-run", f"--address={address}"]
        ray += [f"--min-nodes={len(alloc.nodes)}"]
        ray += [] if cpus is None else [f"--num-cpus={cpus}"]
        ray += [f"--num-gpus={alloc.gpus}", f"--temp-dir={tmp}", "--disable-usage-stats"]
        return (*srun, *ray, "--", *study)

    steps = tuple(step(h, c) for h, c in zip(alloc.nodes, alloc.cpus, strict=True))
    return SlurmPlan(alloc, address, steps, tuple(study))


def run(plan: SlurmPlan, stop_grace_seconds: float = 60.0) -> int:
    """Start every node's step; return the head step's exit status (the study's).

    Worker steps end by themselves once the head's Ray stops; any still running
    ``stop_grace_seconds`` later are terminated.
    """
    workers = [subprocess.Popen(list(step)) for step in plan.steps[1:]]
    head = subprocess.Popen(list(plan.steps[0]))
    try:
        status = head.wait()
    finally:
        for proc in [head, *workers]:
            try:
                proc.wait(timeout=stop_grace_seconds)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait()
    return status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``hrtem-ray slurm`` (shared by ``python -m hrtem_ray.slurm``)."""
    parser.add_argument("spec", help="study spec YAML")
    parser.add_argument("--command", dest="study_command", choices=STUDY_COMMANDS, default="run")
    parser.add_argument("--out", default=None, help="study output directory or URI")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--head-ip", default=None, help="head address (default: resolved)")
    parser.add_argument("--temp-dir", default=None, help="Ray temp dir (default /tmp/ray-<jobid>)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the commands, run nothing (arguments after -- go to the study command)",
    )


def main_from_cli(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """Run ``hrtem-ray slurm`` from parsed arguments: 0 after a dry run, 2 for a bad
    environment, else the study's exit status."""
    env = os.environ if env is None else env
    head_ip = args.head_ip or env.get("HRTEM_RAY_HEAD_IP")
    try:
        if head_ip is None:
            head = allocation_from_env(env).nodes[0]
            try:
                head_ip = socket.gethostbyname(head)
            except OSError as exc:
                if not args.dry_run:
                    raise SlurmEnvError(f"cannot resolve head node {head}: {exc}") from None
                print(f"# note: {head} not resolvable here; showing the host name")
        plan = plan_commands(
            args.spec,
            env,
            command=args.study_command,
            port=args.port,
            head_ip=head_ip,
            temp_dir=args.temp_dir,
            out=args.out,
            extra_args=getattr(args, "extra", None) or (),
        )
    except SlurmEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(plan.render(), flush=True)
    return 0 if args.dry_run else run(plan)


def _module_main(argv: Sequence[str] | None = None) -> int:
    """``python -m hrtem_ray.slurm``: the options of ``hrtem-ray slurm``, plus ``-- ARGS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        prog="python -m hrtem_ray.slurm",
        description="Start Ray across a Slurm allocation and run a hrtem-ray study.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv[:cut])
    args.extra = argv[cut + 1 :]
    return main_from_cli(args)


if __name__ == "__main__":
    sys.exit(_module_main())
