"""The model registry: a name -> (module class, recipe class). Adding a model is one folder and one line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
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
