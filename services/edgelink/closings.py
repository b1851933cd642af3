"""Ends of streams taken together: the streams that end while one end is being recorded are recorded
by one statement.

When a fleet's streams end at once (1,000 edges going away, a network cut, the ingest benchmark's
end), each end was a statement of its own on the shared pool: a thousand round trips in a second,
each a turn of the replica's busy event loop and a transaction in PostgreSQL, while the other streams'
batches waited for their acks. Here, as the Hellos are (handshake.py), an end that comes while another
is being recorded waits for the next statement, which starts when the running one is done and records
every end that came meanwhile (services.platform.shared_reads.GatheredReads). A lone end is a statement
of its own, as before.
"""

from __future__ import annotations

import uuid

import asyncpg

from services.platform.shared_reads import GatheredReads, Outcomes

# (edge_pk, session id) of a stream that ended.
End = tuple[int, uuid.UUID]

# The session rows still held by the streams that ended go offline, and each of those gets its
# DISCONNECTED event; a session another stream took over meanwhile is left alone. The rows are locked
# in edge order, as the handshakes' upsert takes them, so the two never wait for each other in a cycle.
# Committed without waiting for the disk (as command deliveries are, migration 0023): lost in a
# database crash, a session stays online until the offline sweeper marks it OFFLINE, as when the
# database is down at the close.
_CLOSE_SQL = """
WITH ended AS (
    SELECT s.edge_pk FROM app.edge_sessions s
    JOIN unnest($1::bigint[], $2::uuid[]) AS x(e, sid) ON s.edge_pk = x.e AND s.session_id = x.sid
    ORDER BY s.edge_pk
    FOR UPDATE OF s
), closed AS (
    UPDATE app.edge_sessions s SET online = false, disconnected_time = now()
    FROM ended WHERE s.edge_pk = ended.edge_pk
    RETURNING s.edge_pk
)
INSERT INTO app.edge_events (edge_pk, event_time, severity, kind, message, details)
SELECT edge_pk, now(), 'info', 'DISCONNECTED', 'stream closed', '{}'::jsonb FROM closed
WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL
"""


class SessionEnds:
    """`record(edge_pk, session_id)`: the stream's session offline with its DISCONNECTED event, in a
    statement shared with the ends that came meanwhile. Raises what the database raised for it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._gathered: GatheredReads[None, End, None] = GatheredReads(self._record)
        self.statements = 0  # statements run (each for every end it took), for tests

    async def record(self, edge_pk: int, session_id: uuid.UUID) -> None:
        await self._gathered.get(None, (edge_pk, session_id))

    async def _record(self, _: None, ends: list[End]) -> Outcomes[End, None]:
        self.statements += 1
        await self._pool.execute(_CLOSE_SQL, [e for e, _ in ends], [s for _, s in ends])
        return dict.fromkeys(ends)

    async def stop(self) -> None:
        await self._gathered.stop()
