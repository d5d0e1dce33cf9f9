"""The accuracy guard: whether a reduced-precision bake follows torch closely enough to be written.

It judges the parity report, which bake measures on images the model never learned from (the validation goods
held out of training, plus `--defects` when given). A verdict flip counts only when torch's score lies outside a
margin around the threshold: a part that sits on the threshold is a coin toss in any precision, and counting
it would make the guard refuse or pass on noise. Too few images to judge is a refusal too, never a pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.bundle import Parity

PERCENT = 100.0
DROP_DIGITS = 9
FIX = "calibrate on more, representative good images with --calib DIR, or bake --precision fp32"


@dataclass(frozen=True)
class Guard:
    """How far a reduced-precision bake may drift from torch before bake refuses to write it."""

    max_auroc_drop: float = 0.5  # image AUROC points, validation goods against --defects images
    max_flip_rate: float = 0.01  # share of the images outside the margin whose verdict changes
    margin: float = 0.05  # around the threshold, as a share of it: flips of torch scores within it are not counted
    min_images: int = 64  # images never learned from that the guard needs to judge at all


# For benches that time or soak a bake, not judge it: parity is measured and recorded, and nothing is refused (a
# synthetic part's int8 bake may flip a verdict that a real part's would not). Accuracy is bench/precision.py's,
# with the default guard.
TIMING_GUARD = Guard(max_auroc_drop=PERCENT, max_flip_rate=1.0, min_images=0)


def too_few_images(images: int, defects: int, guard: Guard, precision: str) -> str | None:
    """The refusal for a parity set too small to judge; bake asks before it quantizes, and again on the report."""
    if images >= guard.min_images:
        return None
    return (
        f"{precision} bundle refused: the accuracy guard needs at least {guard.min_images} images the model never "
        f"learned from and has {images} ({images - defects} validation goods, {defects} --defects); pass --defects "
        "DIR, refit with more good images or a larger --holdout, or bake --precision fp32"
    )


def refusal(parity: Parity, guard: Guard, precision: str) -> str | None:
    """Why a `precision` bundle with this parity must not be written, in one line; None when it may be."""
    what = f"{precision} bundle refused"
    few = too_few_images(parity.images, parity.defect_images, guard, precision)
    if few is not None:
        return few
    judged = parity.images - (parity.near_threshold or 0)
    flips = parity.flips_outside_margin or 0
    if judged > 0 and flips / judged > guard.max_flip_rate:
        return (
            f"{what}: {flips} of {judged} verdicts flip against torch outside ±{guard.margin:.0%} of the threshold "
            f"({flips / judged:.1%}, bound {guard.max_flip_rate:.1%}); {FIX}"
        )
    if parity.auroc_reference is not None and parity.auroc_baked is not None:
        # Rounded, so a drop of exactly the bound is not refused for a float's last bit.
        drop = round(PERCENT * (parity.auroc_reference - parity.auroc_baked), DROP_DIGITS)
        if drop > guard.max_auroc_drop:
            return (
                f"{what}: image AUROC drops {drop:.2f} points against torch ({PERCENT * parity.auroc_reference:.2f} "
                f"-> {PERCENT * parity.auroc_baked:.2f}; bound {guard.max_auroc_drop} points); {FIX}"
            )
    return None
