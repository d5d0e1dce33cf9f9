"""Verdicts to an MQTT broker with paho-mqtt v2 (topics and payloads: DESIGN.md, "The agent").

Store and forward. `publish` appends a verdict's messages to the outbox (a `VerdictStore`, a file in
production) and returns; an `OutboxSender` thread delivers them and deletes each once the broker acknowledged
it (PUBACK). A message the broker never acknowledged is still in the outbox after a crash or restart, and is
sent again then (MQTT QoS 1: at least once). This module owns the session: connecting, reconnecting with a
backoff, the retained status with its last will, stats, events and commands.

Threads: the loop's thread only appends (a local write, no fsync) and never touches the network. Paho's
network thread only records acknowledgements and connection changes. The sender thread does the rest.
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
from edge_agent.publish.outbox_sender import OutboxSender
from edge_agent.publish.refusals import RefusalLog
from edge_agent.publish.security import apply_security
from edge_agent.publish.store import EVENT_MESSAGE, REJECT_MESSAGE, VERDICT_MESSAGE, Message, StoreError, VerdictStore
from edge_agent.verdict import Verdict

log = logging.getLogger(__name__)

CommandHandler = Callable[[str, bytes], None]

ONLINE = "online"
OFFLINE = "offline"
VERDICT_QOS = 1
COMMAND_QOS = 1


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

        self._outbox = OutboxSender(
            store, self._hand_to_paho, max_inflight=max_inflight, reject_deadline_s=self._reject_deadline_s
        )

        # Written on paho's network thread only (start reads it after the first attempt is over).
        self._refusals = RefusalLog(f"{config.host}:{config.port}", config.reconnect_min_s, config.reconnect_max_s)
        self._connected = threading.Event()
        self._first_attempt = threading.Event()
        self._started = False
        self._stopped = False

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
        self._outbox.start()
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
        self._outbox.appended()

    def flush(self, timeout_s: float) -> bool:
        """Wait until the broker has acknowledged every QoS 1 message published so far; False on timeout."""
        waiting = self._outbox.wait_drained(timeout_s)
        if waiting == 0:
            return True
        log.warning("MQTT flush: %d message(s) still unacknowledged after %.1f s", waiting, timeout_s)
        return False

    def stop(self) -> None:
        """Stop sending, say `offline` (retained), disconnect cleanly. Unsent messages stay in the outbox."""
        if self._stopped:
            return
        self._stopped = True
        if not self._started:
            return
        self._outbox.stop()
        # From here on this thread is the only one that publishes.
        if self._connected.is_set():
            info = self._client.publish(self.status_topic, OFFLINE.encode(), qos=1, retain=True)
            if not self._outbox.wait_acknowledged(info.mid, self._stop_wait_s):
                log.warning("MQTT: 'offline' status not acknowledged within %.1f s", self._stop_wait_s)
        # Without a connection there is nothing to say: the broker publishes the will once it notices.
        # Some brokers (amqtt) close the socket first, and paho's network thread then logs "not connected" as an
        # ERROR about the disconnect we asked for; nothing paho says from here on is news.
        self._client.disable_logger()
        self._client.disconnect()
        self._client.loop_stop()
        try:
            self._outbox.settle()  # acknowledgements that came after the sender stopped
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
        self._outbox.appended()

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
        return self._outbox.pending()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def dropped(self) -> int:
        """Messages the outbox dropped, oldest first, because it was full."""
        return self._store.dropped

    @property
    def in_flight(self) -> int:
        """Outbox messages handed to the broker and not yet acknowledged by it."""
        return self._outbox.in_flight

    @property
    def expired_rejects(self) -> int:
        """Reject messages replayed after their deadline, so not sent (their verdicts were)."""
        return self._outbox.expired_rejects

    def _hand_to_paho(self, message: Message) -> int:
        """The outbox sender's way out (its thread); paho raises ValueError for a message it will never take."""
        info = self._client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
        return info.mid

    # -- paho callbacks (network thread) -----------------------------------------------------------

    def _on_publish(
        self, client: Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker refused message %d: %s", mid, reason_code)
        self._outbox.acknowledged(mid)

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
        self._outbox.connected(info.mid)
        self._connected.set()
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
        self._connected.clear()
        waiting = self._outbox.disconnected()
        if self._stopped:
            log.info("MQTT disconnected")
        elif was_connected:
            log.warning("MQTT connection lost (%s); %d message(s) will be sent after reconnect", reason_code, waiting)
