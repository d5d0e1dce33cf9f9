"""Greedy k-center (farthest-point) coreset selection, as PatchCore uses it.

Each of the k steps is one fused pass over all candidates: distance to the newest centre, running-minimum
update and the arg-max for the next pick, split into chunks that run on all cores. Selection runs on a random
projection of the features, which keeps each pass cheap while preserving distances well enough to pick
well-spread centres.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
from numba import prange

PROJECTION_CHUNK = 65_536  # candidate rows projected at a time

# TBB (numba's default pool) warns and may misbehave when the process forks after using it, which OpenVINO and
# test runners do; the built-in work queue has no such problem, and selection is one parallel loop per step.
numba.config.THREADING_LAYER = "workqueue"  # type: ignore[attr-defined]  # set at run time by numba


PROGRESS_STEPS = 256  # picks between progress reports; each segment is one compiled call


@numba.njit(parallel=True, fastmath=True, cache=True)
def _greedy_kcenter(
    points: np.ndarray, nearest: np.ndarray, selected: np.ndarray, current: int, chunks: int
) -> int:  # pragma: no cover
    """Fills `selected` with the next len(selected) picks, starting at `current`, updating each candidate's
    squared distance to its nearest pick in `nearest`; returns the pick after the last."""
    n, d = points.shape
    chunk = (n + chunks - 1) // chunks
    best_value = np.empty(chunks, dtype=np.float32)
    best_index = np.empty(chunks, dtype=np.int64)
    for step in range(len(selected)):
        selected[step] = current
        centre = points[current].copy()
        for c in prange(chunks):
            lo = c * chunk
            hi = min(n, lo + chunk)
            value = np.float32(-1.0)
            index = lo
            for i in range(lo, hi):
                dist = np.float32(0.0)
                for j in range(d):
                    diff = points[i, j] - centre[j]
                    dist += diff * diff
                if dist < nearest[i]:
                    nearest[i] = dist
                if nearest[i] > value:
                    value = nearest[i]
                    index = i
            best_value[c] = value
            best_index[c] = index
        current = best_index[np.argmax(best_value)]
    return current


def greedy_coreset(
    features: np.ndarray,
    k: int,
    projection_dim: int,
    seed: int,
    rows: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Positions in `rows` (default: every row of `features`, N x D) of the `k` candidates greedy k-center picks
    on a random projection. Candidates are projected in chunks, so they are never copied at full width.
    `progress` is told the picks made, every PROGRESS_STEPS of them."""
    n, dim = (len(rows) if rows is not None else len(features)), features.shape[1]
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    if projection_dim < dim:
        # Gaussian JL projection; scale is irrelevant to the arg-max so it is left out.
        matrix = rng.standard_normal((dim, projection_dim)).astype(np.float32)
        points = np.empty((n, projection_dim), np.float32)
        for start in range(0, n, PROJECTION_CHUNK):
            stop = min(n, start + PROJECTION_CHUNK)
            part = features[rows[start:stop]] if rows is not None else features[start:stop]
            points[start:stop] = part @ matrix
    else:
        points = np.ascontiguousarray(features[rows] if rows is not None else features, dtype=np.float32)
    chunks = max(1, numba.get_num_threads() * 8)
    nearest = np.full(n, np.inf, dtype=np.float32)
    selected = np.empty(k, dtype=np.int64)
    current = int(rng.integers(n))
    for start in range(0, k, PROGRESS_STEPS):
        segment = selected[start : start + PROGRESS_STEPS]
        current = _greedy_kcenter(points, nearest, segment, current, chunks)
        if progress is not None:
            progress(len(segment))
    return selected
