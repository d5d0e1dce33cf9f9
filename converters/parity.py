"""How closely a baked model follows the torch model it came from, on the same images."""

from __future__ import annotations

import numpy as np

from edge_agent.bundle import Parity

EPS = 1e-12


def ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    out = np.empty(len(values), dtype=np.float64)
    out[order] = np.arange(len(values))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return 1.0
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 1.0
    return float(np.corrcoef(ra, rb)[0, 1])


def parity_report(
    ref_scores: np.ndarray, scores: np.ndarray, ref_maps: np.ndarray, maps: np.ndarray, threshold: float, margin: float
) -> Parity:
    """`margin` is a share of the threshold: torch scores that close to it are counted apart (see guard.py)."""
    diff = np.abs(ref_scores - scores)
    map_diff = np.abs(ref_maps - maps)
    flipped = (ref_scores >= threshold) != (scores >= threshold)
    near = np.abs(ref_scores - threshold) <= margin * abs(threshold)
    return Parity(
        images=len(scores),
        score_abs_diff_max=float(diff.max()),
        score_abs_diff_mean=float(diff.mean()),
        score_rel_diff_max=float((diff / np.maximum(np.abs(ref_scores), EPS)).max()),
        spearman=spearman(ref_scores, scores),
        verdict_agreement=float(1.0 - flipped.mean()),
        margin=margin,
        near_threshold=int(near.sum()),
        flips_outside_margin=int((flipped & ~near).sum()),
        map_abs_diff_max=float(map_diff.max()),
        map_abs_diff_mean=float(map_diff.mean()),
    )
