"""The model registry: a name -> (module class, recipe class). Adding a model is one folder and one line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from trainer.models.ensemble import Ensemble, EnsembleRecipe
from trainer.models.fastflow import FastFlow, FastFlowRecipe
from trainer.models.fit_result import FitResult
from trainer.models.padim import PaDiM, PaDiMRecipe
from trainer.models.patchcore import PatchCore, PatchCoreRecipe
from trainer.models.simplenet import SimpleNet, SimpleNetRecipe


class RecipeFields(Protocol):
    """What `trainer fit` reads from every family's recipe."""

    input_size: tuple[int, int]
    seed: int


class Fittable(Protocol):
    """What `trainer fit` calls on every family's module."""

    def fit(
        self, train_images: np.ndarray, val_images: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> FitResult: ...


class LeaveOneOut(Protocol):
    """What the few-shot start (trainer/few_shot.py) calls on the families that learn without training (PatchCore,
    PaDiM): fit on every input, and predict each input as the fit without its group (the inputs of one good
    image) would."""

    def fit_leave_one_out(
        self, images: np.ndarray, groups: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> FitResult: ...


class HeldOutBlocks(Protocol):
    """The few-shot start with a single good image (PatchCore): fit on it, and score blocks of its patch grid
    against a model without each block."""

    def fit_held_out_blocks(
        self, images: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> tuple[dict[str, Any], torch.Tensor]: ...


@dataclass(frozen=True)
class ModelEntry:
    model: type[nn.Module]
    recipe: type[BaseModel]


REGISTRY: dict[str, ModelEntry] = {
    "patchcore": ModelEntry(PatchCore, PatchCoreRecipe),
    "fastflow": ModelEntry(FastFlow, FastFlowRecipe),
    "simplenet": ModelEntry(SimpleNet, SimpleNetRecipe),
    "padim": ModelEntry(PaDiM, PaDiMRecipe),
    "ensemble": ModelEntry(Ensemble, EnsembleRecipe),
}
