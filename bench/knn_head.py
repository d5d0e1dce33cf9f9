"""PatchCore's exact kNN search alone, as OpenVINO runs it: the same int8 work laid out as a MatMul (the bank as
FullyConnected weights) and as a 1 x 1 convolution (the bank as filters), against float, with the kernel OpenVINO
picked for each (PERF_COUNT). Synthetic bank and queries: kernel speed depends on shapes, not values.

    .venv/bin/python bench/knn_head.py --bank 2048,7168 --grid 32
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python bench/knn_head.py --bank 2048,7168   # an AVX2-only CPU's kernels

oneDNN's ISA cap moves oneDNN kernels only: OpenVINO's float FullyConnected runs on MLAS, which ignores it.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import openvino as ov
import openvino.opset13 as ops

FEATURE_DIM = 152  # Lite0 taps 4 + 10
QUERY_RANGE = 1.28  # symmetric int8 range of the query FakeQuantize
INT8_LEVELS = 256
BANK_SCALE = 0.01
WARMUP, FRAMES = 10, 50
LAYOUTS = ("matmul f32", "matmul int8", "conv f32", "conv int8")


def _quantize(x: ov.Output) -> ov.Node:
    low, high = ops.constant(np.float32(-QUERY_RANGE)), ops.constant(np.float32(QUERY_RANGE - 0.01))
    return ops.fake_quantize(x, low, high, low, high, INT8_LEVELS)


def _bank(entries: int, int8: bool, shape: tuple[int, ...], rng: np.random.Generator) -> ov.Node:
    if not int8:
        return ops.constant(rng.standard_normal(shape).astype(np.float32))
    codes = ops.constant(rng.integers(-127, 128, shape).astype(np.int8))
    return ops.multiply(ops.convert(codes, np.float32), ops.constant(np.float32(BANK_SCALE)))


def head(layout: str, entries: int, grid: int, rng: np.random.Generator) -> ov.Model:
    """Feature map 1 x D x grid x grid -> each patch's minimum of |b|^2 - 2ab over the bank."""
    features = ops.parameter([1, FEATURE_DIM, grid, grid], np.float32, name="features")
    int8 = layout.endswith("int8")
    queries = _quantize(features) if int8 else features
    norms = rng.standard_normal(entries).astype(np.float32)
    if layout.startswith("conv"):
        scores = ops.convolution(
            queries, _bank(entries, int8, (entries, FEATURE_DIM, 1, 1), rng), [1, 1], [0, 0], [0, 0], [1, 1]
        )
        scores = ops.add(scores, ops.constant(norms.reshape(1, -1, 1, 1)))
    else:
        rows = ops.reshape(
            ops.transpose(queries, ops.constant(np.array([0, 2, 3, 1]))),
            ops.constant(np.array([grid * grid, FEATURE_DIM])),
            False,
        )
        scores = ops.add(
            ops.matmul(rows, _bank(entries, int8, (entries, FEATURE_DIM), rng), False, True), ops.constant(norms)
        )
    return ov.Model([ops.reduce_min(scores, ops.constant(np.array([1])), False)], [features])


def measure(model: ov.Model, grid: int, rng: np.random.Generator) -> tuple[float, dict[str, float]]:
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True}
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    frame = rng.standard_normal((1, FEATURE_DIM, grid, grid)).astype(np.float32)
    for _ in range(WARMUP):
        request.infer({0: frame})
    times, ops_ms = [], defaultdict(float)
    for _ in range(FRAMES):
        started = time.perf_counter()
        request.infer({0: frame})
        times.append(1e3 * (time.perf_counter() - started))
        for info in request.profiling_info:
            ops_ms[f"{info.node_type} ({info.exec_type})"] += 1e3 * info.real_time.total_seconds() / FRAMES
    return float(np.median(times)), dict(ops_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", default="2048,7168", help="bank sizes, comma-separated")
    parser.add_argument("--grid", type=int, default=32, help="patch grid side (32 at 256 x 256, stride 8)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| bank | layout | p50 ms | vs matmul int8 | the search op's kernel: ms |")
    print("|---:|---|---:|---:|---|")
    for entries in (int(b) for b in args.bank.split(",")):
        rows = {layout: measure(head(layout, entries, args.grid, rng), args.grid, rng) for layout in LAYOUTS}
        base = rows["matmul int8"][0]
        for layout, (p50, ops_ms) in rows.items():
            name, ms = max(ops_ms.items(), key=lambda item: item[1])
            print(f"| {entries} | {layout} | {p50:.2f} | {base / p50:.2f}x | {name}: {ms:.2f} |")


if __name__ == "__main__":
    main()
