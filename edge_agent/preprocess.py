"""Frame -> model input. The one definition of this mapping: the trainer, the converter's parity check
and the agent all call it, so a frame is seen identically everywhere."""

from __future__ import annotations

import cv2
import numpy as np

MAX_8BIT = 255


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """Any camera or file image (gray, RGB, RGBA; 8 or 16 bit) as H x W x 3 uint8 RGB."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, MAX_8BIT).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    return image


def squash(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize both axes to the model input; INTER_AREA because frames are mostly shrunk."""
    rgb = to_uint8_rgb(image)
    if rgb.shape[:2] == (height, width):
        return np.ascontiguousarray(rgb)
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
