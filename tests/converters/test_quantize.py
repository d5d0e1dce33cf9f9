"""Which convolutions an int8 bake leaves float, per scope."""

from __future__ import annotations

import openvino as ov
import torch
from torch import nn

from converters.quantize import input_convolutions, int8_scope, stem_successors, unbounded_convolutions


def _graph() -> ov.Model:
    # stem -> ReLU6 -> 1x1 (clamped input) -> 1x1 (fed by the linear output before it), as in an MBConv chain
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1))
    return ov.convert_model(net.eval(), example_input=torch.zeros(1, 3, 16, 16))


def _input_of(model: ov.Model, name: str) -> str:
    op = next(o for o in model.get_ordered_ops() if o.get_friendly_name() == name)
    return str(op.input_value(0).get_node().get_type_name())


def test_only_the_stem_reads_the_pixels() -> None:
    model = _graph()
    stems = input_convolutions(model)
    assert len(stems) == 1
    assert _input_of(model, stems[0]) == "Parameter"


def test_the_convolution_after_the_stem_is_found_through_its_activation() -> None:
    # stem -> ReLU6 -> depthwise -> ReLU6 -> 1x1: only the depthwise reads the stem's output
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU6(), nn.Conv2d(8, 8, 1))
    model = ov.convert_model(net.eval(), example_input=torch.zeros(1, 3, 16, 16))
    after = stem_successors(model)
    assert len(after) == 1
    op = next(o for o in model.get_ordered_ops() if o.get_friendly_name() == after[0])
    assert op.get_type_name() == "GroupConvolution"
    assert _input_of(model, after[0]) == "Clamp"


def test_the_projections_scope_also_keeps_the_linear_fed_convolutions() -> None:
    model = _graph()
    unbounded = unbounded_convolutions(model)
    # the stem (pixels) and the last 1x1 (fed by a linear convolution); not the one after the ReLU6 clamp
    assert len(unbounded) == 2
    assert set(input_convolutions(model)) < set(unbounded)
    assert all(_input_of(model, name) != "Clamp" for name in unbounded)


def test_patchcore_alone_takes_the_backbone_scope() -> None:
    assert int8_scope("patchcore") == "backbone"
    assert int8_scope("simplenet") == int8_scope("fastflow") == "projections"
