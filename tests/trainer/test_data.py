from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.geometry import Geometry
from edge_agent.imageio import read_image
from trainer.data.dataset import DataError
from trainer.data.layouts import discover
from trainer.data.synthetic import DEFECT_TYPES, SyntheticSpec, generate
from trainer.predict import model_inputs, read_frames


def test_synthetic_is_deterministic_with_exact_masks(tmp_path: Path) -> None:
    spec = SyntheticSpec(size=96, train_good=3, test_good=2, test_defects_per_type=2, seed=7)
    a, b = generate(tmp_path / "a", spec), generate(tmp_path / "b", spec)
    for file in a.rglob("*.png"):
        assert file.read_bytes() == (b / file.relative_to(a)).read_bytes()
    data = discover(a)
    assert data.layout == "mvtec"
    assert len(data.train) == 3
    defects = [s for s in data.test if s.is_defect]
    assert {s.label for s in defects} == set(DEFECT_TYPES)
    for sample in defects:
        assert sample.mask is not None
        assert (cv2.imread(str(sample.mask), cv2.IMREAD_GRAYSCALE) > 0).sum() > 0


def test_folder_layout_with_masks(tmp_path: Path) -> None:
    image = np.full((32, 32, 3), 128, np.uint8)
    for name in ("good/a.png", "good/b.bmp", "dent/c.jpg", "masks/c.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / name), image)
    data = discover(tmp_path)
    assert data.layout == "folder"
    assert [p.name for p in data.train] == ["a.png", "b.bmp"]
    assert [(s.label, s.mask.name if s.mask else None) for s in data.test] == [("dent", "c.png")]


def test_root_with_several_categories_names_them(tmp_path: Path) -> None:
    for cat in ("bottle", "screw"):
        (tmp_path / cat / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match=r"--category.*bottle, screw"):
        discover(tmp_path)


def test_gray_16bit_and_corrupt_images(tmp_path: Path) -> None:
    gray16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), gray16)
    cv2.imwrite(str(tmp_path / "b.tif"), np.full((40, 50), 200, np.uint8))
    (tmp_path / "c.png").write_bytes(b"not an image")
    assert read_image(tmp_path / "a.png").dtype == np.uint16
    frames, kept, skipped = read_frames(sorted(tmp_path.iterdir()))
    inputs = model_inputs(frames, Geometry(height=32, width=32))
    assert inputs.shape == (2, 32, 32, 3)
    assert inputs.dtype == np.uint8
    assert [p.name for p in kept] == ["a.png", "b.tif"]
    assert [p.name for p in skipped] == ["c.png"]
    assert inputs[1].min() == 200
