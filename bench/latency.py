"""Per-frame latency of the whole PatchCore graph (uint8 frame in, map and score out), batch 1, 256x256.

    .venv/bin/python bench/latency.py --frames 200

Fits PatchCore on synthetic parts, bakes it for OpenVINO fp32, then times torch eager and the agent's
OpenVINO runtime on the same frames, interleaved frame by frame so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from converters.bake import BakeOptions, bake
from edge_agent.bundle import load_edge_bundle
from edge_agent.geometry import prepare
from edge_agent.imageio import list_images, read_image
from edge_agent.runtimes.openvino import OpenVinoRuntime
from trainer.bundle import load_bundle
from trainer.data.synthetic import SyntheticSpec, generate
from trainer.fit import FitOptions, fit

WARMUP = 20


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--train-images", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = generate(root / "data", SyntheticSpec(train_good=args.train_images, test_defects_per_type=5))
        fit(FitOptions(data=data, model="patchcore", out=root / "model"))
        bake(BakeOptions(bundle=root / "model", out=root / "edge"))
        model, manifest = load_bundle(root / "model")
        runtime = OpenVinoRuntime.from_bundle(load_edge_bundle(root / "edge"))
        paths = sorted(p for kind in (data / "test").iterdir() for p in list_images(kind))
        # Squash geometry: one model input per frame, so this times exactly one graph run per frame.
        frames = [prepare(read_image(p), manifest.geometry).inputs[0] for p in paths]
        timings: dict[str, list[float]] = {"torch eager fp32": [], "OpenVINO fp32 (agent runtime)": []}
        with torch.no_grad():
            for i in range(WARMUP + args.frames):
                frame = frames[i % len(frames)]
                t0 = time.perf_counter()
                model(torch.from_numpy(frame[None]))
                t1 = time.perf_counter()
                runtime.infer(frame)
                t2 = time.perf_counter()
                if i >= WARMUP:
                    timings["torch eager fp32"].append((t1 - t0) * 1000)
                    timings["OpenVINO fp32 (agent runtime)"].append((t2 - t1) * 1000)
    bank = manifest.fit_summary["memory_bank"]
    base = percentiles(timings["torch eager fp32"])[0]
    print(
        f"PatchCore-Lite0 {manifest.input.height}x{manifest.input.width}, memory bank {bank:.0f}, batch 1, "
        f"{torch.get_num_threads()} threads, {args.frames} frames after {WARMUP} warm-up"
    )
    print("| runtime | p50 ms | p99 ms | frames/s (1/p50) | speed-up vs torch (p50) |")
    print("|---|---:|---:|---:|---:|")
    for name, ms in timings.items():
        p50, p99 = percentiles(ms)
        print(f"| {name} | {p50:.2f} | {p99:.2f} | {1000 / p50:.0f} | {base / p50:.2f}x |")


if __name__ == "__main__":
    main()
