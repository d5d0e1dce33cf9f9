"""Soak: real agent processes on the simulated GenICam cameras at a line rate, for minutes, against mosquitto,
optionally through a broker outage.

    .venv/bin/python -m bench.soak --minutes 10 --fps 30   (from the repository root: it uses demo/'s broker)

    .venv/bin/python -m bench.soak --minutes 10 --fps 30 --cameras 2 --outage-at 120 --outage-s 60

Trains PatchCore on the simulator's own frames (so they are the good parts), bakes it for OpenVINO int8 at
256 x 256, starts mosquitto and one `edge-agent run --camera gigeN` per camera (viky devices 0, 1, as the template
unit runs them), and subscribes to the verdicts with a persistent session. It samples each agent's RSS and open
file descriptors from /proc after a warm-up and every few seconds, optionally stops the broker for `--outage-s`
and starts it again on the same port (its persistence keeps the subscriber's session: what the agents deliver
after the outage reaches the subscriber even before it reconnects), then stops the agents with SIGTERM and prints
one table with a column per camera: frames, drops, late decisions, latency from capture to decision (the agent's
own `latency_ms`) and to the verdict's arrival at a subscriber through the broker, RSS and descriptors, and the
accounting: every part the agent numbered (judged or `not_inspected`) against the distinct verdicts received.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml
from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from converters.bake import BakeOptions, bake
from converters.guard import TIMING_GUARD
from demo.broker import Broker, free_ports, start_mosquitto
from edge_agent.cameras.genicam import GenicamCamera
from edge_agent.config import GenicamCameraConfig
from edge_agent.metrics import ARCHIVE_PENDING, OUTBOX_DROPPED, REJECTS_EXPIRED
from trainer.fit import FitOptions, fit

STATION = "soak"
CAMERAS = ("gige0", "gige1")  # viky devices 0 and 1
TRAIN_FRAMES = 120
# Every this many frames is kept for training, so the good images span the simulator's motion (about a minute
# at 30 fps) rather than its first few seconds, and later frames are not all rejects.
TRAIN_STRIDE = 15
WARMUP_S = 20.0  # RSS "start" is read after this: allocator pools and caches have filled by then
READY_TIMEOUT_S = 300.0
GOALS = {"p99_ms": 20.0, "drops": 0, "rss_growth_mb": 5.0, "rss_mb": 400.0, "lost": 0}
MB = 1024 * 1024
RSS_SAMPLE_S = 10.0
# The broker queues QoS 1 messages for the offline subscriber without a cap (mosquitto's default keeps 1000 per
# client): after an outage the agents deliver their whole backlog at once.
BROKER_SETTINGS = "allow_anonymous true\nmax_queued_messages 0"
SUBSCRIBER = "soak-subscriber"
RECONNECT_S = (1, 2)  # the subscriber's reconnect backoff, min and max seconds
DRAIN_S = 30.0  # after the agents stop, how long the verdicts they sent may take to reach the subscriber
DRAIN_QUIET_S = 2.0
SUMMARY = re.compile(r"(\d+) frames: (\d+) ok, (\d+) reject, (\d+) error; (\d+) dropped, (\d+) late")
NOT_INSPECTED = re.compile(r"not inspected: (.*); (\d+) with no verdict of their own")


@dataclass
class Received:
    """Verdicts as a subscriber gets them, per camera, with the wall time of arrival."""

    payloads: dict[str, list[dict[str, object]]] = field(default_factory=lambda: defaultdict(list))
    arrived: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    rejects: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # the reject topic, for the PLC
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        now = time.time()
        camera, topic = message.topic.split("/")[-2:]
        with self.lock:
            if topic == "reject":
                self.rejects[camera] += 1
                return
            self.payloads[camera].append(json.loads(message.payload))
            self.arrived[camera].append(now)

    def count(self) -> int:
        with self.lock:
            return sum(len(p) for p in self.payloads.values())


@dataclass
class AgentRun:
    """One `edge-agent run --camera` process and what was sampled of it."""

    camera: str
    process: subprocess.Popen[str]
    metrics_port: int
    log: list[str] = field(default_factory=list)
    rss_samples: list[float] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    output: str = ""
    counters: dict[str, int] = field(default_factory=dict)  # at the last sample


@dataclass(frozen=True)
class Accounting:
    """What one agent says it numbered against what the subscriber got."""

    judged: int
    not_inspected: str
    without_verdict: int
    received: int
    duplicates: int
    missing_ids: int
    camera_id_gaps: int


def training_frames(folder: Path, cameras: tuple[str, ...], count: int, stride: int) -> Path:
    """The simulator's own frames, every `stride`-th, `count` in all from each camera in turn, saved as the good
    images of a folder layout: one model then serves every camera, as a station's shared model would."""
    good = folder / "good"
    good.mkdir(parents=True)
    for device, name in enumerate(cameras):
        config = GenicamCameraConfig(source="genicam", frame_rate=30.0, device=device)
        camera = GenicamCamera(name, config)
        camera.open()
        try:
            saved = grabbed = 0
            while saved < count // len(cameras):
                frame = camera.grab(2.0)
                if frame is None:
                    continue
                grabbed += 1
                if grabbed % stride == 0:
                    image = cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
                    cv2.imwrite(str(good / f"{name}-{saved:04d}.png"), image)
                    saved += 1
        finally:
            camera.close()
    return folder


def proc_sample(pid: int) -> tuple[float, int]:
    """(RSS in MB, open file descriptors) of a live process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return rss_kb * 1024 / MB, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def agent_config(root: Path, broker: Broker, edge: Path, fps: float, cameras: tuple[str, ...], metrics: int) -> Path:
    """One config for every camera, as the template unit reads it; camera N serves metrics on `metrics` + N."""
    camera = {"source": "genicam", "cti": "viky", "frame_rate": fps, "queue_size": 4}
    config = {
        "version": 1,
        "station": STATION,
        "cameras": {name: {**camera, "device": device} for device, name in enumerate(cameras)},
        "model": {"path": str(edge), "cache_dir": str(root / "cache")},
        "mqtt": {"host": broker.host, "port": broker.port, "store_dir": str(root / "outbox")},
        "reject": {"deadline_ms": 100},
        "archive": {"path": str(root / "archive"), "quota_mb": 200},
        "metrics": {"port": metrics},
    }
    path = root / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def metric(port: int, name: str) -> int:
    """One of the agent's own counters or gauges, from its /metrics (summed over labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.findall(rf"^{name}(?:\{{[^}}]*\}})? ([\d.e+]+)$", text, re.MULTILINE)
    return round(sum(float(v) for v in found)) if found else -1


def wait_ready(run: AgentRun) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    stderr = run.process.stderr
    assert stderr is not None
    for line in stderr:
        run.log.append(line)
        if "ready:" in line:
            threading.Thread(target=lambda: run.log.extend(stderr), daemon=True).start()
            return
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"the agent for {run.camera} never became ready:\n" + "".join(run.log[-20:]))


def sample(runs: list[AgentRun]) -> None:
    for run in runs:
        rss, fds = proc_sample(run.process.pid)
        run.rss_samples.append(rss)
        run.fds.append(fds)
        run.backlog.append(metric(run.metrics_port, ARCHIVE_PENDING))
        run.counters = {name: metric(run.metrics_port, name) for name in (REJECTS_EXPIRED, OUTBOX_DROPPED)}


def subscriber(broker: Broker, received: Received) -> Client:
    """A persistent session (clean_session off, a fixed id): with the broker's persistence, its subscriptions and
    the verdicts queued for it survive the outage."""
    client = Client(CallbackAPIVersion.VERSION2, client_id=SUBSCRIBER, clean_session=False)
    client.on_message = received.on_message
    topics = [(f"inspect/{STATION}/+/{topic}", 1) for topic in ("verdict", "reject")]

    def on_connect(
        client: Client, userdata: object, flags: ConnectFlags, reason: ReasonCode, properties: Properties | None
    ) -> None:
        client.subscribe(topics)

    client.on_connect = on_connect
    client.reconnect_delay_set(*RECONNECT_S)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def spread(ms: np.ndarray) -> str:
    if not len(ms):
        return "no verdicts"
    return f"p50 {np.percentile(ms, 50):.1f}  p99 {np.percentile(ms, 99):.1f}  max {ms.max():.1f}"


def account(output: str, payloads: list[dict[str, object]]) -> Accounting:
    """The agent's own counts against the distinct verdicts received. Frame ids number every part, judged or not
    inspected, so any id missing from 1 to the last is a part whose verdict never arrived."""
    summary, missed = SUMMARY.search(output), NOT_INSPECTED.search(output)
    if summary is None or missed is None:
        raise SystemExit(f"no run summary in the agent's output:\n{output}")
    _, ok, rejects, errors, _, _ = map(int, summary.groups())
    ids = {int(p["frame_id"]) for p in payloads}  # type: ignore[call-overload]
    device_ids = sorted({int(p["camera_frame_id"]) for p in payloads if p.get("camera_frame_id") is not None})  # type: ignore[call-overload]
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(device_ids) if b > a + 1)
    return Accounting(
        judged=ok + rejects + errors,
        not_inspected=missed.group(1),
        without_verdict=int(missed.group(2)),
        received=len(ids),
        duplicates=len(payloads) - len(ids),
        missing_ids=(max(ids) - len(ids)) if ids else 0,
        camera_id_gaps=gaps,
    )


def rows_for(run: AgentRun, received: Received, elapsed: float, outage: tuple[float, float] | None) -> dict[str, str]:
    out = run.output
    summary = SUMMARY.search(out)
    assert summary is not None
    frames, ok, rejects, errors, dropped, late = map(int, summary.groups())
    with received.lock:
        payloads = list(received.payloads[run.camera])
        arrived = np.array(received.arrived[run.camera])
        reject_messages = received.rejects[run.camera]
    acc = account(out, payloads)
    stages = {q: re.search(rf"{q} latency from capture [\d.]+ ms \((.*)\)", out) for q in ("median", "p99")}
    archived = re.search(r"(\d+) reject image\(s\) and heatmaps archived", out)
    judged = [p for p in payloads if p["verdict"] != "not_inspected"]
    decision = np.array([float(p["latency_ms"]) for p in judged])  # type: ignore[arg-type]
    captured = np.array([float(p["captured_at"]) for p in payloads])  # type: ignore[arg-type]
    delivery = (arrived - captured) * 1000
    held, caught_up = 0, "no outage"
    if outage is not None:
        # Verdicts held in the outbox through the outage, and the backlog's drain after it, are not the line's
        # latency: that is measured on the verdicts captured before the broker went down.
        start, end = outage
        during = (captured >= start) & (captured <= end)
        held = int(during.sum())
        caught_up = f"{arrived[during].max() - end:.1f} s" if held else "n/a"
        delivery = delivery[captured < start]
    rss, every_minute = run.rss_samples, round(60 / RSS_SAMPLE_S)
    numbered = acc.judged + sum(int(n) for n in re.findall(r"(\d+) \w+", acc.not_inspected))
    return {
        "frames judged": f"{frames} ({frames / elapsed:.1f}/s): {ok} ok, {rejects} reject, {errors} error",
        "not inspected (reason)": acc.not_inspected,
        "dropped (queue full), late (> 100 ms)": f"{dropped}, {late}",
        "parts numbered (judged + not inspected)": str(numbered),
        "distinct verdicts received": f"{acc.received} ({acc.duplicates} duplicate deliveries)",
        "lost: numbered, never received": f"{numbered - acc.received}   goal {GOALS['lost']}",
        "frame ids missing at the subscriber": str(acc.missing_ids),
        "device frame ids with no verdict": str(acc.camera_id_gaps),
        "parts with no verdict of their own": str(acc.without_verdict),
        "verdicts captured during the outage": str(held),
        "broker back -> outage backlog delivered": caught_up,
        "rejects on the reject topic, archived": f"{reject_messages}, {archived.group(1) if archived else 0}",
        "rejects expired in the outbox (deadline), outbox dropped": (
            f"{run.counters[REJECTS_EXPIRED]}, {run.counters[OUTBOX_DROPPED]}"
        ),
        "capture -> decision ms": spread(decision),
        **{f"agent's {q} stage ms": found.group(1) if found else "n/a" for q, found in stages.items()},
        "capture -> subscriber ms (before any outage)": f"{spread(delivery)}   goal p99 <= {GOALS['p99_ms']:g}",
        "RSS MB (after warm-up, end, peak)": f"{rss[0]:.1f}, {rss[-1]:.1f}, {max(rss):.1f}",
        "RSS MB every minute": ", ".join(f"{mb:.0f}" for mb in rss[::every_minute]),
        "archive backlog every minute (items)": ", ".join(str(n) for n in run.backlog[::every_minute]),
        "RSS growth MB": f"{rss[-1] - rss[0]:+.1f}   goal <= {GOALS['rss_growth_mb']:g} over 10 min",
        "open fds (after warm-up, end)": f"{run.fds[0]}, {run.fds[-1]}",
    }


def stop(runs: list[AgentRun]) -> None:
    for run in runs:
        run.process.send_signal(signal.SIGTERM)
    for run in runs:
        run.output, _ = run.process.communicate(timeout=120)
        if SUMMARY.search(run.output) is None or run.process.returncode != 0:
            raise SystemExit(
                f"{run.camera}: agent exited {run.process.returncode}:\n{run.output}\n{''.join(run.log[-20:])}"
            )


def drain(received: Received) -> None:
    """Wait until no verdict has arrived for DRAIN_QUIET_S (the agents' last outbox rows), up to DRAIN_S."""
    deadline = time.monotonic() + DRAIN_S
    last = -1
    while time.monotonic() < deadline and received.count() != last:
        last = received.count()
        time.sleep(DRAIN_QUIET_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--cameras", type=int, default=1, choices=range(1, len(CAMERAS) + 1))
    parser.add_argument("--outage-at", type=float, default=0.0, help="seconds after warm-up to stop the broker")
    parser.add_argument("--outage-s", type=float, default=0.0, help="how long the broker stays down (0: no outage)")
    parser.add_argument("--precision", default="int8", choices=["fp32", "fp16", "int8"])
    parser.add_argument(
        "--train-stride",
        type=int,
        default=TRAIN_STRIDE,
        help="train on every N-th frame; 1 covers only a few seconds of the motion, so later frames include rejects",
    )
    args = parser.parse_args()
    cameras = CAMERAS[: args.cameras]

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        print(f"grabbing {TRAIN_FRAMES} training frames from the simulator, 1 in {args.train_stride}", flush=True)
        data = training_frames(root / "data", cameras, TRAIN_FRAMES, args.train_stride)
        fit(FitOptions(data=data, model="patchcore", out=root / "model"))
        bake(BakeOptions(bundle=root / "model", out=root / "edge", precision=args.precision, guard=TIMING_GUARD))
        persistence = root / "broker"
        persistence.mkdir()
        broker_stack = ExitStack()
        broker = broker_stack.enter_context(start_mosquitto(None, BROKER_SETTINGS, persistence))
        stack.callback(lambda: broker_stack.close())
        received = Received()
        client = subscriber(broker, received)
        metrics = free_ports(len(cameras))
        config = agent_config(root, broker, root / "edge", args.fps, cameras, metrics)
        runs = []
        for n, camera in enumerate(cameras):
            command = [sys.executable, "-m", "edge_agent.cli", "run", "--camera", camera, "--config", str(config)]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            stack.callback(process.kill)
            runs.append(AgentRun(camera, process, metrics + n))
        for run in runs:
            wait_ready(run)
        started = time.monotonic()
        print(
            f"agents ready; soaking for {args.minutes:g} min at {args.fps:g} fps on {len(cameras)} camera(s)",
            flush=True,
        )
        time.sleep(WARMUP_S)
        sample(runs)
        end = started + args.minutes * 60
        outage_start = started + WARMUP_S + args.outage_at if args.outage_s > 0 else None
        outage: tuple[float, float] | None = None
        while time.monotonic() < end:
            if outage_start is not None and outage is None and time.monotonic() >= outage_start:
                print(f"broker down for {args.outage_s:g} s", flush=True)
                down = time.time()
                broker_stack.close()
                time.sleep(args.outage_s)
                broker_stack = ExitStack()
                broker_stack.enter_context(start_mosquitto(broker.port, BROKER_SETTINGS, persistence))
                outage = (down, time.time())
                print("broker back", flush=True)
            time.sleep(min(RSS_SAMPLE_S, max(0.0, end - time.monotonic())))
            sample(runs)
        stop(runs)
        elapsed = time.monotonic() - started
        drain(received)
        client.loop_stop()
        client.disconnect()

    table = {camera: rows_for(run, received, elapsed, outage) for camera, run in zip(cameras, runs, strict=True)}
    heading = f"{elapsed / 60:.1f} min at {args.fps:g} fps target, PatchCore {args.precision} 256x256"
    if outage is not None:
        heading += f", broker down {outage[1] - outage[0]:.0f} s from {WARMUP_S + args.outage_at:g} s"
    names = list(next(iter(table.values())))
    width = max(len(name) for name in names)
    print(f"\n{heading}\n")
    print(f"| {'':<{width}} | " + " | ".join(cameras) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("---" for _ in cameras) + "|")
    for name in names:
        print(f"| {name:<{width}} | " + " | ".join(table[c][name] for c in cameras) + " |")


if __name__ == "__main__":
    main()
