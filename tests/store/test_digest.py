"""Tests for hrtem_ray.store.digest: one streamed SHA-256 for paths, URIs and open files."""

from __future__ import annotations

import hashlib
import io

import pyarrow.fs as pafs

from hrtem_ray.store import storage
from hrtem_ray.store.digest import CHUNK_BYTES, sha256_file

#: More than one chunk, not a multiple of it, and bytes that differ along the file.
PAYLOAD = bytes(range(256)) * ((CHUNK_BYTES + 12_345) // 256)


class _ReadOnly:
    """A binary file with nothing but ``read`` (the chunked route)."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._buffer.read(size)


def test_a_stored_file_hashes_as_hashlib_does_on_every_storage_kind(root):
    uri = storage.join(root, "shard.parquet")
    storage.write_bytes_atomic(uri, PAYLOAD)
    assert sha256_file(uri) == hashlib.sha256(PAYLOAD).hexdigest()


def test_local_paths_and_open_files_hash_the_same(tmp_path):
    path = tmp_path / "micrograph.tif"
    path.write_bytes(PAYLOAD)
    expected = hashlib.sha256(PAYLOAD).hexdigest()
    with path.open("rb") as stream:
        from_handle = sha256_file(stream)
    with pafs.LocalFileSystem().open_input_stream(str(path)) as stream:
        from_pyarrow = sha256_file(stream)
    assert {sha256_file(path), sha256_file(str(path)), from_handle, from_pyarrow} == {expected}
    assert sha256_file(_ReadOnly(PAYLOAD)) == expected


def test_a_compressed_name_is_hashed_as_stored_not_decompressed(tmp_path):
    import gzip

    path = tmp_path / "weights.pt.gz"
    path.write_bytes(gzip.compress(b"weights"))
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_open_file_is_hashed_from_its_position(tmp_path):
    expected = hashlib.sha256(PAYLOAD).hexdigest()
    in_memory = io.BytesIO(b"head" + PAYLOAD)
    in_memory.read(4)
    path = tmp_path / "file.bin"
    path.write_bytes(b"head" + PAYLOAD)
    with path.open("rb") as on_disk:
        on_disk.read(4)
        assert sha256_file(on_disk) == sha256_file(in_memory) == expected
