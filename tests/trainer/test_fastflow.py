from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_agent.imageio import list_images
from trainer.bundle import load_bundle
from trainer.data.synthetic import DEFECT_TYPES, SyntheticSpec, generate
from trainer.fit import FitOptions, RecipeError, fit, load_recipe
from trainer.metrics import image_auroc
from trainer.models.fastflow import FastFlow, FastFlowRecipe
from trainer.models.fastflow.flow import Flow2d
from trainer.models.training import TrainingError
from trainer.predict import predict_scores, read_frames

SIZE = 128
SMALL = 64
TRAIN_IMAGES = 32
EPOCHS = 5
MIN_SYNTHETIC_AUROC = 0.9
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass(frozen=True)
class Parts:
    train: np.ndarray
    val: np.ndarray
    good: np.ndarray
    defect: np.ndarray


def _stack(folder: Path) -> np.ndarray:
    frames, _, _ = read_frames(list_images(folder))
    return np.stack(frames)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SyntheticSpec(size=SIZE, train_good=40, test_good=10, test_defects_per_type=4, seed=0)
    return generate(tmp_path_factory.mktemp("fastflow") / "data", spec)


@pytest.fixture(scope="module")
def parts(data: Path) -> Parts:
    good = _stack(data / "train" / "good")
    defect = np.concatenate([_stack(data / "test" / kind) for kind in DEFECT_TYPES])
    return Parts(good[:TRAIN_IMAGES], good[TRAIN_IMAGES:], _stack(data / "test" / "good"), defect)


@pytest.fixture(scope="module")
def fitted(parts: Parts) -> tuple[FastFlow, dict[str, object]]:
    # patience = epochs: every epoch runs, whatever the losses do on this CPU.
    model = FastFlow(FastFlowRecipe(input_size=(SIZE, SIZE), epochs=EPOCHS, patience=EPOCHS))
    result = model.fit(parts.train, parts.val)
    assert result.validation.anomaly_map.shape == (len(parts.val), 1, SIZE, SIZE)
    assert result.validation.score.shape == (len(parts.val),)
    return model, result.summary


def _small(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (count, SMALL, SMALL, 3)).astype(np.uint8)


def _flow_state(model: FastFlow) -> dict[str, torch.Tensor]:
    return model.flows.state_dict()


def test_prediction_shapes_and_modes_after_fit(fitted: tuple[FastFlow, dict[str, object]]) -> None:
    model, summary = fitted
    assert not model.training and not model.backbone.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert summary["epochs_run"] == EPOCHS
    with torch.no_grad():
        prediction = model(torch.zeros(2, SIZE, SIZE, 3, dtype=torch.uint8))
    assert prediction.anomaly_map.shape == (2, 1, SIZE, SIZE)
    assert prediction.anomaly_map.dtype == torch.float32
    assert prediction.score.shape == (2,)


def test_defects_score_above_good_parts(fitted: tuple[FastFlow, dict[str, object]], parts: Parts) -> None:
    model, _ = fitted
    with torch.no_grad():
        good = model(torch.from_numpy(parts.good)).score.numpy()
        defect = model(torch.from_numpy(parts.defect)).score.numpy()
    labels = np.r_[np.zeros(len(good), bool), np.ones(len(defect), bool)]
    assert image_auroc(np.r_[good, defect], labels) >= MIN_SYNTHETIC_AUROC


def test_log_det_is_the_log_determinant_of_the_flow_jacobian() -> None:
    channels, side = 5, 3
    flow = Flow2d(channels, steps=4, hidden_ratio=1.0, clamp=2.0, seed=0).double()
    torch.manual_seed(0)
    mixing = torch.randn(channels, channels, dtype=torch.float64)
    flow.initialize(torch.einsum("dc,nchw->ndhw", mixing, torch.randn(16, channels, side, side, dtype=torch.float64)))
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.normal_(0, 0.3)  # nothing at its identity start, so every term of the log-det is exercised
    x = torch.randn(1, channels, side, side, dtype=torch.float64)
    _, log_det = flow(x)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v)[0], x).reshape(x.numel(), x.numel())
    _, brute_force = torch.linalg.slogdet(jacobian)
    # The flow acts on all positions at once (3x3 subnets mix them), but its Jacobian is block-triangular, so
    # the per-position log-dets add up to the log-determinant of the whole map.
    torch.testing.assert_close(log_det.sum(), brute_force)


def test_same_seed_gives_the_same_model() -> None:
    train, val = _small(6, 0), _small(2, 1)
    recipe = FastFlowRecipe(input_size=(SMALL, SMALL), epochs=2, batch_size=4)
    first, second = FastFlow(recipe), FastFlow(recipe)
    first.fit(train, val)
    torch.manual_seed(123)  # the model seeds itself from the recipe, whatever the global RNG holds
    second.fit(train, val)
    for name, tensor in _flow_state(first).items():
        torch.testing.assert_close(tensor, _flow_state(second)[name], msg=name)


def test_fit_without_validation_images_stops_on_the_training_nll() -> None:
    model = FastFlow(FastFlowRecipe(input_size=(SMALL, SMALL), epochs=2, batch_size=4))
    result = model.fit(_small(4, 0), np.zeros((0, SMALL, SMALL, 3), np.uint8))
    assert result.validation.score.shape == (0,)
    assert result.summary["val_nll"] == result.summary["train_nll"]


def test_unknown_recipe_key_is_named(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("flow_step: 4\n")
    with pytest.raises(RecipeError, match="unknown recipe key 'flow_step'"):
        load_recipe("fastflow", recipe)


def test_shipped_recipe_is_valid() -> None:
    recipe = load_recipe("fastflow", CONFIGS / "fastflow.yaml")
    assert recipe.model == FastFlowRecipe()


def _poison_training_after(monkeypatch: pytest.MonkeyPatch, good_batches: int) -> None:
    """Training batches after the first `good_batches` get a NaN loss, as a diverging fit would."""
    loss = FastFlow._loss
    calls = {"training": 0}

    def poisoned(self: FastFlow, features: list[torch.Tensor]) -> torch.Tensor:
        value = loss(self, features)
        if not self.flows.training:
            return value
        calls["training"] += 1
        return value * torch.nan if calls["training"] > good_batches else value

    monkeypatch.setattr(FastFlow, "_loss", poisoned)


def test_non_finite_loss_keeps_the_last_good_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    train, val = _small(8, 0), _small(2, 1)
    recipe = FastFlowRecipe(input_size=(SMALL, SMALL), epochs=4, batch_size=4)
    one_epoch = FastFlow(recipe.model_copy(update={"epochs": 1}))
    one_epoch.fit(train, val)
    _poison_training_after(monkeypatch, good_batches=len(train) // recipe.batch_size)
    model = FastFlow(recipe)
    result = model.fit(train, val)
    assert result.summary["stopped_by"] == "non-finite loss in epoch 2"
    assert result.summary["best_epoch"] == 1
    assert torch.isfinite(result.validation.score).all()
    for name, tensor in _flow_state(model).items():
        torch.testing.assert_close(tensor, _flow_state(one_epoch)[name], msg=name)


def test_non_finite_loss_before_any_good_epoch_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _poison_training_after(monkeypatch, good_batches=0)
    model = FastFlow(FastFlowRecipe(input_size=(SMALL, SMALL), epochs=2, batch_size=4))
    with pytest.raises(TrainingError, match="lower the recipe's `lr`"):
        model.fit(_small(4, 0), _small(2, 1))


def test_bundle_round_trip(data: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"input_size: [{SIZE}, {SIZE}]\nepochs: 2\n")
    out = tmp_path / "model"
    fit(FitOptions(data=data, model="fastflow", out=out, recipe=recipe))
    model, manifest = load_bundle(out)
    assert manifest.model == "fastflow"
    assert manifest.fit_summary["epochs_run"] == 2
    # Validation images were only watched for early stopping, never learned from: fair test images.
    assert manifest.training_set.holdout == manifest.training_set.validation
    frames, _, _ = read_frames(Path(p) for p in manifest.training_set.validation)
    scores = predict_scores(model, frames, manifest.geometry)
    # The loaded weights reproduce the scores fit calibrated the threshold on.
    assert float(scores.max()) == pytest.approx(manifest.validation_scores.max, rel=1e-4)
