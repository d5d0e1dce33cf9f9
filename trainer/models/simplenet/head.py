"""SimpleNet's trainable head (the feature adaptor and the discriminator), its truncated L1 loss, and its
training over cached patch features."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from trainer.models.simplenet.recipe import SimpleNetRecipe
from trainer.models.training import BestWeights

LEAKY_SLOPE = 0.2  # the paper's discriminator activation
# Patches scored at once for the validation loss: bounds the activations' memory on large hold-outs.
EVAL_PATCHES = 65_536
# A small set would get a step or two per epoch at `patch_batch`: it takes at least this many smaller steps (of
# at least MIN_STEP_PATCHES patches each), so that after one epoch BatchNorm's running statistics have settled and
# the validation loss that early stopping watches measures a trained head.
MIN_STEPS_PER_EPOCH = 32
MIN_STEP_PATCHES = 64
# Floor of a feature channel's standard deviation: a channel constant over the training set is not amplified.
MIN_FEATURE_STD = 1e-3


class Head(nn.Module):
    """Per-patch layers over the last dimension, so they run on P x D patch rows in training and in the graph."""

    def __init__(self, feature_dim: int, adaptor_dim: int, hidden: int) -> None:
        super().__init__()
        self.adaptor = nn.Linear(feature_dim, adaptor_dim)
        self.discriminator = nn.Sequential(
            nn.Linear(adaptor_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Linear(hidden, 1, bias=False),
        )

    def reset(self, generator: torch.Generator) -> None:
        """The paper's initialization (Xavier-normal weights), drawn from `generator` so that a fit depends only
        on its recipe's seed, not on whatever used the global random state before."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm1d):
                module.reset_parameters()

    @torch.no_grad()
    def fold_input_scaling(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Trained on standardized features (x - mean) / std, the adaptor takes raw features from now on: the
        graph stays one MatMul, and the weights file holds no normalization of its own."""
        weight = self.adaptor.weight / std
        self.adaptor.bias.sub_(weight @ mean)
        self.adaptor.weight.copy_(weight)

    def discriminate(self, adapted: torch.Tensor) -> torch.Tensor:
        """P x A adapted features -> P normality scores (high means normal)."""
        out: torch.Tensor = self.discriminator(adapted)
        return out.squeeze(-1)

    def anomaly(self, patches: torch.Tensor) -> torch.Tensor:
        """P x D patch features -> P anomaly scores. The paper scores -D; softplus(-D) ranks patches the same way
        but stays positive, near 0 for confidently normal patches and close to -D for anomalies, which the
        agent's map overlay (map / threshold) and the converters' relative parity checks rely on."""
        return F.softplus(-self.discriminate(self.adaptor(patches)))


def truncated_l1(
    normal: torch.Tensor, anomalous: torch.Tensor, margin_normal: float, margin_anomalous: float
) -> torch.Tensor:
    """The paper's loss: mean(max(0, th+ - D(normal))) + mean(max(0, D(anomalous) - th-))."""
    return (margin_normal - normal).clamp_min(0).mean() + (anomalous - margin_anomalous).clamp_min(0).mean()


@dataclass(frozen=True)
class TrainingLog:
    epochs_run: int
    best_epoch: int
    stopped_by: str
    train_loss: float  # of the best epoch, whose weights the head keeps
    val_loss: float


def _loss(head: Head, rows: torch.Tensor, noise: torch.Tensor, recipe: SimpleNetRecipe) -> torch.Tensor:
    adapted = head.adaptor(rows)
    # One discriminator pass over both halves, as the paper does: in training, BatchNorm normalizes them together.
    scores = head.discriminate(torch.cat([adapted, adapted + noise]))
    return truncated_l1(scores[: len(rows)], scores[len(rows) :], recipe.margin_normal, recipe.margin_anomalous)


def _noise(shape: torch.Size, sigma: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device) * sigma


def _train_epoch(
    head: Head,
    rows: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    recipe: SimpleNetRecipe,
) -> float:
    head.train()
    order = torch.randperm(len(rows), generator=generator, device=rows.device)
    # Equal steps rather than a ragged last one: a handful of patches would give BatchNorm useless statistics.
    steps = max(math.ceil(len(rows) / recipe.patch_batch), min(MIN_STEPS_PER_EPOCH, len(rows) // MIN_STEP_PATCHES))
    total = torch.zeros((), device=rows.device)
    for picked in torch.tensor_split(order, steps):
        batch = rows[picked]
        noise = _noise(torch.Size((len(batch), head.adaptor.out_features)), recipe.noise_sigma, generator, rows.device)
        loss = _loss(head, batch, noise, recipe)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        total += loss.detach() * len(batch)
    return float(total) / len(rows)


@torch.no_grad()
def _validation_loss(head: Head, rows: torch.Tensor, recipe: SimpleNetRecipe) -> float:
    """The training loss on held-out good patches, in eval mode, with the same noise every epoch. With no
    defects to validate against, this is what can be measured: it rises when the discriminator starts to call
    unseen normal patches anomalous (it fits the training patches rather than normal appearance), and the fixed
    noise keeps the epochs comparable."""
    head.eval()
    generator = torch.Generator(device=rows.device).manual_seed(recipe.seed)
    total = 0.0
    for start in range(0, len(rows), EVAL_PATCHES):
        batch = rows[start : start + EVAL_PATCHES]
        noise = _noise(torch.Size((len(batch), head.adaptor.out_features)), recipe.noise_sigma, generator, rows.device)
        total += float(_loss(head, batch, noise, recipe)) * len(batch)
    return total / len(rows)


def train_head(head: Head, train: torch.Tensor, val: torch.Tensor | None, recipe: SimpleNetRecipe) -> TrainingLog:
    """Train on P x D training patch rows for up to `recipe.epochs`, stopping early on the validation loss of
    the held-out rows (on the training loss when there are none), and keep the best epoch's weights.

    The head learns on features standardized per channel with the training rows' statistics: Lite0's raw
    features spread over a few units, so a fixed `noise_sigma` would mean nothing across backbones and taps.
    `train` is standardized in place (it is the largest array of a fit); the scaling is folded into the adaptor
    at the end, so the head then takes raw features."""
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(MIN_FEATURE_STD)
    train.sub_(mean).div_(std)
    if val is not None:
        val = (val - mean) / std
    generator = torch.Generator(device=train.device).manual_seed(recipe.seed)
    head.reset(generator)
    # No weight decay on the adaptor: shrinking its output makes the fixed noise relatively larger and the task
    # trivially easy, and on ELPV that cost several AUROC points.
    groups = [
        {"params": head.adaptor.parameters(), "weight_decay": 0.0},
        {"params": head.discriminator.parameters(), "weight_decay": recipe.weight_decay},
    ]
    optimizer = torch.optim.Adam(groups, lr=recipe.lr)
    # Annealing the rate settles the head: at a constant rate ELPV's AUROC wandered by a point from epoch to epoch.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.epochs)
    best = BestWeights(recipe.patience)
    train_losses: dict[int, float] = {}
    epoch = 0
    with tqdm(range(1, recipe.epochs + 1), desc="training simplenet", unit="epoch", leave=False) as bar:
        for epoch in bar:
            train_losses[epoch] = _train_epoch(head, train, optimizer, generator, recipe)
            schedule.step()
            val_loss = _validation_loss(head, val, recipe) if val is not None else train_losses[epoch]
            bar.set_postfix(train=f"{train_losses[epoch]:.4f}", val=f"{val_loss:.4f}")
            if best.update(head, epoch, train_losses[epoch], val_loss):
                break
    best.restore(head)
    head.fold_input_scaling(mean, std)
    head.eval()
    return TrainingLog(epoch, best.best_epoch, best.stopped_by, train_losses[best.best_epoch], best.best_loss)
