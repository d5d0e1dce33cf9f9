"""SimpleNet (Liu et al., CVPR 2023) on EfficientNet-Lite0: locally aware patch features from the frozen
backbone, a linear feature adaptor, and a small discriminator trained to tell adapted normal features from
copies perturbed with Gaussian noise (the paper's synthetic anomalies). At inference the discriminator's
verdict on each patch becomes the anomaly map, which is upsampled and smoothed; the image score is its maximum.

`forward` takes the raw uint8 N x H x W x 3 image, so normalization is inside the exported graph and the agent
feeds camera pixels straight in.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from tqdm import tqdm

from trainer.acceleration import batched_features
from trainer.backbones.efficientnet_lite import efficientnet_lite0, lite_input
from trainer.models.fit_result import FitResult
from trainer.models.prediction import Prediction
from trainer.models.simplenet.head import Head, truncated_l1
from trainer.models.smoothing import blur, gaussian_kernel
from trainer.models.training import BestWeights, module_device

NEIGHBOURHOOD = 3
# Patches scored at once outside training (validation loss, validation maps): bounds the activations' memory.
EVAL_PATCHES = 65_536


class SimpleNetRecipe(BaseModel):
    """Training recipe keys; unknown keys are rejected so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: tuple[int, int] = (256, 256)
    taps: tuple[int, ...] = (4, 10)
    # Width of the linear feature adaptor's output; None keeps the backbone's feature width.
    adaptor_dim: int | None = Field(default=None, ge=1)
    discriminator_hidden: int = Field(default=256, ge=1)
    # Standard deviation of the Gaussian noise that turns adapted normal features into synthetic anomalies.
    noise_sigma: float = Field(default=0.015, gt=0)
    # The truncated L1 loss stops pushing once the discriminator scores a normal patch at or above
    # `margin_normal` and a synthetic anomaly at or below `margin_anomalous` (the paper's th+ and th-).
    margin_normal: float = 0.5
    margin_anomalous: float = -0.5
    epochs: int = Field(default=40, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    # Epochs without a better validation loss before training stops early.
    patience: int = Field(default=5, ge=1)
    # Patches per optimizer step; they are drawn from all training images at once.
    patch_batch: int = Field(default=8192, ge=2)
    blur_sigma: float = Field(default=4.0, ge=0)
    batch_size: int = Field(default=16, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _margins_ordered(self) -> SimpleNetRecipe:
        if self.margin_anomalous >= self.margin_normal:
            raise ValueError("margin_anomalous must be below margin_normal (the paper uses -0.5 and 0.5)")
        return self


class SimpleNet(nn.Module):
    blur_kernel: torch.Tensor

    def __init__(self, recipe: SimpleNetRecipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.backbone = efficientnet_lite0()
        self.backbone.requires_grad_(False)
        self.feature_dim = sum(self.backbone.block_channels[t] for t in recipe.taps)
        self.head = Head(self.feature_dim, recipe.adaptor_dim or self.feature_dim, recipe.discriminator_hidden)
        self.register_buffer("blur_kernel", gaussian_kernel(recipe.blur_sigma))
        self.eval()

    def train(self, mode: bool = True) -> SimpleNet:
        """Only the head ever trains: the frozen backbone stays in eval mode, so its BatchNorm statistics hold."""
        super().train(mode)
        self.backbone.eval()
        return self

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 -> locally aware patch features N x D x h x w at the first tap's stride: each tap
        averaged over its 3 x 3 neighbourhood, the deeper taps resampled to the first tap's grid."""
        taps = self.backbone.features(lite_input(image), self.recipe.taps)
        pooled = [F.avg_pool2d(t, NEIGHBOURHOOD, stride=1, padding=NEIGHBOURHOOD // 2) for t in taps]
        size = pooled[0].shape[-2:]
        resized = [pooled[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled[1:]]
        return torch.cat(resized, dim=1)

    def forward(self, image: torch.Tensor) -> Prediction:
        return self._predict(self.embed(image), (image.shape[1], image.shape[2]))

    def _predict(self, feats: torch.Tensor, size: tuple[int, int]) -> Prediction:
        n, d, h, w = feats.shape
        patches = feats.permute(0, 2, 3, 1).reshape(-1, d)
        amap = self.head.anomaly(patches).reshape(n, 1, h, w)
        amap = F.interpolate(amap, size=size, mode="bilinear", align_corners=False)
        amap = blur(amap, self.blur_kernel)
        return Prediction(anomaly_map=amap, score=amap.amax(dim=(1, 2, 3)))
