"""The study lock (issue 10 §4): one driver per storage root, stale locks taken over.

Unit tests run on local paths, ``file://`` and ``s3://`` (moto on 127.0.0.1);
the end-to-end tests run two real ``hrtem-ray run`` processes on one ``--out``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from helpers import CLI, TINY_DATASET, TWO_MODEL_STUDY, make_bucket, run_cli, s3_env

from hrtem_ray.store import conditional, storage
from hrtem_ray.store import lock as study_lock_module
from hrtem_ray.store.lock import (
    LOCK_FILE,
    LockHeldError,
    LockInfo,
    StudyLock,
    read_lock,
    study_lock,
)


@pytest.fixture(params=["path", "file", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage root of every supported kind (S3: a fresh bucket on moto)."""
    if request.param == "path":
        return str(tmp_path / "study")
    if request.param == "file":
        return "file://" + str(tmp_path / "study")
    endpoint = request.getfixturevalue("moto_endpoint")
    monkeypatch = request.getfixturevalue("monkeypatch")
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    for key, value in s3_env(endpoint, tmp_path).items():
        monkeypatch.setenv(key, value)
    return f"s3://{make_bucket(endpoint)}/study"


def _write_lock(root: str, **changes) -> LockInfo:
    """Put a lock of another process at ``root`` (by default: a live one elsewhere)."""
    info = LockInfo(
        host="other-node",
        host_id="other-node:boot:pid:[1]",
        pid=4242,
        command="hrtem-ray run (other)",
        started_at=study_lock_module._now_iso(),
        heartbeat_at=study_lock_module._now_iso(),
        token="0" * 32,
    )
    info = replace(info, **changes)
    assert conditional.create_exclusive(storage.join(root, LOCK_FILE), info.to_bytes())
    return info


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _iso(seconds_ago: float) -> str:
    from datetime import datetime, timedelta, timezone

    stamp = datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ----------------------------------------------------------------------- unit tests


def test_lock_is_exclusive_and_released(root: str) -> None:
    with study_lock(root, "hrtem-ray run (a)") as held:
        info = read_lock(root)
        assert info is not None
        assert (info.pid, info.command) == (os.getpid(), "hrtem-ray run (a)")
        with pytest.raises(LockHeldError) as err:  # another claim (as by another process)
            StudyLock(root, "hrtem-ray sweep (b)").acquire()
        message = str(err.value)
        assert f"pid {os.getpid()}" in message and "hrtem-ray run (a)" in message
        assert info.host in message and "last heartbeat" in message
        assert "delete the lock file" in message
        assert not held.lost
        assert read_lock(root) == info  # the refused claim changed nothing
    assert read_lock(root) is None
    with study_lock(root, "again"):  # free again
        pass


def test_lock_is_reentrant_within_a_process(root: str) -> None:
    """``run`` holds the lock around ``sweep``, which takes it again: one claim."""
    with study_lock(root, "hrtem-ray run") as outer:
        with study_lock(root, "hrtem-ray sweep") as inner:
            assert inner is outer
        assert read_lock(root).command == "hrtem-ray run"  # the inner exit released nothing
    assert read_lock(root) is None


def test_lock_released_on_exception_and_ctrl_c(root: str) -> None:
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with study_lock(root, "x"):
                raise error
        assert read_lock(root) is None


def test_heartbeat_refreshes_and_detects_a_lost_lock(root: str) -> None:
    held = StudyLock(root, "x", heartbeat_seconds=3600)
    held.acquire()
    try:
        first = read_lock(root)
        time.sleep(0.01)
        assert held.heartbeat()
        second = read_lock(root)
        assert second.heartbeat_at > first.heartbeat_at
        assert (second.token, second.started_at) == (first.token, first.started_at)
        # Someone else replaces the lock: the next heartbeat notices and stops.
        lock_file = storage.join(root, LOCK_FILE)
        intruder = replace(second, token="f" * 32).to_bytes()
        assert conditional.replace_if_unchanged(lock_file, intruder, expected=second.to_bytes())
        assert not held.heartbeat()
        assert held.lost
    finally:
        held.release()
    assert storage.read_bytes(storage.join(root, LOCK_FILE)) == intruder  # not ours: kept


def test_heartbeat_thread_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HRTEM_RAY_LOCK_HEARTBEAT_SECONDS", "0.2")
    root = str(tmp_path / "study")
    with study_lock(root, "x"):
        first = read_lock(root).heartbeat_at
        deadline = time.time() + 10
        while read_lock(root).heartbeat_at == first and time.time() < deadline:
            time.sleep(0.05)
        assert read_lock(root).heartbeat_at > first


def test_live_lock_elsewhere_is_respected(root: str) -> None:
    other = _write_lock(root)
    with pytest.raises(LockHeldError, match="host other-node, pid 4242"):
        with study_lock(root, "x"):
            pass
    assert read_lock(root) == other


def test_dead_holder_on_this_host_is_taken_over(root: str, caplog) -> None:
    _write_lock(
        root,
        host="this-host",
        host_id=study_lock_module._host_id(),
        pid=_dead_pid(),
    )
    with study_lock(root, "new") as held:
        assert read_lock(root).pid == os.getpid()
        assert not held.lost
    err = caplog.text
    assert "took over the stale study lock" in err and "no longer running" in err


def test_old_heartbeat_is_taken_over(root: str, caplog, monkeypatch) -> None:
    monkeypatch.setenv("HRTEM_RAY_LOCK_STALE_SECONDS", "120")
    _write_lock(root, heartbeat_at=_iso(600))
    with study_lock(root, "new"):
        assert read_lock(root).pid == os.getpid()
    assert "heartbeat is 600 s old (older than 120 s" in caplog.text
    # A younger heartbeat than the limit is respected.
    _write_lock(root, heartbeat_at=_iso(60))
    with pytest.raises(LockHeldError, match="last heartbeat 60 s ago"):
        with study_lock(root, "new"):
            pass


def test_foreign_file_at_the_lock_name_is_not_overwritten(tmp_path: Path) -> None:
    root = str(tmp_path)
    (tmp_path / LOCK_FILE).write_text("something else")
    with pytest.raises(LockHeldError, match="not an hrtem-ray lock"):
        with study_lock(root, "x"):
            pass
    assert (tmp_path / LOCK_FILE).read_text() == "something else"


_TAKEOVER_RACE = """
import os, sys, time
from hrtem_ray.store.lock import LockHeldError, StudyLock
root, go, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
while not os.path.exists(go):
    time.sleep(0.005)
lock = StudyLock(root, "racer", heartbeat_seconds=3600)
try:
    lock.acquire()
except LockHeldError:
    print("refused")
    open(go + f".refused-{os.getpid()}", "w").close()
else:
    print("won")
    # Hold the lock until every other racer has looked (or 60 s).
    deadline = time.time() + 60
    folder, name = os.path.split(go)
    while time.time() < deadline:
        if sum(f.startswith(name + ".refused-") for f in os.listdir(folder)) >= n - 1:
            break
        time.sleep(0.02)
    lock.release()
"""


@pytest.mark.slow
@pytest.mark.parametrize("stale", ["none", "dead-pid"])
def test_concurrent_claims_have_one_winner(root: str, tmp_path: Path, stale: str) -> None:
    """10 processes claim at once (free lock, or a stale one to take over): one wins."""
    if stale == "dead-pid":
        _write_lock(root, host_id=study_lock_module._host_id(), pid=_dead_pid())
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TAKEOVER_RACE, root, str(go), "10"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(10)
    ]
    time.sleep(3.0)
    go.touch()
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outcomes.append(out.strip())
    assert sorted(outcomes) == ["refused"] * 9 + ["won"], outcomes
    assert read_lock(root) is None


# ----------------------------------------------------------------------- end to end

# Two models (one pretrain, one transfer), one epoch, on the session's tiny dataset.
LOCK_STUDY = {**TWO_MODEL_STUDY, "name": "locked"}


def _lock_spec(tmp_path: Path, dataset_root: Path) -> Path:
    spec_file = tmp_path / "locked.yaml"
    raw = {**LOCK_STUDY, "dataset": {**TINY_DATASET, "path": str(dataset_root)}}
    spec_file.write_text(yaml.safe_dump(raw))
    return spec_file


def _wait_for(condition, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        assert proc is None or proc.poll() is None, "the first run ended early"
        time.sleep(0.1)


@pytest.mark.slow
def test_second_run_on_the_same_out_refuses_at_once(tiny_dataset_root, tmp_path: Path) -> None:
    spec_file = _lock_spec(tmp_path, tiny_dataset_root)
    out = tmp_path / "study"
    first = subprocess.Popen(
        [*CLI, "run", str(spec_file), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    try:
        _wait_for(lambda: (out / LOCK_FILE).exists(), 120, first)
        started = time.monotonic()
        second = run_cli("run", spec_file, "--out", out, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert time.monotonic() - started < 30  # at once: no Ray, no training
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), second.stderr
        assert f"pid {first.pid}" in lines[0] and "in use by another hrtem-ray process" in lines[0]
        assert "command 'hrtem-ray " in lines[0] and "(locked)'" in lines[0]  # study name
        assert "last heartbeat" in lines[0]
        out_text, err_text = first.communicate(timeout=600)
        assert first.returncode == 0, (out_text + err_text)[-4000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert not (out / LOCK_FILE).exists()  # released at the end of the first run


@pytest.mark.slow
def test_killed_holder_is_taken_over_by_the_next_run(tiny_dataset_root, tmp_path: Path) -> None:
    from helpers import kill_cli_when

    spec_file = _lock_spec(tmp_path, tiny_dataset_root)
    out = tmp_path / "study"
    kill_cli_when(
        ["run", spec_file, "--out", out],
        lambda: (out / LOCK_FILE).exists() and (out / "tune").exists(),
        timeout=180,
    )
    stale = json.loads((out / LOCK_FILE).read_text())  # SIGKILL left the lock behind
    proc = run_cli("run", spec_file, "--out", out, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "took over the stale study lock" in proc.stderr
    assert f"pid {stale['pid']}" in proc.stderr and "no longer running" in proc.stderr
    assert not (out / LOCK_FILE).exists()
