"""`trainer fit`: read good images, hold some out, fit the model, calibrate the threshold, write the bundle.

With few good images PatchCore and PaDiM learn from all of them and calibrate by leave-one-out (trainer/few_shot.py)."""

from __future__ import annotations

import hashlib
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import yaml
from pydantic import ValidationError
from torch import nn
from tqdm import tqdm

from edge_agent.geometry import Geometry, Prepared, prepare
from trainer import few_shot
from trainer.bundle import ModelManifest, write_bundle
from trainer.data.dataset import DataError, Dataset
from trainer.data.layouts import discover
from trainer.fit_target import NEEDS_DEFECTS, LabelledScores, target_threshold, threshold_target
from trainer.metrics import f1_max, image_auroc, score_stats
from trainer.models import REGISTRY, Fittable, RecipeFields
from trainer.models.prediction import Prediction
from trainer.predict import (
    combine_frames,
    model_inputs,
    predict_scores,
    read_frames,
    scoring_model,
    warn_mixed_sizes,
)
from trainer.targets import MISS_RATE, TARGET_METHODS, OptionError, Target

log = logging.getLogger(__name__)

# The threshold's normal fit needs a sample standard deviation (calibrate_threshold), so at least 2 scores; a
# model needs at least one image to learn from besides them.
MIN_VALIDATION_IMAGES = 2
MIN_TRAIN_IMAGES = 1
HOLDOUT_MIN, HOLDOUT_MAX = 0.05, 0.5  # the range `trainer fit --holdout` accepts
HOLDOUT_STEP = 0.05  # granularity of the --holdout suggested when the good images are too few
QUANTILE_THRESHOLD = "quantile"
F1_THRESHOLD = "f1"
THRESHOLD_METHODS = (QUANTILE_THRESHOLD, F1_THRESHOLD, *TARGET_METHODS)


class RecipeError(Exception):
    pass


@dataclass(frozen=True)
class FitOptions:
    data: Path
    model: str
    out: Path
    recipe: Path | None = None
    category: str | None = None
    holdout: float = 0.2
    threshold_quantile: float = 0.99
    # "f1": the F1-optimal threshold on labelled test images; "miss-rate" / "false-reject-rate": the threshold
    # letting at most `target_rate` of the defects escape / of the goods be rejected.
    threshold: str = QUANTILE_THRESHOLD
    target_rate: float | None = None
    seed: int = 0
    device: str = "cpu"  # where models that train (SimpleNet, FastFlow) train: cpu or cuda


@dataclass(frozen=True)
class Recipe:
    """A training recipe file: the model's own keys plus the shared `geometry` section."""

    model: Any  # the registry entry's recipe class
    geometry: Geometry


def _recipe_error(exc: ValidationError, prefix: str = "") -> RecipeError:
    first = exc.errors()[0]
    key = prefix + ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return RecipeError(f"unknown recipe key '{key}'; check its spelling (configs/ has a commented recipe)")
    return RecipeError(f"recipe key '{key}': {first['msg']}")


def load_recipe(model: str, path: Path | None) -> Recipe:
    entry = REGISTRY.get(model)
    if entry is None:
        raise RecipeError(f"unknown model '{model}'; known models: {', '.join(sorted(REGISTRY))}")
    raw: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise RecipeError(f"recipe {path} must be a YAML mapping of recipe keys")
    geometry_keys = raw.pop("geometry", None) or {}
    if not isinstance(geometry_keys, dict):
        raise RecipeError("recipe key 'geometry' must be a mapping with 'mode' (squash, letterbox or tile)")
    try:
        model_recipe = entry.recipe.model_validate(raw)
    except ValidationError as exc:
        raise _recipe_error(exc) from None
    height, width = cast(RecipeFields, model_recipe).input_size
    try:
        geometry = Geometry.model_validate({**geometry_keys, "height": height, "width": width})
    except ValidationError as exc:
        raise _recipe_error(exc, "geometry.") from None
    return Recipe(model_recipe, geometry)


def training_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RecipeError(f"--device {name}: not a torch device; use cpu or cuda (cuda:1 for a second GPU)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"--device {name}: this torch build sees no CUDA GPU; use --device cpu")
    return device


def calibrate_threshold(val_scores: np.ndarray, quantile: float) -> float:
    """The score above which a good part is expected with probability 1 - `quantile`.

    Hold-out sets are small, so the empirical quantile alone sits at the largest score seen and rejects the
    next slightly worse good part. A normal fit to the scores extrapolates the tail; the larger of the two wins.
    """
    empirical = float(np.quantile(val_scores, quantile))
    if len(val_scores) < 2:
        return empirical
    z = statistics.NormalDist().inv_cdf(quantile)
    return max(empirical, float(val_scores.mean() + z * val_scores.std(ddof=1)))


def _files_hash(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.name.encode())
        digest.update(hashlib.sha256(p.read_bytes()).digest())
    return digest.hexdigest()


def _holdout_count(count: int, share: float) -> int:
    return max(1, round(count * share))


def _split_fits(count: int, share: float) -> bool:
    n_hold = _holdout_count(count, share)
    return n_hold >= MIN_VALIDATION_IMAGES and count - n_hold >= MIN_TRAIN_IMAGES


def _split(count: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    n_hold = _holdout_count(count, share)
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def _images_needed(share: float) -> int:
    """The fewest good images whose split at `share` leaves enough to train on and to calibrate with.

    Counted through the split itself (it rounds), not as ceil(MIN / share), so the figure is exact."""
    count = MIN_VALIDATION_IMAGES + MIN_TRAIN_IMAGES
    while not _split_fits(count, share):
        count += 1
    return count


def _check_enough_images(count: int, share: float, folder: str) -> None:
    if not 0 < share < 1:
        raise RecipeError(f"--holdout {share:g}: must be a share above 0 and below 1")
    if _split_fits(count, share):
        return
    needed = _images_needed(share)
    grid = [round(k * HOLDOUT_STEP, 2) for k in range(1, round(HOLDOUT_MAX / HOLDOUT_STEP) + 1)]
    fitting = next((h for h in grid if h > share and _split_fits(count, h)), None)
    remedy = "add good images" + (f" or raise --holdout to {fitting:g}" if fitting is not None else "")
    found = f"{count} readable good image{'' if count == 1 else 's'}"
    raise DataError(
        f"{found} in {folder}; at least {needed} are needed (--holdout {share:g} must leave {MIN_VALIDATION_IMAGES} "
        f"validation images to calibrate the threshold, and {MIN_TRAIN_IMAGES} to train on); {remedy}"
    )


def _good_folder(data: Dataset, given: Path) -> str:
    """Where the good images were found, for messages: their folder, or what --data said when they are spread."""
    parents = {p.parent for p in data.train}
    return str(parents.pop()) if len(parents) == 1 else str(given)


def _warn_small_bank(summary: dict[str, Any], recipe: Any, images: int) -> None:
    """PatchCore's coreset keeps every patch when there are fewer than `min_memory_bank`; say so, not silently."""
    requested = getattr(recipe, "min_memory_bank", None)
    bank = summary.get("memory_bank")
    if requested is None or bank is None or bank >= requested:
        return
    log.warning(
        "the recipe asks for a memory bank of %d entries (min_memory_bank) but %d good images give only %d "
        "patches; the bank keeps all %d. Add good images, or set min_memory_bank to %d or less",
        requested,
        images,
        summary.get("candidates", bank),
        bank,
        bank,
    )


def _score_test_images(model: torch.nn.Module, data: Dataset, geometry: Geometry) -> LabelledScores:
    if not data.test:
        return LabelledScores(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=bool))
    frames, kept, _ = read_frames(tqdm([s.path for s in data.test], desc="reading test images", unit="img"))
    label_of = {s.path: s.is_defect for s in data.test}
    is_defect = np.array([label_of[p] for p in kept], dtype=bool)
    if not frames:
        return LabelledScores(np.zeros(0, dtype=np.float32), is_defect)
    return LabelledScores(predict_scores(scoring_model(model, geometry, len(frames)), frames, geometry), is_defect)


def _test_metrics(test: LabelledScores, threshold: float) -> dict[str, float]:
    """Image-level figures at the bundle's threshold, when the data set has defects to measure against."""
    labels = test.is_defect
    if not labels.any():
        return {}
    metrics: dict[str, float] = {"test_reject_rate_defect": float((test.defects >= threshold).mean())}
    if not labels.all():
        best = f1_max(test.scores, labels)
        metrics |= {
            "image_auroc": image_auroc(test.scores, labels),
            "test_reject_rate_good": float((test.goods >= threshold).mean()),
            "f1_max": best.f1,
            "f1_threshold": best.threshold,
        }
    return metrics


def _f1_threshold(test: LabelledScores) -> float:
    if not test.is_defect.any() or test.is_defect.all():
        raise DataError("--threshold f1 needs labelled good and defective test images in the data set")
    return f1_max(test.scores, test.is_defect).threshold


def _frame_scores(validation: Prediction, prepared: list[Prepared], geometry: Geometry) -> np.ndarray:
    """One score per validation frame, combined from its inputs' predictions the way the agent combines them."""
    maps, scores = list(validation.anomaly_map[:, 0].numpy()), validation.score.numpy().tolist()
    return np.array([c.score for c in combine_frames(prepared, maps, scores, geometry)], dtype=np.float32)


def _check_threshold_options(options: FitOptions) -> Target | None:
    """--threshold is one fit knows, and --target-rate goes with it; checked before any image is read."""
    if options.threshold not in THRESHOLD_METHODS:
        raise OptionError(f"--threshold {options.threshold}: unknown; use one of {', '.join(THRESHOLD_METHODS)}")
    return threshold_target(options.threshold, options.target_rate)


def _fit_with_holdout(
    model: nn.Module, name: str, train: list[np.ndarray], held_out: list[np.ndarray], geometry: Geometry
) -> tuple[dict[str, Any], np.ndarray]:
    """Fit on `train` and score the held-out goods, which the model never learns from: the fit summary, and one
    out-of-sample score per held-out image."""
    inputs = model_inputs(train, geometry)
    val_prepared = [prepare(f, geometry) for f in held_out]
    val_inputs = np.concatenate([p.inputs for p in val_prepared])
    with tqdm(total=len(inputs) + len(val_inputs), desc=f"fitting {name}", unit="input") as bar:
        result = cast(Fittable, model).fit(inputs, val_inputs, progress=bar.update)
    del inputs, val_inputs
    return result.summary, _frame_scores(result.validation, val_prepared, geometry)


def fit(options: FitOptions) -> ModelManifest:
    target = _check_threshold_options(options)
    recipe = load_recipe(options.model, options.recipe)
    geometry = recipe.geometry
    data = discover(options.data, options.category)
    if options.threshold == MISS_RATE and not any(sample.is_defect for sample in data.test):
        raise DataError(NEEDS_DEFECTS)  # before the fit, which may take long
    started = time.perf_counter()
    frames, paths, skipped = read_frames(tqdm(data.train, desc="reading good images", unit="img"))
    read_s = time.perf_counter() - started
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d", len(skipped), len(data.train))
    folder = _good_folder(data, options.data)
    few_shot_mode = few_shot.applies(options.model, len(frames))
    if few_shot_mode:
        few_shot.check_images(options.model, len(frames), folder)
    else:
        _check_enough_images(len(frames), options.holdout, folder)
    warn_mixed_sizes([(f.shape[0], f.shape[1]) for f in frames], "good images", geometry, "recipe's")

    torch.manual_seed(recipe.model.seed)
    model = REGISTRY[options.model].model(recipe.model).to(training_device(options.device))
    if few_shot_mode:
        train_idx, val_idx = np.arange(len(frames)), np.zeros(0, dtype=int)
        with tqdm(total=len(model_inputs(frames, geometry)), desc=f"fitting {options.model}", unit="input") as bar:
            shot = few_shot.fit_few_shot(model, frames, geometry, progress=bar.update)
        few_shot.announce(shot, options.holdout)
        summary, val_scores = shot.summary, shot.scores
    else:
        train_idx, val_idx = _split(len(frames), options.holdout, options.seed)
        learn, held_out = [frames[i] for i in train_idx], [frames[i] for i in val_idx]
        summary, val_scores = _fit_with_holdout(model, options.model, learn, held_out, geometry)
    _warn_small_bank(summary, recipe.model, len(train_idx))
    model.cpu().eval()
    threshold = calibrate_threshold(val_scores, options.threshold_quantile)
    scoring = time.perf_counter()
    test = _score_test_images(model, data, geometry)
    # Where the fit's wall time goes, beside the model's own stages: decoding and resizing the good images, and
    # reading and scoring the labelled test images for the metrics.
    stages = {"read_s": round(read_s, 2), "test_s": round(time.perf_counter() - scoring, 2)}
    target_block = None
    if options.threshold == F1_THRESHOLD:
        threshold = _f1_threshold(test)
    elif target is not None:
        threshold, target_block, warning = target_threshold(target, test, val_scores)
        if warning is not None:
            log.warning(warning)

    validation = [str(paths[i].resolve()) for i in val_idx]
    manifest: dict[str, Any] = {
        "model": options.model,
        "backbone": recipe.model.backbone,
        "recipe": recipe.model.model_dump(mode="json"),
        "input": {"height": geometry.height, "width": geometry.width},
        "geometry": geometry.model_dump(mode="json"),
        "normalization": {"mean": 127.0, "std": 128.0, "in_graph": True},
        "training_set": {
            "root": str(options.data.resolve()) if options.data.exists() else str(options.data),
            "layout": data.layout,
            "category": options.category,
            "count": len(train_idx),
            "skipped": [str(p) for p in skipped],
            "sha256": _files_hash([paths[i] for i in train_idx]),
            "validation": validation,
            "holdout": validation,
        },
        "fit_summary": {**summary, **stages},
        "validation_scores": score_stats(val_scores),
        "threshold": threshold,
        "threshold_method": options.threshold,
        "threshold_quantile": options.threshold_quantile,
        "threshold_target": target_block,
        "metrics": _test_metrics(test, threshold),
    }
    return write_bundle(options.out, model, manifest)
