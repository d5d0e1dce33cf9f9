"""systemd's notify protocol (Type=notify, WatchdogSec), spoken directly over its datagram socket: no library.

READY=1 goes out after the model is warmed up. The watchdog is fed when a frame completes end to end, or by the
acquisition thread's liveness tick while a healthy camera waits for a (hardware) trigger. A hung inference
or a stuck loop then stops the feeding, and systemd restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
USEC = 1e-6
# Fed at twice the rate systemd requires, so one slow frame does not cost a restart.
FEEDS_PER_INTERVAL = 2


class SystemdNotifier:
    """Sends notify messages when systemd asked for them (NOTIFY_SOCKET set); otherwise does nothing."""

    def __init__(
        self,
        address: str | None,
        watchdog_s: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # A leading '@' names a socket in the abstract namespace.
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._feed_every = None if watchdog_s is None else watchdog_s / FEEDS_PER_INTERVAL
        self._clock = clock
        self._last_feed = float("-inf")
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> SystemdNotifier:
        usec = os.environ.get(WATCHDOG_USEC)
        pid = os.environ.get(WATCHDOG_PID)
        mine = pid is None or pid == str(os.getpid())
        watchdog_s = int(usec) * USEC if usec and usec.isdigit() and mine else None
        return cls(os.environ.get(NOTIFY_SOCKET), watchdog_s)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")
        self.feed()

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def feed(self) -> None:
        """WATCHDOG=1, at most FEEDS_PER_INTERVAL times per watchdog interval (callers may call it per frame)."""
        if self._feed_every is None or not self.enabled:
            return
        with self._lock:
            now = self._clock()
            if now - self._last_feed < self._feed_every:
                return
            self._last_feed = now
        self._send("WATCHDOG=1")

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as exc:  # systemd gone or socket replaced: the service must keep inspecting regardless
            log.warning("could not notify systemd (%s): %s", message.splitlines()[0], exc)
