"""Tests for hrtem_ray.store.storage: local paths, file:// URIs and s3:// on a local moto server.

The S3 server is started by the tests on 127.0.0.1 (random free port) and
stopped at the end of the session; no other address is contacted.
"""

from __future__ import annotations

import os
import subprocess
import sys

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from hrtem_ray.store import s3, storage


def _table(n: int = 5) -> pa.Table:
    return pa.table(
        {"model_id": [f"m{i}" for i in range(n)], "loss": [0.5 / (i + 1) for i in range(n)]}
    )


# --------------------------------------------------------------------- resolve / join


def test_resolve_local_and_file_uri(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = storage.resolve("a/b")
    assert isinstance(rel.fs, pafs.LocalFileSystem)
    assert rel.path == str(tmp_path / "a" / "b") == rel.uri
    assert storage.resolve("file://" + str(tmp_path / "x")).path == str(tmp_path / "x")
    assert storage.resolve(tmp_path / "y").path == str(tmp_path / "y")
    assert (
        storage.is_local("file:///x") and storage.is_local("x") and not storage.is_local("s3://b/k")
    )
    with pytest.raises(ValueError, match="unsupported storage scheme"):
        storage.resolve("gs://bucket/x")
    with pytest.raises(ValueError, match="bucket"):
        storage.resolve("s3://")


def test_join() -> None:
    assert storage.join("s3://b/root/", "results", "/x.parquet") == "s3://b/root/results/x.parquet"
    assert storage.join("file:///tmp/r", "a") == "file:///tmp/r/a"
    assert storage.join("/tmp/r", "a", "b/") == os.path.join("/tmp/r", "a", "b")
    assert storage.join("/tmp/r") == "/tmp/r"


def test_pyarrow_filesystem_for_ray(tmp_path, s3_root: str) -> None:
    fs, path = storage.pyarrow_filesystem_for_ray("file://" + str(tmp_path))
    assert fs is None and path == str(tmp_path)
    fs, path = storage.pyarrow_filesystem_for_ray(storage.join(s3_root, "tune"))
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == s3_root.removeprefix("s3://") + "/tune"
    fs.create_dir(path)  # the pair is usable as is
    assert storage.exists(storage.join(s3_root, "tune"))


# --------------------------------------------------------------------- round trips


def test_bytes_json_round_trip(root: str) -> None:
    f = storage.join(root, "sub", "blob.bin")
    assert not storage.exists(f)
    storage.makedirs(storage.join(root, "sub"))
    storage.write_bytes_atomic(f, b"\x00hrtem\xff")
    assert storage.exists(f)
    assert storage.read_bytes(f) == b"\x00hrtem\xff"
    storage.write_bytes_atomic(f, b"second")  # overwrite
    assert storage.read_bytes(f) == b"second"

    j = storage.join(root, "meta", "spec.json")
    storage.write_json_atomic(j, {"name": "tiny", "lr": [1e-3, 1e-4]})
    assert storage.read_json(j) == {"name": "tiny", "lr": [1e-3, 1e-4]}
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "missing.bin"))


def test_listdir_and_remove(root: str) -> None:
    for name in ("b.json", "a.json"):
        storage.write_json_atomic(storage.join(root, "results", name), {"n": name})
    storage.write_bytes_atomic(storage.join(root, "results", "nested", "c.bin"), b"c")
    assert storage.listdir(storage.join(root, "results")) == ["a.json", "b.json", "nested"]
    with pytest.raises(FileNotFoundError):
        storage.listdir(storage.join(root, "nope"))
    with pytest.raises(NotADirectoryError):
        storage.listdir(storage.join(root, "results", "a.json"))
    storage.remove(storage.join(root, "results", "a.json"))
    storage.remove(storage.join(root, "results", "nested"))
    assert storage.listdir(storage.join(root, "results")) == ["b.json"]
    storage.remove(storage.join(root, "results", "gone"))  # missing_ok by default
    with pytest.raises(FileNotFoundError):
        storage.remove(storage.join(root, "results", "gone"), missing_ok=False)


def test_parquet_round_trip_through_same_fs(root: str) -> None:
    table = _table()
    for i in range(2):
        storage.write_parquet_atomic(table, storage.join(root, "results", f"part-{i}.parquet"))
    back = storage.read_parquet_files([storage.join(root, "results", "part-0.parquet")])
    assert back.equals(table)

    loc = storage.resolve(storage.join(root, "results"))
    dataset = ds.dataset(loc.path, filesystem=loc.fs, format="parquet")
    assert dataset.to_table().num_rows == 2 * table.num_rows

    with loc.fs.open_input_file(loc.path + "/part-1.parquet") as fh:
        df = pl.read_parquet(fh)
    assert df.to_dict(as_series=False) == table.to_pydict()
    # Files read (in order) through the one reader.
    parts = [storage.join(root, "results", f"part-{i}.parquet") for i in range(2)]
    both = storage.read_parquet_files(parts)
    assert both.num_rows == 2 * table.num_rows
    assert both.slice(table.num_rows).equals(table)
    assert storage.read_parquet_files([]).num_rows == 0


def test_read_parquet_files_combines_by_name_and_names_damaged_files(root: str) -> None:
    """One reader for every storage kind: columns by name, damaged files named or handed over."""
    first = storage.join(root, "results", "a.parquet")
    storage.write_parquet_atomic(_table(2), first)
    extra = storage.join(root, "results", "b.parquet")  # an extra column; loss all null
    storage.write_parquet_atomic(
        pa.table({"model_id": ["x"], "loss": pa.nulls(1), "iou": [0.25]}), extra
    )
    both = storage.read_parquet_files([first, extra])
    assert both.column_names == ["model_id", "loss", "iou"]
    assert both.schema.field("loss").type == pa.float64()
    assert both.to_pydict() == {
        "model_id": ["m0", "m1", "x"],
        "loss": [0.5, 0.25, None],
        "iou": [None, None, 0.25],
    }
    assert storage.read_parquet_files([extra], columns=["iou"]).column_names == ["iou"]

    broken = storage.join(root, "results", "c.parquet")
    storage.write_bytes_atomic(broken, b"not parquet")
    with pytest.raises(ValueError, match="cannot read .*c.parquet: unreadable Parquet"):
        storage.read_parquet_files([first, broken])
    damaged: list[tuple[str, str]] = []
    kept = storage.read_parquet_files(
        [first, broken, extra],
        check=lambda uri, table: "no iou" if "iou" not in table.column_names else None,
        on_damaged=lambda uri, why: damaged.append((uri, why)),
    )
    assert kept.to_pydict() == {"model_id": ["x"], "loss": [None], "iou": [0.25]}
    assert [uri for uri, _ in damaged] == [first, broken]
    assert damaged[0][1] == "no iou" and "unreadable Parquet" in damaged[1][1]


def test_polars_scan_s3_with_storage_options(s3_root: str) -> None:
    uri = storage.join(s3_root, "results", "table.parquet")
    storage.write_parquet_atomic(_table(3), uri)
    df = pl.scan_parquet(uri, storage_options=s3.polars_storage_options()).collect()
    assert df["model_id"].to_list() == ["m0", "m1", "m2"]


def test_load_results_reads_every_storage_kind(root: str) -> None:
    """analysis.load_results reads a results directory (or one file) on a path, file:// or s3://."""
    from hrtem_ray.analysis import load_results

    for phase, n in (("pretrain", 2), ("transfer", 3)):
        storage.write_parquet_atomic(_table(n), storage.join(root, "results", phase, "a.parquet"))
    table = load_results(storage.join(root, "results"), categorical=False)
    assert sorted(table["model_id"].to_list()) == ["m0", "m0", "m1", "m1", "m2"]
    one = load_results(storage.join(root, "results", "transfer", "a.parquet"))
    assert one["model_id"].to_list() == ["m0", "m1", "m2"]
    with pytest.raises(FileNotFoundError):
        load_results(storage.join(root, "nothing-here"))


def test_upload_download_dir(root: str, tmp_path) -> None:
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "model.pt").write_bytes(b"weights" * 1000)
    (src / "sub" / "state.json").write_text('{"epoch": 3}')
    dest = storage.join(root, "checkpoints", "m1")
    storage.upload_dir(src, dest)
    assert storage.listdir(dest) == ["model.pt", "sub"]
    assert storage.read_json(storage.join(dest, "sub", "state.json")) == {"epoch": 3}

    out = tmp_path / "restored"
    storage.download_dir(dest, out)
    assert (out / "model.pt").read_bytes() == b"weights" * 1000
    assert (out / "sub" / "state.json").read_text() == '{"epoch": 3}'
    with pytest.raises(FileNotFoundError):
        storage.download_dir(storage.join(root, "checkpoints", "missing"), tmp_path / "x")


# --------------------------------------------------------------------- atomicity


def _hidden_temps(directory) -> list[str]:
    return [n for n in os.listdir(directory) if ".tmp-" in n]


def test_local_failed_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch) -> None:
    """A failure in the middle of writing leaves the previous content and no litter."""
    target = tmp_path / "results" / "table.parquet"
    storage.write_parquet_atomic(_table(2), str(target))
    before = target.read_bytes()

    def half_write(table, where, **kwargs):
        with open(where, "wb") as fh:
            fh.write(b"PAR1 partial")  # some bytes reach the disk ...
        raise OSError("disk full")  # ... then the writer fails

    monkeypatch.setattr(storage.pq, "write_table", half_write)
    with pytest.raises(OSError, match="disk full"):
        storage.write_parquet_atomic(_table(10), str(target))
    with pytest.raises(OSError, match="disk full"):
        storage.write_parquet_atomic(_table(10), str(tmp_path / "results" / "new.parquet"))
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path / "results")) == ["table.parquet"]


def test_local_killed_writer_leaves_nothing_under_final_name(tmp_path) -> None:
    """A process killed after writing but before the rename publishes nothing."""
    target = tmp_path / "out" / "blob.bin"
    code = (
        "import os\n"
        "from hrtem_ray.store import storage\n"
        "os.replace = lambda a, b: os._exit(9)\n"  # die right before publishing
        f"storage.write_bytes_atomic({str(target)!r}, b'x' * 100000)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 9, proc.stderr.decode()
    assert not target.exists()
    assert len(_hidden_temps(target.parent)) == 1  # the orphan temp file is hidden and named so


def test_s3_failed_serialisation_uploads_nothing(s3_root: str) -> None:
    uri = storage.join(s3_root, "results", "bad.parquet")
    with pytest.raises(Exception):  # noqa: B017 - pyarrow raises ArrowException subclasses
        storage.write_parquet_atomic(_table(), uri, compression="no-such-codec")
    assert not storage.exists(uri)
    # Below pyarrow's 10 MiB part size a write is one PutObject. Larger objects go
    # multipart, which moto 5.2 cannot complete for pyarrow (its reply's root element is
    # CompleteMultipartUploadResponse, pyarrow requires ...Result); real S3 and MinIO do.
    storage.write_bytes_atomic(storage.join(s3_root, "big.bin"), os.urandom(6 << 20))
    assert len(storage.read_bytes(storage.join(s3_root, "big.bin"))) == 6 << 20


# --------------------------------------------------------------------- Ray on S3 storage


_TUNE_ON_S3 = """
import json, os, sys, tempfile
import ray
from ray import tune
import ray.data
import pyarrow as pa
from hrtem_ray.store import s3, storage

s3_root, local_ckpt = sys.argv[1], sys.argv[2]
ray.init(address="local", num_cpus=2, object_store_memory=256 * 1024**2,
         include_dashboard=False, configure_logging=False)
try:
    fs, path = storage.pyarrow_filesystem_for_ray(storage.join(s3_root, "tune"))

    def trainable(config):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "weights.bin"), "wb") as fh:
                fh.write(bytes([config["x"]]) * 1000)
            tune.report({"score": config["x"]}, checkpoint=tune.Checkpoint.from_directory(d))

    tuner = tune.Tuner(
        trainable,
        param_space={"x": tune.grid_search([1, 2])},
        run_config=tune.RunConfig(name="exp", storage_path=path, storage_filesystem=fs, verbose=0),
    )
    results = tuner.fit()
    checkpoints = [r.checkpoint.path for r in results]
    storage.download_dir("s3://" + checkpoints[0], local_ckpt)
    data_fs, data_path = storage.pyarrow_filesystem_for_ray(storage.join(s3_root, "data"))
    table = pa.table({"model_id": [f"m{i}" for i in range(6)]})
    ray.data.from_arrow(table).write_parquet(data_path, filesystem=data_fs)
    back = ray.data.read_parquet(data_path, filesystem=data_fs).to_arrow_refs()
    print(json.dumps({
        "scores": sorted(r.metrics["score"] for r in results),
        "checkpoints": checkpoints,
        "path": path,
        "rows": sum(ray.get(ref).num_rows for ref in back),
    }))
finally:
    ray.shutdown()
"""


@pytest.mark.slow
def test_ray_tune_and_data_on_s3_storage(s3_root: str, tmp_path) -> None:
    """What pyarrow_filesystem_for_ray returns is what Tune and Ray Data accept.

    Runs in a process of its own that starts Ray after the S3 settings are in its
    environment, as the command line does: the filesystem carries no credentials
    and Tune no longer copies them to its trainables, so workers read them from
    the environment they inherit.
    """
    import json

    proc = subprocess.run(
        [sys.executable, "-c", _TUNE_ON_S3, s3_root, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["scores"] == [1, 2]
    assert all(c.startswith(summary["path"]) for c in summary["checkpoints"])
    assert storage.exists(storage.join(s3_root, "tune", "exp"))
    # A checkpoint on S3 came back through download_dir.
    assert (tmp_path / "ckpt" / "weights.bin").stat().st_size == 1000
    assert summary["rows"] == 6


def test_ray_tune_no_longer_copies_aws_credentials(s3_root: str) -> None:
    """Tune's trainables get no AWS_* variables in their runtime_env (Ray would log them)."""
    from ray.tune.execution import class_cache

    storage.pyarrow_filesystem_for_ray(storage.join(s3_root, "tune"))
    assert os.environ["AWS_SECRET_ACCESS_KEY"]  # set by the fixture ...
    env_vars = {}
    for name in class_cache.ENV_VARS_TO_PROPAGATE:  # ... but not propagated
        if name in os.environ:
            env_vars[name] = os.environ[name]
    assert not [n for n in env_vars if n.startswith("AWS_")]
    assert "RAY_CHDIR_TO_TRIAL_DIR" in class_cache.ENV_VARS_TO_PROPAGATE  # the rest is kept
