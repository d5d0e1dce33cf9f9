"""An asyncio event loop on a daemon thread of its own, for a PLC server: the libraries are asyncio servers, and
their network I/O must never run on, or wait for, the inspection loop's thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run `coro` on the loop and wait for its result (or its exception). For start and stop only, never for
        a verdict: this waits."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{self.name}: gave up after {timeout_s:.0f} s") from None

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Have the loop call `callback` soon; returns at once. A no-op once the loop is closed."""
        with contextlib.suppress(RuntimeError):  # closed by `close`: the server is gone, nothing left to tell it
            self._loop.call_soon_threadsafe(callback)

    def close(self, timeout_s: float) -> None:
        """Stop the loop and end the thread; callbacks still queued are dropped."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("%s did not stop within %.0f s; leaving its daemon thread behind", self.name, timeout_s)
            return
        self._loop.close()
