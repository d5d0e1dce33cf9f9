from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from edge_agent.geometry import Geometry
from trainer.acceleration import MIN_IMAGES_FOR_OPENVINO
from trainer.models.patchcore import PatchCore, PatchCoreRecipe
from trainer.predict import CompiledModel, predict, scoring_model

SIZE = 64
GEOMETRY = Geometry(height=SIZE, width=SIZE)


def _parts(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (count, SIZE, SIZE, 3)).astype(np.uint8)


def _fitted() -> PatchCore:
    # The default search (int8 bank, stride 16, reweighting on), on a bank small enough for a quick fit.
    model = PatchCore(PatchCoreRecipe.model_validate({"input_size": (SIZE, SIZE), "min_memory_bank": 32}))
    model.fit(_parts(6, 0), _parts(2, 1))
    return model.eval()


def test_many_inputs_are_scored_through_openvino_as_torch_scores_them() -> None:
    model = _fitted()
    frames = list(_parts(MIN_IMAGES_FOR_OPENVINO, 2))
    compiled = scoring_model(model, GEOMETRY, len(frames))
    assert isinstance(compiled, CompiledModel)
    with torch.no_grad():
        reference, fast = predict(model, frames, GEOMETRY), predict(compiled, frames, GEOMETRY)
    scores = np.array([c.score for c in reference])
    fast_scores = np.array([c.score for c in fast])
    assert np.abs(fast_scores - scores).max() <= 1e-4 * np.abs(scores).max()
    # A query value on an int8 rounding edge can land on either side in the two graphs; that moves a few map
    # pixels by a code step, far less than the bake's own fp32 parity allows.
    for ours, theirs in zip(reference, fast, strict=True):
        assert np.abs(theirs.anomaly_map - ours.anomaly_map).max() <= 5e-3 * ours.anomaly_map.max()


def test_few_inputs_stay_on_torch() -> None:
    model = _fitted()
    assert scoring_model(model, GEOMETRY, MIN_IMAGES_FOR_OPENVINO - 1) is model


class _Untraceable(nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no graph here")


def test_a_model_openvino_cannot_compile_is_scored_by_torch(caplog: pytest.LogCaptureFixture) -> None:
    model = _Untraceable()
    assert scoring_model(model, GEOMETRY, MIN_IMAGES_FOR_OPENVINO) is model
    assert "scoring with _Untraceable falls back to torch: OpenVINO could not compile it" in caplog.text
    # The failed conversion leaves the process's warnings audible.
    logging.getLogger("trainer.later").warning("still heard")
    assert "still heard" in caplog.text
