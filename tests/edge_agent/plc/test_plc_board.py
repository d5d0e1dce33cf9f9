"""The board every PLC protocol renders: last result, counters, reject pulse and the ack handshake."""

from __future__ import annotations

from edge_agent.plc.board import ResultBoard
from edge_agent.verdict import ERROR, NOT_INSPECTED, OK, REJECT
from tests.edge_agent.plc.verdicts import CAPTURED_AT, verdict

PULSE_S = 0.25


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def board(clock: Clock | None = None, ready: bool = True) -> ResultBoard:
    return ResultBoard(lambda: ready, PULSE_S, clock or Clock())


def test_nothing_to_read_before_the_first_result() -> None:
    state = board().state()
    assert state.last is None and not state.result_ready and not state.reject_pulse
    assert (state.inspected, state.rejects, state.errors, state.not_inspected, state.results_unacked) == (0,) * 5


def test_a_result_sets_result_ready_and_its_fields_and_ack_clears_it() -> None:
    b = board()
    b.record(verdict(frame_id=5, camera_frame_id=99))
    state = b.state()
    assert state.result_ready
    assert state.last is not None
    assert (state.last.verdict, state.last.code, state.last.score, state.last.threshold) == (REJECT, 2, 0.63, 0.42)
    assert (state.last.frame_id, state.last.camera_frame_id, state.last.captured_at) == (5, 99, CAPTURED_AT)
    assert state.last.reject and not state.last.late
    assert b.ack() is True
    after = b.state()
    assert not after.result_ready and after.last == state.last  # the fields stay readable
    assert b.ack() is False  # nothing was waiting


def test_a_result_before_the_ack_overwrites_the_fields_and_counts_as_unacked() -> None:
    b = board()
    b.record(verdict(frame_id=1))
    b.record(verdict(frame_id=2, kind=OK, score=0.1))
    b.record(verdict(frame_id=3, kind=OK, score=0.2))
    state = b.state()
    assert state.last is not None and state.last.frame_id == 3 and state.result_ready
    assert state.results_unacked == 2
    b.ack()
    b.record(verdict(frame_id=4))
    assert b.state().results_unacked == 2  # acknowledged in time: no overrun


def test_counters_inspected_is_every_frame_judged_and_not_inspected_the_rest() -> None:
    b = board()
    for kind, score in ((OK, 0.1), (REJECT, 0.9), (REJECT, 0.8), (ERROR, None), (NOT_INSPECTED, None)):
        b.record(verdict(kind=kind, score=score))
    state = b.state()
    assert (state.inspected, state.rejects, state.errors, state.not_inspected) == (4, 2, 1, 1)


def test_reject_pulse_lasts_its_time_after_the_last_reject() -> None:
    clock = Clock()
    b = board(clock)
    b.record(verdict(kind=OK, score=0.1))
    assert not b.state().reject_pulse and b.pulse_left_s() == 0
    b.record(verdict(kind=REJECT))
    assert b.state().reject_pulse and b.pulse_left_s() == PULSE_S
    clock.now += PULSE_S * 0.6
    b.record(verdict(kind=REJECT))  # a second reject stretches it
    clock.now += PULSE_S * 0.6
    assert b.state().reject_pulse
    clock.now += PULSE_S * 0.4
    assert not b.state().reject_pulse and b.pulse_left_s() == 0


def test_an_error_pulses_as_a_reject_only_where_the_config_makes_it_one() -> None:
    b = board()
    b.record(verdict(kind=ERROR, score=None, reject_on_error=False))
    assert not b.state().reject_pulse
    b.record(verdict(kind=NOT_INSPECTED, score=None, reason="dropped"))
    state = b.state()
    assert state.reject_pulse and state.last is not None and state.last.reject


def test_trigger_ready_is_what_the_loop_says() -> None:
    assert board(ready=True).state().trigger_ready
    assert not board(ready=False).state().trigger_ready
