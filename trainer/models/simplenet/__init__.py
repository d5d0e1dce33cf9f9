from trainer.models.simplenet.model import SimpleNet
from trainer.models.simplenet.recipe import SimpleNetRecipe

__all__ = ["SimpleNet", "SimpleNetRecipe"]
