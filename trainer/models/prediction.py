from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class Prediction(NamedTuple):
    """What every model's forward returns; the field names become the exported output names."""

    anomaly_map: torch.Tensor  # B x 1 x H x W
    score: torch.Tensor  # B


class TupleOutputs(nn.Module):
    """Returns the Prediction as a plain tuple, which every exporter understands."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prediction = self.model(image)
        return prediction.anomaly_map, prediction.score
