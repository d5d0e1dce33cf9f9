"""The Modbus register map (README: PLC outputs, Modbus TCP): which address holds what, and how a `BoardState`
becomes register and bit values. Addresses are 0-based protocol addresses.

32-bit values take two registers, the high word first (big-endian words and bytes, "ABCD"), each pair at an even
address; unsigned integers wrap at 2^32.
"""

from __future__ import annotations

import math
import struct

from edge_agent.plc.board import NO_RESULT_CODE, BoardState

# Coils (FC 1, 5, 15) and holding registers (FC 3, 6, 16): the PLC writes 1 to acknowledge the result; the agent
# clears result_ready and the address reads 0 again.
ACK_ADDRESS = 0
HOLDING_COUNT = 1

# Discrete inputs (FC 2), and the same bits, in this order from bit 0, in input register STATUS.
TRIGGER_READY = 0
RESULT_READY = 1
REJECT_PULSE = 2
REJECT = 3
LATE = 4
SCORE_VALID = 5
CAMERA_FRAME_ID_VALID = 6
DISCRETE_COUNT = 7

# Input registers (FC 4).
STATUS = 0
VERDICT_CODE = 1
SCORE = 2  # float32, 2 registers
THRESHOLD = 4  # float32
FRAME_ID = 6  # uint32
CAMERA_FRAME_ID = 8  # uint32
CAPTURED_AT_S = 10  # uint32, Unix seconds (UTC)
CAPTURED_AT_MS = 12  # uint16, the milliseconds, 0 to 999
SCORE_PERMILLE = 13  # uint16, score / threshold x 1000, rounded, 0 to 65535; 0 without a positive threshold
INSPECTED = 14  # uint32
REJECTS = 16  # uint32
ERRORS = 18  # uint32
NOT_INSPECTED = 20  # uint32
RESULTS_UNACKED = 22  # uint32
INPUT_COUNT = 24

# 1000 is the threshold: a PLC without floating point compares against it.
PERMILLE_AT_THRESHOLD = 1000
UINT16_MAX = 0xFFFF
UINT32_MOD = 2**32


def bits(state: BoardState) -> list[bool]:
    """The discrete inputs, address 0 first."""
    last = state.last
    values = [False] * DISCRETE_COUNT
    values[TRIGGER_READY] = state.trigger_ready
    values[RESULT_READY] = state.result_ready
    values[REJECT_PULSE] = state.reject_pulse
    if last is not None:
        values[REJECT] = last.reject
        values[LATE] = last.late
        values[SCORE_VALID] = last.score is not None
        values[CAMERA_FRAME_ID_VALID] = last.camera_frame_id is not None
    return values


def input_registers(state: BoardState) -> list[int]:
    """The input registers, address 0 first."""
    regs = [0] * INPUT_COUNT
    regs[STATUS] = sum(1 << i for i, bit in enumerate(bits(state)) if bit)
    for address, count in (
        (INSPECTED, state.inspected),
        (REJECTS, state.rejects),
        (ERRORS, state.errors),
        (NOT_INSPECTED, state.not_inspected),
        (RESULTS_UNACKED, state.results_unacked),
    ):
        regs[address : address + 2] = _uint32(count)
    last = state.last
    if last is None:
        regs[VERDICT_CODE] = NO_RESULT_CODE
        return regs
    regs[VERDICT_CODE] = last.code
    regs[THRESHOLD : THRESHOLD + 2] = _float32(last.threshold)
    if last.score is not None:
        regs[SCORE : SCORE + 2] = _float32(last.score)
        regs[SCORE_PERMILLE] = _permille(last.score, last.threshold)
    regs[FRAME_ID : FRAME_ID + 2] = _uint32(last.frame_id)
    if last.camera_frame_id is not None:
        regs[CAMERA_FRAME_ID : CAMERA_FRAME_ID + 2] = _uint32(last.camera_frame_id)
    seconds = math.floor(last.captured_at)
    regs[CAPTURED_AT_S : CAPTURED_AT_S + 2] = _uint32(seconds)
    regs[CAPTURED_AT_MS] = min(999, round((last.captured_at - seconds) * 1000))
    return regs


def _uint32(value: int) -> list[int]:
    value %= UINT32_MOD
    return [value >> 16, value & UINT16_MAX]


def _float32(value: float) -> list[int]:
    try:
        packed = struct.pack(">f", value)
    except OverflowError:  # beyond float32's range: its infinity, as a float32 cast would give
        packed = struct.pack(">f", math.copysign(math.inf, value))
    high, low = struct.unpack(">HH", packed)
    return [high, low]


def _permille(score: float, threshold: float) -> int:
    if threshold <= 0:  # no scale to measure against; the float registers still carry the score
        return 0
    return max(0, min(UINT16_MAX, round(score / threshold * PERMILLE_AT_THRESHOLD)))
