"""Gaussian smoothing of anomaly maps, written as two 1-D convolutions so it exports to ONNX and OpenVINO."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalized 1-D kernel reaching 3 sigma; sigma 0 gives the identity kernel [1]."""
    if sigma <= 0:
        return torch.ones(1)
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def blur(amap: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Smooth N x 1 x H x W maps with the separable `kernel`, replicating the border so edges are not darkened."""
    r = kernel.numel() // 2
    if r == 0:
        return amap
    amap = F.pad(amap, (r, r, r, r), mode="replicate")
    amap = F.conv2d(amap, kernel.view(1, 1, 1, -1))
    return F.conv2d(amap, kernel.view(1, 1, -1, 1))
