"""`trainer synth --texture elpv-mono|elpv-poly`: real ELPV good cells with drawn defects and exact masks."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from in_process import run_main

import trainer.cli
from trainer.data import synthetic_elpv
from trainer.data.dataset import GOOD
from trainer.data.layouts import GROUND_TRUTH, MASK_SUFFIX, discover
from trainer.data.synthetic import MASK_ON, SyntheticSpec
from trainer.data.synthetic_elpv import DEFECT_TYPES, VISIBLE_CHANGE, good_cells, load_cell

SPEC = SyntheticSpec(size=64, train_good=6, test_good=3, test_defects_per_type=2, seed=0)
CELL_TYPE = "mono"


def run_trainer(*args: str) -> subprocess.CompletedProcess[str]:
    return run_main(trainer.cli.main, "trainer", *args)


def spec_args(spec: SyntheticSpec) -> list[str]:
    return [
        *("--size", str(spec.size), "--train-good", str(spec.train_good), "--test-good", str(spec.test_good)),
        *("--defects-per-type", str(spec.test_defects_per_type), "--seed", str(spec.seed)),
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small mono set written through the CLI."""
    root = tmp_path_factory.mktemp("synth") / "elpv-mono"
    result = run_trainer("synth", "--out", str(root), "--texture", f"elpv-{CELL_TYPE}", *spec_args(SPEC))
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def clean_cells() -> dict[str, Path]:
    return {p.stem: p for p in good_cells(CELL_TYPE)}


def stems(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.png"))


def read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.ndim == 2, path
    return image


def defects(data: Path, kind: str) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(image, mask, source cell stem) of each defective image of `kind`."""
    return [
        (read_gray(p), read_gray(data / GROUND_TRUTH / kind / f"{p.stem}{MASK_SUFFIX}.png"), p.stem)
        for p in sorted((data / "test" / kind).glob("*.png"))
    ]


def test_layout_and_counts_are_what_the_trainer_reads(data: Path) -> None:
    assert len(stems(data / "train" / GOOD)) == SPEC.train_good
    assert len(stems(data / "test" / GOOD)) == SPEC.test_good
    for kind in DEFECT_TYPES:
        images = stems(data / "test" / kind)
        assert len(images) == SPEC.test_defects_per_type
        assert stems(data / GROUND_TRUTH / kind) == [f"{s}{MASK_SUFFIX}" for s in images]
    dataset = discover(data)
    assert (dataset.layout, len(dataset.train), dataset.orphan_masks) == ("mvtec", SPEC.train_good, [])
    assert all(s.mask is not None for s in dataset.test if s.is_defect)
    assert {read_gray(p).shape for p in dataset.train} == {(SPEC.size, SPEC.size)}


def test_train_goods_test_goods_and_defective_cells_are_disjoint_good_cells(
    data: Path, clean_cells: dict[str, Path]
) -> None:
    folders = [data / "train" / GOOD, data / "test" / GOOD, *(data / "test" / kind for kind in DEFECT_TYPES)]
    used = [stem for folder in folders for stem in stems(folder)]
    assert len(set(used)) == len(used)
    assert set(used) <= set(clean_cells)  # probability-0 cells of the chosen type only


def test_goods_are_the_clean_cells(data: Path, clean_cells: dict[str, Path]) -> None:
    for folder in (data / "train" / GOOD, data / "test" / GOOD):
        for path in folder.glob("*.png"):
            assert np.array_equal(read_gray(path), load_cell(clean_cells[path.stem], SPEC.size)), path


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_masks_are_binary_non_empty_and_exactly_the_visibly_changed_pixels(
    data: Path, clean_cells: dict[str, Path], kind: str
) -> None:
    for image, mask, stem in defects(data, kind):
        assert set(np.unique(mask)) == {0, MASK_ON}, stem
        change = np.abs(image.astype(np.int16) - load_cell(clean_cells[stem], SPEC.size).astype(np.int16))
        assert np.array_equal(mask == MASK_ON, change > VISIBLE_CHANGE), stem


def test_each_defect_type_changes_the_cell_its_own_way(data: Path, clean_cells: dict[str, Path]) -> None:
    def change(image: np.ndarray, stem: str) -> np.ndarray:
        return image.astype(np.int16) - load_cell(clean_cells[stem], SPEC.size).astype(np.int16)

    for image, _, stem in defects(data, "thin_crack"):
        assert change(image, stem).max() <= 0  # cracks only darken
    for image, _, stem in defects(data, "faint_stain"):
        moved = change(image, stem)
        assert moved.min() >= 0 or moved.max() <= 0  # one stain is darker or brighter, not both
        assert np.abs(moved).max() <= round(synthetic_elpv.STAIN_CONTRAST[1])
    for _, mask, _ in defects(data, "edge_chip"):
        border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert border.any()  # bitten off the border


def test_same_arguments_give_the_same_bytes_and_another_seed_other_images(data: Path, tmp_path: Path) -> None:
    again = synthetic_elpv.generate(tmp_path / "again", CELL_TYPE, SPEC)
    files = sorted(p.relative_to(data) for p in data.rglob("*.png"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert all((data / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = synthetic_elpv.generate(tmp_path / "other", CELL_TYPE, dataclasses.replace(SPEC, seed=1))
    assert stems(other / "train" / GOOD) != stems(data / "train" / GOOD)


def test_asking_for_more_cells_than_there_are_is_one_error_line(tmp_path: Path) -> None:
    available = len(good_cells("poly"))
    too_many = SyntheticSpec(size=64, train_good=available, test_good=1, test_defects_per_type=0)
    result = run_trainer("synth", "--out", str(tmp_path / "out"), "--texture", "elpv-poly", *spec_args(too_many))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"ELPV has {available} good poly cells" in lines[0] and "--train-good" in lines[0]
    assert not (tmp_path / "out").exists()
