"""A `PlcOutput` for tests: keeps the verdicts it is given, and can be made to fail."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_agent.plc.base import PlcError
from edge_agent.verdict import Verdict


@dataclass
class FakePlcOutput:
    name: str = "fake PLC"
    fail_start: bool = False
    fail_publish: bool = False
    verdicts: list[Verdict] = field(default_factory=list)
    started: bool = False
    stopped: bool = False

    def start(self) -> None:
        if self.fail_start:
            raise PlcError(f"{self.name} cannot listen")
        self.started = True

    def publish(self, verdict: Verdict) -> None:
        if self.fail_publish:
            raise RuntimeError(f"{self.name} is broken")
        self.verdicts.append(verdict)

    def stop(self) -> None:
        self.stopped = True
