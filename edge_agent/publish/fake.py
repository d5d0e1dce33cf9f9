"""An in-memory `Publisher` for unit tests of the agent loop: no broker, no threads."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from edge_agent.verdict import Verdict


@dataclass
class FakePublisher:
    """Keeps what it is given. `flush_result` is what `flush` answers (set False to test a failed flush)."""

    verdicts: list[Verdict] = field(default_factory=list)
    stats: list[dict[str, float | int]] = field(default_factory=list)
    started: bool = False
    stopped: bool = False
    flush_result: bool = True
    flush_calls: list[float] = field(default_factory=list)

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

    def publish_stats(self, counters: dict[str, float | int]) -> None:
        self.stats.append(dict(counters))

    def pending(self) -> int:
        return 0

    @property
    def rejects(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.is_reject]
