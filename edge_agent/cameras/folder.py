"""Replays a folder of images, sorted by name, as if a camera took them: for tests, the demo, and re-running
a day's archive."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from edge_agent.cameras.pacing import Pacer
from edge_agent.config import FolderCameraConfig
from edge_agent.errors import CameraError, EndOfStream
from edge_agent.frames import Frame
from edge_agent.imageio import ImageReadError, list_images, read_image

log = logging.getLogger(__name__)


class FolderCamera:
    def __init__(self, name: str, config: FolderCameraConfig) -> None:
        self.name = name
        self._config = config
        # Without a rate the replay waits for the loop (no drops); with one it behaves like a live camera.
        self.live = config.fps is not None
        self._files: list[Path] = []
        self._index = 0
        self._frame_id = 0
        self._pacer = Pacer(config.fps)
        self.unreadable = 0

    def open(self) -> None:
        folder = self._config.path
        if not folder.is_dir():
            raise CameraError(f"camera '{self.name}': folder {folder} does not exist")
        self._files = list_images(folder)
        if not self._files:
            raise CameraError(f"camera '{self.name}': no images (png/jpg/bmp/tif) in {folder}")
        self._index = 0
        self._pacer.restart()

    def grab(self, timeout_s: float) -> Frame | None:
        if not self._files:
            raise CameraError(f"camera '{self.name}' is not open")
        while True:
            if self._index >= len(self._files):
                if not self._config.loop:
                    raise EndOfStream
                self._index = 0
            if not self._pacer.wait(timeout_s):
                return None
            path = self._files[self._index]
            self._index += 1
            try:
                image = read_image(path)
            except ImageReadError as exc:
                self.unreadable += 1
                log.warning("camera '%s': skipping %s", self.name, exc)
                continue
            self._frame_id += 1
            return Frame(image, self._frame_id, time.time(), time.monotonic(), None, path.name)

    def close(self) -> None:
        self._files = []
