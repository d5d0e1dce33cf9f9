"""torch module -> OpenVINO IR, the whole pipeline in one graph."""

from __future__ import annotations

import warnings
from pathlib import Path

import openvino as ov
import torch
from torch import nn
from torch.jit._trace import TracerWarning

from converters.graph import INPUT_NAME, OUTPUT_NAMES, example_input
from trainer.acceleration import convert_traced
from trainer.models.prediction import TupleOutputs


def to_openvino(model: nn.Module, height: int, width: int) -> ov.Model:
    with torch.no_grad(), warnings.catch_warnings():
        # Models read fitted buffers as Python constants on purpose (PatchCore's int8 query scales): they are
        # fixed once fitted, and exporters need them static.
        warnings.simplefilter("ignore", TracerWarning)
        # eval on the wrapper: the exporter restores its mode recursively
        ov_model = convert_traced(TupleOutputs(model).eval(), example_input(height, width), (1, height, width, 3))
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    for output, name in zip(ov_model.outputs, OUTPUT_NAMES, strict=True):
        output.get_tensor().set_names({name})
    return ov_model


def export_openvino(model: nn.Module, height: int, width: int, xml: Path) -> None:
    ov.save_model(to_openvino(model, height, width), str(xml), compress_to_fp16=False)
