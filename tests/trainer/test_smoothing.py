"""The folded resample-and-blur matrices give what the two steps give, done the plain way."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.models.smoothing import gaussian_kernel, upsample_blur


def two_steps(amap: torch.Tensor, size: tuple[int, int], kernel: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation, then the separable blur with a replicated border, as separate torch ops."""
    amap = F.interpolate(amap, size=size, mode="bilinear", align_corners=False)
    r = kernel.numel() // 2
    if r == 0:
        return amap
    amap = F.pad(amap, (r, r, r, r), mode="replicate")
    return F.conv2d(F.conv2d(amap, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))


@pytest.mark.parametrize("sigma", [0.0, 1.0, 4.0])
@pytest.mark.parametrize(("grid", "size"), [((32, 32), (256, 256)), ((16, 20), (256, 320)), ((40, 40), (30, 30))])
def test_folded_matrices_match_interpolate_then_blur(
    sigma: float, grid: tuple[int, int], size: tuple[int, int]
) -> None:
    amap = torch.rand(3, 1, *grid, generator=torch.Generator().manual_seed(0)) * 10
    kernel = gaussian_kernel(sigma)
    expected = two_steps(amap, size, kernel)
    got = upsample_blur(amap, size, kernel)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-5)
