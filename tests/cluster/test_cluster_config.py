"""Offline validation of cluster.yaml with Ray's own cluster-config checks.

`ray up` talks to the cloud before validating, so these tests call the same
functions it uses (``prepare_config`` fills in the provider defaults,
``validate_config`` applies Ray's JSON schema and cross-field checks) with no
credentials and with network connections forbidden.
"""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private import util

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if validation tried to reach any address (e.g. the AWS API)."""

    def refuse(self, address):
        raise AssertionError(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)


def _load() -> dict[str, Any]:
    with open(CLUSTER_YAML) as fh:
        return yaml.safe_load(fh)


def _validate(config: dict[str, Any]) -> dict[str, Any]:
    prepared = util.prepare_config(copy.deepcopy(config))
    util.validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_ray_validation() -> None:
    prepared = _validate(_load())
    assert prepared["provider"]["type"] == "aws"
    assert "cluster_synced_files" in prepared  # defaults were merged


def test_cluster_layout() -> None:
    cfg = _load()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "head schedules no work"
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t["node_config"]["InstanceType"].startswith("g5") for t in gpu)
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in workers), "autoscale from 0"
    assert sum(t["max_workers"] for t in workers) >= cfg["max_workers"] > 0

    setup = cfg["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if "torch" in c and "download.pytorch.org" in c)
    hrtem_at = next(i for i, c in enumerate(setup) if "hrtem-ray" in c and "pip install" in c)
    assert torch_at < hrtem_at, "install the CUDA build of torch before hrtem-ray"
    assert any("ray[" in c and "2.60" in c for c in setup), "pin Ray to the project's version"
    assert "~/hrtem-ray" in cfg["file_mounts"]
    assert "CHANGE" in CLUSTER_YAML.read_text()


@pytest.mark.parametrize(
    ("breakage", "error"),
    [
        (lambda c: c.pop("provider"), KeyError),  # required key missing
        (lambda c: c["provider"].pop("type"), KeyError),  # required provider key missing
        (lambda c: c["available_node_types"]["gpu_worker"].pop("node_config"), None),
        (lambda c: c["available_node_types"]["gpu_worker"].pop("resources"), None),
        (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5), None),
        (lambda c: c.update(max_wokers=3), None),  # misspelt key: no extra keys allowed
        (lambda c: c.update(head_node_type="nope"), ValueError),
        (lambda c: c["available_node_types"]["cpu_worker"].update(min_workers=9), ValueError),
    ],
    ids=[
        "no-provider",
        "no-provider-type",
        "no-node-config",
        "no-resources",
        "fractional-gpu-resource",
        "unknown-key",
        "bad-head-type",
        "min-workers-over-max",
    ],
)
def test_broken_configs_are_rejected(breakage, error) -> None:
    cfg = _load()
    breakage(cfg)
    expected = error or jsonschema.ValidationError
    with pytest.raises(expected):
        _validate(cfg)
