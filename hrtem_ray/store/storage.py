"""Storage by URI: local paths, ``file://`` and ``s3://`` through pyarrow filesystems.

Every stage of hrtem-ray (datasets, checkpoints, result tables) addresses its
storage by a single root URI taken from the study spec. This module turns such a
URI into a :class:`pyarrow.fs.FileSystem` plus a filesystem-relative path
(:func:`resolve`) and offers the few operations the engine needs, with writes that
never leave a partial file under its final name; conditional writes (create if
absent, compare-and-swap) are :mod:`hrtem_ray.store.conditional`.

Supported forms
---------------
* ``/abs/path``, ``rel/path``, ``~/path`` -- the local filesystem (relative paths
  are made absolute against the current directory so that Ray workers, which may
  run elsewhere, get the same path).
* ``file:///abs/path`` -- the same, explicitly.
* ``s3://bucket/prefix`` -- Amazon S3 or any S3-compatible server (MinIO, Ceph,
  moto), with settings (region, endpoint) from the environment and credentials
  never stored: see :mod:`hrtem_ray.store.s3`.

Atomicity
---------
Local writes go to a hidden temporary file in the destination directory and are
moved into place with :func:`os.replace`. On S3 the object is uploaded in a
single PUT from memory, and S3 never exposes a partially uploaded object, so a
reader sees either the old object, the new one, or nothing.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hrtem_ray.store.s3 import (
    boto3_client,
    client_error_code,
    keep_credentials_out_of_ray_tune,
    probe_client,
    s3_filesystem,
    s3_settings_from_env,
)


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
            fs=s3_filesystem(s3_settings_from_env()), path=key, uri=f"s3://{key}"
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


def temporary_sibling(path: str) -> str:
    """A hidden temporary name next to ``path`` (same directory, same device)."""
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.tmp-{uuid.uuid4().hex}")


def _write_local_atomic(path: str, write: Any) -> None:
    """Call ``write(tmp_path)`` then move the result onto ``path``.

    The temporary file is removed if ``write`` raises, so nothing partial is
    left behind under any name.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temporary_sibling(path)
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


def _s3_problem(exc: BaseException, bucket: str, action: str) -> str:
    """Why an S3 request failed, in words (``action``: "read" or "write")."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, ClientError):
        code, status = client_error_code(exc)
        if code in ("NoSuchBucket", "404") or status == 404:
            return f"bucket {bucket!r} does not exist"
        if code in ("AccessDenied", "AllAccessDisabled", "403") or status == 403:
            return f"no permission to {action} bucket {bucket!r} ({code or status})"
        return f"a test {action} failed ({code or status}: {exc})"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return (
            f"no AWS credentials found ({exc}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, or an instance profile"
        )
    if isinstance(exc, EndpointConnectionError):
        settings = s3_settings_from_env()
        endpoint = settings.endpoint_url or f"AWS S3 in {settings.region}"
        return (
            f"cannot reach the S3 endpoint {endpoint} ({exc}); check HRTEM_RAY_S3_ENDPOINT "
            "(or AWS_ENDPOINT_URL) and the network"
        )
    return f"cannot {action} S3 ({exc})"


def _check_s3_root(loc: StorageLocation) -> None:
    """S3 part of :func:`check_writable_root`: one probe object written and deleted."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = loc.path.partition("/")
    key = posixpath.join(prefix, f".hrtem-ray-write-probe-{uuid.uuid4().hex}")
    client = boto3_client()
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
        client.delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:  # no credentials, endpoint unreachable, ...
        raise StorageError(f"{loc.uri}: {_s3_problem(exc, bucket, 'write to')}") from exc


def check_reachable(uri: str | os.PathLike[str]) -> None:
    """Check that a storage root can be reached and read, before any work starts.

    Local paths are not checked here (a missing or unwritable one is the business of
    :func:`check_writable_root` and the readers). For ``s3://bucket/prefix`` one
    ``HeadBucket`` request is sent with few retries, so that an unreachable endpoint,
    missing credentials, a missing bucket or no permission is refused at once with the
    reason, instead of pyarrow's ``OSError`` from the first read.

    Raises
    ------
    StorageError
        The URI is invalid, or S3 cannot be reached or read: the message names the URI,
        why, and the settings to check.
    """
    try:
        loc = resolve(uri)
    except ValueError as exc:
        raise StorageError(f"{os.fspath(uri)}: {exc}") from exc
    if loc.is_local:
        return
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = loc.path.partition("/")[0]
    try:
        probe_client().head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"{loc.uri}: {_s3_problem(exc, bucket, 'read')}") from exc


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
