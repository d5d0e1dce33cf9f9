from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from converters.openvino import export_openvino
from edge_agent.runtimes.openvino import OpenVinoRuntime
from trainer.models.patchcore import PatchCore, PatchCoreRecipe
from trainer.models.patchcore.bank import int8_encode, pq_decode, pq_encode

SIZE = 64


def test_int8_codes_reconstruct_within_half_a_step_of_their_block() -> None:
    bank = np.random.default_rng(0).normal(size=(500, 24)).astype(np.float32)
    bank[:, 10:] *= 5  # a second tap with a wider range
    codes, scale = int8_encode(bank, [10, 14])
    assert codes.dtype == np.int8 and scale.shape == (24,)
    assert len(set(scale[:10])) == 1 and len(set(scale[10:])) == 1 and scale[10] > scale[0]
    assert (np.abs(codes * scale - bank) <= scale / 2 + 1e-6).all()


def test_pq_decode_inverts_the_encoding_on_exact_codewords() -> None:
    rng = np.random.default_rng(1)
    words = rng.normal(size=(4, 3)).astype(np.float32)  # 4 distinct sub-vectors
    bank = np.concatenate([words[rng.integers(0, 4, 50)] for _ in range(2)], axis=1)  # 50 x 6, 2 subspaces
    codebooks, codes = pq_encode(bank, subvector_dim=3, seed=0)
    decoded = pq_decode(torch.from_numpy(codebooks), torch.from_numpy(codes)).numpy()
    np.testing.assert_allclose(decoded, bank, atol=1e-5)


def test_pq_rejects_a_subvector_size_that_does_not_divide() -> None:
    with pytest.raises(ValueError, match="must divide"):
        pq_encode(np.zeros((10, 10), np.float32), 4, 0)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(90, 110, (1, SIZE, SIZE, 3))
    return np.clip(base + rng.integers(-8, 8, (12, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


# The default (int8) in the fast suite; the other forms bake the same graph around another decode.
@pytest.mark.parametrize(
    "quantization", [pytest.param("none", marks=pytest.mark.slow), "int8", pytest.param("pq", marks=pytest.mark.slow)]
)
def test_each_bank_form_scores_alike_and_bakes_with_parity(
    quantization: str, images: np.ndarray, tmp_path: Path
) -> None:
    # Stride 8 (grid_pool 1): six small images then give a 300-entry bank, where the scales' bytes are small.
    recipe = PatchCoreRecipe(input_size=(SIZE, SIZE), grid_pool=1, min_memory_bank=300, bank_quantization=quantization)
    model = PatchCore(recipe)
    summary = model.fit(images[:6], images[6:8]).summary
    assert summary["bank_bytes"] <= summary["bank_float_bytes"]
    if quantization == "int8":
        assert summary["bank_float_bytes"] / summary["bank_bytes"] > 3.9
    test = torch.from_numpy(images[8:])
    with torch.no_grad():
        scores = model(test).score.numpy()
    reference = PatchCore(recipe.model_copy(update={"bank_quantization": "none"}))
    reference.fit(images[:6], images[6:8])
    with torch.no_grad():
        np.testing.assert_allclose(scores, reference(test).score.numpy(), rtol=0.05)
    export_openvino(model, SIZE, SIZE, tmp_path / "model.xml")
    runtime = OpenVinoRuntime(tmp_path / "model.xml", "fp32")
    for image, score in zip(images[8:], scores, strict=True):
        assert runtime.infer(image).score == pytest.approx(float(score), rel=1e-3)
