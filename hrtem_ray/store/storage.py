"""Storage by URI: local paths, ``file://`` and ``s3://`` through pyarrow filesystems.

Every stage of hrtem-ray (datasets, checkpoints, result tables) addresses its
storage by a single root URI taken from the study spec. This module turns such a
URI into a :class:`pyarrow.fs.FileSystem` plus a filesystem-relative path and
offers the few operations the engine needs, with writes that never leave a
partial file under its final name.

Supported forms
---------------
* ``/abs/path``, ``rel/path``, ``~/path`` -- the local filesystem (relative paths
  are made absolute against the current directory so that Ray workers, which may
  run elsewhere, get the same path).
* ``file:///abs/path`` -- the same, explicitly.
* ``s3://bucket/prefix`` -- Amazon S3 or any S3-compatible server (MinIO, Ceph,
  moto). Settings come from the environment:

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

Atomicity
---------
:func:`create_exclusive` creates a file only if nothing is there (``os.link``
locally, a conditional ``PUT`` with ``If-None-Match: *`` on S3);
:func:`replace_if_unchanged` and :func:`delete_if_unchanged` are the matching
compare-and-swap operations (an ``flock``-serialised check and rename locally,
``If-Match: ETAG`` on S3). The study lock (:mod:`hrtem_ray.store.lock`) and the
dataset claim are built on them.

Local writes go to a hidden temporary file in the destination directory and are
moved into place with :func:`os.replace`. On S3 the object is uploaded in a
single PUT from memory, and S3 never exposes a partially uploaded object, so a
reader sees either the old object, the new one, or nothing.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import posixpath
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = [
    "StorageLocation",
    "S3Settings",
    "s3_settings_from_env",
    "resolve",
    "join",
    "exists",
    "makedirs",
    "listdir",
    "remove",
    "write_bytes_atomic",
    "create_exclusive",
    "replace_if_unchanged",
    "delete_if_unchanged",
    "StorageError",
    "check_writable_root",
    "read_bytes",
    "write_json_atomic",
    "read_json",
    "write_parquet_atomic",
    "read_parquet_files",
    "upload_dir",
    "download_dir",
    "pyarrow_filesystem_for_ray",
    "keep_credentials_out_of_ray_tune",
    "polars_storage_options",
    "is_local",
    "local_path",
]

ENDPOINT_ENV_VARS = ("HRTEM_RAY_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_ENV_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class StorageLocation:
    """A resolved storage location.

    Attributes
    ----------
    fs : pyarrow.fs.FileSystem
        Filesystem that holds the location.
    path : str
        Path inside ``fs`` (absolute local path, or ``bucket/key`` for S3).
    uri : str
        Canonical URI: an absolute local path, or ``s3://bucket/key``.
    """

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        """Whether the location is on the local filesystem."""
        return isinstance(self.fs, pafs.LocalFileSystem)


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
def _s3_filesystem(settings: S3Settings) -> pafs.S3FileSystem:
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


def _split_scheme(uri: str) -> tuple[str, str]:
    """Return ``(scheme, rest)``; scheme is ``""`` for plain paths."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return scheme.lower(), rest
    return "", uri


def resolve(uri_or_path: str | os.PathLike[str]) -> StorageLocation:
    """Resolve a URI or path into a filesystem and a path inside it.

    Parameters
    ----------
    uri_or_path : str or os.PathLike
        Local path, ``file://`` URI or ``s3://bucket/key`` URI.

    Returns
    -------
    StorageLocation
        Filesystem, path and canonical URI.

    Raises
    ------
    ValueError
        For an unsupported scheme or an S3 URI without a bucket.
    """
    raw = os.fspath(uri_or_path)
    scheme, rest = _split_scheme(raw)
    if scheme in ("", "file"):
        if scheme == "file":
            parts = urlsplit(raw)
            if parts.netloc not in ("", "localhost"):
                raise ValueError(f"file:// URI with a remote host is not supported: {raw!r}")
            rest = parts.path
        path = os.path.abspath(os.path.expanduser(rest))
        return StorageLocation(fs=pafs.LocalFileSystem(), path=path, uri=path)
    if scheme in ("s3", "s3a"):
        key = rest.strip("/")
        if not key or key.startswith("/"):
            raise ValueError(f"S3 URI needs a bucket: {raw!r}")
        key = posixpath.normpath(key)
        return StorageLocation(
            fs=_s3_filesystem(s3_settings_from_env()), path=key, uri=f"s3://{key}"
        )
    raise ValueError(
        f"unsupported storage scheme {scheme!r} in {raw!r} (use a path, file:// or s3://)"
    )


def is_local(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` names the local filesystem (a plain path or ``file://``)."""
    return _split_scheme(os.fspath(uri))[0] in ("", "file")


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """Join path components onto a URI or path.

    Parameters
    ----------
    uri : str or os.PathLike
        Base URI or local path.
    *parts : str
        Components; leading and trailing slashes are stripped so they never
        reset the base.

    Returns
    -------
    str
        The joined URI (``s3://``/``file://`` kept as given) or local path.
    """
    base = os.fspath(uri)
    clean = [p.strip("/") for p in parts if p.strip("/")]
    if not clean:
        return base
    scheme, _ = _split_scheme(base)
    if scheme:
        return "/".join([base.rstrip("/"), *clean])
    return os.path.join(base, *clean)


def exists(uri: str | os.PathLike[str]) -> bool:
    """Whether a file or directory exists at ``uri``."""
    loc = resolve(uri)
    return loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound


def makedirs(uri: str | os.PathLike[str]) -> None:
    """Create a directory and its parents; no error if it exists.

    On S3 the bucket must already exist (directories are key prefixes).
    """
    loc = resolve(uri)
    loc.fs.create_dir(loc.path, recursive=True)


def listdir(uri: str | os.PathLike[str]) -> list[str]:
    """List the names (not paths) of the entries of a directory, sorted.

    Raises
    ------
    FileNotFoundError
        If the directory does not exist.
    NotADirectoryError
        If ``uri`` is a file.
    """
    loc = resolve(uri)
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such directory: {loc.uri}")
    if info.type == pafs.FileType.File:
        raise NotADirectoryError(f"not a directory: {loc.uri}")
    entries = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=False))
    return sorted(posixpath.basename(e.path.rstrip("/")) for e in entries)


def remove(uri: str | os.PathLike[str], missing_ok: bool = True) -> None:
    """Delete a file, or a directory with its contents."""
    loc = resolve(uri)
    kind = loc.fs.get_file_info(loc.path).type
    if kind == pafs.FileType.NotFound:
        if not missing_ok:
            raise FileNotFoundError(loc.uri)
    elif kind == pafs.FileType.Directory:
        loc.fs.delete_dir(loc.path)
    else:
        loc.fs.delete_file(loc.path)


def _tmp_sibling(path: str) -> str:
    """A hidden temporary name next to ``path`` (same directory, same device)."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.tmp-{uuid.uuid4().hex}")


def _write_local_atomic(path: str, write: Any) -> None:
    """Call ``write(tmp_path)`` then move the result onto ``path``.

    The temporary file is removed if ``write`` raises, so nothing partial is
    left behind under any name.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _put_object(loc: StorageLocation, data: bytes | pa.Buffer) -> None:
    """Upload ``data`` as one object (non-local filesystems)."""
    with loc.fs.open_output_stream(loc.path) as out:
        out.write(data)


def write_bytes_atomic(uri: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` so that readers never see a partial file.

    Parameters
    ----------
    uri : str or os.PathLike
        Destination; parent directories are created on local storage.
    data : bytes
        Content.
    """
    loc = resolve(uri)
    if loc.is_local:

        def _write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(data)

        _write_local_atomic(loc.path, _write)
    else:
        _put_object(loc, data)


# ----------------------------------------------------------------- atomic create / compare-and-swap


def _s3_bucket_key(loc: StorageLocation) -> tuple[str, str]:
    """Split an S3 location's ``bucket/key`` path into its two parts."""
    bucket, _, key = loc.path.partition("/")
    if not key:
        raise ValueError(f"S3 URI needs a key below the bucket: {loc.uri}")
    return bucket, key


@functools.lru_cache(maxsize=8)
def _boto3_client_cached(settings: S3Settings) -> Any:
    """A boto3 S3 client for ``settings`` (see :func:`_boto3_client`)."""
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
        config=Config(s3={"addressing_style": addressing}, retries={"max_attempts": 5}),
    )


def _boto3_client(settings: S3Settings | None = None) -> Any:
    """A boto3 S3 client built from the same settings as the pyarrow filesystem.

    Region, endpoint URL (with its scheme) and path-style addressing for custom
    endpoints follow :func:`s3_settings_from_env`; credentials come from boto3's
    default chain. Clients are cached per settings (the settings include the
    credentials seen in the environment, so a change of credentials gets a new
    client; nothing here is ever persisted).
    """
    return _boto3_client_cached(s3_settings_from_env() if settings is None else settings)


def _client_error_code(exc: BaseException) -> tuple[str, int]:
    """``(code, http_status)`` of a botocore ``ClientError``."""
    response = getattr(exc, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _is_precondition_failure(exc: BaseException) -> bool:
    """Whether a botocore error says a conditional request's condition did not hold."""
    code, status = _client_error_code(exc)
    # 409 ConditionalRequestConflict: a concurrent conditional write won on AWS.
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (412, 409)


def _is_missing(exc: BaseException) -> bool:
    """Whether a botocore error says the object does not exist."""
    code, status = _client_error_code(exc)
    return code in ("NoSuchKey", "NotFound", "404") or status == 404


def _s3_get(loc: StorageLocation) -> tuple[bytes, str] | None:
    """``(body, etag)`` of an S3 object, or ``None`` if it does not exist."""
    from botocore.exceptions import ClientError

    bucket, key = _s3_bucket_key(loc)
    try:
        response = _boto3_client().get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _is_missing(exc):
            return None
        raise
    return response["Body"].read(), response["ETag"]


def create_exclusive(uri: str | os.PathLike[str], data: bytes) -> bool:
    """Create a file only if nothing exists at ``uri``.

    Exactly one of any number of concurrent callers (processes or hosts) gets
    ``True``; the file never appears partially written.

    Parameters
    ----------
    uri : str or os.PathLike
        Destination (local path, ``file://`` or ``s3://``); local parent
        directories are created.
    data : bytes
        Content of the new file.

    Returns
    -------
    bool
        ``True`` if this call created the file, ``False`` if something existed.

    Notes
    -----
    Locally the content is written and fsynced to a hidden temporary sibling,
    then hard-linked onto the final name with :func:`os.link`, which fails
    atomically if the name exists. On S3 it is one conditional PUT with
    ``If-None-Match: *``; a ``412 Precondition Failed`` means another writer won.
    AWS S3 (since 2024), MinIO and moto honour it; a store that ignores the
    header would make every caller win.
    """
    loc = resolve(uri)
    if loc.is_local:
        return _create_exclusive_local(loc.path, data)
    from botocore.exceptions import ClientError

    bucket, key = _s3_bucket_key(loc)
    try:
        _boto3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as exc:
        if _is_precondition_failure(exc):
            return False
        raise
    return True


def _create_exclusive_local(path: str, data: bytes) -> bool:
    """Local :func:`create_exclusive`: fsynced temporary sibling, then ``os.link``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        _fsync_dir(os.path.dirname(path))
        return True
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _fsync_dir(directory: str) -> None:
    """Flush a directory entry to disk (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _LocalCasMutex:
    """An exclusive ``flock`` on a hidden sibling, serialising local compare-and-swaps.

    The lock is released by the kernel if its holder dies, so it can never be
    left stale. Only :func:`replace_if_unchanged` and :func:`delete_if_unchanged`
    take it; the file at ``path`` itself is never absent during a swap, so a
    concurrent :func:`create_exclusive` cannot slip in.
    """

    def __init__(self, path: str) -> None:
        head, tail = os.path.split(path)
        self._mutex = os.path.join(head, f".{tail.lstrip('.')}.cas-mutex")
        self._fd = -1

    def __enter__(self) -> _LocalCasMutex:
        self._fd = os.open(self._mutex, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _read_local(path: str) -> bytes | None:
    """Content of a local file, or ``None`` if it does not exist."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return None


def _local_if_unchanged(path: str, expected: bytes, action: Callable[[], object]) -> bool:
    """Run ``action()`` under the file's ``flock`` mutex if ``path`` still holds ``expected``."""
    if not os.path.isdir(os.path.dirname(path)):
        return False
    with _LocalCasMutex(path):
        if _read_local(path) != expected:
            return False
        action()
        return True


def replace_if_unchanged(uri: str | os.PathLike[str], data: bytes, expected: bytes) -> bool:
    """Compare-and-swap: replace the file at ``uri`` only if it still holds ``expected``.

    Parameters
    ----------
    uri : str or os.PathLike
        An existing file (local path, ``file://`` or ``s3://``).
    data : bytes
        New content.
    expected : bytes
        The content the caller last saw.

    Returns
    -------
    bool
        ``True`` if the content was ``expected`` and is now ``data``; ``False``
        if the file is missing or holds anything else (nothing is changed then).

    Notes
    -----
    Locally the check and an atomic :func:`os.replace` run under an exclusive
    ``flock`` of a hidden sibling (``.NAME.cas-mutex``, kept), so concurrent swaps
    are serialised and the file is never absent. On S3 the object is read with
    its ETag and overwritten with a conditional PUT (``If-Match: ETAG``); a
    ``412`` means someone changed it in between.
    """
    loc = resolve(uri)
    if loc.is_local:
        return _local_if_unchanged(loc.path, expected, lambda: write_bytes_atomic(loc.path, data))
    from botocore.exceptions import ClientError

    current = _s3_get(loc)
    if current is None or current[0] != expected:
        return False
    bucket, key = _s3_bucket_key(loc)
    try:
        _boto3_client().put_object(Bucket=bucket, Key=key, Body=data, IfMatch=current[1])
    except ClientError as exc:
        if _is_precondition_failure(exc) or _is_missing(exc):
            return False
        raise
    return True


def delete_if_unchanged(uri: str | os.PathLike[str], expected: bytes) -> bool:
    """Delete the file at ``uri`` only if it still holds ``expected``.

    Returns
    -------
    bool
        ``True`` if this call deleted it, ``False`` if it was missing or different.

    Notes
    -----
    Locally under the same ``flock`` as :func:`replace_if_unchanged`. On S3 a
    conditional ``DELETE`` with ``If-Match: ETAG``; a store that does not support
    conditional deletes gets a plain delete right after the content check (a
    window of one round trip).
    """
    loc = resolve(uri)
    if loc.is_local:
        return _local_if_unchanged(loc.path, expected, lambda: os.unlink(loc.path))
    from botocore.exceptions import ClientError

    current = _s3_get(loc)
    if current is None or current[0] != expected:
        return False
    bucket, key = _s3_bucket_key(loc)
    client = _boto3_client()
    try:
        client.delete_object(Bucket=bucket, Key=key, IfMatch=current[1])
    except ClientError as exc:
        if _is_precondition_failure(exc):
            return False
        if _is_missing(exc):
            return False
        code, status = _client_error_code(exc)
        if code not in ("NotImplemented", "InvalidArgument", "InvalidRequest") and status != 501:
            raise
        client.delete_object(Bucket=bucket, Key=key)
    return True


def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    """Read a whole file.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    """
    loc = resolve(uri)
    if loc.fs.get_file_info(loc.path).type != pafs.FileType.File:
        raise FileNotFoundError(f"no such file: {loc.uri}")
    with loc.fs.open_input_stream(loc.path) as fh:
        return fh.read()


def write_json_atomic(uri: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Serialise ``obj`` as JSON (UTF-8, keys sorted) and write it atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=True, default=str)
    write_bytes_atomic(uri, (text + "\n").encode("utf-8"))


def read_json(uri: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by :func:`write_json_atomic` (or anyone)."""
    return json.loads(read_bytes(uri).decode("utf-8"))


def write_parquet_atomic(table: pa.Table, uri: str | os.PathLike[str], **kwargs: Any) -> None:
    """Write a Parquet file atomically.

    Parameters
    ----------
    table : pyarrow.Table
        Data to write.
    uri : str or os.PathLike
        Destination file.
    **kwargs
        Passed to :func:`pyarrow.parquet.write_table` (e.g. ``compression``).

    Notes
    -----
    Local files are written to a temporary sibling and renamed; remote files are
    serialised in memory and uploaded in one PUT.
    """
    loc = resolve(uri)
    if loc.is_local:
        _write_local_atomic(loc.path, lambda tmp: pq.write_table(table, tmp, **kwargs))
    else:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **kwargs)
        _put_object(loc, sink.getvalue())


def read_parquet_files(
    uris: Sequence[str | os.PathLike[str]],
    columns: Sequence[str] | None = None,
    *,
    check: Callable[[str, pa.Table], str | None] | None = None,
    on_damaged: Callable[[str, str], None] | None = None,
) -> pa.Table:
    """Read a list of Parquet files into one table: the one Parquet reader of hrtem-ray.

    Parameters
    ----------
    uris : sequence of str or os.PathLike
        The files, in the order their rows are wanted: local paths, ``file://`` or
        ``s3://`` URIs. Each is read as one file (no partition columns from its path).
    columns : sequence of str, optional
        Only these columns (default: all).
    check : callable, optional
        ``check(uri, table)`` returns why a file's table cannot be used, or ``None``.
    on_damaged : callable, optional
        ``on_damaged(uri, reason)`` is called, in order, for each file that cannot be
        read or fails ``check``, and that file is left out; it may raise. Without it
        such a file raises :class:`ValueError` naming it.

    Returns
    -------
    pyarrow.Table
        The rows of the usable files. Columns are combined by name: a column missing
        from a file is null there, and types are promoted (an all-null column takes
        the others' type). No usable file gives an empty table without columns.

    Notes
    -----
    More than one file is read by a thread pool (Parquet decoding and remote
    requests release the GIL), so many small files or S3 objects overlap.
    """
    names = [os.fspath(uri) for uri in uris]
    # one file: Arrow's own threads decode its columns; several: one file per thread
    read = functools.partial(_read_parquet_file, columns=columns, use_threads=len(names) == 1)
    if len(names) > 1:
        with ThreadPoolExecutor(min(PARQUET_READ_THREADS, len(names))) as pool:
            outcomes = list(pool.map(read, names))
    else:
        outcomes = [read(name) for name in names]
    tables = []
    for name, (table, problem) in zip(names, outcomes, strict=True):
        if problem is None and check is not None:
            problem = check(name, table)
        if problem is None:
            tables.append(table)
        elif on_damaged is None:
            raise ValueError(f"cannot read {name}: {problem}")
        else:
            on_damaged(name, problem)
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


PARQUET_READ_THREADS = 16
"""Threads of :func:`read_parquet_files` (at most one per file)."""


def _read_parquet_file(
    uri: str, columns: Sequence[str] | None, use_threads: bool
) -> tuple[pa.Table | None, str | None]:
    """One Parquet file's table, or ``None`` and why it cannot be read."""
    try:
        loc = resolve(uri)
        with loc.fs.open_input_file(loc.path) as handle:
            # ParquetFile.read: 2-3x less overhead per small file than pq.read_table
            table = pq.ParquetFile(handle).read(columns=columns, use_threads=use_threads)
            return table, None
    except (pa.ArrowException, OSError, ValueError) as exc:
        return None, f"unreadable Parquet ({type(exc).__name__}: {exc})"


def upload_dir(local_dir: str | os.PathLike[str], uri: str | os.PathLike[str]) -> None:
    """Copy a local directory tree to ``uri`` (merging into what is there).

    Parameters
    ----------
    local_dir : str or os.PathLike
        Source directory, e.g. a checkpoint written by a trial.
    uri : str or os.PathLike
        Destination directory URI.
    """
    src = os.path.abspath(os.fspath(local_dir))
    if not os.path.isdir(src):
        raise NotADirectoryError(f"not a directory: {src}")
    dst = resolve(uri)
    dst.fs.create_dir(dst.path, recursive=True)
    pafs.copy_files(
        src,
        dst.path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=dst.fs,
    )


def download_dir(uri: str | os.PathLike[str], local_dir: str | os.PathLike[str]) -> None:
    """Copy the directory tree at ``uri`` into ``local_dir`` (created if needed).

    Raises
    ------
    FileNotFoundError
        If ``uri`` is not an existing directory.
    """
    src = resolve(uri)
    if src.fs.get_file_info(src.path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"no such directory: {src.uri}")
    dst = os.path.abspath(os.fspath(local_dir))
    os.makedirs(dst, exist_ok=True)
    pafs.copy_files(
        src.path,
        dst,
        source_filesystem=src.fs,
        destination_filesystem=pafs.LocalFileSystem(),
    )


# ----------------------------------------------------------------- output-path check


class StorageError(ValueError):
    """A storage root that cannot be used (a file, read-only, a missing bucket, ...)."""


def _probe_local_dir(directory: str) -> None:
    """Create and delete a hidden file in ``directory``; raise ``OSError`` if impossible.

    A real write rather than :func:`os.access`, which says yes to root even on a
    read-only mount or an immutable directory.
    """
    fd, probe = _open_probe(directory)
    os.close(fd)
    os.unlink(probe)


def _open_probe(directory: str) -> tuple[int, str]:
    """Create a hidden, uniquely named probe file in ``directory``."""
    probe = os.path.join(directory, f".hrtem-ray-write-probe-{uuid.uuid4().hex}")
    return os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), probe


def _check_local_root(path: str) -> None:
    """Local part of :func:`check_writable_root`."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise StorageError(f"{path}: exists and is not a directory (use a directory for --out)")
    existing = path
    while not os.path.isdir(existing):
        parent = os.path.dirname(existing)
        if os.path.lexists(existing) and not os.path.isdir(existing):
            raise StorageError(
                f"{path}: cannot create the directory, {existing} is a file, not a directory"
            )
        if parent == existing:
            break
        existing = parent
    try:
        _probe_local_dir(existing)
    except OSError as exc:
        what = "the directory" if existing == path else f"its parent {existing}"
        raise StorageError(f"{path}: {what} is not writable ({exc.strerror or exc})") from exc


def _check_s3_root(loc: StorageLocation) -> None:
    """S3 part of :func:`check_writable_root`: one probe object written and deleted."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = loc.path.partition("/")
    key = posixpath.join(prefix, f".hrtem-ray-write-probe-{uuid.uuid4().hex}")
    client = _boto3_client()
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
        client.delete_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code, status = _client_error_code(exc)
        if code == "NoSuchBucket":
            why = f"bucket {bucket!r} does not exist"
        elif code in ("AccessDenied", "AllAccessDisabled") or status == 403:
            why = f"no permission to write to bucket {bucket!r} ({code or status})"
        else:
            why = f"a test write failed ({code or status}: {exc})"
        raise StorageError(f"{loc.uri}: {why}") from exc
    except BotoCoreError as exc:  # no credentials, endpoint unreachable, ...
        raise StorageError(f"{loc.uri}: cannot write to S3 ({exc})") from exc


def check_writable_root(uri: str | os.PathLike[str]) -> None:
    """Check that a study (or data) root can be created and written, before any compute.

    Parameters
    ----------
    uri : str or os.PathLike
        The root: local path, ``file://`` or ``s3://bucket/prefix``.

    Raises
    ------
    StorageError
        With a message naming the path and why: it is an existing file; a
        parent is a file; the directory (or its nearest existing parent) is not
        writable, tested by creating and deleting a hidden probe file; the S3
        bucket does not exist or refuses a probe write (one tiny object, written
        and deleted); or the URI itself is invalid.

    Notes
    -----
    Nothing is created: a missing local root is checked through its nearest
    existing parent, and the S3 probe object is deleted again.
    """
    try:
        loc = resolve(uri)
    except ValueError as exc:
        raise StorageError(str(exc)) from exc
    if loc.is_local:
        _check_local_root(loc.path)
    else:
        _check_s3_root(loc)


def pyarrow_filesystem_for_ray(
    uri: str | os.PathLike[str],
) -> tuple[pafs.FileSystem | None, str]:
    """Arguments for Ray's ``RunConfig(storage_path=..., storage_filesystem=...)``.

    The same pair works for Ray Data (``read_parquet(path, filesystem=fs)``).

    Parameters
    ----------
    uri : str or os.PathLike
        Storage root.

    Returns
    -------
    (filesystem, path)
        ``(None, "/abs/path")`` for local storage, so Ray uses its own local
        handling; for S3 the configured :class:`pyarrow.fs.S3FileSystem` and the
        ``bucket/key`` path without scheme, as Ray requires when a custom
        filesystem is given. The filesystem holds region, endpoint and scheme
        but no credentials, because Tune pickles it into the storage.

    Notes
    -----
    Also calls :func:`keep_credentials_out_of_ray_tune`, so that the Tune run
    this is meant for does not copy AWS credentials into Ray's session logs.
    """
    keep_credentials_out_of_ray_tune()
    loc = resolve(uri)
    if loc.is_local:
        return None, loc.path
    return loc.fs, loc.path


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


def local_path(uri: str | os.PathLike[str]) -> Path:
    """The local :class:`~pathlib.Path` of a local URI.

    Raises
    ------
    ValueError
        If ``uri`` is not local.
    """
    loc = resolve(uri)
    if not loc.is_local:
        raise ValueError(f"not a local path: {loc.uri}")
    return Path(loc.path)
