"""Loading training images at the model input size."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.imageio import ImageReadError, read_image
from edge_agent.preprocess import squash

log = logging.getLogger(__name__)


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
