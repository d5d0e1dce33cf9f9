from trainer.models.fastflow.model import FastFlow, FastFlowRecipe

__all__ = ["FastFlow", "FastFlowRecipe"]
