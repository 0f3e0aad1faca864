"""One driver per study: a lock file at the storage root, with a heartbeat.

:func:`study_lock` claims ``<root>/.hrtem-ray.lock`` before any compute starts
and holds it until the command ends, so that a second ``simulate``, ``sweep`` or
``run`` on the same storage stops at once with :class:`LockHeldError` naming the
holder, instead of running every trial a second time.

The lock file is JSON::

    {"host": "node-1", "host_id": "<boot id>:pid:[4026531836]", "pid": 4242,
     "command": "hrtem-ray run", "started_at": "2026-11-29T08:51:03.123Z",
     "heartbeat_at": "2026-11-29T08:51:33.125Z", "token": "<random hex>"}

* It is created with :func:`hrtem_ray.store.conditional.create_exclusive` (``os.link``
  locally, a conditional ``PUT`` with ``If-None-Match: *`` on S3), so of any
  number of concurrent claimants exactly one wins, on local paths, ``file://``
  and ``s3://`` alike.
* A daemon thread rewrites ``heartbeat_at`` every 30 s
  (``HRTEM_RAY_LOCK_HEARTBEAT_SECONDS``) with a compare-and-swap
  (:func:`hrtem_ray.store.conditional.replace_if_unchanged`); if the content is no longer
  what it wrote, the lock was taken over and an error is logged.
* It is deleted on exit (also after an exception or Ctrl-C), and only if it is
  still this process's lock.
* A stale lock is taken over, with a message on stderr: its holder ran on this
  host (same boot and PID namespace) and its process is gone, or its heartbeat
  is older than ``HRTEM_RAY_LOCK_STALE_SECONDS`` (default 300 s). The takeover is
  a compare-and-swap on the stale content, so two processes that both find the
  lock stale cannot both win.

Heartbeat ages compare the holder's clock with the reader's: hosts whose clocks
differ by more than the stale age could take over a live lock early.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

from hrtem_ray.store import conditional, storage

__all__ = [
    "LOCK_FILE",
    "LockHeldError",
    "LockInfo",
    "StudyLock",
    "lock_uri",
    "read_lock",
    "study_lock",
]

LOCK_FILE = ".hrtem-ray.lock"
HEARTBEAT_ENV = "HRTEM_RAY_LOCK_HEARTBEAT_SECONDS"
STALE_ENV = "HRTEM_RAY_LOCK_STALE_SECONDS"
DEFAULT_HEARTBEAT_SECONDS = 30.0
DEFAULT_STALE_SECONDS = 300.0
_MAX_ATTEMPTS = 5

log = logging.getLogger(__name__)


class LockHeldError(RuntimeError):
    """Another live process holds the study lock; the message names it and what to do."""


@dataclass(frozen=True)
class LockInfo:
    """The content of a lock file.

    Attributes
    ----------
    host : str
        Host name of the holder.
    host_id : str
        Boot id and PID namespace of the holder: equal only where its ``pid``
        can be checked from here.
    pid : int
        Process id of the holder.
    command : str
        What the holder runs (e.g. ``"hrtem-ray run"``).
    started_at, heartbeat_at : str
        UTC ISO 8601 times of the claim and of the latest heartbeat.
    token : str
        Random id of this claim.
    """

    host: str
    host_id: str
    pid: int
    command: str
    started_at: str
    heartbeat_at: str
    token: str

    def to_bytes(self) -> bytes:
        """The JSON bytes written to the lock file."""
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> LockInfo:
        """Parse a lock file; raises ``ValueError`` if it is not one."""
        try:
            raw = json.loads(data.decode("utf-8"))
            return cls(
                host=str(raw["host"]),
                host_id=str(raw.get("host_id", "")),
                pid=int(raw["pid"]),
                command=str(raw.get("command", "?")),
                started_at=str(raw["started_at"]),
                heartbeat_at=str(raw["heartbeat_at"]),
                token=str(raw.get("token", "")),
            )
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a lock file: {exc}") from exc

    def heartbeat_age(self, now: float | None = None) -> float:
        """Seconds since the latest heartbeat (infinite if unreadable)."""
        try:
            beat = _parse_time(self.heartbeat_at)
        except ValueError:
            return float("inf")
        return (time.time() if now is None else now) - beat

    def describe(self, now: float | None = None) -> str:
        """``host H, pid P, command C, started S, last heartbeat N s ago``."""
        age = self.heartbeat_age(now)
        age_text = "unknown" if age == float("inf") else f"{max(age, 0.0):.0f} s ago"
        return (
            f"host {self.host}, pid {self.pid}, command {self.command!r}, "
            f"started {self.started_at}, last heartbeat {age_text}"
        )


def _now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds and a ``Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time written by :func:`_now_iso`."""
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def _env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment, else ``default``."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number of seconds, got {value!r}") from exc
    if seconds <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return seconds


def _host_id() -> str:
    """Boot id plus PID namespace: where a pid means the same process as here."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
    except OSError:
        boot = ""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return f"{socket.gethostname()}:{boot}:{pidns}"


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (zombies count as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def lock_uri(root: str) -> str:
    """The lock file of a storage root."""
    return storage.join(root, LOCK_FILE)


def read_lock(root: str) -> LockInfo | None:
    """The lock of ``root``, or ``None`` if there is none.

    Raises
    ------
    ValueError
        If a file is there but is not a lock file.
    """
    try:
        data = storage.read_bytes(lock_uri(root))
    except FileNotFoundError:
        return None
    return LockInfo.from_bytes(data)


def stale_reason(info: LockInfo, stale_seconds: float, now: float | None = None) -> str | None:
    """Why a lock may be taken over, or ``None`` if its holder may still be running.

    Parameters
    ----------
    info : LockInfo
        The lock found.
    stale_seconds : float
        Heartbeat age after which the holder counts as gone.
    now : float, optional
        The current time (seconds since the epoch).
    """
    if info.host_id == _host_id() and not _pid_alive(info.pid):
        return f"its holder (pid {info.pid} on this host) is no longer running"
    age = info.heartbeat_age(now)
    if age > stale_seconds:
        return (
            f"its heartbeat is {'unreadable' if age == float('inf') else f'{age:.0f} s old'} "
            f"(older than {stale_seconds:.0f} s, {STALE_ENV})"
        )
    return None


def _held_message(root: str, info: LockInfo, stale_seconds: float) -> str:
    """The :class:`LockHeldError` message: who holds the lock and how to proceed."""
    return (
        f"{root} is in use by another hrtem-ray process ({info.describe()}; "
        f"lock file {lock_uri(root)}). Wait for it to finish, or stop it; a lock whose "
        f"holder died on the same host, or whose heartbeat is older than "
        f"{stale_seconds:.0f} s, is taken over automatically. If you are sure no other "
        f"process uses this storage, delete the lock file."
    )


class StudyLock:
    """The lock of one storage root, held by this process (see the module docstring).

    Parameters
    ----------
    root : str
        Storage root (local path, ``file://`` or ``s3://``).
    command : str
        What this process runs, recorded for whoever finds the lock.
    heartbeat_seconds, stale_seconds : float, optional
        Defaults from ``HRTEM_RAY_LOCK_HEARTBEAT_SECONDS`` (30) and
        ``HRTEM_RAY_LOCK_STALE_SECONDS`` (300).
    """

    def __init__(
        self,
        root: str,
        command: str,
        *,
        heartbeat_seconds: float | None = None,
        stale_seconds: float | None = None,
    ) -> None:
        self.root = root
        self.uri = lock_uri(root)
        self.command = command
        self.heartbeat_seconds = heartbeat_seconds or _env_seconds(
            HEARTBEAT_ENV, DEFAULT_HEARTBEAT_SECONDS
        )
        self.stale_seconds = stale_seconds or _env_seconds(STALE_ENV, DEFAULT_STALE_SECONDS)
        self.lost = False
        self._content: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _new_info(self) -> LockInfo:
        now = _now_iso()
        return LockInfo(
            host=socket.gethostname(),
            host_id=_host_id(),
            pid=os.getpid(),
            command=self.command,
            started_at=now,
            heartbeat_at=now,
            token=uuid.uuid4().hex,
        )

    def acquire(self) -> None:
        """Claim the lock, taking over a stale one; start the heartbeat.

        Raises
        ------
        LockHeldError
            If a live process holds it (or a foreign file sits at the lock's name).
        """
        mine = self._new_info().to_bytes()
        for _ in range(_MAX_ATTEMPTS):
            if conditional.create_exclusive(self.uri, mine):
                break
            try:
                found = storage.read_bytes(self.uri)
            except FileNotFoundError:
                continue  # released in between: try to create it again
            try:
                info = LockInfo.from_bytes(found)
            except ValueError as exc:
                raise LockHeldError(
                    f"{self.uri} exists but is not an hrtem-ray lock ({exc}); "
                    "if no other process uses this storage, delete it"
                ) from None
            reason = stale_reason(info, self.stale_seconds)
            if reason is None:
                raise LockHeldError(_held_message(self.root, info, self.stale_seconds))
            if conditional.replace_if_unchanged(self.uri, mine, expected=found):
                log.warning(
                    f"took over the stale study lock {self.uri}: {reason} ({info.describe()})"
                )
                break
            # Someone else changed it (a takeover or a heartbeat): look again.
        else:
            info = read_lock(self.root)
            detail = info.describe() if info else "contended"
            raise LockHeldError(
                f"{self.root}: could not claim the study lock {self.uri} ({detail}); try again"
            )
        self._content = mine
        self._thread = threading.Thread(
            target=self._heartbeat_loop, name="hrtem-ray-lock-heartbeat", daemon=True
        )
        self._thread.start()

    def heartbeat(self) -> bool:
        """Rewrite ``heartbeat_at`` if the lock is still ours; ``False`` once it is lost."""
        with self._mutex:
            if self._content is None or self.lost:
                return False
            info = replace(LockInfo.from_bytes(self._content), heartbeat_at=_now_iso())
            new = info.to_bytes()
            if conditional.replace_if_unchanged(self.uri, new, expected=self._content):
                self._content = new
                return True
            self.lost = True
            message = (
                f"lost the study lock {self.uri}: another process took it over or removed "
                f"it; two drivers may now be writing to {self.root}"
            )
            log.error(message)
            return False

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                if not self.heartbeat():
                    return
            except Exception as exc:  # a storage hiccup: try again at the next beat
                log.warning("study lock heartbeat failed (will retry): %s", exc)

    def release(self) -> None:
        """Stop the heartbeat and delete the lock file if it is still this process's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._mutex:
            if self._content is None:
                return
            content, self._content = self._content, None
            if self.lost:
                return
            try:
                if not conditional.delete_if_unchanged(self.uri, expected=content):
                    log.warning("study lock %s was no longer ours; left it in place", self.uri)
            except Exception as exc:
                log.warning("could not remove the study lock %s: %s", self.uri, exc)


@contextmanager
def study_lock(root: str, command: str) -> Iterator[StudyLock]:
    """Hold the study lock of ``root`` for the duration of the ``with`` block.

    Parameters
    ----------
    root : str
        Storage root: local path, ``file://`` or ``s3://bucket/prefix``.
    command : str
        What this process runs (shown to anyone who finds the lock).

    Yields
    ------
    StudyLock
        The held lock (``lock.lost`` turns true if it was taken over).

    Raises
    ------
    LockHeldError
        At entry, if another process (or another claim) holds the lock.

    Notes
    -----
    Re-entrant within a process: a nested ``study_lock`` of a root this process
    already holds yields the same lock and releases nothing on exit.
    """
    key = lock_uri(root)
    with _HELD_MUTEX:
        held = _HELD.get(key)
    if held is not None:  # re-entered in this process (``run`` -> ``sweep``): already ours
        yield held
        return
    lock = StudyLock(root, command)
    lock.acquire()
    with _HELD_MUTEX:
        _HELD[key] = lock
    try:
        yield lock
    finally:
        with _HELD_MUTEX:
            _HELD.pop(key, None)
        lock.release()


# Locks held by this process, by lock file URI, so that nested study_lock calls on
# the same root (Study.run holds it around Study.sweep) share one claim.
_HELD: dict[str, StudyLock] = {}
_HELD_MUTEX = threading.Lock()
