"""The drift detector on seeded streams: quiet on stationary ones, alarmed soon after a shift, clear after it ends."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import DriftConfig, load_config
from edge_agent.drift import CLEAR_FRACTION, DriftDetector, effective_size, ks_critical, ks_statistic
from edge_agent.errors import AgentError

CONFIG = DriftConfig()  # the defaults: window 1000, a check every 100, alpha 0.001, 3 breaches
REFERENCE_SIZE = 150  # a typical validation set
HOUR_AT_30_FPS = 108_000
SHAPE, SCALE = 4.0, 0.05  # a skewed, positive score distribution, like PatchCore's
# A 1-sd shift moves the KS distance to about 0.4, twice the critical value: its alarm needs the window to turn
# over by half (500 frames) and 3 checks, so 10 checks is ample and 20 would mean the test lost its power.
CHECKS_TO_ALARM = 10
CHECKS_TO_CLEAR = 20  # most shifted scores must leave the window (up to 10 checks), then 3 checks below 80%


def _reference(rng: np.random.Generator) -> np.ndarray:
    return rng.gamma(SHAPE, SCALE, REFERENCE_SIZE)


def _feed(detector: DriftDetector, stream: np.ndarray) -> list[tuple[int, str]]:
    """(frame index, change) for every alarm or clear."""
    changes = []
    for i, score in enumerate(stream):
        change = detector.observe(float(score))
        if change is not None:
            changes.append((i, change))
    return changes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_alarm_in_an_hour_of_fresh_scores_from_the_reference_distribution(seed: int) -> None:
    """Not resampled from the reference: new draws, so the reference's own sampling error is in every check."""
    rng = np.random.default_rng(seed)
    detector = DriftDetector(_reference(rng), CONFIG)
    assert _feed(detector, rng.gamma(SHAPE, SCALE, HOUR_AT_30_FPS)) == []
    assert detector.checks == (HOUR_AT_30_FPS - CONFIG.window) // CONFIG.check_every + 1


def test_no_alarm_when_each_part_is_seen_for_twenty_frames() -> None:
    """Without the effective window, 50 parts in a window of 1000 frames would breach a critical value set for
    1000 independent scores in about one check of four."""
    rng = np.random.default_rng(3)
    parts = rng.gamma(SHAPE, SCALE, HOUR_AT_30_FPS // 20)
    stream = np.repeat(parts, 20) + rng.normal(0, 0.001, HOUR_AT_30_FPS)
    detector = DriftDetector(_reference(rng), CONFIG)
    assert _feed(detector, stream) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_one_sd_shift_alarms_within_ten_checks_and_clears_after_the_return(seed: int) -> None:
    rng = np.random.default_rng(seed)
    reference = _reference(rng)
    before, during, after = 3 * CONFIG.window, 3 * CONFIG.window, 3 * CONFIG.window
    stream = rng.gamma(SHAPE, SCALE, before + during + after)
    stream[before : before + during] += reference.std()
    changes = _feed(DriftDetector(reference, CONFIG), stream)
    assert [change for _, change in changes] == ["alarm", "clear"]
    (raised, _), (cleared, _) = changes
    assert before <= raised < before + CHECKS_TO_ALARM * CONFIG.check_every
    assert before + during <= cleared < before + during + CHECKS_TO_CLEAR * CONFIG.check_every


def test_one_breach_short_of_the_count_raises_nothing() -> None:
    config = DriftConfig(window=20, check_every=20, breaches=3)
    rng = np.random.default_rng(0)
    reference = rng.random(100)
    detector = DriftDetector(reference, config)
    far, near = np.full(20, 5.0), rng.random(20)
    assert _feed(detector, np.concatenate([far, far, near, far, far])) == []  # two breaches, a pass, two breaches
    assert _feed(detector, far) == [(19, "alarm")]
    assert detector.alarm and detector.alarms == 1


def test_an_alarm_clears_only_well_inside_the_critical_value() -> None:
    config = DriftConfig(window=100, check_every=100, breaches=1)
    rng = np.random.default_rng(0)
    reference = rng.random(200)
    detector = DriftDetector(reference, config)
    assert _feed(detector, np.full(100, 5.0)) == [(99, "alarm")]
    # A share of the window just above the reference: a distance between 80% and 100% of the critical value.
    edge = rng.random(100)
    edge[:20] = 1.0 + rng.random(20)
    assert _feed(detector, rng.permutation(edge)) == []
    check = detector.last
    assert check is not None and CLEAR_FRACTION * check.critical < check.statistic < check.critical
    assert detector.alarm
    assert _feed(detector, rng.random(100)) == [(99, "clear")]


def test_ks_statistic_and_critical_value() -> None:
    reference = np.arange(10.0)
    assert ks_statistic(np.arange(10.0), reference) == 0.0
    assert ks_statistic(np.arange(10.0) + 100, reference) == 1.0
    assert ks_statistic(np.arange(5.0), reference) == pytest.approx(0.5)
    # c(0.05) = 1.358, the textbook value.
    assert ks_critical(0.05, 100, 100) == pytest.approx(1.358 * np.sqrt(2 / 100), rel=1e-3)


def test_effective_size_of_independent_repeated_and_constant_windows() -> None:
    rng = np.random.default_rng(0)
    independent = rng.random(1000)
    assert effective_size(independent) == pytest.approx(1000, rel=0.1)
    # Each value 10 times: lag-1 rank autocorrelation 0.9, so n (1 - 0.9) / (1 + 0.9) = n / 19.
    assert effective_size(np.repeat(independent[:100], 10)) == pytest.approx(1000 / 19, rel=0.1)
    assert effective_size(np.full(1000, 0.5)) == 1000  # nothing to measure: counted as independent


MINIMAL = """\
version: 1
station: s1
cameras: {cam0: {source: folder, path: /data}}
model: {path: /models/m}
"""


@pytest.mark.parametrize(
    ("drift", "message"),
    [
        ("{window: 100, check_every: 200}", "field 'drift': Value error, check_every (200) is above window (100)"),
        ("{alpha: 0.5}", "field 'drift.alpha': Input should be less than 0.5"),
        ("{window: 10}", "field 'drift.window': Input should be greater than or equal to 20"),
        ("{breaches: 0}", "field 'drift.breaches': Input should be greater than or equal to 1"),
        ("{windows: 100}", "unknown field 'drift.windows'"),
    ],
)
def test_a_bad_drift_section_names_the_field(tmp_path: Path, drift: str, message: str) -> None:
    (tmp_path / "agent.yaml").write_text(MINIMAL + f"drift: {drift}\n")
    with pytest.raises(AgentError, match=re.escape(message)):
        load_config(tmp_path / "agent.yaml")


def test_drift_watch_is_on_by_default_and_can_be_turned_off(tmp_path: Path) -> None:
    (tmp_path / "agent.yaml").write_text(MINIMAL)
    assert load_config(tmp_path / "agent.yaml").drift == CONFIG and CONFIG.enabled
    (tmp_path / "agent.yaml").write_text(MINIMAL + "drift: {enabled: false}\n")
    assert not load_config(tmp_path / "agent.yaml").drift.enabled
