from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.archive import Archive
from edge_agent.cameras.folder import FolderCamera
from edge_agent.config import FolderCameraConfig
from edge_agent.errors import CameraError, EndOfStream
from edge_agent.frame_queue import FrameQueue
from edge_agent.frames import NO_IMAGE, Frame
from edge_agent.geometry import Geometry
from edge_agent.loop import InspectionLoop, LoopOptions
from edge_agent.metrics import Metrics
from edge_agent.model import ModelInfo
from edge_agent.publish.fake import FakePublisher
from edge_agent.runtimes.base import Inference
from edge_agent.runtimes.fake import FakeRuntime
from edge_agent.verdict import Verdict
from tests.edge_agent.test_agent_metrics import parse
from tests.edge_agent.waiting import WAIT_S, wait_for_event, wait_until

MODEL = ModelInfo(version="test-1", threshold=100.0, score_scale=100.0, geometry=Geometry(height=16, width=16))


def brightness(image: np.ndarray) -> float:
    return float(image.mean())


def replay(tmp_path: Path, levels: list[int], **kwargs: object) -> FolderCamera:
    for i, level in enumerate(levels):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((20, 30), level, np.uint8))
    camera = FolderCamera("cam0", FolderCameraConfig(source="folder", path=tmp_path, **kwargs))
    camera.open()
    return camera


def test_replay_gives_one_verdict_per_image_in_order(tmp_path: Path) -> None:
    camera = replay(tmp_path, [10, 200, 30, 250])
    publisher = FakePublisher()
    archive = Archive(tmp_path / "archive")
    summary = InspectionLoop(camera, FakeRuntime(brightness), publisher, MODEL, LoopOptions(), archive).run(
        threading.Event()
    )
    archive.close()
    assert [v.verdict for v in publisher.verdicts] == ["ok", "reject", "ok", "reject"]
    assert [v.source for v in publisher.verdicts] == ["000.png", "001.png", "002.png", "003.png"]
    assert all(v.model == "test-1" and v.threshold == 100.0 for v in publisher.verdicts)
    assert summary.counts == {"ok": 2, "reject": 2, "error": 0}
    assert summary.delivered
    assert archive.saved == 2
    assert len(list((tmp_path / "archive").rglob("*_reject_heatmap.png"))) == 2


def test_runtime_failure_is_a_fail_safe_error_verdict(tmp_path: Path) -> None:
    def explode(image: np.ndarray) -> float:
        if image.mean() > 100:
            raise RuntimeError("inference request failed")
        return 1.0

    publisher = FakePublisher()
    camera = replay(tmp_path, [10, 200, 10])
    summary = InspectionLoop(camera, FakeRuntime(explode), publisher, MODEL, LoopOptions()).run(threading.Event())
    error = publisher.verdicts[1]
    assert (error.verdict, error.score, error.is_reject) == ("error", None, True)
    assert "inference request failed" in (error.error or "")
    assert summary.counts["error"] == 1 and summary.frames == 3


def test_error_is_not_a_reject_when_configured(tmp_path: Path) -> None:
    publisher = FakePublisher()
    runtime = FakeRuntime(lambda image: 1 / 0)
    options = LoopOptions(error_is_reject=False)
    InspectionLoop(replay(tmp_path, [1]), runtime, publisher, MODEL, options).run(threading.Event())
    assert publisher.verdicts[0].verdict == "error" and not publisher.verdicts[0].is_reject


def test_max_frames_with_looping_replay(tmp_path: Path) -> None:
    publisher = FakePublisher()
    camera = replay(tmp_path, [1, 2, 3], loop=True)
    summary = InspectionLoop(camera, FakeRuntime(brightness), publisher, MODEL, LoopOptions(max_frames=7)).run(
        threading.Event()
    )
    assert summary.frames == 7
    assert [v.frame_id for v in publisher.verdicts] == list(range(1, 8))


class StopAfter(FakePublisher):
    """Sets `stop` once `count` verdicts were published: the stop comes mid-run, whatever the machine's speed."""

    def __init__(self, count: int, stop: threading.Event) -> None:
        super().__init__()
        self._count = count
        self._stop = stop

    def publish(self, verdict: Verdict) -> None:
        super().publish(verdict)
        if len(self.verdicts) >= self._count:
            self._stop.set()


def test_stop_event_ends_a_live_run_and_delivers_in_flight_frames(tmp_path: Path) -> None:
    stop = threading.Event()
    publisher = StopAfter(6, stop)
    camera = replay(tmp_path, [1, 2, 3], loop=True, fps=200)
    loop = InspectionLoop(camera, FakeRuntime(brightness), publisher, MODEL, LoopOptions())
    summary = loop.run(stop)
    assert summary.frames > 5
    assert summary.frames == len(publisher.verdicts)
    assert publisher.flush_calls == [LoopOptions().flush_timeout_s]


class SlowRuntime:
    def infer(self, image: np.ndarray) -> Inference:
        time.sleep(0.02)  # stands for inference time
        return Inference(np.zeros(image.shape[:2], np.float32), 0.0)


class FastCamera:
    """A live camera that produces frames much faster than inference."""

    name = "fast"
    live = True

    def __init__(self, frames: int) -> None:
        self.left = frames

    def open(self) -> None: ...

    def close(self) -> None: ...

    def grab(self, timeout_s: float) -> Frame | None:
        if self.left == 0:
            raise EndOfStream
        self.left -= 1
        time.sleep(0.001)  # a camera's frame interval; a busy machine only makes it longer
        return Frame(np.zeros((16, 16, 3), np.uint8), 100 - self.left, time.time(), time.monotonic())


class StuckRuntime:
    """Inference that takes as long as the camera needs to send all its frames: held on its first frame until
    `release` is set, so how many frames the loop judges no longer depends on the machine's speed."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def infer(self, image: np.ndarray) -> Inference:
        self.entered.set()
        wait_for_event(self.release, "the camera to send its last frame")
        return Inference(np.zeros(image.shape[:2], np.float32), 0.0)


class CameraOutrunningInference(FastCamera):
    """Frame 1, then (once inference is busy with it) the rest without waiting, then releases inference."""

    def __init__(self, frames: int, runtime: StuckRuntime) -> None:
        super().__init__(frames)
        self._frames = frames
        self._runtime = runtime

    def grab(self, timeout_s: float) -> Frame | None:
        if self.left == self._frames - 1:  # frame 1 given: the next ones come while inference holds it
            wait_for_event(self._runtime.entered, "inference to start on frame 1")
        if self.left == 0:
            self._runtime.release.set()
        return super().grab(timeout_s)


def test_live_camera_is_never_blocked_and_drops_are_counted() -> None:
    frames, queue_size = 100, 2
    publisher = FakePublisher()
    runtime = StuckRuntime()
    options = LoopOptions(queue_size=queue_size, deadline_ms=5)
    camera = CameraOutrunningInference(frames, runtime)
    summary = InspectionLoop(camera, runtime, publisher, MODEL, options).run(threading.Event())
    # The camera sent all its frames while inference sat on frame 1: it was never blocked. Of the 99 frames sent
    # meanwhile only the newest `queue_size` were kept; every other one was dropped and counted, and answered.
    assert summary.frames == 1 + queue_size and summary.dropped == frames - 1 - queue_size
    judged = [v.frame_id for v in publisher.verdicts if v.verdict != "not_inspected"]
    assert judged == [1, frames - 1, frames]
    assert [v.frame_id for v in publisher.verdicts] == list(range(1, frames + 1))  # one each, in capture order
    assert summary.not_inspected["dropped"] == summary.dropped
    # Frame 1 waited for the other 99 frames (a millisecond each, at least): far past its 5 ms deadline.
    assert summary.late > 0 and publisher.verdicts[0].late


class FlakyCamera(FastCamera):
    def __init__(self) -> None:
        super().__init__(3)
        self.failed = False
        self.reopened = 0

    def open(self) -> None:
        self.reopened += 1

    def grab(self, timeout_s: float) -> Frame | None:
        if not self.failed:
            self.failed = True
            raise CameraError("device unplugged")
        return super().grab(timeout_s)


def test_camera_failure_reconnects_instead_of_exiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge_agent.acquisition.RECONNECT_BACKOFF_S", (0.01,))
    camera = FlakyCamera()
    publisher = FakePublisher()
    summary = InspectionLoop(camera, SlowRuntime(), publisher, MODEL, LoopOptions()).run(threading.Event())
    assert summary.camera_errors == 1 and camera.reopened == 1
    assert summary.frames == 3
    assert publisher.events == [
        ("fast", "camera_lost", {"reason": "device unplugged"}),
        ("fast", "camera_reconnected", {"after_failures": 1}),
    ]


def test_frame_queue_blocking_mode_never_drops() -> None:
    q: FrameQueue[int, str] = FrameQueue(2, drop_oldest=False, shrink=str)
    got: list[int] = []

    def consume() -> None:
        # Until closed and drained: a get that times out (the producer is slow on a busy machine) is no end.
        while not q.finished:
            item = q.get(1.0)
            if item is not None:
                got.append(item)
                time.sleep(0.001)  # a slow consumer, so the producer must wait for room

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(50):
        q.put(i)
    q.close()
    consumer.join()
    assert got == list(range(50)) and q.dropped == 0


def test_folder_camera_skips_unreadable_files(tmp_path: Path) -> None:
    camera = replay(tmp_path, [1, 2])
    (tmp_path / "001a.png").write_bytes(b"garbage")
    camera.open()
    frames = [camera.grab(1.0), camera.grab(1.0)]
    with pytest.raises(EndOfStream):
        camera.grab(1.0)
    assert [f.source for f in frames if f] == ["000.png", "001.png"]
    assert camera.unreadable == 1


def test_folder_camera_paces_at_fps(tmp_path: Path) -> None:
    camera = replay(tmp_path, [1] * 6, fps=50)
    start = time.monotonic()
    for _ in range(6):
        assert camera.grab(1.0) is not None
    assert time.monotonic() - start >= 5 / 50 * 0.9


def test_folder_camera_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="does not exist"):
        FolderCamera("c", FolderCameraConfig(source="folder", path=tmp_path / "nope")).open()
    with pytest.raises(CameraError, match="no images"):
        FolderCamera("c", FolderCameraConfig(source="folder", path=tmp_path)).open()


class SilentCamera(FastCamera):
    """Open, but never delivers a frame: a camera that hung or lost its link. Sets `stop` at its `reopens`-th
    reopen, so the loop has declared it lost that many times, however long each took on a busy machine."""

    def __init__(self, reopens: int, stop: threading.Event) -> None:
        super().__init__(0)
        self.reopened = 0
        self._reopens = reopens
        self._stop = stop

    def open(self) -> None:
        self.reopened += 1
        if self.reopened >= self._reopens:
            self._stop.set()

    def grab(self, timeout_s: float) -> Frame | None:
        time.sleep(timeout_s)  # waits its whole timeout for a frame that never comes
        return None


def test_no_frame_within_the_timeout_counts_as_a_camera_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("edge_agent.acquisition.RECONNECT_BACKOFF_S", (0.01,))
    stop = threading.Event()
    camera = SilentCamera(2, stop)
    options = LoopOptions(grab_timeout_s=0.02, frame_timeout_s=0.1)
    publisher = FakePublisher()
    summary = InspectionLoop(camera, SlowRuntime(), publisher, MODEL, options).run(stop)
    assert summary.camera_errors >= 2 and camera.reopened == summary.camera_errors
    assert summary.frames == 0
    # One outage, however many silent reopens: lost once, and never "reconnected" without a frame.
    assert [event for _, event, _ in publisher.events] == ["camera_lost"]


class IdleAfterOneFrame(FastCamera):
    """One frame, then a camera waiting for a trigger that never comes (grab returns None). Counts those idle
    grabs, so the test can wait for a number of them rather than for a time."""

    def __init__(self) -> None:
        super().__init__(1)
        self.idle_grabs = 0

    def grab(self, timeout_s: float) -> Frame | None:
        if self.left == 0:
            time.sleep(0.005)  # a trigger wait, returning empty-handed
            self.idle_grabs += 1
            return None
        return super().grab(timeout_s)


class HangingRuntime:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def infer(self, image: np.ndarray) -> Inference:
        self.entered.set()
        wait_for_event(self.release, "the test to release inference")
        return Inference(np.zeros(image.shape[:2], np.float32), 0.0)


class CountingWatchdog:
    def __init__(self) -> None:
        self.feeds = 0

    def feed(self) -> None:
        self.feeds += 1


def test_idle_liveness_tick_does_not_feed_the_watchdog_while_inference_hangs() -> None:
    runtime, watchdog, stop = HangingRuntime(), CountingWatchdog(), threading.Event()
    camera = IdleAfterOneFrame()
    loop = InspectionLoop(camera, runtime, FakePublisher(), MODEL, LoopOptions(), watchdog=watchdog)
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    assert runtime.entered.wait(WAIT_S)
    # An idle tick that looked just before inference took the frame may still feed: count from the grab after it.
    settled = camera.idle_grabs + 1
    wait_until(lambda: camera.idle_grabs >= settled, "an idle grab while inference hangs")
    hung_from = watchdog.feeds
    # Counted in idle grabs, not in seconds: each of them had its chance to feed the watchdog, and none may.
    wait_until(lambda: camera.idle_grabs >= settled + 20, "20 idle grabs while inference hangs")
    assert watchdog.feeds == hung_from
    runtime.release.set()
    # The frame completes (one feed), then idle ticks feed again.
    wait_until(lambda: watchdog.feeds > hung_from + 1, "the watchdog fed again after inference came back")
    stop.set()
    thread.join(WAIT_S)
    assert not thread.is_alive()


# --- frames of another size, and frames that are no picture --------------------------------------


class ScriptedCamera:
    """Hands over the given frames, then ends like a replay."""

    name = "cam0"
    live = False

    def __init__(self, images: list[np.ndarray | Frame]) -> None:
        self._frames = [
            item if isinstance(item, Frame) else Frame(item, i + 1, time.time(), time.monotonic(), source=f"{i + 1}")
            for i, item in enumerate(images)
        ]

    def open(self) -> None: ...

    def close(self) -> None: ...

    def grab(self, timeout_s: float) -> Frame | None:
        if not self._frames:
            raise EndOfStream
        return self._frames.pop(0)


class RecordingRuntime:
    """Keeps the shape of every model input, scores everything 0."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def infer(self, image: np.ndarray) -> Inference:
        self.shapes.append(image.shape)
        return Inference(np.zeros(image.shape[:2], np.float32), 0.0)


def test_frames_of_another_size_or_format_are_converted_to_the_model_input() -> None:
    images: list[np.ndarray | Frame] = [
        np.zeros((20, 30), np.uint8),  # mono, wider than the model
        np.zeros((480, 640, 3), np.uint8),
        np.zeros((7, 5, 4), np.uint8),  # RGBA, smaller than the model
        np.zeros((16, 16, 1), np.uint16),  # 16-bit mono with a channel axis
    ]
    runtime = RecordingRuntime()
    publisher = FakePublisher()
    summary = InspectionLoop(ScriptedCamera(images), runtime, publisher, MODEL, LoopOptions()).run(threading.Event())
    assert [v.verdict for v in publisher.verdicts] == ["ok"] * 4
    assert runtime.shapes == [(16, 16, 3)] * 4
    assert summary.counts["error"] == 0


def test_the_verdict_carries_the_device_s_frame_id() -> None:
    image = np.zeros((16, 16, 3), np.uint8)
    frames: list[np.ndarray | Frame] = [
        Frame(image, 1, time.time(), time.monotonic(), camera_frame_id=41),
        Frame(image, 2, time.time(), time.monotonic()),  # a device without frame ids
    ]
    publisher = FakePublisher()
    InspectionLoop(ScriptedCamera(frames), RecordingRuntime(), publisher, MODEL, LoopOptions()).run(threading.Event())
    assert [(v.frame_id, v.camera_frame_id) for v in publisher.verdicts] == [(1, 41), (2, None)]


BAD_FRAMES: list[tuple[np.ndarray | Frame, str]] = [
    (
        Frame(NO_IMAGE, 2, time.time(), time.monotonic(), source="dev0", error="bad buffer from device dev0: short"),
        "bad buffer from device dev0: short",
    ),
    (np.zeros((16, 16), np.float32), "float32 pixels"),
    (np.zeros(256, np.uint8), "shape (256,)"),
    (np.zeros((16, 16, 2), np.uint8), "shape (16, 16, 2)"),
    (np.zeros((0, 16, 3), np.uint8), "empty (0 x 16)"),
]


def test_a_frame_that_is_no_picture_is_an_error_verdict_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = np.zeros((16, 16, 3), np.uint8)
    bad: list[np.ndarray | Frame] = [frame for frame, _ in BAD_FRAMES]
    camera = ScriptedCamera([good, *bad, good])
    publisher = FakePublisher()
    metrics = Metrics(MODEL.version)
    archive = Archive(tmp_path / "archive")
    runtime = FakeRuntime(brightness)
    loop = InspectionLoop(camera, runtime, publisher, MODEL, LoopOptions(), archive, metrics)
    with caplog.at_level(logging.INFO, logger="edge_agent.loop"):
        summary = loop.run(threading.Event())
    archive.close()

    verdicts = publisher.verdicts
    assert [v.verdict for v in verdicts] == ["ok", *["error"] * len(BAD_FRAMES), "ok"]  # and the loop went on
    assert runtime.calls == 2  # a frame that is no picture never reaches the model
    for verdict, (_, problem) in zip(verdicts[1:-1], BAD_FRAMES, strict=True):
        assert verdict.is_reject and verdict.score is None  # the PLC ejects a part that could not be judged
        assert problem in (verdict.error or "")
    assert summary.counts["error"] == len(BAD_FRAMES) and summary.camera_errors == 0
    assert parse(metrics.render())["edge_agent_errors_total", (("camera", "cam0"),)] == len(BAD_FRAMES)
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == len(BAD_FRAMES)  # one line per bad frame ...
    for record, (_, problem) in zip(errors, BAD_FRAMES, strict=True):
        assert problem in record.getMessage()  # ... that says what was wrong with it
    assert archive.failed == 0  # nothing to save for a frame without a picture, and no failed attempt


def test_a_frame_the_model_failed_on_is_archived_as_8_bit_rgb(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive")
    camera = ScriptedCamera([np.full((20, 30), 40_000, np.uint16)])  # 16-bit mono, as from a 16-bit PNG
    InspectionLoop(camera, FakeRuntime(lambda image: 1 / 0), FakePublisher(), MODEL, LoopOptions(), archive).run(
        threading.Event()
    )
    archive.close()
    assert (archive.saved, archive.failed) == (1, 0)
    (saved,) = (tmp_path / "archive").rglob("*_error.png")
    image = cv2.imread(str(saved), cv2.IMREAD_UNCHANGED)
    assert image is not None
    assert image.dtype == np.uint8 and image.shape == (20, 30, 3)  # like every other archived image
    assert int(image[0, 0, 0]) == 40_000 >> 8


def test_a_camera_sending_only_bad_buffers_is_one_error_line_not_one_per_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    frames: list[np.ndarray | Frame] = [
        Frame(NO_IMAGE, i, time.time(), time.monotonic(), error=f"bad buffer from device dev0: holds {i * 7} values")
        for i in range(1, 31)
    ]
    publisher = FakePublisher()
    loop = InspectionLoop(ScriptedCamera(frames), RecordingRuntime(), publisher, MODEL, LoopOptions())
    with caplog.at_level(logging.DEBUG, logger="edge_agent.loop"):
        summary = loop.run(threading.Event())
    assert [v.verdict for v in publisher.verdicts] == ["error"] * 30 and summary.counts["error"] == 30
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and "holds 7 values" in errors[0]  # the sizes differ, the fault is the same
    held_back = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG and "ERROR" in r.getMessage()]
    assert len(held_back) == 29  # still there for whoever turns on debug logging
