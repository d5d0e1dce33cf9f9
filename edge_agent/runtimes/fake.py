from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edge_agent.runtimes.base import Inference


class FakeRuntime:
    """Scores frames with a plain function, for unit tests of the loop."""

    def __init__(self, score: Callable[[np.ndarray], float]) -> None:
        self._score = score
        self.calls = 0

    def infer(self, image: np.ndarray) -> Inference:
        self.calls += 1
        return Inference(np.zeros(image.shape[:2], np.float32), self._score(image))
