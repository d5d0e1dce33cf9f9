"""fit -> bake -> `edge-agent run` against a real mosquitto broker, as a user runs it."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from pipeline import Pipeline

from demo.broker import Broker, free_ports
from demo.collector import MqttCollector
from tests.edge_agent.waiting import WAIT_S

AGENT = [sys.executable, "-m", "edge_agent.cli"]
STATION = "line1"


def flat_replay(pipeline: Pipeline, folder: Path) -> dict[str, bool]:
    """Test images in one folder; returns file name -> is it defective."""
    folder.mkdir()
    truth = {}
    for kind in sorted((pipeline.data / "test").iterdir()):
        for image in sorted(kind.iterdir()):
            name = f"{kind.name}_{image.name}"
            shutil.copy(image, folder / name)
            truth[name] = kind.name != "good"
    return truth


def agent_config(
    tmp_path: Path,
    broker: Broker,
    pipeline: Pipeline,
    camera: dict[str, object],
    overrides: dict[str, Any] | None = None,  # merged into the sections, key by key
) -> Path:
    cameras = {"cam0": camera, "gige0": {"source": "genicam", "cti": "viky"}}
    config = {
        "version": 1,
        "station": STATION,
        "cameras": cameras,
        "model": {"path": str(pipeline.edge)},
        "mqtt": {"host": broker.host, "port": broker.port, "store_dir": str(tmp_path / "outbox")},
        "archive": {"path": str(tmp_path / "archive")},
        # Not the fixed default (9108), which another agent on this machine, or another test, may hold. Camera N
        # serves on port + N, so one free port per camera.
        "metrics": {"port": free_ports(len(cameras))},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(_merged(config, overrides or {})))
    return path


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        both_sections = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merged(base[key], value) if both_sections else value
    return merged


def start_agent(config: Path, camera: str = "cam0") -> subprocess.Popen[str]:
    """`edge-agent run` in a process of its own, its output captured."""
    command = [*AGENT, "run", "--camera", camera, "--config", str(config)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENT, "run", *args], capture_output=True, text=True, timeout=180)


def test_replay_verdicts_reach_the_broker_and_defects_are_rejects(
    tmp_path: Path, mqtt_broker: Broker, pipeline: Pipeline
) -> None:
    truth = flat_replay(pipeline, tmp_path / "replay")
    config = agent_config(tmp_path, mqtt_broker, pipeline, {"source": "folder", "path": str(tmp_path / "replay")})
    with (
        MqttCollector(mqtt_broker.host, mqtt_broker.port, f"inspect/{STATION}/cam0/verdict") as verdicts,
        MqttCollector(mqtt_broker.host, mqtt_broker.port, f"inspect/{STATION}/cam0/reject") as rejects,
    ):
        result = run_agent("--camera", "cam0", "--config", str(config))
        assert result.returncode == 0, result.stderr
        # The agent exits only after the broker acknowledged everything, so all messages are there now.
        payloads = [json.loads(m[1]) for m in verdicts.wait_for(len(truth), WAIT_S)]
        reject_payloads = [json.loads(m[1]) for m in rejects.messages]
    assert len(payloads) == len(truth)
    keys = {"frame_id", "camera", "captured_at", "published_at", "latency_ms", "score", "threshold", "verdict"}
    assert keys | {"model", "regions"} <= payloads[0].keys()
    decided = {p["source"]: p["verdict"] == "reject" for p in payloads}
    assert decided == truth
    assert all(p["regions"] for p in payloads if p["verdict"] == "reject")
    assert sorted(r["frame_id"] for r in reject_payloads) == sorted(
        p["frame_id"] for p in payloads if p["verdict"] == "reject"
    )
    assert f"{sum(truth.values())} reject" in result.stdout
    assert len(list((tmp_path / "archive").rglob("*_heatmap.png"))) == sum(truth.values())


def test_genicam_simulator_through_the_agent(tmp_path: Path, mqtt_broker: Broker, pipeline: Pipeline) -> None:
    config = agent_config(tmp_path, mqtt_broker, pipeline, {"source": "folder", "path": str(tmp_path)})
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, f"inspect/{STATION}/gige0/verdict") as verdicts:
        result = run_agent("--camera", "gige0", "--config", str(config), "--max-frames", "5")
        assert result.returncode == 0, result.stderr
        payloads = [json.loads(m[1]) for m in verdicts.wait_for(5, WAIT_S)]
    assert [p["frame_id"] for p in payloads] == [1, 2, 3, 4, 5]
    assert all(p["verdict"] in ("ok", "reject") for p in payloads)


def test_sigterm_stops_cleanly_after_delivering_in_flight_verdicts(
    tmp_path: Path, mqtt_broker: Broker, pipeline: Pipeline
) -> None:
    flat_replay(pipeline, tmp_path / "replay")
    camera = {"source": "folder", "path": str(tmp_path / "replay"), "fps": 20, "loop": True}
    config = agent_config(tmp_path, mqtt_broker, pipeline, camera)
    with (
        MqttCollector(mqtt_broker.host, mqtt_broker.port, f"inspect/{STATION}/cam0/verdict") as verdicts,
        MqttCollector(mqtt_broker.host, mqtt_broker.port, f"inspect/{STATION}/cam0/status") as status,
    ):
        agent = start_agent(config)
        verdicts.wait_for(10, WAIT_S)
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err
        frames = int(out.split("cam0: ")[1].split(" frames")[0])
        # Delivered = acknowledged to the agent; the broker forwards to subscribers on its own schedule.
        assert len(verdicts.wait_for(frames, WAIT_S)) == frames
        assert [m[1] for m in status.wait_for(2, WAIT_S)] == [b"online", b"offline"]
    assert "SIGTERM received" in err
