"""The Modbus TCP output against pymodbus's own client, at the addresses the README's table gives a PLC."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.pdu import ExceptionResponse

from demo.broker import free_port
from edge_agent.config import ModbusConfig
from edge_agent.plc import modbus_map as mm
from edge_agent.plc.base import PlcError
from edge_agent.plc.board import ResultBoard
from edge_agent.plc.modbus import ModbusOutput
from edge_agent.verdict import ERROR, OK
from tests.edge_agent.plc.verdicts import verdict

UNIT = 3
HOST = "127.0.0.1"
ILLEGAL_ADDRESS = 2
GATEWAY_NO_RESPONSE = 11
F32 = ModbusTcpClient.DATATYPE.FLOAT32
U32 = ModbusTcpClient.DATATYPE.UINT32


class Ready:
    value = True

    def __call__(self) -> bool:
        return self.value


@pytest.fixture
def ready() -> Ready:
    return Ready()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def output(ready: Ready, port: int) -> Iterator[ModbusOutput]:
    out = ModbusOutput(ModbusConfig(enabled=True, host=HOST, port=port, unit_id=UNIT), ResultBoard(ready, 60.0))
    out.start()
    yield out
    out.stop()


@pytest.fixture
def client(output: ModbusOutput, port: int) -> Iterator[ModbusTcpClient]:
    c = ModbusTcpClient(HOST, port=port, timeout=10)
    assert c.connect()
    yield c
    c.close()


def inputs(client: ModbusTcpClient) -> list[int]:
    response = client.read_input_registers(0, count=mm.INPUT_COUNT, device_id=UNIT)
    assert not response.isError(), response
    return list(response.registers)


def bits(client: ModbusTcpClient) -> list[bool]:
    response = client.read_discrete_inputs(0, count=mm.DISCRETE_COUNT, device_id=UNIT)
    assert not response.isError(), response
    return list(response.bits[: mm.DISCRETE_COUNT])


def u32(regs: list[int], address: int) -> int:
    # The documented word order, decoded by the client library: high word first.
    value = ModbusTcpClient.convert_from_registers(regs[address : address + 2], U32, word_order="big")
    assert isinstance(value, int)
    return value


def f32(regs: list[int], address: int) -> float:
    value = ModbusTcpClient.convert_from_registers(regs[address : address + 2], F32, word_order="big")
    assert isinstance(value, float)
    return value


def test_the_last_result_at_its_documented_addresses(output: ModbusOutput, client: ModbusTcpClient) -> None:
    assert inputs(client)[mm.VERDICT_CODE] == 0  # nothing yet
    output.publish(verdict(frame_id=70_000, camera_frame_id=123_456, score=0.63))
    regs = inputs(client)
    assert regs[mm.VERDICT_CODE] == 2  # reject
    assert f32(regs, mm.SCORE) == pytest.approx(0.63, rel=1e-6)
    assert f32(regs, mm.THRESHOLD) == pytest.approx(0.42, rel=1e-6)
    assert regs[mm.SCORE_PERMILLE] == 1500  # 0.63 / 0.42 x 1000
    assert u32(regs, mm.FRAME_ID) == 70_000  # above 16 bits: both words used
    assert u32(regs, mm.CAMERA_FRAME_ID) == 123_456
    assert (u32(regs, mm.CAPTURED_AT_S), regs[mm.CAPTURED_AT_MS]) == (1767268800, 125)
    assert (u32(regs, mm.INSPECTED), u32(regs, mm.REJECTS), u32(regs, mm.ERRORS)) == (1, 1, 0)
    flags = bits(client)
    assert flags[mm.TRIGGER_READY] and flags[mm.RESULT_READY] and flags[mm.REJECT_PULSE] and flags[mm.REJECT]
    assert flags[mm.SCORE_VALID] and flags[mm.CAMERA_FRAME_ID_VALID] and not flags[mm.LATE]
    assert regs[mm.STATUS] == sum(1 << i for i, bit in enumerate(flags) if bit)


def test_an_error_has_no_score_and_a_camera_without_its_own_count_says_so(
    output: ModbusOutput, client: ModbusTcpClient
) -> None:
    output.publish(verdict(kind=ERROR, score=None, camera_frame_id=None, late=True))
    regs, flags = inputs(client), bits(client)
    assert regs[mm.VERDICT_CODE] == 3 and u32(regs, mm.ERRORS) == 1
    assert not flags[mm.SCORE_VALID] and not flags[mm.CAMERA_FRAME_ID_VALID] and flags[mm.LATE]
    assert (regs[mm.SCORE], regs[mm.SCORE + 1], regs[mm.SCORE_PERMILLE]) == (0, 0, 0)


def test_writing_the_ack_coil_clears_result_ready_and_reads_back_0(
    output: ModbusOutput, client: ModbusTcpClient
) -> None:
    output.publish(verdict())
    assert bits(client)[mm.RESULT_READY]
    response = client.write_coil(mm.ACK_ADDRESS, True, device_id=UNIT)
    assert not response.isError() and response.bits[0] is True  # the echo a PLC may check
    assert not bits(client)[mm.RESULT_READY]
    assert client.read_coils(mm.ACK_ADDRESS, count=1, device_id=UNIT).bits[0] is False
    assert inputs(client)[mm.VERDICT_CODE] == 2  # the fields stay


def test_the_ack_holding_register_does_the_same(output: ModbusOutput, client: ModbusTcpClient) -> None:
    output.publish(verdict())
    assert not client.write_register(mm.ACK_ADDRESS, 0, device_id=UNIT).isError()
    assert bits(client)[mm.RESULT_READY]  # 0 is no ack
    assert not client.write_register(mm.ACK_ADDRESS, 1, device_id=UNIT).isError()
    assert not bits(client)[mm.RESULT_READY]
    assert client.read_holding_registers(mm.ACK_ADDRESS, count=1, device_id=UNIT).registers == [0]


def test_results_the_plc_did_not_ack_are_counted_and_the_newest_is_shown(
    output: ModbusOutput, client: ModbusTcpClient
) -> None:
    output.publish(verdict(frame_id=1))
    output.publish(verdict(frame_id=2, kind=OK, score=0.1))
    regs = inputs(client)
    assert (u32(regs, mm.FRAME_ID), regs[mm.VERDICT_CODE], u32(regs, mm.RESULTS_UNACKED)) == (2, 1, 1)
    client.write_coil(mm.ACK_ADDRESS, True, device_id=UNIT)
    output.publish(verdict(frame_id=3))
    assert u32(inputs(client), mm.RESULTS_UNACKED) == 1


def test_trigger_ready_follows_the_loop(ready: Ready, client: ModbusTcpClient) -> None:
    assert bits(client)[mm.TRIGGER_READY]
    ready.value = False
    assert not bits(client)[mm.TRIGGER_READY] and inputs(client)[mm.STATUS] & 1 == 0


def test_addresses_outside_the_map_and_other_units_are_refused(client: ModbusTcpClient) -> None:
    refused = [
        client.read_input_registers(mm.INPUT_COUNT - 1, count=2, device_id=UNIT),
        client.write_coil(mm.ACK_ADDRESS + 1, True, device_id=UNIT),
        client.write_register(mm.ACK_ADDRESS + 1, 1, device_id=UNIT),
    ]
    assert [r.exception_code for r in refused if isinstance(r, ExceptionResponse)] == [ILLEGAL_ADDRESS] * 3
    other = client.read_input_registers(0, count=2, device_id=UNIT + 1)
    assert isinstance(other, ExceptionResponse) and other.exception_code == GATEWAY_NO_RESPONSE


def test_a_port_in_use_is_one_line_naming_the_key() -> None:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        port = sock.getsockname()[1]
        out = ModbusOutput(ModbusConfig(enabled=True, host=HOST, port=port), ResultBoard(lambda: True, 1.0))
        with pytest.raises(PlcError) as raised:
            out.start()
    message = str(raised.value)
    assert "\n" not in message
    assert f"Modbus TCP server cannot listen on {HOST}:{port}: the port is already in use" in message
    assert "plc.modbus.port" in message
