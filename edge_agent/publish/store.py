"""The outbox: MQTT messages wait here until the broker has acknowledged them, across outages and restarts.

`VerdictStore` is the interface the publisher uses; `SqliteStore` is the real one (one SQLite file) and
`fake.MemoryStore` the one for tests. Messages come back in insertion order. When the store is full, the
oldest are dropped, counted and logged: a bounded disk is worth more on a factory PC than week-old verdicts.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Protocol

from edge_agent.config import MqttConfig
from edge_agent.errors import AgentError

log = logging.getLogger(__name__)

MessageKind = Literal["verdict", "reject", "event"]
VERDICT_MESSAGE: MessageKind = "verdict"
REJECT_MESSAGE: MessageKind = "reject"
EVENT_MESSAGE: MessageKind = "event"

SCHEMA_VERSION = 1  # PRAGMA user_version of the files this code writes
# Long enough for an agent that is just exiting to let go of the file; one that keeps running never will.
LOCK_WAIT_S = 1.0
# During a long outage every append may drop, and every replayed reject may have expired: a log line for
# each would bury the journal.
LOG_EVERY = 1000
SYSTEMD_STATE = "STATE_DIRECTORY"
XDG_STATE = "XDG_STATE_HOME"
FIX_PATH = "make the folder writable for the agent's user, or set mqtt.store_dir"
FIX_FILE = "move the file aside (its unsent messages are lost) or set mqtt.store_dir to another folder"

# SQLite's primary result codes that point at something the user can fix.
SQLITE_BUSY = 5
SQLITE_READONLY = 8
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26
PRIMARY_CODE_MASK = 0xFF

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    kind TEXT NOT NULL,
    created_at REAL NOT NULL,
    deadline_at REAL
)
"""
_COLUMNS = "topic, payload, qos, retain, kind, created_at, deadline_at"


class StoreError(AgentError):
    """The outbox file cannot be used (unwritable, corrupt, in use, disk full)."""


@dataclass(frozen=True)
class Message:
    """One outgoing MQTT message. Times are wall clock (time.time()): a monotonic clock restarts with the process."""

    topic: str
    payload: bytes
    kind: MessageKind
    created_at: float
    deadline_at: float | None = None  # rejects: after this the PLC drops it as stale
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class StoredMessage:
    id: int  # grows with insertion order and is never reused
    message: Message


class VerdictStore(Protocol):
    """Thread-safe: the loop thread appends while the publisher's threads peek and delete."""

    def append(self, messages: Sequence[Message]) -> None:
        """Store durably, in order; drops the oldest messages when this would exceed the bound."""
        ...

    def peek(self, limit: int, after: int = 0) -> list[StoredMessage]:
        """The oldest `limit` messages with an id above `after`, oldest first."""
        ...

    def delete(self, ids: Sequence[int]) -> None:
        """Forget these messages; ids no longer stored are ignored."""
        ...

    def count(self) -> int:
        """Messages stored (the backlog)."""
        ...

    @property
    def dropped(self) -> int:
        """Messages dropped because the store was full, since it was opened."""
        ...

    def close(self) -> None: ...


def store_path(config: MqttConfig, camera: str) -> Path:
    """outbox-<camera>.sqlite in mqtt.store_dir, else in systemd's StateDirectory or the user's state folder.

    One file per camera, because each camera runs in its own agent process and a file has one owner.
    """
    systemd = os.environ.get(SYSTEMD_STATE)
    if config.store_dir is not None:
        folder = config.store_dir
    elif systemd:
        folder = Path(systemd.split(":")[0])
    else:
        folder = Path(os.environ.get(XDG_STATE) or Path.home() / ".local" / "state") / "edge-agent"
    return folder / f"outbox-{camera}.sqlite"


def log_due(before: int, total: int) -> bool:
    """Whether a counter going from `before` to `total` is worth a log line: the first time, then every LOG_EVERY."""
    return before == 0 or before // LOG_EVERY != total // LOG_EVERY


def log_drops(where: str, new: int, total: int, limit: int) -> None:
    if log_due(total - new, total):
        log.warning("MQTT outbox %s is full (%d messages): dropped the oldest; %d dropped so far", where, limit, total)


class SqliteStore:
    """The outbox in one SQLite file that one process owns (a second agent on the same file is refused)."""

    def __init__(self, path: Path, max_messages: int) -> None:
        self.path = path
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._dropped = 0
        # This process is the file's only writer (exclusive lock), so the count can live in memory.
        self._conn, self._count = self._open()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def append(self, messages: Sequence[Message]) -> None:
        rows = [(m.topic, m.payload, m.qos, int(m.retain), m.kind, m.created_at, m.deadline_at) for m in messages]
        with self._lock:
            over = max(0, self._count + len(rows) - self.max_messages)
            with self._transaction("store a message"):
                self._conn.executemany(f"INSERT INTO outbox ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                if over:
                    self._conn.execute(
                        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (over,)
                    )
            self._count += len(rows) - over
            self._dropped += over
            total = self._dropped
        if over:
            log_drops(str(self.path), over, total, self.max_messages)

    def peek(self, limit: int, after: int = 0) -> list[StoredMessage]:
        with self._lock, self._errors("read the backlog"):
            rows = self._conn.execute(
                f"SELECT id, {_COLUMNS} FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
        return [
            StoredMessage(row_id, Message(topic, bytes(payload), kind, created_at, deadline_at, qos, bool(retain)))
            for row_id, topic, payload, qos, retain, kind, created_at, deadline_at in rows
        ]

    def delete(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self._lock:
            with self._transaction("delete sent messages"):
                deleted = self._conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids]).rowcount
            self._count -= deleted

    def count(self) -> int:
        with self._lock:
            return self._count

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._dropped

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- internals ---------------------------------------------------------------------------------

    def _open(self) -> tuple[sqlite3.Connection, int]:
        """Connect, take the file, check it, create the table if new; also returns the number of messages."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the MQTT outbox folder {self.path.parent} ({exc.strerror}); {FIX_PATH}"
            ) from None
        try:
            conn = sqlite3.connect(self.path, timeout=LOCK_WAIT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(self._describe("open", exc)) from None
        try:
            self._prepare(conn)
            count = int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(self._describe("open", exc)) from None
        except StoreError:
            conn.close()
            raise
        return conn, count

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # EXCLUSIVE: the first write below takes a lock held until close, so a second agent on this file
        # fails at start instead of both sending (and deleting) the same backlog. Set before WAL, so that
        # WAL needs no shared-memory file.
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"MQTT outbox {self.path}: SQLite cannot use WAL there (journal mode {mode}); {FIX_PATH}")
        # NORMAL, not FULL: in WAL mode a commit is then a write to the OS, not an fsync. It survives the agent
        # crashing or being killed, and the file is never corrupted; only an OS crash or power cut can lose the
        # last commits since the previous checkpoint. FULL fsyncs every commit, on the loop's thread before each
        # verdict is sent: measured median 4 ms per append, against 0.02 ms with NORMAL.
        conn.execute("PRAGMA synchronous=NORMAL")
        problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            first = " ".join(problems[0].split())  # SQLite's report spans lines; the error is one
            raise StoreError(f"MQTT outbox {self.path} is corrupt ({first}); {FIX_FILE}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise StoreError(
                f"MQTT outbox {self.path} has format {version}, this agent reads format {SCHEMA_VERSION}; {FIX_FILE}"
            )
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")

    @contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        with self._errors(what):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(self._describe(what, exc)) from None

    def _describe(self, what: str, exc: sqlite3.Error) -> str:
        code = getattr(exc, "sqlite_errorcode", 0) & PRIMARY_CODE_MASK
        where = f"MQTT outbox {self.path}"
        if code == SQLITE_BUSY:
            return f"{where} is in use by another edge-agent process; stop that one, or give each camera its own name"
        if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
            return f"{where} is corrupt or not an outbox ({exc}); {FIX_FILE}"
        if code == SQLITE_FULL:
            return f"{where}: cannot {what}, the disk is full; free some space"
        if code in (SQLITE_READONLY, SQLITE_CANTOPEN):
            return f"{where}: cannot {what} ({exc}); {FIX_PATH}"
        return f"{where}: cannot {what} ({exc})"
