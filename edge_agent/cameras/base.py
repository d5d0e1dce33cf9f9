from __future__ import annotations

from typing import Protocol

from edge_agent.frames import Frame


class Camera(Protocol):
    """A source of frames. `grab` returns None on a timeout, raises EndOfStream when a replay
    is exhausted, and CameraError when the device fails."""

    name: str

    def open(self) -> None: ...

    def grab(self, timeout_s: float) -> Frame | None: ...

    def close(self) -> None: ...
