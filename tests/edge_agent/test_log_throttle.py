from __future__ import annotations

from edge_agent.log_throttle import Admitted, LogThrottle

INTERVAL_S = 60.0
NEWS = Admitted(first=True, held_back=0)


class StepClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_of_a_kind_passes_its_repeats_wait_for_the_interval_and_are_counted() -> None:
    clock = StepClock()
    throttle = LogThrottle(INTERVAL_S, clock)
    assert throttle.admit("bad buffer") == NEWS
    held = []
    for _ in range(29):
        clock.now += 1
        held.append(throttle.admit("bad buffer"))
    assert held == [None] * 29
    clock.now += INTERVAL_S - 29  # the interval runs from the line let through, not from the last repeat
    assert throttle.admit("bad buffer") == Admitted(first=False, held_back=29)
    clock.now += INTERVAL_S  # a rare error is let through every time, with nothing held back
    assert throttle.admit("bad buffer") == Admitted(first=False, held_back=0)


def test_kinds_are_throttled_apart() -> None:
    clock = StepClock()
    throttle = LogThrottle(INTERVAL_S, clock)
    assert throttle.admit("a") == NEWS
    assert throttle.admit("b") == NEWS
    assert throttle.admit("a") is None and throttle.admit("b") is None


def test_reset_makes_every_kind_news_again() -> None:
    throttle = LogThrottle(INTERVAL_S, StepClock())
    assert throttle.admit("a") == NEWS
    assert throttle.admit("a") is None
    throttle.reset()
    assert throttle.admit("a") == NEWS


def test_past_max_kinds_the_kind_let_through_longest_ago_is_forgotten() -> None:
    clock = StepClock()
    throttle = LogThrottle(INTERVAL_S, clock, max_kinds=2)
    for kind in ("old", "new", "newest"):
        assert throttle.admit(kind) == NEWS
        clock.now += 1
    assert throttle.admit("new") is None and throttle.admit("newest") is None
    assert throttle.admit("old") == NEWS  # forgotten, so news again; "new" goes in its place
    assert throttle.admit("newest") is None
