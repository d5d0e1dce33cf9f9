from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from trainer.metrics import (
    AUPRO_FPR_LIMIT,
    allowed_count,
    aupro,
    f1_max,
    false_reject_threshold,
    image_auroc,
    miss_rate_threshold,
    operating_point,
    pixel_auroc,
    pixel_auroc_and_aupro,
    region_weights,
    roc_curve,
    score_stats,
    trapezoid_to,
)
from trainer.targets import FALSE_REJECT_RATE, MISS_RATE, Target, choose, coarse_warning

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


def test_f1_max_of_an_inverted_set_is_the_reject_everything_point() -> None:
    # Every defect scores below every good image. Thresholds are the observed scores and `>=` flags: down to the
    # lowest good score (0.6) no defect is flagged (F1 = 0); at 0.2, 5 flagged of which 1 defect: 2/(5+2) = 2/7;
    # at 0.1 everything is flagged: precision 2/6, recall 1, F1 = 2 * 2 / (6 + 2) = 0.5, the best.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    labels = np.array([False, False, False, False, True, True])
    best = f1_max(scores, labels)
    assert best.f1 == pytest.approx(0.5)
    assert best.threshold == 0.1
    assert best.precision == pytest.approx(2 / 6)
    assert best.recall == 1.0
    # Larger: D defects below N - D goods gives 2D / (N + D), whatever the scores are.
    rng = np.random.default_rng(0)
    goods, defects = rng.uniform(5, 6, 40), rng.uniform(0, 1, 10)
    best = f1_max(np.concatenate([goods, defects]), np.repeat([False, True], [40, 10]))
    assert best.f1 == pytest.approx(2 * 10 / (50 + 10))
    assert best.threshold == defects.min()


def test_f1_max_of_a_small_mixed_set_worked_by_hand() -> None:
    # Scores (D = defect, G = good), descending: D 0.9, G 0.8, D 0.7, D 0.4, G 0.2; 3 defects.
    # F1 = 2TP / (flagged + defects) at each threshold:
    #   >= 0.9: 2*1/(1+3) = 0.5;  >= 0.8: 2*1/(2+3) = 0.4;  >= 0.7: 2*2/(3+3) = 0.667;
    #   >= 0.4: 2*3/(4+3) = 6/7 = 0.857 (best: precision 3/4, recall 1);  >= 0.2: 2*3/(5+3) = 0.75.
    scores = np.array([0.2, 0.7, 0.9, 0.4, 0.8])
    labels = np.array([False, True, True, True, False])
    best = f1_max(scores, labels)
    assert best.f1 == pytest.approx(6 / 7)
    assert best.threshold == 0.4
    assert best.precision == pytest.approx(3 / 4)
    assert best.recall == 1.0


def test_f1_max_counts_tied_scores_together() -> None:
    # D 0.5 and G 0.5 tie, then G 0.2; 1 defect. A threshold of 0.5 flags both tied images: F1 = 2/(2+1) = 2/3.
    # Taking the defect alone first (F1 = 1) would be a threshold no rule `score >= t` can produce.
    # At 0.2: 2*1/(3+1) = 0.5. So 2/3 at 0.5, precision 1/2.
    best = f1_max(np.array([0.5, 0.5, 0.2]), np.array([True, False, False]))
    assert best.f1 == pytest.approx(2 / 3)
    assert (best.threshold, best.precision, best.recall) == (0.5, 0.5, 1.0)


def test_f1_max_tie_in_f1_goes_to_the_higher_threshold() -> None:
    # D 0.9, G 0.8, G 0.7, D 0.6; 2 defects. >= 0.9: 2/(1+2) = 2/3; >= 0.8: 2/4; >= 0.7: 2/5;
    # >= 0.6: 4/(4+2) = 2/3 again. The documented rule keeps the higher threshold, 0.9 (precision 1, recall 1/2).
    best = f1_max(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, False, True]))
    assert best.f1 == pytest.approx(2 / 3)
    assert (best.threshold, best.precision, best.recall) == (0.9, 1.0, 0.5)


def _two_tiny_maps() -> tuple[np.ndarray, np.ndarray]:
    maps = np.array([[[0.9, 0.2], [0.4, 0.1]], [[0.4, 0.5], [0.3, 0.05]]], dtype=np.float32)
    masks = np.array([[[1, 0], [1, 0]], [[0, 0], [1, 0]]], dtype=bool)
    return maps, masks


def test_pixel_auroc_of_two_tiny_maps_worked_by_hand() -> None:
    # Defect pixels (pooled over both maps): 0.9, 0.4, 0.3. Good pixels: 0.2, 0.1, 0.4, 0.5, 0.05. 3 x 5 = 15 pairs.
    #   0.9 beats all 5 goods                                  -> 5
    #   0.4 beats 0.2, 0.1, 0.05, ties 0.4 (1/2), loses to 0.5 -> 3.5
    #   0.3 beats 0.2, 0.1, 0.05, loses to 0.4 and 0.5         -> 3
    # AUROC = 11.5 / 15 = 23/30. (Averaging per map instead would give (1 + 1/3) / 2 = 2/3.)
    maps, masks = _two_tiny_maps()
    assert pixel_auroc(maps, masks) == pytest.approx(23 / 30, abs=1e-12)
    assert pixel_auroc_and_aupro(maps, masks)[0] == pytest.approx(23 / 30, abs=1e-12)


def test_pixel_auroc_of_a_separating_and_an_inverted_map() -> None:
    _, masks = maps_and_masks(3, n=3, side=16)
    rng = np.random.default_rng(3)
    low, high = rng.uniform(0, 1, masks.shape), rng.uniform(2, 3, masks.shape)
    assert pixel_auroc(np.where(masks, high, low), masks) == 1.0
    assert pixel_auroc(np.where(masks, low, high), masks) == 0.0


def test_aupro_of_an_inverted_detector_is_zero() -> None:
    # Every defect-free pixel scores above every defect pixel, so the PRO stays 0 until all defect-free pixels are
    # flagged (FPR = 1), far past the 0.3 limit: the area up to 0.3 is 0.
    _, masks = maps_and_masks(1, n=4, side=16)
    rng = np.random.default_rng(1)
    inverted = np.where(masks, rng.uniform(0, 1, masks.shape), rng.uniform(2, 3, masks.shape)).astype(np.float32)
    assert aupro(inverted, masks) == pytest.approx(0.0, abs=1e-12)
    assert aupro((~masks).astype(np.float32), masks) == pytest.approx(0.0, abs=1e-12)
    assert pixel_auroc_and_aupro(inverted, masks) == pytest.approx((0.0, 0.0), abs=1e-12)


def test_aupro_of_a_one_row_map_worked_by_hand() -> None:
    # One image of 1 x 13 pixels. Region A = columns 0-1 (scores 0.9, 0.5), region B = column 12 (score 0.0),
    # apart, so two regions. The 10 defect-free pixels score 0.8, 0.4 and eight times 0.0.
    # Thresholds, descending -> (FPR, PRO = mean over regions of the share flagged):
    #   start (0, 0); 0.9 -> (0, 0.25); 0.8 -> (0.1, 0.25); 0.5 -> (0.1, 0.5); 0.4 -> (0.2, 0.5);
    #   0.0 -> (1.0, 1.0) (B ties with eight good pixels, so they enter together).
    # Area up to FPR 0.3: 0.1 * 0.25 + 0.1 * 0.5 + the trapezoid from (0.2, 0.5) to 0.3, where the line to
    # (1, 1) is at 0.5 + 0.5 * 0.1 / 0.8 = 0.5625: 0.1 * (0.5 + 0.5625) / 2 = 0.053125. Sum 0.128125, / 0.3.
    # (Pixel-weighted, as a TPR, the first step would be 1/3, not 0.25.)
    masks = np.zeros((1, 1, 13), dtype=bool)
    masks[0, 0, [0, 1, 12]] = True
    maps = np.zeros(masks.shape, dtype=np.float32)
    maps[0, 0, :4] = [0.9, 0.5, 0.8, 0.4]
    expected = (0.025 + 0.05 + 0.053125) / 0.3
    assert aupro(maps, masks) == pytest.approx(expected, abs=1e-6)
    assert slow_aupro(maps, masks) == pytest.approx(expected, abs=1e-6)
    assert pixel_auroc_and_aupro(maps, masks)[1] == pytest.approx(expected, abs=1e-6)


# --- thresholds chosen by consequence -----------------------------------------------------------------------

# Five defect scores with a three-way tie at 0.3, and four good scores with a two-way tie at 0.5.
TIED_DEFECTS = np.array([0.9, 0.3, 0.1, 0.3, 0.3])
TIED_GOODS = np.array([0.5, 0.1, 0.8, 0.5])


def escapes(defects: np.ndarray, threshold: float) -> int:
    return int((defects < threshold).sum())


def rejects(goods: np.ndarray, threshold: float) -> int:
    return int((goods >= threshold).sum())


def test_allowed_count_compares_shares_not_a_rounded_product() -> None:
    # 0.29 * 100 is 28.999999999999996 in floats; 29 / 100 is the float 0.29 itself.
    assert allowed_count(100, 0.29) == 29
    assert allowed_count(100, 0.07) == 7
    assert allowed_count(3, 0.5) == 1
    assert allowed_count(4, 0.5) == 2
    assert allowed_count(10, 0.05) == 0
    with pytest.raises(ValueError, match="no images"):
        allowed_count(0, 0.5)


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        # Ascending: 0.1, 0.3, 0.3, 0.3, 0.9. The allowed escapes k pick the (k+1)-th lowest score.
        (0.1, 0.1),  # k = 0: every defect caught
        (0.2, 0.3),  # k = 1: only 0.1 escapes; the three tied at 0.3 are caught (score >= threshold)
        (0.4, 0.3),  # k = 2: still 0.3, since any higher threshold lets all three tied 0.3s escape (4 in all)
        (0.6, 0.3),  # k = 3: a threshold above 0.3 lets 4 escape, so 0.3 again
        (0.8, 0.9),  # k = 4: up to the highest defect
    ],
)
def test_miss_rate_threshold_with_ties(rate: float, expected: float) -> None:
    threshold = miss_rate_threshold(TIED_DEFECTS, rate)
    assert threshold == expected
    assert escapes(TIED_DEFECTS, threshold) <= allowed_count(5, rate)
    # The highest: the next float up already lets too many escape.
    assert escapes(TIED_DEFECTS, np.nextafter(threshold, np.inf)) > allowed_count(5, rate)


@pytest.mark.parametrize(
    ("rate", "above", "rejected"),
    [
        # Descending: 0.8, 0.5, 0.5, 0.1. Rejecting at most k goods needs a threshold above the (k+1)-th highest.
        (0.1, 0.8, 0),  # k = 0: above the highest good
        (0.25, 0.5, 1),  # k = 1: just above the tied 0.5s, rejecting only 0.8
        (0.5, 0.5, 1),  # k = 2: the tie forbids rejecting exactly 2, so still just above 0.5
        (0.75, 0.1, 3),  # k = 3: just above 0.1
    ],
)
def test_false_reject_threshold_with_ties(rate: float, above: float, rejected: int) -> None:
    threshold = false_reject_threshold(TIED_GOODS, rate)
    assert threshold == np.nextafter(above, np.inf)
    assert rejects(TIED_GOODS, threshold) == rejected
    # The lowest: the float below it (the score itself) rejects too many.
    assert rejects(TIED_GOODS, np.nextafter(threshold, -np.inf)) > allowed_count(4, rate)


def test_thresholds_of_all_equal_scores() -> None:
    equal = np.full(6, 2.5, dtype=np.float32)
    for rate in (0.01, 0.5, 0.99):
        assert miss_rate_threshold(equal, rate) == 2.5  # all caught; any higher and all six escape
        # None rejected; 2.5 rejects all. The next float32 up, since the scores are float32.
        assert false_reject_threshold(equal, rate) == np.nextafter(np.float32(2.5), np.float32(np.inf))


def test_thresholds_of_float32_scores_are_exact() -> None:
    # float32 scores, as models give them: the threshold just above one must not swallow the next float32 up.
    score = np.float32(1.1)
    goods = np.array([score, np.nextafter(score, np.float32(np.inf))], dtype=np.float32)
    threshold = false_reject_threshold(goods, 0.5)
    assert rejects(goods, threshold) == 1 and rejects(goods.astype(np.float64), threshold) == 1


def test_thresholds_do_not_need_sorted_input() -> None:
    rng = np.random.default_rng(0)
    shuffled_defects, shuffled_goods = rng.permutation(TIED_DEFECTS), rng.permutation(TIED_GOODS)
    assert miss_rate_threshold(shuffled_defects, 0.4) == miss_rate_threshold(np.sort(TIED_DEFECTS), 0.4)
    assert false_reject_threshold(shuffled_goods, 0.5) == false_reject_threshold(np.sort(TIED_GOODS), 0.5)


@pytest.mark.parametrize("seed", SEEDS)
def test_target_thresholds_are_the_extremes_that_meet_the_rate(seed: int) -> None:
    # Rounded scores tie often. Every observed score and the floats either side of it are candidate thresholds;
    # the chosen one must meet the rate, and no candidate beyond it (higher for misses, lower for rejects) may.
    scores, labels = scores_and_labels(seed, n=80)
    goods, defects = scores[~labels].astype(np.float64), scores[labels].astype(np.float64)
    values = np.unique(scores.astype(np.float64))
    candidates = np.concatenate([values, np.nextafter(values, np.inf), np.nextafter(values, -np.inf)])
    for rate in (0.01, 0.05, 0.1, 0.33, 0.5):
        miss = miss_rate_threshold(defects, rate)
        meets = [t for t in candidates if escapes(defects, t) <= allowed_count(defects.size, rate)]
        assert miss == max(meets)
        reject = false_reject_threshold(goods, rate)
        meets = [t for t in candidates if rejects(goods, t) <= allowed_count(goods.size, rate)]
        assert reject == min(meets)


def test_a_rate_finer_than_one_image_takes_the_strictest_point_and_says_so() -> None:
    goods, defects = np.array([0.2, 0.4, 0.6]), np.array([0.5, 0.7, 0.9, 0.95])
    missed = choose(Target(MISS_RATE, 0.001), goods, defects)
    assert missed.point.threshold == 0.5 and missed.point.defects_caught == 4 and missed.coarse
    assert coarse_warning(missed, "--target-rate") == (
        "--target-rate 0.001 is finer than 4 defects can show (one image is 25%): the threshold catches every "
        "defect here, the strictest point; showing a rate of 0.1% needs at least 1000 defects"
    )
    rejected = choose(Target(FALSE_REJECT_RATE, 0.001), goods, defects)
    assert rejected.point.threshold == np.nextafter(0.6, np.inf) and rejected.point.goods_rejected == 0
    assert "rejects no good here" in (coarse_warning(rejected, "--target-rate") or "")
    fine = choose(Target(MISS_RATE, 0.25), goods, defects)
    assert not fine.coarse and coarse_warning(fine, "--target-rate") is None
    assert (fine.point.threshold, fine.point.defects_caught) == (0.7, 3)


def test_operating_point_counts_with_score_at_threshold_rejected() -> None:
    point = operating_point(0.5, np.array([0.1, 0.5, 0.6]), np.array([0.4, 0.5, 0.9]))
    assert (point.goods, point.goods_rejected, point.defects, point.defects_caught) == (3, 2, 3, 2)


def test_target_thresholds_refuse_empty_and_non_finite_scores() -> None:
    with pytest.raises(ValueError, match="no scores"):
        miss_rate_threshold(np.array([]), 0.1)
    with pytest.raises(ValueError, match="finite"):
        false_reject_threshold(np.array([0.1, np.nan]), 0.1)
