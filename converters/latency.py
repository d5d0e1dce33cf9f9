"""Per-frame latency of edge bundles as the agent runs them: each bundle's runtime class from the agent, batch 1,
random frames of the model's input size, the bundles taking turns in blocks of frames so machine noise hits
every one alike.

Run it in a fresh process (`measure_in_fresh_process`, or `python -m converters.latency EDGE [EDGE ...]`), as
an agent process holds its runtime: in a process that had just fitted and baked, the same int8 bake timed up to
1.8x slower (bench/timing.py's docstring has the figures).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edge_agent.bundle import load_edge_bundle
from edge_agent.config import ModelConfig
from edge_agent.runtimes import make_runtime

WARMUP = 20
BLOCK = 10  # frames per runtime in turn: noise hits all alike, without each one paying for the last one's threads
SETTLE_S = 0.5  # past OpenMP's default 200 ms spin-wait before a runtime's turn
DEFAULT_FRAMES = 200
FRAME_SEED = 0

Runner = Callable[[np.ndarray], object]


def time_turns(
    runners: Sequence[Runner], frames: np.ndarray, count: int, settle_s: float = SETTLE_S
) -> list[list[float]]:
    """ms per frame of every runner, taking turns in blocks of BLOCK frames after WARMUP each."""
    for run in runners:
        for i in range(WARMUP):
            run(frames[i % len(frames)])
    ms: list[list[float]] = [[] for _ in runners]
    for block in range(0, count, BLOCK):
        for times, run in zip(ms, runners, strict=True):
            # The previous runtime's idle threads spin for a while after their work (torch's OpenMP, ONNX
            # Runtime's pool); on 2 cores they would be billed to this one.
            time.sleep(settle_s)
            for i in range(block, min(block + BLOCK, count)):
                start = time.perf_counter()
                run(frames[i % len(frames)])
                times.append((time.perf_counter() - start) * 1000)
    return ms


def edge_runner(edge: Path, cache_dir: Path) -> Runner:
    bundle = load_edge_bundle(edge)
    return make_runtime(bundle, ModelConfig(path=edge, cache_dir=cache_dir)).infer


def time_bundles(edges: Sequence[Path], count: int) -> list[list[float]]:
    """ms per frame of each edge bundle, in this process. The bundles must share one input size."""
    sizes = {(s.height, s.width) for s in (load_edge_bundle(e).manifest.input for e in edges)}
    if len(sizes) != 1:
        raise ValueError(f"the bundles take different input sizes {sorted(sizes)}; time them separately")
    (height, width) = sizes.pop()
    frames = np.random.default_rng(FRAME_SEED).integers(0, 256, (BLOCK, height, width, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="latency-cache-") as cache:
        return time_turns([edge_runner(e, Path(cache)) for e in edges], frames, count)


def measure_in_fresh_process(edges: Sequence[Path], count: int) -> list[list[float]]:
    """`time_bundles` in a new Python process, as an agent would run them."""
    command = [sys.executable, "-m", "converters.latency", *map(str, edges), "--frames", str(count), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"timing the bundles failed: {last}")
    ms: list[list[float]] = json.loads(done.stdout)
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("edges", nargs="+", type=Path, help="edge bundles written by `converter bake`")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="timed frames per bundle")
    parser.add_argument("--json", action="store_true", help="print the ms of every frame as JSON")
    args = parser.parse_args()
    ms = time_bundles(args.edges, args.frames)
    if args.json:
        print(json.dumps(ms))
        return
    print("| edge bundle | p50 ms | p99 ms |\n|---|---:|---:|")
    for edge, times in zip(args.edges, ms, strict=True):
        print(f"| {edge} | {np.percentile(times, 50):.2f} | {np.percentile(times, 99):.2f} |")


if __name__ == "__main__":
    main()
