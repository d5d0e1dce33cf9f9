"""The inspection loop when things around it fail, with real parts: the viky GenTL simulator through harvesters, a
real mosquitto on a loopback port, the MQTT publisher with its SQLite outbox. Only inference is faked (the point
here is what happens around it).

- the camera dies mid-run: `camera_lost`, reconnect, `camera_reconnected`, verdicts again, the loop never exits;
- inference slower than the camera: the oldest frames are dropped, counted and answered `not_inspected`, every frame
  is published once;
- the broker is SIGKILLed mid-run and restarted on the same port: the outbox delivers every verdict (at least once).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from demo.broker import HOST, Broker, start_mosquitto
from demo.collector import Message, MqttCollector
from edge_agent.cameras.genicam import GenicamCamera
from edge_agent.config import GenicamCameraConfig, MqttConfig
from edge_agent.frame_ids import FrameIds
from edge_agent.frames import Frame
from edge_agent.loop import InspectionLoop, LoopOptions
from edge_agent.metrics import CAMERA_CONNECTED, DROPPED, FRAMES, Metrics
from edge_agent.publish.mqtt import MqttPublisher
from edge_agent.publish.store import SqliteStore
from edge_agent.run_summary import RunSummary
from edge_agent.runtimes.fake import FakeRuntime
from tests.edge_agent.publish.test_mqtt import BASE, PREFIX, REJECT_DEADLINE_MS, STATION, frame_ids
from tests.edge_agent.test_agent_metrics import parse
from tests.edge_agent.test_loop import MODEL, brightness, replay
from tests.edge_agent.waiting import WAIT_S, wait_until

GIGE = "gige0"
# No frame for this long declares the camera lost. Far above viky's 50 ms between frames, so that a loaded machine
# stalling the acquisition thread for a moment is not taken for an unplugged camera.
FRAME_TIMEOUT_S = 3.0


# -- helpers -----------------------------------------------------------------------------------------------


def paced(score: Callable[[np.ndarray], float], seconds: float) -> Callable[[np.ndarray], float]:
    """A FakeRuntime score function that takes `seconds` per inference, like a real model would."""

    def infer(image: np.ndarray) -> float:
        time.sleep(seconds)
        return score(image)

    return infer


def zero(image: np.ndarray) -> float:
    return 0.0


class UnpluggableCamera(GenicamCamera):
    """The real viky camera; `unplug("destroy" | "stop")` breaks its harvesters image acquirer at the next grab.

    The break runs on the acquisition thread, just before the real `grab`: harvesters is not thread-safe, and tearing
    the acquirer down from the test thread while that thread is inside `try_fetch` or copying a buffer could crash
    the process instead of testing the agent. What the loop then sees is what a dead device gives it:
    `destroy` makes the next grab raise, `stop` makes the device go silent (grab returns None until the loop's
    frame timeout declares it gone).
    """

    def __init__(self) -> None:
        super().__init__(GIGE, GenicamCameraConfig(source="genicam", cti="viky"))
        self._unplug: str | None = None
        # Cleared by `unplug`: the loop's reopen then waits until the test has seen the camera reported gone, which
        # on a busy machine could otherwise come after the 1 s backoff and the reconnect.
        self._reopen_allowed = threading.Event()
        self._reopen_allowed.set()

    def unplug(self, step: str) -> None:
        self._reopen_allowed.clear()
        self._unplug = step

    def allow_reopen(self) -> None:
        self._reopen_allowed.set()

    def open(self) -> None:
        # Bounded, so that a test failing before it allows the reopen cannot hang the loop; it then just goes on.
        self._reopen_allowed.wait(WAIT_S)
        super().open()

    def grab(self, timeout_s: float) -> Frame | None:
        step, self._unplug = self._unplug, None
        if step is not None and self._acquirer is not None:
            getattr(self._acquirer, step)()
        return super().grab(timeout_s)


class LoopRunner:
    """`InspectionLoop.run` on its own thread, as the agent's main thread runs it, while the test watches."""

    def __init__(self, loop: InspectionLoop) -> None:
        self.loop = loop
        self.stop = threading.Event()
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="inspection", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.summary = self.loop.run(self.stop)
        except BaseException as exc:  # handed to the test thread by `finish`
            self.error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def finish(self, timeout_s: float) -> RunSummary:
        self.join(timeout_s)
        assert not self._thread.is_alive(), f"the loop did not return within {timeout_s} s"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


@contextmanager
def running(loop: InspectionLoop) -> Iterator[LoopRunner]:
    runner = LoopRunner(loop)
    try:
        yield runner
    finally:
        runner.stop.set()
        runner.join(WAIT_S)


@contextmanager
def outbox_publisher(
    tmp_path: Path, port: int, camera: str = GIGE, max_inflight: int = 1000
) -> Iterator[MqttPublisher]:
    """The agent's publisher on its on-disk outbox, not started; stopped (then the outbox closed) on exit."""
    config = MqttConfig(host=HOST, port=port, topic_prefix=PREFIX)
    with SqliteStore(tmp_path / "outbox" / f"outbox-{camera}.sqlite", 100_000) as store:
        publisher = MqttPublisher(
            config,
            STATION,
            MODEL.version,
            store,
            camera=camera,
            reject_deadline_ms=REJECT_DEADLINE_MS,
            max_inflight=max_inflight,
        )
        try:
            yield publisher
        finally:
            publisher.stop()


@contextmanager
def running_collector(broker: Broker, topic: str) -> Iterator[MqttCollector]:
    """A subscriber the test may stop early (stopping twice is harmless)."""
    collector = MqttCollector(broker.host, broker.port, topic).start()
    try:
        yield collector
    finally:
        collector.stop()


def sample(metrics: Metrics, name: str, camera: str = GIGE) -> float:
    return parse(metrics.render())[name, (("camera", camera),)]


def bodies(messages: list[Message], topic: str) -> list[dict[str, Any]]:
    return [json.loads(payload) for t, payload, _ in messages if t == topic]


def since(messages: list[Message], event: str) -> list[Message]:
    """The messages from the first `event` on: events and verdicts share the outbox, so they arrive in order."""
    marker = f'"event":"{event}"'.encode()
    start = next(
        (i for i, (topic, payload, _) in enumerate(messages) if topic.endswith("/event") and marker in payload), None
    )
    return [] if start is None else messages[start:]


def mosquitto_pid(port: int) -> int:
    """The mosquitto this process started on `port` (demo.broker keeps its Popen to itself), found in /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if parent != os.getpid() or not argv[0].endswith(b"mosquitto"):
                continue
            if f"listener {port} " in Path(argv[2].decode()).read_text():
                return int(entry.name)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours
    raise AssertionError(f"no mosquitto child of this process listens on port {port}")


# -- 1. the camera dies mid-run ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "reason"),
    [
        ("destroy", "reading an image from device"),  # grab raises: the device is gone
        ("stop", "no frame for"),  # the device goes silent: the loop's frame timeout declares it lost
    ],
    ids=["device-gone", "device-silent"],
)
def test_camera_loss_is_reported_and_the_loop_reconnects_and_keeps_judging(
    tmp_path: Path, mqtt_broker: Broker, step: str, reason: str
) -> None:
    camera = UnpluggableCamera()
    metrics = Metrics(MODEL.version)
    options = LoopOptions(grab_timeout_s=0.2, frame_timeout_s=FRAME_TIMEOUT_S, flush_timeout_s=WAIT_S)
    verdict_topic, event_topic = f"{BASE}/{GIGE}/verdict", f"{BASE}/{GIGE}/event"
    with (
        MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/{GIGE}/#") as collector,
        outbox_publisher(tmp_path, mqtt_broker.port) as publisher,
    ):
        publisher.start()
        assert publisher.connected
        camera.open()
        try:
            loop = InspectionLoop(camera, FakeRuntime(zero), publisher, MODEL, options, metrics=metrics)
            with running(loop) as runner:

                def events() -> list[str]:
                    return [e["event"] for e in bodies(collector.messages, event_topic)]

                wait_until(lambda: len(collector.on(verdict_topic)) >= 10, "10 verdicts from viky")
                camera.unplug(step)
                wait_until(lambda: "camera_lost" in events(), "the camera_lost event")
                # Held before reopening: the loop is still there, and says the camera is gone.
                assert runner.running
                wait_until(lambda: sample(metrics, CAMERA_CONNECTED) == 0, "the camera_connected gauge at 0")
                camera.allow_reopen()
                wait_until(lambda: "camera_reconnected" in events(), "the camera_reconnected event")
                assert runner.running

                def verdicts_after_reconnect() -> list[Message]:
                    return [m for m in since(collector.messages, "camera_reconnected") if m[0] == verdict_topic]

                wait_until(lambda: len(verdicts_after_reconnect()) >= 10, "10 verdicts after the reconnect")
                assert sample(metrics, CAMERA_CONNECTED) == 1
                runner.stop.set()
                summary = runner.finish(WAIT_S)
        finally:
            camera.allow_reopen()
            camera.close()
        assert summary.delivered
        answered = summary.frames + sum(summary.not_inspected.values())
        wait_until(lambda: len(collector.on(verdict_topic)) >= answered, "every verdict at the subscriber")
        time.sleep(0.1)  # nothing more may come: a short window can miss an extra message, never invent one
        messages = collector.messages

    happened = bodies(messages, event_topic)
    # Once per outage, not once per retry.
    assert [e["event"] for e in happened] == ["camera_lost", "camera_reconnected"]
    lost, back = happened
    assert lost["camera"] == back["camera"] == GIGE
    assert reason in lost["reason"]
    assert summary.camera_errors >= 1
    assert back["after_failures"] == summary.camera_errors
    # A machine loaded enough to stall the camera thread past viky's buffers gives not_inspected verdicts too.
    verdicts = bodies(messages, verdict_topic)
    assert len(verdicts) == answered
    assert summary.frames == len([v for v in verdicts if v["verdict"] != "not_inspected"])
    assert summary.counts == {"ok": summary.frames, "reject": 0, "error": 0}
    # The reopened device counts its frames afresh (viky starts again at 1); after the reconnect they are in order.
    after = [
        json.loads(payload)["frame_id"]
        for topic, payload, _ in since(messages, "camera_reconnected")
        if topic == verdict_topic and b'"verdict":"not_inspected"' not in payload
    ]
    assert len(after) >= 10
    assert after == sorted(set(after))


# -- 2. inference slower than the camera ---------------------------------------------------------------------


def test_slow_inference_on_a_live_camera_drops_the_oldest_frames_and_answers_every_frame_once(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    grabbed = 40  # 2 s of viky at 20 fps
    infer_s = 0.15  # about 6.7 frames per second: two frames of three must go
    camera = GenicamCamera(GIGE, GenicamCameraConfig(source="genicam", cti="viky"))
    metrics = Metrics(MODEL.version)
    options = LoopOptions(max_frames=grabbed, queue_size=2, deadline_ms=1000.0, flush_timeout_s=WAIT_S)
    verdict_topic, stats_topic = f"{BASE}/{GIGE}/verdict", f"{BASE}/{GIGE}/stats"
    with (
        MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/#") as collector,
        outbox_publisher(tmp_path, mqtt_broker.port) as publisher,
    ):
        publisher.start()
        camera.open()
        try:
            runtime = FakeRuntime(paced(zero, infer_s))
            agent_ids = FrameIds(tmp_path / "frame-ids-gige0.txt")  # the agent's count: gap verdicts get their own
            loop = InspectionLoop(camera, runtime, publisher, MODEL, options, metrics=metrics, frame_ids=agent_ids)
            with running(loop) as runner:
                summary = runner.finish(WAIT_S + grabbed * infer_s)
        finally:
            camera.close()
        assert summary.delivered
        answered = summary.frames + sum(summary.not_inspected.values())
        wait_until(lambda: len(collector.on(verdict_topic)) >= answered, "every verdict at the subscriber")
        wait_until(lambda: bool(collector.on(stats_topic)), "the stats at the end of the run")
        time.sleep(0.1)  # nothing more may come: a short window can miss an extra message, never invent one
        messages = collector.messages

    assert summary.camera_errors == 0
    # viky sends 20 frames a second, whatever the load; inference sleeps at least 0.15 s a frame, longer when busy.
    assert summary.dropped > 0
    # Every grabbed frame was either judged or dropped, none twice or lost in between.
    assert summary.frames + summary.dropped == grabbed
    assert runtime.calls == summary.frames
    assert sample(metrics, DROPPED) == summary.dropped
    assert sample(metrics, FRAMES) == summary.frames
    assert bodies(messages, stats_topic)[-1]["counters"]["dropped"] == summary.dropped
    verdicts = bodies(messages, verdict_topic)
    judged = [v["frame_id"] for v in verdicts if v["verdict"] != "not_inspected"]
    assert len(judged) == summary.frames  # one verdict per judged frame
    # Every other part got its answer too: each dropped frame, and each frame viky skipped (on a loaded machine).
    gaps = summary.not_inspected["camera_gap"]
    assert summary.not_inspected["dropped"] == summary.dropped
    ids = [v["frame_id"] for v in verdicts]
    assert ids == list(range(1, grabbed + gaps + 1)), ids  # each once, in capture order
    # Drop-oldest: the newest frames survive, so the last one grabbed was judged.
    assert judged[-1] == ids[-1]


# -- 3. the broker is killed mid-run -------------------------------------------------------------------------


def hold_replay_until(publisher: MqttPublisher, ready: threading.Event) -> None:
    """Hold the publisher's next connection at CONNACK until `ready` is set.

    The new broker knows nothing of the old one's subscriptions (it was killed, not stopped, and keeps nothing), so
    the test's subscriber must be on it before the agent replays its outbox. Paho resends what it had in flight
    only after on_connect has returned, and the publisher hands over outbox rows only after its own on_connect ran;
    holding on_connect for the few ms the subscriber takes removes the race with paho's reconnect timer. Then it
    widens the gap before paho's resend, as tests/edge_agent/publish/test_mqtt.py does.
    """
    on_connect = publisher._client.on_connect
    assert on_connect is not None

    def held(*args: Any) -> None:
        ready.wait(WAIT_S)
        on_connect(*args)
        # As on a busy machine: paho's resend comes late, so newer messages handed over too early would overtake it.
        time.sleep(0.3)

    publisher._client.on_connect = held


# The plain kill in the fast suite; the hung broker (a longer outage through the same outbox) in the slow one.
@pytest.mark.parametrize(
    "hang_first", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["killed", "hung-then-killed"]
)
def test_broker_killed_mid_run_loses_no_verdict(tmp_path: Path, hang_first: bool) -> None:
    frames = 250
    kill_after = 20
    max_inflight = 20
    images = tmp_path / "replay"
    images.mkdir()
    # A replay without a rate waits for the loop, so nothing is dropped: the loop judges frames 1..`frames`. About
    # 30 frames per second from the fake runtime; about half are rejects (their reject messages share the outbox).
    camera = replay(images, [10, 60, 110, 160, 210], loop=True)
    runtime = FakeRuntime(paced(brightness, 0.03))
    options = LoopOptions(max_frames=frames, flush_timeout_s=WAIT_S)
    topic = f"{BASE}/cam0/verdict"
    with (
        start_mosquitto() as first,  # picks a free port, and another if that one is taken meanwhile
        outbox_publisher(tmp_path, first.port, "cam0", max_inflight=max_inflight) as publisher,
    ):
        port = first.port  # the second broker takes over the first one's port
        loop = InspectionLoop(camera, runtime, publisher, MODEL, options)
        with running_collector(first, topic) as before:
            publisher.start()
            assert publisher.connected
            with running(loop) as runner:
                assert len(before.wait_for(kill_after, WAIT_S)) >= kill_after
                pid = mosquitto_pid(port)
                if hang_first:
                    # On loopback a verdict is acknowledged within a millisecond, so a plain kill rarely catches one
                    # in flight. A hung broker still takes the agent's messages into its socket but never answers, so
                    # they are in flight when it dies. Killed with a few in flight and the window not full, so that
                    # after the reconnect newer messages could overtake the resent ones if the publisher let them.
                    os.kill(pid, signal.SIGSTOP)
                    wait_until(lambda: publisher.in_flight >= 3, "3 messages in flight to the hung broker")
                os.kill(pid, signal.SIGKILL)  # no DISCONNECT, no will, nothing kept
                before.stop()  # it would reconnect to the new broker and count twice
                wait_until(lambda: not publisher.connected, "the publisher to notice that the broker is gone")
                # The loop goes on judging; the verdicts wait on disk.
                offline_from = loop.summary.frames
                wait_until(lambda: loop.summary.frames > offline_from + 10, "10 frames judged without a broker")
                assert runner.running
                assert not publisher.connected
                assert publisher.pending() > 0
                ready = threading.Event()
                hold_replay_until(publisher, ready)
                with (
                    start_mosquitto(port=port) as second,
                    MqttCollector(second.host, second.port, topic) as after,
                ):
                    ready.set()
                    summary = runner.finish(WAIT_S + frames * 0.03)
                    assert summary.delivered, f"{publisher.pending()} message(s) never acknowledged"
                    wait_until(
                        lambda: frame_ids(after.messages)[-1:] == [frames], f"verdict {frames} after the restart"
                    )
                    time.sleep(0.1)  # nothing more may come: a short window can miss an extra message, never invent one
                    resent = frame_ids(after.messages)
        old = frame_ids(before.messages)
        assert publisher.pending() == 0

    assert summary.frames == frames and summary.dropped == 0
    judged = set(range(1, frames + 1))
    received = old + resent
    # None lost: every judged frame reached a subscriber.
    assert set(received) == judged
    # In order: each id first appears after all smaller ones.
    first_seen = list(dict.fromkeys(received))
    assert first_seen == sorted(first_seen)
    assert old == list(range(1, len(old) + 1))
    assert resent == list(range(resent[0], frames + 1))
    # At least once, not more: QoS 1 duplicates are messages the old broker had forwarded but whose PUBACK never
    # reached the agent before the kill; the agent keeps those in its outbox and paho sends them again. At most
    # `max_inflight` messages are unacknowledged at any time, so at most that many come twice, and they are the
    # newest ones the old broker forwarded.
    duplicates = set(old) & set(resent)
    assert len(duplicates) <= max_inflight
    assert duplicates == set(range(resent[0], len(old) + 1))
