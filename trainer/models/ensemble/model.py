"""An ensemble of model families on one backbone pass: PatchCore and FastFlow by default. Each member's score and
map are put on the scale of its own validation goods, z = (x - mean) / std with that member's validation score
statistics, and the ensemble's score and map are the means of its members' z (shifted by a constant, so scores
stay positive). On ELPV splits 0-2 this mean beat
the best single family on every split (README, Ensembles: mono +0.14, poly +0.75 AUROC points).

`forward` takes the raw uint8 N x H x W x 3 image and runs the backbone once, at the union of the members' taps
(Lite0: PatchCore's 4 and 10, FastFlow's 10 and 14), handing each member its own taps. The members borrow the
ensemble's backbone instead of holding one each, so the weights file and the baked graph hold it once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from trainer.backbones.efficientnet_lite import efficientnet_lite, lite_input
from trainer.models.ensemble.recipe import EnsembleRecipe
from trainer.models.fastflow import FastFlow
from trainer.models.fit_result import FitResult
from trainer.models.patchcore import PatchCore
from trainer.models.prediction import Prediction
from trainer.models.training import module_device

# Members in the order their scores are stacked; each is a recipe field of EnsembleRecipe and a submodule here.
MEMBERS = ("patchcore", "fastflow")
# Floor of a member's validation score spread: a member whose goods all score alike would otherwise divide by ~0.
MIN_SCORE_STD = 1e-6
STAT_DIGITS = 6
# Added to the mean z, score and map alike: the goods' scores land near 10 instead of 0, so every score stays
# positive, as the agent and bake assume of a score (score / threshold ratios, the parity's relative differences,
# the guard's margin as a share of the threshold). On ELPV mono split 0 the goods averaged 10.0 against a threshold
# of 13.4 (PatchCore's: 17.4 against 27.2). The ranking, and so the AUROC, is the measured mean z's.
GOODS_LEVEL = 10.0


class Member(Protocol):
    """What the ensemble calls on each member family's module."""

    backbone: nn.Module

    def predict_taps(self, taps: list[torch.Tensor], size: tuple[int, int]) -> Prediction: ...

    def fit(
        self, train_images: np.ndarray, val_images: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> FitResult: ...


def borrow_backbone(member: nn.Module, backbone: nn.Module) -> None:
    """Points `member.backbone` at `backbone` without registering it as the member's submodule: the member's code
    runs unchanged, while the ensemble's weights and graph hold the one backbone it owns."""
    del member.backbone  # nn.Module's delattr drops the member's own copy from its submodules
    object.__setattr__(member, "backbone", backbone)


class Ensemble(nn.Module):
    score_mean: torch.Tensor
    score_std: torch.Tensor

    def __init__(self, recipe: EnsembleRecipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.backbone = efficientnet_lite(recipe.backbone)
        self.backbone.requires_grad_(False)
        self.patchcore = PatchCore(recipe.patchcore)
        self.fastflow = FastFlow(recipe.fastflow)
        for name in MEMBERS:
            borrow_backbone(getattr(self, name), self.backbone)
        self.taps = recipe.taps
        # Each member's validation score statistics, set by fit: constants of the baked graph.
        self.register_buffer("score_mean", torch.zeros(len(MEMBERS)))
        self.register_buffer("score_std", torch.ones(len(MEMBERS)))
        self.eval()

    def members(self) -> list[Member]:
        return [getattr(self, name) for name in MEMBERS]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        keys = super().load_state_dict(state_dict, strict, assign)
        # Loading through the parent skips PatchCore's own load_state_dict, which rebuilds its search constants.
        self.patchcore.index_bank(self.patchcore.memory_bank())
        return keys

    def forward(self, image: torch.Tensor) -> Prediction:
        taps = dict(zip(self.taps, self.backbone.features(lite_input(image), self.taps), strict=True))
        size = (image.shape[1], image.shape[2])
        predictions = [
            member.predict_taps([taps[t] for t in getattr(self.recipe, name).taps], size)
            for name, member in zip(MEMBERS, self.members(), strict=True)
        ]
        return self.combine(predictions)

    def fit(
        self, train_images: np.ndarray, val_images: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> FitResult:
        """Fit every member on the training images (uint8 N x H x W x 3), each with its own fit, and set each one's
        normalisation from its scores of the validation images. No member learns from those, so the combined
        validation prediction, on which `trainer fit` calibrates the threshold, is out-of-sample too."""
        summary: dict[str, Any] = {}
        counted = [0]

        def share(count: int) -> None:
            """Every member extracts every image: each counts for its share, so the bar ends at its total."""
            before = counted[0] // len(MEMBERS)
            counted[0] += count
            if progress is not None:
                progress(counted[0] // len(MEMBERS) - before)

        validation: list[Prediction] = []
        for name, member in zip(MEMBERS, self.members(), strict=True):
            started = time.perf_counter()
            # A member fits where its own modules are (PatchCore: always the CPU), so the shared backbone goes there.
            self.backbone.to(module_device(getattr(self, name)))
            result = member.fit(train_images, val_images, share)
            validation.append(result.validation)
            summary[name] = {**result.summary, "fit_s": round(time.perf_counter() - started, 2)}
        self.backbone.to(module_device(self.fastflow))
        scores = torch.stack([p.score for p in validation])  # members x N
        self.score_mean = scores.mean(dim=1)
        # The population spread, as the manifests' validation_scores hold it: what the ensemble was measured with.
        self.score_std = scores.std(dim=1, correction=0).clamp_min(MIN_SCORE_STD)
        summary["normalisation"] = {
            name: {"mean": round(float(m), STAT_DIGITS), "std": round(float(s), STAT_DIGITS)}
            for name, m, s in zip(MEMBERS, self.score_mean, self.score_std, strict=True)
        }
        return FitResult(summary, self.combine(validation))

    def combine(self, predictions: list[Prediction]) -> Prediction:
        """The members' predictions (in MEMBERS order) as the ensemble's: the means of their z, plus GOODS_LEVEL."""
        mean, std = self.score_mean.view(-1, 1, 1, 1, 1), self.score_std.view(-1, 1, 1, 1, 1)
        maps = (torch.stack([p.anomaly_map for p in predictions]) - mean) / std
        scores = (torch.stack([p.score for p in predictions]) - mean.view(-1, 1)) / std.view(-1, 1)
        return Prediction(anomaly_map=maps.mean(dim=0) + GOODS_LEVEL, score=scores.mean(dim=0) + GOODS_LEVEL)
