"""The outbox: SqliteStore on a real file, and the in-memory fake held to the same contract."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from pipeline import Pipeline

from edge_agent.config import MqttConfig
from edge_agent.publish.fake import MemoryStore
from edge_agent.publish.store import (
    REJECT_MESSAGE,
    VERDICT_MESSAGE,
    Message,
    SqliteStore,
    StoreError,
    VerdictStore,
    store_path,
)

AGENT = [sys.executable, "-m", "edge_agent.cli"]
THREAD_TIMEOUT_S = 60.0  # only against a hang: 2000 SQLite commits on a loaded machine may take a while

MakeStore = Callable[[int], VerdictStore]


def message(n: int) -> Message:
    return Message("inspect/s1/cam0/verdict", f"payload {n}".encode(), VERDICT_MESSAGE, 100.0 + n)


def payloads(store: VerdictStore, limit: int = 1000) -> list[bytes]:
    return [row.message.payload for row in store.peek(limit)]


@pytest.fixture(params=["sqlite", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    made: list[VerdictStore] = []

    def make(max_messages: int = 1000) -> VerdictStore:
        store: VerdictStore
        if request.param == "sqlite":
            store = SqliteStore(tmp_path / "outbox.sqlite", max_messages)
        else:
            store = MemoryStore(max_messages)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def test_messages_come_back_in_insertion_order_with_every_field(make_store: MakeStore) -> None:
    store = make_store(1000)
    reject = Message("inspect/s1/cam0/reject", b"\x00\xffr", REJECT_MESSAGE, 12.5, 12.6, qos=1, retain=True)
    store.append([reject, message(1)])
    store.append([message(2)])
    rows = store.peek(10)
    assert [row.message for row in rows] == [reject, message(1), message(2)]
    assert [row.id for row in rows] == sorted(row.id for row in rows)
    assert store.count() == 3


def test_peek_returns_the_oldest_n_after_an_id(make_store: MakeStore) -> None:
    store = make_store(1000)
    store.append([message(i) for i in range(10)])
    first = store.peek(3)
    assert [row.message.payload for row in first] == [b"payload 0", b"payload 1", b"payload 2"]
    after = store.peek(3, after=first[-1].id)
    assert [row.message.payload for row in after] == [b"payload 3", b"payload 4", b"payload 5"]
    assert store.peek(5, after=store.peek(10)[-1].id) == []


def test_delete_by_id_keeps_the_rest_in_order_and_ignores_unknown_ids(make_store: MakeStore) -> None:
    store = make_store(1000)
    store.append([message(i) for i in range(5)])
    ids = [row.id for row in store.peek(5)]
    store.delete([ids[1], ids[3], 999_999])
    store.delete([])
    assert payloads(store) == [b"payload 0", b"payload 2", b"payload 4"]
    assert store.count() == 3


def test_full_store_drops_the_oldest_and_counts_them(make_store: MakeStore, caplog: pytest.LogCaptureFixture) -> None:
    store = make_store(5)
    with caplog.at_level(logging.WARNING, logger="edge_agent.publish.store"):
        store.append([message(i) for i in range(4)])
        store.append([message(4), message(5)])
        store.append([message(6)])
    assert payloads(store) == [f"payload {i}".encode() for i in range(2, 7)]
    assert store.count() == 5
    assert store.dropped == 2
    assert "is full (5 messages)" in caplog.text
    assert len(caplog.records) == 1  # the first drop is logged, not every one


def test_ids_are_never_reused_after_the_store_empties(make_store: MakeStore) -> None:
    store = make_store(1000)
    store.append([message(1), message(2)])
    last = store.peek(2)[-1].id
    store.delete([row.id for row in store.peek(2)])
    store.append([message(3)])
    assert store.peek(1)[0].id > last


def test_sqlite_backlog_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with SqliteStore(path, 1000) as store:
        store.append([message(i) for i in range(3)])
        last = store.peek(3)[-1].id
    with SqliteStore(path, 1000) as again:
        assert again.count() == 3
        assert payloads(again) == [b"payload 0", b"payload 1", b"payload 2"]
        again.append([message(3)])
        assert again.peek(10)[-1].id > last


def test_sqlite_backlog_survives_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from edge_agent.publish.store import Message, SqliteStore\n"
        "store = SqliteStore(Path(sys.argv[1]), 1000)\n"
        "store.append([Message('t/verdict', b'kept', 'verdict', 1.0)])\n"
        "os._exit(9)  # no close, no checkpoint\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 9, result.stderr
    with SqliteStore(path, 1000) as store:
        assert payloads(store) == [b"kept"]


def test_sqlite_append_and_delete_from_two_threads(tmp_path: Path) -> None:
    n = 2000
    with SqliteStore(tmp_path / "outbox.sqlite", n) as store:
        deleted: list[bytes] = []
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                for i in range(n):
                    store.append([message(i)])
            except BaseException as exc:
                errors.append(exc)

        def consume() -> None:
            deadline = time.monotonic() + THREAD_TIMEOUT_S
            try:
                while len(deleted) < n and time.monotonic() < deadline:
                    rows = store.peek(50)
                    store.delete([row.id for row in rows])
                    deleted.extend(row.message.payload for row in rows)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(THREAD_TIMEOUT_S)
        assert not errors
        assert deleted == [f"payload {i}".encode() for i in range(n)]
        assert store.count() == 0
        assert store.dropped == 0


def test_a_second_owner_of_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with SqliteStore(path, 10) as store:
        store.append([message(1)])
        with pytest.raises(StoreError, match="in use by another edge-agent process"):
            SqliteStore(path, 10)
    with SqliteStore(path, 10) as after_close:
        assert after_close.count() == 1


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"is corrupt or not an outbox .*move the file aside"):
        SqliteStore(path, 10)


def test_damaged_pages_are_found_at_open_and_reported_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with SqliteStore(path, 1000) as store:
        store.append([Message("t/verdict", bytes(2000), VERDICT_MESSAGE, 1.0)] * 50)
    data = bytearray(path.read_bytes())
    page = 4096
    data[page : 3 * page] = b"\xff" * (2 * page)  # the first b-tree pages after the header page
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="is corrupt") as raised:
        SqliteStore(path, 10)
    assert "\n" not in str(raised.value)


def test_unusable_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(StoreError, match=r"cannot create the MQTT outbox folder .*set mqtt.store_dir"):
        SqliteStore(blocker / "outbox.sqlite", 10)
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(StoreError, match=r"dir.sqlite: cannot open .*set mqtt.store_dir"):
        SqliteStore(tmp_path / "dir.sqlite", 10)


def test_store_path_from_config_systemd_or_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert store_path(MqttConfig(store_dir=tmp_path / "x"), "cam0") == tmp_path / "x" / "outbox-cam0.sqlite"
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/state:/other")
    assert store_path(MqttConfig(), "gige0") == tmp_path / "state" / "outbox-gige0.sqlite"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert store_path(MqttConfig(), "gige0") == tmp_path / "xdg" / "edge-agent" / "outbox-gige0.sqlite"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store_path(MqttConfig(), "cam0") == tmp_path / "home" / ".local/state/edge-agent/outbox-cam0.sqlite"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("corrupt", "is corrupt or not an outbox"),
        ("unwritable", "cannot create the MQTT outbox folder"),
    ],
)
def test_cli_bad_store_is_one_line_and_exit_2(tmp_path: Path, pipeline: Pipeline, case: str, message: str) -> None:
    if case == "corrupt":
        store = tmp_path / "outbox"
        store.mkdir()
        (store / "outbox-cam0.sqlite").write_bytes(b"garbage" * 1000)
    else:
        (tmp_path / "blocker").write_text("not a folder")
        store = tmp_path / "blocker" / "outbox"
    config = {
        "version": 1,
        "station": "s1",
        "cameras": {"cam0": {"source": "folder", "path": str(tmp_path)}},
        "model": {"path": str(pipeline.edge)},
        "mqtt": {"port": 1, "store_dir": str(store)},
        "metrics": {"enabled": False},
        "archive": {"enabled": False},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [*AGENT, "run", "--camera", "cam0", "--config", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: MQTT outbox") or last.startswith("error: cannot create the MQTT outbox")
    assert message in last
