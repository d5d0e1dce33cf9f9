"""PatchCore (Roth et al., CVPR 2022) on EfficientNet-Lite0: locally aware patch features, a greedy coreset
memory bank, nearest-neighbour patch scores, and a smoothed anomaly map whose maximum is the image score.

`forward` takes the raw uint8 N x H x W x 3 image, so normalization is inside the exported graph and the agent
feeds camera pixels straight in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from trainer.backbones.efficientnet_lite import efficientnet_lite0
from trainer.models.patchcore.coreset import greedy_coreset
from trainer.models.prediction import Prediction

# Lite0 was trained on inputs scaled to [-1, 1].
LITE_MEAN = 127.0
LITE_STD = 128.0
NEIGHBOURHOOD = 3


class PatchCoreRecipe(BaseModel):
    """Training recipe keys; unknown keys are rejected so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: tuple[int, int] = (256, 256)
    taps: tuple[int, ...] = (4, 10)
    coreset_ratio: float = Field(default=0.01, gt=0, le=1)
    # Few training images at 1% leave too few patches to cover normal variation; the bank never goes below this.
    min_memory_bank: int = Field(default=2048, ge=1)
    projection_dim: int = Field(default=32, ge=4)
    max_candidates: int = Field(default=400_000, ge=1000)
    blur_sigma: float = Field(default=4.0, ge=0)
    batch_size: int = Field(default=16, ge=1)
    seed: int = 0


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


class PatchCore(nn.Module):
    memory_bank: torch.Tensor
    bank_sq_norm: torch.Tensor
    blur_kernel: torch.Tensor

    def __init__(self, recipe: PatchCoreRecipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.backbone = efficientnet_lite0()
        self.backbone.requires_grad_(False)
        dim = sum(self.backbone.block_channels[t] for t in recipe.taps)
        self.register_buffer("memory_bank", torch.zeros(0, dim))
        self.register_buffer("bank_sq_norm", torch.zeros(0))
        kernel = gaussian_kernel(recipe.blur_sigma) if recipe.blur_sigma > 0 else torch.ones(1)
        self.register_buffer("blur_kernel", kernel)
        self.blur_radius = kernel.numel() // 2
        self.eval()

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 -> locally aware patch features N x D x h x w at the first tap's stride."""
        x = (image.permute(0, 3, 1, 2).float() - LITE_MEAN) / LITE_STD
        taps = self.backbone.features(x, self.recipe.taps)
        pooled = [F.avg_pool2d(t, NEIGHBOURHOOD, stride=1, padding=NEIGHBOURHOOD // 2) for t in taps]
        size = pooled[0].shape[-2:]
        resized = [pooled[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled[1:]]
        return torch.cat(resized, dim=1)

    def _blur(self, amap: torch.Tensor) -> torch.Tensor:
        k, r = self.blur_kernel, self.blur_radius
        if r == 0:
            return amap
        amap = F.pad(amap, (r, r, r, r), mode="replicate")
        amap = F.conv2d(amap, k.view(1, 1, 1, -1))
        return F.conv2d(amap, k.view(1, 1, -1, 1))

    def forward(self, image: torch.Tensor) -> Prediction:
        feats = self.embed(image)
        n, d, h, w = feats.shape
        patches = feats.permute(0, 2, 3, 1).reshape(-1, d)
        # Squared distances as a matmul (export-safe, unlike cdist).
        sq = (patches * patches).sum(1, keepdim=True) - 2 * patches @ self.memory_bank.T + self.bank_sq_norm
        nearest = sq.min(dim=1).values.clamp_min(0).sqrt()
        amap = nearest.reshape(n, 1, h, w)
        amap = F.interpolate(amap, size=tuple(image.shape[1:3]), mode="bilinear", align_corners=False)
        amap = self._blur(amap)
        return Prediction(anomaly_map=amap, score=amap.amax(dim=(1, 2, 3)))

    @torch.no_grad()
    def fit(self, train_images: np.ndarray, progress: Callable[[int], None] | None = None) -> dict[str, float]:
        """Build the memory bank from good images (uint8 N x H x W x 3). Returns a summary for the manifest."""
        started = time.perf_counter()
        chunks: list[np.ndarray] = []
        for start in range(0, len(train_images), self.recipe.batch_size):
            batch = torch.from_numpy(train_images[start : start + self.recipe.batch_size])
            feats = self.embed(batch)
            chunks.append(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).numpy())
            if progress is not None:
                progress(len(batch))
        features = np.concatenate(chunks)
        extracted = time.perf_counter()
        rng = np.random.default_rng(self.recipe.seed)
        if len(features) > self.recipe.max_candidates:
            # Keeps memory and selection time bounded on large sets; the coreset size still follows the full count.
            keep = rng.choice(len(features), self.recipe.max_candidates, replace=False)
            candidates = features[keep]
        else:
            candidates = features
        k = max(self.recipe.min_memory_bank, round(len(features) * self.recipe.coreset_ratio))
        chosen = greedy_coreset(candidates, k, self.recipe.projection_dim, self.recipe.seed)
        bank = torch.from_numpy(np.ascontiguousarray(candidates[chosen]))
        self.memory_bank = bank
        self.bank_sq_norm = (bank * bank).sum(1)
        return {
            "patches": len(features),
            "candidates": len(candidates),
            "memory_bank": len(bank),
            "features_s": round(extracted - started, 2),
            "coreset_s": round(time.perf_counter() - extracted, 2),
        }
