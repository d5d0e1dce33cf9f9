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
INSTALLED_AGENT = "/opt/edge-agent/venv/bin/edge-agent"


NEEDS_SYSTEMD = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed here")
DROP_INS = UNIT.parent / "drop-ins"
# Issue 21's goal for `systemd-analyze security`: 0 is fully sandboxed, 10 fully exposed.
MAX_EXPOSURE = 3.0


def _unit_here(folder: Path) -> Path:
    """The unit with the agent's install path swapped for one that exists here: verify checks that ExecStart's
    program is executable."""
    unit = folder / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_AGENT, sys.executable))
    return unit


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )


@NEEDS_SYSTEMD
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """`systemd-analyze verify` checks every directive."""
    result = _verify(_unit_here(tmp_path))
    assert result.returncode == 0, result.stderr
    assert UNIT.name not in result.stderr, result.stderr  # warnings about the unit itself


@NEEDS_SYSTEMD
def test_systemd_accepts_the_device_drop_ins(tmp_path: Path) -> None:
    """The iGPU and NVIDIA drop-ins, installed beside the unit as systemd reads them; an unknown key would only
    be warned about, naming the file."""
    unit = _unit_here(tmp_path)
    drop_in_dir = tmp_path / f"{UNIT.name}.d"
    drop_in_dir.mkdir()
    drop_ins = sorted(DROP_INS.glob("*.conf"))
    assert [p.name for p in drop_ins] == ["igpu.conf", "nvidia.conf"]
    for drop_in in drop_ins:
        shutil.copy(drop_in, drop_in_dir)
    result = _verify(unit)
    assert result.returncode == 0, result.stderr
    assert not any(p.name in result.stderr for p in drop_ins), result.stderr


@NEEDS_SYSTEMD
def test_the_unit_is_sandboxed_to_the_exposure_goal(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(_unit_here(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    overall = next(line for line in result.stdout.splitlines() if "Overall exposure level" in line)
    exposure = float(overall.split(":")[1].split()[0])
    assert exposure <= MAX_EXPOSURE, overall
