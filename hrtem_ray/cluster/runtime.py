"""Starting and joining Ray clusters.

Laptop mode starts a private local cluster (``address="local"``) kept on
loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) with the dashboard off; a
cluster address (``"auto"``, ``"ray://host:10001"`` or ``"host:6379"``) joins an
existing one.

Authentication
--------------
The local cluster runs **without authentication**: Ray's token authentication
is switched off (``RAY_AUTH_MODE=disabled``, unless the variable is already
set). Its ports listen on 127.0.0.1 only, so other machines cannot reach it,
but on a shared host any local user who can connect to the loopback ports (the
GCS, raylet and object-manager ports of the running cluster) can submit tasks
and actors to it while it runs; they would run as the user who started the
study, with that user's files and environment, including any cloud
credentials in it. On a machine you share with untrusted users, run studies in
a container or VM of your own, or set ``RAY_AUTH_MODE`` yourself (for example
to ``token``) before starting: this module never overrides a value that is
already set. Joining an existing cluster uses whatever that cluster was
started with.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import ray

log = logging.getLogger(__name__)

# Set before Ray starts (unless already set): keep a local cluster on 127.0.0.1 and
# switch Ray's token authentication off (see the module docstring for what that means).
_LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


def node_id() -> str:
    """The Ray node id of this process, or the host name outside a Ray session.

    Recorded with every dataset shard and trained model, so that a multi-node run
    shows where each was made.
    """
    try:
        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # no runtime context (e.g. a plain thread): fall back to the host
        pass
    return os.uname().nodename


@contextmanager
def ray_session(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    object_store_memory_bytes: int | None = None,
) -> Iterator[None]:
    """Use the running Ray session, join ``address``, or start a local cluster.

    A session this function starts is shut down on exit; one that was already
    running (a notebook, a test fixture) is left alone.

    Parameters
    ----------
    address
        ``None`` or ``"local"`` starts a private local cluster; anything else is
        passed to :func:`ray.init` to join an existing cluster.
    num_cpus, num_gpus, object_store_memory_bytes
        Sizes of a local cluster (ignored when joining one).
    """
    if ray.is_initialized():
        yield
        return
    if address in (None, "local"):
        for key, value in _LOCAL_ENV.items():
            os.environ.setdefault(key, value)
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            object_store_memory=object_store_memory_bytes,
            include_dashboard=False,
            log_to_driver=True,
            configure_logging=False,
        )
    else:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def largest_node(nodes: Sequence[dict]) -> tuple[float, float]:
    """``(CPUs, GPUs)`` of the alive node with the most CPUs (then GPUs) in ``ray.nodes()``
    form; ``(0, 0)`` when none is alive."""
    sizes = [
        (float(n.get("Resources", {}).get("CPU", 0)), float(n.get("Resources", {}).get("GPU", 0)))
        for n in nodes
        if n.get("Alive")
    ]
    return max(sizes, default=(0.0, 0.0))


def node_fits(nodes: Sequence[dict], cpu: float, gpu: float) -> bool:
    """Whether some alive node has ``cpu`` CPUs and ``gpu`` GPUs in all (busy or not)."""
    return any(
        n.get("Alive")
        and float(n.get("Resources", {}).get("CPU", 0)) >= cpu
        and float(n.get("Resources", {}).get("GPU", 0)) >= gpu
        for n in nodes
    )


def missing_node_line(nodes: Sequence[dict], cpu: float, gpu: float, waited_s: float) -> str:
    """The progress line of :func:`wait_for_node`: what one trial needs and what is there."""
    alive = sum(1 for n in nodes if n.get("Alive"))
    most_cpu, most_gpu = largest_node(nodes)
    return (
        f"waiting for a node with {cpu:g} CPU and {gpu:g} GPU for one trial "
        f"(resources.cpu, resources.gpu) for {waited_s:.0f} s: the largest of the {alive} "
        f"alive nodes has {most_cpu:g} CPU and {most_gpu:g} GPU; a node joining the cluster "
        "(or Ray's autoscaler) can provide one; Ctrl-C stops"
    )


def wait_for_node(
    cpu: float,
    gpu: float,
    *,
    poll_seconds: float = 2.0,
    report_every_seconds: float = 30.0,
    nodes: Callable[[], list[dict]] | None = None,
) -> float:
    """Wait until a node of the running Ray cluster can hold one trial; returns seconds waited.

    Ray Tune would otherwise keep every trial pending, silently, for as long as no node
    has ``cpu`` CPUs and ``gpu`` GPUs. On a joined cluster a node may join (or be added by
    the autoscaler) later, so this waits, logging :func:`missing_node_line` at once and
    every ``report_every_seconds`` (a private local cluster never waits: the study's
    preflight refused such a request before Ray started).

    Parameters
    ----------
    cpu, gpu
        One trial's resources.
    poll_seconds
        How often the cluster's nodes are read.
    report_every_seconds
        How often the progress line is logged (logger ``hrtem_ray.cluster.runtime``).
    nodes
        Reads the nodes (default :func:`ray.nodes`).
    """
    read = ray.nodes if nodes is None else nodes
    start = time.monotonic()
    next_report = start
    while True:
        current = read()
        if node_fits(current, cpu, gpu):
            return time.monotonic() - start
        now = time.monotonic()
        if now >= next_report:
            log.info(missing_node_line(current, cpu, gpu, now - start))
            next_report = now + report_every_seconds
        time.sleep(poll_seconds)
