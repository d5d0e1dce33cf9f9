"""PaDiM (Defard et al., ICPR 2021) on EfficientNet-Lite0: a Gaussian per position of the patch grid, fitted in closed
form on the frozen features of good parts; the Mahalanobis distance to it is the anomaly map, upsampled and
smoothed as the other models' maps are, and its maximum the score.

`forward` takes the raw uint8 N x H x W x 3 image, so normalization is inside the exported graph and the agent
feeds camera pixels straight in.

Measured choices (ELPV image AUROC, mean of splits 0 and 1 on the fit's own 80% of the training cells, blur 8;
mono / poly; a scratch sweep on features cached once in float16, within 0.2 points of the product's own runs),
starting from the paper's recipe (a random 100 channels on the finest tap's grid, stride 8 here, no
neighbourhood averaging):
- PatchCore's locally aware features (taps 4 + 10 each averaged over 3 x 3): 96.17 / 91.21 against 95.77 /
  90.71 without the averaging (100 channels, stride 8);
- the stride-16 grid (2 x 2 cells averaged, PatchCore's `grid_pool`): 256 Gaussians, not 1,024, level in
  accuracy (100 channels: 96.21 / 91.23 against 96.17 / 91.21 at stride 8);
- every channel, not a random subset: 96.14 / 91.92 against 96.21 / 91.23 for 100 and 96.00 / 90.25 for 50. The
  paper subsamples for memory; at 256 positions all 152 channels take 23.7 MB (the fp32 graph's Gaussians),
  where the paper's 100 on the stride-8 grid took 41 MB;
- taps 4 + 7 + 10 (232 channels): 96.03 / 92.39, +0.47 on poly for 2.3 times the graph: a recipe choice.
The fit extracts the features once (OpenVINO on the CPU) and solves the Gaussians in float64, in seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.acceleration import features_on
from trainer.backbones.efficientnet_lite import efficientnet_lite, lite_input
from trainer.models.fit_result import FitResult
from trainer.models.padim.gaussian import fit_gaussians, squared_distances
from trainer.models.padim.recipe import PaDiMRecipe
from trainer.models.patch_features import locally_aware
from trainer.models.prediction import Prediction
from trainer.models.smoothing import gaussian_kernel, upsample_blur
from trainer.models.training import module_device

FLOAT_BYTES = 4


class PaDiM(nn.Module):
    channel_index: torch.Tensor | None
    whitening: torch.Tensor
    shift: torch.Tensor
    blur_kernel: torch.Tensor

    def __init__(self, recipe: PaDiMRecipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.backbone = efficientnet_lite(recipe.backbone)
        self.backbone.requires_grad_(False)
        d = recipe.feature_width()
        index = None
        if d < recipe.tap_width():
            # Saved with the weights rather than drawn again on load: a later torch may draw another subset from
            # the same seed, and the Gaussians would then read the wrong channels.
            draw = torch.randperm(recipe.tap_width(), generator=torch.Generator().manual_seed(recipe.seed))
            index = draw[:d].sort().values
        self.register_buffer("channel_index", index)
        # Sized by fit (and by the bundle's weights on load): one row per position of the grid.
        self.register_buffer("whitening", torch.zeros(0, d, d))
        self.register_buffer("shift", torch.zeros(0, 1, d))
        self.register_buffer("blur_kernel", gaussian_kernel(recipe.blur_sigma))
        self.eval()

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 -> the locally aware patch features (the chosen channels) on the grid of the first
        tap's stride times `grid_pool`, N x d x h x w."""
        features = locally_aware(self.backbone.features(lite_input(image), self.recipe.taps))
        if self.recipe.grid_pool > 1:
            features = F.avg_pool2d(features, self.recipe.grid_pool, ceil_mode=True)
        return features if self.channel_index is None else features.index_select(1, self.channel_index)

    def forward(self, image: torch.Tensor) -> Prediction:
        return self._predict(self.embed(image), (image.shape[1], image.shape[2]))

    def _predict(self, features: torch.Tensor, size: tuple[int, int]) -> Prediction:
        amap = squared_distances(features, self.whitening, self.shift).sqrt().unsqueeze(1)
        amap = upsample_blur(amap, size, self.blur_kernel)
        return Prediction(anomaly_map=amap, score=amap.amax(dim=(1, 2, 3)))

    def gaussian_bytes(self) -> int:
        """Bytes of the fitted Gaussians, as the weights file and an fp32 graph hold them."""
        return (self.whitening.numel() + self.shift.numel()) * FLOAT_BYTES

    @torch.no_grad()
    def fit(
        self,
        train_images: np.ndarray,
        val_images: np.ndarray,
        progress: Callable[[int], None] | None = None,
    ) -> FitResult:
        """Fit every position's Gaussian on the good training images (uint8 N x H x W x 3) and score the validation
        images, which stay out of the statistics: their scores, and the threshold set from them, are out-of-sample."""
        started = time.perf_counter()
        features = self._features(np.concatenate([train_images, val_images]), progress)
        extracted = time.perf_counter()
        train, val = features[: len(train_images)], features[len(train_images) :]
        self._fit_gaussians(train)
        fitted = time.perf_counter()
        validation = self.score_features(val)
        summary = {
            **self._summary(),
            "features_s": round(extracted - started, 2),
            "gaussians_s": round(fitted - extracted, 2),
            "validation_s": round(time.perf_counter() - fitted, 2),
        }
        return FitResult(summary, validation)

    @torch.no_grad()
    def fit_leave_one_out(
        self, images: np.ndarray, groups: np.ndarray, progress: Callable[[int], None] | None = None
    ) -> FitResult:
        """Fit on every image; the validation predictions are each input's under the Gaussians of the other
        groups' inputs (a group: the inputs of one good image). The features are extracted once and the Gaussians,
        closed form, solved again per group: a fraction of a second each, and exactly a fit on the others."""
        features = self._features(images, progress)
        groups_t = torch.from_numpy(groups).to(features.device)
        scores = torch.zeros(len(images))
        maps: list[torch.Tensor] = []
        order: list[torch.Tensor] = []
        for group in torch.unique(groups_t):
            inputs = torch.nonzero(groups_t == group).flatten()
            self._fit_gaussians(features[groups_t != group])
            predicted = self.score_features(features[inputs])
            scores[inputs.cpu()] = predicted.score
            maps.append(predicted.anomaly_map)
            order.append(inputs.cpu())
        amap = torch.cat(maps)[torch.argsort(torch.cat(order))]
        self._fit_gaussians(features)
        return FitResult({**self._summary(), "leave_one_out": len(order)}, Prediction(amap, scores))

    def _features(self, images: np.ndarray, progress: Callable[[int], None] | None) -> torch.Tensor:
        return features_on(module_device(self), self.embed, images, self.recipe.batch_size, progress)

    def _fit_gaussians(self, features: torch.Tensor) -> None:
        # Scaled by 1 / sqrt(d), the map is the Mahalanobis distance per channel. On ELPV split 0's test cells its
        # square stayed under 144 (mono) where the plain sum reached 21,800, and the whitened features and shifts
        # under 5.4: an fp16 graph keeps a wide margin to its 65,504.
        d = self.whitening.shape[1]
        self.whitening, self.shift = fit_gaussians(features, self.recipe.ridge, 1 / math.sqrt(d))

    def _summary(self) -> dict[str, int]:
        positions, channels = self.whitening.shape[:2]
        return {"positions": positions, "channels": channels, "gaussian_bytes": self.gaussian_bytes()}

    def score_features(self, features: torch.Tensor) -> Prediction:
        """Predictions on cached features, batch by batch, as CPU tensors."""
        size = (self.recipe.input_size[0], self.recipe.input_size[1])
        step = self.recipe.batch_size
        parts = [self._predict(features[i : i + step], size) for i in range(0, len(features), step)]
        if not parts:
            return Prediction(torch.zeros(0, 1, *size), torch.zeros(0))
        return Prediction(torch.cat([p.anomaly_map for p in parts]).cpu(), torch.cat([p.score for p in parts]).cpu())
