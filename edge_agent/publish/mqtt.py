"""Verdicts to an MQTT broker with paho-mqtt v2 (topics and payloads: DESIGN.md, "The agent").

paho keeps every QoS 1 message in memory until the broker acknowledges it, and sends again after a
reconnect what was published while the broker was away, so `publish` never waits for the network.
`flush` is where a caller waits for delivery.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessageInfo
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config import MqttConfig
from edge_agent.verdict import Verdict

log = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE = "offline"


class MqttPublisher:
    """The `Publisher` for a real broker: verdict and reject topics, retained status with a last will, stats."""

    def __init__(
        self,
        config: MqttConfig,
        station: str,
        model: str,
        *,
        connect_wait_s: float = 3.0,
        stop_wait_s: float = 2.0,
        max_inflight: int = 1000,
    ) -> None:
        self.config = config
        self.station = station
        self.model = model
        self.client_id = config.client_id or f"edge-agent-{station}-{os.getpid()}"
        self._connect_wait_s = connect_wait_s
        self._stop_wait_s = stop_wait_s
        base = f"{config.topic_prefix}/{station}"
        self.status_topic = f"{base}/status"
        self.stats_topic = f"{base}/stats"
        self._base = base

        # Delivery bookkeeping. paho can acknowledge a message (on_publish, network thread) before
        # `Client.publish` has returned its mid to us, so an ack for a mid we don't know yet goes to
        # `_acked_early` and `_track` settles it. Our lock is never held while calling into paho: paho
        # holds its own message lock while calling on_publish, which then takes ours.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._unacked: dict[int, int] = {}  # mid -> qos, of messages paho has accepted and not yet confirmed
        self._acked_early: set[int] = set()
        self._qos1_unacked = 0
        self._dropped = 0

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
        client.will_set(self.status_topic, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)  # 0 = unlimited: nothing is dropped while the broker is away
        self._client = client

    # -- Publisher protocol ------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; return once connected, or after `connect_wait_s` or a first failed try.

        A broker that is down at start is not an error: paho keeps retrying (1 s to 30 s backoff) and
        everything published meanwhile is sent once it connects.
        """
        if self._started:
            return
        self._started = True
        where = f"{self.config.host}:{self.config.port}"
        self._client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self._client.loop_start()
        self._first_attempt.wait(self._connect_wait_s)
        if not self._connected.is_set():
            log.warning("MQTT broker %s not reachable yet; retrying in the background, verdicts are queued", where)

    def publish(self, verdict: Verdict) -> None:
        if self._stopped:
            raise RuntimeError("MqttPublisher.publish called after stop()")
        if verdict.published_at is None:
            verdict.published_at = time.time()
        camera_base = f"{self._base}/{verdict.camera}"
        if verdict.is_reject:
            # First: the PLC waits on this one, with a deadline.
            self._publish(f"{camera_base}/reject", verdict.reject_payload(), qos=1)
        self._publish(f"{camera_base}/verdict", verdict.payload(), qos=1)

    def flush(self, timeout_s: float) -> bool:
        """Wait until the broker has acknowledged every QoS 1 message published so far; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self._qos1_unacked > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "MQTT flush: %d message(s) still unacknowledged after %.1f s", self._qos1_unacked, timeout_s
                    )
                    return False
                self._changed.wait(remaining)
        return True

    def stop(self) -> None:
        """Say `offline` (retained), disconnect cleanly and stop the network thread. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if not self._started:
            return
        if self._connected.is_set():
            info = self._publish(self.status_topic, OFFLINE.encode(), qos=1, retain=True)
            if info is not None and not self._wait_for(info.mid, self._stop_wait_s):
                log.warning("MQTT: 'offline' status not acknowledged within %.1f s", self._stop_wait_s)
        # Without a connection there is nothing to say: the broker publishes the will once it notices.
        # Some brokers (amqtt) close the socket first, and paho's network thread then logs "not connected" as an
        # ERROR about the disconnect we asked for; nothing paho says from here on is news.
        self._client.disable_logger()
        self._client.disconnect()
        self._client.loop_stop()
        left = self.pending()
        if left:
            log.warning("MQTT stopped with %d verdict message(s) never acknowledged by the broker", left)

    # -- extras ------------------------------------------------------------------------------------

    def publish_stats(self, counters: dict[str, float | int]) -> None:
        """Counters to `<prefix>/<station>/stats`, QoS 0 (the next report replaces a lost one)."""
        if self._stopped:
            return
        body = {"station": self.station, "model": self.model, "ts": time.time(), "counters": counters}
        self._publish(self.stats_topic, json.dumps(body, separators=(",", ":")).encode(), qos=0)

    def pending(self) -> int:
        """QoS 1 messages published and not yet acknowledged by the broker."""
        with self._lock:
            return self._qos1_unacked

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def dropped(self) -> int:
        """Messages paho refused to queue (only when more than 65535 are unacknowledged at once)."""
        with self._lock:
            return self._dropped

    # -- internals ---------------------------------------------------------------------------------

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> MQTTMessageInfo | None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        return info if self._track(info, qos) else None

    def _track(self, info: MQTTMessageInfo, qos: int) -> bool:
        """Record a message paho accepted, so that `flush` can wait for it. False if paho dropped it."""
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            with self._lock:
                self._dropped += 1
            log.error("MQTT: message dropped, too many unacknowledged messages (mid space exhausted)")
            return False
        if qos == 0 and info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False  # not connected: QoS 0 is not queued, and no on_publish will come for it
        # QoS 1 with rc NO_CONN is queued by paho and sent after (re)connect: it is pending.
        with self._changed:
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
                self._changed.notify_all()
                return True
            previous = self._unacked.get(info.mid)
            if previous is not None and previous > 0:
                self._qos1_unacked -= 1  # a stale entry for a reused mid (cannot happen for live QoS 1)
            self._unacked[info.mid] = qos
            if qos > 0:
                self._qos1_unacked += 1
        return True

    def _wait_for(self, mid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while mid in self._unacked:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def _on_publish(
        self, client: Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker refused message %d: %s", mid, reason_code)
        with self._changed:
            qos = self._unacked.pop(mid, None)
            if qos is None:
                self._acked_early.add(mid)
                return
            if qos > 0:
                self._qos1_unacked -= 1
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
            log.error("MQTT broker %s:%d refused the connection: %s", self.config.host, self.config.port, reason_code)
            self._first_attempt.set()
            return
        # Runs on paho's network thread, so the broker cannot acknowledge it before `_track` ran. Before
        # `_connected` is set, so that a `flush` after `start` returned also waits for it.
        self._publish(self.status_topic, ONLINE.encode(), qos=1, retain=True)
        self._connected.set()
        self._first_attempt.set()
        log.info("MQTT connected to %s:%d as %s", self.config.host, self.config.port, self.client_id)

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
        # QoS 0 packets not yet written when the connection drops are discarded by paho and stay in
        # `_unacked` as harmless QoS 0 entries (replaced when paho reuses the mid). Removing them here
        # instead would race with a late on_publish and leave a stale "acked early" mid behind.
        waiting = self.pending()
        if self._stopped:
            log.info("MQTT disconnected")
        elif was_connected:
            log.warning("MQTT connection lost (%s); %d message(s) will be sent after reconnect", reason_code, waiting)
