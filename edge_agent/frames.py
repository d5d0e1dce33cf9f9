from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Pixel types `preprocess.to_uint8_rgb` maps to 8 bits faithfully; anything else (float, signed, bool) would be
# clipped into a picture the model was never shown.
FRAME_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
# Channels of an H x W x C frame: gray, RGB, RGBA.
FRAME_CHANNELS = (1, 3, 4)
GRAY_NDIM = 2
COLOUR_NDIM = 3


def _no_image() -> np.ndarray:
    empty = np.zeros((0, 0), np.uint8)
    empty.flags.writeable = False
    return empty


# The image of a frame whose camera buffer could not be converted; `Frame.error` says why.
NO_IMAGE = _no_image()


@dataclass(frozen=True)
class Frame:
    """One picture from a camera, with the times the loop needs to measure latency and deadlines."""

    image: np.ndarray  # H x W (mono) or H x W x 3 (RGB), uint8
    frame_id: int
    captured_at: float  # wall clock, seconds since the epoch, for payloads
    captured_mono: float  # time.monotonic() at capture, for latency and deadlines
    camera_timestamp: int | None = None  # the device's own tick counter, where it gives one
    source: str = ""  # file name for replays, device id for cameras
    # Set (and `image` is NO_IMAGE) when the camera delivered a buffer that is not a picture: the part in front
    # of the camera still gets a verdict, `error`, instead of the camera being taken for lost.
    error: str | None = None
    # The device's own frame counter, where it gives one: it restarts when the camera is reopened, so `frame_id`
    # (the agent's count, which never does) is the key; this one is for matching against the device's count.
    camera_frame_id: int | None = None


def image_problem(image: object) -> str | None:
    """What makes `image` unusable as a frame (a message for the log and the verdict), or None when it is fine."""
    if not isinstance(image, np.ndarray):
        return f"the image is a {type(image).__name__}, not a numpy array"
    if image.dtype not in FRAME_DTYPES:
        return f"the image has {image.dtype} pixels; a camera must give uint8 or uint16"
    colour = image.ndim == COLOUR_NDIM and image.shape[2] in FRAME_CHANNELS
    if image.ndim != GRAY_NDIM and not colour:
        return f"the image has shape {image.shape}; a camera must give H x W or H x W x 1, 3 or 4"
    if image.shape[0] == 0 or image.shape[1] == 0:
        return f"the image is empty ({image.shape[0]} x {image.shape[1]})"
    return None
