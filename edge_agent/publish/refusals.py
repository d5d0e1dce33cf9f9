"""The broker's refusals of the connection: paho's reconnect backoff, and a log that says each refusal once
with its fix instead of once per retry."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edge_agent.log_throttle import LogThrottle

log = logging.getLogger(__name__)

# A broker that refuses the login refuses every retry the same way, all night: the first refusal for each
# reason is a warning with the fix, the repeats are debug lines, with a reminder this often.
REFUSAL_REMINDER_S = 600.0
# Refusals a username/password or ACL fix cures (MQTT 3.1.1 return codes 4 and 5, as paho names them).
CREDENTIAL_REFUSALS = frozenset({"Bad user name or password", "Not authorized"})
CREDENTIAL_HINT = "check mqtt.username and mqtt.password_file against the broker's users and ACL"


def backoff_s(attempt: int, min_s: float, max_s: float) -> float:
    """Paho's wait after failed attempt number `attempt` (1-based): doubling from `min_s`, capped at `max_s`."""
    return float(min(min_s * 2 ** (attempt - 1), max_s))


class RefusalLog:
    """Logs the broker's refusals of the connection: a warning for the first of each reason, a debug line for a
    repeat, and a warning reminder per reason at most every `reminder_s`. So a wrong password is one warning, not
    one line per retry, and a stale one is still mentioned now and then; a broker alternating between two reasons
    gives one warning for each, not one per retry."""

    def __init__(
        self,
        where: str,
        min_s: float,
        max_s: float,
        reminder_s: float = REFUSAL_REMINDER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._where = where
        self._min_s = min_s
        self._max_s = max_s
        self._throttle = LogThrottle(reminder_s, clock)
        self.attempts = 0  # refusals in a row, since the last successful connection

    def refused(self, reason: str) -> None:
        self.attempts += 1
        wait = backoff_s(self.attempts, self._min_s, self._max_s)
        admitted = self._throttle.admit(reason)
        if admitted is None:
            log.debug(
                "MQTT broker %s refused attempt %d: %s; retrying in %.0f s", self._where, self.attempts, reason, wait
            )
        elif admitted.first:
            hint = f"{CREDENTIAL_HINT}; " if reason in CREDENTIAL_REFUSALS else ""
            log.warning(
                "MQTT broker %s refused the connection: %s; %sretrying in %.0f s (backoff up to %.0f s), "
                "verdicts are kept in the outbox",
                self._where,
                reason,
                hint,
                wait,
                self._max_s,
            )
        else:
            log.warning(
                "MQTT broker %s still refuses the connection: %s (%d attempts); verdicts are kept in the outbox",
                self._where,
                reason,
                self.attempts,
            )

    def connected(self) -> int:
        """Forget the refusals (the next one is news again); returns how many there were."""
        attempts, self.attempts = self.attempts, 0
        self._throttle.reset()
        return attempts
