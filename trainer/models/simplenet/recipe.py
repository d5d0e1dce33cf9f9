"""SimpleNet's training recipe."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SimpleNetRecipe(BaseModel):
    """Training recipe keys; unknown keys are rejected so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: tuple[int, int] = (256, 256)
    taps: tuple[int, ...] = (4, 10)
    # Width of the linear feature adaptor's output; None keeps the backbone's feature width.
    adaptor_dim: int | None = Field(default=None, ge=1)
    discriminator_hidden: int = Field(default=512, ge=1)
    # Standard deviation of the Gaussian noise that turns adapted normal features into synthetic anomalies. The
    # head sees features standardized per channel, so this is a share of a channel's spread. The paper's 0.015
    # (on WideResNet-50 features of another scale) leaves Lite0's standardized features inseparable; on ELPV,
    # 0.25-0.4 learned fastest and scored best, and 0.4 held up on both cell types.
    noise_sigma: float = Field(default=0.4, gt=0)
    # The truncated L1 loss stops pushing once the discriminator scores a normal patch at or above
    # `margin_normal` and a synthetic anomaly at or below `margin_anomalous` (the paper's th+ and th-).
    margin_normal: float = 0.5
    margin_anomalous: float = -0.5
    # ELPV's image AUROC levels off after about 3 epochs of its ~400k training patches.
    epochs: int = Field(default=8, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    # Epochs without a better validation loss before training stops early.
    patience: int = Field(default=3, ge=1)
    # Patches per optimizer step; they are drawn from all training images at once.
    patch_batch: int = Field(default=8192, ge=1)
    blur_sigma: float = Field(default=4.0, ge=0)
    batch_size: int = Field(default=16, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _margins_ordered(self) -> SimpleNetRecipe:
        if self.margin_anomalous >= self.margin_normal:
            raise ValueError("margin_anomalous must be below margin_normal (the paper uses -0.5 and 0.5)")
        return self
