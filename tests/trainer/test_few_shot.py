"""The few-shot start of `trainer fit`: 1-8 good images, all learned from, the threshold by leave-one-out."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from in_process import run_main

import trainer.cli
from converters.bake import BakeError, BakeOptions, bake
from trainer.bundle import load_bundle
from trainer.data.dataset import DataError
from trainer.evaluate import evaluate
from trainer.few_shot import FEW_SHOT_MAX_IMAGES, HELD_OUT_BLOCKS, LEAVE_ONE_OUT
from trainer.fit import FitOptions, fit
from trainer.models.padim import PaDiM, PaDiMRecipe
from trainer.models.patchcore import PatchCore, PatchCoreRecipe
from trainer.models.patchcore.leave_out import BLOCK_COLUMNS, BLOCK_ROWS
from trainer.predict import predict_scores

SIZE = 64  # model input and images: a 4 x 4 patch grid at stride 16, so a fit takes a second
DEFECT_SIDE = 24  # a quarter of the part
TEST_GOODS = 3
TEST_DEFECTS = 3
# Leave-one-out against a fit on the other images: the same float32 features, the same code; only the
# features' batch composition differs, which moves the backbone's sums in their last bits.
SCORE_RTOL = 1e-4


def texture(seed: int) -> np.ndarray:
    """A good part: smooth grey noise, different for every seed, alike in statistics."""
    noise = np.random.default_rng(seed).integers(90, 166, (SIZE, SIZE), dtype=np.uint8)
    return cv2.cvtColor(cv2.GaussianBlur(noise, (3, 3), 0), cv2.COLOR_GRAY2BGR)


def defect(seed: int) -> np.ndarray:
    """A good texture with a bright square drawn on it."""
    image = texture(seed)
    y, x = np.random.default_rng(seed).integers(4, SIZE - DEFECT_SIDE - 4, 2)
    image[y : y + DEFECT_SIDE, x : x + DEFECT_SIDE] = 255
    return image


def write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def make_data(root: Path, goods: int) -> Path:
    """MVTec AD layout: `goods` training goods, and labelled test goods and drawn defects."""
    for i in range(goods):
        write(root / "train" / "good" / f"{i}.png", texture(i))
    for i in range(TEST_GOODS):
        write(root / "test" / "good" / f"{i}.png", texture(100 + i))
    for i in range(TEST_DEFECTS):
        write(root / "test" / "square" / f"{i}.png", defect(200 + i))
    return root


def recipe_file(path: Path) -> Path:
    path.write_text(f"input_size: [{SIZE}, {SIZE}]\n")
    return path


@pytest.mark.parametrize(
    ("model", "goods"),
    [
        ("patchcore", 1),
        ("padim", 2),
        pytest.param("patchcore", 2, marks=pytest.mark.slow),
        pytest.param("patchcore", 4, marks=pytest.mark.slow),
        pytest.param("padim", 4, marks=pytest.mark.slow),
    ],
)
def test_few_goods_fit_all_of_them_and_set_the_threshold_out_of_sample(tmp_path: Path, model: str, goods: int) -> None:
    data = make_data(tmp_path / "data", goods)
    out = tmp_path / "model"
    manifest = fit(FitOptions(data=data, model=model, out=out, recipe=recipe_file(tmp_path / "r.yaml")))
    calibration = HELD_OUT_BLOCKS if goods == 1 else LEAVE_ONE_OUT
    assert manifest.fit_summary["few_shot"] == {"goods": goods, "calibration": calibration}
    assert manifest.training_set.count == goods  # every good learned from
    assert manifest.training_set.validation == [] and manifest.training_set.holdout == []
    scored = BLOCK_ROWS * BLOCK_COLUMNS if goods == 1 else goods
    assert manifest.validation_scores.count == scored
    assert 0 < manifest.validation_scores.max < manifest.threshold
    # The bundle loads for eval and predict, and every drawn defect scores above the fitted threshold.
    loaded, _ = load_bundle(out)
    defects = predict_scores(loaded, [defect(300 + i) for i in range(TEST_DEFECTS)], manifest.geometry)
    assert (defects >= manifest.threshold).all(), (defects, manifest.threshold)
    result = evaluate(out, data)
    assert result.image_auroc == 1.0


@pytest.mark.parametrize("family", ["patchcore", "padim"])
def test_each_leave_one_out_score_is_that_of_a_fit_without_the_image(family: str) -> None:
    goods = 3
    images = np.stack([texture(i) for i in range(goods)])
    make = {
        "patchcore": lambda: PatchCore(PatchCoreRecipe(input_size=(SIZE, SIZE))),
        "padim": lambda: PaDiM(PaDiMRecipe(input_size=(SIZE, SIZE))),
    }[family]
    model = make()
    result = model.fit_leave_one_out(images, np.arange(goods))
    reference = make()
    for i in range(goods):
        others = np.delete(images, i, axis=0)
        refit = reference.fit(others, images[i : i + 1]).validation
        assert result.validation.score[i].item() == pytest.approx(refit.score[0].item(), rel=SCORE_RTOL)
        np.testing.assert_allclose(result.validation.anomaly_map[i], refit.anomaly_map[0], rtol=1e-3, atol=1e-3)
    # What stays fitted is the model of all the images: it scores a new part as a plain fit on all of them does.
    new = np.stack([texture(50), defect(51)])
    plain = reference.fit(images, new).validation.score
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(new)).score, plain, rtol=SCORE_RTOL)


def test_a_tiled_good_image_is_left_out_whole() -> None:
    """A frame of several inputs is one group: none of its inputs is in the bank its inputs are scored against."""
    images = np.stack([texture(i) for i in range(4)])
    groups = np.array([0, 0, 1, 1])
    model = PatchCore(PatchCoreRecipe(input_size=(SIZE, SIZE)))
    scores = model.fit_leave_one_out(images, groups).validation.score
    refit = PatchCore(PatchCoreRecipe(input_size=(SIZE, SIZE))).fit(images[2:], images[:2]).validation.score
    np.testing.assert_allclose(scores[:2], refit, rtol=SCORE_RTOL)


@pytest.mark.parametrize("family", ["fastflow", "simplenet"])
def test_trained_families_keep_refusing_few_goods(tmp_path: Path, family: str) -> None:
    data = make_data(tmp_path / "data", 3)
    with pytest.raises(DataError) as refused:
        fit(FitOptions(data=data, model=family, out=tmp_path / "model"))
    assert str(refused.value) == (
        f"3 readable good images in {data / 'train' / 'good'}; at least 8 are needed (--holdout 0.2 must leave 2 "
        "validation images to calibrate the threshold, and 1 to train on); add good images or raise --holdout to 0.5"
    )


def test_padim_with_one_good_asks_for_a_second(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", 1)
    with pytest.raises(DataError, match=r"^1 readable good image in .*padim needs at least 2 .* add a good image"):
        fit(FitOptions(data=data, model="padim", out=tmp_path / "model", recipe=recipe_file(tmp_path / "r.yaml")))
    assert not (tmp_path / "model").exists()


def test_more_goods_than_the_few_shot_range_keep_the_holdout(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data", FEW_SHOT_MAX_IMAGES + 1)
    manifest = fit(FitOptions(data=data, model="padim", out=tmp_path / "m", recipe=recipe_file(tmp_path / "r.yaml")))
    assert "few_shot" not in manifest.fit_summary
    assert len(manifest.training_set.validation) == 2 and manifest.training_set.count == FEW_SHOT_MAX_IMAGES - 1


def test_the_cli_with_one_good_warns_the_threshold_is_provisional(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write(data / "good" / "only.png", texture(0))
    out = tmp_path / "model"
    result = run_main(
        trainer.cli.main,
        "trainer",
        "fit",
        "--data",
        str(data),
        "--out",
        str(out),
        "--config",
        str(recipe_file(tmp_path / "r.yaml")),
    )
    assert result.returncode == 0, result.stderr
    assert "few-shot mode: 1 good image" in result.stderr and "held-out blocks" in result.stderr
    assert "the threshold is provisional" in result.stderr
    assert "'few_shot': {'goods': 1, 'calibration': 'held-out blocks'}" in result.stdout
    assert (out / "manifest.yaml").is_file()


@pytest.mark.slow
def test_a_few_shot_bundle_bakes_with_calib_images_and_no_drift_reference(tmp_path: Path) -> None:
    """It learned from every good image, so none is left for bake's parity check or the drift watch's reference:
    bake asks for --calib images and says why, and bakes with them."""
    data = make_data(tmp_path / "data", 2)
    bundle = tmp_path / "model"
    fit(FitOptions(data=data, model="patchcore", out=bundle, recipe=recipe_file(tmp_path / "r.yaml")))
    with pytest.raises(
        BakeError, match=r"^the bundle was fitted in few-shot mode on all 2 of its good images and kept "
    ):
        bake(BakeOptions(bundle=bundle, out=tmp_path / "edge"))
    calib = tmp_path / "calib"
    for i in range(3):
        write(calib / f"{i}.png", texture(400 + i))
    edge = bake(BakeOptions(bundle=bundle, out=tmp_path / "edge", calib=calib))
    assert edge.score_reference is None
    assert edge.parity.images == 3
