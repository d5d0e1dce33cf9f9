"""Two cameras at one station, as configs/two-cameras.yaml runs them: two `edge-agent run` processes on viky devices
0 and 1, each with its own model, through one real mosquitto."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import paho.mqtt.publish
import pytest
import yaml
from pipeline import Pipeline
from test_pipeline import AGENT, STATION

from converters.bake import BakeOptions, bake
from converters.guard import Guard
from demo.broker import Broker, free_ports
from demo.collector import Message, MqttCollector
from edge_agent.bundle import load_edge_bundle
from edge_agent.metrics import MQTT_CONNECTED
from tests.edge_agent.test_agent_metrics import parse
from tests.edge_agent.waiting import WAIT_S

CAMERAS = ("gige0", "gige1")  # viky devices 0 and 1, in this order: gige1 serves metrics on port + 1
VERDICTS_EACH = 5
STATS_INTERVAL_S = 0.2
TOPICS = f"inspect/{STATION}/#"


def two_camera_config(tmp_path: Path, broker: Broker, bundles: dict[str, Path]) -> Path:
    config = {
        "version": 1,
        "station": STATION,
        # No top-level model: each camera has its own.
        "cameras": {
            name: {"source": "genicam", "cti": "viky", "device": device, "model": {"path": str(bundles[name])}}
            for device, name in enumerate(CAMERAS)
        },
        "mqtt": {"host": broker.host, "port": broker.port, "store_dir": str(tmp_path / "outbox")},
        "archive": {"enabled": False},
        "metrics": {"port": free_ports(len(CAMERAS)), "stats_interval_s": STATS_INTERVAL_S},
    }
    path = tmp_path / "two-cameras.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def agent(camera: str, config: Path, logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`edge-agent run --camera CAMERA`, its log in a file (nothing reads a pipe while it runs); killed if the test
    left it running."""
    with (logs / f"{camera}.log").open("wb") as log:
        process = subprocess.Popen([*AGENT, "run", "--camera", camera, "--config", str(config)], stderr=log, stdout=log)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def on(messages: list[Message], camera: str, kind: str) -> list[dict[str, object]]:
    return [json.loads(payload) for topic, payload, _ in messages if topic == f"inspect/{STATION}/{camera}/{kind}"]


def statuses(broker: Broker) -> dict[str, tuple[bytes, bool]]:
    """What a new subscriber is handed for each camera's status topic: (payload, retained)."""
    with MqttCollector(broker.host, broker.port, f"inspect/{STATION}/+/status") as status:
        got = status.wait_for(len(CAMERAS), WAIT_S)
    return {topic.split("/")[2]: (payload, retained) for topic, payload, retained in got}


def mqtt_connected(port: int) -> dict[str, float]:
    """The agent's own /metrics page: edge_agent_mqtt_connected by camera label."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        samples = parse(response.read().decode())
    return {dict(labels)["camera"]: value for (name, labels), value in samples.items() if name == MQTT_CONNECTED}


def reload_to(broker: Broker, bundle: Path) -> None:
    body = json.dumps({"path": str(bundle)})
    paho.mqtt.publish.single(f"inspect/{STATION}/cmd/reload", body, qos=1, hostname=broker.host, port=broker.port)


@pytest.mark.slow
def test_two_cameras_each_with_its_own_model_status_stats_and_last_will(
    tmp_path: Path, mqtt_broker: Broker, pipeline: Pipeline
) -> None:
    # gige1's own bundle: an fp16 bake, a version of its own, so each verdict says which camera's model judged it.
    # The tiny set is too small for the guard to judge (tests/converters covers it).
    gige1_bundle = tmp_path / "gige1" / "edge-fp16"
    bake(BakeOptions(bundle=pipeline.model, out=gige1_bundle, precision="fp16", guard=Guard(min_images=0)))
    bundles = {"gige0": pipeline.edge, "gige1": gige1_bundle}
    versions = {name: load_edge_bundle(path, None).manifest.version for name, path in bundles.items()}
    assert versions["gige0"] != versions["gige1"]
    config = two_camera_config(tmp_path, mqtt_broker, bundles)
    metrics_port = yaml.safe_load(config.read_text())["metrics"]["port"]

    with MqttCollector(mqtt_broker.host, mqtt_broker.port, TOPICS) as seen, ExitStack() as stack:
        agents = {name: stack.enter_context(agent(name, config, tmp_path)) for name in CAMERAS}

        def flowing(got: list[Message]) -> bool:
            return all(len(on(got, name, "verdict")) >= VERDICTS_EACH and on(got, name, "stats") for name in CAMERAS)

        got = seen.wait_until(flowing, WAIT_S)
        for name in CAMERAS:
            verdicts, stats = on(got, name, "verdict"), on(got, name, "stats")
            assert len(verdicts) >= VERDICTS_EACH, (name, (tmp_path / f"{name}.log").read_text()[-3000:])
            assert {v["camera"] for v in verdicts} == {name}
            assert {v["model"] for v in verdicts} == {versions[name]}
            assert stats and {s["camera"] for s in stats} == {name}
        # Two devices, not one twice: each camera's verdicts name one device, and not the same one.
        sources = {name: {v["source"] for v in on(got, name, "verdict")} for name in CAMERAS}
        assert all(len(s) == 1 for s in sources.values()) and sources["gige0"] != sources["gige1"], sources
        assert statuses(mqtt_broker) == {name: (b"online", True) for name in CAMERAS}
        # Camera N serves metrics on port + N, for its own camera only.
        assert [mqtt_connected(metrics_port + n) for n in range(len(CAMERAS))] == [{n: 1.0} for n in CAMERAS]

        # Reloads use each camera's own model section: its reload_dirs (by default its bundle's folder) and path.
        reload_to(mqtt_broker, gige1_bundle)
        agents["gige0"].send_signal(signal.SIGHUP)
        # gige0: the command's refusal and the signal's reload, in either order; gige1: the command's reload.
        events = seen.wait_until(lambda got: len(on(got, "gige0", "event")) >= 2 and on(got, "gige1", "event"), WAIT_S)
        assert [(e["event"], e["path"]) for e in on(events, "gige1", "event")] == [("reloaded", str(gige1_bundle))]
        refused, reloaded = sorted(on(events, "gige0", "event"), key=lambda e: str(e["event"]))
        assert (refused["event"], refused["path"]) == ("reload_failed", str(gige1_bundle))
        assert "outside model.reload_dirs" in str(refused["reason"])
        assert (reloaded["event"], reloaded["path"]) == ("reloaded", str(pipeline.edge))

        # A crash: the broker publishes gige0's last will; gige1 stays online and keeps judging.
        agents["gige0"].kill()
        agents["gige0"].wait(timeout=WAIT_S)
        got = seen.wait_until(lambda got: (f"inspect/{STATION}/gige0/status", b"offline", False) in got, WAIT_S)
        assert (f"inspect/{STATION}/gige0/status", b"offline", False) in got
        gige1_before = len(on(got, "gige1", "verdict"))
        got = seen.wait_until(lambda got: len(on(got, "gige1", "verdict")) >= gige1_before + VERDICTS_EACH, WAIT_S)
        assert len(on(got, "gige1", "verdict")) >= gige1_before + VERDICTS_EACH
        assert statuses(mqtt_broker) == {"gige0": (b"offline", True), "gige1": (b"online", True)}

        agents["gige1"].send_signal(signal.SIGTERM)
        assert agents["gige1"].wait(timeout=WAIT_S * 2) == 0, (tmp_path / "gige1.log").read_text()[-3000:]
