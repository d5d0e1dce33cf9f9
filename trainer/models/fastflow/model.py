"""FastFlow (Yu et al., 2021) on EfficientNet-Lite0: per feature tap, a 2-D normalizing flow maps the frozen
features of good parts to a standard normal; the negative log-likelihood of each position under that flow is
the anomaly map.

`forward` takes the raw uint8 N x H x W x 3 image, so normalization is inside the exported graph and the agent
feeds camera pixels straight in. Training runs on features extracted once, so each epoch costs only the flows.

Measured choices (ELPV image AUROC, seed 0, 10 epochs; poly / mono):
- taps 10 + 14 (stride 16 and 32): 89.6 / 94.4. PatchCore's stride-8 tap 4 scores 76.8 / 86.1 on its own
  and drags an average down (4 + 10: 84.5 / 89.9).
- whitened features (principal axes, then per-axis standardization) instead of the paper's LayerNorm over
  C x H x W, which rescales a whole cell by its own defect's contrast. Mono, taps 4 + 10, NLL / mean-z^2 map:
  LayerNorm then per-channel standardization 89.5 / 91.4, no LayerNorm 89.7 / 93.0, whitened 89.9 / 94.1.
  Whitening also gives the flow a Gaussian (Mahalanobis) start that already scores before any epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn
from tqdm import tqdm

from trainer.acceleration import features_on
from trainer.backbones.efficientnet_lite import (
    DEFAULT_BACKBONE,
    BackboneName,
    check_taps,
    efficientnet_lite,
    lite_input,
    with_default_taps,
)
from trainer.models.fastflow.flow import Flow2d, nll_per_dimension
from trainer.models.fit_result import FitResult
from trainer.models.prediction import Prediction
from trainer.models.smoothing import gaussian_kernel, upsample_blur
from trainer.models.training import BestWeights, module_device

# Offsets each tap's flow seed, so the taps' flows get different permutations and initial weights.
TAP_SEED_STRIDE = 1000
LOSS_DIGITS = 4
# Default taps: the last blocks of these backbone stages (stride 16 and stride 32).
TAP_STAGES = (4, 5)


class FastFlowRecipe(BaseModel):
    """Training recipe keys; unknown keys are rejected so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: tuple[int, int] = (256, 256)
    backbone: BackboneName = DEFAULT_BACKBONE
    # One flow per tap; the module docstring says why not PatchCore's (4, 10). Left out: the ends of the last
    # stride-16 and the first stride-32 stage (Lite0: 10 and 14, Lite2: 14 and 19).
    taps: tuple[int, ...]
    # Coupling steps per tap; the paper's 8 is sized for ResNet18 features at GPU budgets.
    flow_steps: int = Field(default=8, ge=1)
    # Subnet hidden channels per input channel of a coupling (the paper: 1.0 for small backbones).
    hidden_ratio: float = Field(default=1.0, gt=0)
    # Bound of every log-scale: keeps exp() finite in training and in an fp16 graph.
    clamp: float = Field(default=2.0, gt=0)
    epochs: int = Field(default=20, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    # Epochs without a better validation NLL before training stops early. Against 5, on ten ELPV splits (README):
    # the same epoch kept on nine, 1-2 epochs (5-11 s on poly) sooner; on mono split 3 epoch 14 for 19, -0.16 AUROC.
    patience: int = Field(default=3, ge=1)
    blur_sigma: float = Field(default=4.0, ge=0)
    batch_size: int = Field(default=16, ge=1)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _backbone_taps(cls, data: Any) -> Any:
        return with_default_taps(data, TAP_STAGES)

    _taps_in_backbone = field_validator("taps")(check_taps)


class FastFlow(nn.Module):
    blur_kernel: torch.Tensor

    def __init__(self, recipe: FastFlowRecipe) -> None:
        super().__init__()
        self.recipe = recipe
        self.backbone = efficientnet_lite(recipe.backbone)
        self.backbone.requires_grad_(False)
        channels = [self.backbone.block_channels[t] for t in recipe.taps]
        # The flows' initial weights follow the recipe's seed alone, whatever the caller did with the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            self.flows = nn.ModuleList(
                Flow2d(c, recipe.flow_steps, recipe.hidden_ratio, recipe.clamp, recipe.seed + TAP_SEED_STRIDE * i)
                for i, c in enumerate(channels)
            )
        self.register_buffer("blur_kernel", gaussian_kernel(recipe.blur_sigma))
        self.eval()

    def train(self, mode: bool = True) -> FastFlow:
        """Only the flows ever train; the backbone's batch norms keep their ImageNet statistics."""
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """uint8 N x H x W x 3 -> the frozen features of every tap, N x C x h x w each."""
        return self.backbone.features(lite_input(image), self.recipe.taps)

    def _flat_features(self, image: torch.Tensor) -> torch.Tensor:
        """All taps flattened into one N x D tensor: the fast extractor returns one tensor per batch, and one
        backbone pass serves every tap."""
        return torch.cat([f.flatten(1) for f in self.features(image)], dim=1)

    def nll_maps(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per tap, the NLL per dimension of every position: N x h x w each."""
        return [nll_per_dimension(*flow(f)) for flow, f in zip(self.flows, features, strict=True)]

    def forward(self, image: torch.Tensor) -> Prediction:
        return self._predict(self.features(image), (image.shape[1], image.shape[2]))

    def predict_taps(self, taps: list[torch.Tensor], size: tuple[int, int]) -> Prediction:
        """`forward` from the backbone's outputs at the recipe's taps on, for a caller that runs the backbone once
        for several heads (the ensemble); `size` is the input's H x W."""
        return self._predict(taps, size)

    def _predict(self, features: list[torch.Tensor], size: tuple[int, int]) -> Prediction:
        # The full NLL, log-det included, rather than anomalib's -exp(-0.5 mean z^2) or the mean z^2 alone: it is
        # what the flow was trained to estimate, and it ranked ELPV cells best overall (poly 89.6 against 87.5
        # for z^2 alone; mono 94.4 against 94.2). An unbounded map also keeps strong defects apart where
        # -exp(-x) saturates at 0.
        # Resampling and blur are linear, so blurring each tap's map before the mean is the same as after.
        maps = [upsample_blur(m.unsqueeze(1), size, self.blur_kernel) for m in self.nll_maps(features)]
        amap = torch.stack(maps).mean(dim=0)
        return Prediction(anomaly_map=amap, score=amap.amax(dim=(1, 2, 3)))

    def _loss(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Maximum likelihood: the mean NLL per dimension over images, positions and taps."""
        return torch.stack([m.mean() for m in self.nll_maps(features)]).mean()

    def fit(
        self,
        train_images: np.ndarray,
        val_images: np.ndarray,
        progress: Callable[[int], None] | None = None,
    ) -> FitResult:
        """Train the flows on good images (uint8 N x H x W x 3), stopping early on the validation images' NLL.
        The flows never learn from the validation images, so their scores are out-of-sample."""
        started = time.perf_counter()
        device = module_device(self)
        features = self._extract(np.concatenate([train_images, val_images]), progress, device)
        train = [f[: len(train_images)] for f in features]
        val = [f[len(train_images) :] for f in features]
        extracted = time.perf_counter()
        for flow, f in zip(self.flows, train, strict=True):
            cast(Flow2d, flow).initialize(f)
        best, epochs_run, train_nll = self._train(train, val, device)
        trained = time.perf_counter()
        self.eval()
        validation = self._predict_batched(val)
        summary = {
            "epochs_run": epochs_run,
            "best_epoch": best.best_epoch,
            "stopped_by": best.stopped_by,
            "train_nll": round(train_nll, LOSS_DIGITS),
            "val_nll": round(best.best_loss, LOSS_DIGITS),
            "flow_parameters": sum(p.numel() for p in self.flows.parameters()),
            "features_s": round(extracted - started, 2),
            "training_s": round(trained - extracted, 2),
            "validation_s": round(time.perf_counter() - trained, 2),
        }
        return FitResult(summary, validation)

    def _extract(
        self, images: np.ndarray, progress: Callable[[int], None] | None, device: torch.device
    ) -> list[torch.Tensor]:
        """The normalized taps of every image, on `device`: through the fast CPU extractor, or in torch on a GPU."""
        height, width = self.recipe.input_size
        with torch.no_grad():
            blank = torch.zeros(1, height, width, 3, dtype=torch.uint8, device=device)
            shapes = [f.shape[1:] for f in self.features(blank)]
            flat = features_on(device, self._flat_features, images, self.recipe.batch_size, progress)
        sizes = [math.prod(s) for s in shapes]
        return [part.reshape(-1, *shape) for part, shape in zip(torch.split(flat, sizes, dim=1), shapes, strict=True)]

    def _train(
        self, train: list[torch.Tensor], val: list[torch.Tensor], device: torch.device
    ) -> tuple[BestWeights, int, float]:
        """Adam over the cached features; returns the early-stopping record, the epochs run and the train NLL of
        the best epoch."""
        recipe = self.recipe
        generator = torch.Generator().manual_seed(recipe.seed)
        optimizer = torch.optim.Adam(self.flows.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        best = BestWeights(recipe.patience)
        count = len(train[0])
        train_history: list[float] = []
        with tqdm(range(1, recipe.epochs + 1), desc="training flows", unit="epoch", leave=False) as bar:
            for epoch in bar:
                self.flows.train()
                order = torch.randperm(count, generator=generator).to(device)
                total = 0.0
                for start in range(0, count, recipe.batch_size):
                    rows = order[start : start + recipe.batch_size]
                    loss = self._loss([f[rows] for f in train])
                    optimizer.zero_grad(set_to_none=True)
                    torch.autograd.backward(loss)
                    optimizer.step()
                    total += loss.item() * len(rows)
                train_history.append(total / count)
                self.flows.eval()
                # Without validation images the training NLL is the only signal early stopping has.
                val_loss = self._mean_nll(val) if len(val[0]) else train_history[-1]
                bar.set_postfix(train=f"{train_history[-1]:.4f}", val=f"{val_loss:.4f}")
                if best.update(self.flows, epoch, train_history[-1], val_loss):
                    break
        best.restore(self.flows)
        # BestWeights raises unless some epoch was good, so best_epoch names a finished epoch.
        return best, len(train_history), train_history[best.best_epoch - 1]

    @torch.no_grad()
    def _mean_nll(self, features: list[torch.Tensor]) -> float:
        total = 0.0
        count = len(features[0])
        for start in range(0, count, self.recipe.batch_size):
            batch = [f[start : start + self.recipe.batch_size] for f in features]
            total += self._loss(batch).item() * len(batch[0])
        return total / count

    @torch.no_grad()
    def _predict_batched(self, features: list[torch.Tensor]) -> Prediction:
        """Predictions on cached features, as CPU tensors (fit's caller calibrates the threshold on them)."""
        size = (self.recipe.input_size[0], self.recipe.input_size[1])
        maps, scores = [torch.zeros(0, 1, *size)], [torch.zeros(0)]
        for start in range(0, len(features[0]), self.recipe.batch_size):
            prediction = self._predict([f[start : start + self.recipe.batch_size] for f in features], size)
            maps.append(prediction.anomaly_map.cpu())
            scores.append(prediction.score.cpu())
        return Prediction(torch.cat(maps), torch.cat(scores))
