"""The loop hands every verdict to its PLC outputs through one fan-out; one broken output stops nothing else."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.cameras.folder import FolderCamera
from edge_agent.config import AgentConfig, FolderCameraConfig
from edge_agent.geometry import Geometry
from edge_agent.loop import InspectionLoop, LoopOptions
from edge_agent.model import ModelInfo
from edge_agent.plc import make_plc_output
from edge_agent.plc.base import PlcError
from edge_agent.plc.fake import FakePlcOutput
from edge_agent.plc.fanout import PlcFanout
from edge_agent.publish.fake import FakePublisher
from edge_agent.runtimes.fake import FakeRuntime
from edge_agent.verdict import NOT_INSPECTED, Verdict
from tests.edge_agent.plc.verdicts import verdict

MODEL = ModelInfo(version="test-1", threshold=100.0, score_scale=100.0, geometry=Geometry(height=16, width=16))


def test_a_failing_output_neither_stops_the_others_nor_floods_the_log(caplog: pytest.LogCaptureFixture) -> None:
    broken, working = FakePlcOutput("broken", fail_publish=True), FakePlcOutput("working")
    fanout = PlcFanout([broken, working])
    fanout.start()
    with caplog.at_level(logging.ERROR, logger="edge_agent.plc.fanout"):
        for frame_id in range(5):
            fanout.publish(verdict(frame_id=frame_id))
    assert [v.frame_id for v in working.verdicts] == [0, 1, 2, 3, 4]
    assert [r.getMessage() for r in caplog.records] == ["PLC output broken failed on frame 0: broken is broken"]
    fanout.stop()
    assert broken.stopped and working.stopped


def test_an_output_that_cannot_start_stops_those_already_started() -> None:
    first, second = FakePlcOutput("first"), FakePlcOutput("second", fail_start=True)
    fanout = PlcFanout([first, second])
    with pytest.raises(PlcError, match="second cannot listen"):
        fanout.start()
    assert first.started and first.stopped


class ReadyAtPublish:
    """A PLC output noting, at each verdict, whether the loop says it is ready for the next part."""

    name = "ready probe"

    def __init__(self) -> None:
        self.loop: InspectionLoop | None = None
        self.verdicts: list[Verdict] = []
        self.ready: list[bool] = []

    def start(self) -> None: ...

    def publish(self, verdict: Verdict) -> None:
        assert self.loop is not None
        self.verdicts.append(verdict)
        self.ready.append(self.loop.ready)

    def stop(self) -> None: ...


def replay(tmp_path: Path, count: int) -> FolderCamera:
    for i in range(count):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((20, 30), 200 * (i % 2), np.uint8))
    camera = FolderCamera("cam0", FolderCameraConfig(source="folder", path=tmp_path))
    camera.open()
    return camera


def test_the_plc_gets_what_the_publisher_gets_and_ready_only_while_inspecting(tmp_path: Path) -> None:
    publisher, probe = FakePublisher(), ReadyAtPublish()
    loop = InspectionLoop(
        replay(tmp_path, 4), FakeRuntime(lambda image: float(image.mean())), publisher, MODEL, LoopOptions(), plc=probe
    )
    probe.loop = loop
    assert not loop.ready
    loop.run(threading.Event())
    assert probe.verdicts == publisher.verdicts and [v.verdict for v in probe.verdicts] == ["ok", "reject"] * 2
    assert probe.ready == [True] * 4
    assert not loop.ready  # the replay is over


def test_parts_not_inspected_reach_the_plc_too_and_paused_is_not_ready(tmp_path: Path) -> None:
    publisher, probe = FakePublisher(), ReadyAtPublish()
    loop = InspectionLoop(
        replay(tmp_path, 3), FakeRuntime(lambda image: 0.0), publisher, MODEL, plc=probe, options=LoopOptions()
    )
    probe.loop = loop
    loop.pause()
    loop.run(threading.Event())
    assert [v.verdict for v in probe.verdicts] == [NOT_INSPECTED] * 3 and probe.verdicts == publisher.verdicts
    assert probe.ready == [False] * 3


def config(**plc: object) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "version": 1,
            "station": "s1",
            "cameras": {name: {"source": "folder", "path": "/data"} for name in ("cam0", "cam1", "cam2")},
            "model": {"path": "/m"},
            "plc": plc,
        }
    )


def test_no_output_unless_enabled() -> None:
    assert make_plc_output(config(), "cam0", lambda: True) is None


def test_each_camera_serves_on_the_base_port_plus_its_index() -> None:
    fanout = make_plc_output(
        config(opcua={"enabled": True, "port": 4840}, modbus={"enabled": True, "port": 5020}), "cam2", lambda: True
    )
    assert fanout is not None
    assert fanout.name == "OPC UA opc.tcp://127.0.0.1:4842, Modbus TCP 127.0.0.1:5022 unit 1"


def test_a_port_past_the_last_is_one_line_naming_the_key() -> None:
    with pytest.raises(PlcError, match=r"plc.modbus.port 65535 plus camera index 1 is 65536, above 65535"):
        make_plc_output(config(modbus={"enabled": True, "port": 65535}), "cam1", lambda: True)
