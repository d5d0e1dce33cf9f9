"""Soak: the real agent process on the simulated GenICam camera at a line rate, for minutes, against mosquitto.

    .venv/bin/python -m bench.soak --minutes 10 --fps 30   (from the repository root: it uses demo/'s broker)

Trains PatchCore on the simulator's own frames (so they are the good parts), bakes it for OpenVINO int8 at
256 x 256, starts mosquitto and `edge-agent run --camera gige0`, and subscribes to the verdicts. It samples the
agent's RSS and open file descriptors from /proc after a warm-up and at the end, then stops the agent with SIGTERM
and prints one table: frames, drops, late decisions, latency from capture to decision (the agent's own
`latency_ms`) and from capture to the verdict's arrival at a subscriber through the broker, RSS and descriptors.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion

from converters.bake import BakeOptions, bake
from converters.guard import TIMING_GUARD
from demo.broker import Broker, free_port, start_mosquitto
from edge_agent.cameras.genicam import GenicamCamera
from edge_agent.config import GenicamCameraConfig
from trainer.fit import FitOptions, fit

STATION = "soak"
CAMERA = "gige0"
TRAIN_FRAMES = 120
# Every this many frames is kept for training, so the good images span the simulator's motion (about a minute
# at 30 fps) rather than its first few seconds, and later frames are not all rejects.
TRAIN_STRIDE = 15
WARMUP_S = 20.0  # RSS "start" is read after this: allocator pools and caches have filled by then
READY_TIMEOUT_S = 300.0
GOALS = {"p99_ms": 20.0, "drops": 0, "rss_growth_mb": 5.0, "rss_mb": 400.0}
MB = 1024 * 1024
RSS_SAMPLE_S = 10.0


@dataclass
class Received:
    """Verdicts as a subscriber gets them, with the wall time of arrival."""

    payloads: list[dict[str, object]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    rejects: int = 0  # messages on the reject topic, which the PLC listens to
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        now = time.time()
        with self.lock:
            if message.topic.endswith("/reject"):
                self.rejects += 1
                return
            self.payloads.append(json.loads(message.payload))
            self.arrived.append(now)


def training_frames(folder: Path, count: int, stride: int) -> Path:
    """The simulator's own frames, every `stride`-th, saved as the good images of a folder layout."""
    good = folder / "good"
    good.mkdir(parents=True)
    camera = GenicamCamera(CAMERA, GenicamCameraConfig(source="genicam", frame_rate=30.0))
    camera.open()
    try:
        saved = 0
        grabbed = 0
        while saved < count:
            frame = camera.grab(2.0)
            if frame is None:
                continue
            grabbed += 1
            if grabbed % stride == 0:
                cv2.imwrite(str(good / f"{saved:04d}.png"), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
                saved += 1
    finally:
        camera.close()
    return folder


def proc_sample(pid: int) -> tuple[float, int]:
    """(RSS in MB, open file descriptors) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return rss_kb * 1024 / MB, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def agent_config(root: Path, broker: Broker, edge: Path, fps: float, metrics_port: int) -> Path:
    config = {
        "version": 1,
        "station": STATION,
        "cameras": {CAMERA: {"source": "genicam", "cti": "viky", "frame_rate": fps, "queue_size": 4}},
        "model": {"path": str(edge), "cache_dir": str(root / "cache")},
        "mqtt": {"host": broker.host, "port": broker.port, "store_dir": str(root / "outbox")},
        "reject": {"deadline_ms": 100},
        "archive": {"path": str(root / "archive"), "quota_mb": 200},
        "metrics": {"port": metrics_port},
    }
    path = root / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def archive_backlog(port: int) -> int:
    """The agent's archive queue depth, from its /metrics (each item holds a frame and its map)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r"^edge_agent_archive_pending_items\{[^}]*\} (\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else -1


def wait_ready(agent: subprocess.Popen[str], log: list[str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    assert agent.stderr is not None
    for line in agent.stderr:
        log.append(line)
        if "ready:" in line:
            threading.Thread(target=lambda: log.extend(agent.stderr or []), daemon=True).start()
            return
        if time.monotonic() > deadline:
            break
    raise RuntimeError("the agent never became ready:\n" + "".join(log[-20:]))


def spread(ms: np.ndarray) -> str:
    if not len(ms):
        return "no verdicts"
    return f"p50 {np.percentile(ms, 50):.1f}  p99 {np.percentile(ms, 99):.1f}  max {ms.max():.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--precision", default="int8", choices=["fp32", "fp16", "int8"])
    parser.add_argument(
        "--train-stride",
        type=int,
        default=TRAIN_STRIDE,
        help="train on every N-th frame; 1 covers only a few seconds of the motion, so later frames include rejects",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        root = Path(tmp)
        print(f"grabbing {TRAIN_FRAMES} training frames from the simulator, 1 in {args.train_stride}", flush=True)
        data = training_frames(root / "data", TRAIN_FRAMES, args.train_stride)
        fit(FitOptions(data=data, model="patchcore", out=root / "model"))
        bake(BakeOptions(bundle=root / "model", out=root / "edge", precision=args.precision, guard=TIMING_GUARD))
        with start_mosquitto() as broker:
            received = Received()
            subscriber = Client(CallbackAPIVersion.VERSION2, client_id="soak-subscriber")
            subscriber.on_message = received.on_message
            subscriber.connect(broker.host, broker.port)
            subscriber.subscribe([(f"inspect/{STATION}/{CAMERA}/{topic}", 1) for topic in ("verdict", "reject")])
            subscriber.loop_start()
            metrics_port = free_port()
            config = agent_config(root, broker, root / "edge", args.fps, metrics_port)
            command = [sys.executable, "-m", "edge_agent.cli", "run", "--camera", CAMERA, "--config", str(config)]
            agent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            log: list[str] = []
            wait_ready(agent, log)
            started = time.monotonic()
            print(f"agent ready; soaking for {args.minutes:g} min at {args.fps:g} fps", flush=True)
            time.sleep(WARMUP_S)
            rss_start, fds_start = proc_sample(agent.pid)
            rss_samples = [rss_start]  # every RSS_SAMPLE_S: a leak keeps climbing, pools and queues level off
            backlog = [archive_backlog(metrics_port)]
            end = started + args.minutes * 60
            while time.monotonic() < end:
                time.sleep(min(RSS_SAMPLE_S, max(0.0, end - time.monotonic())))
                rss_samples.append(proc_sample(agent.pid)[0])
                backlog.append(archive_backlog(metrics_port))
            rss_peak = max(rss_samples)
            rss_end, fds_end = proc_sample(agent.pid)
            agent.send_signal(signal.SIGTERM)
            out, _ = agent.communicate(timeout=120)
            elapsed = time.monotonic() - started
            time.sleep(2.0)  # the last acknowledged verdicts reach the subscriber
            subscriber.loop_stop()
            subscriber.disconnect()

    summary = re.search(r"(\d+) frames: (\d+) ok, (\d+) reject, (\d+) error; (\d+) dropped, (\d+) late", out)
    if summary is None or agent.returncode != 0:
        raise SystemExit(f"agent exited {agent.returncode}:\n{out}\n{''.join(log[-20:])}")
    frames, ok, rejects, errors, dropped, late = map(int, summary.groups())
    stages = {q: re.search(rf"{q} latency from capture [\d.]+ ms \((.*)\)", out) for q in ("median", "p99")}
    with received.lock:
        payloads, arrived, reject_messages = list(received.payloads), np.array(received.arrived), received.rejects
    archived = re.search(r"(\d+) reject image\(s\) and heatmaps archived", out)
    decision = np.array([float(p["latency_ms"]) for p in payloads])  # type: ignore[arg-type]
    delivery = (arrived - np.array([float(p["captured_at"]) for p in payloads])) * 1000  # type: ignore[arg-type]
    ids = [int(p["frame_id"]) for p in payloads]  # type: ignore[call-overload]
    rows = [
        ("run", f"{elapsed / 60:.1f} min at {args.fps:g} fps target, PatchCore {args.precision} 256x256"),
        ("frames judged", f"{frames} ({frames / elapsed:.1f}/s): {ok} ok, {rejects} reject, {errors} error"),
        ("verdicts received", f"{len(payloads)}, frame ids in order: {ids == sorted(ids)}"),
        ("rejects on the reject topic, archived", f"{reject_messages}, {archived.group(1) if archived else 0}"),
        ("dropped (queue full)", f"{dropped}   goal {GOALS['drops']}"),
        ("late (> 100 ms)", f"{late}"),
        ("capture -> decision ms", spread(decision)),
        *((f"agent's {q} stage ms", found.group(1) if found else "n/a") for q, found in stages.items()),
        ("capture -> subscriber ms", f"{spread(delivery)}   goal p99 <= {GOALS['p99_ms']:g}"),
        (
            "RSS MB (after warm-up, end, peak)",
            f"{rss_start:.1f}, {rss_end:.1f}, {rss_peak:.1f}   goal <= {GOALS['rss_mb']:g}",
        ),
        ("RSS MB every minute", ", ".join(f"{mb:.0f}" for mb in rss_samples[:: round(60 / RSS_SAMPLE_S)])),
        ("archive backlog every minute (items)", ", ".join(str(n) for n in backlog[:: round(60 / RSS_SAMPLE_S)])),
        ("RSS growth MB", f"{rss_end - rss_start:+.1f}   goal <= {GOALS['rss_growth_mb']:g} over 10 min"),
        ("open fds (after warm-up, end)", f"{fds_start}, {fds_end}"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")


if __name__ == "__main__":
    main()
