"""Scoring the test set for `trainer eval`: every readable image's score, and the anomaly maps and masks of
those that can take part in pixel metrics.

Frames go through the bundle's geometry, as in the agent; maps and masks meet on the model's input grid.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from torch import nn
from tqdm import tqdm

from trainer.bundle import InputSpec, ModelManifest
from trainer.data.dataset import DataError, Sample
from trainer.predict import on_grid, predict, read_frames, scoring_model

log = logging.getLogger(__name__)

EVAL_BATCH = 16


@dataclass(frozen=True)
class Predicted:
    paths: list[Path]
    skipped: list[Path]
    shapes: list[tuple[int, int]]  # (height, width) of each frame as stored
    scores: np.ndarray  # N
    views: np.ndarray  # N x H x W x 3 uint8, each frame as the model saw it, on the eval grid
    maps: np.ndarray  # N x H x W float32, on the eval grid


def predict_paths(model: nn.Module, paths: Sequence[Path], manifest: ModelManifest) -> Predicted:
    """Scores and grid maps of image files; unreadable files come back in `skipped`."""
    frames, kept, skipped = read_frames(paths)
    combined = predict(model, frames, manifest.geometry)
    on = [on_grid(c, manifest.input.height, manifest.input.width) for c in combined]
    h, w = manifest.input.height, manifest.input.width
    return Predicted(
        kept,
        skipped,
        [(f.shape[0], f.shape[1]) for f in frames],
        np.array([c.score for c in combined], dtype=np.float32),
        np.stack([v for v, _ in on]) if on else np.zeros((0, h, w, 3), np.uint8),
        np.stack([m for _, m in on]) if on else np.zeros((0, h, w), np.float32),
    )


def mask_to_grid(mask: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A ground-truth mask as stored -> boolean H x W on the eval grid (nearest keeps it binary)."""
    if mask.shape[:2] != (spec.height, spec.width):
        mask = cv2.resize(mask, (spec.width, spec.height), interpolation=cv2.INTER_NEAREST)
    return mask > 0


@dataclass
class Scored:
    """Scores of every readable test image, and maps + masks of those that can take part in pixel metrics."""

    samples: list[Sample]
    scores: np.ndarray
    skipped: list[Path]
    shapes: list[tuple[int, int]]  # (height, width) of each sample's frame as stored
    pixel_index: list[int]  # index into `samples` of each row of `maps`/`masks`
    maps: np.ndarray  # P x H x W float32
    masks: np.ndarray  # P x H x W bool
    unmasked: list[Path]


def _batches(items: Sequence[Sample], size: int) -> Iterator[Sequence[Sample]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def read_mask(sample: Sample, spec: InputSpec, shape: tuple[int, int]) -> np.ndarray | None:
    """The sample's mask on the input grid; all-zero for goods; None for a defect without a usable mask. `shape` is
    the image's (height, width) as stored, which the mask must match."""
    if not sample.is_defect:
        return np.zeros((spec.height, spec.width), dtype=bool)
    if sample.mask is None:
        return None
    raw = cv2.imread(str(sample.mask), cv2.IMREAD_GRAYSCALE)
    if raw is None:
        log.warning("mask %s is unreadable; %s takes no part in pixel metrics", sample.mask, sample.path)
        return None
    _check_mask_size(sample, raw.shape[:2], shape)
    return mask_to_grid(raw, spec)


def _check_mask_size(sample: Sample, mask: tuple[int, int], image: tuple[int, int]) -> None:
    # A mask of another size was drawn for another picture (a crop, a rescale): stretching it onto the image would
    # score pixels that are not the defect, so the pixel metrics would be wrong without anyone noticing.
    if mask != image:
        raise DataError(
            f"mask {sample.mask} is {mask[1]}x{mask[0]} but its image {sample.path} is {image[1]}x{image[0]} "
            f"(width x height); re-export the mask at the image's size, {image[1]}x{image[0]}"
        )


class _Collector:
    """Gathers scores of readable images, and maps + masks of those that can take part in pixel metrics."""

    def __init__(self, samples: list[Sample], spec: InputSpec) -> None:
        self.spec = spec
        # Preallocated at the most it can hold, so pixel data is never copied while collecting it.
        capacity = sum(1 for s in samples if not s.is_defect or s.mask is not None)
        self.maps = np.empty((capacity, spec.height, spec.width), dtype=np.float32)
        self.masks = np.empty((capacity, spec.height, spec.width), dtype=bool)
        self.kept: list[Sample] = []
        self.scores: list[float] = []
        self.skipped: list[Path] = []
        self.unmasked: list[Path] = []
        self.pixel_index: list[int] = []
        self.shapes: list[tuple[int, int]] = []

    def add(self, sample: Sample, score: float, amap: np.ndarray, shape: tuple[int, int]) -> None:
        mask = read_mask(sample, self.spec, shape)
        if mask is None:
            self.unmasked.append(sample.path)
        else:
            row = len(self.pixel_index)
            self.maps[row], self.masks[row] = amap, mask
            self.pixel_index.append(len(self.kept))
        self.kept.append(sample)
        self.scores.append(score)
        self.shapes.append(shape)

    def result(self) -> Scored:
        rows = len(self.pixel_index)
        scores = np.array(self.scores, dtype=np.float32)
        return Scored(
            self.kept,
            scores,
            self.skipped,
            self.shapes,
            self.pixel_index,
            self.maps[:rows],
            self.masks[:rows],
            self.unmasked,
        )


def score_samples(model: nn.Module, manifest: ModelManifest, samples: list[Sample]) -> Scored:
    by_path = {s.path: s for s in samples}
    collector = _Collector(samples, manifest.input)
    model = scoring_model(model, manifest.geometry, len(samples))
    with tqdm(total=len(samples), desc="scoring test images", unit="img") as bar:
        for batch in _batches(samples, EVAL_BATCH):
            predicted = predict_paths(model, [s.path for s in batch], manifest)
            collector.skipped += predicted.skipped
            for path, shape, score, amap in zip(
                predicted.paths, predicted.shapes, predicted.scores, predicted.maps, strict=True
            ):
                collector.add(by_path[path], float(score), amap, shape)
            bar.update(len(batch))
    return collector.result()
