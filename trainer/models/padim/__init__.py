from trainer.models.padim.model import PaDiM
from trainer.models.padim.recipe import PaDiMRecipe

__all__ = ["PaDiM", "PaDiMRecipe"]
