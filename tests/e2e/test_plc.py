"""`edge-agent run` with its PLC outputs on: a PLC reads the verdicts the broker gets, over Modbus TCP and OPC UA."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client
from pipeline import Pipeline
from pymodbus.client import ModbusTcpClient
from test_pipeline import STATION, agent_config, run_agent, start_agent

from demo.broker import HOST, Broker, free_ports
from demo.collector import MqttCollector
from edge_agent.plc import modbus_map as mm
from edge_agent.plc.board import VERDICT_CODES
from edge_agent.plc.opcua import NAMESPACE_URI
from tests.edge_agent.waiting import wait_until

CAMERA = "gige0"  # the viky simulator, second in the config: it serves on the base ports + 1
CAMERA_INDEX = 1
UNIT = 1
WAIT_S = 60.0  # the agent compiles its model before the servers start


def u32(regs: list[int], address: int) -> int:
    return (regs[address] << 16) | regs[address + 1]  # high word first, as the README's table says


def f32(regs: list[int], address: int) -> float:
    value = ModbusTcpClient.convert_from_registers(
        regs[address : address + 2], ModbusTcpClient.DATATYPE.FLOAT32, word_order="big"
    )
    assert isinstance(value, float)
    return value


def checked(agent: subprocess.Popen[str], condition: Callable[[], object]) -> Callable[[], object]:
    """`condition`, failing at once with the agent's stderr if the agent has exited."""

    def check() -> object:
        if agent.poll() is not None:
            raise AssertionError(f"the agent exited with {agent.returncode}: {agent.communicate()[1]}")
        return condition()

    return check


def test_a_plc_reads_the_verdicts_over_modbus_and_opc_ua(
    tmp_path: Path, mqtt_broker: Broker, pipeline: Pipeline
) -> None:
    modbus_base, opcua_base = free_ports(2), free_ports(2)
    plc = {"modbus": {"enabled": True, "port": modbus_base}, "opcua": {"enabled": True, "port": opcua_base}}
    config = agent_config(tmp_path, mqtt_broker, pipeline, {"source": "folder", "path": str(tmp_path)}, {"plc": plc})
    client = ModbusTcpClient(HOST, port=modbus_base + CAMERA_INDEX, timeout=10)

    def read_inputs() -> list[int] | None:
        if not client.connected and not client.connect():
            return None
        response = client.read_input_registers(0, count=mm.INPUT_COUNT, device_id=UNIT)
        assert not response.isError(), response
        return list(response.registers)

    async def read_opcua() -> dict[str, Any]:
        async with Client(f"opc.tcp://{HOST}:{opcua_base + CAMERA_INDEX}", timeout=WAIT_S) as ua_client:
            ns = await ua_client.get_namespace_index(NAMESPACE_URI)
            names = ("trigger_ready", "inspected", "verdict")
            nodes = [ua_client.get_node(f"ns={ns};s={CAMERA}.{name}") for name in names]
            return dict(zip(names, await ua_client.read_values(nodes), strict=True))

    with MqttCollector(mqtt_broker.host, mqtt_broker.port, f"inspect/{STATION}/{CAMERA}/verdict") as verdicts:
        agent = start_agent(config, CAMERA)
        try:
            regs: list[int] = []

            def a_result_waits() -> bool:
                nonlocal regs
                regs = read_inputs() or []
                return bool(regs) and u32(regs, mm.INSPECTED) >= 3 and bool(regs[mm.STATUS] & 1 << mm.RESULT_READY)

            wait_until(checked(agent, a_result_waits), "three results over Modbus", WAIT_S)
            assert regs[mm.STATUS] & 1 << mm.TRIGGER_READY  # the camera delivers and the model runs
            # One read is one result: its fields are those of the MQTT verdict with its frame id.
            frame_id = u32(regs, mm.FRAME_ID)
            got = verdicts.wait_until(lambda ms: any(json.loads(m[1])["frame_id"] == frame_id for m in ms), WAIT_S)
            sent = next(p for p in (json.loads(m[1]) for m in got) if p["frame_id"] == frame_id)
            assert regs[mm.VERDICT_CODE] == VERDICT_CODES[sent["verdict"]]
            # A frame the queue dropped under load is not_inspected, without a score.
            assert bool(regs[mm.STATUS] & 1 << mm.SCORE_VALID) == (sent["score"] is not None)
            if sent["score"] is not None:
                assert f32(regs, mm.SCORE) == pytest.approx(sent["score"], rel=1e-6)  # float32 of the same score
            assert u32(regs, mm.CAMERA_FRAME_ID) == sent["camera_frame_id"]
            assert not client.write_coil(mm.ACK_ADDRESS, True, device_id=UNIT).isError()
            after = read_inputs()
            assert after is not None
            # Acknowledged: result_ready is off, unless a newer result has come since.
            assert not after[mm.STATUS] & 1 << mm.RESULT_READY or u32(after, mm.FRAME_ID) != frame_id
            seen = asyncio.run(read_opcua())
            assert seen["trigger_ready"] is True and seen["inspected"] >= 3 and seen["verdict"] in VERDICT_CODES
        finally:
            client.close()
            agent.send_signal(signal.SIGTERM)
            _, err = agent.communicate(timeout=WAIT_S)
    assert agent.returncode == 0, err
    assert f"PLC output: Modbus TCP 127.0.0.1:{modbus_base + CAMERA_INDEX} unit 1" in err


def test_a_plc_port_in_use_stops_the_agent_with_one_line(tmp_path: Path, pipeline: Pipeline) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(next((pipeline.data / "test" / "good").iterdir()), images)
    broker = Broker(HOST, 1, "mosquitto")  # never reached: the agent stops before it connects
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        plc = {"opcua": {"enabled": True, "port": port}}
        config = agent_config(tmp_path, broker, pipeline, {"source": "folder", "path": str(images)}, {"plc": plc})
        result = run_agent("--camera", "cam0", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: OPC UA server cannot listen on {HOST}:{port}: the port is already in use")
    assert "plc.opcua.port" in last
