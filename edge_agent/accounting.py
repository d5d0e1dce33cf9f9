"""Every part gets an answer: a `not_inspected` verdict for a frame the queue dropped, a frame that arrived while
inspection was paused, and a frame the camera's own counter shows it never sent (a gap in `camera_frame_id`).

The notes here carry what identifies a part, never its pixels. Gap notes are made on the acquisition thread and
travel through the frame queue, so they keep their place among the frames; the verdicts are published by the
inference thread, like every other verdict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.frames import Frame
from edge_agent.log_throttle import LogThrottle
from edge_agent.loop_options import LoopOptions
from edge_agent.metrics import Metrics
from edge_agent.model import ModelInfo
from edge_agent.publish.base import Publisher
from edge_agent.run_summary import RunSummary
from edge_agent.verdict import (
    NOT_INSPECTED,
    REASON_CAMERA_GAP,
    REASON_DROPPED,
    REASON_PAUSED,
    NotInspectedReason,
    Verdict,
)

log = logging.getLogger(__name__)

# Verdicts for one gap in the device's frame counter, at most. A real gap is a few frames the transport lost; a
# jump of thousands is more likely a counter that was reset or misread, and answering each id would flood the PLC
# with rejects. Past this the rest are counted and reported in one `camera_gap_capped` event.
MAX_GAP_VERDICTS = 1000
# After the first line for a reason, at most one line per this long (with the count held back meanwhile): a slow
# model drops frames at the camera's rate, and the journal must not get a line for each.
LOG_INTERVAL_S = 60.0
WHY = {
    REASON_DROPPED: "inference fell behind and the queue was full",
    REASON_PAUSED: "inspection is paused by command",
    REASON_CAMERA_GAP: "the camera's frame counter skipped it (never delivered)",
}

EventSink = Callable[[str, dict[str, object]], None]


@dataclass(frozen=True)
class Missed:
    """A part with no model verdict: what identifies it, without the pixels."""

    frame_id: int
    captured_at: float
    captured_mono: float
    reason: NotInspectedReason
    camera_frame_id: int | None = None
    source: str = ""


def missed(frame: Frame, reason: NotInspectedReason) -> Missed:
    return Missed(frame.frame_id, frame.captured_at, frame.captured_mono, reason, frame.camera_frame_id, frame.source)


def dropped(frame: Frame) -> Missed:
    """The note a full queue keeps in place of the frame it drops."""
    return missed(frame, REASON_DROPPED)


class Accounting:
    """Finds the parts the camera skipped, and answers every part not inspected with a `not_inspected` verdict,
    counted per reason in the run summary and the metrics, and logged without flooding.

    `gap_notes` and `camera_reopened` run on the acquisition thread; `answer` on the inference thread.
    """

    def __init__(
        self,
        camera: str,
        publisher: Publisher,
        summary: RunSummary,
        options: LoopOptions,
        metrics: Metrics | None = None,
        events: EventSink | None = None,
        max_gap_verdicts: int = MAX_GAP_VERDICTS,
    ) -> None:
        self.camera = camera
        self.publisher = publisher
        self.summary = summary
        self.metrics = metrics
        self._options = options
        self._events = events
        self._max_gap_verdicts = max_gap_verdicts
        self._last_camera_frame_id: int | None = None  # the acquisition thread's
        self.gap_overflow = 0  # missing ids past the cap: parts with no verdict of their own
        self._log = LogThrottle(LOG_INTERVAL_S)  # the inference thread's

    # -- acquisition thread --------------------------------------------------------------------------------------

    def camera_reopened(self) -> None:
        """A reopened device counts its frames afresh: its first id is no gap after the last one before."""
        self._last_camera_frame_id = None

    def gap_notes(self, frame: Frame, next_id: Callable[[], int] | None) -> list[Missed]:
        """Notes for the ids the device skipped just before `frame`, in order, each numbered by `next_id` (call it
        before numbering `frame`, so frame ids follow capture order). Without `next_id` (the camera's own count,
        which has no number for a frame it never sent) they take `frame`'s.

        A counter that stays or goes backwards (it wrapped, or the device restarted it) starts a new count: no gap.
        """
        last, current = self._last_camera_frame_id, frame.camera_frame_id
        self._last_camera_frame_id = current
        if last is None or current is None or current <= last + 1:
            return []
        missing = current - last - 1
        answered = min(missing, self._max_gap_verdicts)
        if answered < missing:
            self._capped(missing, answered, last, current)
        # The parts nearest the frame that showed the gap: their capture time is closest to the one they are given.
        ids = range(current - answered, current)
        return [
            Missed(
                next_id() if next_id is not None else frame.frame_id,
                frame.captured_at,
                frame.captured_mono,
                REASON_CAMERA_GAP,
                camera_frame_id,
                frame.source,
            )
            for camera_frame_id in ids
        ]

    def _capped(self, missing: int, answered: int, last: int, current: int) -> None:
        self.gap_overflow += missing - answered
        log.warning(
            "%s: the camera's frame counter jumped from %d to %d; %d not_inspected verdicts published, the other %d "
            "only counted (a counter reset or a long outage of the device's transport?)",
            self.camera,
            last,
            current,
            answered,
            missing - answered,
        )
        if self._events is not None:
            details: dict[str, object] = {
                "missing": missing,
                "answered": answered,
                "camera_frame_id_before": last,
                "camera_frame_id": current,
            }
            self._events("camera_gap_capped", details)

    # -- inference thread ----------------------------------------------------------------------------------------

    def answer(self, part: Missed, model: ModelInfo) -> Verdict:
        """Publish a `not_inspected` verdict for `part`, count it and log it (throttled)."""
        latency_ms = (time.monotonic() - part.captured_mono) * 1000
        verdict = Verdict(
            frame_id=part.frame_id,
            camera=self.camera,
            captured_at=part.captured_at,
            score=None,
            threshold=model.threshold,
            verdict=NOT_INSPECTED,
            model=model.version,
            latency_ms=round(latency_ms, 3),
            # The PLC may drop a stale reject by its deadline, as for any other verdict.
            late=latency_ms > self._options.deadline_ms,
            source=part.source,
            camera_frame_id=part.camera_frame_id,
            reason=part.reason,
            reject_on_error=self._options.error_is_reject,
            reject_on_not_inspected=self._options.not_inspected_is_reject,
        )
        self.publisher.publish(verdict)
        self.summary.not_inspected[part.reason] += 1
        if self.metrics is not None:
            self.metrics.not_inspected(self.camera, part.reason)
        self._log_answer(verdict, part.reason)
        return verdict

    def _log_answer(self, verdict: Verdict, reason: NotInspectedReason) -> None:
        admitted = self._log.admit(reason)
        if admitted is None:
            log.debug("%s frame %d NOT INSPECTED (%s)", self.camera, verdict.frame_id, reason)
            return
        # Pausing is what someone asked for; the other reasons are parts the line did not get judged.
        level = logging.INFO if reason == REASON_PAUSED else logging.WARNING
        log.log(
            level,
            "%s frame %d NOT INSPECTED: %s; published as not_inspected%s%s",
            self.camera,
            verdict.frame_id,
            WHY[reason],
            " (a reject for the PLC)" if verdict.is_reject else "",
            f" ({admitted.held_back} more for this reason since the last such line)" if admitted.held_back else "",
        )
