"""Durable memory of the cloud's commands: deduplication and acknowledgements that must not be lost.

One row per command name (in the outbox's SQLite file, its own table). The row holds the latest status
and two flags: `received_unsent` (the RECEIVED ack still has to go out) and `final_unsent` (the final
EXECUTED / REJECTED / FAILED ack still has to go out). Flags are set in the same transaction that
changes the status and cleared only after the ack was written to a stream, so an ack that could not be
sent while the cloud was unreachable is sent on the next stream, even after a restart. A redelivered
command (same name) never reaches the device again: `resend` raises the flag of its current status.

A command that was RECEIVED when the daemon stopped has lost its request (the channel store lives in
memory), so `fail_unfinished` at start-up turns it into FAILED: every RECEIVED gets a final status.

Rows are kept for `RETENTION_S` after their final ack went out (the cloud stops redelivering long
before) and at most `MAX_ROWS`. Thread safety: one lock around one connection; call from asyncio via
`asyncio.to_thread`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from emma.edge.v1 import edge_link_pb2

from edge_daemon import sqlite_db
from edge_daemon.clock import Clock
from edge_daemon.uplink.wire import ack_reason_code, timestamp

RECEIVED: Final = edge_link_pb2.COMMAND_ACK_STATUS_RECEIVED
EXECUTED: Final = edge_link_pb2.COMMAND_ACK_STATUS_EXECUTED
REJECTED: Final = edge_link_pb2.COMMAND_ACK_STATUS_REJECTED
FAILED: Final = edge_link_pb2.COMMAND_ACK_STATUS_FAILED
FINAL: Final = frozenset({EXECUTED, REJECTED, FAILED})

RETENTION_S: Final = 7 * 86_400.0
MAX_ROWS: Final = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uplink_commands (
    name TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    value REAL NOT NULL,
    received_time REAL NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    applied_value REAL,
    status_time REAL NOT NULL,
    received_unsent INTEGER NOT NULL,
    final_unsent INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS uplink_commands_unsent ON uplink_commands (status_time)
    WHERE received_unsent = 1 OR final_unsent = 1;
CREATE INDEX IF NOT EXISTS uplink_commands_age ON uplink_commands (status_time)
"""

_COLUMNS = (
    "name, channel, value, received_time, status, reason, message, applied_value, status_time,"
    " received_unsent, final_unsent"
)


@dataclass(frozen=True, slots=True)
class CommandRecord:
    name: str
    channel: str
    value: float
    received_time: float
    status: edge_link_pb2.CommandAckStatus.ValueType
    reason: str
    message: str
    applied_value: float | None
    status_time: float
    received_unsent: bool
    final_unsent: bool

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclass(frozen=True, slots=True)
class PendingAck:
    """An acknowledgement waiting to be written to a stream."""

    name: str
    ack: edge_link_pb2.CommandAck

    @property
    def status(self) -> edge_link_pb2.CommandAckStatus.ValueType:
        return self.ack.status


def to_ack(record: CommandRecord, status: edge_link_pb2.CommandAckStatus.ValueType) -> edge_link_pb2.CommandAck:
    ack = edge_link_pb2.CommandAck(command=record.name, status=status)
    if status == RECEIVED:
        ack.ack_time.CopyFrom(timestamp(record.received_time))
        return ack
    ack.reason = record.reason
    ack.reason_code = ack_reason_code(record.reason)
    ack.message = record.message
    if record.applied_value is not None:
        ack.applied_value = record.applied_value
    ack.ack_time.CopyFrom(timestamp(record.status_time))
    return ack


class CommandJournal(sqlite_db.SqliteStore):
    kind = "command journal"

    def __init__(self, path: Path | str, *, clock: Clock | None = None) -> None:
        super().__init__(path, _SCHEMA, clock=clock)

    # -- reads -----------------------------------------------------------------------------------

    def get(self, name: str) -> CommandRecord | None:
        with self._lock:
            row = (
                self._connection().execute(f"SELECT {_COLUMNS} FROM uplink_commands WHERE name = ?", (name,)).fetchone()
            )
        return None if row is None else _record(row)

    def unsent(self, limit: int = 1000) -> list[PendingAck]:
        """Acks not yet written to any stream, oldest first; a RECEIVED precedes its command's final."""
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    f"SELECT {_COLUMNS} FROM uplink_commands WHERE received_unsent = 1 OR final_unsent = 1"
                    " ORDER BY status_time, name LIMIT ?",
                    (limit,),
                )
                .fetchall()
            )
        out: list[PendingAck] = []
        for row in rows:
            record = _record(row)
            if record.received_unsent:
                out.append(PendingAck(record.name, to_ack(record, RECEIVED)))
            if record.final_unsent and record.final:
                out.append(PendingAck(record.name, to_ack(record, record.status)))
        return out

    # -- writes ----------------------------------------------------------------------------------

    def receive(self, name: str, channel: str, value: float) -> bool:
        """Record a new command as RECEIVED (its RECEIVED ack pending). False if the name is known."""
        now = self._clock.time()
        with self._lock:
            conn = self._connection()
            with sqlite_db.transaction(conn):
                cur = conn.execute(
                    f"INSERT OR IGNORE INTO uplink_commands ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, '', '', NULL, ?, 1, 0)",
                    (name, channel, value, now, RECEIVED, now),
                )
        return cur.rowcount > 0

    def decide(
        self,
        name: str,
        channel: str,
        value: float,
        status: edge_link_pb2.CommandAckStatus.ValueType,
        reason: str,
        message: str,
    ) -> bool:
        """Record a new command that was refused at once (no RECEIVED phase). False if known."""
        now = self._clock.time()
        with self._lock:
            conn = self._connection()
            with sqlite_db.transaction(conn):
                cur = conn.execute(
                    f"INSERT OR IGNORE INTO uplink_commands ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, 0, 1)",
                    (name, channel, value, now, status, reason, message, now),
                )
        return cur.rowcount > 0

    def finish(
        self,
        name: str,
        status: edge_link_pb2.CommandAckStatus.ValueType,
        reason: str,
        message: str,
        applied_value: float | None = None,
    ) -> CommandRecord | None:
        """Give a RECEIVED command its final status. None if unknown or already final."""
        if status not in FINAL:
            raise ValueError(f"not a final status: {status}")
        now = self._clock.time()
        with self._lock:
            conn = self._connection()
            with sqlite_db.transaction(conn):
                row = conn.execute(
                    "UPDATE uplink_commands SET status = ?, reason = ?, message = ?, applied_value = ?,"
                    " status_time = ?, final_unsent = 1 WHERE name = ? AND status = ?"
                    f" RETURNING {_COLUMNS}",
                    (status, reason, message, applied_value, now, name, RECEIVED),
                ).fetchone()
        return None if row is None else _record(row)

    def resend(self, name: str) -> CommandRecord | None:
        """The cloud redelivered a command: queue its current status again."""
        with self._lock:
            conn = self._connection()
            with sqlite_db.transaction(conn):
                row = conn.execute(
                    "UPDATE uplink_commands SET"
                    " received_unsent = CASE WHEN status = ? THEN 1 ELSE received_unsent END,"
                    " final_unsent = CASE WHEN status = ? THEN final_unsent ELSE 1 END"
                    f" WHERE name = ? RETURNING {_COLUMNS}",
                    (RECEIVED, RECEIVED, name),
                ).fetchone()
        return None if row is None else _record(row)

    def mark_sent(self, name: str, status: edge_link_pb2.CommandAckStatus.ValueType) -> None:
        """The ack `status` of `name` was written to a stream."""
        with self._lock:
            conn = self._connection()
            with sqlite_db.transaction(conn):
                if status == RECEIVED:
                    conn.execute("UPDATE uplink_commands SET received_unsent = 0 WHERE name = ?", (name,))
                else:
                    conn.execute(
                        "UPDATE uplink_commands SET final_unsent = 0 WHERE name = ? AND status = ?",
                        (name, status),
                    )

    def fail_unfinished(self, reason: str, message: str) -> list[str]:
        """At start-up: every command still RECEIVED lost its request with the old process."""
        now = self._clock.time()
        with self._lock:
            conn = self._connection()
            with sqlite_db.transaction(conn):
                rows = conn.execute(
                    "UPDATE uplink_commands SET status = ?, reason = ?, message = ?, status_time = ?,"
                    " final_unsent = 1 WHERE status = ? RETURNING name",
                    (FAILED, reason, message, now, RECEIVED),
                ).fetchall()
        return [str(r[0]) for r in rows]

    def prune(self, retention_s: float = RETENTION_S, max_rows: int = MAX_ROWS) -> int:
        """Forget settled commands older than `retention_s`, and the oldest beyond `max_rows`."""
        cutoff = self._clock.time() - retention_s
        settled = f"status != {int(RECEIVED)} AND received_unsent = 0 AND final_unsent = 0"
        with self._lock:
            conn = self._connection()
            with sqlite_db.transaction(conn):
                deleted = conn.execute(
                    f"DELETE FROM uplink_commands WHERE {settled} AND status_time < ?", (cutoff,)
                ).rowcount
                deleted += conn.execute(
                    f"DELETE FROM uplink_commands WHERE {settled} AND name IN (SELECT name FROM"
                    " uplink_commands ORDER BY status_time DESC LIMIT -1 OFFSET ?)",
                    (max_rows,),
                ).rowcount
        return deleted


def _record(row: Any) -> CommandRecord:
    (name, channel, value, received, status, reason, message, applied, status_time, r_unsent, f_unsent) = row
    return CommandRecord(
        name=str(name),
        channel=str(channel),
        value=float(value),
        received_time=float(received),
        status=edge_link_pb2.CommandAckStatus.ValueType(int(status)),
        reason=str(reason),
        message=str(message),
        applied_value=None if applied is None else float(applied),
        status_time=float(status_time),
        received_unsent=bool(r_unsent),
        final_unsent=bool(f_unsent),
    )
