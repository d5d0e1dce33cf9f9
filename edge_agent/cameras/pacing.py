"""Holds a source to a fixed rate: replays at `fps`, software triggers at `trigger_rate_hz`."""

from __future__ import annotations

import time

# After a stall (a slow loop, a paused agent) the schedule catches up at most this far back, not in a burst.
MAX_CATCH_UP_S = 1.0


class Pacer:
    def __init__(self, rate_hz: float | None) -> None:
        self._period = None if rate_hz is None else 1.0 / rate_hz
        self._next_due = time.monotonic()

    def restart(self) -> None:
        self._next_due = time.monotonic()

    def wait(self, timeout_s: float) -> bool:
        """Sleep until the next tick is due and claim it: True. False after sleeping `timeout_s` first,
        so a caller that must answer within its timeout can. Without a rate, always True at once."""
        if self._period is None:
            return True
        wait = self._next_due - time.monotonic()
        if wait > timeout_s:
            time.sleep(timeout_s)
            return False
        if wait > 0:
            time.sleep(wait)
        self._next_due = max(self._next_due, time.monotonic() - MAX_CATCH_UP_S) + self._period
        return True
