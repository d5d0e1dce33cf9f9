"""The inspection loop: acquisition thread -> bounded queue -> inference -> publisher (its own network thread).

Built from injected parts (camera, runtime, publisher, archive), so tests can swap any of them. Every frame grabbed
gets one verdict, and so does every frame the camera's counter shows it skipped (edge_agent.accounting).
"""

from __future__ import annotations

import logging
import re
import threading
import time

from edge_agent.accounting import Accounting, Missed, dropped, missed
from edge_agent.acquisition import Acquisition
from edge_agent.archive import Archive, ArchiveItem
from edge_agent.cameras.base import Camera
from edge_agent.control import EventSink
from edge_agent.drift_watch import DriftWatch
from edge_agent.frame_ids import FrameIds
from edge_agent.frame_queue import FrameQueue
from edge_agent.frames import Frame, image_problem
from edge_agent.geometry import Combined, combine, prepare
from edge_agent.log_throttle import LogThrottle
from edge_agent.loop_options import LoopOptions as LoopOptions  # callers import it from here too
from edge_agent.metrics import CAMERA_CONNECTED, DROPPED, MISSED_WITHOUT_VERDICT, Metrics
from edge_agent.model import LoadedModel, ModelInfo
from edge_agent.plc.base import PlcOutput
from edge_agent.preprocess import to_uint8_rgb
from edge_agent.publish.base import Publisher
from edge_agent.regions import find_regions
from edge_agent.run_summary import RunSummary
from edge_agent.runtimes.base import Runtime
from edge_agent.systemd import SystemdNotifier
from edge_agent.verdict import ERROR, OK, REASON_PAUSED, REJECT, Verdict, decide

log = logging.getLogger(__name__)

QUEUE_POLL_S = 0.2
# A camera sending only bad buffers fails every frame, 30 a second: after a kind of error is logged, its repeats
# are held back this long; the next one logged then tells how many were.
ERROR_LOG_INTERVAL_S = 60.0
# Numbers in an error (a short buffer's size, a shape) vary between frames with the same fault: not a new kind.
_NUMBERS = re.compile(r"\d+")


class InspectionLoop:
    def __init__(
        self,
        camera: Camera,
        runtime: Runtime,
        publisher: Publisher,
        model: ModelInfo,
        options: LoopOptions,
        archive: Archive | None = None,
        metrics: Metrics | None = None,
        watchdog: SystemdNotifier | None = None,
        *,
        frame_ids: FrameIds | None = None,  # renumbers frames, across restarts; None: the camera's own count
        plc: PlcOutput | None = None,  # gets every verdict the publisher gets, after it
        drift: DriftWatch | None = None,
    ) -> None:
        self.camera = camera
        self.plc = plc
        self.publisher = publisher
        self.options = options
        self.archive = archive
        self.summary = RunSummary()
        live = bool(getattr(camera, "live", True))
        self._queue: FrameQueue[Frame, Missed] = FrameQueue(options.queue_size, drop_oldest=live, shrink=dropped)
        self.metrics = metrics
        self.watchdog = watchdog
        # Commands arrive on the control thread; the inference thread picks them up between two frames.
        self._model = LoadedModel(runtime, model)
        self._drift = drift
        if drift is not None:
            drift.use(model)
        self._next_model: LoadedModel | None = None
        self._snapshot_events: EventSink | None = None
        self._control = threading.Lock()
        self._paused = threading.Event()
        # Set by the inference thread while it judges a frame; read by the acquisition thread's liveness tick.
        self._judging = False
        self._inspecting = False  # from the start of `run` until its last frame is judged
        self._error_log = LogThrottle(ERROR_LOG_INTERVAL_S)  # the inference thread's only
        self._accounting = Accounting(camera.name, publisher, self.summary, options, metrics, self._event)
        self._acquisition = Acquisition(
            camera,
            self._queue,
            self._accounting,
            options,
            self.summary,
            self._event,
            lambda: self._judging,
            watchdog,
            frame_ids,
        )
        if metrics is not None:
            metrics.watch(DROPPED, camera.name, lambda: self._queue.dropped)
            metrics.watch(MISSED_WITHOUT_VERDICT, camera.name, self._missed_without_verdict)
            metrics.watch(CAMERA_CONNECTED, camera.name, lambda: self._acquisition.connected)

    @property
    def ready(self) -> bool:
        """Ready for the next part (a PLC's trigger_ready): running, the camera delivering, not paused."""
        return self._inspecting and self._acquisition.connected and not self._paused.is_set()

    @property
    def model_version(self) -> str:
        return self._model.info.version

    def swap(self, model: LoadedModel) -> None:
        """Run `model` from the next frame on; the frame in inference finishes with the old one."""
        with self._control:
            self._next_model = model

    def pause(self) -> None:
        """Discard frames instead of judging them (the camera keeps running, so it is never starved)."""
        self._paused.set()
        if self.metrics is not None:
            self.metrics.paused = True

    def resume(self) -> None:
        self._paused.clear()
        if self.metrics is not None:
            self.metrics.paused = False

    def request_snapshot(self, events: EventSink) -> None:
        """Inspect and archive the next frame whatever its verdict (while paused too, without publishing a
        verdict), and report where it went as a `snapshot` event."""
        with self._control:
            self._snapshot_events = events

    def run(self, stop: threading.Event) -> RunSummary:
        """Inspect until the camera runs out, `max_frames` were grabbed, or `stop` is set; then deliver
        everything in flight and return the counts."""
        acquisition = threading.Thread(target=self._acquisition.run, args=(stop,), name="acquisition", daemon=True)
        acquisition.start()
        self._inspecting = True
        next_stats = time.monotonic() + self.options.stats_interval_s
        while not self._queue.finished:
            item = self._queue.get(QUEUE_POLL_S)
            if isinstance(item, Missed):
                self._to_plc(self._accounting.answer(item, self._model.info))
            elif item is not None:
                self._judging = True
                self._handle(item)
                self._judging = False
            if time.monotonic() >= next_stats:
                self._publish_stats()
                next_stats = time.monotonic() + self.options.stats_interval_s
        self._inspecting = False
        acquisition.join()
        self.summary.dropped = self._queue.dropped
        self.summary.missed_without_verdict = self._missed_without_verdict()
        self._publish_stats()
        self.summary.delivered = self.publisher.flush(self.options.flush_timeout_s)
        return self.summary

    def _publish_stats(self) -> None:
        publish_stats = getattr(self.publisher, "publish_stats", None)
        if publish_stats is not None:
            live = {"dropped": self._queue.dropped, "missed_without_verdict": self._missed_without_verdict()}
            extra = {} if self._drift is None else {"drift": self._drift.summary()}
            publish_stats({**self.summary.counters(), **live}, **extra)

    def _missed_without_verdict(self) -> int:
        return self._accounting.gap_overflow + self._queue.notes_lost

    def _event(self, event: str, details: dict[str, object]) -> None:
        """Tell the line (MQTT `<camera>/event`) where the publisher can; the log always has it too."""
        publish_event = getattr(self.publisher, "publish_event", None)
        if publish_event is not None:
            publish_event(self.camera.name, event, details)

    def _handle(self, frame: Frame) -> None:
        with self._control:
            if self._next_model is not None:
                self._model, self._next_model = self._next_model, None
                # Before the publisher names the new model: clearing the old model's alarm goes out under its name.
                if self._drift is not None:
                    self._drift.use(self._model.info)
                if self.metrics is not None:
                    self.metrics.model_version = self._model.info.version
                set_model = getattr(self.publisher, "set_model", None)
                if set_model is not None:
                    set_model(self._model.info.version)
            snapshot, self._snapshot_events = self._snapshot_events, None
        paused = self._paused.is_set()
        if paused:
            # The line still gets an answer for the part; a snapshot's own verdict is for the archive only.
            self._to_plc(self._accounting.answer(missed(frame, REASON_PAUSED), self._model.info))
        if paused and snapshot is None:
            self.summary.paused += 1
            # Paused on purpose is not hung: keep systemd's watchdog fed.
            if self.watchdog is not None:
                self.watchdog.feed()
            return
        self._inspect(frame, self._model, publish=not paused, snapshot=snapshot)

    def _inspect(self, frame: Frame, model: LoadedModel, publish: bool, snapshot: EventSink | None) -> None:
        t0 = time.monotonic()
        result: Combined | None = None
        error: str | None = None
        t1: float | None = None
        t2: float | None = None
        info = model.info
        geometry = info.geometry
        # A frame the camera could not give as a picture is judged `error` like one the model failed on.
        unreadable = frame.error or image_problem(frame.image)
        if unreadable is not None:
            error = unreadable
        else:
            try:
                prepared = prepare(frame.image, geometry)
                t1 = time.monotonic()
                outputs = [model.runtime.infer(x) for x in prepared.inputs]
                t2 = time.monotonic()
                maps, scores = [o.anomaly_map for o in outputs], [o.score for o in outputs]
                result = combine(prepared, maps, scores, geometry.mode)
            except Exception as exc:  # any failure on one frame must become a fail-safe verdict, not a crash
                error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            self._log_error(frame, error)
        t3 = time.monotonic()
        # A stage that raised is charged the time up to the failure; the stages after it none.
        t1 = t3 if t1 is None else t1
        t2 = t3 if t2 is None else t2
        kind = ERROR if result is None else decide(result.score, info.threshold)
        regions = []
        if result is not None and kind == REJECT:
            regions = find_regions(result.anomaly_map, info.threshold, result.frame_scale)
        latency_ms = (t3 - frame.captured_mono) * 1000
        verdict = Verdict(
            frame_id=frame.frame_id,
            camera=self.camera.name,
            captured_at=frame.captured_at,
            score=None if result is None else round(result.score, 6),
            threshold=info.threshold,
            verdict=kind,
            model=info.version,
            latency_ms=round(latency_ms, 3),
            late=latency_ms > self.options.deadline_ms,
            regions=regions,
            error=error,
            source=frame.source,
            camera_frame_id=frame.camera_frame_id,
            reject_on_error=self.options.error_is_reject,
        )
        t4 = time.monotonic()
        if publish:
            self.publisher.publish(verdict)
            self._to_plc(verdict)
        t5 = time.monotonic()
        seconds = {
            "acquire": t0 - frame.captured_mono,
            "preprocess": t1 - t0,
            "infer": t2 - t1,
            "postprocess": t4 - t2,
            "publish": t5 - t4,
        }
        if publish:
            self._count(verdict, seconds)
        if snapshot is not None:
            self._snapshot(verdict, frame, result, info, snapshot, unreadable)
        elif publish and unreadable is None and self.archive is not None and self.archive.wants(verdict):
            self.archive.submit(_archive_item(verdict, frame, result, info))

    def _to_plc(self, verdict: Verdict) -> None:
        if self.plc is not None:
            self.plc.publish(verdict)

    def _log_error(self, frame: Frame, error: str) -> None:
        """An ERROR line for the first frame failing with each kind of error, then at most one per interval;
        the repeats in between are debug lines. Only the log is throttled: every frame keeps its verdict."""
        admitted = self._error_log.admit(_NUMBERS.sub("#", error))
        if admitted is None:
            log.debug("%s frame %d ERROR (%s): %s", self.camera.name, frame.frame_id, frame.source, error)
            return
        log.error(
            "%s frame %d ERROR (%s): %s%s",
            self.camera.name,
            frame.frame_id,
            frame.source,
            error,
            f" ({admitted.held_back} more like it since the last such line, logged at debug level only)"
            if admitted.held_back
            else "",
        )

    def _snapshot(
        self,
        verdict: Verdict,
        frame: Frame,
        result: Combined | None,
        info: ModelInfo,
        events: EventSink,
        unreadable: str | None,
    ) -> None:
        if self.archive is None:
            events("snapshot_failed", {"reason": "the archive is disabled (archive.enabled: false)"})
            return
        if unreadable is not None:
            events("snapshot_failed", {"reason": f"frame {frame.frame_id} has no picture: {unreadable}; try again"})
            return
        item = _archive_item(verdict, frame, result, info, snapshot=True)
        if not self.archive.submit(item):
            events("snapshot_failed", {"reason": "the archive is behind; try again"})
            return
        details = {"frame_id": verdict.frame_id, "verdict": verdict.verdict, "score": verdict.score}
        events("snapshot", {**details, "image": str(self.archive.image_path(item))})

    def _count(self, verdict: Verdict, seconds: dict[str, float]) -> None:
        s = self.summary
        s.frames += 1
        s.counts[verdict.verdict] += 1
        s.late += verdict.late
        s.latency_ms.append(verdict.latency_ms)
        for stage, value in seconds.items():
            s.stage_ms[stage].append(value * 1000)
        if self.metrics is not None:
            self.metrics.frame_done(verdict.camera, seconds, verdict.verdict, verdict.late)
        if self._drift is not None and verdict.score is not None:
            self._drift.observe(verdict.score)
        # Only frames the model judged feed it: a runtime failing on every frame is worth a restart.
        if self.watchdog is not None and verdict.verdict != ERROR:
            self.watchdog.feed()
        if verdict.verdict == ERROR:
            return  # `_inspect` logged it (throttled), with what went wrong
        level = logging.DEBUG if verdict.verdict == OK else logging.INFO
        log.log(
            level,
            "%s frame %d %s: score %s, threshold %.4g, %.1f ms%s (%s)",
            verdict.camera,
            verdict.frame_id,
            verdict.verdict.upper(),
            "n/a" if verdict.score is None else f"{verdict.score:.4g}",
            verdict.threshold,
            verdict.latency_ms,
            ", LATE" if verdict.late else "",
            verdict.source,
        )


def _archive_item(
    verdict: Verdict, frame: Frame, result: Combined | None, info: ModelInfo, snapshot: bool = False
) -> ArchiveItem:
    # A frame the model failed on is archived as the camera gave it, in the RGB the archive writes.
    view = to_uint8_rgb(frame.image) if result is None else result.view
    anomaly_map = None if result is None else result.anomaly_map
    return ArchiveItem(verdict, view, anomaly_map, info.score_scale, snapshot)
