from __future__ import annotations

import logging
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

import edge_agent.frame_ids
from edge_agent.cameras.folder import FolderCamera
from edge_agent.config import FolderCameraConfig
from edge_agent.frame_ids import FrameIdError, FrameIds, frame_ids_path
from edge_agent.geometry import Geometry
from edge_agent.loop import InspectionLoop, LoopOptions
from edge_agent.model import ModelInfo
from edge_agent.publish.fake import FakePublisher
from edge_agent.runtimes.fake import FakeRuntime

MODEL = ModelInfo(version="test-1", threshold=100.0, score_scale=100.0, geometry=Geometry(height=16, width=16))


def test_ids_count_from_one_and_only_a_block_end_is_written(tmp_path: Path) -> None:
    path = tmp_path / "state" / "frame-ids-cam0.txt"
    ids = FrameIds(path, block=5)
    assert [ids.next() for _ in range(3)] == [1, 2, 3]
    assert path.read_text() == "5\n"
    assert [ids.next() for _ in range(4)] == [4, 5, 6, 7]
    assert path.read_text() == "10\n"


def test_a_restart_continues_above_every_id_given_before(tmp_path: Path) -> None:
    path = tmp_path / "frame-ids-cam0.txt"
    first = FrameIds(path, block=5)
    given = [first.next() for _ in range(7)]
    # A crash now: the rest of the block (8 to 10) is skipped, never given twice.
    second = FrameIds(path, block=5)
    assert second.next() == 11 > max(given)


def test_a_counter_that_is_not_a_number_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "frame-ids-cam0.txt"
    path.write_text("garbage")
    with pytest.raises(FrameIdError, match=r"not a number; delete it to count from 1"):
        FrameIds(path)


def test_a_counter_that_cannot_be_written_does_not_stop_the_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def disk_full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    ids = FrameIds(tmp_path / "frame-ids-cam0.txt", block=2)
    monkeypatch.setattr(edge_agent.frame_ids.os, "fsync", disk_full)
    with caplog.at_level(logging.ERROR):
        assert [ids.next() for _ in range(5)] == [1, 2, 3, 4, 5]
    assert "No space left on device" in caplog.text and "a restart may repeat frame ids" in caplog.text


def test_the_counter_lives_beside_the_camera_s_outbox() -> None:
    assert frame_ids_path(Path("/var/lib/edge-agent/outbox-cam0.sqlite")) == Path(
        "/var/lib/edge-agent/frame-ids-cam0.txt"
    )


def test_the_loop_numbers_frames_on_from_the_last_run(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i:03d}.png"), np.full((20, 30), 10, np.uint8))
    path = tmp_path / "frame-ids-cam0.txt"
    published = []
    for _run in range(2):
        camera = FolderCamera("cam0", FolderCameraConfig(source="folder", path=images))
        camera.open()
        publisher = FakePublisher()
        loop = InspectionLoop(
            camera, FakeRuntime(lambda image: 1.0), publisher, MODEL, LoopOptions(), frame_ids=FrameIds(path, 2)
        )
        loop.run(threading.Event())
        published.append([v.frame_id for v in publisher.verdicts])
    assert published == [[1, 2, 3], [5, 6, 7]]
