from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from edge_agent.runtimes.openvino import compile_config
from edge_agent.runtimes.openvino_ops import ISA_CAP, compiled_ops, cpu_isa, has_vnni, head_kernels


def _named(node: ov.Node, name: str) -> ov.Node:
    node.set_friendly_name(name)
    return node


def _graph() -> ov.Model:
    """An NHWC input's transpose, a two-convolution 'backbone', then a matmul head, named as traced ops are."""
    rng = np.random.default_rng(0)
    image = ops.parameter([1, 8, 8, 3], np.float32, name="image")
    x = _named(ops.transpose(image, ops.constant(np.array([0, 3, 1, 2]))), "__module.model/aten::permute")
    for i in range(2):
        weights = ops.constant(rng.standard_normal((3, 3, 1, 1)).astype(np.float32))
        x = _named(ops.convolution(x, weights, [1, 1], [0, 0], [0, 0], [1, 1]), f"__module.model.backbone.c{i}/Conv")
        x = _named(ops.relu(x), f"__module.model.backbone.c{i}/Relu")
    rows = ops.reshape(x, ops.constant(np.array([3, 64])), False)
    bank = ops.constant(rng.standard_normal((64, 16)).astype(np.float32))
    distances = _named(ops.matmul(rows, bank, False, False), "__module.model/aten::matmul/MatMul")
    nearest = _named(ops.reduce_min(distances, ops.constant(np.array([1])), False), "__module.model/aten::min")
    return ov.Model([nearest], [image])


def test_the_ops_after_the_backbone_are_the_head_and_the_input_s_ops_before_it_are_not() -> None:
    compiled = ov.Core().compile_model(_graph(), "CPU", compile_config("fp32", "CPU"))
    found = compiled_ops(compiled)
    head = [op for op in found if op.head]
    assert any(op.node_type in ("MatMul", "FullyConnected") for op in head)
    assert any("min" in op.name for op in head)
    assert not any(op.node_type == "Convolution" for op in head)
    first_conv = next(i for i, op in enumerate(found) if op.node_type == "Convolution")
    assert not any(op.head for op in found[:first_conv])  # the input and its layout change
    kernels = head_kernels(found)
    assert kernels and all(kernels)  # the kernel names depend on the CPU; that there is one does not


def test_cpu_isa_reads_the_flags_and_names_onednn_s_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n")
    monkeypatch.delenv(ISA_CAP, raising=False)
    assert cpu_isa(cpuinfo) == ["avx2", "avx512f", "avx512_vnni"]
    monkeypatch.setenv(ISA_CAP, "AVX2")
    assert cpu_isa(cpuinfo) == ["avx2", "avx512f", "avx512_vnni", f"{ISA_CAP}=AVX2"]
    monkeypatch.delenv(ISA_CAP)
    assert cpu_isa(tmp_path / "missing") == []


@pytest.mark.parametrize(
    ("isa", "vnni"),
    [
        (["avx2"], False),
        (["avx2", "avx512f"], False),
        (["avx2", "avx_vnni"], True),
        (["avx2", "avx512f", "avx512_vnni"], True),
        (["avx2", "avx512f", "avx512_vnni", "amx_int8"], True),
        # A oneDNN cap below VNNI takes it away; one at or above it, or none, does not.
        (["avx2", "avx512f", "avx512_vnni", f"{ISA_CAP}=AVX2"], False),
        (["avx2", "avx512f", "avx512_vnni", f"{ISA_CAP}=AVX512_CORE"], False),
        (["avx2", "avx_vnni", f"{ISA_CAP}=AVX2_VNNI"], True),
        (["avx2", "avx512f", "avx512_vnni", f"{ISA_CAP}=avx512_core_vnni"], True),
        (["avx2", "avx512f", "avx512_vnni", f"{ISA_CAP}=ALL"], True),
        # A cap cannot add what the CPU lacks.
        (["avx2", f"{ISA_CAP}=AVX512_CORE_AMX"], False),
    ],
)
def test_vnni_comes_from_the_flags_and_onednn_s_cap(isa: list[str], vnni: bool) -> None:
    assert has_vnni(isa) is vnni
