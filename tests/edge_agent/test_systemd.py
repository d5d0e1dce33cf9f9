from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from pipeline import TEST_SIZE, Pipeline

from demo.broker import Broker
from edge_agent.systemd import SystemdNotifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for systemd's notify socket."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield path, sock


def received(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    messages = []
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        return messages


def test_ready_then_watchdog_at_most_twice_per_interval(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    now = [0.0]
    notifier = SystemdNotifier(path, watchdog_s=10.0, clock=lambda: now[0])
    notifier.ready("inspecting")
    for t in (1.0, 2.0, 4.9, 5.0, 6.0, 10.1):
        now[0] = t
        notifier.feed()
    notifier.stopping()
    assert received(sock) == ["READY=1\nSTATUS=inspecting", "WATCHDOG=1", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1"]


def test_without_systemd_nothing_is_sent_and_nothing_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier.from_environment()
    assert not notifier.enabled
    notifier.ready("x")
    notifier.feed()


def test_agent_says_ready_feeds_the_watchdog_and_says_stopping(
    listener: tuple[str, socket.socket], tmp_path: Path, mqtt_broker: Broker, pipeline: Pipeline
) -> None:
    path, sock = listener
    replay = tmp_path / "replay"
    replay.mkdir()
    for i in range(5):
        cv2.imwrite(str(replay / f"{i}.png"), np.full((TEST_SIZE, TEST_SIZE, 3), 120, np.uint8))
    config = {
        "version": 1,
        "station": "s1",
        "cameras": {"cam0": {"source": "folder", "path": str(replay), "fps": 20}},
        "model": {"path": str(pipeline.edge), "cache_dir": str(tmp_path / "cache")},
        "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port, "store_dir": str(tmp_path / "outbox")},
        "archive": {"enabled": False},
        "metrics": {"enabled": False},
    }
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}  # 0.1 s: a feed every 50 ms
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "--camera", "cam0", "--config", str(tmp_path / "agent.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    messages = received(sock)
    assert messages[0].startswith("READY=1\nSTATUS=inspecting camera cam0")
    assert "WATCHDOG=1" in messages[1:-1]
    assert messages[-1] == "STOPPING=1"


UNIT = Path(__file__).parents[2] / "systemd" / "edge-agent.service"
TEMPLATE = UNIT.with_name("edge-agent@.service")
INSTANCE = "edge-agent@gige0.service"  # systemd reads it from the template beside it
INSTALLED_AGENT = "/opt/edge-agent/venv/bin/edge-agent"
# The template's only differences from the plain unit: the camera comes from the instance name, not agent.env.
# Every other line must match, so a hardening change to one unit and not the other fails here.
TEMPLATE_CHANGES = {
    "Description=Edge inspection agent (camera -> model -> MQTT verdicts)": (
        "Description=Edge inspection agent, camera %i (camera -> model -> MQTT verdicts)"
    ),
    "EnvironmentFile=/etc/edge-agent/agent.env": None,
    f"ExecStart={INSTALLED_AGENT} run --config /etc/edge-agent/agent.yaml --camera ${{EDGE_AGENT_CAMERA}}": (
        f"ExecStart={INSTALLED_AGENT} run --config /etc/edge-agent/agent.yaml --camera %i"
    ),
}


NEEDS_SYSTEMD = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed here")
DROP_INS = UNIT.parent / "drop-ins"
# Issue 21's goal for `systemd-analyze security`: 0 is fully sandboxed, 10 fully exposed.
MAX_EXPOSURE = 3.0
# A unit file, and the unit systemd-analyze is asked about: the template only as an instance of it.
UNITS = [pytest.param(UNIT, UNIT.name, id="plain"), pytest.param(TEMPLATE, INSTANCE, id="template")]


def _directives(unit: Path) -> list[str]:
    return [line for line in unit.read_text().splitlines() if line and not line.startswith("#")]


def test_the_template_is_the_plain_unit_with_the_camera_from_the_instance_name() -> None:
    plain = _directives(UNIT)
    assert set(TEMPLATE_CHANGES) <= set(plain), "the plain unit changed a line the template replaces: update both"
    expected = [TEMPLATE_CHANGES.get(line, line) for line in plain]
    assert _directives(TEMPLATE) == [line for line in expected if line is not None]


def _unit_here(folder: Path, unit: Path = UNIT) -> Path:
    """The unit with the agent's install path swapped for one that exists here: verify checks that ExecStart's
    program is executable."""
    copy = folder / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED_AGENT, sys.executable))
    return copy


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )


@NEEDS_SYSTEMD
@pytest.mark.parametrize(("unit", "name"), UNITS)
def test_systemd_accepts_the_unit(tmp_path: Path, unit: Path, name: str) -> None:
    """`systemd-analyze verify` checks every directive (in the template, with the camera filled in)."""
    _unit_here(tmp_path, unit)
    result = _verify(tmp_path / name)
    assert result.returncode == 0, result.stderr
    assert unit.name not in result.stderr and name not in result.stderr, result.stderr  # warnings about the unit


@NEEDS_SYSTEMD
@pytest.mark.parametrize(("unit", "name"), UNITS)
def test_systemd_accepts_the_device_drop_ins(tmp_path: Path, unit: Path, name: str) -> None:
    """The iGPU and NVIDIA drop-ins, installed beside the unit as systemd reads them (for the template, in
    `edge-agent@.service.d/`, which every instance reads); an unknown key would only be warned about, naming the
    file."""
    _unit_here(tmp_path, unit)
    drop_in_dir = tmp_path / f"{unit.name}.d"
    drop_in_dir.mkdir()
    drop_ins = sorted(DROP_INS.glob("*.conf"))
    assert [p.name for p in drop_ins] == ["igpu.conf", "nvidia.conf"]
    for drop_in in drop_ins:
        shutil.copy(drop_in, drop_in_dir)
    result = _verify(tmp_path / name)
    assert result.returncode == 0, result.stderr
    assert not any(p.name in result.stderr for p in drop_ins), result.stderr


def _exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    overall = next(line for line in result.stdout.splitlines() if "Overall exposure level" in line)
    return float(overall.split(":")[1].split()[0])


@NEEDS_SYSTEMD
def test_the_unit_is_sandboxed_to_the_exposure_goal(tmp_path: Path) -> None:
    assert _exposure(_unit_here(tmp_path)) <= MAX_EXPOSURE


@NEEDS_SYSTEMD
def test_every_camera_instance_is_sandboxed_as_the_plain_unit(tmp_path: Path) -> None:
    plain = _exposure(_unit_here(tmp_path))
    _unit_here(tmp_path, TEMPLATE)
    assert _exposure(tmp_path / INSTANCE) == plain
