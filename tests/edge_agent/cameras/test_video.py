"""The video replay camera, on a real file written with OpenCV's FFmpeg."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.cameras import make_camera
from edge_agent.cameras.video import VideoCamera
from edge_agent.config import VideoCameraConfig
from edge_agent.errors import CameraError, EndOfStream
from edge_agent.geometry import Geometry
from edge_agent.loop import InspectionLoop, LoopOptions
from edge_agent.model import ModelInfo
from edge_agent.publish.fake import FakePublisher
from edge_agent.runtimes.fake import FakeRuntime

LEVELS = [20, 80, 140, 200, 250]


def write_video(path: Path, levels: list[int]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for level in levels:
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 2] = level  # red in BGR: the camera must hand out RGB
        writer.write(frame)
    writer.release()
    return path


def camera(path: Path, **fields: object) -> VideoCamera:
    cam = make_camera("line", VideoCameraConfig(source="video", path=path, **fields))
    assert isinstance(cam, VideoCamera)
    cam.open()
    return cam


def test_frames_come_in_order_as_rgb_then_the_stream_ends(tmp_path: Path) -> None:
    cam = camera(write_video(tmp_path / "line.avi", LEVELS))
    frames = [cam.grab(1.0) for _ in LEVELS]
    with pytest.raises(EndOfStream):
        cam.grab(1.0)
    cam.close()
    assert [f.frame_id for f in frames if f is not None] == [1, 2, 3, 4, 5]
    reds = [float(f.image[:, :, 0].mean()) for f in frames if f is not None]
    np.testing.assert_allclose(reds, LEVELS, atol=6)
    assert frames[0] is not None and frames[0].source == "line.avi#1" and frames[0].image.shape == (48, 64, 3)


def test_a_looping_replay_starts_over_with_growing_frame_ids(tmp_path: Path) -> None:
    cam = camera(write_video(tmp_path / "line.avi", LEVELS), loop=True)
    frames = [cam.grab(1.0) for _ in range(2 * len(LEVELS) + 1)]
    cam.close()
    assert [f.frame_id for f in frames if f is not None] == list(range(1, 12))
    assert frames[5] is not None and frames[5].source == "line.avi#1"


def test_a_reopened_replay_starts_its_file_over_but_not_its_frame_ids(tmp_path: Path) -> None:
    cam = camera(write_video(tmp_path / "line.avi", LEVELS))
    first = cam.grab(1.0)
    cam.close()  # what the loop's reconnect does
    cam.open()
    again = cam.grab(1.0)
    cam.close()
    assert first is not None and again is not None
    assert (first.frame_id, again.frame_id) == (1, 2)
    assert first.source == again.source == "line.avi#1"


def test_a_missing_or_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="does not exist"):
        camera(tmp_path / "nothing.mp4")
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video")
    with pytest.raises(CameraError, match="cannot read"):
        camera(bogus)


def test_the_loop_judges_every_frame_of_a_video(tmp_path: Path) -> None:
    cam = camera(write_video(tmp_path / "line.avi", LEVELS))
    publisher = FakePublisher()
    model = ModelInfo(version="v", threshold=100.0, score_scale=100.0, geometry=Geometry(height=16, width=16))
    runtime = FakeRuntime(lambda image: float(image.mean()))
    summary = InspectionLoop(cam, runtime, publisher, model, LoopOptions()).run(threading.Event())
    assert summary.frames == len(LEVELS) and [v.frame_id for v in publisher.verdicts] == [1, 2, 3, 4, 5]
