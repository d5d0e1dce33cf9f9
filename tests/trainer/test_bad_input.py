"""Bad or awkward input to `trainer fit` and `trainer eval`: too few goods, mixed sizes, missing or misnamed masks,
empty defect folders. Each gets one clear line (a warning, or `error: ...` and exit 2), never a traceback."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from in_process import run_main

import trainer.cli
from trainer.evaluate import NEEDS_DEFECTS, evaluate
from trainer.fit import (
    HOLDOUT_MAX,
    HOLDOUT_MIN,
    HOLDOUT_STEP,
    MIN_TRAIN_IMAGES,
    MIN_VALIDATION_IMAGES,
    FitOptions,
    _images_needed,
    _split,
    fit,
)
from trainer.report import write_report
from trainer.targets import FALSE_REJECT_RATE, MISS_RATE, Target

SIZE = 64  # model input and most images: small, so a fit takes seconds
ODD_SIZE = (80, 96)  # height, width of the odd-sized images
FIT_GOODS = 8  # the fewest good images --holdout 0.2 accepts
TRAINED_ON = 8  # so few goods take PatchCore's few-shot start, which learns from all of them (trainer/few_shot.py)
ODD_GOODS = 2  # of FIT_GOODS, this many are ODD_SIZE
BANK_ASKED = 4096  # more than the FIT_GOODS images' patches (16 each at stride 16), so the coreset must shrink
DEFECT_SIDE = 12  # side of the bright square that makes an image defective
TEST_GOODS = 4


def run_trainer(*args: str) -> subprocess.CompletedProcess[str]:
    return run_main(trainer.cli.main, "trainer", *args)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's `error: ...` line: exactly one, the last on stderr (log lines and progress bars come before)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    return errors[0]


# --- tiny images --------------------------------------------------------------------------------------------


def texture(seed: int, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """A good part: smooth grey noise, different for every seed, alike in statistics."""
    noise = np.random.default_rng(seed).integers(90, 166, (height, width), dtype=np.uint8)
    return cv2.cvtColor(cv2.GaussianBlur(noise, (3, 3), 0), cv2.COLOR_GRAY2BGR)


def write_good(path: Path, seed: int, height: int = SIZE, width: int = SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), texture(seed, height, width))


def write_defect(path: Path, seed: int, mask_path: Path | None = None) -> None:
    """A good texture with a bright square; its mask (the square) when `mask_path` is given."""
    image = texture(seed)
    y, x = np.random.default_rng(seed).integers(4, SIZE - DEFECT_SIDE - 4, 2)
    image[y : y + DEFECT_SIDE, x : x + DEFECT_SIDE] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    if mask_path is not None:
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[y : y + DEFECT_SIDE, x : x + DEFECT_SIDE] = 255
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(mask_path), mask)


def write_recipe(path: Path, min_memory_bank: int) -> Path:
    path.write_text(f"input_size: [{SIZE}, {SIZE}]\nmin_memory_bank: {min_memory_bank}\n")
    return path


# --- one tiny bundle for the eval tests; its fit also shows the fit warnings ---------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass(frozen=True)
class Fitted:
    bundle: Path
    warnings: list[str]  # warnings logged while fitting


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fitted]:
    """PatchCore fitted on FIT_GOODS goods, ODD_GOODS of them of another size, asking for a bank larger than
    their patches. caplog is per test, so the fit's warnings are collected here."""
    root = tmp_path_factory.mktemp("fitted")
    for i in range(FIT_GOODS):
        size = ODD_SIZE if i < ODD_GOODS else (SIZE, SIZE)
        write_good(root / "data" / "good" / f"{i}.png", seed=i, height=size[0], width=size[1])
    collect = _Collect()
    logging.getLogger().addHandler(collect)
    try:
        recipe = write_recipe(root / "recipe.yaml", BANK_ASKED)
        fit(FitOptions(data=root / "data", model="patchcore", out=root / "model", recipe=recipe))
    finally:
        logging.getLogger().removeHandler(collect)
    yield Fitted(root / "model", collect.messages)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- 1. too few good images ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("goods", "holdout", "expected"),
    [
        (
            4,
            "0.2",
            "4 readable good images in {good}; at least 8 are needed (--holdout 0.2 must leave 2 validation images "
            "to calibrate the threshold, and 1 to train on); add good images or raise --holdout to 0.4",
        ),
        (
            2,
            "0.5",
            "2 readable good images in {good}; at least 3 are needed (--holdout 0.5 must leave 2 validation images "
            "to calibrate the threshold, and 1 to train on); add good images",
        ),
    ],
)
def test_fit_with_too_few_goods_says_how_many_are_needed(
    tmp_path: Path, goods: int, holdout: str, expected: str
) -> None:
    """The trained families hold goods out whatever their number (PatchCore and PaDiM take the few-shot start)."""
    data = tmp_path / "data"
    for i in range(goods):
        write_good(data / "train" / "good" / f"{i}.png", seed=i)
    result = run_trainer(
        "fit", "--data", str(data), "--out", str(tmp_path / "m"), "--model", "simplenet", "--holdout", holdout
    )
    assert error_line(result) == "error: " + expected.format(good=data / "train" / "good")
    assert not (tmp_path / "m").exists()


def test_the_needed_count_is_exactly_what_the_split_needs() -> None:
    steps = round(HOLDOUT_MAX / HOLDOUT_STEP)
    for holdout in (round(k * HOLDOUT_STEP, 2) for k in range(round(HOLDOUT_MIN / HOLDOUT_STEP), steps + 1)):
        needed = _images_needed(holdout)
        train, val = _split(needed, holdout, seed=0)
        assert len(val) >= MIN_VALIDATION_IMAGES and len(train) >= MIN_TRAIN_IMAGES, holdout
        train, val = _split(needed - 1, holdout, seed=0)
        assert len(val) < MIN_VALIDATION_IMAGES or len(train) < MIN_TRAIN_IMAGES, holdout
    # The smallest fits in the other tests (8 goods at the default --holdout 0.2) must stay possible.
    assert _images_needed(0.2) == FIT_GOODS


def test_fit_warns_when_the_memory_bank_shrinks_to_the_patches(fitted: Fitted) -> None:
    patches = TRAINED_ON * (SIZE // 16) ** 2  # the default grid_pool 2 searches at stride 16
    expected = (
        f"the recipe asks for a memory bank of {BANK_ASKED} entries (min_memory_bank) but {TRAINED_ON} good images "
        f"give only {patches} patches; the bank keeps all {patches}. Add good images, or set min_memory_bank to "
        f"{patches} or less"
    )
    assert expected in fitted.warnings


# --- 2. mixed sizes -----------------------------------------------------------------------------------------


def test_fit_warns_once_about_mixed_sizes(fitted: Fitted) -> None:
    sized = [m for m in fitted.warnings if "sizes seen" in m]
    assert sized == [
        f"{ODD_GOODS} of {FIT_GOODS} good images are not {SIZE}x{SIZE} (sizes seen: {SIZE}x{SIZE}, "
        f"{ODD_SIZE[1]}x{ODD_SIZE[0]}); each is resized to the model input per the recipe's geometry (squash)"
    ]


def test_eval_warns_once_about_mixed_sizes(fitted: Fitted, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    for i in range(TEST_GOODS):
        size = ODD_SIZE if i == 0 else (SIZE, SIZE)
        write_good(data / "good" / f"{i}.png", seed=100 + i, height=size[0], width=size[1])
    write_defect(data / "dent" / "d.png", seed=200)
    with caplog.at_level(logging.WARNING):
        evaluate(fitted.bundle, data)
    sized = [m for m in warnings_of(caplog) if "sizes seen" in m]
    assert sized == [
        f"1 of {TEST_GOODS + 1} test images are not {SIZE}x{SIZE} (sizes seen: {SIZE}x{SIZE}, "
        f"{ODD_SIZE[1]}x{ODD_SIZE[0]}); each is resized to the model input per the bundle's geometry (squash)"
    ]


# --- 3. missing and misnamed masks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    train: str  # good training images: the MVTec AD layout is recognized by train/good
    good: str  # folder of the good test images
    defects: str  # folder of the defective test images
    mask: str  # mask path of the defective image STEM
    naming: str  # how the warning says masks are named


LAYOUTS = {
    "mvtec": Layout(
        "train/good", "test/good", "test/scratch", "ground_truth/scratch/{stem}_mask.png", "ground_truth/<type>/"
    ),
    "folder": Layout("good", "good", "scratch", "masks/{stem}.png", "masks/<stem>.png"),
}


def write_masked_set(root: Path, layout: Layout, with_mask: list[bool]) -> None:
    if layout.train != layout.good:
        write_good(root / layout.train / "t0.png", seed=299)
    for i in range(TEST_GOODS):
        write_good(root / layout.good / f"g{i}.png", seed=300 + i)
    for i, masked in enumerate(with_mask):
        mask = root / layout.mask.format(stem=f"s{i}") if masked else None
        write_defect(root / layout.defects / f"s{i}.png", seed=400 + i, mask_path=mask)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_eval_names_defects_without_masks_and_misnamed_masks(
    fitted: Fitted, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    layout = LAYOUTS[name]
    data = tmp_path / "data"
    write_masked_set(data, layout, with_mask=[True, True, False, False])
    # s3's mask, misnamed: its stem matches no test image.
    misnamed = Path(layout.mask.format(stem="s3_typo"))
    write_defect(tmp_path / "unused.png", seed=403, mask_path=data / misnamed)
    with caplog.at_level(logging.WARNING):
        result = evaluate(fitted.bundle, data)
    warnings = warnings_of(caplog)
    unmasked = [m for m in warnings if "have no usable mask" in m]
    assert len(unmasked) == 1
    assert unmasked[0].startswith("2 of 4 defective test images have no usable mask: scratch/s2.png, scratch/s3.png;")
    assert "computed over the 2 with masks and the goods" in unmasked[0] and layout.naming in unmasked[0]
    assert f"1 mask file(s) match no test image and are not used: {misnamed};" in " ".join(warnings)
    write_report(result, tmp_path / "report")
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["counts"]["pixel_images"] == TEST_GOODS + 2
    assert metrics["counts"]["defects_without_masks"] == 2
    assert metrics["pixel_auroc"] is not None and metrics["aupro"] is not None

    # Pixel metrics over the masked images only: the same as on the set without the unmasked defects.
    masked_only = tmp_path / "masked_only"
    write_masked_set(masked_only, layout, with_mask=[True, True])
    alone = evaluate(fitted.bundle, masked_only)
    assert alone.pixel is not None and result.pixel is not None
    assert result.pixel.pixel_auroc == pytest.approx(alone.pixel.pixel_auroc)
    assert result.pixel.aupro == pytest.approx(alone.pixel.aupro)


def test_eval_without_any_masks_only_notes_it(fitted: Fitted, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A set with no masks at all (ELPV) is not warned about image by image: the report's note says it once."""
    data = tmp_path / "data"
    write_masked_set(data, LAYOUTS["folder"], with_mask=[False, False])
    with caplog.at_level(logging.WARNING):
        result = evaluate(fitted.bundle, data)
    assert not [m for m in warnings_of(caplog) if "mask" in m]
    assert result.pixel is None and len(result.unmasked) == 2


def test_eval_stops_at_a_mask_of_another_size_than_its_image(fitted: Fitted, tmp_path: Path) -> None:
    data = tmp_path / "data"
    layout = LAYOUTS["mvtec"]
    write_masked_set(data, layout, with_mask=[True, True])
    mask = data / layout.mask.format(stem="s1")
    assert cv2.imwrite(str(mask), cv2.resize(cv2.imread(str(mask)), (2 * SIZE, SIZE)))
    report = tmp_path / "report"
    result = run_trainer("eval", "--model", str(fitted.bundle), "--data", str(data), "--report", str(report))
    line = error_line(result)
    image = data / layout.defects / "s1.png"
    assert line == (
        f"error: mask {mask} is {2 * SIZE}x{SIZE} but its image {image} is {SIZE}x{SIZE} (width x height); "
        f"re-export the mask at the image's size, {SIZE}x{SIZE}"
    )
    assert not report.exists()


# --- 4. empty defect folders --------------------------------------------------------------------------------


def test_empty_defect_folder_is_warned_and_left_out(
    fitted: Fitted, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    write_masked_set(data, LAYOUTS["mvtec"], with_mask=[True, True])
    (data / "test" / "dent").mkdir()
    with caplog.at_level(logging.WARNING):
        result = evaluate(fitted.bundle, data)
    assert "test/dent has no images; it is left out of the evaluation" in warnings_of(caplog)
    assert [t.label for t in result.per_type] == ["scratch"]
    assert result.image_auroc is not None


def test_only_empty_defect_folders_still_measure_the_goods(
    fitted: Fitted, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    for i in range(TEST_GOODS):
        write_good(data / "good" / f"g{i}.png", seed=500 + i)
    (data / "dent").mkdir()
    with caplog.at_level(logging.WARNING):
        result = evaluate(fitted.bundle, data)
    assert "dent has no images; it is left out of the evaluation" in warnings_of(caplog)
    assert result.image_auroc is None and NEEDS_DEFECTS in result.notes
    assert result.at_threshold.goods == TEST_GOODS and result.at_threshold.false_reject_rate is not None


def test_eval_with_nothing_but_empty_folders_is_one_line(fitted: Fitted, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_good(data / "train" / "good" / "0.png", seed=0)
    (data / "test" / "dent").mkdir(parents=True)
    (data / "test" / "good").mkdir()
    report = tmp_path / "report"
    result = run_trainer("eval", "--model", str(fitted.bundle), "--data", str(data), "--report", str(report))
    assert error_line(result) == (
        f"error: no test images in {data}: test/dent, test/good have no images, and image AUROC needs defective "
        "test images (and good ones the model never learned from); add them"
    )
    assert not report.exists()


# --- 5. thresholds set by a target rate ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            ["--threshold", "miss-rate"],
            "--threshold miss-rate needs --target-rate, the largest share of defects let through to accept "
            "(0.01 is 1%)",
        ),
        (
            ["--threshold", "false-reject-rate"],
            "--threshold false-reject-rate needs --target-rate, the largest share of goods rejected to accept "
            "(0.01 is 1%)",
        ),
        (
            ["--threshold", "false-reject-rate", "--target-rate", "1"],
            "--target-rate 1: must be a share above 0 and below 1 (0.01 is 1%)",
        ),
        (
            ["--threshold", "miss-rate", "--target-rate", "0"],
            "--target-rate 0: must be a share above 0 and below 1 (0.01 is 1%)",
        ),
        (
            ["--threshold", "f1", "--target-rate", "0.01"],
            "--target-rate goes with --threshold miss-rate or false-reject-rate, not --threshold f1",
        ),
        (
            ["--target-rate", "0.01"],
            "--target-rate goes with --threshold miss-rate or false-reject-rate, not --threshold quantile",
        ),
    ],
)
def test_fit_target_rate_options_that_do_not_go_together(tmp_path: Path, options: list[str], expected: str) -> None:
    data = tmp_path / "data"
    for i in range(FIT_GOODS):
        write_good(data / "good" / f"{i}.png", seed=i)
    result = run_trainer("fit", "--data", str(data), "--out", str(tmp_path / "m"), *options)
    assert error_line(result) == "error: " + expected
    assert not (tmp_path / "m").exists()


def test_fit_to_a_miss_rate_without_defects_says_what_to_add(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(FIT_GOODS):
        write_good(data / "train" / "good" / f"{i}.png", seed=i)
        write_good(data / "test" / "good" / f"{i}.png", seed=100 + i)
    options = ["--threshold", "miss-rate", "--target-rate", "0.01"]
    result = run_trainer("fit", "--data", str(data), "--out", str(tmp_path / "m"), *options)
    assert error_line(result) == (
        "error: --threshold miss-rate needs labelled defective test images in the data set: add them under "
        "test/<defect type>/ (MVTec AD layout) or in defect folders beside good/"
    )
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("option", "rate"),
    [("--target-miss-rate", "1.5"), ("--target-false-reject-rate", "0"), ("--target-miss-rate", "-0.1")],
)
def test_eval_target_rate_out_of_range_is_one_line_before_anything_is_read(
    tmp_path: Path, option: str, rate: str
) -> None:
    # Neither the bundle nor the data exist: the option is checked first, so its error is the one shown.
    paths = ["--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--report", str(tmp_path / "r")]
    result = run_trainer("eval", *paths, f"{option}={rate}")
    assert error_line(result) == f"error: {option} {float(rate):g}: must be a share above 0 and below 1 (0.01 is 1%)"
    assert not (tmp_path / "r").exists()


def test_eval_target_the_data_cannot_measure_is_a_note(fitted: Fitted, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(TEST_GOODS):
        write_good(data / "good" / f"g{i}.png", seed=600 + i)
    result = evaluate(fitted.bundle, data, targets=[Target(MISS_RATE, 0.1), Target(FALSE_REJECT_RATE, 0.5)])
    assert "--target-miss-rate 0.1 needs labelled defective test images; it is left out" in result.notes
    assert [t.target.method for t in result.targets] == [FALSE_REJECT_RATE]
    assert result.targets[0].point.goods == TEST_GOODS and result.targets[0].point.goods_rejected <= TEST_GOODS // 2
