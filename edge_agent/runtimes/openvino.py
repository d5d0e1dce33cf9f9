from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import openvino as ov

from edge_agent.bundle import EdgeBundle, Kernels
from edge_agent.errors import BundleError
from edge_agent.runtimes.base import Inference
from edge_agent.runtimes.openvino_ops import compiled_ops, cpu_description, cpu_isa, has_vnni, head_kernels

log = logging.getLogger(__name__)

MODEL_XML = "model.xml"
MODEL_BIN = "model.bin"
# int8 graphs carry their own quantized ops; everything else in them runs f32. An fp16 bundle has fp16 weights,
# which the GPU runs in f16; CPUs without native fp16 would emulate it slower and less exactly, so they run f32.
INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f16", "int8": "f32"}
NATIVE_FP16_DEVICES = {"GPU"}


def inference_precision(precision: str, device: str) -> str:
    if precision == "fp16" and device not in NATIVE_FP16_DEVICES:
        return "f32"
    return INFERENCE_PRECISION[precision]


# OpenVINO's CPU plugin quantizes the activations of a FullyConnected with int8-coded weights on the fly (meant
# for LLMs): PatchCore's reweighting distances moved 0.3% that way, so a bake's parity would not hold.
NO_DYNAMIC_QUANTIZATION = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}


def compile_config(precision: str, device: str) -> dict[str, str]:
    """One frame at a time, as soon as possible; the precision the bundle was baked and checked for, since
    OpenVINO would otherwise run an fp32 graph in bf16 on CPUs that have it; and on the CPU no activation
    quantization but the graph's own."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": inference_precision(precision, device)}
    return config | NO_DYNAMIC_QUANTIZATION if device == "CPU" else config


# Devices whose int8 kernels are oneDNN's CPU ones (AUTO may pick the CPU); the iGPU has no int16 saturation.
CPU_DEVICES = {"CPU", "AUTO"}


def check_int8_cpu(bundle: EdgeBundle, device: str, isa: list[str]) -> None:
    """Refuse a bundle baked for VNNI CPUs (8-bit weights) on a CPU without VNNI, where its int8 products would
    saturate: scores off, with no error from OpenVINO."""
    if bundle.manifest.int8_cpu == "vnni" and device in CPU_DEVICES and not has_vnni(isa):
        raise BundleError(
            f"edge bundle {bundle.path} was baked with --int8-cpu vnni, and this CPU has no VNNI "
            f"({' '.join(isa) or 'flags unknown'}); bake it again with --int8-cpu any, or run it on a VNNI CPU"
        )


class OpenVinoRuntime:
    """The baked graph compiled for CPU, GPU (Intel iGPU) or AUTO, with an optional compiled-model cache."""

    def __init__(self, xml: Path, precision: str, device: str = "CPU", cache_dir: Path | None = None) -> None:
        if not xml.is_file():
            raise BundleError(f"{xml} does not exist; bake the model with --target openvino")
        core = ov.Core()
        if cache_dir is not None:
            core.set_property({"CACHE_DIR": str(cache_dir)})
        self._compiled = core.compile_model(str(xml), device, compile_config(precision, device))
        self._request = self._compiled.create_infer_request()
        self._map = self._compiled.output("anomaly_map")
        self._score = self._compiled.output("score")
        log.info("OpenVINO model %s compiled for %s (%s)", xml.name, device, precision)
        # The kernels OpenVINO chose on this machine for the model head's matrix ops (see openvino_ops); bake
        # records them, the agent logs them. Other devices do not report oneDNN kernels.
        self.kernels: Kernels | None = None
        if device == "CPU":
            self.kernels = Kernels(cpu=cpu_description(core), head=head_kernels(compiled_ops(self._compiled)))
            log.info("model head's matrix kernels on %s: %s", self.kernels.cpu, ", ".join(self.kernels.head))

    @classmethod
    def from_bundle(cls, bundle: EdgeBundle, device: str = "CPU", cache_dir: Path | None = None) -> OpenVinoRuntime:
        check_int8_cpu(bundle, device, cpu_isa())
        return cls(bundle.file(MODEL_XML), bundle.manifest.precision, device, cache_dir)

    def infer(self, image: np.ndarray) -> Inference:
        result = self._request.infer({0: image[np.newaxis]})
        return Inference(anomaly_map=np.asarray(result[self._map])[0, 0], score=float(result[self._score][0]))
