"""The ensemble baked: one backbone in the graph, fp32 parity with torch, and an int8 bake that keeps PatchCore's int8
search beside the members' float heads. Every registry model's plain fp32 and reduced bakes are in test_targets.py."""

from __future__ import annotations

from pathlib import Path

import openvino as ov
import pytest
from pipeline import TEST_SIZE

from converters.bake import BakeOptions, bake
from converters.guard import Guard
from converters.quantize import input_convolutions
from trainer.data.synthetic import SyntheticSpec, generate
from trainer.fit import FitOptions, fit

FP32_REL_TOLERANCE = 1e-3
FP32_MIN_SPEARMAN = 0.9999
# Enough goods for int8's calibration (10) beside 6 validation images; structure is checked here, not accuracy.
SPEC = SyntheticSpec(size=TEST_SIZE, train_good=30, test_good=6, test_defects_per_type=3, seed=1)
OPEN_GUARD = Guard(max_auroc_drop=100.0, max_flip_rate=1.0, min_images=0)
# PatchCore's exact search: a convolution with the int8 bank as filters for the nearest entry, one for reweighting.
SEARCH_CONVOLUTIONS = 2
WEIGHT_WRAPPERS = {"Convert", "Subtract", "Multiply", "FakeQuantize", "Reshape"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ensemble-bake")
    data = generate(root / "data", SPEC)
    recipe = root / "recipe.yaml"
    recipe.write_text(f"input_size: [{TEST_SIZE}, {TEST_SIZE}]\nfastflow: {{epochs: 3}}\n")
    fit(FitOptions(data=data, model="ensemble", out=root / "model", recipe=recipe))
    return root / "model"


def _int8_convolutions(model: ov.Model) -> set[str]:
    """Names of the convolutions whose weights are stored as int8."""
    names = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Convolution":
            weights = op.input_value(1).get_node()
            while weights.get_type_name() in WEIGHT_WRAPPERS:
                weights = weights.input_value(0).get_node()
            if weights.get_output_element_type(0).get_type_name() == "i8":
                names.add(op.get_friendly_name())
    return names


@pytest.mark.slow
def test_fp32_and_int8_bakes_share_one_backbone_and_keep_the_int8_search(bundle: Path, tmp_path: Path) -> None:
    fp32 = bake(BakeOptions(bundle=bundle, out=tmp_path / "fp32")).parity
    assert fp32.score_rel_diff_max <= FP32_REL_TOLERANCE
    assert fp32.spearman >= FP32_MIN_SPEARMAN and fp32.verdict_agreement == 1.0
    graph = ov.Core().read_model(str(tmp_path / "fp32" / "model.xml"))
    assert len(input_convolutions(graph)) == 1  # one stem reads the pixels: one backbone pass
    search = _int8_convolutions(graph)
    assert len(search) == SEARCH_CONVOLUTIONS

    bake(BakeOptions(bundle=bundle, out=tmp_path / "int8", precision="int8", guard=OPEN_GUARD))
    quantized = ov.Core().read_model(str(tmp_path / "int8" / "model.xml"))
    assert len(input_convolutions(quantized)) == 1
    # The search keeps its int8 bank, and the backbone's convolutions join it.
    assert search < _int8_convolutions(quantized)
