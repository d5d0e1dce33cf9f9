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
from torch import nn

from trainer.acceleration import features_on
from trainer.backbones.efficientnet_lite import efficientnet_lite, lite_input
from trainer.models.fit_result import FitResult
from trainer.models.patch_features import locally_aware
from trainer.models.prediction import Prediction
from trainer.models.simplenet.head import Head, train_head
from trainer.models.simplenet.recipe import SimpleNetRecipe
from trainer.models.smoothing import gaussian_kernel, upsample_blur
from trainer.models.training import module_device


class SimpleNet(nn.Module):
    blur_kernel: torch.Tensor

    def __init__(self, recipe: SimpleNetRecipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.backbone = efficientnet_lite(recipe.backbone)
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
        """uint8 N x H x W x 3 -> locally aware patch features N x D x h x w at the first tap's stride."""
        return locally_aware(self.backbone.features(lite_input(image), self.recipe.taps))

    def forward(self, image: torch.Tensor) -> Prediction:
        return self._predict(self.embed(image).permute(0, 2, 3, 1), (image.shape[1], image.shape[2]))

    def _predict(self, feats: torch.Tensor, size: tuple[int, int]) -> Prediction:
        """Channels-last patch features N x h x w x D -> anomaly maps at `size` and image scores."""
        n, h, w, d = feats.shape
        amap = self.head.anomaly(feats.reshape(-1, d)).reshape(n, 1, h, w)
        amap = upsample_blur(amap, size, self.blur_kernel)
        return Prediction(anomaly_map=amap, score=amap.amax(dim=(1, 2, 3)))

    @torch.no_grad()
    def features(self, images: np.ndarray, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Frozen patch features of uint8 K x H x W x 3 images, channels last (K x h x w x D, so the rows of a
        reshape to (-1, D) are the patches), on the module's device: through OpenVINO on the CPU, in torch on
        a GPU."""
        flat = features_on(module_device(self), self.embed, images, self.recipe.batch_size, progress)
        return flat.permute(0, 2, 3, 1).contiguous()

    @torch.no_grad()
    def _score(self, feats: torch.Tensor, size: tuple[int, int]) -> Prediction:
        """Predictions on cached features, batch by batch, as CPU tensors."""
        step = self.recipe.batch_size
        parts = [self._predict(feats[start : start + step], size) for start in range(0, len(feats), step)]
        return Prediction(torch.cat([p.anomaly_map for p in parts]).cpu(), torch.cat([p.score for p in parts]).cpu())

    def fit(
        self,
        train_images: np.ndarray,
        val_images: np.ndarray,
        progress: Callable[[int], None] | None = None,
    ) -> FitResult:
        """Train the head on the frozen features of good images (uint8 K x H x W x 3). The validation images
        only decide when training stops; the head never learns from them, so their scores are out-of-sample.
        Every random draw (initialization, shuffling, noise)
        comes from a generator seeded with the recipe's seed, so a seed gives the same head."""
        size = (self.recipe.input_size[0], self.recipe.input_size[1])
        started = time.perf_counter()
        train = self.features(train_images, progress)
        val = self.features(val_images, progress) if len(val_images) else None
        extracted = time.perf_counter()
        d = train.shape[-1]
        log = train_head(self.head, train.reshape(-1, d), None if val is None else val.reshape(-1, d), self.recipe)
        self.eval()
        trained = time.perf_counter()
        no_images = Prediction(torch.zeros(0, 1, *size), torch.zeros(0))
        validation = self._score(val, size) if val is not None else no_images
        summary = {
            "patches": int(train.shape[0] * train.shape[1] * train.shape[2]),
            "epochs_run": log.epochs_run,
            "best_epoch": log.best_epoch,
            "stopped_by": log.stopped_by,
            "train_loss": round(log.train_loss, 6),
            "val_loss": round(log.val_loss, 6),
            "features_s": round(extracted - started, 2),
            "train_s": round(trained - extracted, 2),
            "validation_s": round(time.perf_counter() - trained, 2),
        }
        return FitResult(summary, validation)
