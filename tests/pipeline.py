"""Builds small real artifacts for tests: synthetic data -> model bundle -> edge bundle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converters.bake import BakeOptions, bake
from trainer.data.synthetic import SyntheticSpec, generate
from trainer.fit import FitOptions, fit

TEST_SIZE = 128
TINY_SPEC = SyntheticSpec(size=TEST_SIZE, train_good=60, test_good=6, test_defects_per_type=3, seed=0)


@dataclass(frozen=True)
class Pipeline:
    data: Path
    model: Path
    edge: Path


def build_pipeline(root: Path) -> Pipeline:
    data = generate(root / "data", TINY_SPEC)
    recipe = root / "recipe.yaml"
    recipe.write_text(f"input_size: [{TEST_SIZE}, {TEST_SIZE}]\n")
    model, edge = root / "model", root / "edge"
    fit(FitOptions(data=data, model="patchcore", out=model, recipe=recipe))
    bake(BakeOptions(bundle=model, out=edge))
    return Pipeline(data, model, edge)
