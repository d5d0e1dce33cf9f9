"""MqttPublisher against a real mosquitto (and the demo broker helpers)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import Client
from paho.mqtt.enums import CallbackAPIVersion

from demo.broker import Broker, free_port, run_broker, start_amqtt, start_mosquitto
from demo.collector import MqttCollector
from edge_agent.config import MqttConfig
from edge_agent.publish.fake import FakePublisher, MemoryStore
from edge_agent.publish.mqtt import MqttPublisher
from edge_agent.publish.refusals import RefusalLog, backoff_s
from edge_agent.publish.store import SqliteStore, StoreError, VerdictStore
from edge_agent.verdict import ERROR, OK, REJECT, Verdict, VerdictKind
from tests.edge_agent.waiting import WAIT_S, wait_until

STATION = "press2"
REJECT_DEADLINE_MS = 100.0
PREFIX = "inspect"
BASE = f"{PREFIX}/{STATION}"
REPO = Path(__file__).resolve().parents[3]
PAYLOAD_KEYS = {
    "frame_id",
    "camera",
    "captured_at",
    "published_at",
    "latency_ms",
    "score",
    "threshold",
    "verdict",
    "model",
    "regions",
    "camera_frame_id",
}

MakePublisher = Callable[..., MqttPublisher]


def verdict(frame_id: int, kind: VerdictKind = OK, camera: str = "cam0", captured_at: float | None = None) -> Verdict:
    score = {OK: 0.2, REJECT: 0.9, ERROR: None}[kind]
    return Verdict(
        frame_id=frame_id,
        camera=camera,
        captured_at=time.time() if captured_at is None else captured_at,
        score=score,
        threshold=0.5,
        verdict=kind,
        model="patchcore-lite0",
        latency_ms=12.5,
        regions=[{"x": 1, "y": 2, "w": 3, "h": 4}] if kind == REJECT else [],
        error="bad buffer" if kind == ERROR else None,
    )


@pytest.fixture
def make_publisher() -> Iterator[MakePublisher]:
    """Builds publishers for a host/port (on an in-memory outbox unless given one) and stops them after the test."""
    made: list[MqttPublisher] = []

    def make(
        host: str, port: int, store: VerdictStore | None = None, camera: str = "cam0", **kwargs: float
    ) -> MqttPublisher:
        # `start` returns as soon as the first connection attempt is over: a long wait costs only a broker that is
        # slow to answer, as on a loaded machine. Tests without a broker pass a short one.
        kwargs.setdefault("connect_wait_s", WAIT_S)
        config = MqttConfig(host=host, port=port, topic_prefix=PREFIX)
        publisher = MqttPublisher(
            config,
            STATION,
            "patchcore-lite0",
            MemoryStore() if store is None else store,
            camera=camera,
            reject_deadline_ms=REJECT_DEADLINE_MS,
            **kwargs,  # type: ignore[arg-type]
        )
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        publisher.stop()


def started(make: MakePublisher, broker: Broker, **kwargs: float) -> MqttPublisher:
    publisher = make(broker.host, broker.port, **kwargs)
    publisher.start()
    assert publisher.connected
    return publisher


def test_verdict_goes_to_camera_verdict_topic_with_design_keys(
    mqtt_broker: Broker, make_publisher: MakePublisher
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/+/verdict") as collector:
        publisher = started(make_publisher, mqtt_broker)
        v = verdict(7, camera="gige0")
        before = time.time()
        publisher.publish(v)
        assert publisher.flush(WAIT_S)
        (topic, payload, retain), *_ = collector.wait_for(1, WAIT_S)

    assert topic == f"{BASE}/gige0/verdict"
    assert not retain
    body = json.loads(payload)
    assert body.keys() >= PAYLOAD_KEYS
    assert body["frame_id"] == 7
    assert body["camera"] == "gige0"
    assert body["verdict"] == "ok"
    assert body["model"] == "patchcore-lite0"
    assert body["threshold"] == 0.5
    assert body["regions"] == []
    assert v.published_at is not None and before <= v.published_at <= time.time()
    assert body["published_at"] == v.published_at


def test_published_at_is_kept_when_already_set(mqtt_broker: Broker, make_publisher: MakePublisher) -> None:
    publisher = started(make_publisher, mqtt_broker)
    v = verdict(1)
    v.published_at = 123.0
    publisher.publish(v)
    assert v.published_at == 123.0


def test_reject_topic_only_for_reject_and_error(mqtt_broker: Broker, make_publisher: MakePublisher) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/#") as collector:
        publisher = started(make_publisher, mqtt_broker)
        kinds: list[VerdictKind] = [OK, REJECT, OK, ERROR, OK]
        for i, kind in enumerate(kinds):
            publisher.publish(verdict(i, kind))
        assert publisher.flush(WAIT_S)
        # 1 retained-online status, 5 verdicts, 2 rejects
        collector.wait_for(1 + len(kinds) + 2, WAIT_S)
        time.sleep(0.1)  # nothing more may come

    rejects = [json.loads(p) for _, p, _ in collector.on(f"{BASE}/cam0/reject")]
    verdicts = [json.loads(p) for _, p, _ in collector.on(f"{BASE}/cam0/verdict")]
    assert [v["frame_id"] for v in verdicts] == [0, 1, 2, 3, 4]
    assert [(r["frame_id"], r["verdict"]) for r in rejects] == [(1, "reject"), (3, "error")]
    assert {"frame_id", "camera_frame_id", "captured_at"} <= rejects[0].keys()
    assert len(collector.messages) == 1 + 5 + 2


def test_status_online_is_retained_for_a_late_subscriber(mqtt_broker: Broker, make_publisher: MakePublisher) -> None:
    publisher = started(make_publisher, mqtt_broker)
    assert publisher.flush(WAIT_S)  # the 'online' status is QoS 1 too
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/cam0/status") as collector:
        messages = collector.wait_for(1, WAIT_S)
    assert messages == [(f"{BASE}/cam0/status", b"online", True)]


def test_status_offline_after_stop_and_stop_is_idempotent(mqtt_broker: Broker, make_publisher: MakePublisher) -> None:
    # `stop` waits for the broker to acknowledge 'offline' before it disconnects: long enough for a loaded machine.
    publisher = started(make_publisher, mqtt_broker, stop_wait_s=WAIT_S)
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/cam0/status") as live:
        live.wait_for(1, WAIT_S)  # the retained 'online'
        publisher.stop()
        publisher.stop()
        messages = live.wait_for(2, WAIT_S)
    assert [p for _, p, _ in messages] == [b"online", b"offline"]
    assert not publisher.connected
    with pytest.raises(RuntimeError):
        publisher.publish(verdict(1))
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/cam0/status") as late:
        assert late.wait_for(1, WAIT_S) == [(f"{BASE}/cam0/status", b"offline", True)]


def test_last_will_says_offline_when_the_agent_dies(mqtt_broker: Broker, make_publisher: MakePublisher) -> None:
    """With two cameras, each agent process has its own status: one dying leaves the other online."""
    other = make_publisher(mqtt_broker.host, mqtt_broker.port, camera="cam1")
    other.start()
    assert other.flush(WAIT_S)
    script = textwrap.dedent(
        f"""
        import time
        from edge_agent.config import MqttConfig
        from edge_agent.publish.fake import MemoryStore
        from edge_agent.publish.mqtt import MqttPublisher
        config = MqttConfig(host={mqtt_broker.host!r}, port={mqtt_broker.port})
        p = MqttPublisher(
            config, {STATION!r}, "m", MemoryStore(), camera="cam0", reject_deadline_ms=100, connect_wait_s={WAIT_S}
        )
        p.start()
        print("connected" if p.connected else "not connected", flush=True)
        time.sleep(600)  # until killed
        """
    )
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/cam0/status") as collector:
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "connected"
            collector.wait_for(1, WAIT_S)
        finally:
            proc.kill()  # no clean disconnect: the broker must publish the will
            proc.wait(5)
        messages = collector.wait_for(2, WAIT_S)
    assert [(p, r) for _, p, r in messages] == [(b"online", False), (b"offline", False)]
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/+/status") as late:
        retained = sorted(late.wait_for(2, WAIT_S))
    assert retained == [(f"{BASE}/cam0/status", b"offline", True), (f"{BASE}/cam1/status", b"online", True)]


def test_flush_after_200_verdicts(mqtt_broker: Broker, make_publisher: MakePublisher) -> None:
    n = 200
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/cam0/verdict") as collector:
        publisher = started(make_publisher, mqtt_broker)
        for i in range(n):
            publisher.publish(verdict(i))
        assert publisher.flush(WAIT_S)
        assert publisher.pending() == 0
        messages = collector.wait_for(n, WAIT_S)
    assert [json.loads(p)["frame_id"] for _, p, _ in messages] == list(range(n))


def test_stats_topic(mqtt_broker: Broker, make_publisher: MakePublisher) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/cam0/stats") as collector:
        publisher = started(make_publisher, mqtt_broker)
        publisher.publish_stats({"frames": 10, "dropped": 1, "fps": 29.5})
        (topic, payload, _), *_ = collector.wait_for(1, WAIT_S)
    assert topic == f"{BASE}/cam0/stats"
    body = json.loads(payload)
    assert body["counters"] == {"frames": 10, "dropped": 1, "fps": 29.5}
    assert (body["station"], body["camera"]) == (STATION, "cam0")
    assert publisher.pending() == 0  # QoS 0 is never counted as pending


def test_flush_times_out_without_a_broker(make_publisher: MakePublisher) -> None:
    publisher = make_publisher("127.0.0.1", free_port(), connect_wait_s=0.5)
    publisher.start()
    assert not publisher.connected
    publisher.publish(verdict(1, REJECT))
    publisher.publish_stats({"frames": 1})  # QoS 0 while offline: not queued, not pending
    assert publisher.pending() == 2  # verdict + reject
    # On a thread, so that a flush waiting for the connection (which never comes) fails the test instead of hanging
    # it. What is checked is that it gives up at its timeout, not how fast: the deadline is far beyond any delay.
    flushed: list[bool] = []
    flusher = threading.Thread(target=lambda: flushed.append(publisher.flush(0.2)))
    started_at = time.monotonic()
    flusher.start()
    flusher.join(WAIT_S)
    assert not flusher.is_alive(), f"flush(0.2) still waiting after {WAIT_S} s"
    assert flushed == [False] and time.monotonic() - started_at >= 0.2


def test_verdicts_published_before_the_broker_is_up_arrive_after_connect(make_publisher: MakePublisher) -> None:
    port = free_port()
    # start() returns on the first refused connection; paho retries 1 s later, by which time the
    # broker is up and the collector subscribed.
    publisher = make_publisher("127.0.0.1", port, connect_wait_s=0.5)
    publisher.start()
    assert not publisher.connected
    for i in range(5):
        publisher.publish(verdict(i))
    assert publisher.pending() == 5
    with (
        start_mosquitto(port=port) as broker,
        MqttCollector(broker.host, broker.port, f"{BASE}/cam0/verdict") as collector,
    ):
        assert publisher.flush(WAIT_S)
        assert publisher.pending() == 0
        messages = collector.wait_for(5, WAIT_S)
        assert publisher.connected
    assert [json.loads(p)["frame_id"] for _, p, _ in messages] == [0, 1, 2, 3, 4]


def test_client_id_from_config_or_default() -> None:
    store = MemoryStore()
    named = MqttPublisher(MqttConfig(client_id="line2-agent"), STATION, "m", store, camera="c", reject_deadline_ms=100)
    default = MqttPublisher(MqttConfig(), STATION, "m", store, camera="cam0", reject_deadline_ms=100)
    assert named.client_id == "line2-agent"
    assert default.client_id.startswith(f"edge-agent-{STATION}-cam0-")
    named.stop()  # never started: a no-op
    default.stop()


def _round_trip(broker: Broker) -> bytes:
    with MqttCollector(broker.host, broker.port, "demo/#") as collector:
        client = Client(CallbackAPIVersion.VERSION2, client_id="demo-check")
        client.connect(broker.host, broker.port)
        client.loop_start()
        client.publish("demo/hello", b"hi", qos=1).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        messages = collector.wait_for(1, WAIT_S)
    return messages[0][1]


def test_run_broker_yields_a_working_broker() -> None:
    with run_broker() as broker:
        assert broker.host == "127.0.0.1"
        assert broker.kind in ("mosquitto", "amqtt")
        assert _round_trip(broker) == b"hi"


def test_amqtt_fallback_broker_works_with_the_publisher(make_publisher: MakePublisher) -> None:
    pytest.importorskip("amqtt")
    with start_amqtt() as broker:
        assert broker.kind == "amqtt"
        with MqttCollector(broker.host, broker.port, f"{BASE}/#") as collector:
            publisher = started(make_publisher, broker)
            publisher.publish(verdict(1, REJECT))
            assert publisher.flush(WAIT_S)
            collector.wait_for(3, WAIT_S)
        publisher.stop()
    topics = sorted(t for t, _, _ in collector.messages)
    assert topics == [f"{BASE}/cam0/reject", f"{BASE}/cam0/status", f"{BASE}/cam0/verdict"]


def test_fake_publisher_records_what_the_loop_gives_it() -> None:
    fake = FakePublisher()
    fake.start()
    fake.publish(verdict(1))
    fake.publish(verdict(2, ERROR))
    assert fake.flush(1.0)
    fake.stop()
    assert fake.started and fake.stopped
    assert [v.frame_id for v in fake.verdicts] == [1, 2]
    assert [v.frame_id for v in fake.rejects] == [2]
    assert all(v.published_at is not None for v in fake.verdicts)


# -- store and forward: the outbox across broker outages and restarts ---------------------------------------


def frame_ids(messages: list[tuple[str, bytes, bool]]) -> list[int]:
    return [json.loads(p)["frame_id"] for _, p, _ in messages]


def test_verdicts_from_an_outage_reach_a_restarted_broker_in_order(
    tmp_path: Path, make_publisher: MakePublisher
) -> None:
    with SqliteStore(tmp_path / "outbox.sqlite", 1000) as store:
        with (
            start_mosquitto() as broker,
            MqttCollector(broker.host, broker.port, f"{BASE}/cam0/verdict") as before,
        ):
            # The first broker picks its port (retrying if it is taken meanwhile); the restart reuses it.
            port = broker.port
            publisher = make_publisher(broker.host, port, store)
            publisher.start()
            for i in range(10):
                publisher.publish(verdict(i))
            assert publisher.flush(WAIT_S)
            assert frame_ids(before.wait_for(10, WAIT_S)) == list(range(10))
        wait_until(lambda: not publisher.connected, "the publisher to notice that the broker is gone")
        for i in range(10, 40):
            publisher.publish(verdict(i))
        assert store.count() == 30  # on disk, not in paho
        with (
            start_mosquitto(port=port) as broker,
            MqttCollector(broker.host, broker.port, f"{BASE}/cam0/verdict") as after,
        ):
            assert publisher.flush(WAIT_S)
            assert frame_ids(after.wait_for(30, WAIT_S)) == list(range(10, 40))
        assert store.count() == 0


def test_messages_in_flight_when_the_broker_dies_are_resent_before_newer_ones(
    tmp_path: Path, make_publisher: MakePublisher
) -> None:
    n = 3000
    with SqliteStore(tmp_path / "outbox.sqlite", 10_000) as store:
        with start_mosquitto() as broker:
            port = broker.port  # the restart below reuses it
            publisher = make_publisher(broker.host, port, store)
            # Not a `with`: it stays subscribed until the broker dies.
            before = MqttCollector(broker.host, broker.port, f"{BASE}/cam0/verdict").start()
            publisher.start()
            for i in range(n // 2):
                publisher.publish(verdict(i))
        before.stop()
        # The broker went away with messages in flight; the rest queue up on disk.
        for i in range(n // 2, n):
            publisher.publish(verdict(i))
        # Paho resends what was in flight only after on_connect returns. Widen that gap, so that newer rows handed
        # to paho too early would overtake the resent ones.
        on_connect = publisher._client.on_connect
        assert on_connect is not None

        def slow_on_connect(*args: Any) -> None:
            on_connect(*args)
            time.sleep(0.3)

        publisher._client.on_connect = slow_on_connect
        with (
            start_mosquitto(port=port) as broker,
            MqttCollector(broker.host, broker.port, f"{BASE}/cam0/verdict") as after,
        ):
            assert publisher.flush(WAIT_S)
            wait_until(lambda: frame_ids(after.messages)[-1:] == [n - 1], f"verdict {n - 1} on the new broker")
            resent = frame_ids(after.messages)
    # Paho resends the unacknowledged ones first, then the sender goes on after them: one run, in order, each once.
    # (The dying broker may have forwarded some it never acknowledged, which then come twice: at least once.)
    assert resent == list(range(resent[0], n))
    assert frame_ids(before.messages) == list(range(len(before.messages)))


def test_backlog_of_a_stopped_publisher_is_delivered_by_the_next_one(
    tmp_path: Path, make_publisher: MakePublisher
) -> None:
    path = tmp_path / "outbox.sqlite"
    n = 25
    with SqliteStore(path, 1000) as store:
        first = make_publisher("127.0.0.1", free_port(), store, connect_wait_s=0.5)
        first.start()
        for i in range(n):
            first.publish(verdict(i, REJECT if i % 5 == 0 else OK))
        assert not first.flush(0.2)
        first.stop()
    with (
        SqliteStore(path, 1000) as store,
        start_mosquitto() as broker,
        MqttCollector(broker.host, broker.port, f"{BASE}/cam0/verdict") as collector,
    ):
        assert store.count() == n + n // 5  # each reject also has its reject-topic message
        second = make_publisher(broker.host, broker.port, store)
        second.start()
        assert second.flush(WAIT_S)
        assert frame_ids(collector.wait_for(n, WAIT_S)) == list(range(n))
        assert store.count() == 0
        second.stop()
    with SqliteStore(path, 1000) as store:
        assert store.count() == 0


def test_expired_reject_is_not_replayed_on_the_reject_topic_but_its_verdict_is(
    tmp_path: Path, make_publisher: MakePublisher
) -> None:
    port = free_port()
    with SqliteStore(tmp_path / "outbox.sqlite", 1000) as store:
        publisher = make_publisher("127.0.0.1", port, store, connect_wait_s=0.5)
        publisher.start()
        publisher.publish(verdict(1, REJECT, captured_at=time.time() - 60))  # long past its 100 ms deadline
        publisher.publish(verdict(2, OK))
        publisher.publish(verdict(3, ERROR, captured_at=time.time() + 60))  # replayed before its deadline
        with (
            start_mosquitto(port=port) as broker,
            MqttCollector(broker.host, broker.port, f"{BASE}/cam0/#") as collector,
        ):
            assert publisher.flush(WAIT_S)
            collector.wait_for(4, WAIT_S)
            time.sleep(0.1)  # nothing more may come
        assert publisher.expired_rejects == 1
        assert store.count() == 0
    assert frame_ids(collector.on(f"{BASE}/cam0/verdict")) == [1, 2, 3]
    assert frame_ids(collector.on(f"{BASE}/cam0/reject")) == [3]


def test_a_late_reject_published_while_connected_is_still_sent(
    mqtt_broker: Broker, make_publisher: MakePublisher
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/cam0/reject") as collector:
        publisher = started(make_publisher, mqtt_broker)
        late = verdict(1, REJECT, captured_at=time.time() - 60)
        late.late = True
        publisher.publish(late)
        assert publisher.flush(WAIT_S)
        messages = collector.wait_for(1, WAIT_S)
    assert [json.loads(p)["late"] for _, p, _ in messages] == [True]
    assert publisher.expired_rejects == 0


def test_full_outbox_keeps_the_newest_in_order(make_publisher: MakePublisher) -> None:
    port = free_port()
    store = MemoryStore(max_messages=10)
    publisher = make_publisher("127.0.0.1", port, store, connect_wait_s=0.5)
    publisher.start()
    for i in range(15):
        publisher.publish(verdict(i))
    assert publisher.dropped == 5
    assert publisher.pending() == 10
    with (
        start_mosquitto(port=port) as broker,
        MqttCollector(broker.host, broker.port, f"{BASE}/cam0/verdict") as collector,
    ):
        assert publisher.flush(WAIT_S)
        assert frame_ids(collector.wait_for(10, WAIT_S)) == list(range(5, 15))


def test_order_is_kept_with_a_small_in_flight_window(mqtt_broker: Broker, make_publisher: MakePublisher) -> None:
    n = 300
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/cam0/#") as collector:
        publisher = make_publisher(mqtt_broker.host, mqtt_broker.port, max_inflight=3)
        publisher.start()
        for i in range(n):
            publisher.publish(verdict(i, REJECT if i % 7 == 0 else OK))
        assert publisher.flush(WAIT_S)
        collector.wait_for(n + len(range(0, n, 7)), WAIT_S)
    assert frame_ids(collector.on(f"{BASE}/cam0/verdict")) == list(range(n))
    assert frame_ids(collector.on(f"{BASE}/cam0/reject")) == list(range(0, n, 7))


class FlakyStore(MemoryStore):
    """Fails the first delete, as a full disk would."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def delete(self, ids: Sequence[int]) -> None:
        if not self.failed:
            self.failed = True
            raise StoreError("MQTT outbox test: cannot delete sent messages (disk full)")
        super().delete(ids)


def test_a_failed_outbox_delete_is_retried(mqtt_broker: Broker, make_publisher: MakePublisher) -> None:
    store = FlakyStore()
    publisher = make_publisher(mqtt_broker.host, mqtt_broker.port, store)
    publisher.start()
    publisher.publish(verdict(1))
    assert publisher.flush(WAIT_S)
    assert store.failed
    assert store.count() == 0


def test_a_message_paho_refuses_is_dropped_and_the_rest_still_go(
    mqtt_broker: Broker, make_publisher: MakePublisher
) -> None:
    with MqttCollector(mqtt_broker.host, mqtt_broker.port, f"{BASE}/+/verdict") as collector:
        publisher = started(make_publisher, mqtt_broker)
        publisher.publish(verdict(1, camera="cam#0"))  # a wildcard: not a valid topic to publish on
        publisher.publish(verdict(2))
        assert publisher.flush(WAIT_S)
        assert frame_ids(collector.wait_for(1, WAIT_S)) == [2]


# --- a broker that refuses the login --------------------------------------------------------------

AUTH_USER = "line2"
AUTH_PASSWORD = "s3cret-pass"
REFUSED_ATTEMPTS = 4  # at 0, 1, 3 and 5 s with the backoff below: enough to see it capped
BACKOFF_MIN_S = 1
BACKOFF_CAP_S = 2
MQTT_LOGGER = "edge_agent.publish"  # the session (mqtt) and its refusal log (refusals)


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Broker]:
    """mosquitto with one user: a client giving a wrong password is refused, an anonymous one (the collector)
    is let in."""
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), AUTH_USER, AUTH_PASSWORD], check=True, timeout=30)
    # Started as root, mosquitto would switch to its own user, which cannot read pytest's private tmp.
    settings = f"allow_anonymous true\npassword_file {passwd}\n" + ("user root\n" if os.geteuid() == 0 else "")
    with start_mosquitto(listener_settings=settings) as broker:
        yield broker


def login_publisher(broker: Broker, store: VerdictStore, password: str, folder: Path) -> MqttPublisher:
    password_file = folder / f"{password}.password"
    password_file.write_text(password + "\n")
    config = MqttConfig(
        host=broker.host,
        port=broker.port,
        topic_prefix=PREFIX,
        username=AUTH_USER,
        password_file=password_file,
        reconnect_min_s=BACKOFF_MIN_S,
        reconnect_max_s=BACKOFF_CAP_S,
    )
    return MqttPublisher(
        config,
        STATION,
        "patchcore-lite0",
        store,
        camera="cam0",
        reject_deadline_ms=REJECT_DEADLINE_MS,
        connect_wait_s=WAIT_S,
    )


def most_attempts(elapsed_s: float, min_s: float, max_s: float) -> int:
    """Connection attempts paho's backoff allows in `elapsed_s`: one at once, then one after each wait."""
    attempts, waited = 1, backoff_s(1, min_s, max_s)
    while waited <= elapsed_s:
        attempts += 1
        waited += backoff_s(attempts, min_s, max_s)
    return attempts


def connect_lines(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if r.getMessage().startswith("Sending CONNECT")]


def refusal_lines(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if r.name.startswith(MQTT_LOGGER) and "refuse" in r.getMessage()]


def test_a_refused_login_is_logged_once_retried_with_backoff_and_keeps_the_verdicts(
    password_broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=MQTT_LOGGER)
    path = tmp_path / "outbox.sqlite"
    with SqliteStore(path, 1000) as store:
        wrong = login_publisher(password_broker, store, "wrong-pass", tmp_path)
        began = time.monotonic()
        try:
            wrong.start()
            for i in range(3):
                wrong.publish(verdict(i, REJECT if i == 1 else OK))
            # Counted in attempts, not in seconds: on a busy machine they only come later, never closer together.
            wait_until(
                lambda: len(connect_lines(caplog.records)) >= REFUSED_ATTEMPTS,
                f"{REFUSED_ATTEMPTS} connection attempts",
            )
            records = list(caplog.records)
            elapsed = time.monotonic() - began  # after the records: each attempt in them came within it
            assert not wrong.connected
            assert store.count() == 4  # three verdicts and the reject of the second, all still in the outbox
        finally:
            wrong.stop()
    bound = most_attempts(elapsed, BACKOFF_MIN_S, BACKOFF_CAP_S)
    connects = connect_lines(records)
    refusals = refusal_lines(records)
    # Paho retried, but only as often as the capped backoff allows: no tight loop.
    assert REFUSED_ATTEMPTS <= len(connects) <= bound, (len(connects), bound)
    # At most one line per refused attempt, and one warning for them all (same reason every time).
    assert 2 <= len(refusals) <= len(connects), [r.getMessage() for r in refusals]
    warnings = [r for r in refusals if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "Not authorized" in warnings[0].getMessage() and "mqtt.password_file" in warnings[0].getMessage()
    assert not any("not reachable" in r.getMessage() for r in records)  # the broker was reachable: it said no

    # Nothing was lost: with the right password the next run delivers the outage's verdicts, in order.
    with (
        SqliteStore(path, 1000) as store,
        MqttCollector(password_broker.host, password_broker.port, f"{BASE}/cam0/verdict") as collector,
    ):
        right = login_publisher(password_broker, store, AUTH_PASSWORD, tmp_path)
        try:
            right.start()
            assert right.connected
            assert right.flush(WAIT_S)
            assert frame_ids(collector.wait_for(3, WAIT_S)) == [0, 1, 2]
        finally:
            right.stop()


class StepClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_refusal_log_warns_on_news_and_reminds_rarely(caplog: pytest.LogCaptureFixture) -> None:
    clock = StepClock()
    refusals = RefusalLog("broker:1883", BACKOFF_MIN_S, BACKOFF_CAP_S, reminder_s=600.0, clock=clock)
    caplog.set_level(logging.DEBUG, logger=MQTT_LOGGER)

    def levels_after(reason: str, seconds_later: float) -> list[str]:
        caplog.clear()
        clock.now += seconds_later
        refusals.refused(reason)
        return [r.levelname for r in caplog.records]

    assert levels_after("Not authorized", 0) == ["WARNING"]
    assert [levels_after("Not authorized", BACKOFF_CAP_S) for _ in range(50)] == [["DEBUG"]] * 50
    assert levels_after("Server unavailable", BACKOFF_CAP_S) == ["WARNING"]  # a new reason is news
    assert levels_after("Server unavailable", 599) == ["DEBUG"]
    assert levels_after("Server unavailable", 1) == ["WARNING"]  # the reminder, 600 s after the last warning
    assert "54 attempts" in caplog.text
    assert refusals.connected() == 54
    assert levels_after("Server unavailable", 1) == ["WARNING"]  # refused again after a connection: news again


def test_refusal_log_warns_once_per_reason_for_a_broker_alternating_between_two(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = StepClock()
    refusals = RefusalLog("broker:1883", BACKOFF_MIN_S, BACKOFF_CAP_S, reminder_s=600.0, clock=clock)
    caplog.set_level(logging.DEBUG, logger=MQTT_LOGGER)
    for _ in range(20):
        for reason in ("Not authorized", "Server unavailable"):
            clock.now += BACKOFF_CAP_S
            refusals.refused(reason)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2 and "Not authorized" in warnings[0] and "Server unavailable" in warnings[1]


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_s(n, 1, 30) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert most_attempts(5.0, 1, 2) == 4  # at 0, 1, 3 and 5 s
