"""SimpleNet's training recipe."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainer.backbones.efficientnet_lite import DEFAULT_BACKBONE, BackboneName, check_taps, with_default_taps

# Default taps: the last blocks of these backbone stages (stride 8 and stride 16), PatchCore's.
TAP_STAGES = (2, 4)


class SimpleNetRecipe(BaseModel):
    """Training recipe keys; unknown keys are rejected so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: tuple[int, int] = (256, 256)
    backbone: BackboneName = DEFAULT_BACKBONE
    taps: tuple[int, ...]  # left out: Lite0 blocks 4 and 10, Lite2 blocks 6 and 14
    # Width of the linear feature adaptor's output; None keeps the backbone's feature width.
    adaptor_dim: int | None = Field(default=None, ge=1)
    discriminator_hidden: int = Field(default=512, ge=1)
    # Standard deviation of the Gaussian noise that turns adapted normal features into synthetic anomalies. The
    # head sees features standardized per channel, so this is a share of a channel's spread. The paper's 0.015
    # belongs to WideResNet-50 features of another scale: on Lite0's, 0.015 and 0.05 left the loss stuck at 1
    # (noise and normal inseparable), 0.15 learned slowly and scored lower, 0.4 scored best on ELPV mono and
    # poly, and 0.6 cost mono most of a point.
    noise_sigma: float = Field(default=0.4, gt=0)
    # The truncated L1 loss stops pushing once the discriminator scores a normal patch at or above
    # `margin_normal` and a synthetic anomaly at or below `margin_anomalous` (the paper's th+ and th-).
    margin_normal: float = 0.5
    margin_anomalous: float = -0.5
    # The learning rate anneals to 0 over `epochs` (cosine). ELPV's image AUROC levels off after about 3 epochs
    # of its ~400k training patches; the annealed tail keeps it from wandering afterwards.
    epochs: int = Field(default=8, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)  # on the discriminator only
    # Epochs without a better validation loss before training stops early.
    patience: int = Field(default=3, ge=1)
    # Patches per optimizer step; they are drawn from all training images at once.
    patch_batch: int = Field(default=8192, ge=1)
    blur_sigma: float = Field(default=4.0, ge=0)
    batch_size: int = Field(default=16, ge=1)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _backbone_taps(cls, data: Any) -> Any:
        return with_default_taps(data, TAP_STAGES)

    _taps_in_backbone = field_validator("taps")(check_taps)

    @model_validator(mode="after")
    def _margins_ordered(self) -> SimpleNetRecipe:
        if self.margin_anomalous >= self.margin_normal:
            raise ValueError("margin_anomalous must be below margin_normal (the paper uses -0.5 and 0.5)")
        return self
