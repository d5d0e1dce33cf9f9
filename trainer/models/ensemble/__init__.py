from trainer.models.ensemble.model import Ensemble
from trainer.models.ensemble.recipe import EnsembleRecipe

__all__ = ["Ensemble", "EnsembleRecipe"]
