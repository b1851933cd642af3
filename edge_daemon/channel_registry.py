"""Append-only registry of telemetry channels: (name, unit) -> stable integer index.

The uplink's columnar TelemetryBatch refers to channels by index. Batches wait in the outbox across
restarts, so an index must mean the same channel forever: indices come from an AUTOINCREMENT key, rows
are never deleted or updated, and a channel whose unit changes is a new series with a new index.
An index is committed before it is returned, so no stored batch can refer to an index that a crash
could un-assign.

Thread safety: one lock around one connection. Lookups of known channels are served from memory;
only registering new channels touches the disk, so from asyncio call `indices_for` through
`asyncio.to_thread` when new channels may appear (at start-up), and `index_of` freely.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_daemon import sqlite_db
from edge_daemon.clock import Clock

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channel_registry (
    channel_index INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    unit TEXT NOT NULL,
    created_time REAL NOT NULL,
    UNIQUE (name, unit)
)
"""


@dataclass(frozen=True, slots=True)
class RegisteredChannel:
    index: int
    name: str
    unit: str


class ChannelRegistry(sqlite_db.SqliteStore):
    kind = "channel registry"

    def __init__(self, path: Path | str, *, clock: Clock | None = None) -> None:
        super().__init__(path, _SCHEMA, clock=clock)
        rows = self._connection().execute("SELECT channel_index, name, unit FROM channel_registry").fetchall()
        self._index: dict[tuple[str, str], int] = {(r[1], r[2]): int(r[0]) for r in rows}

    def index_of(self, name: str, unit: str = "") -> int | None:
        """The index of a registered channel, from memory; None if never registered."""
        return self._index.get((name, unit))

    def index_for(self, name: str, unit: str = "") -> int:
        """The index of a channel, registering it (durably) if new."""
        return self.indices_for([(name, unit)])[0]

    def indices_for(self, channels: Iterable[tuple[str, str]]) -> list[int]:
        """Indices for many (name, unit) pairs, registering the new ones in one transaction."""
        wanted = list(channels)
        with self._lock:
            missing = [c for c in dict.fromkeys(wanted) if c not in self._index]
            if missing:
                conn = self._connection()
                now = self._clock.time()
                added: dict[tuple[str, str], int] = {}
                with sqlite_db.transaction(conn):
                    for name, unit in missing:
                        cur = conn.execute(
                            "INSERT INTO channel_registry(name, unit, created_time) VALUES (?, ?, ?)",
                            (name, unit, now),
                        )
                        assert cur.lastrowid is not None
                        added[(name, unit)] = cur.lastrowid
                self._index.update(added)
            return [self._index[c] for c in wanted]

    def table(self) -> list[RegisteredChannel]:
        """Every registered channel in index order (the uplink's channel table)."""
        with self._lock:
            items = sorted(self._index.items(), key=lambda kv: kv[1])
        return [RegisteredChannel(index, name, unit) for (name, unit), index in items]
