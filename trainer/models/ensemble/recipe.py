"""The ensemble's recipe: the input size, backbone and seed its members share, and each member's own recipe."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from trainer.backbones.efficientnet_lite import DEFAULT_BACKBONE, BackboneName
from trainer.models.fastflow import FastFlowRecipe
from trainer.models.patchcore import PatchCoreRecipe

# The keys every member takes from the ensemble: one backbone pass of one input size serves all of them.
SHARED_KEYS = ("input_size", "backbone")


class EnsembleRecipe(BaseModel):
    """Training recipe keys; unknown keys are rejected so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Declared before the members: their validators read these three.
    input_size: tuple[int, int] = (256, 256)
    # One backbone runs once per frame and feeds every member, so the members cannot differ in it.
    backbone: BackboneName = DEFAULT_BACKBONE
    # Each member's seed unless its own section sets one.
    seed: int = 0
    # The members, PatchCore and FastFlow: on ELPV splits 0-2 the mean of their normalised scores beat the best
    # single family on every split (README, Ensembles), and SimpleNet added nothing. Left out, a member takes its
    # own defaults; either way it takes input_size and backbone from here, and states them only to repeat them.
    patchcore: PatchCoreRecipe = Field(default=None, validate_default=True)
    fastflow: FastFlowRecipe = Field(default=None, validate_default=True)

    @field_validator("patchcore", "fastflow", mode="before")
    @classmethod
    def _inherit_shared(cls, value: Any, info: ValidationInfo) -> Any:
        """The member's raw keys with the shared ones filled in where it leaves them out, before the member
        validates, so its default taps follow the ensemble's backbone."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            return value
        inherited = {key: info.data[key] for key in (*SHARED_KEYS, "seed") if key in info.data}
        return {**inherited, **value}

    @field_validator("patchcore", "fastflow")
    @classmethod
    def _same_backbone_pass(cls, member: BaseModel, info: ValidationInfo) -> BaseModel:
        for key in SHARED_KEYS:
            ours, theirs = info.data.get(key), getattr(member, key)
            if ours is not None and theirs != ours:
                raise ValueError(
                    f"{info.field_name}.{key} is {theirs} but the ensemble's {key} is {ours}: the members share one "
                    f"backbone pass, so set {key} once, at the recipe's top level"
                )
        return member

    @property
    def taps(self) -> tuple[int, ...]:
        """The union of the members' taps: what the one backbone pass computes."""
        return tuple(sorted({*self.patchcore.taps, *self.fastflow.taps}))
