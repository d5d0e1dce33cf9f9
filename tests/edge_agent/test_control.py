"""Commands to a running loop: model swap under load, a refused reload, pause/resume and snapshot (fakes)."""

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
from edge_agent.control import Command, CommandError, Controller, parse_command
from edge_agent.errors import BundleError
from edge_agent.geometry import Geometry
from edge_agent.loop import InspectionLoop, LoopOptions, RunSummary
from edge_agent.model import LoadedModel, ModelInfo
from edge_agent.publish.fake import FakePublisher
from edge_agent.runtimes.fake import FakeRuntime

GEOMETRY = Geometry(height=16, width=16)
OLD = ModelInfo(version="old-1", threshold=100.0, score_scale=100.0, geometry=GEOMETRY)
NEW = ModelInfo(version="new-2", threshold=100.0, score_scale=100.0, geometry=GEOMETRY)
FRAMES = 60
WAIT_S = 30.0


def replay(folder: Path, count: int, fps: float | None = None) -> FolderCamera:
    folder.mkdir(exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((20, 30), i % 200, np.uint8))
    camera = FolderCamera("cam0", FolderCameraConfig(source="folder", path=folder, fps=fps, queue_size=64))
    camera.open()
    return camera


class SlowRuntime(FakeRuntime):
    """Takes a little time per frame, so commands land while frames are in flight."""

    def __init__(self) -> None:
        super().__init__(lambda image: float(image.mean()))

    def infer(self, image: np.ndarray) -> Any:
        time.sleep(0.005)
        return super().infer(image)


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def run_in_thread(loop: InspectionLoop) -> tuple[threading.Thread, list[RunSummary]]:
    out: list[RunSummary] = []
    thread = threading.Thread(target=lambda: out.append(loop.run(threading.Event())))
    thread.start()
    return thread, out


def controller_for(loop: InspectionLoop, publisher: FakePublisher, load: Callable[[Path], LoadedModel]) -> Controller:
    controller = Controller(
        "cam0", loop, load, Path("/models/press2"), lambda e, d: publisher.publish_event("cam0", e, d)
    )
    controller.start()
    return controller


def test_a_swap_under_load_loses_no_frame_and_changes_the_model_field(tmp_path: Path) -> None:
    publisher = FakePublisher()
    loop = InspectionLoop(replay(tmp_path / "replay", FRAMES), SlowRuntime(), publisher, OLD, LoopOptions())
    loaded: list[Path] = []

    def load(path: Path) -> LoadedModel:
        loaded.append(path)
        time.sleep(0.05)  # compiling takes a while, on the control thread
        return LoadedModel(SlowRuntime(), NEW)

    controller = controller_for(loop, publisher, load)
    thread, summary = run_in_thread(loop)
    wait_until(lambda: len(publisher.verdicts) >= 10)
    controller.submit(Command("reload"))
    thread.join()
    controller.stop()
    assert [v.frame_id for v in publisher.verdicts] == list(range(1, FRAMES + 1))
    models = [v.model for v in publisher.verdicts]
    switch = models.index("new-2")
    assert 10 <= switch < FRAMES and set(models[:switch]) == {"old-1"} and set(models[switch:]) == {"new-2"}
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


def test_pause_discards_frames_resume_judges_again_and_a_snapshot_works_while_paused(tmp_path: Path) -> None:
    publisher = FakePublisher()
    archive = Archive(tmp_path / "archive")
    camera = replay(tmp_path / "replay", 200, fps=100)
    loop = InspectionLoop(camera, SlowRuntime(), publisher, OLD, LoopOptions(max_frames=200), archive)
    controller = controller_for(loop, publisher, lambda path: LoadedModel(SlowRuntime(), NEW))
    controller.submit(Command("pause"))
    # Commands run on the controller's thread: the loop starts only once the pause has taken effect.
    wait_until(lambda: any(e[1] == "paused" for e in publisher.events))
    thread, summary = run_in_thread(loop)
    wait_until(lambda: loop.summary.paused >= 20)
    controller.submit(Command("snapshot"))
    wait_until(lambda: any(e[1] == "snapshot" for e in publisher.events))
    assert publisher.verdicts == []
    controller.submit(Command("resume"))
    thread.join()
    controller.stop()
    archive.close()
    events = [e[1] for e in publisher.events]
    assert events == ["paused", "snapshot", "resumed"]
    snapshot = publisher.events[1][2]
    assert Path(snapshot["image"]).is_file() and snapshot["image"].endswith("_snapshot.png")
    judged = [v.frame_id for v in publisher.verdicts]
    assert judged and judged == sorted(judged)
    # Every frame is dropped (a busy machine: the replay is live), discarded while paused, or judged; the
    # snapshot frame was judged but not published.
    assert summary[0].dropped + summary[0].paused + len(judged) + 1 == 200


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
