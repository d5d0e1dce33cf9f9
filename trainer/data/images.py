"""Reading image files the way industrial users have them: png/jpg/bmp/tif, 8 or 16 bit, gray or colour."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_agent.preprocess import squash

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


class ImageReadError(Exception):
    pass


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: Path) -> np.ndarray:
    """The file as stored (BGR order converted to RGB); raises ImageReadError when unreadable."""
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageReadError(f"{path} is not a readable image")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


@dataclass
class LoadedImages:
    images: np.ndarray  # N x H x W x 3 uint8, already at the model input size
    paths: list[Path]
    skipped: list[Path] = field(default_factory=list)


def load_for_model(paths: Iterable[Path], height: int, width: int) -> LoadedImages:
    """Read and squash; unreadable files are skipped with a warning and counted, never fatal."""
    images: list[np.ndarray] = []
    kept: list[Path] = []
    skipped: list[Path] = []
    for path in paths:
        try:
            images.append(squash(read_image(path), height, width))
            kept.append(path)
        except ImageReadError as exc:
            log.warning("skipping %s", exc)
            skipped.append(path)
    stacked = np.stack(images) if images else np.zeros((0, height, width, 3), np.uint8)
    return LoadedImages(stacked, kept, skipped)
