"""The baked ONNX graph through ONNX Runtime: TensorRT, then CUDA, then CPU, whichever this machine has."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_agent.bundle import EdgeBundle
from edge_agent.errors import BundleError
from edge_agent.runtimes.base import Inference

log = logging.getLogger(__name__)

MODEL_ONNX = "model.onnx"
TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PREFERENCE = (TENSORRT, CUDA, CPU)


def provider_options(provider: str, precision: str, cache_dir: Path | None) -> dict[str, Any]:
    if provider != TENSORRT:
        return {}
    options: dict[str, Any] = {"trt_fp16_enable": precision == "fp16"}
    if cache_dir is not None:
        # Building a TensorRT engine takes minutes; the cache makes every later start take seconds.
        options |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)}
    return options


class OnnxRuntime:
    """Runs model.onnx on the best execution provider present, falling back in the order of PREFERENCE."""

    def __init__(self, onnx: Path, precision: str, cache_dir: Path | None = None, threads: int = 0) -> None:
        if not onnx.is_file():
            raise BundleError(f"{onnx} does not exist; bake the model with --target onnx or tensorrt")
        available = set(ort.get_available_providers())
        chosen = [p for p in PREFERENCE if p in available]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core
        self._session = ort.InferenceSession(
            str(onnx),
            sess_options=options,
            providers=[(p, provider_options(p, precision, cache_dir)) for p in chosen],
        )
        self._input = self._session.get_inputs()[0].name
        self.providers: list[str] = self._session.get_providers()
        log.info("ONNX Runtime model %s loaded on %s", onnx.name, ", ".join(self.providers))

    @classmethod
    def from_bundle(cls, bundle: EdgeBundle, cache_dir: Path | None = None) -> OnnxRuntime:
        return cls(bundle.file(MODEL_ONNX), bundle.manifest.precision, cache_dir)

    def infer(self, image: np.ndarray) -> Inference:
        anomaly_map, score = self._session.run(None, {self._input: image[np.newaxis]})
        return Inference(anomaly_map=np.asarray(anomaly_map)[0, 0], score=float(score[0]))
