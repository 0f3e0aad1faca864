"""Conditional writes: create a file only if absent, replace or delete it only if unchanged.

:func:`create_exclusive` creates a file only if nothing is there (``os.link``
locally, a conditional ``PUT`` with ``If-None-Match: *`` on S3);
:func:`replace_if_unchanged` and :func:`delete_if_unchanged` are the matching
compare-and-swap operations (an ``flock``-serialised check and rename locally,
``If-Match: ETAG`` on S3). The study lock (:mod:`hrtem_ray.store.lock`) and the
dataset claim (:mod:`hrtem_ray.dataset.claim`) are built on them. Paths and URIs are
those of :mod:`hrtem_ray.store.storage`.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable

from hrtem_ray.store.s3 import boto3_client, client_error_code, is_missing, is_precondition_failure
from hrtem_ray.store.storage import StorageLocation, resolve, temporary_sibling, write_bytes_atomic


def _s3_bucket_key(loc: StorageLocation) -> tuple[str, str]:
    """Split an S3 location's ``bucket/key`` path into its two parts."""
    bucket, _, key = loc.path.partition("/")
    if not key:
        raise ValueError(f"S3 URI needs a key below the bucket: {loc.uri}")
    return bucket, key


def _s3_get(loc: StorageLocation) -> tuple[bytes, str] | None:
    """``(body, etag)`` of an S3 object, or ``None`` if it does not exist."""
    from botocore.exceptions import ClientError

    bucket, key = _s3_bucket_key(loc)
    try:
        response = boto3_client().get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_missing(exc):
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
        boto3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except ClientError as exc:
        if is_precondition_failure(exc):
            return False
        raise
    return True


def _create_exclusive_local(path: str, data: bytes) -> bool:
    """Local :func:`create_exclusive`: fsynced temporary sibling, then ``os.link``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temporary_sibling(path)
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
        boto3_client().put_object(Bucket=bucket, Key=key, Body=data, IfMatch=current[1])
    except ClientError as exc:
        if is_precondition_failure(exc) or is_missing(exc):
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
    client = boto3_client()
    try:
        client.delete_object(Bucket=bucket, Key=key, IfMatch=current[1])
    except ClientError as exc:
        if is_precondition_failure(exc):
            return False
        if is_missing(exc):
            return False
        code, status = client_error_code(exc)
        if code not in ("NotImplemented", "InvalidArgument", "InvalidRequest") and status != 501:
            raise
        client.delete_object(Bucket=bucket, Key=key)
    return True
