from __future__ import annotations

import json

from edge_agent.verdict import ERROR, REJECT, Verdict, VerdictKind

DEVICE_FRAME_ID = 41


def verdict(kind: VerdictKind, camera_frame_id: int | None) -> Verdict:
    return Verdict(
        frame_id=7,
        camera="gige0",
        captured_at=1.5,
        score=None if kind == ERROR else 0.9,
        threshold=0.5,
        verdict=kind,
        model="m",
        camera_frame_id=camera_frame_id,
    )


def test_the_payloads_carry_the_device_s_frame_id_beside_the_agent_s() -> None:
    v = verdict(REJECT, DEVICE_FRAME_ID)
    for payload in (v.payload(), v.reject_payload()):
        body = json.loads(payload)
        assert (body["frame_id"], body["camera_frame_id"]) == (7, DEVICE_FRAME_ID)


def test_a_device_without_frame_ids_gives_null() -> None:
    v = verdict(ERROR, None)
    assert json.loads(v.payload())["camera_frame_id"] is None
    assert json.loads(v.reject_payload())["camera_frame_id"] is None
    assert "reject_on_error" not in json.loads(v.payload())  # config, not payload
