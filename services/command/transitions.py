"""Every statement that changes a command's state, with the notifications it sends.

Each statement locks the rows it changes, checks the state machine (states.PREDECESSORS), updates,
writes the command_events rows and NOTIFYs, so a transition, its record and its announcement commit
together or not at all. The channels are named once, here:

- EVENTS_CHANNEL (payload: the command id): a command changed state; WatchCommand streams wake up.
- EDGE_CHANNEL (payload: the edge pk): an edge has new queued commands; the replica holding its
  stream delivers them.

The statements: `create_queued` (a new command, QUEUED), `deliver_queued` (QUEUED -> DELIVERED, on
the edge's stream), `apply_acks` (an edge's acks, several in one call), `transition` (one command,
any allowed step: cancel) and `bulk_transition_sql` (the timers' mass steps to FAILED).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.command import states
from services.identity import AuditRow
from services.platform.migrations import Conn

EVENTS_CHANNEL = "emma_command_events"  # payload: command id
EDGE_CHANNEL = "emma_edge_commands"  # payload: edge pk that has new queued commands


def _allowed(to_state: str) -> str:
    """The states `to_state` may be reached from, as an SQL list of literals."""
    return ", ".join(f"'{s}'" for s in sorted(states.PREDECESSORS[to_state]))


# The create and delivery steps and the edges' acks are SQL functions (migrations 0023 and 0026): one
# call is one round trip and one commit; their comments there say what each guarantees.
_CREATE_CALL = "app.create_command($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
_CREATE = f"SELECT * FROM {_CREATE_CALL}"


def _create_with(audit: AuditRow) -> str:
    """The create call and the call's audit row in one statement: one round trip and one commit, and
    the row only when the command was stored (a refusal or a retry gets its row from the interceptor)."""
    stored = "EXISTS (SELECT 1 FROM created WHERE created.r_create_time IS NOT NULL)"
    return f"""WITH created AS MATERIALIZED (SELECT * FROM {_CREATE_CALL}),
    audited AS ({audit.sql(16, stored)})
    SELECT * FROM created ORDER BY d_seq"""


@dataclass(frozen=True, slots=True)
class Created:
    """What the create call answered: `stored` (the create result: r_earlier_id and r_earlier_hash of an
    earlier command with the request_id, nothing else done; or r_rate_n, r_queue_n and, when the command
    was stored, r_create_time and r_expire_time, None when a limit refused it) and `delivered`, the
    commands it marked DELIVERED with a `deliver_limit`, oldest first, as deliver_queued returns them."""

    stored: Any
    delivered: list[dict[str, Any]]


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
    deliver_limit: int = 0,
    audit: AuditRow | None = None,
) -> Created:
    """Insert a QUEUED command unless this edge has one with `request_id` already or a limit is reached.

    With `deliver_limit` > 0 (the caller holds the edge's stream and sends what comes back, in order)
    the edge's queued commands, the new one included, are marked DELIVERED in the same call. With `audit`
    the same statement writes that audit row when it stores the command. Call it outside a transaction
    (its own is its commit).
    """
    rows = await conn.fetch(
        _CREATE if audit is None else _create_with(audit),
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
        deliver_limit,
        *(audit.values if audit is not None else ()),
    )
    delivered = [
        {
            "id": r["d_id"],
            "seq": r["d_seq"],
            "channel": r["d_channel"],
            "value": r["d_value"],
            "expire_time": r["d_expire_time"],
            "create_time": r["d_create_time"],
            "traceparent": r["d_traceparent"],
            "event_time": r["d_event_time"],
        }
        for r in rows
        if r["d_id"] is not None
    ]
    return Created(rows[0], delivered)


# How many queued commands one delivery pass takes (oldest first).
DELIVER_LIMIT = 100

_DELIVER = "SELECT * FROM app.deliver_commands($1, $2, $3)"


async def deliver_queued(conn: Conn, edge_pk: int, replica_id: str) -> list[Any]:
    """Mark up to DELIVER_LIMIT of the edge's unexpired queued commands DELIVERED; returns them, oldest first
    (id, seq, channel, value, expire_time, create_time, traceparent, event_time). Its own transaction."""
    return list(await conn.fetch(_DELIVER, edge_pk, replica_id, DELIVER_LIMIT))


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledgement of an edge, as the state change it asks for."""

    command_id: uuid.UUID
    to_state: str
    reason: str = ""
    message: str = ""
    applied_value: float | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """An ack that changed its command's state."""

    ack: Ack
    from_state: str
    event_time: dt.datetime
    applied_value: float | None  # the command's applied value after the change


_APPLY_ACKS = "SELECT * FROM app.apply_command_acks($1, $2, $3, $4, $5, $6, $7, $8)"


async def apply_acks(conn: Conn, acks: Sequence[Ack], replica_id: str) -> list[Applied]:
    """Apply an edge's acks in order in one call (one round trip, one commit); the ones the state
    machine refused (late, repeated, unknown command) are left out of the result.

    Only a batch of RECEIVED acks commits without waiting for the disk: a RECEIVED lost in a database
    crash leaves the command DELIVERED, from which the final ack is still allowed; a final state must
    not be lost, because the edge sends it only once.
    """
    if not acks:
        return []
    rows = await conn.fetch(
        _APPLY_ACKS,
        [a.command_id for a in acks],
        [a.to_state for a in acks],
        [",".join(sorted(states.PREDECESSORS[a.to_state])) for a in acks],
        [a.reason for a in acks],
        [a.message for a in acks],
        [a.applied_value for a in acks],
        replica_id,
        any(a.to_state != states.RECEIVED for a in acks),
    )
    return [Applied(acks[r["r_ord"] - 1], r["r_from_state"], r["r_event_time"], r["r_applied_value"]) for r in rows]


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
