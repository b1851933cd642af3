"""Commands read from PostgreSQL and their proto view (changes of state: transitions.py)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from emma.command.v1 import command_pb2

from services.command import states
from services.names import EdgeName
from services.platform.migrations import Conn
from services.platform.rpc import timestamp
from services.registry import edge_name

COMMAND_COLUMNS = """c.id, c.channel, c.value, c.state, c.state_reason, c.applied_value, c.issued_time,
    c.create_time, c.update_time, c.expire_time, c.creator, c.fleet_dispatch, c.edge_pk, c.seq, c.traceparent"""


def to_proto(row: Any, edge: EdgeName, events: list[Any] | None = None) -> command_pb2.Command:
    """A command row of `edge` (and its transitions) as the API's Command."""
    cmd = command_pb2.Command(
        name=f"{edge}/commands/{row['id']}",
        channel=row["channel"],
        value=row["value"],
        state=states.to_proto(row["state"]),
        state_reason=row["state_reason"],
        applied_value=row["applied_value"] or 0.0,
        issued_time=timestamp(row["issued_time"]),
        expire_time=timestamp(row["expire_time"]),
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row["update_time"]),
        creator=row["creator"],
    )
    if row["fleet_dispatch"] is not None:
        cmd.fleet_dispatch = f"organizations/{edge.org}/fleetDispatches/{row['fleet_dispatch']}"
    for ev in events or []:
        cmd.transitions.append(transition_proto(ev))
    return cmd


def transition_proto(ev: Any) -> command_pb2.CommandTransition:
    return command_pb2.CommandTransition(
        from_state=states.to_proto(ev["from_state"]) if ev["from_state"] else command_pb2.COMMAND_STATE_UNSPECIFIED,
        to_state=states.to_proto(ev["to_state"]),
        transition_time=timestamp(ev["event_time"]),
        reason=ev["reason"],
        message=ev["message"],
    )


async def load(
    conn: Conn,
    command_id: uuid.UUID,
    with_events: bool = True,
    edge: EdgeName | None = None,
    known_edge: tuple[EdgeName, int] | None = None,
) -> command_pb2.Command | None:
    """The command and its transitions, read in ONE statement so state and history agree.

    `edge`: the command's edge when the caller has already established it (WatchCommand reloading the
    command it loaded first), which saves the registry lookup of the edge's name on every transition.
    `known_edge`: an edge's (name, pk) the caller knows; used when the command's edge has that pk,
    otherwise the registry names the command's edge.
    """
    row = await conn.fetchrow(
        f"""SELECT {COMMAND_COLUMNS},
               CASE WHEN $2 THEN (SELECT coalesce(json_agg(json_build_object(
                   'from_state', v.from_state, 'to_state', v.to_state,
                   'event_time', to_char(v.event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
                   'reason', v.reason, 'message', v.message) ORDER BY v.id), '[]')
                   FROM app.command_events v WHERE v.command_id = c.id) END AS events
            FROM app.commands c WHERE c.id = $1""",
        command_id,
        with_events,
    )
    if row is None:
        return None
    if edge is None and known_edge is not None and known_edge[1] == row["edge_pk"]:
        edge = known_edge[0]
    if edge is None:
        edge = await edge_name(conn, row["edge_pk"])
    if edge is None:  # the edge is being deleted with its commands
        return None
    events = json.loads(row["events"]) if row["events"] else []
    for ev in events:
        ev["event_time"] = dt.datetime.fromisoformat(ev["event_time"])
    return to_proto(row, edge, events)
