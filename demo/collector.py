"""Subscribes to a topic filter on a test broker and keeps what arrives, for assertions."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

Message = tuple[str, bytes, bool]  # topic, payload, retain flag
# Generous, as `start` returns at the SUBACK: only a broker that never answers costs the wait.
SUBSCRIBE_TIMEOUT_S = 30.0


class MqttCollector:
    """`with MqttCollector(host, port, "inspect/#") as c: ...; c.wait_for(3, 5.0)`.

    `start` returns once the broker has confirmed the subscription, so anything published after it is seen.
    """

    def __init__(self, host: str, port: int, topic_filter: str, qos: int = 1) -> None:
        self.host = host
        self.port = port
        self.topic_filter = topic_filter
        self.qos = qos
        self._messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = Client(CallbackAPIVersion.VERSION2, client_id=f"test-collector-{id(self):x}")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self, timeout_s: float = SUBSCRIBE_TIMEOUT_S) -> MqttCollector:
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise TimeoutError(f"no SUBACK for {self.topic_filter!r} from {self.host}:{self.port} in {timeout_s} s")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttCollector:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def messages(self) -> list[Message]:
        with self._cond:
            return list(self._messages)

    def on(self, topic: str) -> list[Message]:
        return [m for m in self.messages if m[0] == topic]

    def wait_for(self, n: int, timeout: float) -> list[Message]:
        """Wait until at least `n` messages arrived (or `timeout` s passed); return all received so far."""
        return self.wait_until(lambda messages: len(messages) >= n, timeout)

    def wait_until(self, done: Callable[[list[Message]], bool], timeout: float) -> list[Message]:
        """Wait until `done` holds for the messages received so far (or `timeout` s passed); return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done(self._messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return list(self._messages)

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason_code: ReasonCode, properties: Properties | None
    ) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.topic_filter, qos=self.qos)

    def _on_subscribe(
        self, client: Client, userdata: Any, mid: int, reason_codes: list[ReasonCode], properties: Properties | None
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        with self._cond:
            self._messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()
