"""An ``s3://`` storage that cannot be reached or has no credentials: exit 2, one line, first.

Used to be a traceback (exit 1) from pyarrow's ``OSError`` at the first read. Every command
that takes a storage root now checks it first (:func:`hrtem_ray.store.storage.check_reachable`:
one ``HeadBucket``, one attempt) and refuses with the reason and the settings to check,
before Ray starts and before anything is written. Tested against the loopback moto server
without credentials, with a missing bucket, and against an endpoint nothing listens on.
"""

from __future__ import annotations

import copy
import socket

import numpy as np
import pyarrow.fs as pafs
import pytest
import yaml
from helpers import TWO_MODEL_STUDY, make_bucket

from hrtem_ray import cli
from hrtem_ray.exit_codes import EXIT_BAD_INPUT
from hrtem_ray.store import storage

CREDENTIAL_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Point S3 at a given endpoint with or without credentials, and never at ~/.aws."""

    def configure(endpoint: str, credentials: bool) -> None:
        for var in CREDENTIAL_VARS:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HRTEM_RAY_S3_ENDPOINT", endpoint)
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
        if credentials:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")

    return configure


def _commands(tmp_path, root: str) -> list[list[str]]:
    """Every command that takes the storage root, as a user would type it."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(copy.deepcopy(TWO_MODEL_STUDY)))
    image = tmp_path / "m.npy"
    np.save(image, np.zeros((64, 64), np.float32))
    return [
        ["run", str(spec), "--out", root],
        ["sweep", str(spec), "--out", root],
        ["simulate", str(spec), "--out", root],
        ["check", root],
        ["report", root, "-o", str(tmp_path / "report")],
        ["predict", "--study", root, "--model", "best:0", str(image), "-o", str(tmp_path / "p")],
    ]


def _assert_refused(capsys, tmp_path, root: str, reason: str) -> None:
    for argv in _commands(tmp_path, root):
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code == EXIT_BAD_INPUT, (argv, err)
        assert err.count("error:") == 1 and "Traceback" not in err, err
        assert root in err and reason in err, err
    assert not (tmp_path / "report").exists() and not (tmp_path / "p").exists()


def _objects(endpoint: str, bucket: str) -> list[str]:
    fs = pafs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        scheme="http",
        endpoint_override=endpoint.split("://", 1)[1],
    )
    infos = fs.get_file_info(pafs.FileSelector(bucket, recursive=True, allow_not_found=True))
    return [i.path for i in infos]


def test_no_credentials_exit_2_naming_them_and_nothing_is_written(
    moto_endpoint, aws_env, tmp_path, capsys
):
    bucket = make_bucket(moto_endpoint)
    aws_env(moto_endpoint, credentials=False)
    _assert_refused(capsys, tmp_path, f"s3://{bucket}/study", "no AWS credentials found")
    assert _objects(moto_endpoint, bucket) == []


def test_a_missing_bucket_exits_2_naming_it(moto_endpoint, aws_env, tmp_path, capsys):
    aws_env(moto_endpoint, credentials=True)
    _assert_refused(capsys, tmp_path, "s3://no-such-bucket-here/study", "does not exist")


def test_an_unreachable_endpoint_exits_2_naming_it(aws_env, tmp_path, capsys):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    aws_env(endpoint, credentials=True)
    _assert_refused(
        capsys, tmp_path, "s3://bucket/study", f"cannot reach the S3 endpoint {endpoint}"
    )


def test_half_a_key_pair_is_refused_by_name(aws_env, monkeypatch):
    aws_env("http://127.0.0.1:9", credentials=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    with pytest.raises(storage.StorageError, match="set both AWS_ACCESS_KEY_ID and AWS_SECRET"):
        storage.check_reachable("s3://bucket/study")


def test_a_reachable_bucket_and_local_paths_pass(moto_endpoint, aws_env, tmp_path):
    bucket = make_bucket(moto_endpoint)
    aws_env(moto_endpoint, credentials=True)
    storage.check_reachable(f"s3://{bucket}/study")
    storage.check_reachable(tmp_path / "not-yet-there")  # local: the writers' business
