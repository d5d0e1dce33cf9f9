"""PaDiM's per-position Gaussians: fitted in closed form, and the Mahalanobis distance to them as batched matmuls.

Each position p of the feature grid gets the mean mu_p and covariance S_p of the good parts' features there, plus
a ridge (S_p + ridge I, so it inverts whatever the number of images). Its Cholesky factor L_p (L_p L_p^T =
S_p + ridge I) gives the whitening W_p = L_p^-1, and W_p^T W_p is the inverse covariance, so the squared
Mahalanobis distance is the squared norm of W_p x - W_p mu_p: one batched matmul over the positions in the
graph, then a constant subtracted; no inverse and no cdist at run time.

The matmul comes before the subtraction on purpose: the int8 bake (converters/quantize.py) keeps everything from
the first MatMul on in float, and NNCF quantizes a Subtract's input. With the mean subtracted first, it put a
FakeQuantize on the selected features themselves (a scratch bake), whose whitened small axes would magnify the
rounding.
"""

from __future__ import annotations

import torch

# Positions whose statistics are computed at once: bounds the float64 copy of the features (positions x images x
# channels) in fit, 46 MB for ELPV poly's 589 training images and 152 channels.
POSITION_CHUNK = 64


def fit_gaussians(features: torch.Tensor, ridge: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Good parts' features N x d x h x w -> (whitening P x d x d, shift P x 1 x d), float32, P = h * w, such that
    `squared_distances` gives scale^2 x the squared Mahalanobis distance under covariance + ridge I. Computed in
    float64, the shift too: it is what cancels the whitened mean, so its rounding is the map's."""
    n, d = features.shape[:2]
    flat = features.flatten(2)
    eye = torch.eye(d, dtype=torch.float64, device=features.device)
    whitenings, shifts = [], []
    for start in range(0, flat.shape[2], POSITION_CHUNK):
        x = flat[:, :, start : start + POSITION_CHUNK].permute(2, 0, 1).double()  # p x N x d
        mean = x.mean(dim=1, keepdim=True)
        centered = x - mean
        # The unbiased estimate; a single image has no spread, and the ridge alone is its covariance.
        covariance = centered.transpose(1, 2) @ centered / max(n - 1, 1) + ridge * eye
        factor = torch.linalg.cholesky(covariance)
        # Transposed, for row vectors: x @ W^T is (W x)^T.
        whitening = scale * torch.linalg.solve_triangular(factor, eye.expand_as(factor), upper=False).transpose(1, 2)
        whitenings.append(whitening)
        shifts.append(mean @ whitening)
    return torch.cat(whitenings).float(), torch.cat(shifts).float()


def squared_distances(features: torch.Tensor, whitening: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Features N x d x h x w -> the (scaled) squared Mahalanobis distances N x h x w, the positions as the batch of
    one matmul."""
    n, _, h, w = features.shape
    whitened = features.flatten(2).permute(2, 0, 1) @ whitening - shift  # P x N x d
    return (whitened * whitened).sum(dim=-1).transpose(0, 1).reshape(n, h, w)
