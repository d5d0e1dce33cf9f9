"""The outbox drain: a thread that hands the outbox's messages to paho oldest first, at most `max_inflight` at
a time and only while connected, and deletes each from the outbox once the broker has acknowledged it.

Order: rows go to paho in id order. After a reconnect paho first resends what was in flight, and the sender
waits until that is acknowledged before it hands over anything newer, so the broker sees the outbox order.

Everything here is guarded by `_lock`, which is never held while calling into paho or the store: paho holds its
own message lock while calling on_publish, which then takes ours.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge_agent.publish.store import REJECT_MESSAGE, Message, StoreError, VerdictStore, log_due

log = logging.getLogger(__name__)

STORE_RETRY_S = 1.0  # after a failed outbox read or delete (disk full, I/O error)
# Rows read per outbox query: a read holds the store's lock, which the loop's `publish` also needs.
PEEK_BATCH = 100

# Hands one message to paho and returns its message id; raises ValueError for a message paho will never take.
Send = Callable[[Message], int]


class OutboxSender:
    def __init__(self, store: VerdictStore, send: Send, *, max_inflight: int, reject_deadline_s: float) -> None:
        self._store = store
        self._send = send
        self._max_inflight = max_inflight
        self._reject_deadline_s = reject_deadline_s
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # Paho may acknowledge a message before `Client.publish` has returned its mid to the caller, so
        # `acknowledged` only queues the mid; the sender thread matches it once it has recorded what it sent.
        self._acks: list[int] = []
        self._row_of_mid: dict[int, int] = {}  # outbox rows handed to paho and not yet acknowledged
        self._status_mids: set[int] = set()  # QoS 1 status messages not yet acknowledged
        self._done_rows: list[int] = []  # acknowledged or expired, to delete from the outbox
        self._last_handed = 0  # id of the newest row handed to paho (or skipped as expired)
        self._appends = 0  # bumped by `appended`, so the sender knows there may be more to read
        self._drained_at = -1  # `_appends` when the sender last found nothing more to send
        self._connected = False
        self._resending = False  # after a reconnect, until paho's resent in-flight messages are acknowledged
        self._connected_at = 0.0  # wall time of the current connection: older rows are a replay
        self._expired_rejects = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; acknowledgements keep being queued, for `wait_acknowledged` and `settle`."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join()

    # -- called from the loop's thread and paho's network thread ------------------------------------

    def appended(self) -> None:
        """The outbox has new rows."""
        with self._changed:
            self._appends += 1
            self._changed.notify_all()

    def acknowledged(self, mid: int) -> None:
        with self._changed:
            self._acks.append(mid)
            self._changed.notify_all()

    def connected(self, status_mid: int) -> None:
        """A connection is up and its `online` status message (QoS 1) is in flight as `status_mid`."""
        with self._changed:
            self._status_mids.add(status_mid)
            self._connected_at = time.time()
            self._connected = True
            self._changed.notify_all()

    def disconnected(self) -> int:
        """The connection is down; returns the messages that wait for the next one."""
        with self._changed:
            self._connected = False
            # Paho resends what it holds only after on_connect has returned: anything newer handed to it
            # before then would overtake those.
            self._resending = bool(self._row_of_mid)
            return self._pending()

    def wait_acknowledged(self, mid: int, timeout_s: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: mid in self._acks, timeout_s)

    def wait_drained(self, timeout_s: float) -> int:
        """Wait until every QoS 1 message so far is acknowledged; returns how many are still not (0: all are)."""
        with self._changed:
            self._changed.wait_for(lambda: self._pending() == 0, timeout_s)
            return self._pending()

    def pending(self) -> int:
        """QoS 1 messages not yet acknowledged by the broker: the outbox plus status messages in flight."""
        with self._lock:
            return self._pending()

    @property
    def in_flight(self) -> int:
        """Outbox messages handed to paho and not yet acknowledged."""
        with self._lock:
            return len(self._row_of_mid)

    @property
    def expired_rejects(self) -> int:
        """Reject messages replayed after their deadline, so not sent (their verdicts were)."""
        with self._lock:
            return self._expired_rejects

    def settle(self) -> None:
        """Delete the acknowledged and the expired rows from the outbox."""
        with self._changed:
            for mid in self._acks:
                row = self._row_of_mid.pop(mid, None)
                if row is not None:
                    self._done_rows.append(row)
                else:
                    self._status_mids.discard(mid)  # or a QoS 0 stats message: nothing to do
            self._acks.clear()
            if not self._row_of_mid:
                self._resending = False
            done, self._done_rows = self._done_rows, []
            self._changed.notify_all()
        if not done:
            return
        try:
            self._store.delete(done)
        except StoreError:
            with self._changed:
                self._done_rows[:0] = done
            raise
        with self._changed:
            self._changed.notify_all()

    # -- the sender thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(self._has_work)
                if self._stopping:
                    return
            try:
                self.settle()
                self._send_next()
            except StoreError as exc:
                log.error("%s; trying again in %.0f s", exc, STORE_RETRY_S)
                with self._changed:
                    self._changed.wait_for(lambda: self._stopping, STORE_RETRY_S)

    def _has_work(self) -> bool:
        more = self._room() > 0 and self._appends != self._drained_at
        return self._stopping or bool(self._acks) or bool(self._done_rows) or more

    def _room(self) -> int:
        if not self._connected or self._resending:
            return 0
        return self._max_inflight - len(self._row_of_mid)

    def _send_next(self) -> None:
        """Hand the next rows to paho, as many as fit in flight."""
        with self._changed:
            room = self._room()
            if room <= 0 or self._appends == self._drained_at:
                return
            after, appends, connected_at = self._last_handed, self._appends, self._connected_at
        limit = min(room, PEEK_BATCH)
        rows = self._store.peek(limit, after)
        now = time.time()
        expired: list[int] = []
        unsendable: list[int] = []
        for row in rows:
            message = row.message
            if self._expired(message, connected_at, now):
                expired.append(row.id)
                continue
            try:
                mid = self._send(message)
            except ValueError as exc:
                # Paho will never take it (a wildcard in the topic, say); kept, it would stop the outbox for good.
                log.error("MQTT: dropping outbox message %d on '%s': %s", row.id, message.topic, exc)
                unsendable.append(row.id)
                continue
            with self._changed:
                self._row_of_mid[mid] = row.id
        with self._changed:
            if rows:
                self._last_handed = rows[-1].id
            if len(rows) < limit:
                self._drained_at = appends
            self._done_rows.extend(expired + unsendable)
            self._expired_rejects += len(expired)
            total = self._expired_rejects
        if expired and log_due(total - len(expired), total):
            log.warning(
                "MQTT: expired rejects (replayed after their %.0f ms deadline) are not sent on the reject topic, "
                "their verdicts are; %d so far",
                self._reject_deadline_s * 1000,
                total,
            )

    @staticmethod
    def _expired(message: Message, connected_at: float, now: float) -> bool:
        """A reject from before this connection (a replay) whose deadline has passed: the PLC would only drop it.

        A reject published while connected goes out even when late: the PLC decides, with `late` and
        `captured_at` in the payload.
        """
        return (
            message.kind == REJECT_MESSAGE
            and message.deadline_at is not None
            and message.created_at < connected_at
            and now > message.deadline_at
        )

    def _pending(self) -> int:
        return self._store.count() + len(self._status_mids)
