from __future__ import annotations

from typing import Protocol

from edge_agent.verdict import Verdict


class Publisher(Protocol):
    """Delivers verdicts. `publish` must not block the loop for long; `flush` waits for delivery."""

    def start(self) -> None: ...

    def publish(self, verdict: Verdict) -> None: ...

    def flush(self, timeout_s: float) -> bool: ...

    def stop(self) -> None: ...
