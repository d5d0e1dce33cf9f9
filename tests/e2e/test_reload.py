"""Hot reload and commands on the real agent process, through a real mosquitto broker."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import urllib.request
from pathlib import Path

import paho.mqtt.publish
import yaml
from pipeline import Pipeline
from test_pipeline import STATION, agent_config, flat_replay, start_agent

from converters.bake import BakeOptions, bake
from converters.guard import Guard
from demo.broker import Broker
from demo.collector import MqttCollector
from edge_agent.metrics import ARCHIVE_DROPPED, ARCHIVE_FAILED, OUTBOX_DROPPED, REJECTS_EXPIRED
from tests.edge_agent.test_agent_metrics import parse

WAIT_S = 60.0


def command(broker: Broker, verb: str, body: dict[str, str] | None = None) -> None:
    payload = json.dumps(body) if body else ""
    paho.mqtt.publish.single(f"inspect/{STATION}/cmd/{verb}", payload, qos=1, hostname=broker.host, port=broker.port)


def _losses_are_on_the_metrics_page(port: int) -> None:
    """The real agent exports every way it can lose something, at 0 on a healthy run (cam0 serves on `port`)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        samples = parse(response.read().decode())
    for name in (OUTBOX_DROPPED, REJECTS_EXPIRED, ARCHIVE_DROPPED, ARCHIVE_FAILED):
        assert samples[name, (("camera", "cam0"),)] == 0, name


def test_reload_by_mqtt_and_sighup_swaps_without_losing_a_frame_and_refuses_a_corrupt_bundle(
    tmp_path: Path, mqtt_broker: Broker, pipeline: Pipeline
) -> None:
    second = tmp_path / "edge-fp16"
    # A second version to swap to; the tiny set is too small for the guard to judge (tests/converters covers it).
    version = bake(BakeOptions(bundle=pipeline.model, out=second, precision="fp16", guard=Guard(min_images=0))).version
    corrupt = tmp_path / "edge-corrupt"
    shutil.copytree(pipeline.edge, corrupt)
    with (corrupt / "model.bin").open("r+b") as f:
        f.seek(100)
        f.write(b"\xff\xfe\xfd\xfc")
    flat_replay(pipeline, tmp_path / "replay")
    camera = {"source": "folder", "path": str(tmp_path / "replay"), "fps": 20, "loop": True, "queue_size": 64}
    # reload_dirs: where the two bundles to swap to are.
    config = agent_config(tmp_path, mqtt_broker, pipeline, camera, {"model": {"reload_dirs": [str(tmp_path)]}})
    settings = yaml.safe_load(config.read_text())
    topic = f"inspect/{STATION}/cam0"
    with (
        MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{topic}/verdict") as verdicts,
        MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{topic}/event") as events,
    ):
        agent = start_agent(config)
        try:
            verdicts.wait_for(5, WAIT_S)
            _losses_are_on_the_metrics_page(settings["metrics"]["port"])
            command(mqtt_broker, "reload", {"path": str(corrupt)})
            command(mqtt_broker, "reload", {"path": str(second)})
            events.wait_for(2, WAIT_S)
            # A swap takes effect at the next frame: let one frame run on the new model before swapping back.
            verdicts.wait_until(lambda got: any(json.loads(m[1])["model"] == version for m in got), WAIT_S)
            agent.send_signal(signal.SIGHUP)  # back to the configured bundle
            events.wait_for(3, WAIT_S)
            command(mqtt_broker, "explode")
            events.wait_for(4, WAIT_S)
            count = len(verdicts.messages)
            verdicts.wait_for(count + 5, WAIT_S)
        finally:
            agent.send_signal(signal.SIGTERM)
            out, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err
        frames = int(out.split("cam0: ")[1].split(" frames")[0])
        payloads = [json.loads(m[1]) for m in verdicts.wait_for(frames, WAIT_S)]
        happened = [json.loads(m[1]) for m in events.messages]
    assert [e["event"] for e in happened] == ["reload_failed", "reloaded", "reloaded", "command_refused"]
    assert "sha256" in happened[0]["reason"] and happened[0]["model"] != version
    assert happened[1]["model"] == version
    assert "unknown command 'explode'" in happened[3]["reason"]
    assert [p["frame_id"] for p in payloads] == list(range(1, frames + 1))
    models = [p["model"] for p in payloads]
    original = models[0]
    # old -> new -> old, each swap between two frames
    changes = [(a, b) for a, b in itertools.pairwise(models) if a != b]
    assert changes == [(original, version), (version, original)]
    assert " 0 dropped" in out
    assert "SIGHUP received" in err
