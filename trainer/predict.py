"""Scoring whole frames with a torch model through the shared input geometry, in batches of model inputs."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from edge_agent.geometry import Combined, Geometry, Prepared, combine, prepare
from edge_agent.imageio import ImageReadError, read_image
from trainer.acceleration import MIN_IMAGES_FOR_OPENVINO, openvino_compiled
from trainer.models.prediction import Prediction, TupleOutputs

log = logging.getLogger(__name__)

PREDICT_BATCH = 16
# Sizes named in the mixed-size warning; a camera mix rarely has more, and the line must stay readable.
MAX_SIZES_NAMED = 4
GEOMETRY_EFFECT = {
    "squash": "resized to the model input",
    "letterbox": "resized and padded to the model input",
    "tile": "scaled by tile_scale and cut into model-input tiles",
}


class CompiledModel(nn.Module):
    """A fitted model compiled whole by OpenVINO for the CPU at f32, called like the model (uint8 images ->
    Prediction). Its graph is the fp32 bake's, whose scores follow torch's to about 1e-6, and it runs several
    times faster than torch eager (PatchCore: 7.7 against 43 ms an image on 2 AMD EPYC cores, avx512_vnni)."""

    def __init__(self, compiled: Any) -> None:
        super().__init__()
        self._request = compiled.create_infer_request()

    def forward(self, image: torch.Tensor) -> Prediction:
        # One image per request: under the latency hint that is the fastest per image (PatchCore 7.7 ms against
        # 9.0 in batches of 32). The request reuses its output buffers, hence the copies.
        maps, scores = [], []
        for one in image.numpy():
            result = self._request.infer({0: one[np.newaxis]})
            maps.append(np.array(result[0]))
            scores.append(np.array(result[1]))
        return Prediction(torch.from_numpy(np.concatenate(maps)), torch.from_numpy(np.concatenate(scores)))


def scoring_model(model: nn.Module, geometry: Geometry, count: int) -> nn.Module:
    """What to score `count` model inputs with where speed matters more than being torch itself (fit's test
    metrics, `trainer eval`): the model compiled by OpenVINO when there are enough inputs to repay the compile's
    few seconds and it compiles, else the model. A bake's parity check judges against torch, never this."""
    if count < MIN_IMAGES_FOR_OPENVINO:
        return model
    example = np.zeros((1, geometry.height, geometry.width, 3), np.uint8)
    what = f"scoring with {type(model).__name__}"
    compiled = openvino_compiled(TupleOutputs(model).eval(), example, what, batch=1)  # CompiledModel sends one
    return model if compiled is None else CompiledModel(compiled)


def read_frames(paths: Iterable[Path]) -> tuple[list[np.ndarray], list[Path], list[Path]]:
    """Images as stored, the paths read, and the unreadable paths (skipped with a warning, never fatal)."""
    frames: list[np.ndarray] = []
    kept: list[Path] = []
    skipped: list[Path] = []
    for path in paths:
        try:
            frames.append(read_image(path))
            kept.append(path)
        except ImageReadError as exc:
            log.warning("skipping %s", exc)
            skipped.append(path)
    return frames, kept, skipped


def model_inputs(frames: Sequence[np.ndarray], geometry: Geometry) -> np.ndarray:
    """Every model input of every frame (tiles included), uint8 K x H x W x 3: what a model is fitted on."""
    if not frames:
        return np.zeros((0, geometry.height, geometry.width, 3), np.uint8)
    return np.concatenate([prepare(f, geometry).inputs for f in frames])


@torch.no_grad()
def predict(model: nn.Module, frames: Sequence[np.ndarray], geometry: Geometry) -> list[Combined]:
    """One combined map and score per frame, exactly as the agent computes them from the baked graph."""
    prepared: list[Prepared] = [prepare(f, geometry) for f in frames]
    inputs = np.concatenate([p.inputs for p in prepared]) if prepared else np.zeros((0, 1, 1, 3), np.uint8)
    maps: list[np.ndarray] = []
    scores: list[float] = []
    for start in range(0, len(inputs), PREDICT_BATCH):
        out = model(torch.from_numpy(inputs[start : start + PREDICT_BATCH]))
        maps.extend(out.anomaly_map[:, 0].float().numpy())
        scores.extend(out.score.float().numpy().tolist())
    return combine_frames(prepared, maps, scores, geometry)


def combine_frames(
    prepared: Sequence[Prepared], maps: Sequence[np.ndarray], scores: Sequence[float], geometry: Geometry
) -> list[Combined]:
    """Per frame, its inputs' maps and scores (consecutive in `maps` / `scores`) combined into one."""
    combined: list[Combined] = []
    offset = 0
    for p in prepared:
        k = len(p.inputs)
        combined.append(combine(p, maps[offset : offset + k], scores[offset : offset + k], geometry.mode))
        offset += k
    return combined


def predict_scores(model: nn.Module, frames: Sequence[np.ndarray], geometry: Geometry) -> np.ndarray:
    return np.array([c.score for c in predict(model, frames, geometry)], dtype=np.float32)


def on_grid(combined: Combined, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The view and its map resized to a fixed grid, so images of any size can be compared pixel by pixel."""
    if combined.view.shape[:2] == (height, width):
        return combined.view, combined.anomaly_map
    view = cv2.resize(combined.view, (width, height), interpolation=cv2.INTER_AREA)
    amap = cv2.resize(combined.anomaly_map, (width, height), interpolation=cv2.INTER_LINEAR)
    return view, amap


def listed(names: Sequence[str], limit: int) -> str:
    """Up to `limit` names, and how many more, so one log line stays readable for a large set."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def warn_mixed_sizes(shapes: Sequence[tuple[int, int]], what: str, geometry: Geometry, owner: str) -> None:
    """One warning when the images (height, width) are not all one size: each is mapped to the model input on
    its own, so a mix changes the scale a defect is seen at. `owner` says whose geometry: recipe's or bundle's."""
    counts = Counter(shapes)
    if len(counts) < 2:
        return
    ranked = [f"{w}x{h}" for (h, w), _ in counts.most_common()]
    (common_h, common_w), common_count = counts.most_common(1)[0]
    log.warning(
        "%d of %d %s are not %dx%d (sizes seen: %s); each is %s per the %s geometry (%s)",
        len(shapes) - common_count,
        len(shapes),
        what,
        common_w,
        common_h,
        listed(ranked, MAX_SIZES_NAMED),
        GEOMETRY_EFFECT[geometry.mode],
        owner,
        geometry.mode,
    )
