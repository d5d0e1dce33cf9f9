from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from in_process import run_main
from pipeline import Pipeline

import trainer.cli
from trainer.bundle import BundleError, load_bundle
from trainer.data.synthetic import SyntheticSpec, generate
from trainer.fit import calibrate_threshold, load_recipe


def run_trainer(*args: str) -> subprocess.CompletedProcess[str]:
    return run_main(trainer.cli.main, "trainer", *args)


def test_bundle_has_manifest_weights_and_separates_defects(pipeline: Pipeline) -> None:
    model, manifest = load_bundle(pipeline.model)
    assert manifest.model == "patchcore"
    assert manifest.input.height == 128
    assert manifest.metrics["image_auroc"] >= 0.95
    assert manifest.threshold >= manifest.validation_scores.max * 0.9
    state = torch.load(pipeline.model / "weights.pt", weights_only=True)
    assert state["bank_codes"].dtype == torch.int8
    assert state["bank_codes"].shape[0] == manifest.fit_summary["memory_bank"]
    # The default search is exact: no shortlist index, in the file or in the model.
    assert "shortlist_bank" not in state and not hasattr(model, "shortlist_bank")
    with torch.no_grad():
        prediction = model(torch.zeros(2, 128, 128, 3, dtype=torch.uint8))
    assert prediction.anomaly_map.shape == (2, 1, 128, 128)
    assert prediction.score.shape == (2,)


def test_tampered_weights_are_refused(pipeline: Pipeline, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    copy.mkdir()
    for f in pipeline.model.iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    with (copy / "weights.pt").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(copy)


def test_threshold_extrapolates_small_holdouts() -> None:
    scores = np.array([10.0, 10.5, 11.0, 10.2, 9.8])
    assert calibrate_threshold(scores, 0.99) > scores.max()


def test_fit_cli_skips_a_corrupt_image_and_counts_it(tmp_path: Path, pipeline: Pipeline) -> None:
    data = tmp_path / "data"
    (data / "good").mkdir(parents=True)
    for i, image in enumerate(sorted((pipeline.data / "train" / "good").iterdir())[:8]):
        (data / "good" / f"{i}.png").write_bytes(image.read_bytes())
    (data / "good" / "broken.png").write_bytes(b"\x89PNG truncated")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("input_size: [64, 64]\nmin_memory_bank: 64\n")
    result = run_trainer("fit", "--data", str(data), "--out", str(tmp_path / "m"), "--config", str(recipe))
    assert result.returncode == 0, result.stderr
    assert "skipping" in result.stderr and "broken.png" in result.stderr
    manifest = yaml.safe_load((tmp_path / "m" / "manifest.yaml").read_text())
    assert [Path(p).name for p in manifest["training_set"]["skipped"]] == ["broken.png"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("empty", "no images of good parts"),
        ("bad_recipe", "unknown recipe key 'coreset_ratioo'"),
        ("bad_model", "unknown model 'padim'"),
    ],
)
def test_fit_cli_bad_input_is_one_clear_line(tmp_path: Path, setup: str, message: str) -> None:
    data = tmp_path / "data"
    args = ["fit", "--data", str(data), "--out", str(tmp_path / "m")]
    if setup != "missing":
        (data / "good").mkdir(parents=True)
    if setup in ("bad_recipe", "bad_model"):
        (data / "good" / "a.png").write_bytes(b"x")
        recipe = tmp_path / "r.yaml"
        recipe.write_text("coreset_ratioo: 0.1\n")
        args += ["--config", str(recipe)] if setup == "bad_recipe" else ["--model", "padim"]
    result = run_trainer(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_shipped_recipe_is_valid() -> None:
    recipe = load_recipe("patchcore", Path(__file__).resolve().parents[2] / "configs" / "patchcore.yaml")
    assert recipe.model.taps == (4, 10)
    assert recipe.geometry.mode == "squash"


@pytest.mark.parametrize("distribution", ["normal", "lognormal"])
@pytest.mark.parametrize("seed", range(3))
def test_threshold_quantile_holds_on_unseen_scores(distribution: str, seed: int) -> None:
    # 2,000 validation scores set the threshold; 20,000 fresh ones from the same distribution measure the false
    # rejects it gives. The lognormal's tail is heavier than a normal fit's, so there the empirical quantile must
    # win: a normal fit alone would reject about 3% at q = 0.99.
    rng = np.random.default_rng(seed)

    def draw(count: int) -> np.ndarray:
        if distribution == "normal":
            return rng.normal(10.0, 1.5, count)
        return rng.lognormal(0.0, 0.5, count)

    val, held_out = draw(2_000), draw(20_000)
    thresholds = []
    for q in (0.9, 0.95, 0.99):
        threshold = calibrate_threshold(val, q)
        thresholds.append(threshold)
        assert threshold >= np.quantile(val, q)
        false_rejects = float((held_out >= threshold).mean())
        assert 0.5 * (1 - q) <= false_rejects <= 1.5 * (1 - q), (q, false_rejects)
    assert thresholds[0] < thresholds[1] < thresholds[2]


def test_fit_cli_threshold_rises_with_the_threshold_quantile(tmp_path: Path) -> None:
    data = generate(tmp_path / "data", SyntheticSpec(size=64, train_good=20, test_good=0, test_defects_per_type=0))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("input_size: [64, 64]\nmin_memory_bank: 64\n")
    manifests = []
    for q in ("0.6", "0.999"):
        out = tmp_path / f"m{q}"
        result = run_trainer(
            "fit", "--data", str(data), "--out", str(out), "--config", str(recipe), "--threshold-quantile", q
        )
        assert result.returncode == 0, result.stderr
        manifests.append(yaml.safe_load((out / "manifest.yaml").read_text()))
    low, high = manifests
    assert (low["threshold_quantile"], high["threshold_quantile"]) == (0.6, 0.999)
    # Same split, same bank, same validation scores: only the quantile differs.
    assert low["validation_scores"] == high["validation_scores"]
    assert low["threshold"] < high["threshold"]
    assert high["threshold"] > high["validation_scores"]["max"]
