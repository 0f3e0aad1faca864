"""SIGTERM handled like Ctrl-C, so that a stopped command cleans up and says how to resume.

Light on purpose (no Ray): the command line enters it before it knows which command runs.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


def _raise_interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`KeyboardInterrupt` like Ctrl-C (main thread only).

    Enter it after Ray has started: ``ray.init`` installs a handler of its own that
    ends the process at once on SIGTERM, without cleanup or a message.
    """
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
