"""What a run of the inspection loop counted: verdicts by kind, late and dropped frames, camera errors, and the
recent latency of each stage (for the stats topic, the metrics and the summary at exit)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edge_agent.verdict import ERROR, OK, REJECT

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
        }

    def percentile_ms(self, stage: str, percent: float) -> float:
        """Over the most recent frames, for one stage or `total` (capture to decision)."""
        values = self.latency_ms if stage == "total" else self.stage_ms[stage]
        return float(np.percentile(values, percent)) if values else 0.0
