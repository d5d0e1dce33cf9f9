from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FrameQueue(Generic[T]):
    """Bounded hand-off from acquisition to inference.

    A live camera must never wait for inference, so when full the oldest frame is dropped and counted.
    A replay without a rate has nothing to lose by waiting, so it blocks instead (`drop_oldest=False`).
    """

    def __init__(self, size: int, drop_oldest: bool) -> None:
        self._items: deque[T] = deque()
        self._size = size
        self._drop_oldest = drop_oldest
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._cond:
            while not self._drop_oldest and len(self._items) >= self._size and not self._closed:
                self._cond.wait()
            if len(self._items) >= self._size:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout_s: float) -> T | None:
        """The next item; None on timeout or when closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout_s)
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more items will come; `get` drains what is left, then returns None at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def empty(self) -> bool:
        with self._cond:
            return not self._items

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._closed and not self._items
