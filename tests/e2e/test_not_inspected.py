"""Every part gets an answer, with real parts: the viky GenTL simulator through harvesters, a real mosquitto on a
loopback port, the MQTT publisher with its SQLite outbox. Only inference is faked.

- inference held on one frame: the frames the full queue drops reach the broker as `not_inspected` (`dropped`)
  verdicts, and as rejects;
- the agent stops fetching for a moment: viky's few buffers are overwritten, its frame counter skips, and each
  skipped id reaches the broker as a `not_inspected` (`camera_gap`) verdict, in its place among the others.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

from demo.broker import Broker
from demo.collector import Message, MqttCollector
from edge_agent.cameras.genicam import GenicamCamera
from edge_agent.config import GenicamCameraConfig
from edge_agent.frame_ids import FrameIds
from edge_agent.frames import Frame
from edge_agent.loop import InspectionLoop, LoopOptions
from edge_agent.metrics import DROPPED, Metrics
from edge_agent.run_summary import RunSummary
from edge_agent.runtimes.fake import FakeRuntime
from tests.e2e.test_resilience import GIGE, bodies, outbox_publisher, running, sample, zero
from tests.edge_agent.publish.test_mqtt import BASE
from tests.edge_agent.test_accounting import HeldRuntime
from tests.edge_agent.test_agent_metrics import parse
from tests.edge_agent.test_loop import MODEL
from tests.edge_agent.waiting import WAIT_S, wait_until

VERDICTS, REJECTS, STATS = f"{BASE}/{GIGE}/verdict", f"{BASE}/{GIGE}/reject", f"{BASE}/{GIGE}/stats"
# Frames the full queue must have dropped before inference is let go.
DROPS_WANTED = 5
# The first pause in fetching. viky keeps 3 buffers at 20 fps, so a pause past 150 ms loses frames; a loaded machine
# may run viky slower, so a pause that lost none is tried again, twice as long, until one does.
FIRST_HOLD_S = 0.5


def viky() -> GenicamCamera:
    return GenicamCamera(GIGE, GenicamCameraConfig(source="genicam", cti="viky"))


def delivered(collector: MqttCollector, summary: RunSummary) -> list[Message]:
    """Every message of the run, once the subscriber has every verdict and the final stats."""
    answered = summary.frames + sum(summary.not_inspected.values())
    wait_until(lambda: len(collector.on(VERDICTS)) >= answered, "every verdict at the subscriber")
    wait_until(lambda: bool(collector.on(STATS)), "the stats at the end of the run")
    time.sleep(0.1)  # nothing more may come: a short window can miss an extra message, never invent one
    return collector.messages


def check_one_answer_per_part(verdicts: list[dict[str, Any]], rejects: list[dict[str, Any]], grabbed: int) -> None:
    """Verdicts published == frames grabbed + camera gaps, each once, in capture order; every part not inspected
    also on the reject topic (the default)."""
    gaps = [v for v in verdicts if v["reason"] == "camera_gap"]
    assert len(verdicts) == grabbed + len(gaps)
    assert [v["frame_id"] for v in verdicts] == list(range(1, len(verdicts) + 1))
    missed = [v for v in verdicts if v["verdict"] == "not_inspected"]
    assert all(v["score"] is None and v["reason"] in ("dropped", "camera_gap") for v in missed)
    assert [r["frame_id"] for r in rejects if r["verdict"] == "not_inspected"] == [v["frame_id"] for v in missed]


def test_frames_dropped_behind_a_held_inference_reach_the_broker_as_not_inspected(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    grabbed = 30
    camera = viky()
    runtime = HeldRuntime()
    metrics = Metrics(MODEL.version)
    options = LoopOptions(max_frames=grabbed, queue_size=2, deadline_ms=1000.0, flush_timeout_s=WAIT_S)
    with (
        MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/{GIGE}/#") as collector,
        outbox_publisher(tmp_path, mqtt_broker.port) as publisher,
    ):
        publisher.start()
        camera.open()
        try:
            frame_ids = FrameIds(tmp_path / "frame-ids-gige0.txt")
            loop = InspectionLoop(camera, runtime, publisher, MODEL, options, metrics=metrics, frame_ids=frame_ids)
            with running(loop) as runner:
                # Counted, not timed: the camera keeps sending while inference sits on frame 1.
                wait_until(lambda: sample(metrics, DROPPED) >= DROPS_WANTED, f"{DROPS_WANTED} frames dropped")
                runtime.release.set()
                summary = runner.finish(WAIT_S)
        finally:
            runtime.release.set()
            camera.close()
        assert summary.delivered
        messages = delivered(collector, summary)

    verdicts, rejects = bodies(messages, VERDICTS), bodies(messages, REJECTS)
    check_one_answer_per_part(verdicts, rejects, grabbed)
    dropped = [v for v in verdicts if v["reason"] == "dropped"]
    assert len(dropped) == summary.dropped >= DROPS_WANTED
    # Each names the frame it stands for: viky's own id and the capture time, as the frame itself would have.
    assert all(isinstance(v["camera_frame_id"], int) and v["captured_at"] > 0 for v in dropped)
    assert bodies(messages, STATS)[-1]["counters"]["not_inspected_dropped"] == summary.dropped
    samples = parse(metrics.render())
    assert samples["edge_agent_not_inspected_total", (("camera", GIGE), ("reason", "dropped"))] == summary.dropped


class PausingCamera(GenicamCamera):
    """The real viky camera, whose fetching the test can pause: the producer's buffers then fill and are
    overwritten, as when a real camera's transport loses frames. Records the device's frame ids as grabbed."""

    def __init__(self) -> None:
        super().__init__(GIGE, GenicamCameraConfig(source="genicam", cti="viky"))
        self.fetching = threading.Event()
        self.fetching.set()
        self.device_ids: list[int | None] = []

    def grab(self, timeout_s: float) -> Frame | None:
        self.fetching.wait(WAIT_S)  # bounded: a test failing while it pauses must not hang the loop
        frame = super().grab(timeout_s)
        if frame is not None:
            self.device_ids.append(frame.camera_frame_id)
        return frame


def skipped(device_ids: list[int | None]) -> list[int]:
    """The ids the device skipped between two grabbed frames."""
    ids = [i for i in device_ids if i is not None]
    return [missing for a, b in itertools.pairwise(ids) for missing in range(a + 1, b)]


def test_frames_the_camera_skipped_reach_the_broker_as_not_inspected_in_their_place(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    camera = PausingCamera()
    options = LoopOptions(deadline_ms=1000.0, flush_timeout_s=WAIT_S)
    with (
        MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/{GIGE}/#") as collector,
        outbox_publisher(tmp_path, mqtt_broker.port) as publisher,
    ):
        publisher.start()
        camera.open()
        try:
            frame_ids = FrameIds(tmp_path / "frame-ids-gige0.txt")
            loop = InspectionLoop(camera, FakeRuntime(zero), publisher, MODEL, options, frame_ids=frame_ids)
            with running(loop) as runner:
                wait_until(lambda: len(camera.device_ids) >= 5, "5 frames from viky")
                hold_s = FIRST_HOLD_S
                deadline = time.monotonic() + WAIT_S
                while not skipped(camera.device_ids):
                    assert time.monotonic() < deadline, "viky's frame counter never skipped"
                    camera.fetching.clear()
                    time.sleep(hold_s)  # what it does to viky is checked below, not assumed
                    seen = len(camera.device_ids)
                    camera.fetching.set()
                    # Past the buffers viky kept: the next frame it grabs is one it sent after the pause.
                    wait_until(lambda n=seen: len(camera.device_ids) >= n + 5, "5 frames after the pause")
                    hold_s *= 2
                runner.stop.set()
                summary = runner.finish(WAIT_S)
        finally:
            camera.fetching.set()
            camera.close()
        assert summary.delivered
        messages = delivered(collector, summary)

    verdicts, rejects = bodies(messages, VERDICTS), bodies(messages, REJECTS)
    check_one_answer_per_part(verdicts, rejects, len(camera.device_ids))
    gaps = [v for v in verdicts if v["reason"] == "camera_gap"]
    assert [v["camera_frame_id"] for v in gaps] == skipped(camera.device_ids)
    assert len(gaps) == summary.not_inspected["camera_gap"] > 0
    # In their place: the device's ids, read along the verdicts, count up by one (viky never restarted here).
    device_order = [v["camera_frame_id"] for v in verdicts]
    assert device_order == list(range(device_order[0], device_order[0] + len(verdicts)))
