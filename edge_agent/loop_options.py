"""What the inspection loop and its helpers are told by the config and the command line."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoopOptions:
    max_frames: int | None = None
    deadline_ms: float = 100.0
    error_is_reject: bool = True
    not_inspected_is_reject: bool = True
    queue_size: int = 4
    flush_timeout_s: float = 10.0
    stats_interval_s: float = 10.0
    grab_timeout_s: float = 1.0
    # No frame for this long means the camera is gone; None where silence is normal (hardware trigger, replay).
    frame_timeout_s: float | None = None
