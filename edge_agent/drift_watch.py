"""One camera's drift watch: the current model's drift detector and score histogram, fed with every judged score,
and what they find told as `score_drift` events (MQTT), gauges and a histogram (/metrics), and a summary in the
stats payload.

Which scores: every frame the model judged, ok and reject alike (errors and parts not inspected have none). Good
frames alone would hide the very drift that matters most: scores rising past the threshold leave the window as
rejects, and what stays looks like the reference cut at the threshold. Rejects bring real defects in, but a
Kolmogorov-Smirnov distance moves by at most the share of frames that differ, so a normal defect rate of a percent
or two costs little against a critical value near 0.2, and a defect rate that alone reaches it is worth an alarm.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_agent.config import DriftConfig
from edge_agent.control import EventSink
from edge_agent.drift import DriftCheck, DriftDetector, Transition
from edge_agent.metrics import (
    SCORE,
    SCORE_DRIFT,
    SCORE_DRIFT_CRITICAL,
    SCORE_DRIFT_STATISTIC,
    HistogramSnapshot,
    Metrics,
)
from edge_agent.model import ModelInfo
from edge_agent.score_histogram import ScoreHistogram, score_buckets

log = logging.getLogger(__name__)

EVENT = "score_drift"
TEST = "ks"  # two-sample Kolmogorov-Smirnov (edge_agent.drift)
# With fewer reference scores even an endless window could flag only a shift that moves more than 60% of the
# distribution (critical value c(alpha) / sqrt(m) = 0.62 at alpha 0.001): not worth an alarm channel.
MIN_REFERENCE_SCORES = 10
# Rounding of the figures in events and stats (statistics to decimals, scores to significant digits): finer than
# any decision taken on them.
STATISTIC_DECIMALS = 4
SCORE_DIGITS = 6


class DriftWatch:
    """Fed by the inspection thread (`use`, `observe`, `summary`); the metrics server's thread reads it."""

    def __init__(self, camera: str, config: DriftConfig, events: EventSink, metrics: Metrics | None = None) -> None:
        self.camera = camera
        self.config = config
        self._events = events
        self._threshold = math.nan  # the watched model's
        # Replaced together by `use` on the inspection thread; the metrics server's thread only reads them.
        self._detector: DriftDetector | None = None
        self._histogram: ScoreHistogram | None = None
        if metrics is not None:
            metrics.watch(SCORE_DRIFT, camera, lambda: self.alarm)
            metrics.watch(SCORE_DRIFT_STATISTIC, camera, lambda: self._last(lambda c: c.statistic))
            metrics.watch(SCORE_DRIFT_CRITICAL, camera, lambda: self._last(lambda c: c.critical))
            metrics.watch_histogram(SCORE, camera, self._snapshot)

    @property
    def alarm(self) -> bool:
        detector = self._detector
        return detector is not None and detector.alarm

    def use(self, model: ModelInfo) -> None:
        """Watch `model`'s scores from now on, against its own reference: the window starts empty, and an alarm
        raised on the previous model is cleared."""
        previous = self._detector
        if previous is not None and previous.alarm and previous.last is not None:
            self._tell("clear", "model_changed", previous, previous.last)
        self._detector, self._histogram, self._threshold = None, None, model.threshold
        reference = model.score_reference
        if reference is None:
            log.warning(
                "drift watch off for model %s: its edge bundle has no score reference (baked before drift watch, "
                "or where its validation images were missing); bake it again to turn it on",
                model.version,
            )
            return
        if len(reference.scores) < MIN_REFERENCE_SCORES:
            log.warning(
                "drift watch off for model %s: its score reference holds %d scores, fewer than the %d it needs; "
                "refit with more good images",
                model.version,
                len(reference.scores),
                MIN_REFERENCE_SCORES,
            )
            return
        self._histogram = ScoreHistogram(score_buckets(reference.scores, model.threshold))
        self._detector = DriftDetector(np.asarray(reference.scores), self.config)

    def observe(self, score: float) -> None:
        detector, histogram = self._detector, self._histogram
        if detector is None or histogram is None:
            return
        histogram.observe(score)
        change = detector.observe(score)
        if change is not None and detector.last is not None:
            self._tell(change, "drifted" if change == "alarm" else "recovered", detector, detector.last)

    def summary(self) -> dict[str, Any]:
        """For the stats payload: the state (off, filling, ok, alarm) and the last check's figures."""
        detector = self._detector
        check = None if detector is None else detector.last
        if detector is None:
            state = "off"
        elif detector.alarm:
            state = "alarm"
        else:
            state = "ok" if check is not None else "filling"
        return {
            "state": state,
            "test": TEST,
            "statistic": None if check is None else round(check.statistic, STATISTIC_DECIMALS),
            "critical": None if check is None else round(check.critical, STATISTIC_DECIMALS),
            "window_median": None if check is None else _round(check.window_median),
            "reference_median": None if detector is None else _round(detector.reference_median),
            "scores": 0 if detector is None else detector.filled,
            "window": self.config.window,
            "checks": 0 if detector is None else detector.checks,
            "alarms": 0 if detector is None else detector.alarms,
        }

    def _tell(self, state: Transition, reason: str, detector: DriftDetector, check: DriftCheck) -> None:
        threshold = self._threshold
        medians = f"median score {check.window_median:.4g} against {detector.reference_median:.4g} in the reference"
        figures = f"KS distance {check.statistic:.3f}, critical value {check.critical:.3f}"
        if state == "alarm":
            log.warning("score drift on camera '%s': %s; %s (threshold %.4g)", self.camera, figures, medians, threshold)
        else:
            log.info("score drift on camera '%s' cleared (%s): %s; %s", self.camera, reason, figures, medians)
        self._events(
            EVENT,
            {
                "state": state,
                "reason": reason,
                "test": TEST,
                "statistic": round(check.statistic, STATISTIC_DECIMALS),
                "critical": round(check.critical, STATISTIC_DECIMALS),
                "alpha": self.config.alpha,
                "window_median": _round(check.window_median),
                "reference_median": _round(detector.reference_median),
                "score_threshold": threshold,
                "window": check.window,
                "effective_window": round(check.effective_window, 1),
                "reference": len(detector.reference),
            },
        )

    def _last(self, figure: Callable[[DriftCheck], float]) -> float:
        detector = self._detector
        check = None if detector is None else detector.last
        return math.nan if check is None else figure(check)

    def _snapshot(self) -> HistogramSnapshot | None:
        histogram = self._histogram
        return None if histogram is None else histogram.snapshot()


def _round(score: float) -> float:
    return float(f"{score:.{SCORE_DIGITS}g}")
