"""What OpenVINO made of a baked graph on this CPU: the kernel each op runs on, and which ops are the model's
head (everything after the backbone: PatchCore's kNN search, min and reweighting, the map's resampling).

`converter bake` prints and records the head's matrix kernels, the agent logs them at start-up, and
bench/latency.py splits OpenVINO's per-op profile (PERF_COUNT) into backbone and head with the same rule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import openvino as ov

# Every model's frozen backbone is the `backbone` attribute of the traced module, so its ops keep this scope in
# their original (pre-fusion) names.
BACKBONE_SCOPE = ".backbone."
# The ops whose kernel decides a head's speed (int8 or float, brgemm/brgconv or the legacy GEMM).
MATRIX_OPS = ("Convolution", "FullyConnected", "MatMul")
CPUINFO = Path("/proc/cpuinfo")
# The vector and matrix extensions oneDNN's int8 and float kernels are chosen by.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16")
ISA_CAP = "ONEDNN_MAX_CPU_ISA"
# u8 x s8 multiply-accumulate in 32 bits, without the int16 saturation of AVX2's vpmaddubsw.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# oneDNN cap names at or above the first VNNI ISAs (AVX2_VNNI, AVX512_CORE_VNNI, ..._BF16, ..._FP16, ..._AMX,
# AVX10_*), and the values that mean no cap.
VNNI_CAP_MARKS = ("VNNI", "BF16", "FP16", "AMX", "AVX10")
UNCAPPED = ("ALL", "DEFAULT", "")


@dataclass(frozen=True)
class CompiledOp:
    name: str  # the runtime op's name, as PERF_COUNT's node_name reports it
    node_type: str
    exec_type: str  # the kernel, e.g. brgconv_avx512_1x1_I8 or jit_gemm_i8
    head: bool


def _rt(op: ov.Node, key: str) -> str:
    info = op.get_rt_info()
    return str(info[key].astype(str)) if key in info else ""


def compiled_ops(compiled: ov.CompiledModel) -> list[CompiledOp]:
    """The compiled graph's ops in execution order. An op is in the head when it comes after the backbone (a
    backbone op among its inputs, transitively) and feeds no backbone op; so the reorders inside the backbone
    stay with it, and the input's normalization before it is in neither."""
    ops = list(compiled.get_runtime_model().get_ordered_ops())
    producers = {op.get_friendly_name(): [i.get_source_output().get_node() for i in op.inputs()] for op in ops}
    backbone = {op.get_friendly_name() for op in ops if BACKBONE_SCOPE in _rt(op, "originalLayersNames")}
    after: set[str] = set()
    for op in ops:
        name = op.get_friendly_name()
        if any(p.get_friendly_name() in backbone or p.get_friendly_name() in after for p in producers[name]):
            after.add(name)
    feeds_backbone: set[str] = set()
    for op in reversed(ops):
        name = op.get_friendly_name()
        if name in backbone or name in feeds_backbone:
            feeds_backbone.update(p.get_friendly_name() for p in producers[name])
    return [
        CompiledOp(
            name=op.get_friendly_name(),
            node_type=_rt(op, "layerType") or op.get_type_name(),
            exec_type=_rt(op, "primitiveType"),
            head=op.get_friendly_name() in after - backbone - feeds_backbone,
        )
        for op in ops
    ]


def head_kernels(ops: list[CompiledOp]) -> list[str]:
    """The distinct kernels of the head's matrix ops, e.g. ['brgconv_avx512_1x1_I8'], in graph order."""
    kernels = (op.exec_type for op in ops if op.head and op.node_type.startswith(MATRIX_OPS))
    return list(dict.fromkeys(kernels))


def cpu_isa(cpuinfo: Path = CPUINFO) -> list[str]:
    """The instruction sets among ISA_FLAGS this CPU has (Linux's flags; empty elsewhere), plus oneDNN's cap
    when ONEDNN_MAX_CPU_ISA is set, since the kernels then follow the cap, not the CPU."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    found = [flag for flag in ISA_FLAGS if flag in flags]
    cap = os.environ.get(ISA_CAP)
    return [*found, f"{ISA_CAP}={cap}"] if cap else found


def has_vnni(isa: list[str]) -> bool:
    """Whether int8 runs on VNNI instructions here (AVX-512 VNNI, AVX-VNNI or AMX), given `cpu_isa()`. A oneDNN
    cap below the VNNI ISAs (AVX2, AVX512_CORE) takes them away, whatever the CPU has."""
    cap = next((entry.split("=", 1)[1].upper() for entry in isa if entry.startswith(f"{ISA_CAP}=")), None)
    if cap is not None and cap not in UNCAPPED and not any(mark in cap for mark in VNNI_CAP_MARKS):
        return False
    return any(flag in isa for flag in VNNI_FLAGS)


def cpu_description(core: ov.Core) -> str:
    """The CPU's name and its vector instruction sets, e.g. 'AMD EPYC (avx2 avx512f avx512_vnni)'."""
    return f"{core.get_property('CPU', 'FULL_DEVICE_NAME')} ({' '.join(cpu_isa()) or 'flags unknown'})"
