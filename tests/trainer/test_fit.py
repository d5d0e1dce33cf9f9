from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from in_process import run_main
from pipeline import Pipeline

import trainer.cli
from trainer.bundle import BundleError, load_bundle, read_manifest
from trainer.data.layouts import discover
from trainer.data.synthetic import SyntheticSpec, generate
from trainer.fit import calibrate_threshold, load_recipe
from trainer.metrics import allowed_count, false_reject_threshold, miss_rate_threshold
from trainer.predict import predict_scores, read_frames
from trainer.targets import MISS_RATE


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
        ("bad_model", "unknown model 'cflow'"),
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
        args += ["--config", str(recipe)] if setup == "bad_recipe" else ["--model", "cflow"]
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


# --- thresholds set by --target-rate ------------------------------------------------------------------------

TINY_RECIPE = "input_size: [64, 64]\nmin_memory_bank: 64\n"
# 12 goods: 10 to learn from, 2 to validate. Three defect types of 3 images each.
WITH_TEST_GOODS = SyntheticSpec(size=64, train_good=12, test_good=4, test_defects_per_type=3)
WITHOUT_TEST_GOODS = SyntheticSpec(size=64, train_good=12, test_good=0, test_defects_per_type=3)
TEST_DEFECTS, TEST_GOODS, VALIDATION_GOODS = 9, 4, 2
IN_SAMPLE = "(in-sample: expect worse on new parts)"
CHOSEN_ON_WORDS = {"test defects": "labelled defective test images", "test goods": "labelled good test images"}


@dataclass(frozen=True)
class TargetFit:
    data: Path
    bundle: Path
    rate: float
    result: subprocess.CompletedProcess[str]


def fit_to_target(root: Path, spec: SyntheticSpec, method: str, rate: float) -> TargetFit:
    data = generate(root / "data", spec)
    recipe = root / "r.yaml"
    recipe.write_text(TINY_RECIPE)
    bundle = root / "model"
    options = ["--config", str(recipe), "--threshold", method, "--target-rate", str(rate)]
    result = run_trainer("fit", "--data", str(data), "--out", str(bundle), *options)
    assert result.returncode == 0, result.stderr
    return TargetFit(data, bundle, rate, result)


@pytest.fixture(scope="module")
def target_fits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TargetFit]:
    """One tiny fit per method on a set with labelled test goods, and one choosing on the validation goods."""
    return {
        "miss-rate": fit_to_target(tmp_path_factory.mktemp("miss"), WITH_TEST_GOODS, "miss-rate", 0.34),
        "false-reject-rate": fit_to_target(
            tmp_path_factory.mktemp("reject"), WITH_TEST_GOODS, "false-reject-rate", 0.25
        ),
        "validation": fit_to_target(tmp_path_factory.mktemp("val"), WITHOUT_TEST_GOODS, "false-reject-rate", 0.3),
    }


def rescore(fitted: TargetFit) -> tuple[np.ndarray, np.ndarray]:
    """Goods' and defects' scores of the test images, computed as fit computes them: torch eager (13 images are
    too few for fit to compile with OpenVINO) over the frames in the data set's order, in one batch."""
    model, manifest = load_bundle(fitted.bundle)
    samples = discover(fitted.data).test
    frames, kept, _ = read_frames([s.path for s in samples])
    assert len(kept) == len(samples)
    scores = predict_scores(model, frames, manifest.geometry)
    is_defect = np.array([s.is_defect for s in samples])
    return scores[~is_defect], scores[is_defect]


def printed_threshold_line(fitted: TargetFit) -> str:
    lines = [line for line in fitted.result.stdout.splitlines() if line.startswith("threshold ")]
    assert len(lines) == 1, fitted.result.stdout
    return lines[0]


@pytest.mark.parametrize("method", ["miss-rate", "false-reject-rate"])
def test_fit_to_a_target_rate_lands_where_the_test_scores_say(target_fits: dict[str, TargetFit], method: str) -> None:
    fitted = target_fits[method]
    manifest = read_manifest(fitted.bundle)
    goods, defects = rescore(fitted)
    if method == MISS_RATE:
        expected, chosen_on, count = miss_rate_threshold(defects, fitted.rate), "test defects", TEST_DEFECTS
    else:
        expected, chosen_on, count = false_reject_threshold(goods, fitted.rate), "test goods", TEST_GOODS
    assert manifest.threshold == expected
    assert manifest.threshold_method == method
    target = manifest.threshold_target
    assert target is not None
    assert (target.method, target.target_rate) == (method, fitted.rate)
    assert (target.chosen_on, target.chosen_on_count) == (chosen_on, count)
    caught, rejected = int((defects >= expected).sum()), int((goods >= expected).sum())
    assert target.operating_point.model_dump() == {
        "defects_caught": caught,
        "defects": TEST_DEFECTS,
        "goods_rejected": rejected,
        "goods": TEST_GOODS,
        "goods_from": "test goods",
    }
    if method == MISS_RATE:
        assert TEST_DEFECTS - caught <= allowed_count(TEST_DEFECTS, fitted.rate)
    else:
        assert rejected <= allowed_count(TEST_GOODS, fitted.rate)
    # The manifest's test figures are those of the bundle's threshold, the one chosen.
    assert manifest.metrics["test_reject_rate_defect"] == pytest.approx(caught / TEST_DEFECTS)
    assert manifest.metrics["test_reject_rate_good"] == pytest.approx(rejected / TEST_GOODS)
    assert printed_threshold_line(fitted) == (
        f"threshold {expected:.4g} ({method} ≤ {100 * fitted.rate:g}%): catches {caught}/{TEST_DEFECTS} defects "
        f"({100 * caught / TEST_DEFECTS:.1f}%), rejects {rejected}/{TEST_GOODS} goods "
        f"({100 * rejected / TEST_GOODS:.1f}%), chosen on the {count} {CHOSEN_ON_WORDS[chosen_on]} {IN_SAMPLE}"
    )


def test_fit_to_a_false_reject_rate_without_test_goods_uses_the_validation_goods(
    target_fits: dict[str, TargetFit],
) -> None:
    fitted = target_fits["validation"]
    manifest = read_manifest(fitted.bundle)
    # 0.3 of 2 validation goods allows no reject: just above the highest validation score, in float32.
    highest = np.float32(manifest.validation_scores.max)
    assert manifest.threshold == np.nextafter(highest, np.float32(np.inf))
    target = manifest.threshold_target
    assert target is not None
    assert (target.chosen_on, target.chosen_on_count) == ("validation goods", VALIDATION_GOODS)
    _, defects = rescore(fitted)
    caught = int((defects >= manifest.threshold).sum())
    assert target.operating_point.model_dump() == {
        "defects_caught": caught,
        "defects": TEST_DEFECTS,
        "goods_rejected": 0,
        "goods": VALIDATION_GOODS,
        "goods_from": "validation goods",
    }
    assert "--target-rate 0.3 is finer than 2 goods can show" in fitted.result.stderr
    line = printed_threshold_line(fitted)
    assert "rejects 0/2 goods (0.0%), chosen on the 2 held-out validation goods" in line
    assert line.endswith(IN_SAMPLE)


def test_manifests_without_a_threshold_target_still_load(target_fits: dict[str, TargetFit], tmp_path: Path) -> None:
    source = target_fits["miss-rate"].bundle
    for f in source.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    raw = yaml.safe_load((source / "manifest.yaml").read_text())
    older = {k: v for k, v in raw.items() if k != "threshold_target"} | {"threshold_method": "quantile"}
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(older))
    assert read_manifest(tmp_path).threshold_target is None
    # A target method without its target block, or an unknown key in the block, is refused.
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(older | {"threshold_method": "miss-rate"}))
    with pytest.raises(BundleError, match="not a valid model manifest"):
        read_manifest(tmp_path)
    raw["threshold_target"]["chosen_by"] = "me"
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(BundleError, match="not a valid model manifest"):
        read_manifest(tmp_path)
