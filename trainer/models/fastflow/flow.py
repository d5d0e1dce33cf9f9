"""The 2-D normalizing flow of FastFlow (Yu et al., 2021), in plain torch and forward (feature -> z) only.

Per feature tap: a whitening of the frozen features (a fixed rotation onto their principal axes, then a learned
per-axis affine that starts out standardizing each axis), then affine coupling steps whose subnets alternate
3x3 and 1x1 kernels, with a fixed channel permutation after each step.

Every op is a matmul, a convolution, an elementwise op or a constant-index gather, so the flow exports to ONNX
and OpenVINO as it is. Log-scales are soft-clamped to +-clamp, which bounds every exp() and so keeps the baked
graph fp16-safe.
"""

from __future__ import annotations

import math

import torch
from torch import nn

WIDE_KERNEL = 3
NARROW_KERNEL = 1
# Variance floor of a whitened axis, relative to the mean variance of all axes: near-constant directions of the
# training features would otherwise be scaled up so far that tiny, harmless deviations along them dominate.
MIN_RELATIVE_VARIANCE = 1e-3


def soft_clamp(s: torch.Tensor, clamp: float) -> torch.Tensor:
    """clamp * tanh(s / clamp): the identity near 0, never beyond +-clamp, and smooth, so gradients never stop
    abruptly as a hard clamp's would."""
    return clamp * torch.tanh(s / clamp)


class Rotation(nn.Module):
    """A fixed orthogonal map of the channels (|det| = 1, so no log-det term) onto the principal axes of the
    training features, so that the per-axis ActNorm after it whitens them.

    It is a matmul over channels on purpose: the int8 bake (converters/quantize.py) keeps everything from the
    first MatMul on in float, and so the whole flow, whose inputs on defects lie far outside the ranges that
    calibration on good parts sees."""

    matrix: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("matrix", torch.eye(channels))

    @torch.no_grad()
    def initialize(self, features: torch.Tensor) -> None:
        """Principal axes of N x C x H x W features, over images and positions (in float64: eigh on a float32
        covariance loses the small axes)."""
        flat = features.transpose(0, 1).reshape(features.shape[1], -1).double()
        _, axes = torch.linalg.eigh(torch.cov(flat))
        self.matrix.copy_(axes.to(self.matrix.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.permute(0, 2, 3, 1) @ self.matrix).permute(0, 3, 1, 2)


class ActNorm(nn.Module):
    """y = (x - shift) * exp(log_scale) per channel (Glow). Its data-dependent start standardizes each channel,
    so the first epochs need not spend their steps learning the channels' scales."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @torch.no_grad()
    def initialize(self, features: torch.Tensor) -> None:
        flat = features.transpose(0, 1).reshape(features.shape[1], -1)
        variance = flat.var(dim=1)
        floor = MIN_RELATIVE_VARIANCE * variance.mean()
        self.shift.copy_(flat.mean(dim=1).view_as(self.shift))
        self.log_scale.copy_((-0.5 * torch.log(variance.clamp_min(floor))).view_as(self.log_scale))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, log|det J| per position: N x H x W)."""
        y = (x - self.shift) * torch.exp(self.log_scale)
        return y, self.log_scale.sum().expand(x.shape[0], x.shape[2], x.shape[3])


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
    """Whitening, then `steps` couplings on C x H x W features, the channels permuted after each step so every
    channel is transformed by some step. z of training features should follow N(0, I) at every position."""

    permutations: torch.Tensor

    def __init__(self, channels: int, steps: int, hidden_ratio: float, clamp: float, seed: int) -> None:
        super().__init__()
        self.rotation = Rotation(channels)
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

    def initialize(self, features: torch.Tensor) -> None:
        """Start as the whitening of the training features (N x C x H x W); the couplings start as identities."""
        self.rotation.initialize(features)
        with torch.no_grad():
            self.norm.initialize(self.rotation(features))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z: N x C x H x W, log|det dz/dx| per position: N x H x W)."""
        z, log_det = self.norm(self.rotation(x))
        for coupling, permutation in zip(self.couplings, self.permutations, strict=True):
            z, step_log_det = coupling(z)
            # index_select, not z[:, permutation]: the same Gather when exported, but its backward is an index_add
            # where advanced indexing's is an accumulating index_put, 3x slower fwd + bwd on a 16 x 112 x 16 x 16 batch.
            z = z.index_select(1, permutation)
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
