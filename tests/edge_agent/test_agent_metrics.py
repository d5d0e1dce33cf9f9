from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from pipeline import Pipeline

from edge_agent.cameras.folder import FolderCamera
from edge_agent.config import FolderCameraConfig
from edge_agent.geometry import Geometry
from edge_agent.loop import InspectionLoop, LoopOptions, ModelInfo
from edge_agent.metrics import (
    CAMERA_CONNECTED,
    DROPPED,
    OUTBOX,
    STAGE_SECONDS,
    Metrics,
    MetricsError,
    MetricsServer,
)
from edge_agent.publish.fake import FakePublisher
from edge_agent.run_summary import STAGES
from edge_agent.runtimes.fake import FakeRuntime

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

Labels = tuple[tuple[str, str], ...]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def parse(text: str) -> dict[tuple[str, Labels], float]:
    """Samples by (name, labels); fails on any line that is not a comment or `name{labels} value`."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, Labels], float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        pairs = tuple(LABEL.findall(labels or ""))
        assert labels is None or labels == "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}", line
        family = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.removesuffix(s) in types), name)
        assert family in types, f"{name} has no # TYPE line"
        samples[name, pairs] = float(value)
    return samples


def test_exposition_format_counters_gauges_and_cumulative_histograms() -> None:
    metrics = Metrics("model-7", clock=FakeClock())
    odd = 'cam "A"\\1'
    metrics.frame_done(odd, {"infer": 0.003, "publish": 0.0001}, "ok", late=False)
    metrics.frame_done(odd, {"infer": 0.07, "publish": 0.0002}, "reject", late=True)
    metrics.frame_done(odd, {"infer": 9.0, "publish": 0.0003}, "error", late=False)
    metrics.watch(DROPPED, odd, lambda: 5)
    metrics.watch(CAMERA_CONNECTED, odd, lambda: True)

    def broken() -> float:
        raise RuntimeError("outbox closed")

    metrics.watch(OUTBOX, odd, broken)
    samples = parse(metrics.render())
    cam = ("camera", 'cam \\"A\\"\\\\1')
    assert samples["edge_agent_frames_total", (cam,)] == 3
    assert samples["edge_agent_rejects_total", (cam,)] == 1
    assert samples["edge_agent_errors_total", (cam,)] == 1
    assert samples["edge_agent_late_decisions_total", (cam,)] == 1
    assert samples["edge_agent_dropped_frames_total", (cam,)] == 5
    assert samples["edge_agent_camera_connected", (cam,)] == 1
    assert samples["edge_agent_model_info", (("version", "model-7"),)] == 1
    assert not any(name == OUTBOX for name, _ in samples)  # a failing reader only loses its own series

    for stage in ("infer", "publish"):
        labels = (cam, ("stage", stage))
        buckets = [
            (dict(lb)["le"], v)
            for (n, lb), v in samples.items()
            if n == f"{STAGE_SECONDS}_bucket" and set(lb) - {("le", dict(lb)["le"])} == set(labels)
        ]
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), "buckets must be cumulative"
        assert buckets[-1] == ("+Inf", samples[f"{STAGE_SECONDS}_count", labels]) and counts[-1] == 3
        assert [float(le) for le, _ in buckets[:-1]] == sorted(float(le) for le, _ in buckets[:-1])
    infer = (cam, ("stage", "infer"))
    assert samples[f"{STAGE_SECONDS}_sum", infer] == pytest.approx(9.073)
    # prometheus-client writes a bucket's labels in name order: camera, le, stage.
    assert samples[f"{STAGE_SECONDS}_bucket", (cam, ("le", "0.005"), ("stage", "infer"))] == 1
    assert samples[f"{STAGE_SECONDS}_bucket", (cam, ("le", "0.1"), ("stage", "infer"))] == 2


def test_healthz_fails_after_the_timeout_without_a_frame() -> None:
    clock = FakeClock()
    metrics = Metrics("m", health_timeout_s=10, clock=clock)
    clock.now += 9.9
    assert metrics.health() == (True, "ok")  # still starting up
    clock.now += 2.4
    assert metrics.health() == (False, "no frame completed for 12.3 s since start")
    metrics.frame_done("cam0", {}, "ok", late=False)
    assert metrics.health() == (True, "ok")
    clock.now += 10.0
    assert metrics.health() == (True, "ok")
    clock.now += 2.3
    assert metrics.health() == (False, "no frame completed for 12.3 s")


@pytest.fixture
def served() -> Iterator[tuple[Metrics, FakeClock, str]]:
    clock = FakeClock()
    metrics = Metrics("m-1", health_timeout_s=10, clock=clock)
    server = MetricsServer(metrics, "127.0.0.1", 0)
    try:
        yield metrics, clock, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_http_round_trip(served: tuple[Metrics, FakeClock, str]) -> None:
    metrics, clock, base = served
    metrics.frame_done("cam0", {"infer": 0.01}, "reject", late=False)
    status, content_type, body = get(f"{base}/metrics")
    assert (status, content_type) == (200, "text/plain; version=0.0.4; charset=utf-8")
    assert parse(body)["edge_agent_rejects_total", (("camera", "cam0"),)] == 1
    assert get(f"{base}/healthz")[::2] == (200, "ok\n")
    clock.now += 12.3
    assert get(f"{base}/healthz")[::2] == (503, "no frame completed for 12.3 s\n")
    assert get(f"{base}/nothing")[0] == 404


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_in_use_is_a_clear_error(busy_port: int) -> None:
    with pytest.raises(
        MetricsError, match=rf"metrics port {busy_port} on 127.0.0.1 is already in use \(metrics.port\)"
    ):
        MetricsServer(Metrics("m"), "127.0.0.1", busy_port)


def test_agent_with_its_metrics_port_in_use_exits_2_with_one_line(
    tmp_path: Path, pipeline: Pipeline, busy_port: int
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "000.png"), np.zeros((32, 32), np.uint8))
    config = {
        "version": 1,
        "station": "s1",
        "cameras": {"cam0": {"source": "folder", "path": str(images)}},
        "model": {"path": str(pipeline.edge)},
        "mqtt": {"port": 1, "store_dir": str(tmp_path / "outbox")},
        "archive": {"enabled": False},
        "metrics": {"port": busy_port},
    }
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "--camera", "cam0", "--config", str(tmp_path / "agent.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: metrics port") and str(busy_port) in last and "metrics.port" in last


def test_loop_feeds_counters_stages_and_health(tmp_path: Path) -> None:
    for i, level in enumerate([10, 200, 30, 250]):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((20, 30), level, np.uint8))
    camera = FolderCamera("cam0", FolderCameraConfig(source="folder", path=tmp_path))
    camera.open()
    clock = FakeClock()
    metrics = Metrics("test-1", health_timeout_s=10, clock=clock)
    model = ModelInfo(version="test-1", threshold=100.0, score_scale=100.0, geometry=Geometry(height=16, width=16))
    runtime = FakeRuntime(lambda image: float(image.mean()))
    clock.now += 60  # a completed frame, not the start, must make the agent healthy again
    InspectionLoop(camera, runtime, FakePublisher(), model, LoopOptions(), metrics=metrics).run(threading.Event())
    samples = parse(metrics.render())
    cam = (("camera", "cam0"),)
    assert samples["edge_agent_frames_total", cam] == 4
    assert samples["edge_agent_rejects_total", cam] == 2
    assert samples["edge_agent_errors_total", cam] == 0
    assert samples["edge_agent_dropped_frames_total", cam] == 0
    assert samples["edge_agent_camera_connected", cam] == 1
    for stage in STAGES:
        assert samples[f"{STAGE_SECONDS}_count", (*cam, ("stage", stage))] == 4
    assert metrics.health() == (True, "ok")
