from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline import TEST_SIZE, TINY_SPEC

from converters.bake import BakeOptions, bake
from converters.openvino import to_openvino
from converters.quantize import int8_scope, quantize_openvino
from edge_agent.imageio import list_images
from trainer.bundle import load_bundle
from trainer.data.synthetic import DEFECT_TYPES, generate
from trainer.fit import FitOptions, RecipeError, fit, load_recipe
from trainer.metrics import image_auroc
from trainer.models.padim import PaDiM, PaDiMRecipe
from trainer.models.padim.gaussian import fit_gaussians, squared_distances
from trainer.predict import predict_scores, read_frames

SMALL = 64
MIN_SYNTHETIC_AUROC = 0.9
FP32_REL_TOLERANCE = 1e-3
FP32_MIN_SPEARMAN = 0.9999
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _stack(folder: Path) -> np.ndarray:
    frames, _, _ = read_frames(list_images(folder))
    return np.stack(frames)


def _small(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (count, SMALL, SMALL, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("padim") / "data", TINY_SPEC)


@pytest.fixture(scope="module")
def bundle(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("padim-model") / "model"
    recipe = out.parent / "recipe.yaml"
    recipe.write_text(f"input_size: [{TEST_SIZE}, {TEST_SIZE}]\n")
    fit(FitOptions(data=data, model="padim", out=out, recipe=recipe))
    return out


def _direct(train: torch.Tensor, queries: torch.Tensor, ridge: float) -> torch.Tensor:
    """(x - mu)^T (S + ridge I)^-1 (x - mu) per image and position, in float64 with an explicit inverse."""
    x = train.double().flatten(2).permute(2, 0, 1)  # P x N x d
    q = queries.double().flatten(2).permute(2, 0, 1)
    d = x.shape[-1]
    mean = x.mean(dim=1, keepdim=True)
    centered = x - mean
    covariance = centered.transpose(1, 2) @ centered / max(x.shape[1] - 1, 1) + ridge * torch.eye(d)
    inverse = torch.linalg.inv(covariance)
    deviation = q - mean
    return torch.einsum("pnd,pde,pne->np", deviation, inverse, deviation).reshape(queries.shape[0], *queries.shape[2:])


@pytest.mark.parametrize(("images", "channels"), [(40, 12), (5, 12), (1, 12)])
def test_mahalanobis_by_matmul_equals_the_direct_float64_distance(images: int, channels: int) -> None:
    """Also with fewer images than channels (a ridge-dominated covariance) and with one image (the ridge alone)."""
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(channels, channels, generator=generator)
    train = torch.einsum("dc,nchw->ndhw", mixing, torch.randn(images, channels, 3, 4, generator=generator)) + 2.0
    queries = 3 * torch.randn(6, channels, 3, 4, generator=generator)
    ridge, scale = 0.01, 0.5
    whitening, shift = fit_gaussians(train, ridge, scale)
    assert whitening.shape == (12, channels, channels) and shift.shape == (12, 1, channels)
    by_matmul = squared_distances(queries, whitening, shift).double()
    torch.testing.assert_close(by_matmul, scale**2 * _direct(train, queries, ridge), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def fitted(data: Path) -> PaDiM:
    good = _stack(data / "train" / "good")
    model = PaDiM(PaDiMRecipe(input_size=(TEST_SIZE, TEST_SIZE)))
    result = model.fit(good[:48], good[48:])
    assert result.validation.anomaly_map.shape == (len(good) - 48, 1, TEST_SIZE, TEST_SIZE)
    assert result.summary["positions"] == (TEST_SIZE // 16) ** 2 and result.summary["channels"] == 152
    return model


def test_defects_score_above_good_parts(fitted: PaDiM, data: Path) -> None:
    good = _stack(data / "test" / "good")
    defect = np.concatenate([_stack(data / "test" / kind) for kind in DEFECT_TYPES])
    with torch.no_grad():
        scores = fitted(torch.from_numpy(np.concatenate([good, defect]))).score.numpy()
    labels = np.r_[np.zeros(len(good), bool), np.ones(len(defect), bool)]
    assert image_auroc(scores, labels) >= MIN_SYNTHETIC_AUROC


def test_the_channel_subset_follows_the_seed_and_is_saved() -> None:
    first, again = PaDiM(PaDiMRecipe(channels=20)), PaDiM(PaDiMRecipe(channels=20))
    other = PaDiM(PaDiMRecipe(channels=20, seed=1))
    assert first.channel_index is not None and other.channel_index is not None
    assert torch.equal(first.channel_index, again.channel_index)
    assert not torch.equal(first.channel_index, other.channel_index)
    assert len(set(first.channel_index.tolist())) == 20 and int(first.channel_index.max()) < 152
    assert "channel_index" in first.state_dict()
    # Every channel by default: no subset to draw or to store.
    assert PaDiM(PaDiMRecipe()).channel_index is None


def test_a_channel_subset_fits_and_scores_on_its_channels() -> None:
    model = PaDiM(PaDiMRecipe(input_size=(SMALL, SMALL), channels=20, grid_pool=1))
    result = model.fit(_small(6, 0), _small(2, 1))
    assert result.summary["channels"] == 20 and result.summary["positions"] == (SMALL // 8) ** 2
    assert model.embed(torch.from_numpy(_small(1, 2))).shape == (1, 20, SMALL // 8, SMALL // 8)


def test_fewer_images_than_channels_still_fit() -> None:
    model = PaDiM(PaDiMRecipe(input_size=(SMALL, SMALL)))
    result = model.fit(_small(3, 0), _small(2, 1))
    assert torch.isfinite(result.validation.score).all()
    assert torch.isfinite(model(torch.from_numpy(_small(2, 2))).score).all()


def test_unknown_recipe_key_is_named(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("channel: 50\n")
    with pytest.raises(RecipeError, match="unknown recipe key 'channel'"):
        load_recipe("padim", recipe)


def test_more_channels_than_the_taps_have_are_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("channels: 200\n")
    with pytest.raises(RecipeError, match=r"channels: 200 asked, but taps \[4, 10\] have 152 in all"):
        load_recipe("padim", recipe)


def test_shipped_recipe_is_valid() -> None:
    assert load_recipe("padim", CONFIGS / "padim.yaml").model == PaDiMRecipe()


@pytest.mark.slow
def test_int8_quantizes_the_backbone_only() -> None:
    model = PaDiM(PaDiMRecipe(input_size=(SMALL, SMALL), channels=20))
    images = _small(12, 0)
    model.fit(images[:8], images[8:])
    graph = quantize_openvino(to_openvino(model, SMALL, SMALL), images, int8_scope("padim"))
    quantized = [op.get_friendly_name() for op in graph.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert quantized and all(".backbone." in name for name in quantized), quantized


@pytest.mark.slow
def test_bundle_round_trip_and_openvino_parity(bundle: Path, tmp_path: Path) -> None:
    model, manifest = load_bundle(bundle)
    assert manifest.model == "padim"
    frames, _, _ = read_frames(Path(p) for p in manifest.training_set.validation)
    scores = predict_scores(model, frames, manifest.geometry)
    # The loaded weights reproduce the scores fit calibrated the threshold on.
    assert float(scores.max()) == pytest.approx(manifest.validation_scores.max, rel=1e-4)
    parity = bake(BakeOptions(bundle=bundle, out=tmp_path / "edge")).parity
    assert parity.images == len(frames)
    assert parity.score_rel_diff_max <= FP32_REL_TOLERANCE
    assert parity.spearman >= FP32_MIN_SPEARMAN and parity.verdict_agreement == 1.0
