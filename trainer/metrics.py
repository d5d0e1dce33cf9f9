"""Detection metrics, numpy only: image and pixel AUROC, ROC points, F1-max and AUPRO (MVTec AD).

Every curve comes from one sweep: sort the scores once (descending), then cumulative sums taken at the last
sample of each run of tied scores give the counts for "score >= threshold" at every distinct threshold. That is
O(n log n) time and O(n) memory, so pixel metrics over ~10M pixels need no pairwise comparison and no histogram
approximation.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# MVTec AD (Bergmann et al., IJCV 2021) integrates the PRO curve up to a false positive rate of 30%.
AUPRO_FPR_LIMIT = 0.3
# Pixels that touch diagonally belong to the same defect region, as in the MVTec AD evaluation code.
REGION_CONNECTIVITY = 8


@dataclass(frozen=True)
class RocCurve:
    """Points of the ROC curve, first (0, 0) at threshold +inf, then one per distinct score, descending."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


@dataclass(frozen=True)
class F1Max:
    """The best F1 over all thresholds, for the rule `score >= threshold` means defect."""

    f1: float
    threshold: float
    precision: float
    recall: float


@dataclass(frozen=True)
class _Sweep:
    thresholds: np.ndarray  # distinct scores, descending
    counts: np.ndarray  # number of samples with score >= thresholds[i]
    sums: list[np.ndarray]  # per weight: its total over samples with score >= thresholds[i]


def _sweep(scores: np.ndarray, *weights: np.ndarray) -> _Sweep:
    """Cumulative sums of each weight over samples sorted by descending score, taken at distinct thresholds."""
    flat = np.ravel(scores)
    if flat.size == 0:
        raise ValueError("no scores")
    if not np.isfinite(flat).all():
        raise ValueError("scores must be finite (NaN or inf found)")
    order = np.argsort(flat)[::-1]
    ordered = flat[order]
    # Ties must enter the curve together, so only the last position of each run of equal scores is a point.
    last_of_run = np.empty(ordered.size, dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=last_of_run[:-1])
    last_of_run[-1] = True
    sums = [np.cumsum(np.ravel(w)[order], dtype=np.float64)[last_of_run] for w in weights]
    return _Sweep(ordered[last_of_run], np.flatnonzero(last_of_run) + 1, sums)


def _class_counts(is_defect: np.ndarray) -> tuple[np.ndarray, int, int]:
    labels = np.ravel(np.asarray(is_defect, dtype=bool))
    positives = int(np.count_nonzero(labels))
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUROC needs both good and defective samples")
    return labels, positives, negatives


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1])) / 2)


def trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under the piecewise-linear curve (x non-decreasing) from x[0] to x_max, interpolating y at x_max."""
    inside = int(np.searchsorted(x, x_max, side="right"))  # x[:inside] <= x_max
    area = _trapezoid(x[:inside], y[:inside])
    if 0 < inside < len(x) and x[inside - 1] < x_max:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += float((x_max - x0) * (y0 + y_at) / 2)
    return area


def roc_curve(scores: np.ndarray, is_defect: np.ndarray) -> RocCurve:
    """ROC points at every distinct score (sklearn's roc_curve with drop_intermediate=False)."""
    labels, positives, negatives = _class_counts(is_defect)
    sweep = _sweep(scores, labels, ~labels)
    tps, fps = sweep.sums
    return RocCurve(
        fpr=np.concatenate([[0.0], fps / negatives]),
        tpr=np.concatenate([[0.0], tps / positives]),
        thresholds=np.concatenate([[np.inf], sweep.thresholds.astype(np.float64)]),
    )


def auroc(scores: np.ndarray, is_defect: np.ndarray) -> float:
    """Area under the ROC curve; equals the Mann-Whitney U statistic with ties counted as half."""
    curve = roc_curve(scores, is_defect)
    return _trapezoid(curve.fpr, curve.tpr)


def image_auroc(scores: np.ndarray, is_defect: np.ndarray) -> float:
    """Image-level AUROC: one score per image, `is_defect` its label."""
    return auroc(scores, is_defect)


def pixel_auroc(anomaly_maps: np.ndarray, masks: np.ndarray) -> float:
    """AUROC over every pixel of N x H x W maps against N x H x W boolean ground-truth masks."""
    return auroc(anomaly_maps, masks)


def f1_max(scores: np.ndarray, is_defect: np.ndarray) -> F1Max:
    """The threshold with the best F1 (defect is the positive class); the higher threshold wins a tie."""
    labels = np.ravel(np.asarray(is_defect, dtype=bool))
    positives = int(np.count_nonzero(labels))
    if positives == 0:
        raise ValueError("F1 needs defective samples")
    sweep = _sweep(scores, labels)
    (tps,) = sweep.sums
    flagged = sweep.counts
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (flagged + positives).
    f1 = 2 * tps / (flagged + positives)
    best = int(np.argmax(f1))
    return F1Max(
        f1=float(f1[best]),
        threshold=float(sweep.thresholds[best]),
        precision=float(tps[best] / flagged[best]),
        recall=float(tps[best] / positives),
    )


def region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per pixel 1 / (size of its ground-truth region), 0 outside regions; and the number of regions.

    Summed over the pixels above a threshold, this gives the sum of the regions' overlaps in one cumsum.
    """
    weights = np.zeros(masks.shape, dtype=np.float64)
    regions = 0
    for i, mask in enumerate(masks):
        count, labelled = cv2.connectedComponents(mask.astype(np.uint8), connectivity=REGION_CONNECTIVITY)
        if count <= 1:
            continue
        sizes = np.bincount(labelled.ravel(), minlength=count)
        per_label = np.zeros(count, dtype=np.float64)
        per_label[1:] = 1.0 / sizes[1:]  # label 0 is the background
        weights[i] = per_label[labelled]
        regions += count - 1
    return weights, regions


def _region_setup(anomaly_maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Boolean masks, per-pixel region weights, the number of regions and of defect-free pixels."""
    masks = np.asarray(masks, dtype=bool)
    if anomaly_maps.shape != masks.shape:
        raise ValueError(f"maps {anomaly_maps.shape} and masks {masks.shape} differ in shape")
    weights, regions = region_weights(masks)
    free_count = masks.size - int(np.count_nonzero(masks))
    if regions == 0 or free_count == 0:
        raise ValueError("AUPRO needs both defect regions and defect-free pixels")
    return masks, weights, regions, free_count


def _pro_points(false_positives: np.ndarray, overlap: np.ndarray, free_count: int, regions: int) -> np.ndarray:
    """(FPR, PRO) rows from the sweep's sums, starting at (0, 0)."""
    fpr = np.concatenate([[0.0], false_positives / free_count])
    pro = np.concatenate([[0.0], overlap / regions])
    return np.stack([fpr, pro])


def pro_curve(anomaly_maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct pixel score, from (0, 0) to (1, 1).

    PRO is the mean over all ground-truth regions of all images of the share of the region's pixels at or above
    the threshold; FPR is the share of all defect-free pixels (in every image) at or above it.
    """
    masks, weights, regions, free_count = _region_setup(anomaly_maps, masks)
    false_positives, overlap = _sweep(anomaly_maps, ~masks, weights).sums
    fpr, pro = _pro_points(false_positives, overlap, free_count, regions)
    return fpr, pro


def aupro(anomaly_maps: np.ndarray, masks: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """Area under the PRO curve up to `fpr_limit`, divided by `fpr_limit` so a perfect detector scores 1."""
    fpr, pro = pro_curve(anomaly_maps, masks)
    return trapezoid_to(fpr, pro, fpr_limit) / fpr_limit


def pixel_auroc_and_aupro(
    anomaly_maps: np.ndarray, masks: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT
) -> tuple[float, float]:
    """Both pixel metrics from a single sort, which is most of their cost on millions of pixels."""
    masks, weights, regions, free_count = _region_setup(anomaly_maps, masks)
    positives = masks.size - free_count
    sweep = _sweep(anomaly_maps, masks, ~masks, weights)
    true_positives, false_positives, overlap = sweep.sums
    roc_fpr = np.concatenate([[0.0], false_positives / free_count])
    roc_tpr = np.concatenate([[0.0], true_positives / positives])
    fpr, pro = _pro_points(false_positives, overlap, free_count, regions)
    return _trapezoid(roc_fpr, roc_tpr), trapezoid_to(fpr, pro, fpr_limit) / fpr_limit


def score_stats(scores: np.ndarray) -> dict[str, float | int]:
    return {
        "count": len(scores),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "p50": float(np.quantile(scores, 0.5)),
        "p99": float(np.quantile(scores, 0.99)),
        "max": float(scores.max()),
    }


# --- thresholds chosen by consequence -----------------------------------------------------------------------


@dataclass(frozen=True)
class OperatingPoint:
    """What one threshold does to a set of goods and a set of defects (`score >= threshold` rejects)."""

    threshold: float
    goods: int
    goods_rejected: int
    defects: int
    defects_caught: int


def operating_point(threshold: float, good_scores: np.ndarray, defect_scores: np.ndarray) -> OperatingPoint:
    return OperatingPoint(
        threshold=threshold,
        goods=int(np.size(good_scores)),
        goods_rejected=int(np.count_nonzero(np.asarray(good_scores) >= threshold)),
        defects=int(np.size(defect_scores)),
        defects_caught=int(np.count_nonzero(np.asarray(defect_scores) >= threshold)),
    )


def allowed_count(total: int, rate: float) -> int:
    """The most of `total` images whose share is at most `rate`: the largest k with k / total <= rate.

    Compared as the shares themselves rather than by flooring rate * total, whose rounding loses one image at
    some rates (0.29 * 100 is 28.999...), while 29 / 100 and 0.29 are the same float."""
    if total < 1:
        raise ValueError("no images to take a share of")
    return max(k for k in range(total + 1) if k / total <= rate)


def _ascending(scores: np.ndarray) -> np.ndarray:
    flat = np.ravel(np.asarray(scores))
    # The scores' own float type: the next float above a float32 score must be a float32, or numpy, comparing
    # float32 scores with a Python float in float32, rounds it back onto the score and rejects it after all.
    ordered = np.sort(flat if np.issubdtype(flat.dtype, np.floating) else flat.astype(np.float64))
    if ordered.size == 0:
        raise ValueError("no scores")
    if not np.isfinite(ordered).all():
        raise ValueError("scores must be finite (NaN or inf found)")
    return ordered


def miss_rate_threshold(defect_scores: np.ndarray, rate: float) -> float:
    """The highest threshold that lets at most `rate` of the defects escape (score below it).

    Escapes only grow with the threshold, so it is the defect score with the allowed number of defects below it
    in ascending order. Defects tied with it stay caught, since `score >= threshold` rejects them. A rate under
    1 / count allows no escape at all: the lowest defect score."""
    ascending = _ascending(defect_scores)
    return float(ascending[allowed_count(ascending.size, rate)])


def false_reject_threshold(good_scores: np.ndarray, rate: float) -> float:
    """The lowest threshold that rejects at most `rate` of the goods (score at or above it).

    Rejecting at most k goods needs a threshold above the (k+1)-th highest good score; the lowest such value is
    the next float above it in the scores' precision, so the goods tied with that score all pass together. A rate
    under 1 / count allows no reject at all: the next float above the highest good score."""
    descending = _ascending(good_scores)[::-1]
    return float(np.nextafter(descending[allowed_count(descending.size, rate)], np.inf))
