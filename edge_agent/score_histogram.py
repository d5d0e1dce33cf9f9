"""The histogram of one camera's scores on /metrics, with buckets where this model's scores of good parts lie."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence

import numpy as np

from edge_agent.metrics import HistogramSnapshot

# Where the reference (good parts the model never learned from) puts its scores: a shift of the bulk, or of either
# tail, moves counts between these buckets.
REFERENCE_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# Past the threshold, at 1.5, 2 and 3 times its distance from the reference median: how far the rejects lie.
BEYOND_THRESHOLD = (0.5, 1.0, 2.0)
# Quantile bounds are rounded to this many significant digits, to keep the `le` labels readable.
SIGNIFICANT_DIGITS = 6


def score_buckets(reference: Sequence[float], threshold: float) -> tuple[float, ...]:
    """Upper bucket bounds: the reference's quantiles, the threshold, and steps beyond it (+Inf is implied)."""
    quantiles = [float(f"{q:.{SIGNIFICANT_DIGITS}g}") for q in np.quantile(reference, REFERENCE_QUANTILES)]
    median = float(np.median(reference))
    beyond = [threshold + k * (threshold - median) for k in BEYOND_THRESHOLD] if threshold > median else []
    return tuple(sorted({*quantiles, threshold, *beyond}))


class ScoreHistogram:
    """Fed by the inspection thread, read by the metrics server's."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._lock = threading.Lock()
        self._counts = [0] * (len(bounds) + 1)
        self._total = 0.0

    def observe(self, score: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.bounds, score)] += 1  # le: a score on a bound is in its bucket
            self._total += score

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            return HistogramSnapshot(self.bounds, tuple(self._counts), self._total)
