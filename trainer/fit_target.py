"""The threshold `trainer fit --threshold miss-rate|false-reject-rate --target-rate R` sets by consequence: the
option checks, the choice on the labelled test scores, the manifest's threshold_target block, and the line saying
where it landed. numpy only at run time, like trainer.targets: the manifest's block type comes from
trainer.bundle (which pulls torch) for type checking only, so `threshold_line` takes the block, not the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.data.dataset import DataError
from trainer.metrics import OperatingPoint
from trainer.targets import (
    MISS_RATE,
    RATE_EXAMPLE,
    SET_WORDS,
    TARGET_METHODS,
    ImageSet,
    OptionError,
    Target,
    check_rate,
    choose,
    coarse_warning,
    consequence,
)

if TYPE_CHECKING:
    from trainer.bundle import ThresholdTarget

TARGET_RATE_OPTION = "--target-rate"
NEEDS_DEFECTS = (
    "--threshold miss-rate needs labelled defective test images in the data set: add them under test/<defect type>/ "
    "(MVTec AD layout) or in defect folders beside good/"
)
# A threshold picked on the very images its figures are counted on sits exactly where those images allow, so
# new parts fare worse; the fit says so beside the figures.
IN_SAMPLE = "in-sample: expect worse on new parts"


@dataclass(frozen=True)
class LabelledScores:
    """Scores of the readable labelled test images, and which of them are defective."""

    scores: np.ndarray
    is_defect: np.ndarray

    @property
    def goods(self) -> np.ndarray:
        goods: np.ndarray = self.scores[~self.is_defect]
        return goods

    @property
    def defects(self) -> np.ndarray:
        defects: np.ndarray = self.scores[self.is_defect]
        return defects


def threshold_target(method: str, rate: float | None) -> Target | None:
    """The target of --threshold miss-rate / false-reject-rate, after checking that --threshold `method` and
    --target-rate `rate` go together (`method` is one fit knows); checked before any image is read."""
    if method not in TARGET_METHODS:
        if rate is not None:
            raise OptionError(
                f"{TARGET_RATE_OPTION} goes with --threshold {' or '.join(TARGET_METHODS)}, not --threshold {method}"
            )
        return None
    if rate is None:
        accepted = "defects let through" if method == MISS_RATE else "goods rejected"
        raise OptionError(
            f"--threshold {method} needs {TARGET_RATE_OPTION}, the largest share of {accepted} to accept "
            f"({RATE_EXAMPLE})"
        )
    check_rate(TARGET_RATE_OPTION, rate)
    return Target(method, rate)


def goods_for_target(test: LabelledScores, val_scores: np.ndarray) -> tuple[np.ndarray, ImageSet]:
    """Labelled good test images are the larger and more varied sample when the data set has them."""
    if test.goods.size:
        return test.goods, "test goods"
    return val_scores, "validation goods"


def target_threshold(
    target: Target, test: LabelledScores, val_scores: np.ndarray
) -> tuple[float, dict[str, Any], str | None]:
    """The threshold meeting `target`, the manifest's threshold_target block saying how it was chosen, and the
    warning to log when the rate is finer than the images can show (the caller logs it)."""
    if target.method == MISS_RATE and test.defects.size == 0:
        raise DataError(NEEDS_DEFECTS)  # the data set lists defects, but none of them could be read
    goods, goods_from = goods_for_target(test, val_scores)
    chosen = choose(target, goods, test.defects)
    point = chosen.point
    block = {
        "method": target.method,
        "target_rate": target.rate,
        "chosen_on": "test defects" if target.method == MISS_RATE else goods_from,
        "chosen_on_count": chosen.measured_on,
        "operating_point": {
            "defects_caught": point.defects_caught,
            "defects": point.defects,
            "goods_rejected": point.goods_rejected,
            "goods": point.goods,
            "goods_from": goods_from,
        },
    }
    return point.threshold, block, coarse_warning(chosen, TARGET_RATE_OPTION)


def threshold_line(threshold: float, target: ThresholdTarget | None) -> str | None:
    """Where a threshold set by consequence landed, on one line, from a manifest's threshold and threshold_target;
    None for the other methods (no threshold_target)."""
    if target is None:
        return None
    outcome = target.operating_point
    point = OperatingPoint(threshold, outcome.goods, outcome.goods_rejected, outcome.defects, outcome.defects_caught)
    # Goods come from the test images beside test defects unless the data set has none: only then is it news.
    from_validation = outcome.goods_from == "validation goods" and target.chosen_on != outcome.goods_from
    goods = f", goods counted on the {SET_WORDS[outcome.goods_from]}" if from_validation else ""
    return (
        f"threshold {threshold:.4g} ({Target(target.method, target.target_rate).label}): "
        f"{consequence(point)}, chosen on the {target.chosen_on_count} {SET_WORDS[target.chosen_on]}{goods} "
        f"({IN_SAMPLE})"
    )
