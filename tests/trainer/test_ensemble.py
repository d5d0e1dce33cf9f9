from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline import TEST_SIZE

from edge_agent.imageio import list_images
from trainer.bundle import load_bundle
from trainer.data.synthetic import DEFECT_TYPES, SyntheticSpec, generate
from trainer.fit import FitOptions, RecipeError, fit, load_recipe
from trainer.metrics import image_auroc
from trainer.models.ensemble import Ensemble, EnsembleRecipe
from trainer.models.ensemble.model import GOODS_LEVEL, MEMBERS
from trainer.predict import read_frames

# A parity test needs fitted members, not good ones: a few epochs, every one run.
TINY_EPOCHS = 3
MIN_SYNTHETIC_AUROC = 0.9
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Fewer good images than the fits' OpenVINO feature extraction starts at (trainer/acceleration.py), so each member
# extracts in torch eager and the fit takes seconds.
SPEC = SyntheticSpec(size=TEST_SIZE, train_good=30, test_good=6, test_defects_per_type=3, seed=0)
TINY_RECIPE = f"""\
input_size: [{TEST_SIZE}, {TEST_SIZE}]
patchcore: {{min_memory_bank: 500}}
fastflow: {{epochs: {TINY_EPOCHS}, patience: {TINY_EPOCHS}}}
"""


def _stack(folder: Path) -> np.ndarray:
    frames, _, _ = read_frames(list_images(folder))
    return np.stack(frames)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("ensemble") / "data", SPEC)


@pytest.fixture(scope="module")
def bundle(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ensemble-model") / "model"
    recipe = out.parent / "recipe.yaml"
    recipe.write_text(TINY_RECIPE)
    fit(FitOptions(data=data, model="ensemble", out=out, recipe=recipe))
    return out


@pytest.fixture(scope="module")
def test_images(data: Path) -> tuple[np.ndarray, np.ndarray]:
    good = _stack(data / "test" / "good")
    defects = np.concatenate([_stack(data / "test" / kind) for kind in DEFECT_TYPES])
    return good, defects


def _each_member_alone(model: Ensemble, images: torch.Tensor) -> list[torch.Tensor]:
    """Each member's scores through its own forward: the backbone run once per member."""
    return [getattr(model, name)(images).score for name in MEMBERS]


def test_the_score_is_the_mean_of_the_members_normalised_scores(
    bundle: Path, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    model, manifest = load_bundle(bundle)
    images = torch.from_numpy(np.concatenate(test_images))
    with torch.no_grad():
        members = _each_member_alone(model, images)
        prediction = model(images)
    normalisation = manifest.fit_summary["normalisation"]
    expected = (
        sum(
            (score - normalisation[name]["mean"]) / normalisation[name]["std"]
            for name, score in zip(MEMBERS, members, strict=True)
        )
        / len(MEMBERS)
        + GOODS_LEVEL
    )
    torch.testing.assert_close(prediction.score, expected, rtol=1e-4, atol=1e-4)
    assert prediction.anomaly_map.shape == (len(images), 1, TEST_SIZE, TEST_SIZE)
    assert {"patchcore", "fastflow"} <= set(manifest.fit_summary)
    assert manifest.fit_summary["fastflow"]["epochs_run"] == TINY_EPOCHS
    labels = np.r_[np.zeros(len(test_images[0])), np.ones(len(test_images[1]))].astype(bool)
    assert image_auroc(prediction.score.numpy(), labels) >= MIN_SYNTHETIC_AUROC


def test_the_bundle_reloads_to_the_same_predictions(bundle: Path, test_images: tuple[np.ndarray, np.ndarray]) -> None:
    first, _ = load_bundle(bundle)
    second, _ = load_bundle(bundle)
    images = torch.from_numpy(test_images[1])
    with torch.no_grad():
        a, b = first(images), second(images)
    torch.testing.assert_close(a.score, b.score, rtol=0, atol=0)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map, rtol=0, atol=0)


def test_the_weights_hold_one_backbone(bundle: Path) -> None:
    state = torch.load(bundle / "weights.pt", weights_only=True)
    own = {k for k in state if k.startswith("backbone.")}
    assert own and not [k for k in state if ".backbone." in k]


def test_the_backbone_runs_once_per_forward(bundle: Path, test_images: tuple[np.ndarray, np.ndarray]) -> None:
    model, _ = load_bundle(bundle)
    calls = []
    hook = model.backbone._conv_stem.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(torch.from_numpy(test_images[0][:2]))
    hook.remove()
    assert len(calls) == 1
    # Each member alone runs it too: the count above is not blind to their passes.
    with torch.no_grad():
        hook = model.backbone._conv_stem.register_forward_hook(lambda *_: calls.append(1))
        _each_member_alone(model, torch.from_numpy(test_images[0][:2]))
    hook.remove()
    assert len(calls) == 1 + len(MEMBERS)


def test_members_inherit_the_shared_keys() -> None:
    recipe = EnsembleRecipe(backbone="efficientnet-lite2", input_size=(96, 96), seed=4)
    assert recipe.patchcore.backbone == recipe.fastflow.backbone == "efficientnet-lite2"
    assert recipe.patchcore.input_size == recipe.fastflow.input_size == (96, 96)
    # Their default taps follow the shared backbone (Lite2's stage ends), and a member may keep its own seed.
    assert recipe.patchcore.taps == (6, 14) and recipe.fastflow.taps == (14, 19)
    assert recipe.fastflow.seed == 4 and EnsembleRecipe(patchcore={"seed": 1}).patchcore.seed == 1


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("patchcore: {input_size: [224, 224]}\n", r"recipe key 'patchcore'.*patchcore\.input_size is \(224, 224\)"),
        ("fastflow: {backbone: efficientnet-lite2}\n", r"recipe key 'fastflow'.*fastflow\.backbone is efficientnet"),
        ("patchcore: {coreset: 0.1}\n", "unknown recipe key 'patchcore.coreset'"),
    ],
)
def test_a_member_recipe_that_breaks_the_shared_pass_is_refused(tmp_path: Path, keys: str, message: str) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(keys)
    with pytest.raises(RecipeError, match=message):
        load_recipe("ensemble", recipe)


def test_a_member_may_repeat_the_shared_keys(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("input_size: [128, 128]\npatchcore: {input_size: [128, 128]}\n")
    assert load_recipe("ensemble", recipe).model.patchcore.input_size == (128, 128)


def test_shipped_recipe_is_valid() -> None:
    assert load_recipe("ensemble", CONFIGS / "ensemble.yaml").model == EnsembleRecipe()
