"""The 2-D normalizing flow of FastFlow (Yu et al., 2021), in plain torch and forward (feature -> z) only: a
data-initialized per-channel affine, then affine coupling steps whose subnets alternate 3x3 and 1x1 kernels,
with a fixed channel permutation between steps.

Every op is a convolution, an elementwise op or a constant-index gather, so the flow exports to ONNX and
OpenVINO as it is. Log-scales are soft-clamped to +-clamp, which bounds every exp() and so keeps the baked graph
fp16-safe.
"""

from __future__ import annotations

import math

import torch
from torch import nn

WIDE_KERNEL = 3
NARROW_KERNEL = 1
LAYER_NORM_EPS = 1e-5
# Keeps the data-initialized scale finite for a channel that is constant over the whole training set.
MIN_CHANNEL_STD = 1e-4


def soft_clamp(s: torch.Tensor, clamp: float) -> torch.Tensor:
    """clamp * tanh(s / clamp): the identity near 0, never beyond +-clamp, smooth so gradients never vanish
    abruptly as a hard clamp's would."""
    return clamp * torch.tanh(s / clamp)


class ActNorm(nn.Module):
    """y = (x - shift) * exp(log_scale) per channel. Its data-dependent start (`initialize`) standardizes each
    channel, so the first epochs need not spend their steps learning the channels' scales."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @torch.no_grad()
    def initialize(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.shift.copy_(mean.view_as(self.shift))
        self.log_scale.copy_(-torch.log(std.clamp_min(MIN_CHANNEL_STD)).view_as(self.log_scale))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, log|det J| per position: N x H x W)."""
        y = (x - self.shift) * torch.exp(self.log_scale)
        log_det = self.log_scale.sum().expand(x.shape[0], x.shape[2], x.shape[3])
        return y, log_det


class AffineCoupling(nn.Module):
    """RealNVP coupling: the first channel group passes unchanged and sets, through a small conv subnet
    (conv k x k -> ReLU -> conv k x k), the scale and shift of the second group."""

    def __init__(self, channels: int, hidden_ratio: float, kernel: int, clamp: float) -> None:
        super().__init__()
        self.split = channels // 2
        self.clamp = clamp
        changed = channels - self.split
        hidden = max(1, round(self.split * hidden_ratio))
        last = nn.Conv2d(hidden, 2 * changed, kernel, padding=kernel // 2)
        # Zero output: every step starts as the identity, so an untrained flow is stable (Glow's choice).
        for parameter in last.parameters():
            nn.init.zeros_(parameter)
        self.subnet = nn.Sequential(nn.Conv2d(self.split, hidden, kernel, padding=kernel // 2), nn.ReLU(), last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, log|det J| per position: N x H x W)."""
        kept, changed = x[:, : self.split], x[:, self.split :]
        raw_scale, shift = self.subnet(kept).chunk(2, dim=1)
        log_scale = soft_clamp(raw_scale, self.clamp)
        y = torch.cat([kept, changed * torch.exp(log_scale) + shift], dim=1)
        return y, log_scale.sum(dim=1)


class Flow2d(nn.Module):
    """ActNorm, then `steps` couplings on C x H x W features, the channels permuted between steps so every
    channel is transformed by some step. z of training features should follow N(0, I) at every position."""

    permutations: torch.Tensor

    def __init__(self, channels: int, steps: int, hidden_ratio: float, clamp: float, seed: int) -> None:
        super().__init__()
        self.norm = ActNorm(channels)
        # Paper: 3x3 and 1x1 subnets alternate, which widens the receptive field at half the cost of all-3x3.
        self.couplings = nn.ModuleList(
            AffineCoupling(channels, hidden_ratio, WIDE_KERNEL if i % 2 == 0 else NARROW_KERNEL, clamp)
            for i in range(steps)
        )
        # Fixed random permutations from the recipe's seed, stored so a loaded model never depends on an RNG.
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "permutations", torch.stack([torch.randperm(channels, generator=generator) for _ in range(steps)])
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z: N x C x H x W, log|det dz/dx| per position: N x H x W)."""
        z, log_det = self.norm(x)
        for coupling, permutation in zip(self.couplings, self.permutations, strict=True):
            z, step_log_det = coupling(z)
            z = z[:, permutation]
            log_det = log_det + step_log_det
        return z, log_det


def nll_per_dimension(z: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
    """-log p(x) per position under the flow with a standard normal base, divided by the channel count so that
    taps of different widths (and the loss's learning rate) are on one scale: N x H x W, in nats per dimension.
    z is scaled before squaring so the sum of squares stays inside fp16 range even for strongly anomalous
    features."""
    channels = z.shape[1]
    scaled = z * (1.0 / math.sqrt(channels))
    return 0.5 * (scaled * scaled).sum(dim=1) + 0.5 * math.log(2 * math.pi) - log_det / channels


def channel_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of N x C x H x W features, over images and positions."""
    flat = features.transpose(0, 1).reshape(features.shape[1], -1)
    return flat.mean(dim=1), flat.std(dim=1)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """Normalization over C x H x W of each image, without learned affine (the paper's LayerNorm): a learned
    scale outside the flow's Jacobian would let training shrink the features for free.

    The channel means are matmuls on purpose: the int8 bake (converters/quantize.py) keeps everything from the
    first MatMul on in float, and so the whole flow, whose inputs on defects lie far outside the ranges that
    calibration on good parts sees. A LayerNorm op would put the taps' own activations in int8 range first."""
    channels = x.shape[1]
    channel_mean = x.new_full((channels, 1), 1.0 / channels)
    positions = x.permute(0, 2, 3, 1)  # N x H x W x C
    mean = (positions @ channel_mean).mean(dim=(1, 2, 3), keepdim=True)
    centered = positions - mean
    variance = ((centered * centered) @ channel_mean).mean(dim=(1, 2, 3), keepdim=True)
    return (centered * torch.rsqrt(variance + LAYER_NORM_EPS)).permute(0, 3, 1, 2)
