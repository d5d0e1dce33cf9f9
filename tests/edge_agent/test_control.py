"""Commands to a running loop: model swap under load, a refused reload, pause/resume and snapshot (fakes).

Nothing here depends on how fast the machine is: where a command must land while frames still flow, the camera
holds its next frame back until the command has taken effect, instead of hoping it lands within a frame budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.archive import Archive
from edge_agent.cameras.folder import FolderCamera
from edge_agent.config import FolderCameraConfig
from edge_agent.control import Command, CommandError, Controllable, Controller, EventSink, parse_command
from edge_agent.errors import BundleError
from edge_agent.frames import Frame
from edge_agent.geometry import Geometry
from edge_agent.loop import InspectionLoop, LoopOptions
from edge_agent.model import LoadedModel, ModelInfo
from edge_agent.publish.fake import FakePublisher
from edge_agent.run_summary import RunSummary
from edge_agent.runtimes.fake import FakeRuntime
from tests.edge_agent.waiting import wait_until

GEOMETRY = Geometry(height=16, width=16)
OLD = ModelInfo(version="old-1", threshold=100.0, score_scale=100.0, geometry=GEOMETRY)
NEW = ModelInfo(version="new-2", threshold=100.0, score_scale=100.0, geometry=GEOMETRY)
FRAMES = 60
HELD_AT = 30  # the camera holds this frame back until the command under test has taken effect


def replay(folder: Path, count: int, fps: float | None = None) -> FolderCamera:
    folder.mkdir(exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((20, 30), i % 200, np.uint8))
    camera = FolderCamera("cam0", FolderCameraConfig(source="folder", path=folder, fps=fps, queue_size=64))
    camera.open()
    return camera


class GatedCamera:
    """A replay that holds frame `n` back until `gates[n]` is set, so a command is sure to land mid-stream.

    Until the gate opens, `grab` returns None after its timeout, as a camera waiting for its trigger does; the loop
    just asks again. A replay without a rate is not live: the loop's queue waits instead of dropping frames.
    """

    def __init__(self, camera: FolderCamera, gates: dict[int, threading.Event]) -> None:
        self.name = camera.name
        self.live = camera.live
        self._camera = camera
        self._gates = gates
        self._given = 0

    def open(self) -> None:
        self._camera.open()

    def close(self) -> None:
        self._camera.close()

    def grab(self, timeout_s: float) -> Frame | None:
        gate = self._gates.get(self._given + 1)
        if gate is not None and not gate.wait(timeout_s):
            return None
        frame = self._camera.grab(timeout_s)
        if frame is not None:
            self._given += 1
        return frame


class EventsPublisher(FakePublisher):
    """A FakePublisher that also sets `seen[event]` when that event is published, for the test to wait on."""

    def __init__(self, *events: str) -> None:
        super().__init__()
        self.seen = {event: threading.Event() for event in events}

    def publish_event(self, camera: str, event: str, details: dict[str, Any]) -> None:
        super().publish_event(camera, event, details)
        if event in self.seen:
            self.seen[event].set()


class SnapshotRequested:
    """The loop as the controller drives it, setting `requested` once the loop has taken a snapshot request."""

    def __init__(self, loop: InspectionLoop, requested: threading.Event) -> None:
        self._loop = loop
        self.requested = requested

    @property
    def model_version(self) -> str:
        return self._loop.model_version

    def swap(self, model: LoadedModel) -> None:
        self._loop.swap(model)

    def pause(self) -> None:
        self._loop.pause()

    def resume(self) -> None:
        self._loop.resume()

    def request_snapshot(self, events: EventSink) -> None:
        self._loop.request_snapshot(events)
        self.requested.set()


class SlowRuntime(FakeRuntime):
    """Takes a little time per frame, so commands land while frames are in flight."""

    def __init__(self) -> None:
        super().__init__(lambda image: float(image.mean()))

    def infer(self, image: np.ndarray) -> Any:
        time.sleep(0.005)  # stands for inference time, not for synchronisation
        return super().infer(image)


MODELS = Path("/models")  # the tests' model.reload_dirs


def run_in_thread(loop: InspectionLoop) -> tuple[threading.Thread, list[RunSummary]]:
    out: list[RunSummary] = []
    thread = threading.Thread(target=lambda: out.append(loop.run(threading.Event())))
    thread.start()
    return thread, out


def controller_for(loop: Controllable, publisher: FakePublisher, load: Callable[[Path], LoadedModel]) -> Controller:
    controller = Controller(
        "cam0", loop, load, Path("/models/press2"), lambda e, d: publisher.publish_event("cam0", e, d), [MODELS]
    )
    controller.start()
    return controller


def test_a_swap_under_load_loses_no_frame_and_changes_the_model_field(tmp_path: Path) -> None:
    publisher = EventsPublisher("reloaded")
    # Frames flow up to HELD_AT, the reload lands meanwhile, the rest run on the new model: whatever the speed.
    camera = GatedCamera(replay(tmp_path / "replay", FRAMES), {HELD_AT: publisher.seen["reloaded"]})
    loop = InspectionLoop(camera, SlowRuntime(), publisher, OLD, LoopOptions())
    loaded: list[Path] = []

    def load(path: Path) -> LoadedModel:
        loaded.append(path)
        time.sleep(0.05)  # compiling takes a while, on the control thread (frames keep coming meanwhile)
        return LoadedModel(SlowRuntime(), NEW)

    controller = controller_for(loop, publisher, load)
    thread, summary = run_in_thread(loop)
    wait_until(lambda: len(publisher.verdicts) >= 10, "10 verdicts on the old model")
    controller.submit(Command("reload"))
    thread.join()
    controller.stop()
    assert [v.frame_id for v in publisher.verdicts] == list(range(1, FRAMES + 1))
    models = [v.model for v in publisher.verdicts]
    switch = models.index("new-2")
    # The swap lands between two frames: after the 10 seen before the command, at the latest on the held frame.
    assert 10 <= switch <= HELD_AT - 1 and set(models[:switch]) == {"old-1"} and set(models[switch:]) == {"new-2"}
    assert loaded == [Path("/models/press2")]
    assert publisher.events == [("cam0", "reloaded", {"path": "/models/press2", "model": "new-2", "previous": "old-1"})]
    assert publisher.model == "new-2" and summary[0].dropped == 0


def test_a_refused_bundle_keeps_the_old_model_and_says_why(tmp_path: Path) -> None:
    publisher = FakePublisher()
    loop = InspectionLoop(replay(tmp_path / "replay", 20), SlowRuntime(), publisher, OLD, LoopOptions())

    def load(path: Path) -> LoadedModel:
        raise BundleError(f"edge bundle file {path}/model.bin does not match its sha256 (tampered or corrupt)")

    controller = controller_for(loop, publisher, load)
    controller.submit(Command("reload", path=Path("/models/bad")))
    thread, _ = run_in_thread(loop)
    thread.join()
    controller.stop()
    assert {v.model for v in publisher.verdicts} == {"old-1"} and len(publisher.verdicts) == 20
    [(_camera, event, details)] = publisher.events
    assert event == "reload_failed" and "sha256" in details["reason"] and details["model"] == "old-1"


def _reload(tmp_path: Path, path: Path) -> tuple[list[Path], list[tuple[str, str, dict[str, Any]]]]:
    """A reload of `path` by command, with model.reload_dirs [tmp_path/models]: the paths loaded, and the events."""
    publisher = FakePublisher()
    loop = InspectionLoop(replay(tmp_path / "replay", 5), SlowRuntime(), publisher, OLD, LoopOptions())
    loaded: list[Path] = []

    def load(path: Path) -> LoadedModel:
        loaded.append(path)
        return LoadedModel(SlowRuntime(), NEW)

    def events(event: str, details: dict[str, Any]) -> None:
        publisher.publish_event("cam0", event, details)

    controller = Controller("cam0", loop, load, tmp_path / "models" / "press2", events, [tmp_path / "models"])
    controller.start()
    controller.submit(Command("reload", path=path))
    controller.stop()
    return loaded, publisher.events


def test_a_reload_from_outside_the_reload_dirs_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    loaded, [(_camera, event, details)] = _reload(tmp_path, tmp_path / "elsewhere" / "evil")
    assert loaded == [] and event == "reload_failed" and details["model"] == "old-1"
    assert "outside model.reload_dirs" in details["reason"] and str(tmp_path / "models") in details["reason"]


def test_a_symlink_in_a_reload_dir_pointing_out_of_it_is_refused(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "models" / "link").symlink_to(tmp_path / "elsewhere")
    loaded, [(_camera, event, details)] = _reload(tmp_path, tmp_path / "models" / "link")
    assert loaded == [] and event == "reload_failed" and "outside model.reload_dirs" in details["reason"]


def test_a_reload_from_inside_the_reload_dirs_loads(tmp_path: Path) -> None:
    inside = tmp_path / "models" / "press2-v2"
    loaded, events = _reload(tmp_path, inside)
    assert loaded == [inside] and [event for _camera, event, _details in events] == ["reloaded"]


def test_pause_discards_frames_resume_judges_again_and_a_snapshot_works_while_paused(tmp_path: Path) -> None:
    publisher = EventsPublisher("resumed")
    archive = Archive(tmp_path / "archive")
    requested = threading.Event()
    # Each step's frames are held back until the step before has taken effect: frames 1-30 come while paused, 31
    # on once the snapshot is asked for (so one of them is the snapshot), 61 on once inspection has resumed.
    camera = GatedCamera(replay(tmp_path / "replay", 200), {31: requested, 61: publisher.seen["resumed"]})
    loop = InspectionLoop(camera, SlowRuntime(), publisher, OLD, LoopOptions(max_frames=200), archive)
    controller = controller_for(
        SnapshotRequested(loop, requested), publisher, lambda path: LoadedModel(SlowRuntime(), NEW)
    )
    controller.submit(Command("pause"))
    # Commands run on the controller's thread: the loop starts only once the pause has taken effect.
    wait_until(lambda: any(e[1] == "paused" for e in publisher.events), "the paused event")
    thread, summary = run_in_thread(loop)
    wait_until(lambda: loop.summary.paused >= 20, "20 frames discarded while paused")
    controller.submit(Command("snapshot"))
    wait_until(lambda: any(e[1] == "snapshot" for e in publisher.events), "the snapshot event")
    # The line still gets an answer for each part while paused: not_inspected, reason paused.
    assert {(v.verdict, v.reason) for v in publisher.verdicts} == {("not_inspected", "paused")}
    controller.submit(Command("resume"))
    thread.join()
    controller.stop()
    archive.close()
    events = [e[1] for e in publisher.events]
    assert events == ["paused", "snapshot", "resumed"]
    snapshot = publisher.events[1][2]
    assert Path(snapshot["image"]).is_file() and snapshot["image"].endswith("_snapshot.png")
    judged = [v.frame_id for v in publisher.verdicts if v.verdict != "not_inspected"]
    assert judged and judged == sorted(judged)
    assert judged[-1] == 200  # everything after the resume was judged
    # A replay without a rate waits for the loop, so no frame is dropped: each was discarded while paused, or
    # judged; the snapshot frame was judged but its verdict not published, so it too was answered `paused`.
    assert summary[0].dropped == 0
    assert summary[0].paused + len(judged) + 1 == 200
    assert summary[0].not_inspected["paused"] == summary[0].paused + 1
    assert [v.frame_id for v in publisher.verdicts] == list(range(1, 201))  # one answer per frame, in order


def test_commands_for_another_camera_are_ignored(tmp_path: Path) -> None:
    publisher = FakePublisher()
    loop = InspectionLoop(replay(tmp_path / "replay", 5), SlowRuntime(), publisher, OLD, LoopOptions())
    controller = controller_for(loop, publisher, lambda path: LoadedModel(SlowRuntime(), NEW))
    controller.submit(Command("pause", camera="cam9"))
    thread, _ = run_in_thread(loop)
    thread.join()
    controller.stop()
    assert len(publisher.verdicts) == 5 and publisher.events == []


@pytest.mark.parametrize(
    ("verb", "payload", "expected"),
    [
        ("reload", b"", Command("reload")),
        ("reload", b'{"path": "/m/b", "camera": "cam0"}', Command("reload", Path("/m/b"), "cam0")),
        ("pause", b"  ", Command("pause")),
        ("snapshot", b'{"camera": "gige0"}', Command("snapshot", camera="gige0")),
    ],
)
def test_parse_command(verb: str, payload: bytes, expected: Command) -> None:
    assert parse_command(verb, payload) == expected


@pytest.mark.parametrize(
    ("verb", "payload", "message"),
    [
        ("explode", b"", "unknown command 'explode'"),
        ("reload", b"not json", "JSON object"),
        ("reload", b"[1]", "JSON object"),
        ("reload", b'{"model": "x"}', "unknown key"),
        ("pause", b'{"path": "/m"}', "reload only"),
    ],
)
def test_bad_commands_are_refused_with_the_reason(verb: str, payload: bytes, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        parse_command(verb, payload)
