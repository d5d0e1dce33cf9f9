from trainer.models.patchcore.model import PatchCore
from trainer.models.patchcore.recipe import PatchCoreRecipe

__all__ = ["PatchCore", "PatchCoreRecipe"]
