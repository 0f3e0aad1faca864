"""S3 settings from the environment, and the clients built from them without credentials.

``s3://bucket/prefix`` storage (:mod:`hrtem_ray.store.storage`) is Amazon S3 or any
S3-compatible server (MinIO, Ceph, moto). Settings come from the environment
(:func:`s3_settings_from_env`):

``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and optional ``AWS_SESSION_TOKEN``)
    Credentials. If unset, the AWS default chain applies (``~/.aws``, instance
    profile on EC2, ...). Credentials are never put into a filesystem object:
    every client (pyarrow, boto3, the AWS SDK inside Ray workers) reads them
    from that chain on the node where it runs, so nothing that Ray pickles or
    persists (Tune's ``tuner.pkl``, experiment and searcher state) holds a
    secret. On a multi-node cluster every node needs the credentials in its
    environment or an instance profile.
``AWS_REGION`` or ``AWS_DEFAULT_REGION``
    Region of the bucket (default ``us-east-1``).
``HRTEM_RAY_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``
    Custom endpoint such as ``http://127.0.0.1:9000``. The scheme is honoured,
    so plain ``http`` works for local servers; without a scheme ``https`` is used.

:func:`s3_filesystem` (pyarrow) and :func:`boto3_client` (the conditional requests of
:mod:`hrtem_ray.store.conditional`, the probe of
:func:`~hrtem_ray.store.storage.check_writable_root`) share these settings;
:func:`polars_storage_options` passes them to polars, and
:func:`keep_credentials_out_of_ray_tune` stops Ray Tune from copying credentials.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

ENDPOINT_ENV_VARS = ("HRTEM_RAY_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_ENV_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Settings:
    """S3 connection settings read from the environment.

    Attributes
    ----------
    access_key, secret_key, session_token : str or None
        Credentials seen in the environment (``None`` when the AWS default chain
        decides). Only checked and used to tell settings apart; they are never
        passed to a client or filesystem object, and hidden from ``repr``.
    region : str
        Bucket region.
    endpoint_override : str or None
        ``host:port`` of a custom endpoint, without scheme.
    scheme : str
        ``"https"`` or ``"http"``.
    endpoint_url : str or None
        The endpoint as given (with scheme), for clients that want a URL.
    """

    access_key: str | None = field(repr=False)
    secret_key: str | None = field(repr=False)
    session_token: str | None = field(repr=False)
    region: str
    endpoint_override: str | None
    scheme: str
    endpoint_url: str | None


def s3_settings_from_env(env: Mapping[str, str] | None = None) -> S3Settings:
    """Read S3 settings from environment variables.

    Parameters
    ----------
    env : Mapping[str, str], optional
        Environment to read; defaults to :data:`os.environ`.

    Returns
    -------
    S3Settings
        The settings; see the module docstring for the variables.

    Raises
    ------
    ValueError
        If only one of the access key and the secret key is set, or the
        endpoint URL has an unsupported scheme.
    """
    env = os.environ if env is None else env
    access_key = env.get("AWS_ACCESS_KEY_ID") or None
    secret_key = env.get("AWS_SECRET_ACCESS_KEY") or None
    if (access_key is None) != (secret_key is None):
        raise ValueError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")
    region = next((env[k] for k in REGION_ENV_VARS if env.get(k)), DEFAULT_REGION)
    endpoint_url = next((env[k] for k in ENDPOINT_ENV_VARS if env.get(k)), None)
    endpoint_override, scheme = None, "https"
    if endpoint_url:
        if "://" in endpoint_url:
            parts = urlsplit(endpoint_url)
            if parts.scheme not in ("http", "https"):
                raise ValueError(f"S3 endpoint must be http(s)://host[:port], got {endpoint_url!r}")
            scheme, endpoint_override = parts.scheme, parts.netloc
        else:
            endpoint_override = endpoint_url.rstrip("/")
    return S3Settings(
        access_key=access_key,
        secret_key=secret_key,
        session_token=env.get("AWS_SESSION_TOKEN") or None,
        region=region,
        endpoint_override=endpoint_override,
        scheme=scheme,
        endpoint_url=endpoint_url,
    )


@functools.lru_cache(maxsize=8)
def s3_filesystem(settings: S3Settings) -> pafs.S3FileSystem:
    """Build an S3 filesystem from settings (no network traffic happens here).

    Cached per settings, so that successive calls share one client and its
    connection pool (a new client costs about 0.4 ms and new connections). The
    filesystem carries no credentials (see the comment below), so pickling it,
    as Ray does, never writes a secret.
    """
    # allow_delayed_open: a stream closed before its first part fills is sent as
    # one PutObject instead of a multipart upload (one request, atomic).
    #
    # No access_key / secret_key / session_token, ever: Ray Tune pickles the
    # filesystem it is given into tuner.pkl and its experiment and searcher state
    # files, so explicit keys would be written into the study's storage. Without
    # them the AWS SDK reads the credentials from its default chain (environment,
    # ~/.aws, instance profile) wherever the filesystem is used or unpickled.
    kwargs: dict[str, Any] = {
        "region": settings.region,
        "scheme": settings.scheme,
        "allow_delayed_open": True,
    }
    if settings.endpoint_override:
        kwargs["endpoint_override"] = settings.endpoint_override
    return pafs.S3FileSystem(**kwargs)


#: Retries of the clients of :func:`boto3_client` and of :func:`probe_client`.
CLIENT_ATTEMPTS = 5
PROBE_ATTEMPTS = 1


@functools.lru_cache(maxsize=8)
def _boto3_client_cached(settings: S3Settings, attempts: int = CLIENT_ATTEMPTS) -> Any:
    """A boto3 S3 client for ``settings`` making ``attempts`` attempts per request
    (see :func:`boto3_client`)."""
    import boto3
    from botocore.config import Config

    endpoint_url = None
    addressing = "auto"
    if settings.endpoint_override:
        endpoint_url = f"{settings.scheme}://{settings.endpoint_override}"
        addressing = "path"  # what pyarrow uses for a custom endpoint (MinIO, moto)
    # Credentials are left to boto3's default chain (environment, instance profile),
    # exactly as for the pyarrow filesystem.
    return boto3.session.Session().client(
        "s3",
        region_name=settings.region,
        endpoint_url=endpoint_url,
        config=Config(
            s3={"addressing_style": addressing},
            retries={"max_attempts": attempts},
            connect_timeout=10 if attempts == PROBE_ATTEMPTS else 60,
        ),
    )


def boto3_client(settings: S3Settings | None = None) -> Any:
    """A boto3 S3 client built from the same settings as the pyarrow filesystem.

    Region, endpoint URL (with its scheme) and path-style addressing for custom
    endpoints follow :func:`s3_settings_from_env`; credentials come from boto3's
    default chain. Clients are cached per settings (the settings include the
    credentials seen in the environment, so a change of credentials gets a new
    client; nothing here is ever persisted).
    """
    return _boto3_client_cached(s3_settings_from_env() if settings is None else settings)


def probe_client(settings: S3Settings | None = None) -> Any:
    """A client like :func:`boto3_client`'s that makes one attempt per request and waits
    at most 10 s to connect: a check before any work (an unreachable endpoint, no
    credentials) answers in seconds instead of after the retries of a long run."""
    settings = s3_settings_from_env() if settings is None else settings
    return _boto3_client_cached(settings, PROBE_ATTEMPTS)


def client_error_code(exc: BaseException) -> tuple[str, int]:
    """``(code, http_status)`` of a botocore ``ClientError``."""
    response = getattr(exc, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def is_precondition_failure(exc: BaseException) -> bool:
    """Whether a botocore error says a conditional request's condition did not hold."""
    code, status = client_error_code(exc)
    # 409 ConditionalRequestConflict: a concurrent conditional write won on AWS.
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (412, 409)


def is_missing(exc: BaseException) -> bool:
    """Whether a botocore error says the object does not exist."""
    code, status = client_error_code(exc)
    return code in ("NoSuchKey", "NotFound", "404") or status == 404


def keep_credentials_out_of_ray_tune() -> None:
    """Stop Ray Tune from copying AWS credentials into its trainables' ``runtime_env``.

    Ray Tune 2.60 copies ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN`` and ``AWS_SECURITY_TOKEN`` from the driver's
    environment into the ``runtime_env`` of every trainable actor
    (``ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE``). Ray then holds
    them in the cluster's metadata and its runtime-env agent writes them, in
    plain text, into ``logs/runtime_env_agent.log`` of the Ray session folder on
    every node. This drops the ``AWS_*`` names from that set (idempotent; a
    no-op if Ray's internals differ). Trainables then read credentials from
    their node's environment or instance profile, like every other client here;
    on a local cluster the workers inherit the driver's environment.
    """
    try:
        from ray.tune.execution import class_cache
    except ImportError:  # pragma: no cover - another Ray layout: nothing to patch
        return
    names = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if isinstance(names, (set, frozenset)):
        class_cache.ENV_VARS_TO_PROPAGATE = type(names)(
            n for n in names if not n.upper().startswith("AWS_")
        )


def polars_storage_options(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``storage_options`` for ``polars.scan_parquet("s3://...")`` from the same settings.

    Sets the region and, when configured, the endpoint. Credentials are never
    included: polars reads them from the environment (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``) or its own AWS default
    chain, so the returned options are safe to log, pickle or store.
    """
    s = s3_settings_from_env(env)
    opts: dict[str, str] = {"aws_region": s.region}
    if s.endpoint_override:
        opts["aws_endpoint_url"] = f"{s.scheme}://{s.endpoint_override}"
        if s.scheme == "http":
            opts["aws_allow_http"] = "true"
    return opts
