"""Score drift: have the recent scores of a camera moved away from the bundle's score reference (the baked graph's
scores of good parts it never learned from)?

The test is two-sample Kolmogorov-Smirnov: the largest distance between the two empirical distribution functions,
against the critical value c(alpha) * sqrt(1/n + 1/m), c(alpha) = sqrt(-ln(alpha / 2) / 2), for a window of n scores
and a reference of m. Two things in a camera's stream break the test's assumption of independent scores:

- consecutive frames are correlated (a free-running camera sees each part several times; light drifts slowly).
  n is replaced by an effective size, n (1 - rho) / (1 + rho), with rho the lag-1 autocorrelation of the window's
  ranks in time order (an AR(1) approximation): a window of 1000 frames of 100 parts counts as fewer than 100;
- the reference is small (tens to hundreds of validation images) and fixed for the bundle's life, so its own
  sampling error is in every check alike: its 1/m term dominates the critical value, and the checks' false alarms
  are not independent events. bench/drift.py measures the false alarms per hour this leaves.

An alarm needs `breaches` consecutive checks past the critical value, and clears after as many below
CLEAR_FRACTION of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edge_agent.config import DriftConfig

Transition = Literal["alarm", "clear"]
# Where the effective window stops shrinking, at 1/99 of the window: the rank autocorrelation of a camera that
# sees each part for 50 frames. Past it a window would count as a handful of scores, and no shift could ever reach
# the critical value.
MAX_SERIAL_CORRELATION = 0.98

# An alarm clears only on checks whose statistic is below this share of the critical value: a shift at the edge of
# what the test can see would otherwise raise and clear the alarm by turns.
CLEAR_FRACTION = 0.8


@dataclass(frozen=True)
class DriftCheck:
    """One test of the window against the reference."""

    statistic: float  # Kolmogorov-Smirnov distance, 0 (same distribution) to 1 (no overlap)
    critical: float  # the statistic's threshold at this window's effective size
    window: int  # scores tested
    effective_window: float  # the window's size corrected for serial correlation
    window_median: float

    @property
    def breached(self) -> bool:
        return self.statistic > self.critical

    @property
    def within(self) -> bool:
        """Far enough inside the critical value to count towards clearing an alarm."""
        return self.statistic < CLEAR_FRACTION * self.critical


def ks_statistic(window_sorted: np.ndarray, reference_sorted: np.ndarray) -> float:
    """sup |F_window - F_reference|, evaluated at every point of both samples (where the supremum is reached)."""
    points = np.concatenate([window_sorted, reference_sorted])
    f_window = np.searchsorted(window_sorted, points, side="right") / len(window_sorted)
    f_reference = np.searchsorted(reference_sorted, points, side="right") / len(reference_sorted)
    return float(np.abs(f_window - f_reference).max())


def ks_critical(alpha: float, n: float, m: int) -> float:
    """The asymptotic two-sample critical value: above it, the samples differ at significance `alpha`."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt(1 / n + 1 / m)


def effective_size(scores: np.ndarray) -> float:
    """`scores` in time order, counted as independent ones: n (1 - rho) / (1 + rho), rho the lag-1 autocorrelation
    of their ranks (ties share their mean rank), clipped to [0, MAX_SERIAL_CORRELATION]."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts
    ranks = (first_rank + (counts - 1) / 2)[inverse]
    centred = ranks - ranks.mean()
    spread = float(centred @ centred)
    # Identical scores show no correlation to measure: count them as independent (a frozen, shifted stream must
    # still be able to alarm).
    rho = 0.0 if spread == 0 else float(centred[:-1] @ centred[1:]) / spread
    rho = min(max(rho, 0.0), MAX_SERIAL_CORRELATION)
    return len(scores) * (1 - rho) / (1 + rho)


class DriftDetector:
    """Feeds on one score per judged frame; every `check_every` frames once the window is full, tests it. Not
    thread-safe: one thread feeds it, others may read `alarm` and `last`."""

    def __init__(self, reference: np.ndarray, config: DriftConfig) -> None:
        self.reference = np.sort(np.asarray(reference, dtype=np.float64))
        self.reference_median = float(np.median(self.reference))
        self.config = config
        self.alarm = False
        self.last: DriftCheck | None = None
        self.checks = 0
        self.alarms = 0
        self._window = np.empty(config.window, dtype=np.float64)
        self._next = 0  # where the next score goes; with a full window, the oldest score
        self._filled = 0
        self._since_check = 0
        self._streak = 0  # consecutive checks against the current state

    @property
    def filled(self) -> int:
        return self._filled

    def observe(self, score: float) -> Transition | None:
        """The state change this score's check brought, if any."""
        self._window[self._next] = score
        self._next = (self._next + 1) % len(self._window)
        self._filled = min(self._filled + 1, len(self._window))
        self._since_check += 1
        if self._filled < len(self._window) or self._since_check < self.config.check_every:
            return None
        self._since_check = 0
        check = self._check()
        self.last = check
        self.checks += 1
        against = check.within if self.alarm else check.breached
        self._streak = self._streak + 1 if against else 0
        if self._streak < self.config.breaches:
            return None
        self._streak = 0
        self.alarm = not self.alarm
        self.alarms += self.alarm
        return "alarm" if self.alarm else "clear"

    def _check(self) -> DriftCheck:
        in_order = np.concatenate([self._window[self._next :], self._window[: self._next]])  # oldest first
        window_sorted = np.sort(in_order)
        effective = effective_size(in_order)
        return DriftCheck(
            statistic=ks_statistic(window_sorted, self.reference),
            critical=ks_critical(self.config.alpha, effective, len(self.reference)),
            window=len(in_order),
            effective_window=effective,
            window_median=float(np.median(window_sorted)),
        )
