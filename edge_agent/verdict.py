from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

VerdictKind = Literal["ok", "reject", "error", "not_inspected"]
OK: VerdictKind = "ok"
REJECT: VerdictKind = "reject"
ERROR: VerdictKind = "error"
# A part that passed the camera without a model verdict (dropped, paused, skipped by the camera): the line still
# gets an answer for it, so a PLC counting parts never waits for one that will not come.
NOT_INSPECTED: VerdictKind = "not_inspected"

# Why a part was not inspected: the `reason` of a `not_inspected` verdict.
NotInspectedReason = Literal["dropped", "paused", "camera_gap"]
REASON_DROPPED: NotInspectedReason = "dropped"  # it waited in a full queue and a newer frame took its place
REASON_PAUSED: NotInspectedReason = "paused"  # inspection was paused by a command
REASON_CAMERA_GAP: NotInspectedReason = "camera_gap"  # the device's frame counter skipped it: never delivered
NOT_INSPECTED_REASONS: tuple[NotInspectedReason, ...] = (REASON_DROPPED, REASON_PAUSED, REASON_CAMERA_GAP)


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
    reason: NotInspectedReason | None = None  # set on `not_inspected` verdicts only
    reject_on_error: bool = True  # config, not payload
    reject_on_not_inspected: bool = True  # config, not payload

    @property
    def is_reject(self) -> bool:
        """By default errors and parts not inspected count as rejects: the PLC ejects a part we did not judge
        (fail-safe)."""
        return (
            self.verdict == REJECT
            or (self.verdict == ERROR and self.reject_on_error)
            or (self.verdict == NOT_INSPECTED and self.reject_on_not_inspected)
        )

    def payload(self) -> bytes:
        body = asdict(self)
        del body["reject_on_error"], body["reject_on_not_inspected"]
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
