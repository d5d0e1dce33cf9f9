from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import trainer.models.simplenet.head
from edge_agent.geometry import Geometry
from trainer.bundle import load_bundle
from trainer.data.layouts import discover
from trainer.data.synthetic import SyntheticSpec, generate
from trainer.fit import FitOptions, RecipeError, fit, load_recipe
from trainer.metrics import image_auroc
from trainer.models.fit_result import FitResult
from trainer.models.simplenet import SimpleNet, SimpleNetRecipe
from trainer.models.training import TrainingError
from trainer.predict import model_inputs, predict_scores, read_frames

# The fits take seconds at 128 px; below it the synthetic defects shrink to a few feature cells and the defect
# check turns seed-dependent.
SIZE = 128
SPEC = SyntheticSpec(size=SIZE, train_good=30, test_good=6, test_defects_per_type=3, seed=0)
QUICK_EPOCHS = 2
MIN_AUROC = 0.95


@dataclass(frozen=True)
class Parts:
    root: Path
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    is_defect: np.ndarray


@dataclass(frozen=True)
class Fitted:
    model: SimpleNet
    result: FitResult
    backbone_before: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Parts:
    root = generate(tmp_path_factory.mktemp("simplenet") / "data", SPEC)
    data = discover(root)
    geometry = Geometry(height=SIZE, width=SIZE)
    good, _, _ = read_frames(data.train)
    test, _, _ = read_frames([s.path for s in data.test])
    inputs = model_inputs(good, geometry)
    is_defect = np.array([s.is_defect for s in data.test])
    return Parts(root, inputs[:24], inputs[24:], model_inputs(test, geometry), is_defect)


def _recipe(**keys: object) -> SimpleNetRecipe:
    return SimpleNetRecipe.model_validate({"input_size": (SIZE, SIZE), **keys})


@pytest.fixture(scope="module")
def fitted(parts: Parts) -> Fitted:
    model = SimpleNet(_recipe())
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    return Fitted(model, model.fit(parts.train, parts.val), before)


def _scores(model: SimpleNet, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        scores: np.ndarray = model(torch.from_numpy(images)).score.numpy()
    return scores


def test_prediction_shapes_and_the_fitted_state(fitted: Fitted, parts: Parts) -> None:
    model, result = fitted.model, fitted.result
    with torch.no_grad():
        prediction = model(torch.from_numpy(parts.test[:3]))
    assert prediction.anomaly_map.shape == (3, 1, SIZE, SIZE) and prediction.anomaly_map.dtype == torch.float32
    assert prediction.score.shape == (3,)
    assert result.validation.anomaly_map.shape == (len(parts.val), 1, SIZE, SIZE)
    assert 1 <= result.summary["best_epoch"] <= result.summary["epochs_run"] <= model.recipe.epochs
    assert not model.training and not model.head.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    # BatchNorm statistics of the frozen backbone must not drift while the head trains.
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, fitted.backbone_before[name]), name


def test_validation_scores_are_what_the_model_predicts(fitted: Fitted, parts: Parts) -> None:
    np.testing.assert_allclose(fitted.result.validation.score.numpy(), _scores(fitted.model, parts.val), rtol=1e-4)


def test_defects_score_above_goods(fitted: Fitted, parts: Parts) -> None:
    scores = _scores(fitted.model, parts.test)
    assert image_auroc(scores, parts.is_defect) >= MIN_AUROC
    assert (scores > 0).all()  # softplus keeps maps positive, as the agent's overlay and parity checks expect


def test_same_seed_same_model_and_another_seed_another(parts: Parts) -> None:
    def quick(seed: int) -> np.ndarray:
        model = SimpleNet(_recipe(epochs=QUICK_EPOCHS, seed=seed))
        model.fit(parts.train, parts.val)
        return _scores(model, parts.test)

    first = quick(0)
    np.testing.assert_allclose(quick(0), first, rtol=1e-5)
    assert not np.allclose(quick(1), first, rtol=1e-3)


def test_unknown_recipe_key_is_named(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("noise_sigmaa: 0.1\n")
    with pytest.raises(RecipeError, match="unknown recipe key 'noise_sigmaa'"):
        load_recipe("simplenet", recipe)


def test_crossed_margins_are_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("margin_normal: -0.5\nmargin_anomalous: 0.5\n")
    with pytest.raises(RecipeError, match="margin_anomalous must be below margin_normal"):
        load_recipe("simplenet", recipe)


def test_a_diverging_first_epoch_raises(parts: Parts) -> None:
    with pytest.raises(TrainingError, match="lower the recipe's `lr`"):
        SimpleNet(_recipe(lr=1e30)).fit(parts.train, parts.val)


def test_a_later_non_finite_loss_keeps_the_last_good_weights(parts: Parts, monkeypatch: pytest.MonkeyPatch) -> None:
    bad_epoch = 3
    real = trainer.models.simplenet.head._validation_loss
    calls: list[int] = []

    def turns_nan(*args: object) -> float:
        calls.append(1)
        loss = real(*args)  # type: ignore[arg-type]
        return float("nan") if len(calls) >= bad_epoch else loss

    monkeypatch.setattr(trainer.models.simplenet.head, "_validation_loss", turns_nan)
    model = SimpleNet(_recipe(epochs=bad_epoch + 2))
    result = model.fit(parts.train, parts.val)
    assert result.summary["stopped_by"] == f"non-finite loss in epoch {bad_epoch}"
    assert result.summary["epochs_run"] == bad_epoch and result.summary["best_epoch"] < bad_epoch
    assert np.isfinite(_scores(model, parts.test)).all()


def test_bundle_round_trip(parts: Parts, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"input_size: [{SIZE}, {SIZE}]\nepochs: {QUICK_EPOCHS}\n")
    out = tmp_path / "model"
    manifest = fit(FitOptions(data=parts.root, model="simplenet", out=out, recipe=recipe))
    assert manifest.model == "simplenet" and manifest.recipe["epochs"] == QUICK_EPOCHS
    assert manifest.training_set.holdout == manifest.training_set.validation  # never learned from
    state = torch.load(out / "weights.pt", weights_only=True)
    model, loaded = load_bundle(out)
    assert isinstance(model, SimpleNet) and not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    # The loaded model reproduces the validation scores fit calibrated its threshold on.
    frames, _, _ = read_frames(Path(p) for p in loaded.training_set.validation)
    scores = predict_scores(model, frames, loaded.geometry)
    assert scores.max() == pytest.approx(loaded.validation_scores.max, rel=1e-3)
    assert scores.mean() == pytest.approx(loaded.validation_scores.mean, rel=1e-3)
