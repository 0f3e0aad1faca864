"""Run a hrtem-ray study on a Slurm allocation with Ray's own launcher, ``ray symmetric-run``.

Inside an ``sbatch`` job (see ``sweeps/slurm.sbatch``) ``hrtem-ray slurm SPEC``
starts one ``srun`` step per allocated node, each running the same command::

    ray symmetric-run --address HEAD_IP:PORT --min-nodes N [ray start options] \\
        -- hrtem-ray run SPEC --address HEAD_IP:PORT

Ray's launcher does the process control: on the node that owns ``HEAD_IP`` it
starts the head, waits for ``N`` nodes, runs the study and stops Ray; on every
other node it joins the head and blocks until the head goes away. The job's exit
status is the head step's, i.e. the study's. Host lists come from
``scontrol show hostnames``. ``--dry-run`` prints every command instead.

The ``SLURM_*`` variables read, and ``HRTEM_RAY_HEAD_IP``, are listed in the
README's Slurm section (and :data:`CPU_VARIABLES`, :data:`GPU_VARIABLES`).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hrtem_ray.exit_codes import EXIT_BAD_INPUT, EXIT_OK

STUDY_COMMANDS = ("run", "sweep", "simulate")
# Seconds ray symmetric-run waits for the head (on workers) and for all nodes (on the head).
CLUSTER_WAIT_SECONDS = 300
# Where the CPU and GPU counts per node are read from, first set first (see the module docstring).
CPU_VARIABLES = ("SLURM_CPUS_PER_TASK", "SLURM_JOB_CPUS_PER_NODE", "SLURM_CPUS_ON_NODE")
GPU_VARIABLES = ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_TASK")


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


def _counts(env: Mapping[str, str], var: str, n_nodes: int) -> tuple[int, ...]:
    """``env[var]`` per node: ``"4"`` or ``"a100:4"`` for all nodes, ``"32(x2),16"`` node by node."""
    counts: list[int] = []
    for item in env[var].split(","):
        m = re.fullmatch(r"\s*(?:[\w.-]+:)*(\d+)(?:\(x(\d+)\))?\s*", item)
        if m is None:
            raise SlurmEnvError(f"cannot read a count from {var}={env[var]!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    if len(counts) == 1 and "(" not in env[var]:
        return tuple(counts) * n_nodes
    if len(counts) != n_nodes:
        raise SlurmEnvError(f"{var}={env[var]!r}: {len(counts)} counts for {n_nodes} node(s)")
    return tuple(counts)


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
    cpu_var = next((var for var in CPU_VARIABLES if env.get(var)), None)
    gpu_var = next((var for var in GPU_VARIABLES if env.get(var)), None)
    cpus = _counts(env, cpu_var, len(nodes)) if cpu_var else (None,) * len(nodes)
    gpus = _counts(env, gpu_var, 1)[0] if gpu_var else 0
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
    resolve_head: Callable[[str], str] | None = None,
    temp_dir: str | None = None,
    out: str | None = None,
    extra_args: Sequence[str] = (),
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
    head_ip, resolve_head
        Address the nodes reach the head at; default ``HRTEM_RAY_HEAD_IP``, else the head's
        host name mapped by ``resolve_head`` (:func:`main_from_cli` resolves it to an IP).
    temp_dir
        Node-local Ray temp dir; default ``/tmp/ray-<SLURM_JOB_ID>`` (short: Ray's
        socket paths must stay under 107 bytes).
    out, extra_args
        ``--out`` and further arguments of the study command (e.g. ``["--resume"]``).
    hrtem_ray_executable
        Program that runs the study on the head.
    """
    if command not in STUDY_COMMANDS:
        raise ValueError(f"command must be one of {STUDY_COMMANDS}, got {command!r}")
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port}")
    alloc = allocation_from_env(env)
    head = head_ip or env.get("HRTEM_RAY_HEAD_IP") or (resolve_head or str)(alloc.nodes[0])
    address = f"{head}:{port}"
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
        ray = ["ray", "symmetric-run", f"--address={address}"]
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
    procs = [subprocess.Popen(list(step)) for step in plan.steps]
    try:
        return procs[0].wait()
    finally:
        for proc in procs:
            try:
                proc.wait(timeout=stop_grace_seconds)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``hrtem-ray slurm``; parse with :func:`parse_args`, which passes the
    arguments after ``--`` to the study command."""
    parser.add_argument("spec", help="study spec YAML")
    parser.add_argument(
        "--command", dest="study_command", choices=STUDY_COMMANDS, default="run",
        help="hrtem-ray command the head runs once all nodes are up (default: run)",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="study output directory or URI")
    parser.add_argument("--port", type=int, default=6379, help="Ray head port (default: 6379)")
    parser.add_argument(
        "--head-ip", default=None,
        help="head address as the nodes reach it (default: $HRTEM_RAY_HEAD_IP, else resolved)",
    )  # fmt: skip
    parser.add_argument("--temp-dir", default=None, help="Ray temp dir (default /tmp/ray-<jobid>)")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="print the commands, run nothing (arguments after -- go to the study command)",
    )  # fmt: skip


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` up to the first ``--``; what follows it becomes ``args.extra``, the
    further arguments of the study command (``hrtem-ray slurm SPEC -- --resume``)."""
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    return parser.parse_args(argv[:cut], argparse.Namespace(extra=argv[cut + 1 :]))


def _resolve(host: str, dry_run: bool) -> str:
    """``host``'s IP address; in a dry run, the name itself (with a note) if it does not resolve."""
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        if not dry_run:
            raise SlurmEnvError(f"cannot resolve head node {host}: {exc}") from None
        print(f"# note: {host} not resolvable here; showing the host name")
        return host


def main_from_cli(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """Run ``hrtem-ray slurm`` from parsed arguments: 0 after a dry run, 2 for a bad
    environment, else the study's exit status."""
    env = os.environ if env is None else env
    try:
        plan = plan_commands(
            args.spec, env, args.study_command, args.port, head_ip=args.head_ip,
            resolve_head=lambda host: _resolve(host, args.dry_run), temp_dir=args.temp_dir,
            out=args.out, extra_args=args.extra,
        )  # fmt: skip
    except SlurmEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(plan.render(), flush=True)
    return EXIT_OK if args.dry_run else run(plan)
