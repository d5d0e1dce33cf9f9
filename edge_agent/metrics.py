"""Prometheus `/metrics` and a `/healthz` check over HTTP. `Metrics` holds the values and hands them, at each
scrape, to prometheus-client as metric families: the library owns the exposition format (escaping, numbers,
histogram series). `MetricsServer` serves both paths from a daemon thread with the standard library's server,
because /healthz is not a Prometheus endpoint."""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from edge_agent.errors import AgentError
from edge_agent.verdict import ERROR, NOT_INSPECTED_REASONS, REJECT

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# From a sub-millisecond CPU stage to a stalled one; the reject deadline is typically around 0.1 s.
STAGE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

FRAMES = "edge_agent_frames_total"
REJECTS = "edge_agent_rejects_total"
ERRORS = "edge_agent_errors_total"
LATE = "edge_agent_late_decisions_total"
DROPPED = "edge_agent_dropped_frames_total"
STAGE_SECONDS = "edge_agent_stage_seconds"
OUTBOX = "edge_agent_outbox_messages"
ARCHIVE_PENDING = "edge_agent_archive_pending_items"
CAMERA_CONNECTED = "edge_agent_camera_connected"
MQTT_CONNECTED = "edge_agent_mqtt_connected"
MODEL_INFO = "edge_agent_model_info"
OUTBOX_DROPPED = "edge_agent_outbox_dropped_total"
REJECTS_EXPIRED = "edge_agent_rejects_expired_total"
ARCHIVE_DROPPED = "edge_agent_archive_dropped_total"
ARCHIVE_FAILED = "edge_agent_archive_failed_total"
NOT_INSPECTED = "edge_agent_not_inspected_total"
MISSED_WITHOUT_VERDICT = "edge_agent_missed_without_verdict_total"
SCORE = "edge_agent_score"
SCORE_DRIFT = "edge_agent_score_drift"
SCORE_DRIFT_STATISTIC = "edge_agent_score_drift_statistic"
SCORE_DRIFT_CRITICAL = "edge_agent_score_drift_critical"

# Exposition order, type and help text of every series.
SERIES: dict[str, tuple[str, str]] = {
    FRAMES: ("counter", "Frames inspected end to end."),
    REJECTS: ("counter", "Frames judged reject (errors are counted apart)."),
    ERRORS: ("counter", "Frames that could not be judged."),
    LATE: ("counter", "Decisions later than reject.deadline_ms after capture."),
    DROPPED: ("counter", "Frames dropped because inference fell behind the camera."),
    STAGE_SECONDS: ("histogram", "Seconds per stage; acquire is from capture to the start of preprocessing."),
    OUTBOX: ("gauge", "Messages (verdicts, rejects) the broker has not acknowledged yet: the outbox backlog."),
    ARCHIVE_PENDING: ("gauge", "Rejects and samples waiting for the archive thread to write them."),
    CAMERA_CONNECTED: ("gauge", "1 while the camera delivers, 0 after it failed and until it is back."),
    MQTT_CONNECTED: ("gauge", "1 while connected to the MQTT broker."),
    MODEL_INFO: ("gauge", "The model version in use, as a label; the value is always 1."),
    OUTBOX_DROPPED: ("counter", "Messages the full outbox dropped, oldest first: verdicts the broker never got."),
    REJECTS_EXPIRED: ("counter", "Reject messages not sent because their deadline passed in the outbox."),
    ARCHIVE_DROPPED: ("counter", "Images the archive skipped because its queue was full."),
    ARCHIVE_FAILED: ("counter", "Images the archive could not write (disk full, I/O error)."),
    NOT_INSPECTED: ("counter", "not_inspected verdicts published, by reason: dropped, paused, camera_gap."),
    MISSED_WITHOUT_VERDICT: (
        "counter",
        "Parts known to have passed with no verdict of their own: a camera gap past its cap, a hung inference.",
    ),
    SCORE: ("histogram", "Scores of the frames the model judged; buckets from the score reference and the threshold."),
    SCORE_DRIFT: ("gauge", "1 while the recent scores have drifted from the bundle's score reference, else 0."),
    SCORE_DRIFT_STATISTIC: (
        "gauge",
        "Kolmogorov-Smirnov distance of the recent scores to the reference at the last check.",
    ),
    SCORE_DRIFT_CRITICAL: ("gauge", "The critical value the drift statistic was compared with at the last check."),
}
_COUNTED = {REJECT: REJECTS, ERROR: ERRORS}


class MetricsError(AgentError):
    """The metrics endpoint cannot be served (port in use, unknown host)."""


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(STAGE_BUCKETS_S) + 1))  # the last one is +Inf
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(STAGE_BUCKETS_S, value)] += 1
        self.total += value


@dataclass(frozen=True)
class HistogramSnapshot:
    """A histogram fed elsewhere, as read at a scrape."""

    bounds: tuple[float, ...]  # upper bounds (le), ascending, without +Inf
    counts: tuple[int, ...]  # per bucket, not cumulative; one more than `bounds`, the last one for +Inf
    total: float


class Metrics:
    """Thread-safe values of one agent. Counters and histograms are fed by `frame_done`; values owned by
    another component (queue drops, outbox size, connection state) are read at scrape time via `watch`."""

    def __init__(
        self, model_version: str, health_timeout_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # Both set from the inspection thread (a model swap, a pause command) and read by the HTTP thread.
        self.model_version = model_version
        self.paused = False
        self.health_timeout_s = health_timeout_s
        self._clock = clock
        self._started = clock()
        self._last_done: float | None = None
        self._lock = threading.Lock()
        self._cameras: set[str] = set()
        self._counts: dict[tuple[str, str], int] = {}
        self._not_inspected: dict[tuple[str, str], int] = {}  # (camera, reason)
        self._stages: dict[tuple[str, str], _Histogram] = {}
        self._watched: dict[tuple[str, str], Callable[[], float]] = {}
        self._histograms: dict[tuple[str, str], Callable[[], HistogramSnapshot | None]] = {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self.collect))

    def frame_done(self, camera: str, stage_seconds: Mapping[str, float], verdict: str, late: bool) -> None:
        names = [FRAMES, *([_COUNTED[verdict]] if verdict in _COUNTED else []), *([LATE] if late else [])]
        with self._lock:
            self._cameras.add(camera)
            for name in names:
                self._counts[name, camera] = self._counts.get((name, camera), 0) + 1
            for stage, seconds in stage_seconds.items():
                self._stages.setdefault((camera, stage), _Histogram()).observe(seconds)
            self._last_done = self._clock()

    def not_inspected(self, camera: str, reason: str) -> None:
        with self._lock:
            self._cameras.add(camera)
            self._not_inspected[camera, reason] = self._not_inspected.get((camera, reason), 0) + 1

    def watch(self, name: str, camera: str, read: Callable[[], float]) -> None:
        """Report `read()` as the counter or gauge `name` of `camera` at each scrape."""
        with self._lock:
            self._cameras.add(camera)
            self._watched[name, camera] = read

    def watch_histogram(self, name: str, camera: str, read: Callable[[], HistogramSnapshot | None]) -> None:
        """Report `read()` as the histogram `name` of `camera` at each scrape; None leaves it out."""
        with self._lock:
            self._cameras.add(camera)
            self._histograms[name, camera] = read

    def health(self) -> tuple[bool, str]:
        with self._lock:
            last = self._last_done
        idle = self._clock() - (self._started if last is None else last)
        if self.paused:
            return True, "paused by command"
        if idle <= self.health_timeout_s:
            return True, "ok"
        return False, f"no frame completed for {idle:.1f} s" + (" since start" if last is None else "")

    def render(self) -> str:
        return generate_latest(self._registry).decode()

    def collect(self) -> Iterator[Metric]:
        """Every series in SERIES order, read now (prometheus-client's collector protocol)."""
        with self._lock:
            cameras = sorted(self._cameras)
            counts = dict(self._counts)
            not_inspected = dict(self._not_inspected)
            stages = {key: (list(h.buckets), h.total) for key, h in sorted(self._stages.items())}
            watched = sorted(self._watched.items())
            histograms = sorted(self._histograms.items())
        # Readers run outside the lock: they take their owners' locks, which must never nest inside this one.
        read: dict[tuple[str, str], float] = {}
        for key, reader in watched:
            try:
                read[key] = float(reader())
            except Exception as exc:  # one failing reader must not cost the whole scrape
                log.debug("metrics: reading %s for '%s' failed: %s", *key, exc)
        snapshots = {key: snapshot for key, reader in histograms if (snapshot := reader()) is not None}
        for name, (kind, text) in SERIES.items():
            if name == NOT_INSPECTED:
                reasons = CounterMetricFamily(name, text, labels=["camera", "reason"])
                # Every reason from the start, at 0: a rate() or an alert over a series that appears late misses
                # its first increase.
                for camera in cameras:
                    for reason in NOT_INSPECTED_REASONS:
                        reasons.add_metric([camera, reason], not_inspected.get((camera, reason), 0))
                yield reasons
            elif kind == "counter":
                counter = CounterMetricFamily(name, text, labels=["camera"])
                for camera in cameras:
                    counter.add_metric([camera], read.get((name, camera), counts.get((name, camera), 0)))
                yield counter
            elif name == MODEL_INFO:
                info = GaugeMetricFamily(name, text, labels=["version"])
                info.add_metric([self.model_version], 1)
                yield info
            elif kind == "gauge":
                gauge = GaugeMetricFamily(name, text, labels=["camera"])
                for (series, camera), value in read.items():
                    if series == name:
                        gauge.add_metric([camera], value)
                yield gauge
            elif name == STAGE_SECONDS:
                per_stage = HistogramMetricFamily(name, text, labels=["camera", "stage"])
                for (camera, stage), (buckets, total) in stages.items():
                    per_stage.add_metric([camera, stage], _cumulative(STAGE_BUCKETS_S, buckets), total)
                yield per_stage
            else:
                histogram = HistogramMetricFamily(name, text, labels=["camera"])
                for (series, camera), snapshot in snapshots.items():
                    if series == name:
                        histogram.add_metric([camera], _cumulative(snapshot.bounds, snapshot.counts), snapshot.total)
                yield histogram


class _Collector(Collector):
    """prometheus-client's collector interface around `Metrics.collect`."""

    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        return self._collect()


def _cumulative(bounds: tuple[float, ...], counts: list[int] | tuple[int, ...]) -> list[tuple[str, float]]:
    """Per-bucket counts (the last one for +Inf) as the cumulative (le, count) pairs of a histogram."""
    edges = [*map(floatToGoString, bounds), "+Inf"]
    return list(zip(edges, itertools.accumulate(counts), strict=True))


class MetricsServer:
    """Serves `/metrics` and `/healthz` on a daemon thread from construction until `stop`."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        try:
            self._httpd = ThreadingHTTPServer((host, port), _handler_for(metrics))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise MetricsError(
                    f"metrics port {port} on {host} is already in use (metrics.port); "
                    "pick a free one in the config, or set metrics.enabled: false"
                ) from None
            raise MetricsError(f"cannot serve metrics on {host}:{port} (metrics.host, metrics.port): {exc}") from None
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def _handler_for(metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(HTTPStatus.OK, metrics.render(), CONTENT_TYPE)
            elif path == "/healthz":
                ok, reason = metrics.health()
                self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, reason + "\n")
            else:
                self._send(HTTPStatus.NOT_FOUND, "not found\n")

        def _send(self, status: HTTPStatus, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            # A scrape every few seconds would otherwise flood the agent's log on stderr.
            log.debug("metrics http: " + format, *args)

    return Handler
