"""The one streamed SHA-256 of a stored file: shard, checkpoint and micrograph checksums.

:func:`sha256_file` hashes a local path, a ``file://`` or ``s3://`` URI (read through
:func:`hrtem_ray.store.storage.resolve`, :data:`CHUNK_BYTES` per read from the store) or
an open binary file (a builtin file or a pyarrow input stream), without holding the
file in memory: :func:`hashlib.file_digest` on Python >= 3.11, a chunked loop on 3.10.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import BinaryIO, Protocol

from hrtem_ray.store import storage

#: Bytes per read from the store (one ranged GET per read on S3).
CHUNK_BYTES = 8 << 20


class Readable(Protocol):
    """A binary file open for reading: ``read(n)`` returns up to ``n`` bytes, ``b""`` at the end."""

    def read(self, size: int = -1, /) -> bytes: ...


def _stream_sha256(stream: BinaryIO | Readable) -> str:
    """Hex SHA-256 of the rest of an open binary file, read in chunks.

    :func:`hashlib.file_digest` where it applies (Python >= 3.11, a file with
    ``readinto``); not for in-memory files (``getbuffer``), which it hashes whole
    whatever their position.
    """
    streamed = hasattr(stream, "readinto") and hasattr(stream, "readable")
    if sys.version_info >= (3, 11) and streamed and not hasattr(stream, "getbuffer"):
        return hashlib.file_digest(stream, "sha256").hexdigest()  # type: ignore[arg-type]
    digest = hashlib.sha256()
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(source: str | os.PathLike[str] | BinaryIO | Readable) -> str:
    """Hex SHA-256 of a file's bytes, streamed.

    Parameters
    ----------
    source
        A local path, a ``file://`` or ``s3://`` URI, or a binary file open for
        reading (hashed from its current position to its end; the caller closes it).
        A URI's bytes are hashed as stored (no decompression by file extension).

    Returns
    -------
    str
        64 hex digits, as :func:`hashlib.sha256` gives them.

    >>> import io
    >>> sha256_file(io.BytesIO(b"abc"))[:16]
    'ba7816bf8f01cfea'
    """
    if hasattr(source, "read"):
        return _stream_sha256(source)  # type: ignore[arg-type]
    loc = storage.resolve(source)  # type: ignore[arg-type]
    with loc.fs.open_input_stream(loc.path, compression=None, buffer_size=CHUNK_BYTES) as stream:
        return _stream_sha256(stream)
