from __future__ import annotations

import numpy as np


def image_auroc(scores: np.ndarray, is_defect: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) identity, ties counted as half."""
    pos = scores[is_defect]
    neg = scores[~is_defect]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs both good and defective images")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def score_stats(scores: np.ndarray) -> dict[str, float | int]:
    return {
        "count": len(scores),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "p50": float(np.quantile(scores, 0.5)),
        "p99": float(np.quantile(scores, 0.99)),
        "max": float(scores.max()),
    }
