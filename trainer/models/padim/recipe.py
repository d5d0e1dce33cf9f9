"""PaDiM's training recipe: the keys a user sets in a recipe file, validated once at the edge (unknown keys fail)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainer.backbones.efficientnet_lite import (
    DEFAULT_BACKBONE,
    BackboneName,
    block_channels,
    check_taps,
    with_default_taps,
)

# Default taps: the last blocks of these backbone stages (stride 8 and stride 16), PatchCore's.
TAP_STAGES = (2, 4)


class PaDiMRecipe(BaseModel):
    """Training recipe keys; unknown keys are rejected so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: tuple[int, int] = (256, 256)
    backbone: BackboneName = DEFAULT_BACKBONE
    # Left out: the ends of the stride-8 and stride-16 stages (Lite0: 4 and 10, Lite2: 6 and 14); the coarser
    # taps are resampled to the first one's grid, whose positions each get a Gaussian.
    taps: tuple[int, ...]
    # The random subset of the taps' channels each Gaussian is fitted on (the paper: 100 of ResNet18's 448). The
    # baked graph holds positions x channels^2 floats: 41 MB at 100 channels on a 32 x 32 grid.
    channels: int = Field(default=100, ge=1)
    # Added to every covariance's diagonal (the paper's 0.01 I), so it inverts with fewer images than channels.
    ridge: float = Field(default=0.01, gt=0)
    # Gaussian smoothing of the map, in input pixels.
    blur_sigma: float = Field(default=8.0, ge=0)
    batch_size: int = Field(default=16, ge=1)
    seed: int = 0  # draws the channel subset

    @model_validator(mode="before")
    @classmethod
    def _backbone_taps(cls, data: Any) -> Any:
        return with_default_taps(data, TAP_STAGES)

    _taps_in_backbone = field_validator("taps")(check_taps)

    @model_validator(mode="after")
    def _channels_in_taps(self) -> PaDiMRecipe:
        width = self.tap_width()
        if self.channels > width:
            raise ValueError(f"channels: {self.channels} asked, but taps {list(self.taps)} have {width} in all")
        return self

    def tap_width(self) -> int:
        """Channels of all taps together, the set the subset is drawn from."""
        widths = block_channels(self.backbone)
        return sum(widths[t] for t in self.taps)
