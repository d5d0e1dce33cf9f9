"""The whole-pipeline graph every target exports: uint8 N x H x W x 3 pixels in, anomaly map and score out."""

from __future__ import annotations

import torch

INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")


def example_input(height: int, width: int) -> torch.Tensor:
    """Batch 1: the agent decides frame by frame, and static shapes let every runtime plan the graph ahead."""
    return torch.zeros(1, height, width, 3, dtype=torch.uint8)
