"""Verdicts to feed the PLC outputs in tests."""

from __future__ import annotations

from edge_agent.verdict import REJECT, Verdict, VerdictKind

CAMERA = "cam0"
CAPTURED_AT = 1767268800.125  # 2026-01-01 12:00:00.125 UTC


def verdict(
    frame_id: int = 1,
    kind: VerdictKind = REJECT,
    score: float | None = 0.63,
    camera_frame_id: int | None = 7731,
    **fields: object,
) -> Verdict:
    values: dict[str, object] = {
        "frame_id": frame_id,
        "camera": CAMERA,
        "captured_at": CAPTURED_AT,
        "score": score,
        "threshold": 0.42,
        "verdict": kind,
        "model": "press2-v3",
        "camera_frame_id": camera_frame_id,
        **fields,
    }
    return Verdict(**values)  # type: ignore[arg-type]
