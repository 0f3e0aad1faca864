"""Security and data integrity of storage (issue 10): no credentials in any stored
byte, and unusable output paths rejected before any compute.

The S3 server is moto on 127.0.0.1 (see ``moto_endpoint`` in conftest); every
study runs through the real command line, real Ray and real Parquet.
"""

from __future__ import annotations

import base64
import os
import pickle
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import CLI, TWO_MODEL_STUDY, make_bucket, run_cli, s3_env

from hrtem_ray.store import s3, storage

# Distinctive credentials: any of them found anywhere in storage is a leak.
ACCESS_KEY = "AKIAHRTEMTESTKEY0001"
SECRET_KEY = "hrtem/Secret+Value=42abcXYZ"
SESSION_TOKEN = "HrtemSessionToken/Q29uZmlkZW50aWFs+tok=="
SECRETS = {"access key": ACCESS_KEY, "secret key": SECRET_KEY, "session token": SESSION_TOKEN}


TINY_S3_STUDY = {**TWO_MODEL_STUDY, "name": "secrets"}


# ----------------------------------------------------------------------- leak detection


def _base64_forms(raw: bytes) -> set[bytes]:
    """Base64 (standard and URL-safe) of ``raw`` at each of the 3 byte alignments.

    A secret inside a larger base64-encoded blob shows up as the stable middle of
    the encoding of ``prefix + secret`` for one prefix length in 0..2.
    """
    forms = set()
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * shift + raw)
            # Drop the characters mixed with the prefix and the (padded) tail.
            start = (shift * 4 + 2) // 3
            stop = ((shift + len(raw)) // 3) * 4
            if stop - start >= 8:
                forms.add(text[start:stop])
    return forms


def leak_patterns(value: str) -> dict[str, bytes]:
    """Every encoding of ``value`` searched for, keyed by a readable name."""
    raw = value.encode("utf-8")
    patterns = {
        "plain": raw,
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
        "url-quoted": urllib.parse.quote(value, safe="").encode(),
        "utf-16-le": value.encode("utf-16-le"),
        "utf-16-be": value.encode("utf-16-be"),
    }
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        # A pickled str holds its UTF-8 bytes (protocol 0: raw-unicode-escape, the
        # same for ASCII), so "plain" and "hex" also find pickles and hex-encoded ones.
        if raw not in pickle.dumps(value, protocol=protocol):
            patterns[f"pickle-{protocol}"] = value.encode("raw-unicode-escape")
    for i, form in enumerate(sorted(_base64_forms(raw))):
        patterns[f"base64-{i}"] = form
    return patterns


def test_leak_patterns_find_each_encoding() -> None:
    """The scanner itself: each encoding of a secret inside other bytes is found."""
    blob_of = {
        "plain": lambda v: b"x=" + v.encode() + b";",
        "hex pickle": lambda v: pickle.dumps({"k": v}).hex().encode(),
        "HEX": lambda v: b"00" + v.encode().hex().upper().encode(),
        "base64 pickle": lambda v: base64.b64encode(b"ab" + pickle.dumps(["s", v])),
        "urlsafe base64": lambda v: base64.urlsafe_b64encode(b"z" + v.encode() + b"zz"),
        "utf-16": lambda v: ("<" + v + ">").encode("utf-16"),
    }
    for value in SECRETS.values():
        patterns = leak_patterns(value)
        for name, make in blob_of.items():
            blob = make(value)
            assert any(p in blob for p in patterns.values()), (name, value)
        assert not any(p in b"nothing secret here" * 10 for p in patterns.values())


def find_leaks(name: str, data: bytes) -> list[str]:
    """``"NAME: secret key (hex)"`` for each secret encoding found in ``data``."""
    return [
        f"{name}: {what} ({encoding})"
        for what, value in SECRETS.items()
        for encoding, pattern in leak_patterns(value).items()
        if pattern in data
    ]


def local_files(root: Path) -> Iterator[Path]:
    """Every regular file below ``root`` (symlinks and sockets skipped)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def bucket_objects(bucket: str) -> Iterator[tuple[str, bytes]]:
    """``(key, body)`` of every object in a bucket of the moto server.

    A client of its own (not hrtem-ray's), with the environment's credentials.
    """
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=os.environ["HRTEM_RAY_S3_ENDPOINT"],
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            yield item["Key"], body


# ----------------------------------------------------------------------- credentials


@pytest.fixture
def secret_s3_env(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The moto server with the distinctive credentials, in this process's environment."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "aws").mkdir()
    env = {
        **s3_env(moto_endpoint, tmp_path / "aws"),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_s3_filesystem_handed_to_ray_pickles_without_credentials(secret_s3_env) -> None:
    """What Tune pickles into tuner.pkl and its state files carries no secret."""
    fs, _path = storage.pyarrow_filesystem_for_ray("s3://some-bucket/study/tune")
    blob = pickle.dumps(fs)
    assert b"127.0.0.1" in blob  # the endpoint is kept ...
    assert find_leaks("pickled filesystem", blob) == []  # ... the credentials are not
    assert find_leaks("repr of settings", repr(s3.s3_settings_from_env()).encode()) == []
    assert find_leaks("polars options", repr(s3.polars_storage_options()).encode()) == []


def test_s3_filesystem_without_keys_still_authenticates(secret_s3_env, moto_endpoint) -> None:
    """Credentials from the environment reach the server; an unpickled copy works too."""
    bucket = make_bucket(moto_endpoint)
    fs, path = storage.pyarrow_filesystem_for_ray(f"s3://{bucket}/study")
    fs.create_dir(path)
    with fs.open_output_stream(f"{path}/a.bin") as out:
        out.write(b"abc")
    clone = pickle.loads(pickle.dumps(fs))
    with clone.open_input_stream(f"{path}/a.bin") as fh:
        assert fh.read() == b"abc"


@pytest.mark.slow
def test_study_on_s3_stores_no_credentials(secret_s3_env, moto_endpoint, tmp_path, request) -> None:
    """A whole study on S3 (CLI, real Ray Tune) leaves no credential byte anywhere.

    Every object in the bucket and every file the run wrote locally (its working
    directory, ``TMPDIR`` with Ray's session folder, and ``HOME``) is scanned for
    the access key, secret key and session token in every encoding.
    """
    bucket = make_bucket(moto_endpoint)
    root = f"s3://{bucket}/studies/secrets"
    spec_file = tmp_path / "secrets.yaml"
    spec_file.write_text(yaml.safe_dump(TINY_S3_STUDY))
    # Ray's socket paths must stay under 108 bytes: a short TMPDIR, removed afterwards.
    short_tmp = Path(tempfile.mkdtemp(prefix="hrtem-sec-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(short_tmp, ignore_errors=True))
    local = {"cwd": tmp_path / "cwd", "home": tmp_path / "home", "tmp": short_tmp}
    local["cwd"].mkdir()
    local["home"].mkdir()
    env = {
        **os.environ,
        **secret_s3_env,
        "PYTHONUNBUFFERED": "1",
        "TMPDIR": str(local["tmp"]),
        "HOME": str(local["home"]),
    }
    proc = subprocess.run(
        [*CLI, "run", str(spec_file), "--out", root],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=local["cwd"],
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]

    objects = dict(bucket_objects(bucket))
    keys = set(objects)
    # The run really stored its study on S3, Tune's state included.
    assert any(k.startswith("studies/secrets/results/") for k in keys), sorted(keys)
    assert any(k.endswith("tuner.pkl") for k in keys), sorted(keys)
    assert any("/tune/" in k and "experiment_state" in k for k in keys), sorted(keys)
    leaks = [
        hit for key, body in objects.items() for hit in find_leaks(f"s3://{bucket}/{key}", body)
    ]
    scanned = 0
    for folder in local.values():
        for path in local_files(folder):
            leaks += find_leaks(str(path), path.read_bytes())
            scanned += 1
    leaks += find_leaks("command output", log.encode())
    assert leaks == [], "\n".join(leaks)
    assert scanned > 0  # Ray's session folder at least


# ----------------------------------------------------------------------- output paths


def _immutable_dir(path: Path) -> Iterator[Path]:
    """A directory that even root cannot write: ``chattr +i``, else a read-only tmpfs.

    As an ordinary user a ``chmod 555`` directory is enough.
    """
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    if shutil.which("chattr"):
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if done.returncode == 0:
            try:
                yield path
            finally:
                subprocess.run(["chattr", "-i", str(path)], check=True)
            return
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.fail(
            "cannot make a read-only directory as root here (chattr +i and a read-only "
            f"tmpfs mount both failed: {done.stderr.decode().strip()})"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory in which creating a file fails, whoever runs the tests."""
    yield from _immutable_dir(tmp_path / "read-only")


def test_check_writable_root_accepts_new_and_existing_dirs(tmp_path: Path) -> None:
    storage.check_writable_root(tmp_path)
    storage.check_writable_root(tmp_path / "not" / "yet")
    storage.check_writable_root("file://" + str(tmp_path / "x"))
    assert sorted(os.listdir(tmp_path)) == []  # nothing created, no probe left


def test_check_writable_root_rejects_a_file(tmp_path: Path) -> None:
    target = tmp_path / "results.txt"
    target.write_text("not a directory")
    with pytest.raises(storage.StorageError, match=f"{target}: exists and is not a directory"):
        storage.check_writable_root(target)
    with pytest.raises(storage.StorageError, match=f"{target} is a file, not a directory"):
        storage.check_writable_root(target / "sub" / "study")


def test_check_writable_root_rejects_a_read_only_dir(read_only_dir: Path) -> None:
    with pytest.raises(OSError):  # the directory is really read-only for this user
        (read_only_dir / "probe").write_text("x")
    with pytest.raises(storage.StorageError, match="is not writable") as err:
        storage.check_writable_root(read_only_dir)
    assert str(read_only_dir) in str(err.value)
    with pytest.raises(storage.StorageError, match=f"its parent {read_only_dir} is not writable"):
        storage.check_writable_root(read_only_dir / "study")


def test_check_writable_root_on_s3(secret_s3_env, moto_endpoint) -> None:
    bucket = make_bucket(moto_endpoint)
    storage.check_writable_root(f"s3://{bucket}/studies/x")
    assert list(bucket_objects(bucket)) == []  # the probe object is deleted again
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket-hrtem' does not exist"):
        storage.check_writable_root("s3://no-such-bucket-hrtem/studies/x")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["file", "under-file", "read-only", "no-bucket"])
def test_cli_rejects_unusable_out_before_ray(case, tmp_path, request) -> None:
    """``--out`` that cannot be written: exit 2, one ``error:`` line, nothing started."""
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(TINY_S3_STUDY))
    if case == "file":
        out = tmp_path / "a-file"
        out.write_text("x")
    elif case == "under-file":
        (tmp_path / "a-file").write_text("x")
        out = tmp_path / "a-file" / "study"
    elif case == "read-only":
        out = request.getfixturevalue("read_only_dir") / "study"
    else:
        request.getfixturevalue("secret_s3_env")
        out = "s3://no-such-bucket-hrtem/study"
    for command in ("run", "sweep", "simulate") if case == "under-file" else ("run",):
        started = time.monotonic()
        proc = run_cli(command, spec_file, "--out", out, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert str(out) in lines[0] or "a-file" in lines[0], lines[0]
        assert "Traceback" not in proc.stderr
        assert time.monotonic() - started < 60
