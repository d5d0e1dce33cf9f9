"""Drift watch on the real agent process: a bundle baked with its score reference, a replay of defects only (scores
far above every good part's), a real mosquitto. The alarm comes as a score_drift event, the gauge and the score
histogram are on /metrics, the summary is in the stats."""

from __future__ import annotations

import json
import random
import shutil
import signal
import urllib.request
from pathlib import Path

import yaml
from pipeline import Pipeline
from test_pipeline import STATION, agent_config, start_agent

from demo.broker import Broker
from demo.collector import MqttCollector
from edge_agent.bundle import load_edge_bundle
from edge_agent.metrics import SCORE, SCORE_DRIFT, SCORE_DRIFT_STATISTIC
from tests.edge_agent.test_agent_metrics import parse
from tests.edge_agent.waiting import WAIT_S

# Each defect image several times under shuffled names: consecutive frames are then not the same kind of defect,
# whose similar scores would shrink the window's effective size.
COPIES = 3
DRIFT = {"window": 60, "check_every": 20, "breaches": 2}


def defects_replay(pipeline: Pipeline, folder: Path) -> None:
    folder.mkdir()
    images = [p for kind in (pipeline.data / "test").iterdir() if kind.name != "good" for p in kind.iterdir()]
    copies = [image for image in images for _ in range(COPIES)]
    random.Random(0).shuffle(copies)
    for i, image in enumerate(copies):
        shutil.copy(image, folder / f"{i:03d}{image.suffix}")


def test_a_replay_of_defects_raises_the_drift_alarm_on_mqtt_metrics_and_stats(
    tmp_path: Path, mqtt_broker: Broker, pipeline: Pipeline
) -> None:
    defects_replay(pipeline, tmp_path / "replay")
    camera = {"source": "folder", "path": str(tmp_path / "replay"), "fps": 50, "loop": True}
    overrides = {"drift": DRIFT, "metrics": {"stats_interval_s": 0.5}}
    config = agent_config(tmp_path, mqtt_broker, pipeline, camera, overrides)
    settings = yaml.safe_load(config.read_text())
    manifest = load_edge_bundle(pipeline.edge).manifest
    assert manifest.score_reference is not None
    topic = f"inspect/{STATION}/cam0"
    with (
        MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{topic}/event") as events,
        MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{topic}/stats") as stats,
    ):
        agent = start_agent(config)
        try:
            [first] = events.wait_for(1, WAIT_S)
            alarmed = stats.wait_until(
                lambda got: any(json.loads(m[1])["drift"]["state"] == "alarm" for m in got), WAIT_S
            )
            with urllib.request.urlopen(f"http://127.0.0.1:{settings['metrics']['port']}/metrics", timeout=10) as page:
                samples = parse(page.read().decode())
        finally:
            agent.send_signal(signal.SIGTERM)
            _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    event = json.loads(first[1])
    assert (event["event"], event["state"], event["reason"], event["model"]) == (
        "score_drift",
        "alarm",
        "drifted",
        manifest.version,
    )
    assert event["statistic"] > event["critical"] and event["window_median"] > manifest.threshold
    assert event["reference"] == len(manifest.score_reference.scores) and event["window"] == DRIFT["window"]
    summary = next(json.loads(m[1])["drift"] for m in alarmed if json.loads(m[1])["drift"]["state"] == "alarm")
    assert summary["alarms"] == 1 and summary["reference_median"] == event["reference_median"]
    cam = (("camera", "cam0"),)
    assert samples[SCORE_DRIFT, cam] == 1 and samples[SCORE_DRIFT_STATISTIC, cam] > 0
    buckets = {float(dict(labels)["le"]): v for (name, labels), v in samples.items() if name == f"{SCORE}_bucket"}
    assert manifest.threshold in buckets
    # Every frame was a defect, judged reject: none at or below the threshold, all counted.
    assert buckets[manifest.threshold] == 0
    assert buckets[float("inf")] == samples[f"{SCORE}_count", cam] >= DRIFT["window"]
    assert "score drift on camera 'cam0'" in err
