"""Thresholds set by consequence: the share of defects a line may let through (miss rate), or of goods it may
reject (false-reject rate). `trainer fit --threshold miss-rate|false-reject-rate` writes one into the bundle;
`trainer eval --target-*` lists what each target would do on the test images. numpy only, like the metrics, so
the report can use it without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from trainer import metrics

TargetMethod = Literal["miss-rate", "false-reject-rate"]
MISS_RATE: TargetMethod = "miss-rate"
FALSE_REJECT_RATE: TargetMethod = "false-reject-rate"
TARGET_METHODS: tuple[TargetMethod, ...] = get_args(TargetMethod)
# The image sets a target can be measured on; the manifest names the one it used.
ImageSet = Literal["test defects", "test goods", "validation goods"]
SET_WORDS: dict[ImageSet, str] = {
    "test defects": "labelled defective test images",
    "test goods": "labelled good test images",
    "validation goods": "held-out validation goods",
}
RATE_EXAMPLE = "0.01 is 1%"
# `trainer eval`'s option for each method, named in its errors and notes.
EVAL_OPTIONS: dict[TargetMethod, str] = {
    MISS_RATE: "--target-miss-rate",
    FALSE_REJECT_RATE: "--target-false-reject-rate",
}


class OptionError(Exception):
    """A command-line option out of range, or given with an option it does not go with."""


def check_rate(option: str, rate: float) -> None:
    # 0 would ask for a line that never errs, 1 for one that accepts anything: neither picks a threshold.
    if not 0 < rate < 1:
        raise OptionError(f"{option} {rate:g}: must be a share above 0 and below 1 ({RATE_EXAMPLE})")


def rate_text(rate: float) -> str:
    """A rate as the user typed it, in percent: 0.01 -> 1%, 0.005 -> 0.5%."""
    return f"{100 * rate:g}%"


@dataclass(frozen=True)
class Target:
    method: TargetMethod
    rate: float

    @property
    def label(self) -> str:
        return f"{self.method} ≤ {rate_text(self.rate)}"


@dataclass(frozen=True)
class TargetPoint:
    """A target, and the threshold meeting it on some scores with what that threshold does there."""

    target: Target
    point: metrics.OperatingPoint

    @property
    def measured_on(self) -> int:
        """The images the rate counts: the defects for a miss rate, the goods for a false-reject rate."""
        return self.point.defects if self.target.method == MISS_RATE else self.point.goods

    @property
    def coarse(self) -> bool:
        """The rate is under one image of the set, so only a point with no miss (or no reject) at all meets it."""
        return metrics.allowed_count(self.measured_on, self.target.rate) == 0


def choose(target: Target, good_scores: np.ndarray, defect_scores: np.ndarray) -> TargetPoint:
    """The threshold meeting `target` on these scores, and its operating point on both sets."""
    if target.method == MISS_RATE:
        threshold = metrics.miss_rate_threshold(defect_scores, target.rate)
    else:
        threshold = metrics.false_reject_threshold(good_scores, target.rate)
    return TargetPoint(target, metrics.operating_point(threshold, good_scores, defect_scores))


def coarse_warning(chosen: TargetPoint, option: str) -> str | None:
    """For a rate finer than one image of its set: that the strictest point was taken, and what would resolve it."""
    if not chosen.coarse:
        return None
    count, rate = chosen.measured_on, chosen.target.rate
    miss = chosen.target.method == MISS_RATE
    images = "defects" if miss else "goods"
    return (
        f"{option} {rate:g} is finer than {count} {images} can show (one image is {100 / count:.2g}%): the "
        f"threshold {'catches every defect' if miss else 'rejects no good'} here, the strictest point; "
        f"showing a rate of {rate_text(rate)} needs at least {math.ceil(1 / rate)} {images}"
    )


def consequence(point: metrics.OperatingPoint) -> str:
    """What a threshold does, in the line's words: defects caught and goods rejected."""
    return (
        f"{_counted('catches', point.defects_caught, point.defects, 'defects')}, "
        f"{_counted('rejects', point.goods_rejected, point.goods, 'goods')}"
    )


def _counted(verb: str, part: int, whole: int, images: str) -> str:
    if whole == 0:
        return f"no labelled {images} to count"
    return f"{verb} {part}/{whole} {images} ({100 * part / whole:.1f}%)"
