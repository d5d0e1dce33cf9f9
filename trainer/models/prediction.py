from __future__ import annotations

from typing import NamedTuple

import torch


class Prediction(NamedTuple):
    """What every model's forward returns; the field names become the exported output names."""

    anomaly_map: torch.Tensor  # B x 1 x H x W
    score: torch.Tensor  # B
