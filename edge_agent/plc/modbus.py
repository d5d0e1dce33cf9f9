"""A Modbus TCP server (pymodbus) with one camera's board, at the addresses of `modbus_map`.

Nothing is copied into registers when a verdict arrives: every request is answered from one `BoardState` taken
as it comes in, so the registers of one read always belong to the same result, and `publish` only records.
"""

from __future__ import annotations

import logging

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simutils import SimUtils

from edge_agent.config import ModbusConfig
from edge_agent.log_throttle import LogThrottle
from edge_agent.plc import modbus_map
from edge_agent.plc.base import PlcError, check_listen
from edge_agent.plc.board import ResultBoard
from edge_agent.plc.loop_thread import LoopThread
from edge_agent.verdict import Verdict

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
# A PLC polling the wrong unit id asks many times a second: one warning, then one a minute.
WRONG_UNIT_LOG_INTERVAL_S = 60.0

READ_COILS, READ_DISCRETE_INPUTS, READ_HOLDING, READ_INPUTS = 1, 2, 3, 4
BITS_PER_REGISTER = 16
ANY_OTHER_UNIT = 0  # pymodbus: the device that answers every unit id no other device has


class ModbusOutput:
    """The `PlcOutput` for Modbus TCP. `config.port` is this camera's port (the base port plus its index)."""

    def __init__(self, config: ModbusConfig, board: ResultBoard) -> None:
        self._config = config
        self._board = board
        self._thread: LoopThread | None = None
        self._server: ModbusTcpServer | None = None
        self._wrong_unit_log = LogThrottle(WRONG_UNIT_LOG_INTERVAL_S)  # the server thread's only

    @property
    def name(self) -> str:
        return f"Modbus TCP {self._config.host}:{self._config.port} unit {self._config.unit_id}"

    def start(self) -> None:
        self._thread = LoopThread("plc-modbus")
        try:
            self._server = self._thread.run(self._listen(), START_TIMEOUT_S)
        except (PlcError, TimeoutError) as exc:
            self._thread.close(STOP_TIMEOUT_S)
            self._thread = None
            raise PlcError(str(exc)) from None

    def publish(self, verdict: Verdict) -> None:
        self._board.record(verdict)

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._server is not None:
            try:
                self._thread.run(self._server.shutdown(), STOP_TIMEOUT_S)  # type: ignore[no-untyped-call]
            except TimeoutError as exc:
                log.warning("%s: %s stopping", self.name, exc)
        self._thread.close(STOP_TIMEOUT_S)
        self._thread = None

    async def _listen(self) -> ModbusTcpServer:
        host, port = self._config.host, self._config.port
        device = SimDevice(
            id=self._config.unit_id,
            # Coils, discrete inputs, holding registers, input registers: pymodbus stores bits 16 to a register.
            simdata=(
                [SimData(0, datatype=DataType.BITS)],
                [SimData(0, datatype=DataType.BITS)],
                [SimData(0, count=modbus_map.HOLDING_COUNT, datatype=DataType.REGISTERS)],
                [SimData(0, count=modbus_map.INPUT_COUNT, datatype=DataType.REGISTERS)],
            ),
            action=self._on_request,
        )
        # Answers the unit ids that are not ours, at the addresses of ours, so a PLC set to the wrong one gets an
        # exception response and one log line saying what to change, not a traceback per request.
        other_units = SimDevice(
            id=ANY_OTHER_UNIT,
            simdata=[SimData(0, count=modbus_map.INPUT_COUNT, datatype=DataType.REGISTERS)],
            action=self._on_wrong_unit,
        )
        await check_listen("Modbus TCP server", host, port, "plc.modbus")
        server = ModbusTcpServer([device, other_units], address=(host, port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError:  # taken in the moment since the check; pymodbus logged why
            raise PlcError(f"Modbus TCP server could not listen on {host}:{port} (plc.modbus); see the log") from None
        log.info("PLC output: %s", self.name)
        return server

    async def _on_request(
        self,
        function_code: int,
        _start_address: int,
        address: int,
        _count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this before it answers from `registers` (its own bounds checked): refresh them from the
        board, or take the ack."""
        if function_code == READ_INPUTS:
            registers[: modbus_map.INPUT_COUNT] = modbus_map.input_registers(self._board.state())
        elif function_code == READ_DISCRETE_INPUTS:
            bits = modbus_map.bits(self._board.state())
            bits += [False] * (-len(bits) % BITS_PER_REGISTER)
            packed = SimUtils.bitsToRegisters(bits)
            registers[: len(packed)] = packed
        elif function_code in (READ_COILS, READ_HOLDING):
            registers[0] = 0  # the ack reads 0: a 1 written was taken when it came
        elif values is not None:
            # A write: the ack, as a coil or a holding register. pymodbus keeps 16 coils in its one register, so
            # the other 15 are refused here. The value is stored as written, because the response echoes it.
            if address != modbus_map.ACK_ADDRESS or len(values) != 1:
                return ExcCodes.ILLEGAL_ADDRESS
            if values[0]:
                self._board.ack()
        return None

    async def _on_wrong_unit(
        self,
        _function_code: int,
        _start_address: int,
        _address: int,
        _count: int,
        _registers: list[int],
        _values: list[int] | list[bool] | None,
    ) -> ExcCodes:
        if self._wrong_unit_log.admit("unit") is not None:
            log.warning(
                "%s: a request for another unit id was refused; set the PLC's unit id to %d (plc.modbus.unit_id)",
                self.name,
                self._config.unit_id,
            )
        return ExcCodes.GATEWAY_NO_RESPONSE
