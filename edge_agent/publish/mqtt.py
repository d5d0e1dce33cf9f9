"""Verdicts to an MQTT broker with paho-mqtt v2 (topics and payloads: DESIGN.md, "The agent").

Store and forward. `publish` appends a verdict's messages to the outbox (a `VerdictStore`, a file in
production) and returns. A sender thread hands them to paho oldest first, at most `max_inflight` at a time
and only while connected, and deletes each from the outbox once the broker has acknowledged it (PUBACK).
A message the broker never acknowledged is still in the outbox after a crash or restart, and is sent again
then (MQTT QoS 1: at least once).

Order: rows go to paho in id order. After a reconnect paho first resends what was in flight, and the sender
waits until that is acknowledged before it hands over anything newer, so the broker sees the outbox order.

Threads: the loop's thread only appends (a local write, no fsync) and never touches the network. Paho's
network thread only records acknowledgements. The sender thread does the rest.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config import MqttConfig
from edge_agent.log_throttle import LogThrottle
from edge_agent.publish.security import apply_security
from edge_agent.publish.store import (
    EVENT_MESSAGE,
    REJECT_MESSAGE,
    VERDICT_MESSAGE,
    Message,
    StoreError,
    VerdictStore,
    log_due,
)
from edge_agent.verdict import Verdict

log = logging.getLogger(__name__)

CommandHandler = Callable[[str, bytes], None]

ONLINE = "online"
OFFLINE = "offline"
VERDICT_QOS = 1
COMMAND_QOS = 1
STORE_RETRY_S = 1.0  # after a failed outbox read or delete (disk full, I/O error)
# Rows read per outbox query: a read holds the store's lock, which the loop's `publish` also needs.
PEEK_BATCH = 100
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


class MqttPublisher:
    """The `Publisher` for a real broker: verdict and reject topics, retained status with a last will, stats."""

    def __init__(
        self,
        config: MqttConfig,
        station: str,
        model: str,
        store: VerdictStore,
        *,
        camera: str,
        reject_deadline_ms: float,
        connect_wait_s: float = 3.0,
        stop_wait_s: float = 2.0,
        max_inflight: int = 1000,
    ) -> None:
        self.config = config
        self.station = station
        self.camera = camera
        self.model = model
        self.client_id = config.client_id or f"edge-agent-{station}-{camera}-{os.getpid()}"
        self._store = store
        self._reject_deadline_s = reject_deadline_ms / 1000
        self._connect_wait_s = connect_wait_s
        self._stop_wait_s = stop_wait_s
        self._max_inflight = max_inflight
        base = f"{config.topic_prefix}/{station}"
        # Per camera: each camera's agent process has its own connection and last will, so with N cameras each
        # status says whether that camera is inspected, and no process overwrites another's stats.
        self.status_topic = f"{base}/{camera}/status"
        self.stats_topic = f"{base}/{camera}/stats"
        self.command_topic = f"{base}/cmd/"
        self._base = base
        self._on_command: CommandHandler | None = None

        # Everything below is guarded by `_lock`, which is never held while calling into paho or the store:
        # paho holds its own message lock while calling on_publish, which then takes ours.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # Paho may acknowledge a message before `Client.publish` has returned its mid to the caller, so
        # on_publish only queues the mid; the sender thread matches it once it has recorded what it sent.
        self._acks: list[int] = []
        self._row_of_mid: dict[int, int] = {}  # outbox rows handed to paho and not yet acknowledged
        self._status_mids: set[int] = set()  # QoS 1 status messages not yet acknowledged
        self._done_rows: list[int] = []  # acknowledged or expired, to delete from the outbox
        self._last_handed = 0  # id of the newest row handed to paho (or skipped as expired)
        self._appends = 0  # bumped by `publish`, so the sender knows there may be more to read
        self._drained_at = -1  # `_appends` when the sender last found nothing more to send
        self._resending = False  # after a reconnect, until paho's resent in-flight messages are acknowledged
        self._connected_at = 0.0  # wall time of the current connection: older rows are a replay
        self._expired_rejects = 0
        self._stopping = False

        # Written on paho's network thread only (start reads it after the first attempt is over).
        self._refusals = RefusalLog(f"{config.host}:{config.port}", config.reconnect_min_s, config.reconnect_max_s)
        self._connected = threading.Event()
        self._first_attempt = threading.Event()
        self._started = False
        self._stopped = False
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-outbox", daemon=True)

        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=True,
        )
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.will_set(self.status_topic, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=config.reconnect_min_s, max_delay=config.reconnect_max_s)
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)  # 0 = unlimited; the sender bounds what paho holds
        apply_security(client, config)
        self._client = client

    # -- Publisher protocol ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; return once connected, or after `connect_wait_s` or a first failed try.

        A broker that is down at start, or refuses the login, is not an error: paho keeps retrying (with a backoff
        from mqtt.reconnect_min_s to mqtt.reconnect_max_s), and the outbox, including what an earlier run left in
        it, is sent once it connects.
        """
        if self._started:
            return
        self._started = True
        where = f"{self.config.host}:{self.config.port}"
        backlog = self._store.count()
        if backlog:
            log.info("MQTT outbox holds %d message(s) from an earlier run; sending them first", backlog)
        self._sender.start()
        self._client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self._client.loop_start()
        self._first_attempt.wait(self._connect_wait_s)
        if not self._connected.is_set() and self._refusals.attempts == 0:  # a refusal was logged with its reason
            log.warning("MQTT broker %s not reachable yet; retrying in the background, verdicts are kept", where)

    def publish(self, verdict: Verdict) -> None:
        """Append the verdict (and its reject) to the outbox; the sender thread delivers them."""
        if self._stopped:
            raise RuntimeError("MqttPublisher.publish called after stop()")
        now = time.time()
        if verdict.published_at is None:
            verdict.published_at = now
        camera_base = f"{self._base}/{verdict.camera}"
        messages: list[Message] = []
        if verdict.is_reject:
            # First: the PLC waits on this one, with a deadline.
            deadline = verdict.captured_at + self._reject_deadline_s
            messages.append(Message(f"{camera_base}/reject", verdict.reject_payload(), REJECT_MESSAGE, now, deadline))
        messages.append(Message(f"{camera_base}/verdict", verdict.payload(), VERDICT_MESSAGE, now))
        self._store.append(messages)
        with self._changed:
            self._appends += 1
            self._changed.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until the broker has acknowledged every QoS 1 message published so far; False on timeout."""
        with self._changed:
            if self._changed.wait_for(lambda: self._pending() == 0, timeout_s):
                return True
            waiting = self._pending()
        log.warning("MQTT flush: %d message(s) still unacknowledged after %.1f s", waiting, timeout_s)
        return False

    def stop(self) -> None:
        """Stop sending, say `offline` (retained), disconnect cleanly. Unsent messages stay in the outbox."""
        if self._stopped:
            return
        self._stopped = True
        if not self._started:
            return
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._sender.join()
        # From here on this thread is the only one that publishes or reads `_acks`.
        if self._connected.is_set():
            info = self._client.publish(self.status_topic, OFFLINE.encode(), qos=1, retain=True)
            with self._changed:
                acked = self._changed.wait_for(lambda: info.mid in self._acks, self._stop_wait_s)
            if not acked:
                log.warning("MQTT: 'offline' status not acknowledged within %.1f s", self._stop_wait_s)
        # Without a connection there is nothing to say: the broker publishes the will once it notices.
        # Some brokers (amqtt) close the socket first, and paho's network thread then logs "not connected" as an
        # ERROR about the disconnect we asked for; nothing paho says from here on is news.
        self._client.disable_logger()
        self._client.disconnect()
        self._client.loop_stop()
        try:
            self._settle()  # acknowledgements that came after the sender stopped
        except StoreError as exc:
            log.error("%s; those messages will be sent again at the next start", exc)
        left = self.pending()
        if left:
            log.warning("MQTT stopped with %d message(s) not acknowledged; they stay in the outbox", left)

    # -- extras ------------------------------------------------------------------------------------

    def on_command(self, handler: CommandHandler) -> None:
        """Subscribe to `<prefix>/<station>/cmd/#` (from the next connection on; call before `start`).
        `handler(verb, payload)` runs on paho's network thread, so it must only hand the command on."""
        self._on_command = handler

    def publish_event(self, camera: str, event: str, details: dict[str, Any]) -> None:
        """What happened to the agent (a reload, a pause, a snapshot) on `<prefix>/<station>/<camera>/event`,
        QoS 1 through the outbox, so it keeps its place among the verdicts."""
        body = {"event": event, "camera": camera, "model": self.model, "ts": time.time(), **details}
        payload = json.dumps(body, separators=(",", ":")).encode()
        self._store.append([Message(f"{self._base}/{camera}/event", payload, EVENT_MESSAGE, time.time())])
        with self._changed:
            self._appends += 1
            self._changed.notify_all()

    def set_model(self, version: str) -> None:
        """The model version that stats and events name from now on (after a hot reload)."""
        self.model = version

    def publish_stats(self, counters: dict[str, float | int], drift: dict[str, Any] | None = None) -> None:
        """Counters to `<prefix>/<station>/<camera>/stats`, QoS 0, not stored (the next report replaces a lost one);
        with the drift watch on, its summary beside them."""
        if self._stopped:
            return
        body: dict[str, Any] = {
            "station": self.station,
            "camera": self.camera,
            "model": self.model,
            "ts": time.time(),
            "counters": counters,
        }
        if drift is not None:
            body["drift"] = drift
        # Paho drops QoS 0 while disconnected, and its acknowledgement (if any) matches nothing we track.
        self._client.publish(self.stats_topic, json.dumps(body, separators=(",", ":")).encode(), qos=0)

    def pending(self) -> int:
        """QoS 1 messages not yet acknowledged by the broker: the outbox plus status messages in flight."""
        with self._lock:
            return self._pending()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def dropped(self) -> int:
        """Messages the outbox dropped, oldest first, because it was full."""
        return self._store.dropped

    @property
    def expired_rejects(self) -> int:
        """Reject messages replayed after their deadline, so not sent (their verdicts were)."""
        with self._lock:
            return self._expired_rejects

    # -- sender thread -----------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(self._sender_has_work)
                if self._stopping:
                    return
            try:
                self._settle()
                self._send_next()
            except StoreError as exc:
                log.error("%s; trying again in %.0f s", exc, STORE_RETRY_S)
                with self._changed:
                    self._changed.wait_for(lambda: self._stopping, STORE_RETRY_S)

    def _sender_has_work(self) -> bool:
        more = self._room() > 0 and self._appends != self._drained_at
        return self._stopping or bool(self._acks) or bool(self._done_rows) or more

    def _room(self) -> int:
        if not self._connected.is_set() or self._resending:
            return 0
        return self._max_inflight - len(self._row_of_mid)

    def _settle(self) -> None:
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
                info = self._client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
            except ValueError as exc:
                # Paho will never take it (a wildcard in the topic, say); kept, it would stop the outbox for good.
                log.error("MQTT: dropping outbox message %d on '%s': %s", row.id, message.topic, exc)
                unsendable.append(row.id)
                continue
            with self._changed:
                self._row_of_mid[info.mid] = row.id
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

    # -- paho callbacks (network thread) -----------------------------------------------------------

    def _on_publish(
        self, client: Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker refused message %d: %s", mid, reason_code)
        with self._changed:
            self._acks.append(mid)
            self._changed.notify_all()

    def _on_connect(
        self,
        client: Client,
        userdata: Any,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._refusals.refused(str(reason_code))
            self._first_attempt.set()
            return
        refused = self._refusals.connected()
        # On paho's network thread, so the broker's acknowledgement cannot be read before the mid is recorded.
        # Before `_connected` is set, so that a `flush` after `start` returned also waits for it.
        info = client.publish(self.status_topic, ONLINE.encode(), qos=1, retain=True)
        if self._on_command is not None:
            # A clean session forgets subscriptions: subscribe again on every connection.
            client.subscribe(self.command_topic + "#", qos=COMMAND_QOS)
        with self._changed:
            self._status_mids.add(info.mid)
            self._connected_at = time.time()
            self._connected.set()
            self._changed.notify_all()
        self._first_attempt.set()
        after = f" after {refused} refused attempt(s)" if refused else ""
        log.info("MQTT connected to %s:%d as %s%s", self.config.host, self.config.port, self.client_id, after)

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        handler = self._on_command
        if handler is None or not message.topic.startswith(self.command_topic):
            return
        verb = message.topic[len(self.command_topic) :]
        if message.retain:
            # A retained command would run again at every reconnect and restart of every agent.
            log.warning("ignoring the retained command on %s; publish commands without the retain flag", message.topic)
            return
        handler(verb, bytes(message.payload))

    def _on_connect_fail(self, client: Client, userdata: Any) -> None:
        self._first_attempt.set()
        log.debug("MQTT connection to %s:%d failed; retrying", self.config.host, self.config.port)

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        with self._changed:
            self._connected.clear()
            # Paho resends what it holds only after on_connect has returned: anything newer handed to it
            # before then would overtake those.
            self._resending = bool(self._row_of_mid)
            waiting = self._pending()
        if self._stopped:
            log.info("MQTT disconnected")
        elif was_connected:
            log.warning("MQTT connection lost (%s); %d message(s) will be sent after reconnect", reason_code, waiting)
