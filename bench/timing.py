"""The timing half of bench/latency.py, run as its own process (`python bench/timing.py SPEC RESULT`), so the
runtimes are timed as an agent process holds them: no fit, bake or NNCF calibration before them in the process,
whose leftovers slowed the frames after it (the same int8 bake timed 9.4 ms right after a bake in the process,
5.2 ms five seconds later). torch is imported only when torch eager is timed.

SPEC is JSON: {"contenders": [{"bundle", "torch", "profiled"}], "frames": "frames.npy", "count", "profile",
"cache_dir"}; RESULT is JSON: {"ms": [per contender, ms per frame], "profiles": [per contender, {"groups",
"head_ms", "head_kernels"} or null], "warmup": warm-up frames per contender}.

The turns themselves are converters/latency.py's, which also times edge bundles you already have against each
other, on random frames of the model's input size (an A/B of two bakes of one model, say):

    .venv/bin/python -m converters.latency edge-a edge-b --frames 1000
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov

from converters.latency import WARMUP, Runner, edge_runner, time_turns
from edge_agent.bundle import load_edge_bundle
from edge_agent.runtimes.openvino import MODEL_XML, compile_config
from edge_agent.runtimes.openvino_ops import compiled_ops, head_kernels

# Op types (and their variants, e.g. FullyConnectedQuantizedLegacy) whose exec_type ends in the kernel's
# precision (brgconv_avx512_1x1_I8, brgconv_avx512_dw_f32, brgemm_avx512_i8, gemm_mlas_f32): split them by it.
KERNEL_SPLIT = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")
KERNEL_PRECISIONS = {"i8": "int8", "u8": "int8", "f32": "f32", "bf16": "bf16", "f16": "f16"}  # fp32 reads f32


@dataclass(frozen=True)
class Contender:
    bundle: Path  # the trainer bundle for torch eager, else the edge bundle
    torch: bool
    profiled: bool  # an OpenVINO bake, which --profile splits by op


def _runner(contender: Contender, cache_dir: Path) -> Runner:
    if contender.torch:
        import torch

        from trainer.bundle import load_bundle

        model = load_bundle(contender.bundle)[0]
        torch.set_grad_enabled(False)
        return lambda frame: model(torch.from_numpy(frame[None]))
    return edge_runner(contender.bundle, cache_dir)


def op_group(info: ov.ProfilingInfo) -> str:
    node_type, exec_type = str(info.node_type), str(info.exec_type)
    if not node_type.startswith(KERNEL_SPLIT):
        return node_type
    suffix = exec_type.rsplit("_", 1)[-1].lower().replace("fp", "f")
    return f"{node_type} ({KERNEL_PRECISIONS.get(suffix, exec_type)} kernel)"


def profile_ops(edge: Path, frames: np.ndarray, count: int) -> dict[str, object]:
    """ms per frame of each op group ("groups"), of the head ("head_ms", the ops after the backbone as
    edge_agent.runtimes.openvino_ops splits them) and the head's matrix kernels, over `count` frames after
    warm-up, compiled as the agent compiles it."""
    bundle = load_edge_bundle(edge)
    # The agent's compile config plus per-op counters; no model cache, so nothing is imported.
    config = {**compile_config(bundle.manifest.precision, "CPU"), ov.properties.enable_profiling(): True}
    compiled = ov.Core().compile_model(str(bundle.file(MODEL_XML)), "CPU", config)
    ops = compiled_ops(compiled)
    head = {op.name for op in ops if op.head}
    request = compiled.create_infer_request()
    for i in range(WARMUP):
        request.infer({0: frames[i % len(frames)][np.newaxis]})
    total: dict[str, float] = defaultdict(float)
    head_ms = 0.0
    for i in range(count):
        request.infer({0: frames[i % len(frames)][np.newaxis]})
        for info in request.profiling_info:  # the last inference's counters
            if info.status == ov.ProfilingInfo.Status.EXECUTED and info.real_time.total_seconds() > 0:
                ms = info.real_time.total_seconds() * 1000 / count
                total[op_group(info)] += ms
                head_ms += ms if info.node_name in head else 0.0
    return {"groups": dict(total), "head_ms": head_ms, "head_kernels": head_kernels(ops)}


def run_spec(spec_path: Path, result_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    contenders = [Contender(Path(c["bundle"]), c["torch"], c["profiled"]) for c in spec["contenders"]]
    frames = np.load(spec["frames"])
    runners = [_runner(c, Path(spec["cache_dir"])) for c in contenders]
    ms = time_turns(runners, frames, spec["count"])
    profiles = [
        profile_ops(c.bundle, frames, spec["count"]) if spec["profile"] and c.profiled else None for c in contenders
    ]
    result_path.write_text(json.dumps({"ms": ms, "profiles": profiles, "warmup": WARMUP}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path, help="bench/latency.py's JSON spec")
    parser.add_argument("result", type=Path, help="where the JSON result goes")
    args = parser.parse_args()
    run_spec(args.spec, args.result)


if __name__ == "__main__":
    main()
