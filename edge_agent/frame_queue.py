from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
N = TypeVar("N")

# Notes waiting for the consumer, at most. A note costs a few hundred bytes, not a frame's pixels, so this is far
# more than a healthy loop ever holds (it drains them as fast as it takes frames); it bounds memory only while
# inference hangs (30 fps for 5.5 minutes; systemd's watchdog restarts a hung agent after 30 s).
MAX_NOTES = 10_000


@dataclass(eq=False)  # compared by identity: a frame's pixels have no use for ==
class _Slot(Generic[T, N]):
    frame: T | None
    note: N | None


class FrameQueue(Generic[T, N]):
    """Bounded hand-off from acquisition to inference.

    A live camera must never wait for inference, so when full the oldest frame is dropped and counted. It is not
    forgotten: `shrink` turns it into a note (what identifies the part, without its pixels) that takes its place,
    so the consumer still answers for that part, in capture order. The producer can also put notes of its own
    (parts the camera never sent) ahead of a frame. Only frames count against `size`.
    A replay without a rate has nothing to lose by waiting, so it blocks instead (`drop_oldest=False`).
    """

    def __init__(self, size: int, drop_oldest: bool, shrink: Callable[[T], N], max_notes: int = MAX_NOTES) -> None:
        self._slots: deque[_Slot[T, N]] = deque()
        self._size = size
        self._drop_oldest = drop_oldest
        self._shrink = shrink
        self._max_notes = max_notes
        self._cond = threading.Condition()
        self._closed = False
        self._frames = 0
        self._notes = 0
        self.dropped = 0  # frames turned into notes because the queue was full
        self.notes_lost = 0  # notes discarded past `max_notes`: parts that get no answer of their own

    def put(self, item: T, notes_before: Sequence[N] = ()) -> None:
        with self._cond:
            while not self._drop_oldest and self._frames >= self._size and not self._closed:
                self._cond.wait()
            for note in notes_before:
                self._add_note(note)
            if self._frames >= self._size:
                self._drop_oldest_frame()
            self._slots.append(_Slot(item, None))
            self._frames += 1
            self._cond.notify_all()

    def _drop_oldest_frame(self) -> None:
        slot = next(s for s in self._slots if s.frame is not None)
        assert slot.frame is not None  # for mypy: the search above found a frame
        slot.note, slot.frame = self._shrink(slot.frame), None
        self._frames -= 1
        self.dropped += 1
        self._notes += 1
        self._bound_notes()

    def _add_note(self, note: N) -> None:
        self._slots.append(_Slot(None, note))
        self._notes += 1
        self._bound_notes()

    def _bound_notes(self) -> None:
        if self._notes <= self._max_notes:
            return
        oldest = next(s for s in self._slots if s.note is not None)
        self._slots.remove(oldest)
        self._notes -= 1
        self.notes_lost += 1

    def get(self, timeout_s: float) -> T | N | None:
        """The next frame or note, in the order they were put; None on timeout or when closed and empty."""
        with self._cond:
            if not self._slots and not self._closed:
                self._cond.wait(timeout_s)
            if not self._slots:
                return None
            slot = self._slots.popleft()
            self._cond.notify_all()
            if slot.frame is not None:
                self._frames -= 1
                return slot.frame
            self._notes -= 1
            return slot.note

    def close(self) -> None:
        """No more items will come; `get` drains what is left, then returns None at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def empty(self) -> bool:
        with self._cond:
            return not self._slots

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._closed and not self._slots
