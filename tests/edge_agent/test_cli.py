"""Bad input to `edge-agent run` is one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipeline import Pipeline

AGENT = [sys.executable, "-m", "edge_agent.cli"]


def config_for(tmp_path: Path, model: Path, **changes: object) -> Path:
    config: dict[str, object] = {
        "version": 1,
        "station": "s1",
        "cameras": {"cam0": {"source": "folder", "path": str(tmp_path)}},
        "model": {"path": str(model)},
        "mqtt": {"port": 1, "store_dir": str(tmp_path / "outbox")},
        "metrics": {"enabled": False},
    }
    config.update(changes)
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def tampered(pipeline: Pipeline, tmp_path: Path) -> Path:
    edge = shutil.copytree(pipeline.edge, tmp_path / "edge")
    with (edge / "model.bin").open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\x42\x42\x42\x42")
    return edge


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown_camera", "unknown camera 'cam7'; this config defines: cam0"),
        ("wrong_field", "unknown field 'mqtt.hots'"),
        ("missing_bundle", "no edge bundle at"),
        ("tampered_bundle", "does not match its sha256"),
        ("missing_config", "does not exist"),
    ],
)
def test_bad_input(tmp_path: Path, pipeline: Pipeline, case: str, message: str) -> None:
    camera = "cam7" if case == "unknown_camera" else "cam0"
    model = {"missing_bundle": tmp_path / "nothing", "tampered_bundle": tampered(pipeline, tmp_path)}.get(
        case, pipeline.edge
    )
    extra = {"mqtt": {"hots": "x"}} if case == "wrong_field" else {}
    config = config_for(tmp_path, model, **extra)
    if case == "missing_config":
        config = tmp_path / "absent.yaml"
    result = subprocess.run(
        [*AGENT, "run", "--camera", camera, "--config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_help_shows_an_example() -> None:
    result = subprocess.run([*AGENT, "run", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "edge-agent run --camera gige0" in result.stdout
