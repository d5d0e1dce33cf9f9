"""The drift watch between the loop and the outside: score_drift events, gauges and the score histogram on /metrics,
the stats summary, and what a model without a score reference or a model swap does to it."""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.bundle import ScoreReference
from edge_agent.config import DriftConfig
from edge_agent.drift_watch import EVENT, DriftWatch
from edge_agent.loop import InspectionLoop, LoopOptions
from edge_agent.metrics import SCORE, SCORE_DRIFT, SCORE_DRIFT_CRITICAL, SCORE_DRIFT_STATISTIC, Metrics
from edge_agent.model import ModelInfo
from edge_agent.publish.fake import FakePublisher
from edge_agent.runtimes.fake import FakeRuntime
from edge_agent.score_histogram import score_buckets
from tests.edge_agent.test_agent_metrics import parse
from tests.edge_agent.test_loop import MODEL, brightness, replay

CONFIG = DriftConfig(window=20, check_every=10, breaches=2)
CAMERA = (("camera", "cam0"),)
REFERENCE = ScoreReference(scores=tuple(float(s) for s in np.linspace(10.0, 60.0, 50)))
WATCHED = ModelInfo(
    version="m-1", threshold=100.0, score_scale=100.0, geometry=MODEL.geometry, score_reference=REFERENCE
)


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, details: dict[str, Any]) -> None:
        self.seen.append((event, details))


def _watch(metrics: Metrics | None = None) -> tuple[DriftWatch, Events]:
    events = Events()
    watch = DriftWatch("cam0", CONFIG, events, metrics)
    watch.use(WATCHED)
    return watch, events


def test_a_shift_raises_one_event_with_the_figures_and_sets_the_gauges() -> None:
    metrics = Metrics("m-1")
    watch, events = _watch(metrics)
    assert math.isnan(parse(metrics.render())[SCORE_DRIFT_STATISTIC, CAMERA])  # nothing tested yet
    for score in np.random.default_rng(0).permutation(np.linspace(10.0, 60.0, 20)):
        watch.observe(float(score))
    assert watch.summary()["state"] == "ok" and events.seen == []
    for _ in range(30):  # the two checks of a window all at 90 (breaches=2) raise it
        watch.observe(90.0)
    [(event, details)] = events.seen
    assert event == EVENT
    assert details["state"] == "alarm" and details["reason"] == "drifted" and details["test"] == "ks"
    assert details["statistic"] == 1.0 and details["statistic"] > details["critical"]
    assert (details["window_median"], details["reference_median"], details["score_threshold"]) == (90.0, 35.0, 100.0)
    assert (details["window"], details["reference"], details["alpha"]) == (20, 50, CONFIG.alpha)
    samples = parse(metrics.render())
    assert samples[SCORE_DRIFT, CAMERA] == 1
    assert samples[SCORE_DRIFT_STATISTIC, CAMERA] == 1.0
    # c(0.001) * sqrt(1/20 + 1/50): a window of 20 equal scores counts as 20 independent ones.
    assert samples[SCORE_DRIFT_CRITICAL, CAMERA] == pytest.approx(1.9495 * math.sqrt(1 / 20 + 1 / 50), rel=1e-4)
    assert details["critical"] == round(samples[SCORE_DRIFT_CRITICAL, CAMERA], 4)
    summary = watch.summary()
    assert (summary["state"], summary["alarms"], summary["scores"], summary["checks"]) == ("alarm", 1, 20, 4)


def test_the_score_histogram_has_the_reference_quantiles_and_the_threshold_as_buckets() -> None:
    metrics = Metrics("m-1")
    watch, _ = _watch(metrics)
    for score in (5.0, 35.0, 99.0, 100.0, 1000.0):
        watch.observe(score)
    samples = parse(metrics.render())
    buckets = {dict(labels)["le"]: v for (name, labels), v in samples.items() if name == f"{SCORE}_bucket"}
    bounds = score_buckets(REFERENCE.scores, WATCHED.threshold)
    assert [float(le) for le in buckets] == [*bounds, math.inf]
    assert 100.0 in bounds and bounds[0] == pytest.approx(np.quantile(REFERENCE.scores, 0.01), rel=1e-5)
    assert buckets["100.0"] == 4  # le: a score on the threshold counts in its bucket
    assert buckets["+Inf"] == samples[f"{SCORE}_count", CAMERA] == 5
    assert samples[f"{SCORE}_sum", CAMERA] == pytest.approx(1239.0)


def test_a_model_without_a_reference_turns_the_watch_off_and_clears_its_alarm(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics("m-1")
    watch, events = _watch(metrics)
    for _ in range(40):
        watch.observe(90.0)
    assert watch.alarm
    with caplog.at_level(logging.WARNING, logger="edge_agent.drift_watch"):
        watch.use(ModelInfo(version="old-1", threshold=1.0, score_scale=1.0, geometry=MODEL.geometry))
    assert [(e, d["state"], d["reason"]) for e, d in events.seen] == [
        (EVENT, "alarm", "drifted"),
        (EVENT, "clear", "model_changed"),
    ]
    assert events.seen[1][1]["score_threshold"] == 100.0  # the figures of the model it was raised on
    [line] = [m for m in caplog.messages if "drift watch off" in m]
    assert "for model old-1: its edge bundle has no score reference" in line
    watch.observe(90.0)
    samples = parse(metrics.render())
    assert samples[SCORE_DRIFT, CAMERA] == 0
    assert not any(name in (f"{SCORE}_bucket", f"{SCORE}_count") for name, _ in samples)
    assert watch.summary()["state"] == "off"


def test_too_small_a_reference_turns_the_watch_off(caplog: pytest.LogCaptureFixture) -> None:
    small = ScoreReference(scores=(1.0, 2.0, 3.0))
    with caplog.at_level(logging.WARNING, logger="edge_agent.drift_watch"):
        watch, _ = _watch()
        watch.use(ModelInfo("m-2", 5.0, 5.0, MODEL.geometry, small))
    assert "holds 3 scores, fewer than the 10 it needs" in caplog.text
    assert watch.summary()["state"] == "off"


def test_the_loop_feeds_judged_scores_and_puts_the_summary_in_its_stats(tmp_path: Path) -> None:
    """Frames far brighter than the reference's scores: an alarm on the event topic, the summary in the stats."""
    camera = replay(tmp_path, [250] * 40)
    publisher = FakePublisher()
    reference = ScoreReference(scores=tuple(float(s) for s in range(10, 60)))
    model = ModelInfo("test-1", 100.0, 100.0, MODEL.geometry, reference)
    watch = DriftWatch("cam0", CONFIG, lambda event, details: publisher.publish_event("cam0", event, details))
    InspectionLoop(camera, FakeRuntime(brightness), publisher, model, LoopOptions(), drift=watch).run(threading.Event())
    assert [(camera, event, details["state"]) for camera, event, details in publisher.events] == [
        ("cam0", EVENT, "alarm")
    ]
    final = publisher.drift_stats[-1]
    assert (final["state"], final["scores"], final["window_median"], final["reference_median"]) == (
        "alarm",
        20,
        250.0,
        34.5,
    )
