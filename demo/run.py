"""`make demo`: the whole path on an embedded default, with the commands a user would type.

synthetic parts -> trainer fit (PatchCore) -> converter bake (OpenVINO) -> MQTT broker -> edge-agent run on a
replay camera and on the simulated GenICam camera; then what the agent decided, as received over MQTT.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from demo.broker import Broker, run_broker
from demo.collector import MqttCollector

OUT = Path("demo-out")
STATION = "demo"
PREFIX = "inspect"
VIKY_FRAMES = 10
REPLAY_FPS = 10  # a line rate, so frames arrive as from a camera instead of piling up in the queue
BIN = Path(sys.executable).parent


def step(title: str, *command: str) -> None:
    print(f"\n== {title}\n$ {shlex.join(command)}", flush=True)
    subprocess.run([str(BIN / command[0]), *command[1:]], check=True)


def replay_folder(data: Path) -> Path:
    """The test images in one folder, named after their true label, so the printout can be checked by eye."""
    replay = OUT / "replay"
    shutil.rmtree(replay, ignore_errors=True)
    replay.mkdir(parents=True)
    for kind in sorted((data / "test").iterdir()):
        for image in sorted(kind.iterdir()):
            shutil.copy(image, replay / f"{kind.name}_{image.name}")
    return replay


def write_config(broker: Broker, replay: Path, edge: Path) -> Path:
    config = {
        "version": 1,
        "station": STATION,
        "cameras": {
            "replay": {"source": "folder", "path": str(replay.resolve()), "fps": REPLAY_FPS},
            "gige0": {"source": "genicam", "cti": "viky", "device": 0, "trigger": "free-run"},
        },
        "model": {"path": str(edge.resolve()), "runtime": "openvino", "device": "CPU"},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "topic_prefix": PREFIX,
            "store_dir": str((OUT / "outbox").resolve()),
        },
        "reject": {"deadline_ms": 100},
        "archive": {"path": str((OUT / "archive").resolve())},
    }
    path = OUT / "agent.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def print_verdicts(camera: str, payloads: list[dict[str, object]]) -> None:
    print(f"\n== What the agent published on {PREFIX}/{STATION}/{camera}/verdict")
    right = 0
    for v in payloads:
        source = str(v["source"]) if camera == "replay" else f"frame {v['frame_id']}"
        truth = "good" if source.startswith("good") else "defect"
        decided = "good" if v["verdict"] == "ok" else "defect"
        right += truth == decided
        print(f"  {source:18} score {v['score']:8.3f}  threshold {v['threshold']:.3f}  -> {v['verdict']}")
    if payloads and camera == "replay":
        print(f"  {right} of {len(payloads)} decisions match the true label")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    data, model, edge = OUT / "data", OUT / "models" / "demo", OUT / "edge" / "demo"
    step("1. a small synthetic data set of good and defective parts", "trainer", "synth", "--out", str(data))
    step("2. train PatchCore on the good parts", "trainer", "fit", "--data", str(data), "--out", str(model))
    step("3. bake the whole pipeline for OpenVINO", "converter", "bake", str(model), "--out", str(edge))
    replay = replay_folder(data)
    with run_broker() as broker:
        print(f"\n== MQTT broker: started {broker.kind} on {broker.host}:{broker.port} for this demo")
        config = write_config(broker, replay, edge)
        for camera, extra in (("replay", []), ("gige0", ["--max-frames", str(VIKY_FRAMES)])):
            topic = f"{PREFIX}/{STATION}/{camera}/verdict"
            with MqttCollector(broker.host, broker.port, topic) as collector:
                step(
                    f"4. run the edge agent on camera '{camera}'",
                    "edge-agent", "run", "--camera", camera, "--config", str(config), *extra,
                )  # fmt: skip
                payloads = [json.loads(m[1]) for m in collector.messages]
            print_verdicts(camera, payloads)
    print("\nThe simulated GenICam camera shows a ball, not a trained part, so every frame is a reject.")
    print(f"Reject images and heatmap overlays: {(OUT / 'archive').resolve()}/<date>/<camera>/")
    print(f"Agent config used: {config.resolve()}")


if __name__ == "__main__":
    main()
