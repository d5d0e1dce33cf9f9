from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge_agent.geometry import Combined, Geometry, combine, prepare


@dataclass(frozen=True)
class Inference:
    anomaly_map: np.ndarray  # H x W float32, model input resolution
    score: float


class Runtime(Protocol):
    """Runs the baked whole-pipeline graph on one uint8 H x W x C image of the manifest's input size."""

    def infer(self, image: np.ndarray) -> Inference: ...


def infer_frame(runtime: Runtime, frame: np.ndarray, geometry: Geometry) -> Combined:
    """A whole frame through `runtime`: its model inputs under `geometry`, then their outputs combined."""
    prepared = prepare(frame, geometry)
    outputs = [runtime.infer(x) for x in prepared.inputs]
    return combine(prepared, [o.anomaly_map for o in outputs], [o.score for o in outputs], geometry.mode)
