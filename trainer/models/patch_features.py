"""Locally aware patch features (PatchCore, Roth et al. 2022; reused by SimpleNet): each backbone tap averaged
over its 3 x 3 neighbourhood, the deeper taps resampled to the first tap's grid, and all of them concatenated."""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEIGHBOURHOOD = 3


def locally_aware(taps: list[torch.Tensor]) -> torch.Tensor:
    """Tap outputs N x C_i x h_i x w_i, finest first -> N x sum(C_i) x h_0 x w_0."""
    pooled = [F.avg_pool2d(t, NEIGHBOURHOOD, stride=1, padding=NEIGHBOURHOOD // 2) for t in taps]
    size = pooled[0].shape[-2:]
    resized = [pooled[0]] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pooled[1:]]
    return torch.cat(resized, dim=1)
