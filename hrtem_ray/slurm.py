"""Run a hrtem-ray study on a Slurm allocation: a Ray head on the first node, workers on the rest.

Inside an ``sbatch`` job (see ``sweeps/slurm.sbatch``) ``hrtem-ray slurm SPEC``
(or ``python -m hrtem_ray.slurm SPEC``) reads the ``SLURM_*`` variables of the
allocation, and

1. starts ``ray start --head ... --block`` on the first node with ``srun``,
2. starts ``ray start --address=HEAD:PORT ... --block`` on every other node,
3. waits until all nodes have joined,
4. runs ``hrtem-ray run SPEC --address HEAD:PORT`` (or ``sweep`` / ``simulate``),
5. stops the Ray processes (ending their ``srun`` steps) and returns the study's
   exit status.

``--dry-run`` prints the exact commands instead. All the decisions live in
:func:`plan_commands`, a pure function of the environment, so they are tested
without a Slurm cluster.

Variables read
--------------
``SLURM_JOB_NODELIST`` (or the older ``SLURM_NODELIST``)
    Allocated nodes, in Slurm's compressed form (``node[01-03]``, ``gpu[1,3-4]``).
    The first node is the head. Required.
``SLURM_JOB_ID``
    Names the node-local Ray temp dir (``/tmp/ray-<jobid>``).
``SLURM_CPUS_PER_TASK``, else ``SLURM_JOB_CPUS_PER_NODE`` (``32(x2),16``), else ``SLURM_CPUS_ON_NODE``
    CPUs Ray may use per node (``--num-cpus``); omitted if none is set.
``SLURM_GPUS_ON_NODE``, else ``SLURM_GPUS_PER_NODE`` / ``SLURM_GPUS_PER_TASK`` (``4`` or ``a100:4``)
    GPUs per node (``--num-gpus``); ``0`` if none is set, so Ray never claims GPUs
    the job did not ask for.
``HRTEM_RAY_HEAD_IP``
    Address of the head node as the other nodes reach it (e.g. its InfiniBand
    IP). Default: the head host name resolved on the head node.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "SlurmEnvError",
    "SlurmAllocation",
    "SlurmPlan",
    "expand_hostlist",
    "allocation_from_env",
    "plan_commands",
    "render",
    "run",
    "main_from_cli",
]

STUDY_COMMANDS = ("run", "sweep", "simulate")


class SlurmEnvError(ValueError):
    """The environment does not describe a usable Slurm allocation."""


# --------------------------------------------------------------------------- hostlists


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``[...]``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
            if depth > 1:
                raise ValueError(f"nested '[' in hostlist {text!r}")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in hostlist {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"unbalanced '[' in hostlist {text!r}")
    parts.append(text[start:])
    return parts


def _expand_ranges(body: str, whole: str) -> list[str]:
    """Expand the inside of one bracket, e.g. ``"01-03,07"`` -> ``["01", "02", "03", "07"]``.

    Zero padding follows the width of the lower bound, as in Slurm.
    """
    values: list[str] = []
    for item in body.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if m is None:
            raise ValueError(f"bad range {item!r} in hostlist {whole!r}")
        lo, hi = m.group(1), m.group(2)
        if hi is None:
            values.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in hostlist {whole!r}")
        width = len(lo)
        values.extend(f"{n:0{width}d}" for n in range(int(lo), int(hi) + 1))
    return values


def _expand_one(pattern: str, whole: str) -> list[str]:
    """Expand one comma-free host pattern such as ``rack[1-2]-n[01-02]``."""
    pieces = re.split(r"(\[[^\]]*\])", pattern)
    choices = [
        _expand_ranges(p[1:-1], whole) if p.startswith("[") else [p] for p in pieces if p != ""
    ]
    return ["".join(combo) for combo in itertools.product(*choices)]


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm hostlist expression into host names.

    Parameters
    ----------
    hostlist : str
        E.g. ``"node[01-03]"``, ``"gpu[1,3-4]"``, ``"a1,b[2-3],c"`` or
        ``"rack[1-2]-n[1-2]"`` (several brackets expand as a product).

    Returns
    -------
    list of str
        Host names in order, duplicates removed.

    Raises
    ------
    ValueError
        On empty input, unbalanced or nested brackets, or malformed ranges.

    Examples
    --------
    >>> expand_hostlist("node[01-03]")
    ['node01', 'node02', 'node03']
    >>> expand_hostlist("gpu[1,3-4]")
    ['gpu1', 'gpu3', 'gpu4']
    """
    text = hostlist.strip()
    if not text:
        raise ValueError("empty hostlist")
    hosts: list[str] = []
    for part in _split_top_level(text):
        part = part.strip()
        if not part:
            raise ValueError(f"empty entry in hostlist {hostlist!r}")
        hosts.extend(_expand_one(part, hostlist))
    return list(dict.fromkeys(hosts))


# --------------------------------------------------------------------------- allocation


def _parse_count(value: str, var: str) -> int:
    """Parse a GPU/CPU count such as ``"4"``, ``"a100:4"`` or ``"gpu:a100:4"``."""
    last = value.strip().split(":")[-1]
    if not last.isdigit():
        raise SlurmEnvError(f"cannot read a count from {var}={value!r}")
    return int(last)


def _parse_cpus_per_node(value: str, n_nodes: int) -> list[int]:
    """Parse ``SLURM_JOB_CPUS_PER_NODE`` (``"32(x2),16"``) into one count per node."""
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
    """The part of a Slurm allocation that Ray needs.

    Attributes
    ----------
    job_id : str
        ``SLURM_JOB_ID`` (``""`` if unset).
    nodes : tuple of str
        Host names; the first one becomes the Ray head.
    cpus : tuple of (int or None)
        CPUs per node, aligned with ``nodes`` (``None``: let Ray detect).
    gpus : int
        GPUs per node.
    """

    job_id: str
    nodes: tuple[str, ...]
    cpus: tuple[int | None, ...]
    gpus: int


def allocation_from_env(env: Mapping[str, str]) -> SlurmAllocation:
    """Read the allocation from ``SLURM_*`` variables.

    Parameters
    ----------
    env : Mapping[str, str]
        Usually :data:`os.environ` inside an sbatch script.

    Returns
    -------
    SlurmAllocation

    Raises
    ------
    SlurmEnvError
        If ``SLURM_JOB_NODELIST`` is missing or a variable cannot be parsed.
    """
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise SlurmEnvError(
            "SLURM_JOB_NODELIST is not set: run this inside a Slurm allocation "
            "(sbatch or salloc), or set SLURM_JOB_NODELIST=node[01-03] by hand"
        )
    try:
        nodes = tuple(expand_hostlist(nodelist))
    except ValueError as exc:
        raise SlurmEnvError(f"SLURM_JOB_NODELIST={nodelist!r}: {exc}") from None

    cpus: tuple[int | None, ...]
    if env.get("SLURM_CPUS_PER_TASK"):
        cpus = (_parse_count(env["SLURM_CPUS_PER_TASK"], "SLURM_CPUS_PER_TASK"),) * len(nodes)
    elif env.get("SLURM_JOB_CPUS_PER_NODE"):
        cpus = tuple(_parse_cpus_per_node(env["SLURM_JOB_CPUS_PER_NODE"], len(nodes)))
    elif env.get("SLURM_CPUS_ON_NODE"):
        cpus = (_parse_count(env["SLURM_CPUS_ON_NODE"], "SLURM_CPUS_ON_NODE"),) * len(nodes)
    else:
        cpus = (None,) * len(nodes)

    gpus = 0
    for var in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "SLURM_GPUS_PER_TASK"):
        if env.get(var):
            gpus = _parse_count(env[var], var)
            break
    return SlurmAllocation(job_id=env.get("SLURM_JOB_ID", ""), nodes=nodes, cpus=cpus, gpus=gpus)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class SlurmPlan:
    """Every command a Slurm run executes, as argument vectors.

    Attributes
    ----------
    allocation : SlurmAllocation
        What the plan was computed from.
    head_host : str
        First allocated node.
    worker_hosts : tuple of str
        The other nodes.
    address : str
        ``HEAD_IP:PORT`` that workers and the study connect to.
    temp_dir : str
        Node-local Ray temp dir.
    head_start : tuple of str
        ``ray start --head ...`` argv.
    worker_starts : tuple of tuple of str
        ``ray start --address ...`` argv per worker host.
    head_srun : tuple of str
        ``srun`` wrapper around ``head_start``.
    worker_sruns : tuple of tuple of str
        ``srun`` wrapper around each worker start.
    study : tuple of str
        The study command, run in the batch step on the head node.
    """

    allocation: SlurmAllocation
    head_host: str
    worker_hosts: tuple[str, ...]
    address: str
    temp_dir: str
    head_start: tuple[str, ...]
    worker_starts: tuple[tuple[str, ...], ...]
    head_srun: tuple[str, ...]
    worker_sruns: tuple[tuple[str, ...], ...]
    study: tuple[str, ...]

    @property
    def n_nodes(self) -> int:
        """Number of Ray nodes (head included)."""
        return 1 + len(self.worker_hosts)

    def render(self) -> str:
        """The plan as shell text (what ``--dry-run`` prints)."""
        return render(self)


def _resource_flags(cpus: int | None, gpus: int) -> list[str]:
    flags = [] if cpus is None else [f"--num-cpus={cpus}"]
    return [*flags, f"--num-gpus={gpus}"]


def _srun(host: str, cpus: int | None, argv: Sequence[str]) -> tuple[str, ...]:
    """Wrap ``argv`` in a one-task ``srun`` step pinned to ``host``.

    ``--cpus-per-task`` is passed explicitly because some Slurm releases (22.05)
    stopped handing the job's value down to steps. GPUs need no flag: a step that
    asks for no GRES gets all of the job's GPUs on its node.
    """
    cpu_flag = [] if cpus is None else [f"--cpus-per-task={cpus}"]
    return ("srun", "--nodes=1", "--ntasks=1", *cpu_flag, f"--nodelist={host}", *argv)


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
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    ray_executable: str = "ray",
    hrtem_ray_executable: str = "hrtem-ray",
) -> SlurmPlan:
    """Compute the commands that run a study on the allocation described by ``env``.

    Pure: no process is started, no name is resolved.

    Parameters
    ----------
    spec_path : str or os.PathLike
        Study spec YAML, passed to the study command as given.
    env : Mapping[str, str]
        Environment with the ``SLURM_*`` variables (see the module docstring).
    command : {"run", "sweep", "simulate"}
        ``hrtem-ray`` subcommand to run.
    port : int
        GCS port of the Ray head.
    head_ip : str, optional
        Address workers use to reach the head; default ``env["HRTEM_RAY_HEAD_IP"]``,
        else the head host name (``run`` resolves it to an IP first).
    temp_dir : str, optional
        Ray temp dir on every node; default ``/tmp/ray-<SLURM_JOB_ID>`` (node-local,
        and short: Ray's Unix socket paths must stay under 107 bytes).
    out : str, optional
        ``--out`` for the study command.
    extra_args : sequence of str
        Appended to the study command (e.g. ``["--resume"]``).
    num_cpus, num_gpus : int, optional
        Override the per-node counts read from the environment.
    ray_executable, hrtem_ray_executable : str
        Programs to call.

    Returns
    -------
    SlurmPlan

    Raises
    ------
    SlurmEnvError
        If the environment is not a usable allocation.
    ValueError
        For an unknown ``command`` or a bad ``port``.
    """
    if command not in STUDY_COMMANDS:
        raise ValueError(f"command must be one of {STUDY_COMMANDS}, got {command!r}")
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port}")
    alloc = allocation_from_env(env)
    head_host, *workers = alloc.nodes
    head = head_ip or env.get("HRTEM_RAY_HEAD_IP") or head_host
    address = f"{head}:{port}"
    tmp = temp_dir or f"/tmp/ray-{alloc.job_id or 'slurm'}"
    gpus = alloc.gpus if num_gpus is None else num_gpus

    def cpus_of(i: int) -> int | None:
        return alloc.cpus[i] if num_cpus is None else num_cpus

    common_tail = [f"--temp-dir={tmp}", "--disable-usage-stats", "--block"]
    head_start = (
        ray_executable,
        "start",
        "--head",
        f"--node-ip-address={head}",
        f"--port={port}",
        *_resource_flags(cpus_of(0), gpus),
        *common_tail,
    )
    worker_starts = tuple(
        (
            ray_executable,
            "start",
            f"--address={address}",
            *_resource_flags(cpus_of(i), gpus),
            *common_tail,
        )
        for i in range(1, len(alloc.nodes))
    )
    study = [hrtem_ray_executable, command, os.fspath(spec_path), "--address", address]
    if out is not None:
        study += ["--out", out]
    study += list(extra_args)
    return SlurmPlan(
        allocation=alloc,
        head_host=head_host,
        worker_hosts=tuple(workers),
        address=address,
        temp_dir=tmp,
        head_start=head_start,
        worker_starts=worker_starts,
        head_srun=_srun(head_host, cpus_of(0), head_start),
        worker_sruns=tuple(
            _srun(h, cpus_of(i), w)
            for i, (h, w) in enumerate(zip(workers, worker_starts, strict=True), start=1)
        ),
        study=tuple(study),
    )


def render(plan: SlurmPlan) -> str:
    """Render a plan as the shell commands it stands for.

    Background steps end in ``&``; the study runs in the foreground.
    """
    alloc = plan.allocation
    cpus = sorted({c for c in alloc.cpus if c is not None})
    cpu_text = "auto-detected" if not cpus else "/".join(str(c) for c in cpus)
    lines = [
        f"# Slurm job {alloc.job_id or '?'}: {plan.n_nodes} node(s), head {plan.head_host}, "
        f"workers {' '.join(plan.worker_hosts) or '(none)'}",
        f"# per node: CPUs {cpu_text}, GPUs {alloc.gpus}; Ray address {plan.address}",
        "# 1. Ray head",
        shlex.join(plan.head_srun) + " &",
        "# 2. Ray workers (after the head answers on its port)",
        *(shlex.join(w) + " &" for w in plan.worker_sruns),
        f"# 3. study (after {plan.n_nodes} node(s) joined)",
        shlex.join(plan.study),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- run


def resolve_head_ip(host: str) -> str:
    """Resolve the head host name to an IPv4 address (on the head node itself)."""
    return socket.gethostbyname(host)


def wait_for_port(host: str, port: int, timeout_s: float, alive: Callable[[], bool]) -> None:
    """Wait until ``host:port`` accepts TCP connections.

    Raises
    ------
    RuntimeError
        If ``alive()`` turns false (the head's srun step died).
    TimeoutError
        After ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the Ray head step exited before it started listening")
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"Ray head {host}:{port} did not come up within {timeout_s:.0f} s")


def wait_for_nodes(address: str, n_nodes: int, timeout_s: float) -> None:
    """Connect to the cluster and wait until ``n_nodes`` nodes are alive."""
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            alive = sum(1 for n in ray.nodes() if n.get("Alive"))
            if alive >= n_nodes:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {alive} of {n_nodes} Ray nodes joined in {timeout_s} s")
            time.sleep(2)
    finally:
        ray.shutdown()


def _stop(procs: Sequence[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM the srun steps (srun forwards it to ``ray start --block``), then SIGKILL."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run(
    plan: SlurmPlan,
    *,
    startup_timeout_s: float = 300.0,
    stop_grace_s: float = 30.0,
    popen: Callable[..., subprocess.Popen] = subprocess.Popen,
    wait_head: Callable[[SlurmPlan, Callable[[], bool]], None] | None = None,
    wait_workers: Callable[[SlurmPlan], None] | None = None,
    run_study: Callable[[Sequence[str]], int] | None = None,
) -> int:
    """Execute a plan: start the head, the workers, run the study, stop Ray.

    Parameters
    ----------
    plan : SlurmPlan
        From :func:`plan_commands`; its ``address`` should be an IP here.
    startup_timeout_s : float
        Limit for the head to listen and for all workers to join.
    stop_grace_s : float
        Time the Ray steps get to exit after SIGTERM.
    popen, wait_head, wait_workers, run_study : callables, optional
        Replaceable for tests; defaults start real processes.

    Returns
    -------
    int
        Exit status of the study command (non-zero also if Ray failed to start).
    """
    host, port = plan.address.rsplit(":", 1)
    if wait_head is None:

        def wait_head(p: SlurmPlan, alive: Callable[[], bool]) -> None:
            wait_for_port(host, int(port), startup_timeout_s, alive)

    if wait_workers is None:

        def wait_workers(p: SlurmPlan) -> None:
            wait_for_nodes(p.address, p.n_nodes, startup_timeout_s)

    if run_study is None:

        def run_study(argv: Sequence[str]) -> int:
            return subprocess.run(list(argv), check=False).returncode

    procs: list[subprocess.Popen] = []
    try:
        head = popen(list(plan.head_srun))
        procs.append(head)
        wait_head(plan, lambda: head.poll() is None)
        procs.extend(popen(list(w)) for w in plan.worker_sruns)
        wait_workers(plan)
        return run_study(plan.study)
    except (RuntimeError, TimeoutError) as exc:
        print(f"hrtem-ray slurm: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop(list(reversed(procs)), stop_grace_s)


# --------------------------------------------------------------------------- CLI glue


def _study_command(args: argparse.Namespace) -> str:
    """The study subcommand: ``args.study_command``, else ``args.command``, else ``"run"``.

    ``hrtem-ray``'s parser should store the slurm ``--command`` option as
    ``study_command``: under the name ``command`` it overwrites the top-level
    subcommand (``slurm``).
    """
    for name in ("study_command", "command"):
        value = getattr(args, name, None)
        if value in STUDY_COMMANDS:
            return value
    return "run"


def main_from_cli(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> int:
    """Run ``hrtem-ray slurm`` from parsed arguments.

    Parameters
    ----------
    args : argparse.Namespace
        Reads ``spec``, ``port``, ``dry_run`` and, when present, ``study_command``
        (or ``command``), ``out``, ``head_ip``, ``temp_dir`` and ``extra`` (extra
        study arguments).
    env : Mapping[str, str], optional
        Defaults to :data:`os.environ`.

    Returns
    -------
    int
        0 after a dry run, 2 for an unusable environment, else the study's status.
    """
    env = os.environ if env is None else env
    head_ip = getattr(args, "head_ip", None) or env.get("HRTEM_RAY_HEAD_IP")

    def plan(ip: str | None) -> SlurmPlan:
        return plan_commands(
            args.spec,
            env,
            command=_study_command(args),
            port=args.port,
            head_ip=ip,
            temp_dir=getattr(args, "temp_dir", None),
            out=getattr(args, "out", None),
            extra_args=getattr(args, "extra", None) or (),
        )

    try:
        the_plan = plan(head_ip)
    except SlurmEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if head_ip is None:
        try:
            the_plan = plan(resolve_head_ip(the_plan.head_host))
        except OSError as exc:
            if not args.dry_run:
                print(
                    f"error: cannot resolve head node {the_plan.head_host}: {exc}", file=sys.stderr
                )
                return 2
            print(f"# note: {the_plan.head_host} not resolvable here; showing the host name")
    print(the_plan.render(), flush=True)
    if args.dry_run:
        return 0
    return run(the_plan)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hrtem_ray.slurm",
        description="Start Ray across a Slurm allocation and run a hrtem-ray study.",
    )
    p.add_argument("spec", help="study spec YAML")
    p.add_argument("--command", dest="study_command", choices=STUDY_COMMANDS, default="run")
    p.add_argument("--port", type=int, default=6379)
    p.add_argument("--out", default=None, help="study output directory or URI")
    p.add_argument("--head-ip", default=None, help="head address for workers (default: resolved)")
    p.add_argument("--temp-dir", default=None, help="Ray temp dir (default /tmp/ray-<jobid>)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.epilog = "Arguments after -- go to the study command, e.g. -- --resume."
    return p


def _module_main(argv: Sequence[str] | None = None) -> int:
    """``python -m hrtem_ray.slurm``: same options as ``hrtem-ray slurm``, plus ``-- ARGS``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = _parser().parse_args(argv)
    args.extra = extra
    return main_from_cli(args)


if __name__ == "__main__":
    sys.exit(_module_main())
