"""Camera sources behind one protocol (`base.Camera`); `open_camera` builds the one a config names."""

from __future__ import annotations

from edge_agent.cameras.base import Camera
from edge_agent.config import CameraConfig, FolderCameraConfig, VideoCameraConfig


def make_camera(name: str, config: CameraConfig) -> Camera:
    if isinstance(config, FolderCameraConfig):
        from edge_agent.cameras.folder import FolderCamera

        return FolderCamera(name, config)
    if isinstance(config, VideoCameraConfig):
        from edge_agent.cameras.video import VideoCamera

        return VideoCamera(name, config)
    # Imported here so a replay-only install never loads the GenTL stack.
    from edge_agent.cameras.genicam import GenicamCamera

    return GenicamCamera(name, config)
