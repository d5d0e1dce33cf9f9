"""Waiting for a condition in tests, instead of sleeping for a guessed time.

A loaded machine (two cores, other work beside the suite) may take many times longer than a quiet one, so a test
never sleeps "long enough" and then asserts: it waits for what it needs, with a deadline far beyond any plausible
delay. Waiting costs only as long as the condition takes, so a generous deadline is free when the test passes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

WAIT_S = 30.0  # far beyond any delay a loaded machine adds; only a real failure waits this long
POLL_S = 0.01


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> None:
    """Return once `condition()` is true; AssertionError saying `what` was awaited after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        # Polling a condition another thread changes, with no event to wait on; the deadline above bounds it.
        time.sleep(POLL_S)


def wait_for_event(event: threading.Event, what: str, timeout_s: float = WAIT_S) -> None:
    """`event.wait` that fails the test, saying what was awaited, instead of returning False."""
    if not event.wait(timeout_s):
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
