"""Tests for hrtem_ray.store.s3: settings from the environment, the clients built from them."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest

from hrtem_ray.store import s3, storage


def test_s3_settings_from_env_and_the_filesystem_they_give(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    }
    s = s3.s3_settings_from_env(env)
    assert (s.region, s.scheme, s.endpoint_override) == ("eu-west-1", "http", "127.0.0.1:9000")
    # The project-specific variable wins over the generic AWS ones.
    s = s3.s3_settings_from_env({**env, "HRTEM_RAY_S3_ENDPOINT": "minio.lab:9000"})
    assert (s.scheme, s.endpoint_override) == ("https", "minio.lab:9000")
    assert s3.s3_settings_from_env({}).region == "us-east-1"
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY"):
        s3.s3_settings_from_env({"AWS_ACCESS_KEY_ID": "k"})
    opts = s3.polars_storage_options(env)
    assert opts["aws_endpoint_url"] == "http://127.0.0.1:9000" and opts["aws_allow_http"] == "true"

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    loc = storage.resolve("s3://bucket//a/b/")
    assert isinstance(loc.fs, pafs.S3FileSystem)
    assert (loc.path, loc.uri) == ("bucket/a/b", "s3://bucket/a/b")
    assert loc.fs.region == "eu-west-1"
