"""Shared by the models that train a head on frozen backbone features (SimpleNet, FastFlow): which device to
train on, early stopping on held-out good images, and a stop on a non-finite loss that keeps the last good
weights."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

log = logging.getLogger(__name__)


class TrainingError(Exception):
    """Training cannot produce a usable model; the message says why and what to change."""


def module_device(module: nn.Module) -> torch.device:
    """The device the module was moved to (`trainer fit --device`); fit trains there."""
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


@dataclass
class BestWeights:
    """Keeps a copy of the weights with the lowest validation loss, and says when to stop: after `patience`
    epochs without improvement, or at once when a loss turns non-finite (the last good weights are restored)."""

    patience: int
    best_loss: float = math.inf
    best_epoch: int = 0
    stopped_by: str = "epochs"
    _state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def update(self, module: nn.Module, epoch: int, train_loss: float, val_loss: float) -> bool:
        """Record epoch `epoch` (1-based); True when training should stop."""
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            if self._state is None:
                raise TrainingError(
                    f"the training loss became non-finite ({train_loss}) in epoch {epoch}, before any good "
                    "epoch; lower the recipe's `lr` and fit again"
                )
            log.warning(
                "training stopped: the loss became non-finite (%s) in epoch %d; keeping the weights of epoch %d",
                train_loss,
                epoch,
                self.best_epoch,
            )
            self.stopped_by = f"non-finite loss in epoch {epoch}"
            return True
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch = val_loss, epoch
            self._state = copy.deepcopy(module.state_dict())
        if epoch - self.best_epoch >= self.patience:
            self.stopped_by = f"no better validation loss for {self.patience} epochs"
            return True
        return False

    def restore(self, module: nn.Module) -> None:
        if self._state is not None:
            module.load_state_dict(self._state)
