"""PLC-native outputs beside MQTT: an OPC UA and a Modbus TCP server per camera (behind `base.PlcOutput`);
`make_plc_output` builds what a config enables."""

from __future__ import annotations

from collections.abc import Callable

from edge_agent.config import AgentConfig
from edge_agent.plc.base import PlcError, PlcOutput
from edge_agent.plc.board import ResultBoard
from edge_agent.plc.fanout import PlcFanout

MAX_PORT = 65535


def make_plc_output(config: AgentConfig, camera: str, ready: Callable[[], bool]) -> PlcFanout | None:
    """The outputs `config.plc` enables for `camera`, not started; None when it enables none. Each serves on its
    base port plus the camera's index, as the metrics do, and keeps its own board (its own handshake). `ready` is
    read only once they are started."""
    plc = config.plc
    index = config.camera_index(camera)
    pulse_s = plc.reject_pulse_ms / 1000
    outputs: list[PlcOutput] = []
    # Imported here, so an agent with no PLC output never loads asyncua or pymodbus.
    if plc.opcua.enabled:
        from edge_agent.plc.opcua import OpcUaOutput

        opcua = plc.opcua.model_copy(update={"port": _port(plc.opcua.port, index, "plc.opcua.port")})
        outputs.append(OpcUaOutput(camera, opcua, ResultBoard(ready, pulse_s)))
    if plc.modbus.enabled:
        from edge_agent.plc.modbus import ModbusOutput

        modbus = plc.modbus.model_copy(update={"port": _port(plc.modbus.port, index, "plc.modbus.port")})
        outputs.append(ModbusOutput(modbus, ResultBoard(ready, pulse_s)))
    return PlcFanout(outputs) if outputs else None


def _port(base: int, index: int, key: str) -> int:
    port = base + index
    if port > MAX_PORT:
        raise PlcError(f"{key} {base} plus camera index {index} is {port}, above {MAX_PORT}; lower {key}")
    return port
