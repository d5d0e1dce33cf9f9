"""Inference runtimes behind one protocol (`base.Runtime`); `make_runtime` builds the one a config names."""

from __future__ import annotations

from edge_agent.bundle import EdgeBundle
from edge_agent.config import ModelConfig
from edge_agent.errors import AgentError
from edge_agent.runtimes.base import Runtime


def make_runtime(bundle: EdgeBundle, config: ModelConfig) -> Runtime:
    if config.runtime == "openvino":
        from edge_agent.runtimes.openvino import OpenVinoRuntime

        return OpenVinoRuntime.from_bundle(bundle, config.device)
    raise AgentError(f"model.runtime '{config.runtime}' is not available yet; use 'openvino'")
