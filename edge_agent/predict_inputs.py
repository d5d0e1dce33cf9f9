"""What `edge-agent predict` judges: the images of a folder (or one image), or the frames of a video file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.cameras.video import VideoCamera
from edge_agent.config import VideoCameraConfig
from edge_agent.errors import AgentError, EndOfStream
from edge_agent.imageio import IMAGE_SUFFIXES, ImageReadError, list_images, read_image

OVERLAY_SUFFIX = ".png"
# The video replay runs without a rate, so a grab never waits for this; the Camera protocol asks for one.
GRAB_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Item:
    """One picture to judge."""

    file: str  # its name in predictions.csv: the path under the input folder, or `<video name>#<frame>`
    overlay: Path  # where its overlay goes, under the overlays folder
    image: np.ndarray | None  # None when it could not be read; `error` says why
    error: str | None = None


@dataclass(frozen=True)
class Inputs:
    items: Iterator[Item]
    count: int | None  # None for a video: OpenCV's frame count is an estimate from the container
    unit: str  # what the summary counts: image or frame


def open_inputs(source: Path, recursive: bool) -> Inputs:
    """The pictures under `source`, checked before anything is written: a folder without images or a file
    OpenCV cannot decode is an AgentError."""
    if not source.exists():
        raise AgentError(f"{source} does not exist; give a folder of images or a video file")
    if source.is_dir():
        files = list_images(source, recursive)
        if not files:
            hint = "" if recursive else "; add --recursive to look in its subfolders too"
            raise AgentError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {source}{hint}")
        return Inputs(_images(source, files), len(files), "image")
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return Inputs(_images(source.parent, [source]), 1, "image")
    camera = VideoCamera(source.name, VideoCameraConfig(source="video", path=source))
    camera.open()
    return Inputs(_frames(camera, source), None, "frame")


def _overlay_name(relative: Path) -> Path:
    # Adding .png rather than replacing the suffix keeps `a.jpg` and `a.png` from sharing an overlay.
    return relative if relative.suffix.lower() == OVERLAY_SUFFIX else relative.with_name(relative.name + OVERLAY_SUFFIX)


def _images(folder: Path, files: list[Path]) -> Iterator[Item]:
    for path in files:
        relative = path.relative_to(folder)
        try:
            image, error = read_image(path), None
        except ImageReadError as exc:
            image, error = None, str(exc)
        yield Item(relative.as_posix(), _overlay_name(relative), image, error)


def _frames(camera: VideoCamera, path: Path) -> Iterator[Item]:
    index = 0
    try:
        while True:
            try:
                frame = camera.grab(GRAB_TIMEOUT_S)
            except EndOfStream:
                return
            if frame is None:  # the protocol's "nothing yet": ask again
                continue
            index += 1
            # The file name is the one the agent's video replay gives the frame as its verdict's source.
            yield Item(frame.source, Path(f"{path.stem}_{index:06d}{OVERLAY_SUFFIX}"), frame.image)
    finally:
        camera.close()
