"""Replays a video file as if a camera took it: for the demo, and for re-running a recording of the line."""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np

from edge_agent.cameras.pacing import Pacer
from edge_agent.config import VideoCameraConfig
from edge_agent.errors import CameraError, EndOfStream
from edge_agent.frames import Frame

log = logging.getLogger(__name__)


class VideoCamera:
    def __init__(self, name: str, config: VideoCameraConfig) -> None:
        self.name = name
        self._config = config
        # Without a rate the replay waits for the loop (no drops); with one it behaves like a live camera.
        self.live = config.fps is not None
        self._capture: cv2.VideoCapture | None = None
        self._pacer = Pacer(config.fps)
        self._frame_id = 0
        self._index = 0  # frame number within the file, for the verdict's source

    def open(self) -> None:
        path = self._config.path
        if not path.is_file():
            raise CameraError(f"camera '{self.name}': video file {path} does not exist")
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened() or not capture.read()[0]:
            capture.release()
            raise CameraError(f"camera '{self.name}': OpenCV cannot read {path} as a video (codec or container?)")
        capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self._capture = capture
        self._index = 0
        self._pacer.restart()

    def grab(self, timeout_s: float) -> Frame | None:
        if self._capture is None:
            raise CameraError(f"camera '{self.name}' is not open")
        if not self._pacer.wait(timeout_s):
            return None
        ok, bgr = self._capture.read()
        if not ok:
            if not self._config.loop or self._index == 0:
                raise EndOfStream
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._index = 0
            ok, bgr = self._capture.read()
            if not ok:
                raise CameraError(f"camera '{self.name}': {self._config.path} could not be rewound")
        self._index += 1
        self._frame_id += 1
        image = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        source = f"{self._config.path.name}#{self._index}"
        return Frame(image, self._frame_id, time.time(), time.monotonic(), None, source)

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()
