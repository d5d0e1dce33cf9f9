"""Every PLC output of a camera behind one `PlcOutput`, so that the loop calls one thing, and one output that
fails never stops the verdict reaching the others (or MQTT, which the loop has already called)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from edge_agent.log_throttle import LogThrottle
from edge_agent.plc.base import PlcOutput
from edge_agent.verdict import Verdict

log = logging.getLogger(__name__)

# An output failing on every verdict fails 30 times a second: one line, then one a minute with the count.
FAILURE_LOG_INTERVAL_S = 60.0


class PlcFanout:
    def __init__(self, outputs: Sequence[PlcOutput]) -> None:
        self._outputs = list(outputs)
        self._started: list[PlcOutput] = []
        self._failures = LogThrottle(FAILURE_LOG_INTERVAL_S)  # the inspection thread's only

    @property
    def name(self) -> str:
        return ", ".join(output.name for output in self._outputs)

    def start(self) -> None:
        """Start every output; when one cannot, stop those already started and raise its error."""
        for output in self._outputs:
            try:
                output.start()
            except BaseException:
                self.stop()
                raise
            self._started.append(output)

    def publish(self, verdict: Verdict) -> None:
        for output in self._started:
            try:
                output.publish(verdict)
            except Exception as exc:  # the other outputs, and the loop, go on
                admitted = self._failures.admit(output.name)
                if admitted is not None:
                    more = f" ({admitted.held_back} more since the last such line)" if admitted.held_back else ""
                    log.error("PLC output %s failed on frame %d: %s%s", output.name, verdict.frame_id, exc, more)

    def stop(self) -> None:
        for output in reversed(self._started):
            try:
                output.stop()
            except Exception as exc:  # stop the others all the same
                log.error("PLC output %s did not stop cleanly: %s", output.name, exc)
        self._started.clear()
