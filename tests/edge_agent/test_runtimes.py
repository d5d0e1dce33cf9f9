from __future__ import annotations

from pathlib import Path

import pytest
from pipeline import Pipeline

from edge_agent.bundle import load_edge_bundle
from edge_agent.config import ModelConfig
from edge_agent.errors import AgentError
from edge_agent.runtimes import cache_dir, make_runtime


def test_a_runtime_that_cannot_run_the_bundle_is_named_in_the_error(pipeline: Pipeline, tmp_path: Path) -> None:
    bundle = load_edge_bundle(pipeline.edge)  # baked for openvino
    with pytest.raises(AgentError, match=r"cannot run a bundle baked for openvino; set model\.runtime to 'openvino'"):
        make_runtime(bundle, ModelConfig(path=pipeline.edge, runtime="onnxruntime", cache_dir=tmp_path))


def test_openvino_compiles_into_the_cache_once(pipeline: Pipeline, tmp_path: Path) -> None:
    bundle = load_edge_bundle(pipeline.edge)
    config = ModelConfig(path=pipeline.edge, cache_dir=tmp_path / "cache")
    make_runtime(bundle, config)
    cached = list((tmp_path / "cache" / bundle.manifest.version).iterdir())
    assert cached, "OpenVINO wrote no compiled model into the cache"


def test_cache_defaults_to_systemds_cache_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CACHE_DIRECTORY", str(tmp_path / "edge-agent"))
    assert cache_dir(ModelConfig(path=tmp_path)) == tmp_path / "edge-agent"
    assert cache_dir(ModelConfig(path=tmp_path, cache_dir=tmp_path / "mine")) == tmp_path / "mine"
