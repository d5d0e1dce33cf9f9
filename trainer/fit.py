"""`trainer fit`: read good images, hold some out, fit the model, calibrate the threshold, write the bundle."""

from __future__ import annotations

import hashlib
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import ValidationError
from tqdm import tqdm

from trainer.bundle import ModelManifest, write_bundle
from trainer.data.images import load_for_model
from trainer.data.layouts import DataError, discover
from trainer.metrics import image_auroc, score_stats
from trainer.models import REGISTRY

log = logging.getLogger(__name__)

MIN_TRAIN_IMAGES = 2
PREDICT_BATCH = 16


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
    seed: int = 0


def load_recipe(model: str, path: Path | None) -> Any:
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
    try:
        return entry.recipe.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        what = "is not a key of this model's recipe" if first["type"] == "extra_forbidden" else first["msg"]
        raise RecipeError(f"recipe key '{key}' {what}") from None


@torch.no_grad()
def predict_scores(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    scores = [
        model(torch.from_numpy(images[i : i + PREDICT_BATCH])).score for i in range(0, len(images), PREDICT_BATCH)
    ]
    return torch.cat(scores).numpy() if scores else np.zeros(0, np.float32)


def calibrate_threshold(holdout_scores: np.ndarray, quantile: float) -> float:
    """The score above which a good part is expected with probability 1 - `quantile`.

    Hold-out sets are small, so the empirical quantile alone sits at the largest score seen and rejects the
    next slightly worse good part. A normal fit to the scores extrapolates the tail; the larger of the two wins.
    """
    empirical = float(np.quantile(holdout_scores, quantile))
    if len(holdout_scores) < 2:
        return empirical
    z = statistics.NormalDist().inv_cdf(quantile)
    return max(empirical, float(holdout_scores.mean() + z * holdout_scores.std(ddof=1)))


def _files_hash(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.name.encode())
        digest.update(hashlib.sha256(p.read_bytes()).digest())
    return digest.hexdigest()


def fit(options: FitOptions) -> ModelManifest:
    recipe = load_recipe(options.model, options.recipe)
    data = discover(options.data, options.category)
    height, width = recipe.input_size
    loaded = load_for_model(tqdm(data.train, desc="reading good images", unit="img"), height, width)
    if len(loaded.images) < MIN_TRAIN_IMAGES:
        raise DataError(f"only {len(loaded.images)} readable good image(s) in {options.data}; need at least 2")
    if loaded.skipped:
        log.warning("skipped %d unreadable image(s) of %d", len(loaded.skipped), len(data.train))

    rng = np.random.default_rng(options.seed)
    order = rng.permutation(len(loaded.images))
    n_hold = max(1, round(len(order) * options.holdout))
    hold_idx, train_idx = np.sort(order[:n_hold]), np.sort(order[n_hold:])

    torch.manual_seed(recipe.seed)
    model = REGISTRY[options.model].model(recipe)
    with tqdm(total=len(train_idx), desc=f"fitting {options.model}", unit="img") as bar:
        summary = model.fit(loaded.images[train_idx], progress=bar.update)

    holdout_scores = predict_scores(model, loaded.images[hold_idx])
    threshold = calibrate_threshold(holdout_scores, options.threshold_quantile)
    metrics: dict[str, float] = {}
    defects = [s for s in data.test if s.is_defect]
    if defects:
        test = load_for_model(tqdm([s.path for s in data.test], desc="scoring test images", unit="img"), height, width)
        readable = set(test.paths)
        labels = np.array([s.is_defect for s in data.test if s.path in readable])
        scores = predict_scores(model, test.images)
        if labels.any() and not labels.all():
            metrics["image_auroc"] = image_auroc(scores, labels)
        metrics["test_reject_rate_defect"] = float((scores[labels] >= threshold).mean())
        if not labels.all():
            metrics["test_reject_rate_good"] = float((scores[~labels] >= threshold).mean())

    manifest: dict[str, Any] = {
        "model": options.model,
        "backbone": "efficientnet-lite0",
        "recipe": recipe.model_dump(mode="json"),
        "input": {"height": height, "width": width},
        "normalization": {"mean": 127.0, "std": 128.0, "in_graph": True},
        "training_set": {
            "root": str(options.data.resolve()),
            "layout": data.layout,
            "count": len(train_idx),
            "skipped": [str(p) for p in loaded.skipped],
            "sha256": _files_hash([loaded.paths[i] for i in train_idx]),
            "holdout": [str(loaded.paths[i].resolve()) for i in hold_idx],
        },
        "fit_summary": summary,
        "holdout_scores": score_stats(holdout_scores),
        "threshold": threshold,
        "threshold_quantile": options.threshold_quantile,
        "metrics": metrics,
    }
    return write_bundle(options.out, model, manifest)
