from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from trainer.metrics import (
    AUPRO_FPR_LIMIT,
    aupro,
    f1_max,
    image_auroc,
    pixel_auroc,
    pixel_auroc_and_aupro,
    region_weights,
    roc_curve,
    score_stats,
    trapezoid_to,
)

SEEDS = range(5)


def scores_and_labels(seed: int, n: int = 300, decimals: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping classes, rounded so that many scores tie (ties are where AUROC code usually goes wrong)."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    scores = np.round(rng.normal(labels * 1.0, 1.0), decimals).astype(np.float32)
    return scores, labels


def maps_and_masks(seed: int, n: int = 4, side: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Small maps with blobby masks (several regions, some touching diagonally) and quantized, tied scores."""
    rng = np.random.default_rng(seed)
    cross = ndimage.generate_binary_structure(2, 1)[None]  # grow within each image, never across images
    masks = ndimage.binary_dilation(rng.random((n, side, side)) < 0.06, structure=cross)
    masks[0] = False  # a defect-free image: its pixels count in the FPR only
    maps = np.round(rng.normal(masks * 1.5, 1.0), 1).astype(np.float32)
    return maps, masks


def slow_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = AUPRO_FPR_LIMIT) -> float:
    """The MVTec AD definition, step by step: one binary prediction per threshold, regions one at a time."""
    regions = []
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))  # 8-connected
        regions += [(i, labelled == k) for k in range(1, count + 1)]
    free = ~masks
    points = [(0.0, 0.0)]
    for threshold in sorted(set(maps.ravel().tolist()), reverse=True):
        predicted = maps >= threshold
        fpr = (predicted & free).sum() / free.sum()
        pro = np.mean([predicted[i][region].mean() for i, region in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


@pytest.mark.parametrize("seed", SEEDS)
def test_image_auroc_matches_sklearn_with_ties(seed: int) -> None:
    scores, labels = scores_and_labels(seed)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_image_auroc_separable_and_reversed() -> None:
    labels = np.array([False, False, True, True])
    assert image_auroc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert image_auroc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert image_auroc(np.ones(4), labels) == 0.5


def test_auroc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both"):
        image_auroc(np.array([1.0, 2.0]), np.array([False, False]))


@pytest.mark.parametrize("seed", SEEDS)
def test_roc_curve_matches_sklearn(seed: int) -> None:
    scores, labels = scores_and_labels(seed)
    fpr, tpr, thresholds = sk_roc_curve(labels, scores, drop_intermediate=False)
    curve = roc_curve(scores, labels)
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)
    np.testing.assert_allclose(curve.thresholds[1:], thresholds[1:])
    assert curve.thresholds[0] == np.inf


@pytest.mark.parametrize("seed", SEEDS)
def test_pixel_auroc_matches_sklearn(seed: int) -> None:
    maps, masks = maps_and_masks(seed, n=6, side=32)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_f1_max_matches_sklearn_precision_recall_curve(seed: int) -> None:
    scores, labels = scores_and_labels(seed)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    best = f1_max(scores, labels)
    assert best.f1 == pytest.approx(f1.max(), abs=1e-12)
    flagged = scores >= best.threshold
    tp = int((flagged & labels).sum())
    assert best.f1 == pytest.approx(2 * tp / (flagged.sum() + labels.sum()), abs=1e-12)
    assert best.threshold in thresholds[f1[:-1] == f1.max()]


def test_f1_max_of_a_separable_set_is_one_at_the_lowest_defect_score() -> None:
    best = f1_max(np.array([0.1, 0.3, 0.7, 0.9]), np.array([False, False, True, True]))
    assert (best.f1, best.threshold, best.precision, best.recall) == (1.0, 0.7, 1.0, 1.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_aupro_matches_slow_reference(seed: int) -> None:
    maps, masks = maps_and_masks(seed)
    assert aupro(maps, masks) == pytest.approx(slow_aupro(maps, masks), abs=1e-12)


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_at_other_limits_matches_slow_reference(limit: float) -> None:
    maps, masks = maps_and_masks(7)
    assert aupro(maps, masks, limit) == pytest.approx(slow_aupro(maps, masks, limit), abs=1e-12)


def test_aupro_of_a_perfect_detector_is_one() -> None:
    _, masks = maps_and_masks(0)
    assert aupro(masks.astype(np.float32), masks) == pytest.approx(1.0)


def test_aupro_of_a_constant_map() -> None:
    # One threshold flags every pixel: the curve is the straight line (0, 0) -> (1, 1), area 0.3² / 2 up to 0.3.
    _, masks = maps_and_masks(0)
    constant = np.full(masks.shape, 0.5, dtype=np.float32)
    expected = AUPRO_FPR_LIMIT / 2
    assert aupro(constant, masks) == pytest.approx(expected)
    assert slow_aupro(constant, masks) == pytest.approx(expected)


def test_aupro_weighs_regions_equally_not_pixels() -> None:
    # A big region found and a small one missed: PRO is 0.5 at zero FPR, while pixel recall would be 16/17.
    masks = np.zeros((1, 10, 10), dtype=bool)
    masks[0, 0:4, 0:4] = True
    masks[0, 8, 8] = True
    maps = np.zeros(masks.shape, dtype=np.float32)
    maps[0, 0:4, 0:4] = 1.0
    fpr_limit = 0.3
    assert aupro(maps, masks, fpr_limit) == pytest.approx(slow_aupro(maps, masks, fpr_limit))
    assert aupro(maps, masks, fpr_limit) < 0.6


def test_diagonal_neighbours_form_one_region() -> None:
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 3, 3] = True
    weights, regions = region_weights(masks)
    assert regions == 2
    assert weights[0, 0, 0] == weights[0, 1, 1] == 0.5
    assert weights[0, 3, 3] == 1.0


def test_aupro_needs_regions() -> None:
    with pytest.raises(ValueError, match="regions"):
        aupro(np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), bool))


def test_trapezoid_interpolates_at_the_limit() -> None:
    x, y = np.array([0.0, 0.2, 0.4]), np.array([0.0, 1.0, 1.0])
    # 0.5 * 0.2 * 1 up to 0.2, then 1.0 over 0.1.
    assert trapezoid_to(x, y, 0.3) == pytest.approx(0.2)
    assert trapezoid_to(x, y, 0.2) == pytest.approx(0.1)


def test_score_stats_is_unchanged() -> None:
    stats = score_stats(np.array([1.0, 2.0, 3.0]))
    assert stats == {
        "count": 3,
        "mean": 2.0,
        "std": pytest.approx(0.8165, abs=1e-4),
        "p50": 2.0,
        "p99": 2.98,
        "max": 3.0,
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_pixel_metrics_from_one_sort_match_the_separate_ones(seed: int) -> None:
    maps, masks = maps_and_masks(seed, n=6, side=32)
    assert pixel_auroc_and_aupro(maps, masks) == pytest.approx((pixel_auroc(maps, masks), aupro(maps, masks)))
