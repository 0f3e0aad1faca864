"""Tests for hrtem_ray.store.conditional: create once, compare-and-swap, 20-process races.

Every storage kind (path, ``file://``, ``s3://`` on a local moto server on 127.0.0.1).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from hrtem_ray.store import conditional, storage


def test_create_exclusive_creates_once(root: str) -> None:
    f = storage.join(root, "claims", "owner.json")
    assert conditional.create_exclusive(f, b"first")
    assert not conditional.create_exclusive(f, b"second")
    assert storage.read_bytes(f) == b"first"
    if storage.is_local(root):  # no temporary sibling is left behind
        assert sorted(os.listdir(storage.local_path(storage.join(root, "claims")))) == [
            "owner.json"
        ]


def test_replace_and_delete_if_unchanged(root: str) -> None:
    f = storage.join(root, "lock.json")
    assert not conditional.replace_if_unchanged(f, b"new", expected=b"old")  # missing
    assert not conditional.delete_if_unchanged(f, expected=b"old")
    assert conditional.create_exclusive(f, b"v1")
    assert not conditional.replace_if_unchanged(f, b"v2", expected=b"stale")
    assert storage.read_bytes(f) == b"v1"
    assert conditional.replace_if_unchanged(f, b"v2", expected=b"v1")
    assert storage.read_bytes(f) == b"v2"
    assert not conditional.replace_if_unchanged(f, b"v3", expected=b"v1")  # lost the race
    assert not conditional.delete_if_unchanged(f, expected=b"v1")
    assert storage.read_bytes(f) == b"v2"
    assert conditional.delete_if_unchanged(f, expected=b"v2")
    assert not storage.exists(f)
    assert conditional.create_exclusive(f, b"again")


_RACE_CODE = """
import os, sys, time
from hrtem_ray.store import conditional, s3, storage
target, go, me = sys.argv[1], sys.argv[2], sys.argv[3]
if not storage.is_local(target):
    s3.boto3_client()  # build the S3 client before the start, not during the race
open(go + ".ready-" + me, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
{call}
"""


def _race(tmp_path, target: str, call: str, n: int = 20) -> dict[str, bool]:
    """Start ``n`` processes that run ``call`` at the same instant; their printed results."""
    go = tmp_path / "go"
    code = _RACE_CODE.format(call=call)
    procs = {
        f"writer-{i:02d}": subprocess.Popen(
            [sys.executable, "-c", code, target, str(go), f"writer-{i:02d}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    }
    deadline = time.time() + 120
    while len(list(tmp_path.glob("go.ready-*"))) < n:  # every racer waits at the barrier
        assert time.time() < deadline and all(p.poll() is None for p in procs.values())
        time.sleep(0.05)
    go.touch()
    results = {}
    for me, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results[me] = out.strip() == "True"
    return results


@pytest.fixture(params=["path", "s3"])
def race_root(request: pytest.FixtureRequest, tmp_path) -> str:
    """A local and an S3 root (``file://`` takes the same code path as a path)."""
    if request.param == "path":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_root")


@pytest.mark.slow
def test_create_exclusive_race_20_processes(race_root: str, tmp_path) -> None:
    """20 processes create one file with different content at once: exactly one wins."""
    target = storage.join(race_root, "race", "claim.txt")
    results = _race(tmp_path, target, "print(conditional.create_exclusive(target, me.encode()))")
    winners = [me for me, won in results.items() if won]
    assert len(winners) == 1, results
    assert storage.read_bytes(target) == winners[0].encode()


@pytest.mark.slow
def test_replace_if_unchanged_race_20_processes(race_root: str, tmp_path) -> None:
    """20 processes swap the same old content at once: exactly one swap succeeds."""
    target = storage.join(race_root, "race", "lock.txt")
    assert conditional.create_exclusive(target, b"stale")
    results = _race(
        tmp_path,
        target,
        "print(conditional.replace_if_unchanged(target, me.encode(), expected=b'stale'))",
    )
    winners = [me for me, won in results.items() if won]
    assert len(winners) == 1, results
    assert storage.read_bytes(target) == winners[0].encode()
