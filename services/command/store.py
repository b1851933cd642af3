"""Commands in PostgreSQL: guarded transitions, events, notifications, and the proto view.

Every change of state goes through one statement that locks the row, checks the state machine,
updates, writes the command_events row and NOTIFYs the watchers, so the transition, its record and its
announcement commit together or not at all.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from emma.command.v1 import command_pb2
from google.protobuf import timestamp_pb2

from services.command import states
from services.platform.migrations import Conn

EVENTS_CHANNEL = "emma_command_events"  # payload: command id
EDGE_CHANNEL = "emma_edge_commands"  # payload: edge pk that has new queued commands

_TRANSITION = """
WITH prev AS (SELECT id, state FROM app.commands WHERE id = $1 FOR UPDATE),
upd AS (
    UPDATE app.commands c SET state = $2, state_reason = $3, applied_value = coalesce($4, c.applied_value),
           update_time = now(),
           delivered_time = CASE WHEN $2 = 'DELIVERED' THEN now() ELSE c.delivered_time END
    FROM prev WHERE c.id = prev.id AND prev.state = ANY($5::text[])
    RETURNING c.id, prev.state AS from_state
),
ev AS (
    INSERT INTO app.command_events (command_id, from_state, to_state, reason, message, replica_id)
    SELECT id, from_state, $2, $3, $6, $7 FROM upd
)
SELECT from_state, pg_notify('emma_command_events', id::text) FROM upd
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
    """One statement that moves every matching command (skipping rows another replica holds)."""
    allowed = ", ".join(f"'{s}'" for s in sorted(states.PREDECESSORS[to_state]))
    return f"""
WITH picked AS (
    SELECT id, state FROM app.commands WHERE state IN ({allowed}) AND {where}
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
SELECT id, pg_notify('emma_command_events', id::text) FROM upd
"""


def _ts(value: Any) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


COMMAND_COLUMNS = """c.id, c.channel, c.value, c.state, c.state_reason, c.applied_value, c.issued_time,
    c.create_time, c.update_time, c.expire_time, c.creator, c.fleet_dispatch, c.edge_pk, c.seq, c.traceparent,
    e.org_id, e.site_id, e.edge_id"""


def command_name(row: Any) -> str:
    return f"organizations/{row['org_id']}/sites/{row['site_id']}/edges/{row['edge_id']}/commands/{row['id']}"


def to_proto(row: Any, events: list[Any] | None = None) -> command_pb2.Command:
    cmd = command_pb2.Command(
        name=command_name(row),
        channel=row["channel"],
        value=row["value"],
        state=states.to_proto(row["state"]),
        state_reason=row["state_reason"],
        applied_value=row["applied_value"] or 0.0,
        issued_time=_ts(row["issued_time"]),
        expire_time=_ts(row["expire_time"]),
        create_time=_ts(row["create_time"]),
        update_time=_ts(row["update_time"]),
        creator=row["creator"],
    )
    if row["fleet_dispatch"] is not None:
        cmd.fleet_dispatch = f"organizations/{row['org_id']}/fleetDispatches/{row['fleet_dispatch']}"
    for ev in events or []:
        cmd.transitions.append(transition_proto(ev))
    return cmd


def transition_proto(ev: Any) -> command_pb2.CommandTransition:
    return command_pb2.CommandTransition(
        from_state=states.to_proto(ev["from_state"]) if ev["from_state"] else command_pb2.COMMAND_STATE_UNSPECIFIED,
        to_state=states.to_proto(ev["to_state"]),
        transition_time=_ts(ev["event_time"]),
        reason=ev["reason"],
        message=ev["message"],
    )


async def load(conn: Conn, command_id: uuid.UUID, with_events: bool = True) -> command_pb2.Command | None:
    """The command and its transitions, read in ONE statement so state and history agree."""
    row = await conn.fetchrow(
        f"""SELECT {COMMAND_COLUMNS},
               CASE WHEN $2 THEN (SELECT coalesce(json_agg(json_build_object(
                   'from_state', v.from_state, 'to_state', v.to_state,
                   'event_time', to_char(v.event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
                   'reason', v.reason, 'message', v.message) ORDER BY v.id), '[]')
                   FROM app.command_events v WHERE v.command_id = c.id) END AS events
            FROM app.commands c JOIN app.edges e ON e.pk = c.edge_pk WHERE c.id = $1""",
        command_id,
        with_events,
    )
    if row is None:
        return None
    events = json.loads(row["events"]) if row["events"] else []
    for ev in events:
        ev["event_time"] = dt.datetime.fromisoformat(ev["event_time"])
    return to_proto(row, events)
