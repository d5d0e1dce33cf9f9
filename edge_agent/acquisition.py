"""The acquisition thread: grabs frames into the bounded queue, so the camera is never blocked by inference or by
the broker; reopens a failed camera with a backoff; and hands the camera's own frame counter to the accounting,
which notes the parts the camera skipped (edge_agent.accounting)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from edge_agent.accounting import Accounting, Missed
from edge_agent.cameras.base import Camera
from edge_agent.errors import CameraError, EndOfStream
from edge_agent.frame_ids import FrameIds
from edge_agent.frame_queue import FrameQueue
from edge_agent.frames import Frame
from edge_agent.loop_options import LoopOptions
from edge_agent.run_summary import RunSummary
from edge_agent.systemd import SystemdNotifier

# The loop's logger: operators filter the camera's lines with the loop's (logging.loggers in a deployment).
log = logging.getLogger("edge_agent.loop")

RECONNECT_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)

Event = Callable[[str, dict[str, object]], None]


class Acquisition:
    def __init__(
        self,
        camera: Camera,
        queue: FrameQueue[Frame, Missed],
        accounting: Accounting,
        options: LoopOptions,
        summary: RunSummary,
        event: Event,
        judging: Callable[[], bool],  # the inference thread is judging a frame now
        watchdog: SystemdNotifier | None = None,
        frame_ids: FrameIds | None = None,
    ) -> None:
        self._camera = camera
        self._queue = queue
        self._accounting = accounting
        self._options = options
        self._summary = summary
        self._event = event
        self._judging = judging
        self._watchdog = watchdog
        self._frame_ids = frame_ids
        # Written by this thread, read by the metrics server and a PLC's trigger_ready; a grab that did not raise
        # means connected.
        self.connected = False

    def run(self, stop: threading.Event) -> None:
        """Grab until the camera runs out, `max_frames` were grabbed, or `stop` is set; then close the queue."""
        grabbed = 0
        failures = 0
        last_frame = time.monotonic()
        try:
            while not stop.is_set():
                if self._options.max_frames is not None and grabbed >= self._options.max_frames:
                    break
                try:
                    frame = self._camera.grab(self._options.grab_timeout_s)
                    silent = time.monotonic() - last_frame
                    if (
                        frame is None
                        and self._options.frame_timeout_s is not None
                        and silent > self._options.frame_timeout_s
                    ):
                        raise CameraError(f"no frame for {silent:.1f} s")
                except EndOfStream:
                    log.info("camera '%s' has no more frames", self._camera.name)
                    break
                except CameraError as exc:
                    if self.connected or failures == 0:
                        self._event("camera_lost", {"reason": str(exc)})
                    self.connected = False
                    self._summary.camera_errors += 1
                    wait = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)]
                    failures += 1
                    log.error("camera '%s' failed: %s; reconnecting in %.0f s", self._camera.name, exc, wait)
                    if stop.wait(wait):
                        break
                    self._reopen()
                    last_frame = time.monotonic()
                    continue
                # Connected means frames flow; a silent grab proves it only where silence is normal (no
                # frame timeout: a hardware trigger), else a reopened but mute device would flap lost/reconnected.
                if frame is not None or self._options.frame_timeout_s is None:
                    if not self.connected and failures > 0:
                        self._event("camera_reconnected", {"after_failures": failures})
                    self.connected = True
                if frame is None:
                    # A healthy camera waiting for its trigger: the liveness tick, so idle is not a hang. Only
                    # while nothing waits for inference: a hung inference must still starve the watchdog.
                    if self._watchdog is not None and self._queue.empty and not self._judging():
                        self._watchdog.feed()
                    continue
                failures = 0
                last_frame = time.monotonic()
                grabbed += 1
                next_id = None if self._frame_ids is None else self._frame_ids.next
                skipped = self._accounting.gap_notes(frame, next_id)
                if next_id is not None:
                    frame = replace(frame, frame_id=next_id())
                self._queue.put(frame, skipped)
        finally:
            self._queue.close()

    def _reopen(self) -> None:
        self._accounting.camera_reopened()
        try:
            self._camera.close()
            self._camera.open()
            log.info("camera '%s' reconnected", self._camera.name)
        except CameraError as exc:
            log.error("camera '%s' is still unavailable: %s", self._camera.name, exc)
