from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Inference:
    anomaly_map: np.ndarray  # H x W float32, model input resolution
    score: float


class Runtime(Protocol):
    """Runs the baked whole-pipeline graph on one uint8 H x W x C image of the manifest's input size."""

    def infer(self, image: np.ndarray) -> Inference: ...
