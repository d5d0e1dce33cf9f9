"""Throttles log lines that repeat: a camera sending only bad buffers at 30 fps, or a broker refusing every retry
all night, must not flood the journal with the same line, nor go silent about it either."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# Kinds remembered at once. Callers name kinds from a few message templates, so this only bounds memory against
# a source of endlessly new messages; past it the kind logged longest ago is forgotten (its next line is news).
MAX_KINDS = 100


@dataclass(frozen=True)
class Admitted:
    """A line the throttle lets through."""

    first: bool  # the first of its kind since the throttle was made or reset: news
    held_back: int  # lines of its kind held back since the last one let through


@dataclass
class _Kind:
    admitted_at: float
    held_back: int = 0


class LogThrottle:
    """Lets the first line of each kind through, then at most one per `interval_s`, which tells how many were
    held back meanwhile. Not thread-safe: each user keeps its own, on one thread."""

    def __init__(
        self, interval_s: float, clock: Callable[[], float] = time.monotonic, max_kinds: int = MAX_KINDS
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._max_kinds = max_kinds
        self._kinds: dict[str, _Kind] = {}

    def admit(self, kind: str) -> Admitted | None:
        """Whether to log a line of `kind` now: None to hold it back (or log it at debug level)."""
        now = self._clock()
        seen = self._kinds.get(kind)
        if seen is None:
            if len(self._kinds) >= self._max_kinds:
                del self._kinds[min(self._kinds, key=lambda k: self._kinds[k].admitted_at)]
            self._kinds[kind] = _Kind(now)
            return Admitted(first=True, held_back=0)
        if now - seen.admitted_at < self._interval_s:
            seen.held_back += 1
            return None
        admitted = Admitted(first=False, held_back=seen.held_back)
        seen.admitted_at, seen.held_back = now, 0
        return admitted

    def reset(self) -> None:
        """Forget every kind: the next line of each is news again."""
        self._kinds.clear()
