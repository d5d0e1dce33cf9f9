"""Letterbox and tile geometries go through fit, bake (parity per whole image) and the agent runtime alike."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from pipeline import Pipeline

from converters.bake import BakeOptions, bake
from edge_agent.bundle import load_edge_bundle
from trainer.fit import FitOptions, fit


# letterbox in the fast suite; tile (four inputs per frame, the same combine code) in the slow one.
@pytest.mark.parametrize(
    ("mode", "extra"), [("letterbox", ""), pytest.param("tile", "  tile_overlap: 0.25\n", marks=pytest.mark.slow)]
)
def test_geometry_round_trip(pipeline: Pipeline, tmp_path: Path, mode: str, extra: str) -> None:
    data = tmp_path / "data"
    (data / "good").mkdir(parents=True)
    for i, path in enumerate(sorted((pipeline.data / "train" / "good").iterdir())[:10]):
        image = cv2.imread(str(path))
        cv2.imwrite(str(data / "good" / f"{i}.png"), image[:, : image.shape[1] * 3 // 4])  # not square
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"input_size: [64, 64]\nmin_memory_bank: 200\ngeometry:\n  mode: {mode}\n{extra}")
    manifest = fit(FitOptions(data=data, model="patchcore", out=tmp_path / "model", recipe=recipe))
    assert manifest.geometry.mode == mode
    bake(BakeOptions(bundle=tmp_path / "model", out=tmp_path / "edge"))
    edge = load_edge_bundle(tmp_path / "edge").manifest
    assert edge.geometry.mode == mode
    assert edge.parity.score_rel_diff_max <= 1e-3
    assert edge.parity.verdict_agreement == 1.0
