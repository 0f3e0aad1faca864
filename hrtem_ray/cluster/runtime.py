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

import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

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
