"""What stalls the agent's inference thread, each measured against its alternative in one run:

    .venv/bin/python bench/agent_stalls.py

- GIL: the delay for a thread to get the GIL back after a 0.5 ms sleep, while another thread waits for viky
  frames through harvesters' own `fetch` (GenTL waits that hold the GIL) and through the camera's poll;
- the CPU that grabbing alone takes at 30 frames/s;
- inference: the PatchCore int8 graph (fitted on synthetic parts, baked for OpenVINO) back to back, and paced
  at 30 frames/s as a camera delivers them, so its threads go idle between frames;
- garbage collection: one full `gc.collect()` in a process with the agent's modules and a compiled model
  loaded (no torch), before and after `gc.freeze()`;
- RGBa8 -> RGB of a 400 x 400 frame: a numpy channel slice against cv2.cvtColor.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from converters.bake import BakeOptions, bake
from converters.guard import TIMING_GUARD
from edge_agent.cameras.genicam import GENTL_WAIT_MS, GenicamCamera
from edge_agent.config import GenicamCameraConfig
from edge_agent.runtimes.openvino import OpenVinoRuntime
from trainer.data.synthetic import generate
from trainer.fit import FitOptions, fit

SLEEP_S = 0.0005
SAMPLES = 400
LINE_FPS = 30.0
INFER_S = 15.0
CPU_S = 10.0
GRAB_TIMEOUT_S = 1.0
HARVESTERS_WAIT_MS = 1  # harvesters' default wait inside each GenTL call
MS = 1000.0


# The agent's modules and a compiled model, then the median of 10 full collections before and after gc.freeze().
GC_PROBE = """
import gc, statistics, sys, time
from pathlib import Path
import edge_agent.cli
from edge_agent.runtimes.openvino import OpenVinoRuntime
runtime = OpenVinoRuntime(Path(sys.argv[1]), "int8")
def collect_ms():
    times = []
    for _ in range(10):
        start = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000
before = collect_ms()
gc.freeze()
print(before, collect_ms())
"""


def gil_return_ms(grab: Callable[[], object]) -> float:
    """Median extra time a 0.5 ms sleep takes while another thread runs `grab` in a loop."""
    stop = threading.Event()

    def acquire() -> None:
        while not stop.is_set():
            grab()

    grabber = threading.Thread(target=acquire)
    grabber.start()
    try:
        late = []
        for _ in range(SAMPLES):
            start = time.perf_counter()
            time.sleep(SLEEP_S)
            late.append(time.perf_counter() - start - SLEEP_S)
    finally:
        stop.set()
        grabber.join()
    return statistics.median(late) * MS


def grab_cpu_percent(camera: GenicamCamera) -> float:
    """This process's CPU time while it only grabs frames (viky renders them in this process, too)."""
    start, used = time.monotonic(), os.times()
    while time.monotonic() - start < CPU_S:
        camera.grab(GRAB_TIMEOUT_S)
    now = os.times()
    return 100 * (now.user - used.user + now.system - used.system) / (time.monotonic() - start)


def harvesters_fetch(acquirer: Any) -> Callable[[], object]:
    def grab() -> None:
        with acquirer.fetch(timeout=GRAB_TIMEOUT_S):
            pass

    return grab


def infer_ms(runtime: OpenVinoRuntime, paced: bool) -> tuple[float, float]:
    frame = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    times = []
    end = time.monotonic() + INFER_S
    while time.monotonic() < end:
        start = time.perf_counter()
        runtime.infer(frame)
        took = time.perf_counter() - start
        times.append(took)
        if paced:
            time.sleep(max(0.0, 1 / LINE_FPS - took))
    ms = np.array(times) * MS
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def median_ms(action: Callable[[], object], repeats: int = 200) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * MS


def main() -> None:
    rows: list[tuple[str, str]] = []
    camera = GenicamCamera("gige0", GenicamCameraConfig(source="genicam", frame_rate=LINE_FPS))
    camera.open()
    try:
        camera.grab(GRAB_TIMEOUT_S)
        acquirer = camera._acquirer  # harvesters' own wait, which the camera avoids, measured on its acquirer
        acquirer.timeout_period_on_update_event_data_call = HARVESTERS_WAIT_MS
        fetched = gil_return_ms(harvesters_fetch(acquirer))
        rows.append(("GIL back after a sleep, camera through harvesters' fetch", f"{fetched:.2f} ms"))
        acquirer.timeout_period_on_update_event_data_call = GENTL_WAIT_MS
        polled = gil_return_ms(lambda: camera.grab(GRAB_TIMEOUT_S))
        rows.append(("GIL back after a sleep, camera through its poll", f"{polled:.2f} ms"))
        rows.append(
            (f"CPU of grabbing at {LINE_FPS:g} fps (simulator included)", f"{grab_cpu_percent(camera):.0f}% of a core")
        )
    finally:
        camera.close()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fit(FitOptions(data=generate(root / "data"), model="patchcore", out=root / "model"))
        bake(BakeOptions(bundle=root / "model", out=root / "edge", precision="int8", guard=TIMING_GUARD))
        runtime = OpenVinoRuntime(root / "edge" / "model.xml", "int8")
        for label, paced in (("back to back", False), (f"paced at {LINE_FPS:g} fps", True)):
            runtime.infer(np.zeros((256, 256, 3), np.uint8))
            p50, p99 = infer_ms(runtime, paced)
            rows.append((f"PatchCore int8 graph, {label}", f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"))
        # In a process of its own: this one has torch and the trainer loaded, which the agent never imports.
        probe = subprocess.run(
            [sys.executable, "-c", GC_PROBE, str(root / "edge" / "model.xml")],
            capture_output=True,
            text=True,
            check=True,
        )
        before, after = probe.stdout.split()
        rows.append(("full gc.collect() in an agent process", f"{float(before):.2f} ms"))
        rows.append(("full gc.collect() there after gc.freeze()", f"{float(after):.3f} ms"))

    rgba = np.random.default_rng(0).integers(0, 256, (400, 400, 4), dtype=np.uint8)
    sliced = median_ms(lambda: np.ascontiguousarray(rgba[:, :, :3]))
    rows.append(("RGBa8 -> RGB 400 x 400, numpy slice", f"{sliced:.3f} ms"))
    converted = median_ms(lambda: cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB))
    rows.append(("RGBa8 -> RGB 400 x 400, cv2.cvtColor", f"{converted:.3f} ms"))

    width = max(len(name) for name, _ in rows)
    print(f"\n| {'measure':<{width}} | median |\n|{'-' * (width + 2)}|---|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


if __name__ == "__main__":
    main()
