"""torch module -> OpenVINO IR, the whole pipeline (uint8 pixels in, map and score out) in one graph."""

from __future__ import annotations

from pathlib import Path

import openvino as ov
import torch
from torch import nn

INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")


class _Outputs(nn.Module):
    """Returns the Prediction as a plain tuple, which every exporter understands."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prediction = self.model(image)
        return prediction.anomaly_map, prediction.score


def export_openvino(model: nn.Module, height: int, width: int, xml: Path) -> None:
    example = torch.zeros(1, height, width, 3, dtype=torch.uint8)
    with torch.no_grad():
        ov_model = ov.convert_model(
            _Outputs(model.eval()), example_input=example, input=[((1, height, width, 3), ov.Type.u8)]
        )
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    for output, name in zip(ov_model.outputs, OUTPUT_NAMES, strict=True):
        output.get_tensor().set_names({name})
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
