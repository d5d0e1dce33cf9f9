"""Values a 16-bit register cannot hold as they are: how the map saturates, wraps and marks them."""

from __future__ import annotations

import pytest

from edge_agent.plc import modbus_map as mm
from edge_agent.plc.board import ResultBoard
from tests.edge_agent.plc.verdicts import verdict


def registers(**fields: object) -> list[int]:
    board = ResultBoard(lambda: True, 1.0)
    board.record(verdict(**fields))  # type: ignore[arg-type]
    return mm.input_registers(board.state())


@pytest.mark.parametrize(
    ("score", "threshold", "permille"),
    [(0.42, 0.42, 1000), (0.0, 0.42, 0), (1e6, 0.42, 65535), (-1.0, 0.42, 0), (0.5, -1.0, 0), (0.5, 0.0, 0)],
)
def test_score_permille_is_the_score_against_the_threshold_saturated(
    score: float, threshold: float, permille: int
) -> None:
    assert registers(score=score, threshold=threshold)[mm.SCORE_PERMILLE] == permille


def test_32_bit_values_wrap_and_a_float_too_large_is_infinity() -> None:
    regs = registers(frame_id=2**32 + 5, score=1e39)
    assert regs[mm.FRAME_ID : mm.FRAME_ID + 2] == [0, 5]
    assert regs[mm.SCORE : mm.SCORE + 2] == [0x7F80, 0]  # float32 +inf, high word first


def test_captured_at_milliseconds_never_reach_1000() -> None:
    regs = registers(captured_at=1767268800.9996)
    assert regs[mm.CAPTURED_AT_S + 1] == 1767268800 & 0xFFFF and regs[mm.CAPTURED_AT_MS] == 999
