"""The few-shot start of `trainer fit`: a handful of good images, all learned from, the threshold by leave-one-out.

At a changeover only a few good parts exist. Holding 20% of them out leaves too few to calibrate on (8 goods: 2
scores) and starves the model (6 to learn from), so with FEW_SHOT_MAX_IMAGES or fewer the families that learn
without training (PatchCore, PaDiM) learn from every good image, and each good image is scored by the model fitted
without it (the models' `fit_leave_one_out`): n out-of-sample scores, which feed the threshold methods and the
manifest's validation statistics as held-out scores do. The trained families (SimpleNet, FastFlow) keep the
hold-out, and its refusal when the images are too few.

A single image has no other to leave out. PatchCore then scores each quadrant of the image against a bank of the
other three (`fit_held_out_blocks`), a stand-in for another part that only the image itself can give, so the
threshold is provisional and fit says so. PaDiM cannot: each position's Gaussian has one sample, and none to score
out-of-sample, so it refuses and asks for a second image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from torch import nn

from edge_agent.geometry import Geometry, prepare
from trainer.data.dataset import DataError
from trainer.models import REGISTRY, HeldOutBlocks, LeaveOneOut
from trainer.predict import combine_frames

log = logging.getLogger(__name__)

# The range, and where the default --holdout 0.2 first fits at all (8 goods: 6 learned from, 2 scores to
# calibrate on) while leave-one-out gives all 8 to both. Above it the hold-out grows, and a bundle keeps good
# images it never learned from, which bake's parity check and the agent's drift reference are measured on; a
# few-shot bundle has none (its bake takes --calib DIR).
FEW_SHOT_MAX_IMAGES = 8
LEAVE_ONE_OUT = "leave-one-out"
HELD_OUT_BLOCKS = "held-out blocks"


@dataclass(frozen=True)
class FewShotFit:
    summary: dict[str, Any]  # the model's fit summary with a `few_shot` block
    scores: np.ndarray  # out-of-sample scores of the good images (per image, or per block of the single image)


def applies(model_name: str, goods: int) -> bool:
    """Whether `trainer fit` takes the few-shot start: few goods, and a family that can score them out-of-sample."""
    return goods <= FEW_SHOT_MAX_IMAGES and hasattr(REGISTRY[model_name].model, "fit_leave_one_out")


def check_images(model_name: str, goods: int, folder: str) -> None:
    """Refuses what the few-shot start cannot calibrate: no image, or one with a family that cannot split it."""
    if goods == 0:
        raise DataError(f"no readable good image in {folder}; add images of good parts")
    if goods == 1 and not hasattr(REGISTRY[model_name].model, "fit_held_out_blocks"):
        raise DataError(
            f"1 readable good image in {folder}; {model_name} needs at least 2 to set a threshold (leave-one-out "
            "scores each good image with a model fitted on the others); add a good image, or fit --model "
            "patchcore, which starts from one"
        )


def _groups(counts: list[int]) -> np.ndarray:
    """The good image each model input came from (a tiled frame gives several inputs)."""
    return np.repeat(np.arange(len(counts)), counts)


def fit_few_shot(
    model: nn.Module, frames: list[np.ndarray], geometry: Geometry, progress: Callable[[int], None] | None = None
) -> FewShotFit:
    """Fit `model` on every frame; each frame's out-of-sample score, combined from its inputs as the agent would."""
    prepared = [prepare(f, geometry) for f in frames]
    inputs = np.concatenate([p.inputs for p in prepared])
    if len(frames) == 1:
        summary, block_scores = cast(HeldOutBlocks, model).fit_held_out_blocks(inputs, progress)
        # Block-major, each block of every input of the one frame; a frame scores as its worst input does.
        scores = block_scores.numpy().reshape(-1, len(inputs)).max(axis=1).astype(np.float32)
        method = HELD_OUT_BLOCKS
    else:
        groups = _groups([len(p.inputs) for p in prepared])
        result = cast(LeaveOneOut, model).fit_leave_one_out(inputs, groups, progress)
        maps, image_scores = list(result.validation.anomaly_map[:, 0].numpy()), result.validation.score.tolist()
        combined = combine_frames(prepared, maps, image_scores, geometry)
        scores = np.array([c.score for c in combined], dtype=np.float32)
        summary, method = result.summary, LEAVE_ONE_OUT
    return FewShotFit({**summary, "few_shot": {"goods": len(frames), "calibration": method}}, scores)


def announce(fitted: FewShotFit, holdout: float) -> None:
    """Says that fit ran in few-shot mode, and how far its threshold can be trusted."""
    goods = fitted.summary["few_shot"]["goods"]
    log.info(
        "few-shot mode: %d good image%s (at most %d), all learned from (--holdout %g not used); the threshold is set "
        "by %s on %d out-of-sample score%s",
        goods,
        "" if goods == 1 else "s",
        FEW_SHOT_MAX_IMAGES,
        holdout,
        fitted.summary["few_shot"]["calibration"],
        len(fitted.scores),
        "" if len(fitted.scores) == 1 else "s",
    )
    if goods == 1:
        log.warning(
            "the threshold is provisional: with 1 good image it comes from blocks of that image scored against the "
            "rest of it, not from other parts; fit again as soon as more good images exist"
        )
    else:
        log.info("fit again when more good images exist: the threshold rests on %d scores", len(fitted.scores))
