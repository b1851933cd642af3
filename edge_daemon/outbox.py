"""Durable outbox for telemetry batches: written before sending, deleted only when the cloud acks.

- `append(payload)` commits the batch (fsynced, see `sqlite_db`) and returns its `batch_seq`.
  batch_seq comes from an AUTOINCREMENT key, which SQLite guarantees never to reuse, even after the
  newest rows are deleted and the file reopened: the cloud's ledger dedups on (edge, batch_seq), so a
  reused number would make it drop new data as a duplicate.
- `pending(limit, after_seq)` lists batches in batch_seq order; `ack(seq)` / `ack_up_to(seq)` delete.
- `advance_seq(seq)` makes the next batch_seq larger than `seq`. The uplink calls it with the cloud's
  last stored batch_seq from Welcome, so a replaced or wiped outbox cannot restart numbering below
  what the cloud already holds.

Overflow policy: payload bytes are bounded by `max_bytes`. An append that would exceed the bound drops
the oldest batches (never the new one: the newest data is the most useful when the cloud comes back)
and records what was lost in `gaps`. Consecutive drops extend the newest gap, so a long outage is one
gap, identified by its `first_seq`. The uplink reports each gap as an event and then calls
`ack_gap(gap)`, which only succeeds if the gap did not grow meanwhile (it is then reported again, with
the same first_seq and a later last_seq). The bound counts payload bytes; the file itself is larger by
SQLite's page and WAL overhead.

Thread safety: every method takes one lock around one connection, so an Outbox may be shared between
threads. Methods block on disk I/O (fsync): from asyncio, call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edge_daemon import sqlite_db
from edge_daemon.clock import Clock
from edge_daemon.errors import OutboxError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    batch_seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created_time REAL NOT NULL,
    start_time REAL NOT NULL,
    end_time REAL NOT NULL,
    size_bytes INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS gaps (
    gap_id INTEGER PRIMARY KEY AUTOINCREMENT,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    start_time REAL NOT NULL,
    end_time REAL NOT NULL,
    batch_count INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    recorded_time REAL NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Batch:
    batch_seq: int
    payload: bytes
    created_time: float
    start_time: float
    end_time: float


@dataclass(frozen=True, slots=True)
class Gap:
    """Batches first_seq..last_seq (count of them, the rest had been acked) were dropped unsent.
    start_time..end_time is the span of the data they held."""

    gap_id: int
    first_seq: int
    last_seq: int
    start_time: float
    end_time: float
    batch_count: int
    size_bytes: int
    recorded_time: float


class Outbox(sqlite_db.SqliteStore):
    kind = "outbox"

    def __init__(self, path: Path | str, max_bytes: int, *, clock: Clock | None = None) -> None:
        if max_bytes <= 0:
            raise OutboxError("max_bytes must be positive")
        super().__init__(path, _SCHEMA, clock=clock)
        self.max_bytes = max_bytes
        row = self._connection().execute("SELECT COALESCE(SUM(size_bytes), 0), COUNT(*) FROM batches").fetchone()
        self._total_bytes = int(row[0])
        self._count = int(row[1])

    # -- batches ---------------------------------------------------------------------------------

    def append(self, payload: bytes, *, start_time: float | None = None, end_time: float | None = None) -> int:
        """Store a batch durably and return its batch_seq. Returns only after the commit is on disk."""
        size = len(payload)
        if size > self.max_bytes:
            raise OutboxError(f"batch of {size} bytes exceeds the outbox bound of {self.max_bytes} bytes")
        now = self._clock.time()
        start = now if start_time is None else start_time
        end = now if end_time is None else end_time
        with self._lock:
            conn = self._connection()
            with sqlite_db.transaction(conn):
                cur = conn.execute(
                    "INSERT INTO batches(created_time, start_time, end_time, size_bytes, payload)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (now, start, end, size, payload),
                )
                seq = cur.lastrowid
                assert seq is not None
                excess = self._total_bytes + size - self.max_bytes
                dropped_bytes, dropped_count = self._drop_oldest(conn, excess, seq, now) if excess > 0 else (0, 0)
            # Only after COMMIT: a rolled-back append must not skew the running totals.
            self._total_bytes += size - dropped_bytes
            self._count += 1 - dropped_count
            return seq

    def _drop_oldest(self, conn: sqlite3.Connection, excess: int, new_seq: int, now: float) -> tuple[int, int]:
        freed = count = 0
        first_seq = last_seq = -1
        start = end = 0.0
        # The new batch fits the bound on its own, so the excess never exceeds what the older batches
        # hold; the filter states the policy (the newest data is kept) rather than relying on that.
        rows = conn.execute(
            "SELECT batch_seq, size_bytes, start_time, end_time FROM batches WHERE batch_seq < ? ORDER BY batch_seq",
            (new_seq,),
        )
        for seq, size, b_start, b_end in rows:
            if freed >= excess:
                break
            if count == 0:
                first_seq, start, end = seq, b_start, b_end
            last_seq = seq
            start, end = min(start, b_start), max(end, b_end)
            freed += size
            count += 1
        rows.close()
        if count == 0:
            return 0, 0
        conn.execute("DELETE FROM batches WHERE batch_seq <= ?", (last_seq,))
        newest = conn.execute("SELECT gap_id, last_seq FROM gaps ORDER BY gap_id DESC LIMIT 1").fetchone()
        if newest is not None and newest[1] + 1 == first_seq:
            conn.execute(
                "UPDATE gaps SET last_seq = ?, start_time = MIN(start_time, ?), end_time = MAX(end_time, ?),"
                " batch_count = batch_count + ?, size_bytes = size_bytes + ?, recorded_time = ?"
                " WHERE gap_id = ?",
                (last_seq, start, end, count, freed, now, newest[0]),
            )
        else:
            conn.execute(
                "INSERT INTO gaps(first_seq, last_seq, start_time, end_time, batch_count, size_bytes,"
                " recorded_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (first_seq, last_seq, start, end, count, freed, now),
            )
        return freed, count

    def pending(self, limit: int = 100, after_seq: int = 0) -> list[Batch]:
        """Up to `limit` unacked batches with batch_seq > after_seq, in batch_seq order."""
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT batch_seq, payload, created_time, start_time, end_time FROM batches"
                    " WHERE batch_seq > ? ORDER BY batch_seq LIMIT ?",
                    (after_seq, limit),
                )
                .fetchall()
            )
        return [Batch(int(r[0]), bytes(r[1]), r[2], r[3], r[4]) for r in rows]

    def ack(self, batch_seq: int) -> bool:
        """Delete one acknowledged batch. False if it was not there (already acked or dropped)."""
        return self._delete("batch_seq = ?", batch_seq) > 0

    def ack_up_to(self, batch_seq: int) -> int:
        """Delete every batch with batch_seq <= `batch_seq`; returns how many."""
        return self._delete("batch_seq <= ?", batch_seq)

    def _delete(self, where: str, seq: int) -> int:
        with self._lock:
            conn = self._connection()
            with sqlite_db.transaction(conn):
                freed, count = conn.execute(
                    f"SELECT COALESCE(SUM(size_bytes), 0), COUNT(*) FROM batches WHERE {where}", (seq,)
                ).fetchone()
                conn.execute(f"DELETE FROM batches WHERE {where}", (seq,))
            self._total_bytes -= int(freed)
            self._count -= int(count)
            return int(count)

    def last_seq(self) -> int:
        """The highest batch_seq ever assigned (0 if none), whether or not it was acked since."""
        with self._lock:
            row = self._connection().execute("SELECT seq FROM sqlite_sequence WHERE name = 'batches'").fetchone()
        return 0 if row is None else int(row[0])

    def advance_seq(self, seq: int) -> None:
        """Ensure the next batch_seq is greater than `seq` (never lowers it)."""
        with self._lock:
            conn = self._connection()
            with sqlite_db.transaction(conn):
                updated = conn.execute(
                    "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'batches'", (seq,)
                ).rowcount
                if updated == 0:
                    conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('batches', ?)", (seq,))

    @property
    def total_bytes(self) -> int:
        return self._total_bytes

    def __len__(self) -> int:
        return self._count

    # -- gaps ------------------------------------------------------------------------------------

    def gaps(self) -> list[Gap]:
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT gap_id, first_seq, last_seq, start_time, end_time, batch_count, size_bytes,"
                    " recorded_time FROM gaps ORDER BY gap_id"
                )
                .fetchall()
            )
        return [Gap(*row) for row in rows]

    def ack_gap(self, gap: Gap) -> bool:
        """Forget a reported gap, unless it grew since it was read (then report it again)."""
        with self._lock:
            conn = self._connection()
            with sqlite_db.transaction(conn):
                deleted = conn.execute(
                    "DELETE FROM gaps WHERE gap_id = ? AND last_seq = ?", (gap.gap_id, gap.last_seq)
                ).rowcount
        return deleted > 0

    # -- lifecycle -------------------------------------------------------------------------------
