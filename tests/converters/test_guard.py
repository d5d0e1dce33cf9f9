"""The accuracy guard on hand-built parity results, at and beyond each bound."""

from __future__ import annotations

import numpy as np
import pytest

from converters.guard import Guard, refusal
from converters.parity import parity_report
from edge_agent.bundle import Parity

THRESHOLD = 1.0
GUARD = Guard(max_auroc_drop=0.5, max_flip_rate=0.01, margin=0.05, min_images=64)


def _parity(images: int = 100, flips: int = 0, near: int = 0, defects: int = 0, **auroc: float) -> Parity:
    return Parity(
        images=images,
        score_abs_diff_max=0.0,
        score_abs_diff_mean=0.0,
        score_rel_diff_max=0.0,
        spearman=1.0,
        verdict_agreement=1.0 - flips / images,
        margin=GUARD.margin,
        near_threshold=near,
        flips_outside_margin=flips,
        map_abs_diff_max=0.0,
        map_abs_diff_mean=0.0,
        defect_images=defects,
        **auroc,
    )


def test_a_clean_parity_passes() -> None:
    assert refusal(_parity(), GUARD, "int8") is None


def test_too_few_images_is_a_refusal_not_a_pass() -> None:
    assert refusal(_parity(images=64), GUARD, "int8") is None
    reason = refusal(_parity(images=63, defects=3), GUARD, "int8")
    assert reason is not None
    assert reason.startswith("int8 bundle refused: the accuracy guard needs at least 64 images")
    assert "has 63 (60 validation goods, 3 --defects)" in reason


def test_flips_at_the_bound_pass_and_beyond_it_refuse() -> None:
    assert refusal(_parity(images=100, flips=1), GUARD, "int8") is None  # 1.0%, the bound itself
    reason = refusal(_parity(images=100, flips=2), GUARD, "fp16")
    assert reason is not None and reason.startswith("fp16 bundle refused: 2 of 100 verdicts flip")
    assert "outside ±5% of the threshold" in reason


def test_images_near_the_threshold_are_left_out_of_the_flip_rate() -> None:
    # 1 flip over the 100 images judged (200 less the 100 on the threshold): at the bound.
    assert refusal(_parity(images=200, flips=1, near=100), GUARD, "int8") is None
    assert refusal(_parity(images=200, flips=2, near=100), GUARD, "int8") is not None


def test_auroc_drop_at_the_bound_passes_and_beyond_it_refuses() -> None:
    assert refusal(_parity(defects=20, auroc_reference=0.95, auroc_baked=0.945), GUARD, "int8") is None
    reason = refusal(_parity(defects=20, auroc_reference=0.95, auroc_baked=0.9449), GUARD, "int8")
    assert reason is not None and "image AUROC drops 0.51 points" in reason


def test_the_report_counts_flips_outside_the_margin_only() -> None:
    reference = np.array([0.5, 0.98, 1.02, 1.5, 0.7, 1.3])
    baked = np.array([0.5, 1.01, 0.99, 0.9, 1.2, 1.3])  # two flips inside ±5%, two outside
    maps = np.zeros(6)
    report = parity_report(reference, baked, maps, maps, THRESHOLD, margin=0.05)
    assert report.near_threshold == 2
    assert report.flips_outside_margin == 2
    assert report.verdict_agreement == pytest.approx(2 / 6)
