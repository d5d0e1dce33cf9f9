"""Every part gets an answer: `not_inspected` verdicts for dropped frames, frames judged while paused and frames the
camera's own counter skipped, with the fake camera, runtime and publisher (no timing decides any result here)."""

from __future__ import annotations

import json
import threading
import time
from itertools import count
from pathlib import Path

import numpy as np
import pytest

from edge_agent.accounting import MAX_GAP_VERDICTS, Accounting, Missed, dropped
from edge_agent.errors import CameraError, EndOfStream
from edge_agent.frame_ids import FrameIds
from edge_agent.frames import NO_IMAGE, Frame
from edge_agent.loop import InspectionLoop, LoopOptions
from edge_agent.metrics import Metrics
from edge_agent.publish.fake import FakePublisher
from edge_agent.run_summary import RunSummary
from edge_agent.runtimes.base import Inference
from edge_agent.runtimes.fake import FakeRuntime
from tests.edge_agent.test_agent_metrics import parse
from tests.edge_agent.test_loop import MODEL, CountingWatchdog, brightness
from tests.edge_agent.waiting import wait_for_event

CAMERA = "cam0"
OK_LEVEL, REJECT_LEVEL = 10, 200  # against MODEL's threshold of 100, with a runtime scoring the mean brightness
VERDICT_KEYS = {
    "frame_id",
    "camera",
    "captured_at",
    "published_at",
    "latency_ms",
    "score",
    "threshold",
    "verdict",
    "model",
    "regions",
    "late",
    "error",
    "source",
    "camera_frame_id",
    "reason",
}


def frame(frame_id: int, camera_frame_id: int | None, level: int | None = OK_LEVEL, source: str = "dev0") -> Frame:
    """A frame of flat brightness `level`; None gives a buffer that is no picture (an `error` verdict)."""
    if level is None:
        return Frame(
            NO_IMAGE,
            frame_id,
            time.time(),
            time.monotonic(),
            source=source,
            error="bad buffer: short",
            camera_frame_id=camera_frame_id,
        )
    image = np.full((16, 16, 3), level, np.uint8)
    return Frame(image, frame_id, time.time(), time.monotonic(), source=source, camera_frame_id=camera_frame_id)


def accounting(
    publisher: FakePublisher | None = None,
    options: LoopOptions | None = None,
    metrics: Metrics | None = None,
    events: list[tuple[str, dict[str, object]]] | None = None,
    max_gap_verdicts: int = MAX_GAP_VERDICTS,
) -> Accounting:
    sink = None if events is None else (lambda event, details: events.append((event, details)))
    return Accounting(
        CAMERA,
        FakePublisher() if publisher is None else publisher,
        RunSummary(),
        LoopOptions() if options is None else options,
        metrics,
        sink,
        max_gap_verdicts,
    )


def camera_ids(notes: list[Missed]) -> list[int | None]:
    return [n.camera_frame_id for n in notes]


# -- gaps in the camera's counter --------------------------------------------------------------------------------


def test_a_gap_in_the_device_counter_gives_one_note_per_missing_id_numbered_before_the_later_frame() -> None:
    gaps = accounting()
    ids = count(100)
    assert gaps.gap_notes(frame(1, 41), ids.__next__) == []  # the first frame: nothing to compare with
    assert gaps.gap_notes(frame(2, 42), ids.__next__) == []
    later = frame(3, 46)
    notes = gaps.gap_notes(later, ids.__next__)
    assert camera_ids(notes) == [43, 44, 45]
    assert [n.frame_id for n in notes] == [100, 101, 102]  # from the agent's counter, before the frame takes its id
    assert next(ids) == 103
    assert {(n.reason, n.captured_at, n.captured_mono, n.source) for n in notes} == {
        ("camera_gap", later.captured_at, later.captured_mono, "dev0")
    }


def test_a_counter_that_stays_or_goes_backwards_is_a_reset_not_a_gap() -> None:
    gaps = accounting()
    for camera_frame_id in (65_534, 65_535, 1, 2, 2, 0, 1):  # a 16-bit counter wrapping, a repeat, a restart at 0
        assert gaps.gap_notes(frame(1, camera_frame_id), None) == []
    assert camera_ids(gaps.gap_notes(frame(9, 3), None)) == [2]  # counting goes on from the new value


def test_without_the_agent_s_counter_a_gap_note_takes_the_later_frame_s_id() -> None:
    gaps = accounting()
    gaps.gap_notes(frame(7, 1), None)
    assert [n.frame_id for n in gaps.gap_notes(frame(8, 3), None)] == [8]


def test_a_device_without_frame_ids_has_no_gaps() -> None:
    gaps = accounting()
    for i in range(1, 4):
        assert gaps.gap_notes(frame(i, None), None) == []
    assert gaps.gap_notes(frame(4, 10), None) == []  # ids appearing after none: nothing to compare with


def test_a_reopened_camera_counts_afresh_without_a_gap() -> None:
    gaps = accounting()
    gaps.gap_notes(frame(1, 3), None)
    gaps.camera_reopened()
    assert gaps.gap_notes(frame(2, 9), None) == []


def test_a_gap_past_the_cap_answers_the_nearest_ids_and_counts_and_reports_the_rest() -> None:
    events: list[tuple[str, dict[str, object]]] = []
    gaps = accounting(events=events, max_gap_verdicts=3)
    gaps.gap_notes(frame(1, 10), None)
    notes = gaps.gap_notes(frame(2, 21), None)
    assert camera_ids(notes) == [18, 19, 20]
    assert gaps.gap_overflow == 7
    assert events == [
        (
            "camera_gap_capped",
            {"missing": 10, "answered": 3, "camera_frame_id_before": 10, "camera_frame_id": 21},
        )
    ]


# -- the verdict --------------------------------------------------------------------------------------------------


def test_a_not_inspected_verdict_has_the_design_payload_a_reason_no_score_and_is_a_reject_by_default() -> None:
    publisher, metrics = FakePublisher(), Metrics(MODEL.version)
    books = accounting(publisher, LoopOptions(deadline_ms=50), metrics)
    old = frame(17, 41)
    missed = dropped(Frame(old.image, 17, old.captured_at, time.monotonic() - 1.0, camera_frame_id=41, source="d"))
    verdict = books.answer(missed, MODEL)
    assert publisher.verdicts == [verdict]
    body = json.loads(verdict.payload())
    assert set(body) == VERDICT_KEYS
    assert (body["verdict"], body["reason"], body["score"]) == ("not_inspected", "dropped", None)
    assert (body["frame_id"], body["camera_frame_id"], body["captured_at"]) == (17, 41, old.captured_at)
    assert (body["camera"], body["model"], body["threshold"], body["source"]) == (CAMERA, "test-1", 100.0, "d")
    assert body["late"] is True  # captured a second ago, past the 50 ms deadline: the PLC may drop the reject
    assert verdict.is_reject
    reject = json.loads(verdict.reject_payload())
    assert reject == {
        "frame_id": 17,
        "camera_frame_id": 41,
        "captured_at": old.captured_at,
        "verdict": "not_inspected",
        "late": True,
    }
    assert books.summary.not_inspected == {"dropped": 1, "paused": 0, "camera_gap": 0}
    samples = parse(metrics.render())
    assert samples["edge_agent_not_inspected_total", (("camera", CAMERA), ("reason", "dropped"))] == 1
    assert samples["edge_agent_not_inspected_total", (("camera", CAMERA), ("reason", "paused"))] == 0  # from the start
    assert samples["edge_agent_frames_total", (("camera", CAMERA),)] == 0  # not inspected is not a frame judged


def test_not_inspected_is_not_a_reject_when_configured() -> None:
    publisher = FakePublisher()
    books = accounting(publisher, LoopOptions(not_inspected_is_reject=False))
    books.answer(dropped(frame(1, None)), MODEL)
    assert publisher.verdicts[0].verdict == "not_inspected" and publisher.rejects == []


# -- through the loop: every grabbed frame and every camera gap gets exactly one verdict ----------------------------


class HeldRuntime:
    """Scores the mean brightness, but holds its first frame until `release` is set: the camera then sends all its
    frames while inference is busy, so which frames the full queue drops depends on no machine's speed."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def infer(self, image: np.ndarray) -> Inference:
        self.calls += 1
        self.entered.set()
        wait_for_event(self.release, "the camera to send its last frame")
        return Inference(np.zeros(image.shape[:2], np.float32), float(image.mean()))


class ScriptCamera:
    """Sends `frames`, raising a `CameraError` where the script has one (the loop then reopens it), then ends.
    With a `runtime`, a live camera (its queue drops the oldest frame): frame 1, then the rest once inference holds
    frame 1, then releases inference. Without one, a replay: the queue waits for room, so nothing is dropped."""

    name = CAMERA

    def __init__(self, frames: list[Frame | CameraError], runtime: HeldRuntime | None = None) -> None:
        self.live = runtime is not None
        self._script = list(frames)
        self._runtime = runtime
        self._given = 0
        self.opened = 0

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None: ...

    def grab(self, timeout_s: float) -> Frame | None:
        if self._runtime is not None and self._given == 1:
            wait_for_event(self._runtime.entered, "inference to start on frame 1")
        if not self._script:
            if self._runtime is not None:
                self._runtime.release.set()
            raise EndOfStream
        item = self._script.pop(0)
        if isinstance(item, CameraError):
            raise item
        self._given += 1
        return item


def test_every_grabbed_frame_and_every_camera_gap_gets_exactly_one_verdict_in_capture_order(tmp_path: Path) -> None:
    queue_size = 4
    # The device's own counter over 30 frames: a gap of three (11-13), a restart (20 -> 3: no gap), a gap of one (9).
    device_ids = [*range(1, 11), *range(14, 21), *range(3, 9), *range(10, 17)]
    levels: list[int | None] = [OK_LEVEL] * len(device_ids)
    # Judged: frame 1 (inference holds it while the rest come) and the newest `queue_size`, whatever their kind.
    levels[-queue_size:] = [REJECT_LEVEL, None, OK_LEVEL, REJECT_LEVEL]
    frames: list[Frame | CameraError] = [
        frame(i + 1, device_id, level) for i, (device_id, level) in enumerate(zip(device_ids, levels, strict=True))
    ]
    runtime, publisher, metrics = HeldRuntime(), FakePublisher(), Metrics(MODEL.version)
    options = LoopOptions(queue_size=queue_size)
    loop = InspectionLoop(
        ScriptCamera(frames, runtime),
        runtime,
        publisher,
        MODEL,
        options,
        metrics=metrics,
        frame_ids=FrameIds(tmp_path / "frame-ids.txt"),
    )
    summary = loop.run(threading.Event())

    grabbed, gaps = len(device_ids), 4
    verdicts = publisher.verdicts
    assert len(verdicts) == grabbed + gaps  # verdicts published == frames grabbed + camera gaps
    assert [v.frame_id for v in verdicts] == list(range(1, grabbed + gaps + 1))  # each once, in capture order
    assert [v.camera_frame_id for v in verdicts] == [*range(1, 21), *range(3, 17)]  # the gaps filled in place
    kinds = [v.reason or v.verdict for v in verdicts]
    dropped_count = grabbed - 1 - queue_size
    expected = ["ok", *["dropped"] * 9, *["camera_gap"] * 3, *["dropped"] * 13, "camera_gap", *["dropped"] * 3]
    assert kinds == [*expected, "reject", "error", "ok", "reject"]
    assert kinds.count("dropped") == dropped_count and runtime.calls == 1 + queue_size - 1  # the error is no picture
    assert all(v.score is None and v.is_reject for v in verdicts if v.verdict == "not_inspected")

    assert summary.frames == 1 + queue_size and summary.dropped == dropped_count
    assert summary.not_inspected == {"dropped": dropped_count, "paused": 0, "camera_gap": gaps}
    assert summary.missed_without_verdict == 0
    counters = publisher.stats[-1]
    assert (counters["not_inspected_dropped"], counters["not_inspected_camera_gap"]) == (dropped_count, gaps)
    assert counters["not_inspected"] == dropped_count + gaps and counters["frames"] == summary.frames
    samples = parse(metrics.render())
    for reason, expected_count in summary.not_inspected.items():
        assert samples["edge_agent_not_inspected_total", (("camera", CAMERA), ("reason", reason))] == expected_count
    assert samples["edge_agent_dropped_frames_total", (("camera", CAMERA),)] == dropped_count


def test_frames_arriving_while_paused_are_answered_paused_and_the_watchdog_is_fed() -> None:
    frames: list[Frame | CameraError] = [frame(1, 5), frame(2, 6), frame(3, 8)]
    publisher, watchdog = FakePublisher(), CountingWatchdog()
    loop = InspectionLoop(
        ScriptCamera(frames), FakeRuntime(brightness), publisher, MODEL, LoopOptions(), watchdog=watchdog
    )
    loop.pause()
    summary = loop.run(threading.Event())
    assert [(v.frame_id, v.camera_frame_id, v.reason) for v in publisher.verdicts] == [
        (1, 5, "paused"),
        (2, 6, "paused"),
        (3, 7, "camera_gap"),  # without the agent's counter: the later frame's id
        (3, 8, "paused"),
    ]
    assert publisher.rejects == publisher.verdicts  # the PLC ejects what nobody judged
    assert summary.paused == 3 and summary.frames == 0
    assert summary.not_inspected == {"dropped": 0, "paused": 3, "camera_gap": 1}
    assert watchdog.feeds == 3  # paused on purpose is not hung


def test_a_camera_counter_restarting_after_a_reconnect_is_no_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge_agent.acquisition.RECONNECT_BACKOFF_S", (0.0,))
    # Before the loss the device had reached 3; reopened, it counts from 7 (it sent frames nobody grabbed, or
    # another counter altogether): the agent cannot tell how many parts passed, so it invents none.
    frames: list[Frame | CameraError] = [frame(1, 1), frame(2, 2), frame(3, 3), CameraError("unplugged")]
    frames += [frame(4, 7), frame(5, 8)]
    publisher = FakePublisher()
    camera = ScriptCamera(frames)
    summary = InspectionLoop(camera, FakeRuntime(brightness), publisher, MODEL, LoopOptions()).run(threading.Event())
    assert camera.opened == 1 and summary.camera_errors == 1
    assert [v.verdict for v in publisher.verdicts] == ["ok"] * 5
    assert summary.not_inspected["camera_gap"] == 0


def test_a_counter_jump_past_the_cap_publishes_the_cap_and_counts_and_reports_the_rest() -> None:
    jump = MAX_GAP_VERDICTS + 500
    frames: list[Frame | CameraError] = [frame(1, 1), frame(2, 2 + jump)]
    publisher, metrics = FakePublisher(), Metrics(MODEL.version)
    loop = InspectionLoop(
        ScriptCamera(frames), FakeRuntime(brightness), publisher, MODEL, LoopOptions(), metrics=metrics
    )
    summary = loop.run(threading.Event())
    gap = [v for v in publisher.verdicts if v.verdict == "not_inspected"]
    assert len(gap) == MAX_GAP_VERDICTS
    assert [v.camera_frame_id for v in gap] == list(range(2 + jump - MAX_GAP_VERDICTS, 2 + jump))
    assert summary.missed_without_verdict == jump - MAX_GAP_VERDICTS
    assert publisher.stats[-1]["missed_without_verdict"] == jump - MAX_GAP_VERDICTS
    samples = parse(metrics.render())
    assert samples["edge_agent_missed_without_verdict_total", (("camera", CAMERA),)] == jump - MAX_GAP_VERDICTS
    assert [(event, details["missing"]) for _, event, details in publisher.events] == [("camera_gap_capped", jump)]
