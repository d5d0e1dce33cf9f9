from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

VerdictKind = Literal["ok", "reject", "error"]
OK: VerdictKind = "ok"
REJECT: VerdictKind = "reject"
ERROR: VerdictKind = "error"


@dataclass
class Verdict:
    """The decision on one frame. Field names are the MQTT payload keys (DESIGN.md)."""

    frame_id: int
    camera: str
    captured_at: float
    score: float | None
    threshold: float
    verdict: VerdictKind
    model: str
    latency_ms: float = 0.0
    published_at: float | None = None
    late: bool = False
    regions: list[dict[str, float]] = field(default_factory=list)  # reject boxes in frame pixels
    error: str | None = None
    source: str = ""
    camera_frame_id: int | None = None  # the device's own count (restarts on reconnect), where it gives one
    reject_on_error: bool = True  # config, not payload

    @property
    def is_reject(self) -> bool:
        """By default errors count as rejects: the PLC ejects a part we could not judge (fail-safe)."""
        return self.verdict == REJECT or (self.verdict == ERROR and self.reject_on_error)

    def payload(self) -> bytes:
        body = asdict(self)
        del body["reject_on_error"]
        return json.dumps(body, separators=(",", ":")).encode()

    def reject_payload(self) -> bytes:
        small = {
            "frame_id": self.frame_id,
            # A PLC on a hardware trigger may count parts by the device's frame count.
            "camera_frame_id": self.camera_frame_id,
            "captured_at": self.captured_at,
            "verdict": self.verdict,
            "late": self.late,
        }
        return json.dumps(small, separators=(",", ":")).encode()


def decide(score: float, threshold: float) -> VerdictKind:
    return REJECT if score >= threshold else OK
