"""TensorRT engine building from the baked ONNX, when TensorRT is installed on this machine."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_ENGINE = "model.engine"
TRTEXEC = "trtexec"
WORKSPACE_BYTES = 1 << 30
BUILD_TIMEOUT_S = 1800
NOT_INSTALLED = (
    "--target tensorrt needs TensorRT (the tensorrt Python package or trtexec) on this machine to build the engine; "
    "install it, or pass --engine-on-target to write model.onnx for the agent's TensorRT provider to build there"
)
ENGINE_ON_TARGET = (
    "TensorRT is not installed here, so no engine was built (--engine-on-target); the bundle carries model.onnx, "
    "and the agent's onnxruntime backend builds the engine on the target with its TensorRT provider and caches it. "
    "Parity was checked on the providers this machine has"
)


class EngineError(Exception):
    """TensorRT could not parse the graph or build an engine from it."""


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None or shutil.which(TRTEXEC) is not None


def build_engine(onnx: Path, engine: Path, precision: str) -> None:
    """Serialize an engine for this machine's GPU: TensorRT's Python API when importable, else trtexec."""
    if importlib.util.find_spec("tensorrt") is not None:
        _build_with_python(onnx, engine, precision)
        return
    command = [TRTEXEC, f"--onnx={onnx}", f"--saveEngine={engine}"]
    if precision == "fp16":
        command.append("--fp16")
    done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EngineError(f"trtexec could not build the engine: {tail[0]}")


def _build_with_python(onnx: Path, engine: Path, precision: str) -> None:  # pragma: no cover - needs a GPU
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT's ONNX parser refused {onnx.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError("TensorRT could not build an engine from the ONNX graph")
    engine.write_bytes(bytes(serialized))
