from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One picture from a camera, with the times the loop needs to measure latency and deadlines."""

    image: np.ndarray  # H x W (mono) or H x W x 3 (RGB), uint8
    frame_id: int
    captured_at: float  # wall clock, seconds since the epoch, for payloads
    captured_mono: float  # time.monotonic() at capture, for latency and deadlines
    camera_timestamp: int | None = None  # the device's own tick counter, where it gives one
    source: str = ""  # file name for replays, device id for cameras
