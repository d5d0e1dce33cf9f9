"""The model the agent runs: an edge bundle loaded into a runtime, checked and warmed up, ready to swap in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.bundle import ScoreReference, load_edge_bundle
from edge_agent.config import ModelConfig
from edge_agent.geometry import Geometry
from edge_agent.hashing import read_key
from edge_agent.runtimes import make_runtime
from edge_agent.runtimes.base import Runtime


@dataclass(frozen=True)
class ModelInfo:
    version: str
    threshold: float
    score_scale: float
    geometry: Geometry
    score_reference: ScoreReference | None = None  # what the drift watch compares recent scores with


@dataclass(frozen=True)
class LoadedModel:
    runtime: Runtime
    info: ModelInfo


def load_model(path: Path, config: ModelConfig) -> LoadedModel:
    """Load the edge bundle at `path` (hashes and format checked), compile it, and run one inference: the
    first one allocates and tunes, and must not land on a real frame's deadline."""
    key = None if config.hmac_key_file is None else read_key(config.hmac_key_file)
    bundle = load_edge_bundle(path, key)
    manifest = bundle.manifest
    runtime = make_runtime(bundle, config.model_copy(update={"path": path}))
    spec = manifest.input
    runtime.infer(np.zeros((spec.height, spec.width, spec.channels), np.uint8))
    info = ModelInfo(
        manifest.version, manifest.threshold, manifest.score_scale, manifest.geometry, manifest.score_reference
    )
    return LoadedModel(runtime, info)
