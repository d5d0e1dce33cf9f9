"""In-memory fakes for tests: a `Publisher` for the agent loop (no broker, no threads) and a `VerdictStore`."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_agent.publish.store import Message, StoredMessage, log_drops
from edge_agent.verdict import Verdict


@dataclass
class FakePublisher:
    """Keeps what it is given. `flush_result` is what `flush` answers (set False to test a failed flush)."""

    verdicts: list[Verdict] = field(default_factory=list)
    stats: list[dict[str, float | int]] = field(default_factory=list)
    drift_stats: list[dict[str, Any]] = field(default_factory=list)  # the drift summaries beside the stats
    started: bool = False
    stopped: bool = False
    flush_result: bool = True
    flush_calls: list[float] = field(default_factory=list)
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (camera, event, details)
    model: str = ""

    def start(self) -> None:
        self.started = True

    def publish(self, verdict: Verdict) -> None:
        if self.stopped:
            raise RuntimeError("FakePublisher.publish called after stop()")
        if verdict.published_at is None:
            verdict.published_at = time.time()
        self.verdicts.append(verdict)

    def flush(self, timeout_s: float) -> bool:
        self.flush_calls.append(timeout_s)
        return self.flush_result

    def stop(self) -> None:
        self.stopped = True

    def publish_stats(self, counters: dict[str, float | int], drift: dict[str, Any] | None = None) -> None:
        self.stats.append(dict(counters))
        if drift is not None:
            self.drift_stats.append(dict(drift))

    def pending(self) -> int:
        return 0

    def publish_event(self, camera: str, event: str, details: dict[str, Any]) -> None:
        self.events.append((camera, event, dict(details)))

    def set_model(self, version: str) -> None:
        self.model = version

    @property
    def rejects(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.is_reject]


class MemoryStore:
    """A `VerdictStore` in a list: same order, bound and drop counting as `SqliteStore`, gone with the process."""

    def __init__(self, max_messages: int = 100_000) -> None:
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._rows: list[StoredMessage] = []
        self._last_id = 0
        self._dropped = 0

    def append(self, messages: Sequence[Message]) -> None:
        with self._lock:
            for message in messages:
                self._last_id += 1
                self._rows.append(StoredMessage(self._last_id, message))
            over = max(0, len(self._rows) - self.max_messages)
            del self._rows[:over]
            self._dropped += over
            total = self._dropped
        if over:
            log_drops("in memory", over, total, self.max_messages)

    def peek(self, limit: int, after: int = 0) -> list[StoredMessage]:
        with self._lock:
            return [row for row in self._rows if row.id > after][:limit]

    def delete(self, ids: Sequence[int]) -> None:
        gone = set(ids)
        with self._lock:
            self._rows = [row for row in self._rows if row.id not in gone]

    def count(self) -> int:
        with self._lock:
            return len(self._rows)

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._dropped

    def close(self) -> None:
        """Nothing to release; the messages stay readable, as a test may want to look at them."""
