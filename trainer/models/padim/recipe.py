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
    # taps are resampled to the first one's grid. Taps 4 + 7 + 10 (all 232 channels) scored ELPV poly +0.47 and
    # mono -0.11 points against 4 + 10 on splits 0 and 1, for a 2.3 times larger graph.
    taps: tuple[int, ...]
    # The grid is averaged over grid_pool x grid_pool cells, PatchCore's stride 16, and each cell gets a Gaussian:
    # on ELPV splits 0 and 1 (100 channels) as accurate as the stride-8 grid (mono 96.21 against 96.17, poly
    # 91.23 against 91.21) with a quarter of the positions, so a quarter of the graph and of the head's work.
    grid_pool: int = Field(default=2, ge=1, le=4)
    # A seeded random subset of the taps' channels for the Gaussians (the paper: 100 of ResNet18's 448, for
    # memory); None: every channel. Lite0's taps have only 152, and on ELPV splits 0 and 1 a random 100 of them
    # lost 0.70 points on poly and gained 0.08 on mono against all (50: -1.68 and -0.14). The graph holds
    # positions x channels^2 floats: 23.7 MB for all 152 on the default 16 x 16 grid.
    channels: int | None = Field(default=None, ge=1)
    # Added to every covariance's diagonal, so it inverts with fewer images than channels. The paper's 0.01: on
    # ELPV splits 0 and 1, 0.1 lost 0.10 (mono) and 0.29 (poly) points, 0.001 0.00 and 0.19.
    ridge: float = Field(default=0.01, gt=0)
    # Gaussian smoothing of the map, in input pixels; PatchCore's 8. Against the paper's 4 on ELPV splits 0 and 1,
    # mono +0.09, poly -0.15 points.
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
        if self.channels is not None and self.channels > width:
            raise ValueError(f"channels: {self.channels} asked, but taps {list(self.taps)} have {width} in all")
        return self

    def tap_width(self) -> int:
        """Channels of all taps together, the set the subset is drawn from."""
        widths = block_channels(self.backbone)
        return sum(widths[t] for t in self.taps)

    def feature_width(self) -> int:
        """Channels each position's Gaussian is fitted on."""
        return self.tap_width() if self.channels is None else self.channels
