"""The model bundle: what `trainer fit` writes and `converter bake` reads (DESIGN.md, Artifacts)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from edge_agent.geometry import Geometry
from edge_agent.hashing import sha256_file
from trainer.models import REGISTRY
from trainer.targets import TARGET_METHODS, ImageSet, TargetMethod

FORMAT_VERSION = 2
MANIFEST = "manifest.yaml"
WEIGHTS = "weights.pt"


class BundleError(Exception):
    pass


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    height: int
    width: int
    channels: int = 3
    dtype: str = "uint8"
    layout: str = "NHWC"


class ScoreStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    count: int
    mean: float
    std: float
    p50: float
    p99: float
    max: float


class TrainingSet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str
    layout: str
    category: str | None = None  # fit's --category: with root, where bake finds the training images again
    count: int
    skipped: list[str]
    sha256: str
    # Scored out-of-sample to calibrate the threshold. Empty, like holdout, after a few-shot fit, which learns from
    # every good image and scores each by leave-one-out (fit_summary.few_shot).
    validation: list[str]
    holdout: list[str]  # never learned from: fair test images for `trainer eval`


ThresholdMethod = Literal["quantile", "f1", TargetMethod]


class TargetOutcome(BaseModel):
    """What the bundle's threshold does on the images it was chosen on (`score >= threshold` rejects)."""

    model_config = ConfigDict(extra="forbid")
    defects_caught: int
    defects: int  # labelled defective test images; 0 when the data set has none
    goods_rejected: int
    goods: int
    goods_from: ImageSet  # the labelled good test images when there are any, else the validation goods


class ThresholdTarget(BaseModel):
    """How `trainer fit --threshold miss-rate|false-reject-rate` chose the threshold, and where it landed."""

    model_config = ConfigDict(extra="forbid")
    method: TargetMethod
    target_rate: float = Field(gt=0, lt=1)
    chosen_on: ImageSet
    chosen_on_count: int
    operating_point: TargetOutcome


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int
    model: str
    backbone: str
    recipe: dict[str, Any]
    input: InputSpec
    geometry: Geometry
    normalization: dict[str, Any]
    training_set: TrainingSet
    fit_summary: dict[str, Any]
    validation_scores: ScoreStats
    threshold: float
    threshold_method: ThresholdMethod
    threshold_quantile: float
    threshold_target: ThresholdTarget | None = None  # absent in bundles from before targets, and for quantile/f1
    metrics: dict[str, float]
    created_at: str
    files: dict[str, str]

    @model_validator(mode="after")
    def _target_matches_method(self) -> ModelManifest:
        wants_target = self.threshold_method in TARGET_METHODS
        if wants_target != (self.threshold_target is not None):
            raise ValueError("threshold_target belongs with threshold_method miss-rate or false-reject-rate only")
        if self.threshold_target is not None and self.threshold_target.method != self.threshold_method:
            raise ValueError("threshold_target.method differs from threshold_method")
        return self


def write_bundle(out: Path, model: nn.Module, manifest: dict[str, Any]) -> ModelManifest:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / WEIGHTS)
    manifest = {
        **manifest,
        "format_version": FORMAT_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "files": {WEIGHTS: sha256_file(out / WEIGHTS)},
    }
    typed = ModelManifest.model_validate(manifest)
    (out / MANIFEST).write_text(yaml.safe_dump(typed.model_dump(mode="json"), sort_keys=False))
    return typed


def read_manifest(bundle: Path) -> ModelManifest:
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle} is not a model bundle (no {MANIFEST}); make one with `trainer fit`")
    try:
        manifest = ModelManifest.model_validate(yaml.safe_load(path.read_text()))
    except (ValidationError, yaml.YAMLError) as exc:
        raise BundleError(f"{path} is not a valid model manifest: {str(exc).splitlines()[0]}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(f"{bundle} has format version {manifest.format_version}; this trainer reads {FORMAT_VERSION}")
    for name, expected in manifest.files.items():
        file = bundle / name
        if not file.is_file() or sha256_file(file) != expected:
            raise BundleError(f"{file} is missing or does not match its sha256 in the manifest; re-run `trainer fit`")
    return manifest


def load_bundle(bundle: Path) -> tuple[nn.Module, ModelManifest]:
    """The trained module (eval mode) and its manifest, after checking every file's hash."""
    manifest = read_manifest(bundle)
    entry = REGISTRY.get(manifest.model)
    if entry is None:
        raise BundleError(f"{bundle} holds model type '{manifest.model}', unknown to this trainer")
    model = entry.model(entry.recipe.model_validate(manifest.recipe))
    state = torch.load(bundle / WEIGHTS, map_location="cpu", weights_only=True)
    # Fitted buffers (the memory bank) change size with the data, so size them from the file before loading.
    for name, buffer in model.named_buffers():
        if name in state and state[name].shape != buffer.shape:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, attr, torch.empty_like(state[name]))
    model.load_state_dict(state, strict=True)
    return model.eval(), manifest
