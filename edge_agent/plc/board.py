"""What a PLC reads about one camera, whatever the protocol: the last result, counters, a reject pulse and the
result handshake (README: PLC outputs).

The handshake: `result_ready` goes on when a result is written and off when the PLC acknowledges it. A result that
arrives while the previous one is still unacknowledged overwrites the last-result fields all the same (the PLC
wants the newest part, not a queue) and counts in `results_unacked`, so a PLC that fell behind can see how many
results it never acknowledged.

`record` runs on the inspection thread and only takes a lock held for a copy, so a slow PLC or a stalled server
thread never holds up the loop; the server threads call `ack` and `state`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.verdict import ERROR, NOT_INSPECTED, OK, REJECT, Verdict, VerdictKind

# The numbers a PLC compares instead of the verdict string; 0 until the first result.
NO_RESULT_CODE = 0
VERDICT_CODES: dict[VerdictKind, int] = {OK: 1, REJECT: 2, ERROR: 3, NOT_INSPECTED: 4}


@dataclass(frozen=True)
class LastResult:
    verdict: VerdictKind
    score: float | None  # None on error and not_inspected
    threshold: float
    frame_id: int
    camera_frame_id: int | None  # None where the device gives no count of its own
    captured_at: float  # Unix time
    reject: bool  # what the line must do: a reject, or an error / not_inspected that the config makes one
    late: bool

    @property
    def code(self) -> int:
        return VERDICT_CODES[self.verdict]


@dataclass(frozen=True)
class BoardState:
    """One consistent view of the board: a protocol renders a whole read from one of these."""

    trigger_ready: bool  # the agent inspects: camera delivering, model loaded, not paused
    result_ready: bool
    reject_pulse: bool
    last: LastResult | None  # None until the first result
    # Since the agent started: inspected counts every frame judged (ok, reject, error), so inspected +
    # not_inspected is every part answered.
    inspected: int
    rejects: int  # model verdicts `reject` only
    errors: int
    not_inspected: int
    results_unacked: int  # results that replaced one the PLC had not acknowledged


class ResultBoard:
    def __init__(
        self, ready: Callable[[], bool], reject_pulse_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ready = ready
        self._pulse_s = reject_pulse_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: LastResult | None = None
        self._result_ready = False
        self._pulse_until = -float("inf")
        self._counts: dict[VerdictKind, int] = dict.fromkeys(VERDICT_CODES, 0)
        self._unacked = 0

    def record(self, verdict: Verdict) -> None:
        last = LastResult(
            verdict=verdict.verdict,
            score=verdict.score,
            threshold=verdict.threshold,
            frame_id=verdict.frame_id,
            camera_frame_id=verdict.camera_frame_id,
            captured_at=verdict.captured_at,
            reject=verdict.is_reject,
            late=verdict.late,
        )
        now = self._clock()
        with self._lock:
            self._unacked += self._result_ready
            self._last = last
            self._result_ready = True
            self._counts[verdict.verdict] += 1
            if last.reject:
                self._pulse_until = now + self._pulse_s

    def ack(self) -> bool:
        """The PLC has read the result: clear result_ready. False when there was none to acknowledge."""
        with self._lock:
            waiting, self._result_ready = self._result_ready, False
        return waiting

    def state(self) -> BoardState:
        ready = bool(self._ready())
        now = self._clock()
        with self._lock:
            counts = dict(self._counts)
            return BoardState(
                trigger_ready=ready,
                result_ready=self._result_ready,
                reject_pulse=now < self._pulse_until,
                last=self._last,
                inspected=counts[OK] + counts[REJECT] + counts[ERROR],
                rejects=counts[REJECT],
                errors=counts[ERROR],
                not_inspected=counts[NOT_INSPECTED],
                results_unacked=self._unacked,
            )

    def pulse_left_s(self) -> float:
        """Until reject_pulse goes off (0 when it is off): a server pushing values wakes up then."""
        with self._lock:
            until = self._pulse_until
        return max(0.0, until - self._clock())
