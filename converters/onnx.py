"""torch module -> ONNX (static shapes, opset 17), runnable by ONNX Runtime's CPU provider and TensorRT's parser."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torch.jit._trace import TracerWarning

from converters.graph import INPUT_NAME, OUTPUT_NAMES, example_input
from trainer.models.prediction import TupleOutputs

OPSET = 17


def export_onnx(model: nn.Module, height: int, width: int, path: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated upstream, but the dynamo one needs onnxscript, which the
        # converter does not otherwise need; the graphs here are plain tensor code, which it handles well.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", TracerWarning)  # fitted buffers read as constants on purpose
        torch.onnx.export(
            TupleOutputs(model).eval(),  # eval on the wrapper: the exporter restores its mode recursively
            (example_input(height, width),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            opset_version=OPSET,
            dynamo=False,
        )
