"""What a run of the inspection loop counted: verdicts by kind, parts not inspected by reason, late and dropped
frames, camera errors, and the recent latency of each stage (for the stats topic, the metrics and the summary at
exit)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edge_agent.verdict import ERROR, NOT_INSPECTED_REASONS, OK, REJECT

STAGES = ("acquire", "preprocess", "infer", "postprocess", "publish")
# Latency medians cover the most recent frames only, so months of running use constant memory.
LATENCY_WINDOW = 10_000


@dataclass
class RunSummary:
    frames: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {OK: 0, REJECT: 0, ERROR: 0})
    late: int = 0
    dropped: int = 0
    camera_errors: int = 0
    paused: int = 0  # frames discarded while inspection was paused by a command
    # `not_inspected` verdicts published, by reason (a dropped or paused frame, a gap in the camera's counter)
    not_inspected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NOT_INSPECTED_REASONS, 0))
    # Parts known to have passed with no verdict of their own: a camera gap past its cap, notes past the queue's
    # bound. Counted, since they could not be answered one by one.
    missed_without_verdict: int = 0
    delivered: bool = True
    stage_ms: dict[str, deque[float]] = field(default_factory=lambda: {s: deque(maxlen=LATENCY_WINDOW) for s in STAGES})
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def counters(self) -> dict[str, float | int]:
        return {
            "frames": self.frames,
            "ok": self.counts[OK],
            "rejects": self.counts[REJECT],
            "errors": self.counts[ERROR],
            "late": self.late,
            "dropped": self.dropped,
            "camera_errors": self.camera_errors,
            "paused": self.paused,
            "not_inspected": sum(self.not_inspected.values()),
            **{f"not_inspected_{reason}": count for reason, count in self.not_inspected.items()},
            "missed_without_verdict": self.missed_without_verdict,
        }

    def percentile_ms(self, stage: str, percent: float) -> float:
        """Over the most recent frames, for one stage or `total` (capture to decision)."""
        values = self.latency_ms if stage == "total" else self.stage_ms[stage]
        return float(np.percentile(values, percent)) if values else 0.0
