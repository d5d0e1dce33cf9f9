"""The model registry: a name -> (module class, recipe class). Adding a model is one folder and one line."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel
from torch import nn

from trainer.models.fastflow import FastFlow, FastFlowRecipe
from trainer.models.padim import PaDiM, PaDiMRecipe
from trainer.models.patchcore import PatchCore, PatchCoreRecipe
from trainer.models.simplenet import SimpleNet, SimpleNetRecipe


@dataclass(frozen=True)
class ModelEntry:
    model: type[nn.Module]
    recipe: type[BaseModel]


REGISTRY: dict[str, ModelEntry] = {
    "patchcore": ModelEntry(PatchCore, PatchCoreRecipe),
    "fastflow": ModelEntry(FastFlow, FastFlowRecipe),
    "simplenet": ModelEntry(SimpleNet, SimpleNetRecipe),
    "padim": ModelEntry(PaDiM, PaDiMRecipe),
}
