"""Inference runtimes behind one protocol (`base.Runtime`); `make_runtime` builds the one a bundle needs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edge_agent.bundle import EdgeBundle
from edge_agent.config import ModelConfig
from edge_agent.errors import AgentError
from edge_agent.runtimes.base import Runtime

log = logging.getLogger(__name__)

RUNTIME_OF_TARGET = {"openvino": "openvino", "onnx": "onnxruntime", "tensorrt": "onnxruntime"}
SYSTEMD_CACHE = "CACHE_DIRECTORY"


def cache_dir(config: ModelConfig) -> Path:
    if config.cache_dir is not None:
        return config.cache_dir
    systemd = os.environ.get(SYSTEMD_CACHE)
    return Path(systemd.split(":")[0]) if systemd else Path.home() / ".cache" / "edge-agent"


def _usable(cache: Path) -> Path | None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("no model cache (%s cannot be created: %s); every start compiles the model", cache, exc.strerror)
        return None
    return cache


def make_runtime(bundle: EdgeBundle, config: ModelConfig) -> Runtime:
    target = bundle.manifest.target
    needed = RUNTIME_OF_TARGET[target]
    if config.runtime is not None and config.runtime != needed:
        raise AgentError(
            f"model.runtime '{config.runtime}' cannot run a bundle baked for {target}; "
            f"set model.runtime to '{needed}' (or leave it out), or bake for another target"
        )
    cache = _usable(cache_dir(config) / bundle.manifest.version)
    if needed == "openvino":
        from edge_agent.runtimes.openvino import OpenVinoRuntime

        return OpenVinoRuntime.from_bundle(bundle, config.device, cache)
    from edge_agent.runtimes.onnxruntime import OnnxRuntime

    return OnnxRuntime.from_bundle(bundle, cache)
