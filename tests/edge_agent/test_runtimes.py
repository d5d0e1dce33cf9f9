from __future__ import annotations

from pathlib import Path

import pytest
from pipeline import Pipeline

from edge_agent.bundle import EdgeBundle, load_edge_bundle
from edge_agent.config import ModelConfig
from edge_agent.errors import AgentError, BundleError
from edge_agent.runtimes import cache_dir, make_runtime
from edge_agent.runtimes.openvino import check_int8_cpu


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


def test_a_bundle_baked_for_vnni_cpus_is_refused_on_a_cpu_without_vnni(pipeline: Pipeline) -> None:
    bundle = load_edge_bundle(pipeline.edge)
    vnni = EdgeBundle(bundle.path, bundle.manifest.model_copy(update={"int8_cpu": "vnni"}))
    with pytest.raises(BundleError, match="baked with --int8-cpu vnni, and this CPU has no VNNI"):
        check_int8_cpu(vnni, "CPU", ["avx2", "avx512f"])
    check_int8_cpu(vnni, "CPU", ["avx2", "avx_vnni"])
    check_int8_cpu(vnni, "GPU", ["avx2"])  # the iGPU's int8 does not saturate
    for portable in ("any", None):
        check_int8_cpu(EdgeBundle(bundle.path, bundle.manifest.model_copy(update={"int8_cpu": portable})), "CPU", [])
