"""Opening the edge's SQLite file the one way both the outbox and the channel registry need it.

Durability: WAL journal with `synchronous=FULL`. WAL with NORMAL survives a killed process (committed
pages sit in the OS cache) but may roll back the last commits on power loss or a kernel crash, and edge
boxes lose power. FULL fsyncs the WAL on every commit; we commit once per telemetry batch (seconds
apart), so the fsync costs nothing that matters and a batch the outbox reported as appended is on disk.

The file holds the site's measurements: it is created 0600 in folders created 0700 before SQLite opens
it, and SQLite gives its -wal and -shm files the database file's mode.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from edge_daemon.clock import Clock, SystemClock
from edge_daemon.errors import OutboxError
from edge_daemon.private_files import restrict_file, touch_private

SCHEMA_VERSION = 1


def connect(path: Path | str) -> sqlite3.Connection:
    path = Path(path)
    touch_private(path)
    for companion in ("-wal", "-shm"):  # left by an earlier release with the umask's mode
        restrict_file(path.with_name(path.name + companion))
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so the write lock is taken up front
    # instead of upgrading mid-transaction (the classic SQLITE_BUSY deadlock between two writers).
    # check_same_thread=False: callers serialise access with their own lock and may run us from
    # asyncio.to_thread workers, which are different threads each time.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"{path}: cannot enable WAL journal (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise OutboxError(f"{path}: schema version {version} is newer than this daemon ({SCHEMA_VERSION})")
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteStore:
    """Tables in the edge's SQLite file behind one connection and one lock, schema applied on open.

    The outbox, the channel registry and the uplink's command journal share the file and this way of
    holding it; each subclass names itself in `kind` for its errors.
    """

    kind = "store"

    def __init__(self, path: Path | str, schema: str, *, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = connect(self.path)
        with transaction(self._conn) as conn:
            for statement in filter(str.strip, schema.split(";")):
                conn.execute(statement)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError(f"{self.kind} {self.path} is closed")
        return self._conn
