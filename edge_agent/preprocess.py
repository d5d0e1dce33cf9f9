"""Any camera or file pixel format -> the 8-bit RGB the models take (geometry.py then sizes it)."""

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
        return np.asarray(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGBA2RGB), dtype=np.uint8)
    return image
