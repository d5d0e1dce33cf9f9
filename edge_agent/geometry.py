"""How a frame of any size maps to the model's fixed input, and how the model's outputs map back.

One definition for the trainer (fit, eval), the converter's parity check and the agent, so a frame is seen
identically everywhere:
- `squash`: resize both axes to the input size;
- `letterbox`: keep the aspect ratio, pad with a replicated border, and leave the pad out of map and score;
- `tile`: resize by `tile_scale`, cut overlapping input-sized tiles, stitch their maps by maximum, and take the
  largest tile score. For high-resolution sensors with small defects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.preprocess import to_uint8_rgb

GeometryMode = Literal["squash", "letterbox", "tile"]


class Geometry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: GeometryMode = "squash"
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    tile_scale: float = Field(default=1.0, gt=0, le=4)  # frame resize before tiling; 1.0 = sensor pixels
    tile_overlap: float = Field(default=0.25, ge=0, lt=1)  # share of a tile shared with its neighbour


@dataclass(frozen=True)
class Prepared:
    """Model inputs for one frame, and what is needed to map their outputs back."""

    inputs: np.ndarray  # K x H x W x 3 uint8; K = 1 except in tile mode
    view: np.ndarray  # the frame as the model sees it (resized, unpadded), RGB uint8
    origins: tuple[tuple[int, int], ...]  # top-left (y, x) of each input inside `view` (tile) or of `view` in it
    frame_shape: tuple[int, int]


@dataclass(frozen=True)
class Combined:
    anomaly_map: np.ndarray  # covers `view`, same height and width
    view: np.ndarray
    score: float
    frame_scale: tuple[float, float]  # frame pixels per map pixel, (y, x)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    count = math.ceil((length - tile) / step) + 1
    # Spread the tiles evenly so the last one ends exactly at the border.
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def prepare(frame: np.ndarray, geometry: Geometry) -> Prepared:
    rgb = to_uint8_rgb(frame)
    shape = (rgb.shape[0], rgb.shape[1])
    h, w = geometry.height, geometry.width
    if geometry.mode == "squash":
        view = _resize(rgb, h, w)
        return Prepared(view[np.newaxis], view, ((0, 0),), shape)
    if geometry.mode == "letterbox":
        scale = min(h / shape[0], w / shape[1])
        vh, vw = max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))
        view = _resize(rgb, vh, vw)
        top, left = (h - vh) // 2, (w - vw) // 2
        padded = cv2.copyMakeBorder(view, top, h - vh - top, left, w - vw - left, cv2.BORDER_REPLICATE)
        return Prepared(padded[np.newaxis], view, ((top, left),), shape)
    vh = max(h, round(shape[0] * geometry.tile_scale))
    vw = max(w, round(shape[1] * geometry.tile_scale))
    view = _resize(rgb, vh, vw)
    origins = tuple(
        (y, x) for y in _tile_starts(vh, h, geometry.tile_overlap) for x in _tile_starts(vw, w, geometry.tile_overlap)
    )
    tiles = np.stack([view[y : y + h, x : x + w] for y, x in origins])
    return Prepared(tiles, view, origins, shape)


def combine(prepared: Prepared, maps: Sequence[np.ndarray], scores: Sequence[float], mode: GeometryMode) -> Combined:
    """One anomaly map over `prepared.view` and one image score from the model's per-input outputs."""
    vh, vw = prepared.view.shape[:2]
    frame_scale = (prepared.frame_shape[0] / vh, prepared.frame_shape[1] / vw)
    if mode == "squash":
        return Combined(maps[0], prepared.view, float(scores[0]), frame_scale)
    if mode == "letterbox":
        top, left = prepared.origins[0]
        inside = maps[0][top : top + vh, left : left + vw]
        whole_max = float(maps[0].max())
        # The graph's score is the map maximum times its reweighting factor; keep that factor, drop the pad.
        factor = float(scores[0]) / whole_max if whole_max > 0 else 1.0
        return Combined(inside, prepared.view, factor * float(inside.max()), frame_scale)
    stitched = np.zeros((vh, vw), np.float32)
    for (y, x), amap in zip(prepared.origins, maps, strict=True):
        region = stitched[y : y + amap.shape[0], x : x + amap.shape[1]]
        np.maximum(region, amap, out=region)
    return Combined(stitched, prepared.view, float(max(scores)), frame_scale)
