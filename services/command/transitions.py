"""Every statement that changes a command's state, with the notifications it sends.

Each statement locks the rows it changes, checks the state machine (states.PREDECESSORS), updates,
writes the command_events rows and NOTIFYs, so a transition, its record and its announcement commit
together or not at all. The channels are named once, here:

- EVENTS_CHANNEL (payload: the command id): a command changed state; WatchCommand streams wake up.
- EDGE_CHANNEL (payload: the edge pk): an edge has new queued commands; the replica holding its
  stream delivers them.

The statements: `create_queued` (a new command, QUEUED), `deliver_queued` (QUEUED -> DELIVERED, on
the edge's stream), `transition` (one command, any allowed step: acks, cancel) and
`bulk_transition_sql` (the timers' mass steps to FAILED).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from services.command import states
from services.platform.migrations import Conn

EVENTS_CHANNEL = "emma_command_events"  # payload: command id
EDGE_CHANNEL = "emma_edge_commands"  # payload: edge pk that has new queued commands


def _allowed(to_state: str) -> str:
    """The states `to_state` may be reached from, as an SQL list of literals."""
    return ", ".join(f"'{s}'" for s in sorted(states.PREDECESSORS[to_state]))


# Rate and queue checks, the command, its first event and the notification of the replica holding the
# edge, in one statement (run after the caller's advisory lock, so its snapshot sees every command of
# this caller that committed before). Nothing is inserted when a limit is reached.
_CREATE = f"""
WITH rate AS (
    SELECT count(*) AS n FROM app.commands WHERE creator = $7 AND create_time > now() - interval '1 second'
),
queue AS (
    SELECT count(*) AS n FROM (SELECT 1 FROM app.commands WHERE edge_pk = $2 AND state = '{states.QUEUED}' LIMIT $14) q
),
ins AS (
    INSERT INTO app.commands (id, edge_pk, channel, value, state, issued_time, expire_time, creator, request_id,
                              request_hash, fleet_dispatch, traceparent)
    SELECT $1, $2, $3, $4, '{states.QUEUED}', $5, now() + $6::interval, $7, $8, $9, $10, $11
    FROM rate, queue WHERE rate.n < $13 AND queue.n < $14
    RETURNING id, create_time, expire_time
),
ev AS (
    INSERT INTO app.command_events (command_id, from_state, to_state, replica_id)
    SELECT id, '', '{states.QUEUED}', $12 FROM ins
)
SELECT rate.n AS rate_n, queue.n AS queue_n, ins.create_time, ins.expire_time,
       CASE WHEN ins.id IS NOT NULL THEN pg_notify('{EDGE_CHANNEL}', $2::text) END AS notified
FROM rate CROSS JOIN queue LEFT JOIN ins ON true
"""


async def create_queued(
    conn: Conn,
    command_id: uuid.UUID,
    edge_pk: int,
    channel: str,
    value: float,
    issued: dt.datetime,
    ttl: dt.timedelta,
    *,
    creator: str,
    request_id: str,
    digest: str,
    fleet_dispatch: uuid.UUID | None,
    traceparent: str,
    replica_id: str,
    rate_limit_per_s: int,
    queue_cap: int,
) -> Any:
    """Insert a QUEUED command unless a limit is reached: the row has rate_n, queue_n and, when the
    command was stored, create_time and expire_time (None when not)."""
    return await conn.fetchrow(
        _CREATE,
        command_id,
        edge_pk,
        channel,
        value,
        issued,
        ttl,
        creator,
        request_id,
        digest,
        fleet_dispatch,
        traceparent,
        replica_id,
        rate_limit_per_s,
        queue_cap,
    )


# How many queued commands one delivery pass takes (oldest first).
DELIVER_LIMIT = 100

_DELIVER = f"""
WITH picked AS (
    SELECT id FROM app.commands
    WHERE edge_pk = $1 AND state = '{states.QUEUED}' AND expire_time > now()
    ORDER BY seq FOR UPDATE SKIP LOCKED LIMIT {DELIVER_LIMIT}
),
upd AS (
    UPDATE app.commands c SET state = '{states.DELIVERED}', delivered_time = now(), update_time = now()
    FROM picked WHERE c.id = picked.id
    RETURNING c.id, c.seq, c.channel, c.value, c.expire_time, c.create_time, c.traceparent
),
ev AS (
    INSERT INTO app.command_events (command_id, from_state, to_state, replica_id)
    SELECT id, '{states.QUEUED}', '{states.DELIVERED}', $2 FROM upd
)
SELECT upd.*, pg_notify('{EVENTS_CHANNEL}', upd.id::text) FROM upd ORDER BY seq
"""


async def deliver_queued(conn: Conn, edge_pk: int, replica_id: str) -> list[Any]:
    """Mark up to DELIVER_LIMIT of the edge's unexpired queued commands DELIVERED; returns them, oldest first."""
    return list(await conn.fetch(_DELIVER, edge_pk, replica_id))


_TRANSITION = f"""
WITH prev AS (SELECT id, state FROM app.commands WHERE id = $1 FOR UPDATE),
upd AS (
    UPDATE app.commands c SET state = $2, state_reason = $3, applied_value = coalesce($4, c.applied_value),
           update_time = now(),
           delivered_time = CASE WHEN $2 = '{states.DELIVERED}' THEN now() ELSE c.delivered_time END
    FROM prev WHERE c.id = prev.id AND prev.state = ANY($5::text[])
    RETURNING c.id, prev.state AS from_state
),
ev AS (
    INSERT INTO app.command_events (command_id, from_state, to_state, reason, message, replica_id)
    SELECT id, from_state, $2, $3, $6, $7 FROM upd
)
SELECT from_state, pg_notify('{EVENTS_CHANNEL}', id::text) FROM upd
"""


async def transition(
    conn: Conn,
    command_id: uuid.UUID,
    to_state: str,
    *,
    reason: str = "",
    message: str = "",
    applied_value: float | None = None,
    replica_id: str = "",
) -> str | None:
    """Apply one transition if the state machine allows it; returns the previous state, or None."""
    row = await conn.fetchrow(
        _TRANSITION,
        command_id,
        to_state,
        reason,
        applied_value,
        sorted(states.PREDECESSORS[to_state]),
        message,
        replica_id,
    )
    return None if row is None else str(row["from_state"])


def bulk_transition_sql(to_state: str, where: str, reason: str, message: str) -> str:
    """One statement that moves every matching command (skipping rows another replica holds); $1 is the replica."""
    return f"""
WITH picked AS (
    SELECT id, state FROM app.commands WHERE state IN ({_allowed(to_state)}) AND {where}
    FOR UPDATE SKIP LOCKED LIMIT 1000
),
upd AS (
    UPDATE app.commands c SET state = '{to_state}', state_reason = '{reason}', update_time = now()
    FROM picked WHERE c.id = picked.id RETURNING c.id, picked.state AS from_state
),
ev AS (
    INSERT INTO app.command_events (command_id, from_state, to_state, reason, message, replica_id)
    SELECT id, from_state, '{to_state}', '{reason}', '{message}', $1 FROM upd
)
SELECT id, pg_notify('{EVENTS_CHANNEL}', id::text) FROM upd
"""
