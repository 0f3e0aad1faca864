"""Fixtures of the storage tests: storage roots of every kind (path, file://, s3:// on moto)."""

from __future__ import annotations

import pytest
from helpers import make_bucket, s3_env


@pytest.fixture
def s3_root(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> str:
    """A fresh bucket on the moto server, with the environment pointing at it."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    for key, value in s3_env(moto_endpoint, tmp_path).items():
        monkeypatch.setenv(key, value)
    return f"s3://{make_bucket(moto_endpoint)}/study"


@pytest.fixture(params=["path", "file", "s3"])
def root(request: pytest.FixtureRequest, tmp_path) -> str:
    """Storage roots of every supported kind."""
    if request.param == "path":
        return str(tmp_path / "store")
    if request.param == "file":
        return "file://" + str(tmp_path / "store")
    return request.getfixturevalue("s3_root")
