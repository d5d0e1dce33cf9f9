from trainer.models.patchcore.model import PatchCore, PatchCoreRecipe

__all__ = ["PatchCore", "PatchCoreRecipe"]
