from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from trainer.models.fit_result import FitResult
from trainer.models.patchcore import PatchCore, PatchCoreRecipe
from trainer.models.patchcore.bank import int8_encode
from trainer.models.patchcore.model import patch_rows
from trainer.models.patchcore.search import nearest_in_eager, smallest, squared_distances

SIZE = 64


def _parts(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (count, SIZE, SIZE, 3)).astype(np.uint8)


def _model(shortlist_dim: int = 32) -> PatchCore:
    recipe = PatchCoreRecipe(
        input_size=(SIZE, SIZE),
        min_memory_bank=100_000,
        reweight_neighbours=0,
        bank_quantization="none",
        shortlist_dim=shortlist_dim,
    )
    return PatchCore(recipe)


@pytest.mark.parametrize("shortlist_dim", [0, 32])
def test_validation_images_stay_out_of_the_bank(shortlist_dim: int) -> None:
    train, val = _parts(4, 0), _parts(3, 1)
    model = _model(shortlist_dim)
    result = model.fit(train, val)
    with torch.no_grad():
        seen = model(torch.from_numpy(train)).score.numpy()
        again = model(torch.from_numpy(val)).score.numpy()
    # Every training patch is in the bank (the bank keeps them all), so training images score about zero
    # (matmul distances leave a little rounding); the validation images, never in it, score far above.
    assert (result.validation.score.numpy() > 10 * seen.max()).all()
    np.testing.assert_allclose(result.validation.score.numpy(), again, rtol=1e-4)
    assert result.validation.anomaly_map.shape == (3, 1, SIZE, SIZE)
    assert model.memory_bank().shape[0] == 4 * (SIZE // 16) ** 2  # stride 16: the default grid_pool 2


def test_fit_without_validation_images() -> None:
    result = _model().fit(_parts(3, 0), np.zeros((0, SIZE, SIZE, 3), np.uint8))
    assert result.validation.score.shape == (0,)


def test_tap_weights_scale_each_taps_features() -> None:
    images = torch.from_numpy(_parts(2, 3))
    plain = _model()
    weighted = PatchCore(plain.recipe.model_copy(update={"tap_weights": (3.0, 0.5)}))
    fine = plain.blocks[0]
    with torch.no_grad():
        base, scaled = plain.embed(images), weighted.embed(images)
    torch.testing.assert_close(scaled[:, :fine], 3.0 * base[:, :fine])
    torch.testing.assert_close(scaled[:, fine:], 0.5 * base[:, fine:])


def test_tap_weights_need_one_positive_weight_per_tap() -> None:
    with pytest.raises(ValidationError, match="1 weight"):
        PatchCoreRecipe(taps=(4, 10), tap_weights=(3.0,))
    with pytest.raises(ValidationError, match="positive"):
        PatchCoreRecipe(taps=(4, 10), tap_weights=(3.0, 0.0))


def test_taps_must_be_increasing_blocks_of_the_backbone() -> None:
    # Lite0 has 16 blocks; Lite2 has 21, so its tap 19 exists.
    assert PatchCoreRecipe(backbone="efficientnet-lite2", taps=(6, 19)).taps == (6, 19)
    with pytest.raises(ValidationError, match=r"(?s)taps.*0 to 15; got \[4, 19\]"):
        PatchCoreRecipe(taps=(4, 19))
    with pytest.raises(ValidationError, match="increasing"):
        PatchCoreRecipe(taps=(10, 4))


def _fitted(**recipe: object) -> PatchCore:
    # Stride 8 (grid_pool 1), so four small images give the 200-entry bank these search tests count on.
    settings = {"input_size": (SIZE, SIZE), "grid_pool": 1, "min_memory_bank": 200, "reweight_neighbours": 0}
    settings |= recipe
    model = PatchCore(PatchCoreRecipe.model_validate(settings))
    model.fit(_parts(4, 0), _parts(2, 1))
    return model


@pytest.mark.parametrize("bank_quantization", ["int8", "none", "pq"])
def test_a_shortlist_of_the_whole_bank_measures_every_entry(bank_quantization: str) -> None:
    images = torch.from_numpy(_parts(2, 5))
    full = _fitted(bank_quantization=bank_quantization, shortlist_dim=0)
    listed = _fitted(bank_quantization=bank_quantization, shortlist_dim=8, shortlist_size=100_000)
    with torch.no_grad():
        exact, shortlisted = full(images), listed(images)
    torch.testing.assert_close(shortlisted.anomaly_map, exact.anomaly_map, rtol=1e-4, atol=1e-3)


def test_the_shortlist_index_is_not_saved_but_rebuilt_on_load() -> None:
    fitted = _fitted(shortlist_dim=8)
    state = fitted.state_dict()
    assert "shortlist_bank" not in state  # derived from the bank
    loaded = PatchCore(fitted.recipe)
    for name in ("bank_codes", "bank_neighbours"):  # sized by the data, as trainer.bundle sizes them
        setattr(loaded, name, torch.empty_like(state[name]))
    loaded.load_state_dict(state)
    assert loaded.shortlist_bank.shape == (200, 8)
    torch.testing.assert_close(loaded.shortlist_bank, fitted.shortlist_bank)


def test_a_short_shortlist_never_finds_an_entry_nearer_than_the_nearest() -> None:
    images = torch.from_numpy(_parts(2, 6))
    full = _fitted(shortlist_dim=0)
    listed = _fitted(shortlist_dim=4, shortlist_size=2)
    with torch.no_grad():
        exact, shortlisted = full(images).anomaly_map, listed(images).anomaly_map
    # Smoothing has non-negative weights, so a per-patch upper bound stays one on the map.
    assert (shortlisted >= exact - 1e-3).all()
    assert shortlisted.mean() < 1.5 * exact.mean()
    assert listed.shortlist_bytes() == (152 * 4 + 200 * 4 + 200) * 4


@pytest.mark.parametrize(("k", "group"), [(1, 8), (8, 8), (5, 4), (30, 8), (64, 8)])
def test_smallest_finds_the_k_smallest_of_every_row(k: int, group: int) -> None:
    values = torch.randn(50, 64, generator=torch.Generator().manual_seed(k))
    found = smallest(values, k, group)
    expected = values.topk(k, dim=1, largest=False).indices
    assert (found.sort(dim=1).values == expected.sort(dim=1).values).all()


def _fit_with_seed(seed: int) -> tuple[PatchCore, FitResult]:
    # 24 + 8 noise images of 64 x 64 (below the OpenVINO threshold, so torch eager), 2048 patches, a bank of 200.
    recipe = PatchCoreRecipe(input_size=(SIZE, SIZE), min_memory_bank=200, seed=seed)
    model = PatchCore(recipe)
    return model, model.fit(_parts(24, 10), _parts(8, 11))


def test_fit_is_deterministic_for_a_seed_and_the_seed_picks_the_coreset() -> None:
    first, first_result = _fit_with_seed(0)
    again, again_result = _fit_with_seed(0)
    other, _ = _fit_with_seed(1)
    state, state_again, state_other = first.state_dict(), again.state_dict(), other.state_dict()
    assert state.keys() == state_again.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, state_again[name]), name
    assert first_result.summary["memory_bank"] == 200
    torch.testing.assert_close(again_result.validation.score, first_result.validation.score, rtol=0, atol=0)
    torch.testing.assert_close(again_result.validation.anomaly_map, first_result.validation.anomaly_map, rtol=0, atol=0)
    # Another seed: another random projection and start for the greedy coreset, so other patches in the bank.
    assert state_other["bank_codes"].shape == state["bank_codes"].shape
    assert not torch.equal(state_other["bank_codes"], state["bank_codes"])
    # Not only another order of the same picks: other patches.
    assert {tuple(r) for r in state_other["bank_codes"].tolist()} != {tuple(r) for r in state["bank_codes"].tolist()}


def test_patch_rows_lays_out_every_patch_image_by_image_and_releases_the_batches() -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal((n, 5, 3, 4)).astype(np.float32) for n in (2, 3, 1)]
    expected = np.concatenate([c.transpose(0, 2, 3, 1).reshape(-1, 5) for c in chunks])
    rows = patch_rows(list(chunks))
    np.testing.assert_array_equal(rows, expected)
    assert rows.shape == (6 * 3 * 4, 5)
    held = list(chunks)
    patch_rows(held)
    assert held == []


@pytest.mark.parametrize("bank_quantization", ["int8", "none"])
def test_the_eager_exact_search_matches_the_graph_form(bank_quantization: str) -> None:
    model = _fitted(bank_quantization=bank_quantization, shortlist_dim=0)
    bank = model.memory_bank()
    maps = torch.randn(3, bank.shape[1], 10, 10)
    patches = maps.permute(0, 2, 3, 1).reshape(-1, bank.shape[1])
    graph = model._nearest_in_graph(model._quantized_queries(maps))
    eager = nearest_in_eager(torch.cat(model._quantized_queries(patches), dim=1), bank)
    torch.testing.assert_close(eager, graph, rtol=1e-4, atol=1e-3)


def _scale_per_tap(model: PatchCore) -> None:
    """The int8 bank as bundles fitted before one scale was shared hold it: a scale per tap, bank and queries."""
    codes, scale = int8_encode(model.memory_bank().numpy(), model.blocks)
    model.bank_codes, model.bank_scale = torch.from_numpy(codes), torch.from_numpy(scale)
    model.query_scale = model.query_scale * torch.linspace(1.0, 1.2, len(model.blocks))
    model.index_bank(model.memory_bank())


@pytest.mark.parametrize("per_tap", [False, True])
def test_the_graph_search_and_its_reweighting_rows_match_eager_for_either_int8_scale_layout(per_tap: bool) -> None:
    model = _fitted(shortlist_dim=0)
    if per_tap:
        _scale_per_tap(model)
    assert model.search_blocks == (model.blocks if per_tap else [model.feature_dim])
    bank = model.memory_bank()
    maps = model._quantized_queries(torch.randn(3, bank.shape[1], 10, 10))
    patches = torch.cat(maps, dim=1).permute(0, 2, 3, 1).reshape(-1, bank.shape[1])
    torch.testing.assert_close(model._nearest_in_graph(maps), nearest_in_eager(patches, bank), rtol=1e-4, atol=1e-3)
    worst = torch.tensor([0, 57, 99])  # a patch of each image
    rows = patches[torch.arange(3) * 100 + worst]
    torch.testing.assert_close(model._worst_in_graph(maps, worst), squared_distances(rows, bank), rtol=1e-4, atol=1e-3)


def test_grid_pool_averages_the_patch_grid_for_the_bank_and_for_every_frame() -> None:
    images = torch.from_numpy(_parts(2, 3))
    fine = PatchCore(PatchCoreRecipe(input_size=(SIZE, SIZE), grid_pool=1))
    coarse = PatchCore(PatchCoreRecipe(input_size=(SIZE, SIZE), grid_pool=2))
    with torch.no_grad():
        f, c = fine.embed(images), coarse.embed(images)
    assert c.shape[-2:] == (f.shape[-2] // 2, f.shape[-1] // 2)
    torch.testing.assert_close(c[..., 1, 2], f[..., 2:4, 4:6].mean(dim=(-2, -1)))
    model = PatchCore(PatchCoreRecipe(input_size=(SIZE, SIZE), grid_pool=2, min_memory_bank=200))
    summary = model.fit(_parts(4, 0), _parts(2, 1)).summary
    assert summary["patches"] == 4 * c.shape[-2] * c.shape[-1]  # the bank is chosen from pooled patches
    with torch.no_grad():
        assert model(images).anomaly_map.shape == (2, 1, SIZE, SIZE)
