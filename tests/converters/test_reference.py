"""The score reference bake writes for the agent's drift watch."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from converters.reference import score_reference
from edge_agent.geometry import Geometry
from edge_agent.runtimes.fake import FakeRuntime

GEOMETRY = Geometry(height=16, width=16)


def _mean(image: np.ndarray) -> float:
    return float(image.mean())


def test_every_readable_validation_image_is_scored_and_sorted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = []
    for level in (200, 10, 90):
        paths.append(tmp_path / f"{level}.png")
        cv2.imwrite(str(paths[-1]), np.full((20, 30), level, np.uint8))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    validation = [str(p) for p in [*paths, tmp_path / "broken.png", tmp_path / "gone.png"]]
    with caplog.at_level(logging.WARNING, logger="converters.reference"):
        reference = score_reference(FakeRuntime(_mean), validation, GEOMETRY)
    assert reference is not None and reference.scores == (10.0, 90.0, 200.0)
    assert "broken.png" in caplog.text


def test_no_reference_when_the_validation_images_are_not_on_this_machine(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="converters.reference"):
        assert score_reference(FakeRuntime(_mean), ["/nowhere/a.png", "/nowhere/b.png"], GEOMETRY) is None
    assert "no score reference, so the agent's drift watch stays off for it" in caplog.text
